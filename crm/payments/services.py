"""Payments' shared writes: history lines, event ordering, a booking's payment status.

Domain-specific flows live beside this module (checkout, refunds, Connect, packages and
subscriptions); they all record through `record_event` and keep a booking's
`payment_status` in step with `sync_booking_status`. Services flush, never commit.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from flask import current_app

from crm.bookings.models import Booking
from crm.database import utcnow
from crm.extensions import db
from crm.payments.models import Payment, PaymentEvent, Subscription
from crm.urls import external_url as absolute_url
from crm.users.models import User


class PaymentError(Exception):
    """A payment action that cannot be done; the message is shown to the user."""


def external_url(endpoint: str, **values) -> str:
    """An absolute URL for Stripe's redirects and clients' links; PaymentError when none."""
    url = absolute_url(endpoint, **values)
    if url is None:
        raise PaymentError("PUBLIC_BASE_URL is not set: Rapport cannot build links for clients.")
    return url


def stripe_configured() -> bool:
    """True when Stripe can be called (a secret key is set)."""
    return bool(current_app.config.get("STRIPE_SECRET_KEY"))


def record_event(
    contact_id: int,
    kind: str,
    *,
    payment: Payment | None = None,
    subscription: Subscription | None = None,
    amount_minor: int | None = None,
    currency: str | None = None,
    detail: str | None = None,
    actor: User | None = None,
    at: datetime | None = None,
) -> PaymentEvent:
    """Add a line to a payment's or subscription's history (and the contact's timeline)."""
    event = PaymentEvent(
        contact_id=contact_id,
        payment_id=payment.id if payment is not None else None,
        subscription_id=subscription.id if subscription is not None else None,
        kind=kind,
        at=at or utcnow(),
        amount_minor=amount_minor,
        currency=currency or (payment.currency if payment is not None else None),
        detail=detail,
        actor_id=actor.id if actor is not None else None,
    )
    db.session.add(event)
    return event


def is_newer(row: Payment | Subscription, created: int | None) -> bool:
    """Whether an event created at `created` (Stripe's epoch seconds) may change `row`.

    Stripe delivers events in any order; a row remembers the newest event applied, and an
    older snapshot never overwrites it. Equal times pass: Stripe's clock has one-second
    grain, and handlers re-fetch the object when the order within a second matters.
    """
    if created is None:
        return True
    if row.last_event_created is not None and created < row.last_event_created:
        return False
    row.last_event_created = created
    return True


# The booking's view of its payments: the first status present wins.
_BOOKING_STATUS = (
    ("disputed", "disputed"),
    ("paid", "paid"),
    ("partially_refunded", "partially_refunded"),
    ("refunded", "refunded"),
    ("pending", "pending"),
    ("failed", "unpaid"),
    ("expired", "unpaid"),
)


def sync_booking_status(booking: Booking | None) -> None:
    """Set `booking.payment_status` from its payments (unchanged when it has none)."""
    if booking is None:
        return
    db.session.flush()
    statuses = set(
        db.session.scalars(sa.select(Payment.status).where(Payment.booking_id == booking.id))
    )
    for status, shown in _BOOKING_STATUS:
        if status in statuses:
            booking.payment_status = shown
            return
