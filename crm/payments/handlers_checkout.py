"""Stripe events about booking payments: Checkout Sessions, declines, refunds, disputes.

Each handler is idempotent (a replay changes nothing: the facts are already there) and
correct in any order (see crm/payments/checkout.py). A session that is not a booking's
(metadata kind `package` or `subscription`) goes to `crm.payments.packages` when that
module handles it. Objects that are not Rapport's are ignored.
"""

from __future__ import annotations

import logging

from crm.payments import checkout
from crm.payments.refunds import apply_charge
from crm.payments.services import is_newer
from crm.webhooks.handlers import PermanentHandlerError, register
from crm.webhooks.models import WebhookEvent

log = logging.getLogger(__name__)


def _object(payload: dict, kind: str) -> tuple[dict, int | None]:
    """The event's `data.object` (checked to be a `kind`) and the event's `created`."""
    data = payload.get("data") if isinstance(payload, dict) else None
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict) or obj.get("object") != kind or not obj.get("id"):
        raise PermanentHandlerError(f"the event holds no {kind}")
    created = payload.get("created")
    return obj, created if isinstance(created, int) else None


def _package_handler():
    try:
        from crm.payments.packages import apply_package_session
    except ImportError:
        return None
    return apply_package_session


def _session(
    event: WebhookEvent, payload, *, failed: bool = False
) -> tuple[dict, int | None] | None:
    """The session of a booking payment, or None once handed to packages (or ignored).

    `failed`: the session's delayed payment failed; a package's payment is marked so here,
    since the session alone looks the same as one still processing.
    """
    session, created = _object(payload, "checkout.session")
    kind = (session.get("metadata") or {}).get("kind") or "booking"
    if kind != "booking":
        handler = _package_handler()
        if handler is not None:
            payment = handler(session, created)
            if failed and payment is not None:
                checkout.mark_failed(payment, "The bank payment failed.", created=created)
        else:
            log.info("stripe event %s: a %s session, not handled here", event.event_id, kind)
        return None
    return session, created


@register("stripe", "checkout.session.completed")
@register("stripe", "checkout.session.async_payment_succeeded")
@register("stripe", "checkout.session.expired")
def checkout_session(event: WebhookEvent, payload) -> None:
    """Paid (when `payment_status` is paid), still processing, or expired."""
    found = _session(event, payload)
    if found is None:
        return
    payment = checkout.apply_checkout_session(found[0], created=found[1])
    if payment is None:
        log.info("stripe event %s: session %s is not Rapport's", event.event_id, found[0]["id"])


@register("stripe", "checkout.session.async_payment_failed")
def checkout_async_failed(event: WebhookEvent, payload) -> None:
    """A delayed payment method (a bank debit) failed after the session completed."""
    found = _session(event, payload, failed=True)
    if found is None:
        return
    session, created = found
    payment = checkout.apply_checkout_session(session, created=None)
    if payment is not None:
        checkout.mark_failed(payment, "The bank payment failed.", created=created)


def _intent_id(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


@register("stripe", "payment_intent.payment_failed")
def payment_failed(event: WebhookEvent, payload) -> None:
    """A declined attempt: failed with Stripe's message, unless it was paid meanwhile."""
    intent, created = _object(payload, "payment_intent")
    payment = checkout.find_payment(payment_intent_id=intent["id"], metadata=intent.get("metadata"))
    if payment is None:
        return
    error = intent.get("last_payment_error") or {}
    checkout.mark_failed(payment, error.get("message"), created=created)


@register("stripe", "charge.refunded")
def charge_refunded(event: WebhookEvent, payload) -> None:
    """Refunds confirmed: the cumulative amount refunded, and the refund rows."""
    charge, created = _object(payload, "charge")
    payment = checkout.payment_for_intent(
        _intent_id(charge.get("payment_intent")), charge.get("metadata")
    )
    if payment is None:
        return
    payment = checkout.lock(payment.id)
    is_newer(payment, created)
    if payment.paid_at is None:
        # A refunded charge was paid: mark_paid re-fetches the charge, refunds included.
        checkout.mark_paid(payment)
    apply_charge(payment, charge)
    checkout.settle(payment)


@register("stripe", "charge.dispute.created")
def dispute_created(event: WebhookEvent, payload) -> None:
    """The client's bank disputes the charge."""
    dispute, created = _object(payload, "dispute")
    payment = checkout.payment_for_intent(_intent_id(dispute.get("payment_intent")))
    if payment is None and isinstance(dispute.get("charge"), str):
        payment = checkout.find_payment_by_charge(dispute["charge"])
    if payment is None:
        return
    checkout.mark_disputed(payment, dispute)
