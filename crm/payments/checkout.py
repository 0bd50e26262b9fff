"""Paying for a booking: a Stripe Checkout Session, its link sent by SMS or WhatsApp, and
what Stripe's events say became of it.

A payment's state is built from facts that only ever grow: it was paid (`paid_at`), this
much was refunded (`amount_refunded_minor`, the largest Stripe reported), a dispute was
opened (`dispute_id`). `settle` derives the status from them, so events applied in any
order end in the same state; `failed` and `expired` only stand while nothing was paid.
Where a late event would miss what happened since, the handler re-fetches the object
(the PaymentIntent's latest charge when a payment becomes paid). Services flush, never
commit; Stripe calls happen before the caller commits, with idempotency keys made from
row ids so a retried request never charges twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import sqlalchemy as sa
from flask import current_app

from crm.bookings.models import Booking
from crm.database import utcnow
from crm.extensions import db
from crm.integrations import policy
from crm.integrations import stripe as stripe_api
from crm.payments.models import Payment
from crm.payments.money import format_money
from crm.payments.services import (
    PaymentError,
    external_url,
    is_newer,
    record_event,
    stripe_configured,
    sync_booking_status,
)
from crm.users.models import User

log = logging.getLogger(__name__)

# A payment in one of these took the client's money (some may have gone back since).
TOOK_MONEY = ("paid", "partially_refunded", "refunded", "disputed")
CHANNELS = {"sms": "SMS", "whatsapp": "WhatsApp"}


class LinkNotSent(PaymentError):
    """The checkout exists but the message was refused (no phone, opted out...)."""


def call_stripe(action):
    """Run a Stripe call for a person waiting: a refusal or an outage becomes a PaymentError."""
    try:
        return action()
    except policy.PermanentError as exc:
        raise PaymentError(f"Stripe refused: {exc.message or exc}") from exc
    except policy.TransientError as exc:
        raise PaymentError("Stripe is not answering; try again in a moment.") from exc


def destination_for(coach: User | None) -> str | None:
    """The coach's Connect account when it may take charges (None while Connect is absent)."""
    try:
        from crm.payments.connect import destination_for as connect_destination
    except ImportError:
        return None
    return connect_destination(coach) if coach is not None else None


def platform_fee(amount_minor: int) -> int:
    """The platform's share of a destination charge, in the same minor unit."""
    percent = float(current_app.config.get("STRIPE_PLATFORM_FEE_PERCENT") or 0)
    return round(amount_minor * percent / 100)


def lock(payment_id: int) -> Payment | None:
    """The payment, reloaded and locked, so two events about it apply one after the other."""
    return db.session.scalars(
        sa.select(Payment)
        .where(Payment.id == payment_id)
        .with_for_update(of=Payment)
        .execution_options(populate_existing=True)
    ).first()


def booking_payments(booking: Booking) -> list[Payment]:
    """The booking's payments, newest first."""
    return list(
        db.session.scalars(
            sa.select(Payment)
            .where(Payment.booking_id == booking.id)
            .order_by(Payment.created_at.desc(), Payment.id.desc())
        )
    )


def amount_due(booking: Booking) -> tuple[int, str]:
    """(amount in minor units, currency) for the booking's service; PaymentError if none."""
    service = booking.service
    if service is None or not service.price_minor or service.price_minor <= 0:
        raise PaymentError("This session has no priced service: there is nothing to pay.")
    currency = (service.currency or current_app.config.get("PAYMENTS_CURRENCY") or "usd").lower()
    return service.price_minor, currency


# --- creating a checkout ------------------------------------------------------------


def _open_payment(booking: Booking) -> Payment | None:
    """The booking's pending payment whose session can still be paid, if any."""
    for payment in booking_payments(booking):
        if payment.status != "pending" or not payment.checkout_session_id:
            continue
        session = call_stripe(
            lambda p=payment: stripe_api.retrieve_checkout_session(p.checkout_session_id)
        )
        if session.get("status") == "open":
            return payment
        # Closed since: apply what Stripe says (expired, or paid with its event on the way).
        apply_checkout_session(session, created=None)
        if payment.status in TOOK_MONEY:
            raise PaymentError("This session is already paid.")
        if payment.status == "pending":
            raise PaymentError("A payment for this session is being processed.")
    return None


