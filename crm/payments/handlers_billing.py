"""Stripe billing webhooks: renewals paid or failed (dunning), subscriptions changed or ended.

Each handler is idempotent and safe out of order. Invoice events re-fetch the subscription
(and a failure the invoice) from Stripe, since what matters is where they stand now;
subscription events apply their snapshot only when newer than the last one applied.
"""

from __future__ import annotations

from crm.integrations import stripe as stripe_api
from crm.payments import packages
from crm.payments.models import Subscription
from crm.payments.services import is_newer, record_event
from crm.webhooks.handlers import PermanentHandlerError, register
from crm.webhooks.models import WebhookEvent

STATUS_LABELS = {
    "incomplete": "Incomplete",
    "incomplete_expired": "Expired before the first payment",
    "trialing": "Trial",
    "active": "Active",
    "past_due": "Past due",
    "unpaid": "Unpaid",
    "canceled": "Canceled",
    "paused": "Paused",
}


def _object(payload) -> dict:
    obj = ((payload or {}).get("data") or {}).get("object")
    if not isinstance(obj, dict) or not obj.get("id"):
        raise PermanentHandlerError("the event has no data.object")
    return obj


def _current_subscription(stripe_id: str, created: int | None) -> Subscription | None:
    fetched = stripe_api.retrieve_subscription(stripe_id)
    row = packages.subscription_row(fetched)
    if row is None:
        return None  # not a subscription Rapport sold
    packages.apply_subscription(row, fetched)
    is_newer(row, created)
    return row


@register("stripe", "invoice.paid")
def invoice_paid(event: WebhookEvent, payload) -> None:
    """A paid invoice: the subscription is current again; a renewal grants its sessions."""
    invoice = _object(payload)
    stripe_id = packages.invoice_subscription_id(invoice)
    if not stripe_id:
        return  # a one-off invoice: nothing Rapport sold
    row = _current_subscription(stripe_id, payload.get("created"))
    if row is None:
        return
    if row.failed_invoice_id == invoice["id"]:
        packages.clear_dunning(row)
    if invoice.get("billing_reason") == "subscription_create":
        return  # the first period comes with the completed Checkout Session
    packages.grant_renewal(row, invoice, payload.get("created"))


@register("stripe", "invoice.payment_failed")
def invoice_payment_failed(event: WebhookEvent, payload) -> None:
    """A failed renewal: dunning starts (or moves on), and the client gets the card link."""
    invoice = _object(payload)
    stripe_id = packages.invoice_subscription_id(invoice)
    if not stripe_id:
        return
    # A later attempt may have succeeded or failed since: act on the invoice as it is now.
    current = stripe_api.retrieve_invoice(invoice["id"])
    if current.get("status") in ("paid", "void", "uncollectible"):
        return
    row = _current_subscription(stripe_id, payload.get("created"))
    if row is None or row.status == "canceled":
        return
    packages.start_dunning(row, current, payload.get("created"))


@register("stripe", "customer.subscription.updated")
def subscription_updated(event: WebhookEvent, payload) -> None:
    """Status, period end and cancel-at-period-end, unless a newer event was applied."""
    obj = _object(payload)
    row = packages.subscription_row(obj)
    if row is None or not is_newer(row, payload.get("created")):
        return
    before = (row.status, row.cancel_at_period_end)
    packages.apply_subscription(row, obj)
    if (row.status, row.cancel_at_period_end) == before:
        return
    if row.cancel_at_period_end and not before[1]:
        when = row.current_period_end
        detail = "Cancels at the end of the period" + (f" ({when:%d %b %Y})" if when else "")
    elif before[1] and not row.cancel_at_period_end:
        detail = "No longer cancels at the end of the period"
    else:
        detail = f"{STATUS_LABELS.get(before[0], before[0])} → {STATUS_LABELS.get(row.status)}"
    record_event(row.contact_id, "subscription_updated", subscription=row, detail=detail)


@register("stripe", "customer.subscription.deleted")
def subscription_deleted(event: WebhookEvent, payload) -> None:
    """The subscription ended: canceled for good, whatever arrives after."""
    obj = _object(payload)
    row = packages.subscription_row(obj)
    if row is None:
        return
    is_newer(row, payload.get("created"))
    if row.status == "canceled":
        return
    row.status = "canceled"
    row.cancel_at_period_end = False
    packages.clear_dunning(row)
    name = row.product.name if row.product else None
    record_event(row.contact_id, "subscription_canceled", subscription=row, detail=name)
