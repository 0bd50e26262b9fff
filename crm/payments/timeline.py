"""What payments add to a contact: each payment's and subscription's history on the
timeline, and their rows following a merge."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import orm

from crm.contacts.registry import (
    Cursor,
    TimelineEntry,
    entry_key,
    keyset_rows,
    register_contact_source,
)
from crm.payments.models import CreditUse, PackageCredit, Payment, PaymentEvent, Subscription
from crm.payments.money import format_money

TITLES = {
    "checkout_created": "Payment link created",
    "link_sent": "Payment link sent",
    "paid": "Payment received",
    "failed": "Payment failed",
    "expired": "Payment link expired",
    "refund_requested": "Refund requested",
    "refunded": "Refunded",
    "refund_failed": "Refund failed",
    "disputed": "Payment disputed",
    "package_purchased": "Package bought",
    "credit_used": "Package session used",
    "subscription_started": "Subscription started",
    "subscription_updated": "Subscription changed",
    "renewal_paid": "Subscription renewed",
    "renewal_failed": "Subscription renewal failed",
    "dunning_message": "Card update requested",
    "subscription_canceled": "Subscription canceled",
}


def event_title(event: PaymentEvent) -> str:
    title = TITLES.get(event.kind, event.kind.replace("_", " ").capitalize())
    if event.amount_minor is not None and event.currency:
        title += f": {format_money(event.amount_minor, event.currency)}"
    return title


def _key(event: PaymentEvent) -> str:
    return entry_key("payment", event.id)


def payment_entries(contact_id: int, before: Cursor | None, limit: int) -> list[TimelineEntry]:
    """The contact's payments, refunds, disputes, packages and subscription changes."""
    # Only the actor is shown: the models' other joined relationships stay unloaded.
    query = (
        sa.select(PaymentEvent)
        .where(PaymentEvent.contact_id == contact_id)
        .options(orm.lazyload("*"), orm.joinedload(PaymentEvent.actor).lazyload("*"))
    )
    events = keyset_rows(query, PaymentEvent.at, PaymentEvent.id, before, limit, key=_key)
    return [
        TimelineEntry(
            at=e.at,
            kind="payment",
            key=_key(e),
            title=event_title(e),
            body=e.detail,
            actor=e.actor.display_name if e.actor else None,
        )
        for e in events
    ]


register_contact_source(
    "payment_events", timeline=payment_entries, reference=PaymentEvent.contact_id
)
register_contact_source("payments", reference=Payment.contact_id)
register_contact_source("subscriptions", reference=Subscription.contact_id)
register_contact_source("package_credits", reference=PackageCredit.contact_id)
register_contact_source("credit_uses", reference=CreditUse.contact_id)
