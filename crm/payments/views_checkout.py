"""Paying for a booking: its payments panel, Pay now, the link by SMS or WhatsApp, refunds,
and the public pages Stripe sends the client back to.

The panel (templates/payments/booking.html, block `panel`) loads lazily on a session's
page; without htmx it is a page of its own. Staff and the booking's coach see it (another
coach gets 404); only staff refund. The success page never marks anything paid: the
webhook does, once Stripe confirms.
"""

from __future__ import annotations

from flask import abort, flash, request, url_for
from flask_login import current_user, login_required

from crm.auth.access import STAFF_ROLES
from crm.auth.views import safe_next
from crm.bookings.models import Booking
from crm.bookings.services import get_visible
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.payments import checkout
from crm.payments.models import Payment
from crm.payments.money import decimals, to_major, to_minor
from crm.payments.refunds import REFUNDABLE, available_minor, refund_payment
from crm.payments.services import PaymentError, stripe_configured
from crm.payments.views import bp

TEMPLATE = "payments/booking.html"
UPDATED = "payments-updated"
STATUS_LABELS = {
    "pending": "Awaiting payment",
    "paid": "Paid",
    "failed": "Failed",
    "expired": "Link expired",
    "refunded": "Refunded",
    "partially_refunded": "Partially refunded",
    "disputed": "Disputed",
}
REFUND_LABELS = {
    "pending": "Pending",
    "succeeded": "Refunded",
    "failed": "Failed",
    "canceled": "Canceled",
}


def _fragment() -> bool:
    return bool(request.htmx and not request.htmx.boosted)


def _is_staff() -> bool:
    return current_user.role in STAFF_ROLES


def _booking_or_404(booking_id: int) -> Booking:
    booking = get_visible(booking_id, current_user)
    if booking is None:
        abort(404)
    return booking


def _context(booking: Booking, **overrides) -> dict:
    payments = checkout.booking_payments(booking)
    configured = stripe_configured()
    try:
        due = checkout.amount_due(booking)
    except PaymentError:
        due = None
    paid = any(p.status in checkout.TOOK_MONEY for p in payments)
    return {
        "booking": booking,
        "payments": payments,
        "configured": configured,
        "due": due,
        "can_pay": configured and due is not None and booking.status != "canceled" and not paid,
        "can_refund": configured and _is_staff(),
        "refundable": REFUNDABLE,
        "available": available_minor,
        "major": lambda amount, currency: f"{to_major(amount, currency):.{decimals(currency)}f}",
        "status_labels": STATUS_LABELS,
        "refund_labels": REFUND_LABELS,
        "channels": checkout.CHANNELS,
        "back": safe_next(request.values.get("next")) or "",
        "error": None,
        "notice": None,
        "link": None,
    } | overrides


def _panel(booking: Booking, **overrides):
    response = render(TEMPLATE, "panel", **_context(booking, **overrides))
    if _fragment() and not overrides.get("error"):
        response.headers["HX-Trigger"] = UPDATED
    return response


def _back(booking: Booking) -> str:
    return safe_next(request.form.get("next")) or url_for(
        "payments.booking_panel", booking_id=booking.id
    )


@bp.get("/bookings/<int:booking_id>")
@login_required
def booking_panel(booking_id: int):
    """The booking's payments: a panel for the session page, a page of its own without htmx."""
    booking = _booking_or_404(booking_id)
    return render(TEMPLATE, "panel", **_context(booking))


def _refused(booking: Booking, message: str):
    """A refusal where the buttons are (htmx, 200 so it swaps) or flashed on the way back."""
    db.session.rollback()
    if _fragment():
        return render(TEMPLATE, "panel", **_context(booking, error=message))
    flash(message, "error")
    return redirect_303(_back(booking))


@bp.post("/bookings/<int:booking_id>/checkout")
@login_required
def pay_booking(booking_id: int):
    """Open (or reuse) the booking's Checkout Session: off to Stripe, or the link in the panel."""
    booking = _booking_or_404(booking_id)
    try:
        payment = checkout.create_booking_checkout(booking, actor=current_user)
    except PaymentError as exc:
        return _refused(booking, str(exc))
    db.session.commit()
    if _fragment():
        return _panel(booking, link=payment)
    return redirect_303(payment.checkout_url)


@bp.post("/bookings/<int:booking_id>/send-link")
@login_required
def send_link(booking_id: int):
    """Text the client the payment link by SMS or WhatsApp."""
    booking = _booking_or_404(booking_id)
    channel = request.form.get("channel", "")
    try:
        payment = checkout.send_payment_link(booking, channel, actor=current_user)
    except checkout.LinkNotSent as exc:
        # The checkout exists at Stripe: keep it, so the next try reuses its session.
        db.session.commit()
        if _fragment():
            return render(TEMPLATE, "panel", **_context(booking, error=str(exc)))
        flash(str(exc), "error")
        return redirect_303(_back(booking))
    except PaymentError as exc:
        return _refused(booking, str(exc))
    db.session.commit()
    notice = f"Payment link sent by {checkout.CHANNELS[channel]}."
    if _fragment():
        return _panel(booking, notice=notice, link=payment)
    flash(notice, "success")
    return redirect_303(_back(booking))


def _payment_or_404(payment_id: int) -> Payment:
    """The payment, if its booking is visible to the user (coaches) or for staff."""
    payment = db.session.get(Payment, payment_id)
    if payment is None:
        abort(404)
    if _is_staff():
        return payment
    if payment.booking_id is None or get_visible(payment.booking_id, current_user) is None:
        abort(404)
    return payment


@bp.post("/<int:payment_id>/refund")
@login_required
def refund(payment_id: int):
    """Refund a payment in full or in part (staff), with a reason; the webhook confirms it."""
    payment = _payment_or_404(payment_id)
    if not _is_staff():
        abort(403)
    booking = payment.booking
    raw = request.form.get("amount", "").strip()
    try:
        amount = to_minor(raw, payment.currency) if raw else None
    except ValueError as exc:
        message = f"{exc}." if "decimals" in str(exc) else f"“{raw}” is not an amount."
        return _refund_refused(payment, message)
    try:
        refund_payment(
            payment, amount_minor=amount, reason=request.form.get("reason"), actor=current_user
        )
    except PaymentError as exc:
        # A refusal before Stripe wrote nothing; a failure after it is kept on record.
        db.session.commit()
        return _refund_refused(payment, str(exc))
    db.session.commit()
    notice = "Refund requested; Stripe confirms it shortly."
    if _fragment() and booking is not None:
        return _panel(booking, notice=notice)
    flash(notice, "success")
    return redirect_303(_refund_back(payment))


def _refund_back(payment: Payment) -> str:
    if payment.booking_id is not None:
        return _back(payment.booking)
    return safe_next(request.form.get("next")) or url_for(
        "contacts.show", contact_id=payment.contact_id
    )


def _refund_refused(payment: Payment, message: str):
    if _fragment() and payment.booking is not None:
        return render(TEMPLATE, "panel", **_context(payment.booking, error=message))
    flash(message, "error")
    return redirect_303(_refund_back(payment))


# --- where Stripe sends the client back (public) --------------------------------------


@bp.get("/checkout/success")
def success():
    """Thanks the client; the payment counts once Stripe's webhook confirms it."""
    return render("payments/success.html")


@bp.get("/checkout/canceled")
def canceled():
    """The client left Checkout without paying."""
    return render("payments/canceled.html")