def create_booking_checkout(booking: Booking, *, actor: User | None) -> Payment:
    """Open a Checkout Session for the booking's price, or return the one still open."""
    if not stripe_configured():
        raise PaymentError("Stripe is not configured: payments are off.")
    if booking.status == "canceled":
        raise PaymentError("This session is canceled: there is nothing to pay.")
    amount, currency = amount_due(booking)
    if any(p.status in TOOK_MONEY for p in booking_payments(booking)):
        raise PaymentError("This session is already paid.")
    existing = _open_payment(booking)
    if existing is not None:
        return existing

    contact = booking.contact
    destination = destination_for(booking.coach)
    payment = Payment(
        kind="booking",
        contact_id=contact.id,
        booking_id=booking.id,
        coach_id=booking.coach_id,
        status="pending",
        amount_minor=amount,
        currency=currency,
        created_by_id=actor.id if actor else None,
    )
    db.session.add(payment)
    db.session.flush()

    metadata = {
        "booking_id": str(booking.id),
        "contact_id": str(contact.id),
        "payment_id": str(payment.id),
        "kind": "booking",
    }
    intent_data: dict = {"metadata": metadata}
    if destination:
        payment.platform_fee_minor = platform_fee(amount)
        payment.destination_account = destination
        intent_data["application_fee_amount"] = payment.platform_fee_minor
        intent_data["transfer_data"] = {"destination": destination}
    name = booking.service.name
    params = {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": currency,
                    "unit_amount": amount,
                    "product_data": {"name": name},
                },
                "quantity": 1,
            }
        ],
        "client_reference_id": f"booking-{booking.id}",
        "metadata": metadata,
        "payment_intent_data": intent_data,
        # Stripe fills the placeholder in; url_for would escape its braces.
        "success_url": external_url("payments.success") + "?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": external_url("payments.canceled"),
    }
    if contact.email:
        params["customer_email"] = contact.email
    session = call_stripe(
        lambda: stripe_api.create_checkout_session(
            idempotency_key=f"rapport-checkout-payment-{payment.id}", **params
        )
    )
    payment.checkout_session_id = session["id"]
    payment.checkout_url = session.get("url")
    payment.last_event_created = session.get("created")
    detail = f"{name}, {format_money(amount, currency)}"
    if destination:
        detail += (
            f"; to {destination}, platform fee {format_money(payment.platform_fee_minor, currency)}"
        )
    record_event(
        contact.id,
        "checkout_created",
        payment=payment,
        amount_minor=amount,
        currency=currency,
        detail=detail,
        actor=actor,
    )
    sync_booking_status(booking)
    return payment


def send_payment_link(booking: Booking, channel: str, *, actor: User | None) -> Payment:
    """Text the client the booking's checkout link (creating it when needed)."""
    from crm.conversations.services import SendRefused, open_conversation, queue_message

    if channel not in CHANNELS:
        raise PaymentError("Choose SMS or WhatsApp.")
    payment = create_booking_checkout(booking, actor=actor)
    if not payment.checkout_url:
        raise PaymentError("Stripe gave no link for this payment.")
    service = booking.service.name if booking.service else "your session"
    body = (
        f"Hi {booking.contact.name}, here is the link to pay for {service} "
        f"({format_money(payment.amount_minor, payment.currency)}): {payment.checkout_url}"
    )
    try:
        # A refused send leaves no empty conversation behind; the payment stays.
        with db.session.begin_nested():
            queue_message(open_conversation(booking.contact, channel), body=body, actor=actor)
    except SendRefused as exc:
        raise LinkNotSent(f"The link was not sent: {exc}") from exc
    record_event(
        booking.contact_id,
        "link_sent",
        payment=payment,
        detail=f"By {CHANNELS[channel]}",
        actor=actor,
    )
    return payment


# --- what Stripe tells us -------------------------------------------------------------


def settle(payment: Payment) -> None:
    """Derive the status of a paid payment from its facts; keep the booking in step."""
    if payment.paid_at is not None:
        if payment.dispute_id:
            payment.status = "disputed"
        elif payment.amount_refunded_minor >= payment.amount_minor:
            payment.status = "refunded"
        elif payment.amount_refunded_minor > 0:
            payment.status = "partially_refunded"
        else:
            payment.status = "paid"
    sync_booking_status(payment.booking)


def find_payment(
    *,
    session_id: str | None = None,
    payment_intent_id: str | None = None,
    metadata: dict | None = None,
    client_reference_id: str | None = None,
) -> Payment | None:
    """The payment Stripe's object is about, by the strongest reference it carries."""
    for column, value in (
        (Payment.checkout_session_id, session_id),
        (Payment.payment_intent_id, payment_intent_id),
    ):
        if value:
            found = db.session.scalars(sa.select(Payment).where(column == value)).first()
            if found is not None:
                return found
    raw_id = (metadata or {}).get("payment_id")
    if isinstance(raw_id, str) and raw_id.isdigit():
        found = db.session.get(Payment, int(raw_id))
        # A session's metadata names its own payment; never one tied to another session.
        if found is not None and (
            not session_id or found.checkout_session_id in (None, session_id)
        ):
            return found
    prefix = "booking-"
    if client_reference_id and client_reference_id.startswith(prefix):
        booking_id = client_reference_id.removeprefix(prefix)
        if booking_id.isdigit():
            return db.session.scalars(
                sa.select(Payment)
                .where(Payment.booking_id == int(booking_id), Payment.checkout_session_id.is_(None))
                .order_by(Payment.id.desc())
            ).first()
    return None


