"""Refunds: asked for in Rapport through Stripe's API, confirmed by `charge.refunded`.

A refund row is written (pending) before Stripe is called, and its id makes the
idempotency key, so a retried request never refunds twice. Stripe's refunds of the
payment are the truth: `reconcile_refunds` lists them, confirms Rapport's rows and adds
the ones made on Stripe's dashboard. Services flush, never commit.
"""

from __future__ import annotations

import sqlalchemy as sa

from crm.extensions import db
from crm.integrations import policy
from crm.integrations import stripe as stripe_api
from crm.payments.models import Payment, Refund
from crm.payments.money import format_money
from crm.payments.services import PaymentError, record_event, stripe_configured
from crm.users.models import User

REFUNDABLE = ("paid", "partially_refunded")
# Stripe's refund statuses, as Rapport keeps them.
REFUND_STATUSES = {
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "canceled",
    "pending": "pending",
    "requires_action": "pending",
}


class RefundNotCommitted(Exception):
    """Stripe knows a refund Rapport asked for whose row is not committed yet: retry."""


def available_minor(payment: Payment) -> int:
    """What may still be refunded: the unrefunded amount less refunds still pending."""
    pending = sum(r.amount_minor for r in payment.refunds if r.status == "pending")
    return max(0, payment.refundable_minor - pending)


def refund_payment(
    payment: Payment, *, amount_minor: int | None, reason: str | None, actor: User | None
) -> Refund:
    """Ask Stripe to refund `amount_minor` (None: all that is left) of a paid payment.

    A refusal or outage after the row is written marks it failed and raises PaymentError;
    the caller still commits, so the attempt stays on record (and `charge.refunded`
    confirms it after all if Stripe did make it).
    """
    if not stripe_configured():
        raise PaymentError("Stripe is not configured: payments are off.")
    if payment.status not in REFUNDABLE:
        raise PaymentError("Only a paid payment can be refunded.")
    if not payment.payment_intent_id:
        raise PaymentError("Stripe has not confirmed this payment's charge yet.")
    available = available_minor(payment)
    amount = available if amount_minor is None else amount_minor
    if amount <= 0:
        raise PaymentError("Enter an amount greater than zero.")
    if amount > available:
        raise PaymentError(
            f"You can refund at most {format_money(available, payment.currency)} "
            f"of this payment; {format_money(amount, payment.currency)} is too much."
        )
    reason = (reason or "").strip() or None
    refund = Refund(
        payment_id=payment.id,
        amount_minor=amount,
        reason=reason,
        status="pending",
        created_by_id=actor.id if actor else None,
    )
    payment.refunds.append(refund)
    db.session.flush()
    metadata = {"refund_id": str(refund.id), "payment_id": str(payment.id)}
    if payment.booking_id:
        metadata["booking_id"] = str(payment.booking_id)
    if reason:
        metadata["reason"] = reason[:500]
    try:
        result = stripe_api.create_refund(
            idempotency_key=f"rapport-refund-{refund.id}",
            payment_intent=payment.payment_intent_id,
            amount=amount,
            metadata=metadata,
        )
    except (policy.PermanentError, policy.TransientError) as exc:
        refund.status = "failed"
        if isinstance(exc, policy.PermanentError):
            message = f"Stripe refused the refund: {exc.message or exc}"
        else:
            message = "Stripe did not answer; check the payment at Stripe before trying again."
        record_event(
            payment.contact_id,
            "refund_failed",
            payment=payment,
            amount_minor=amount,
            detail=message,
            actor=actor,
        )
        raise PaymentError(message) from exc
    refund.stripe_refund_id = result["id"]
    # Even a refund Stripe calls succeeded stays pending until `charge.refunded` confirms it.
    if result.get("status") in ("failed", "canceled"):
        refund.status = result["status"]
    record_event(
        payment.contact_id,
        "refund_requested",
        payment=payment,
        amount_minor=amount,
        detail=reason,
        actor=actor,
    )
    return refund


def _refund_row(payment: Payment, data: dict) -> Refund:
    """Rapport's row for Stripe's refund `data`, added when it was made at Stripe."""
    row = db.session.scalars(sa.select(Refund).where(Refund.stripe_refund_id == data["id"])).first()
    if row is not None:
        return row
    raw_id = (data.get("metadata") or {}).get("refund_id")
    if isinstance(raw_id, str) and raw_id.isdigit():
        row = db.session.get(Refund, int(raw_id))
        if row is None or row.payment_id != payment.id:
            raise RefundNotCommitted(f"refund {raw_id} of payment {payment.id} is not stored yet")
        row.stripe_refund_id = data["id"]
        return row
    reason = data.get("reason")
    row = Refund(
        payment_id=payment.id,
        stripe_refund_id=data["id"],
        amount_minor=int(data.get("amount") or 0),
        reason="Refunded at Stripe" + (f" ({reason.replace('_', ' ')})" if reason else ""),
        status="pending",
    )
    payment.refunds.append(row)
    return row


def reconcile_refunds(payment: Payment, amount_refunded: int) -> None:
    """Bring refund rows and the refunded total up to what Stripe says (never down)."""
    if payment.payment_intent_id:
        for data in stripe_api.list_refunds(payment_intent=payment.payment_intent_id, limit=100):
            row = _refund_row(payment, data)
            row.status = REFUND_STATUSES.get(data.get("status"), row.status)
    before = payment.amount_refunded_minor or 0
    if amount_refunded > before:
        payment.amount_refunded_minor = amount_refunded
        record_event(
            payment.contact_id,
            "refunded",
            payment=payment,
            amount_minor=amount_refunded - before,
            detail=(
                "Fully refunded"
                if amount_refunded >= payment.amount_minor
                else f"{format_money(amount_refunded, payment.currency)} refunded in all"
            ),
        )


def apply_charge(payment: Payment, charge: dict) -> None:
    """Copy a charge's refunds onto its payment (the caller settles the status)."""
    if charge.get("id") and not payment.charge_id:
        payment.charge_id = charge["id"]
    reconcile_refunds(payment, int(charge.get("amount_refunded") or 0))