def find_payment_by_charge(charge_id: str) -> Payment | None:
    """The payment whose charge is `charge_id`."""
    return db.session.scalars(sa.select(Payment).where(Payment.charge_id == charge_id)).first()


def payment_for_intent(payment_intent_id: str | None, metadata: dict | None = None):
    """The payment of a PaymentIntent; asks Stripe for its Checkout Session when unknown yet.

    A `charge.*` event may come before `checkout.session.completed`: the session (found by
    its payment_intent) is applied first, so the payment is paid before it is refunded.
    """
    payment = find_payment(payment_intent_id=payment_intent_id, metadata=metadata)
    if payment is not None or not payment_intent_id:
        return payment
    for session in stripe_api.list_checkout_sessions(payment_intent=payment_intent_id, limit=1):
        payment = apply_checkout_session(session, created=None)
    return payment


def _set_intent(payment: Payment, payment_intent_id: str | None) -> None:
    if payment_intent_id and payment.payment_intent_id != payment_intent_id:
        payment.payment_intent_id = payment_intent_id


def mark_paid(payment: Payment, *, at: datetime | None = None) -> bool:
    """Record that the money came in (once); return whether it is new.

    Re-fetches the PaymentIntent's latest charge: a refund or dispute that was applied
    before this payment was known paid would otherwise be lost.
    """
    if payment.paid_at is not None:
        return False
    payment.paid_at = at or utcnow()
    payment.failure_reason = None if payment.status == "failed" else payment.failure_reason
    record_event(payment.contact_id, "paid", payment=payment, amount_minor=payment.amount_minor)
    if payment.payment_intent_id:
        from crm.payments.refunds import apply_charge

        intent = stripe_api.retrieve_payment_intent(payment.payment_intent_id)
        charge_id = intent.get("latest_charge")
        if isinstance(charge_id, dict):
            charge_id = charge_id.get("id")
        if charge_id:
            apply_charge(payment, stripe_api.retrieve_charge(charge_id))
    settle(payment)
    return True


def _epoch(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int) else None


def apply_checkout_session(session: dict, *, created: int | None) -> Payment | None:
    """Apply a Checkout Session snapshot to its payment; None when it is not Rapport's.

    Paid only when `payment_status` is `paid`; a completed session still `unpaid` waits
    for `checkout.session.async_payment_succeeded`. An expired session ends a pending
    payment (the booking stays unpaid).
    """
    found = find_payment(
        session_id=session.get("id"),
        metadata=session.get("metadata"),
        client_reference_id=session.get("client_reference_id"),
    )
    if found is None:
        return None
    payment = lock(found.id)
    is_newer(payment, created)
    if not payment.checkout_session_id:
        payment.checkout_session_id = session.get("id")
    intent = session.get("payment_intent")
    _set_intent(payment, intent.get("id") if isinstance(intent, dict) else intent)
    status = session.get("status")
    if status == "complete" and session.get("payment_status") in ("paid", "no_payment_required"):
        mark_paid(payment, at=_epoch(created))
    elif status == "expired" and payment.paid_at is None and payment.status != "expired":
        # Final whenever it arrives: an expired session can no longer be paid.
        payment.status = "expired"
        payment.checkout_url = None
        record_event(payment.contact_id, "expired", payment=payment)
    settle(payment)
    return payment


def mark_failed(payment: Payment, reason: str | None, *, created: int | None) -> None:
    """A declined attempt: failed with its reason, unless the payment was paid meanwhile."""
    payment = lock(payment.id)
    newer = is_newer(payment, created)
    if payment.paid_at is not None or not newer:
        return
    reason = reason or "The payment failed."
    if payment.status == "failed" and payment.failure_reason == reason:
        return
    payment.status = "failed"
    payment.failure_reason = reason
    record_event(payment.contact_id, "failed", payment=payment, detail=reason)
    settle(payment)


def mark_disputed(payment: Payment, dispute: dict) -> None:
    """The client's bank opened a dispute (recorded once, whatever came before)."""
    payment = lock(payment.id)
    if payment.dispute_id:
        return
    payment.dispute_id = dispute.get("id")
    payment.dispute_reason = (dispute.get("reason") or "")[:100] or None
    if payment.paid_at is None:
        # Only a paid charge can be disputed: the completed event is still on its way.
        payment.paid_at = _epoch(dispute.get("created")) or utcnow()
        record_event(payment.contact_id, "paid", payment=payment, amount_minor=payment.amount_minor)
    charge = dispute.get("charge")
    if isinstance(charge, str) and not payment.charge_id:
        payment.charge_id = charge
    record_event(
        payment.contact_id,
        "disputed",
        payment=payment,
        amount_minor=dispute.get("amount"),
        currency=dispute.get("currency") or payment.currency,
        detail=f"Reason: {payment.dispute_reason}" if payment.dispute_reason else None,
    )
    settle(payment)
