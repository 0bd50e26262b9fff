"""Packages and monthly plans: the products, buying them through Checkout, the session
credits they grant, a completed session using one, and subscriptions with their dunning.

Services flush, never commit. Webhook handlers for invoices and subscriptions live in
`handlers_billing`; P1's `checkout.session.completed` handler calls `apply_package_session`
for sessions whose metadata `kind` is package or subscription.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.exc import IntegrityError

from crm.bookings.models import Booking
from crm.bookings.services import on_outcome
from crm.contacts.models import Contact
from crm.conversations.models import CHANNEL_LABELS
from crm.conversations.services import SendRefused, open_conversation, queue_message
from crm.database import utcnow
from crm.extensions import db
from crm.integrations import policy
from crm.integrations import stripe as stripe_api
from crm.payments.models import (
    SUBSCRIPTION_STATUSES,
    CreditUse,
    PackageCredit,
    Payment,
    Product,
    Subscription,
)
from crm.payments.services import (
    PaymentError,
    external_url,
    is_newer,
    record_event,
    stripe_configured,
)
from crm.users.models import User
from crm.webhooks.handlers import PermanentHandlerError

# A Checkout Session lives 24 hours; an older pending one is not offered again.
OPEN_SESSION = timedelta(hours=23)
# The update-card link in a dunning message: Stripe's retries span about three weeks.
CARD_LINK_MAX_AGE = 45 * 24 * 3600
CARD_LINK_SALT = "rapport-update-card"
DUNNING_STATUSES = ("past_due", "unpaid")


# --- products -----------------------------------------------------------------------


def save_product(product: Product | None, clean: dict, *, actor: User) -> Product:
    """Create a package or plan, or change one (a plan's price applies to new buyers only)."""
    if product is None:
        product = Product()
        db.session.add(product)
    for key in ("name", "kind", "sessions", "price_minor", "currency", "service_id", "active"):
        setattr(product, key, clean[key])
    db.session.flush()
    return product


def active_products() -> list[Product]:
    return list(
        db.session.scalars(
            sa.select(Product).where(Product.active.is_(True)).order_by(Product.kind, Product.name)
        )
    )


# --- links for clients --------------------------------------------------------------


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=CARD_LINK_SALT)


def card_token(subscription: Subscription) -> str:
    """A signed, expiring token naming the subscription, for the public update-card page."""
    return _serializer().dumps(subscription.id)


def subscription_for_token(token: str) -> Subscription | None:
    """The subscription a card token names, or None when it is tampered with or too old."""
    try:
        subscription_id = _serializer().loads(token, max_age=CARD_LINK_MAX_AGE)
    except BadSignature:  # SignatureExpired is one too
        return None
    if not isinstance(subscription_id, int):
        return None
    return db.session.get(Subscription, subscription_id)


def update_card_url(subscription: Subscription) -> str:
    return external_url("payments.update_card", token=card_token(subscription))


# --- buying -------------------------------------------------------------------------


def _checkout_return_urls() -> dict:
    # The client's pages after Checkout (P1's public success and cancel pages).
    return {
        "success_url": external_url("payments.success") + "?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": external_url("payments.canceled"),
    }


def open_checkout(contact: Contact, product: Product) -> Payment | None:
    """The contact's still-open Checkout for `product`, if any."""
    return db.session.scalars(
        sa.select(Payment)
        .where(
            Payment.contact_id == contact.id,
            Payment.product_id == product.id,
            Payment.status == "pending",
            Payment.checkout_url.is_not(None),
            Payment.created_at > utcnow() - OPEN_SESSION,
        )
        .order_by(Payment.id.desc())
    ).first()


def create_product_checkout(contact: Contact, product: Product, *, actor: User) -> Payment:
    """Open a Checkout Session for a package (mode payment) or a plan (mode subscription)."""
    if not stripe_configured():
        raise PaymentError("Stripe is not configured: packages and plans cannot be sold.")
    if contact.deleted_at is not None:
        raise PaymentError("This contact is in the trash.")
    if not product.active:
        raise PaymentError(f"“{product.name}” is no longer sold.")
    existing = open_checkout(contact, product)
    if existing is not None:
        return existing
    payment = Payment(
        kind=product.kind,
        contact_id=contact.id,
        product_id=product.id,
        status="pending",
        amount_minor=product.price_minor,
        currency=product.currency,
        amount_refunded_minor=0,
        created_by_id=actor.id if actor else None,
    )
    db.session.add(payment)
    db.session.flush()
    metadata = {
        "contact_id": str(contact.id),
        "product_id": str(product.id),
        "payment_id": str(payment.id),
        "kind": product.kind,
    }
    price_data: dict = {
        "currency": product.currency,
        "unit_amount": product.price_minor,
        "product_data": {"name": product.name},
    }
    params: dict = {
        "mode": "subscription" if product.kind == "subscription" else "payment",
        "line_items": [{"price_data": price_data, "quantity": 1}],
        "client_reference_id": f"contact-{contact.id}",
        "metadata": metadata,
        **_checkout_return_urls(),
    }
    if product.kind == "subscription":
        price_data["recurring"] = {"interval": "month"}
        # The subscription carries the same references, so its own events find the contact.
        params["subscription_data"] = {"metadata": metadata}
    else:
        params["payment_intent_data"] = {"metadata": metadata}
    if contact.email:
        params["customer_email"] = contact.email
    try:
        session = stripe_api.create_checkout_session(
            idempotency_key=f"rapport-checkout-payment-{payment.id}", **params
        )
    except policy.CallError as exc:
        raise PaymentError(f"Stripe could not open a checkout: {exc}") from exc
    payment.checkout_session_id = session["id"]
    payment.checkout_url = session.get("url")
    record_event(
        contact.id,
        "checkout_created",
        payment=payment,
        amount_minor=payment.amount_minor,
        detail=product.name,
        actor=actor,
    )
    return payment


def send_checkout_link(payment: Payment, channel: str, *, actor: User | None) -> None:
    """Send the open Checkout link to the client by SMS or WhatsApp."""
    if channel not in CHANNEL_LABELS:
        raise PaymentError("Choose SMS or WhatsApp.")
    if payment.status != "pending" or not payment.checkout_url:
        raise PaymentError("This payment has no open link to send.")
    contact = payment.contact
    name = payment.product.name if payment.product else "your purchase"
    body = f"Hi {_first_name(contact)}, here is the link to pay for {name}: {payment.checkout_url}"
    try:
        queue_message(open_conversation(contact, channel), body=body, actor=actor)
    except SendRefused as exc:
        raise PaymentError(str(exc)) from exc
    record_event(
        contact.id,
        "link_sent",
        payment=payment,
        detail=f"By {CHANNEL_LABELS[channel]}",
        actor=actor,
    )


def _first_name(contact: Contact) -> str:
    return (contact.name or "").split(" ")[0] or "there"


# --- Stripe objects -------------------------------------------------------------------


def _id(value) -> str | None:
    """An object's id whether Stripe sent the id or the expanded object."""
    if isinstance(value, dict):
        return value.get("id")
    return value or None


def _int(value) -> int | None:
    return int(value) if isinstance(value, str | int) and str(value).isdigit() else None


def _at(epoch) -> datetime | None:
    return datetime.fromtimestamp(int(epoch), UTC) if epoch else None


def invoice_subscription_id(invoice: dict) -> str | None:
    """The subscription an invoice bills (`parent.subscription_details` since API 2025-03-31)."""
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    return _id(details.get("subscription")) or _id(invoice.get("subscription"))


def period_end(subscription: dict) -> datetime | None:
    """The current period's end: on the items since API 2025-03-31, else on the subscription."""
    items = (subscription.get("items") or {}).get("data") or []
    ends = [i["current_period_end"] for i in items if i.get("current_period_end")]
    return _at(max(ends) if ends else subscription.get("current_period_end"))


def subscription_row(
    obj: dict, *, contact_id: int | None = None, product_id: int | None = None
) -> Subscription | None:
    """Our row for a Stripe subscription, created from its metadata; None when not ours."""
    row = db.session.scalars(
        sa.select(Subscription).where(Subscription.stripe_subscription_id == obj["id"])
    ).first()
    if row is not None:
        return row
    metadata = obj.get("metadata") or {}
    contact_id = contact_id or _int(metadata.get("contact_id"))
    if contact_id is None or db.session.get(Contact, contact_id) is None:
        return None
    product_id = product_id or _int(metadata.get("product_id"))
    if product_id is not None and db.session.get(Product, product_id) is None:
        product_id = None
    row = Subscription(
        contact_id=contact_id,
        product_id=product_id,
        stripe_subscription_id=obj["id"],
        stripe_customer_id=_id(obj.get("customer")),
        status=obj.get("status") if obj.get("status") in SUBSCRIPTION_STATUSES else "incomplete",
        cancel_at_period_end=False,
        attempt_count=0,
    )
    try:
        with db.session.begin_nested():
            db.session.add(row)
    except IntegrityError:
        # Another event for the same subscription created it first: use theirs.
        return db.session.scalars(
            sa.select(Subscription).where(Subscription.stripe_subscription_id == obj["id"])
        ).one()
    return row


def apply_subscription(row: Subscription, obj: dict) -> None:
    """Copy status, period end and cancel-at-period-end; a canceled subscription stays so."""
    status = obj.get("status")
    if row.status != "canceled" and status in SUBSCRIPTION_STATUSES:
        row.status = status
    row.current_period_end = period_end(obj) or row.current_period_end
    row.cancel_at_period_end = bool(obj.get("cancel_at_period_end")) and row.status != "canceled"
    row.stripe_customer_id = row.stripe_customer_id or _id(obj.get("customer"))
    if row.status not in DUNNING_STATUSES and row.status != "incomplete":
        clear_dunning(row)


def clear_dunning(row: Subscription) -> None:
    row.failed_invoice_id = None
    row.attempt_count = 0
    row.next_payment_attempt = None
    row.dunning_started_at = None


def _credit_for(payment: Payment) -> PackageCredit | None:
    return db.session.scalars(
        sa.select(PackageCredit).where(PackageCredit.payment_id == payment.id)
    ).first()


def grant_credit(
    payment: Payment, product: Product, *, subscription: Subscription | None = None
) -> PackageCredit | None:
    """The sessions `payment` bought, once (one credit per payment); None if already given."""
    if _credit_for(payment) is not None:
        return None
    credit = PackageCredit(
        contact_id=payment.contact_id,
        product_id=product.id,
        payment_id=payment.id,
        subscription_id=subscription.id if subscription else None,
        sessions_total=product.sessions,
        sessions_used=0,
    )
    db.session.add(credit)
    db.session.flush()
    return credit


# --- a completed Checkout Session ---------------------------------------------------------


def apply_package_session(session: dict, created: int | None = None) -> Payment:
    """Fulfil a paid Checkout Session for a package (a credit) or a plan (a subscription)."""
    metadata = session.get("metadata") or {}
    payment = None
    if (payment_id := _int(metadata.get("payment_id"))) is not None:
        payment = db.session.get(Payment, payment_id)
    if payment is None and session.get("id"):
        payment = db.session.scalars(
            sa.select(Payment).where(Payment.checkout_session_id == session["id"])
        ).first()
    if payment is None or payment.kind not in ("package", "subscription"):
        raise PermanentHandlerError(f"no package or plan payment for session {session.get('id')}")
    if _int(metadata.get("contact_id")) not in (None, payment.contact_id):
        raise PermanentHandlerError(f"session {session.get('id')} names another contact")
    if session.get("status") == "expired":
        if payment.status == "pending":
            payment.status = "expired"
            payment.checkout_url = None
            record_event(payment.contact_id, "expired", payment=payment)
        return payment
    if session.get("payment_status") not in ("paid", "no_payment_required"):
        return payment  # a delayed method: async_payment_succeeded brings it back
    payment.checkout_session_id = payment.checkout_session_id or session.get("id")
    if payment.status in ("pending", "failed", "expired"):
        payment.status = "paid"
        payment.paid_at = payment.paid_at or _at(created) or utcnow()
        payment.failure_reason = None
    payment.checkout_url = None
    product = payment.product
    if product is None:
        raise PermanentHandlerError(f"payment {payment.id} has lost its product")
    if payment.kind == "package":
        if intent := _id(session.get("payment_intent")):
            payment.payment_intent_id = payment.payment_intent_id or intent
        if payment.status == "refunded":
            return payment  # refunded before we heard it was paid: no sessions to give
        if grant_credit(payment, product) is not None:
            record_event(
                payment.contact_id,
                "package_purchased",
                payment=payment,
                amount_minor=payment.amount_minor,
                detail=f"{product.name}: {product.sessions} sessions",
            )
        return payment
    _start_subscription(payment, product, session, created)
    return payment


def _start_subscription(
    payment: Payment, product: Product, session: dict, created: int | None
) -> None:
    stripe_id = _id(session.get("subscription"))
    if not stripe_id:
        raise PermanentHandlerError(f"subscription session {session.get('id')} has no subscription")
    # The session does not carry the subscription's state: ask Stripe for it now.
    fetched = stripe_api.retrieve_subscription(stripe_id)
    row = subscription_row(fetched, contact_id=payment.contact_id, product_id=product.id)
    apply_subscription(row, fetched)
    is_newer(row, created)
    db.session.flush()
    payment.subscription_id = row.id
    invoice_id = _id(session.get("invoice"))
    if invoice_id and payment.invoice_id is None:
        taken = db.session.scalars(sa.select(Payment.id).where(Payment.invoice_id == invoice_id))
        if taken.first() is None:
            payment.invoice_id = invoice_id
    if grant_credit(payment, product, subscription=row) is None:
        return
    record_event(
        payment.contact_id,
        "subscription_started",
        payment=payment,
        subscription=row,
        amount_minor=payment.amount_minor,
        detail=f"{product.name}: {product.sessions} sessions a month",
    )


# --- renewals and dunning ---------------------------------------------------------------


def grant_renewal(row: Subscription, invoice: dict, created: int | None) -> None:
    """A paid renewal invoice: its payment row and the period's credits, once per invoice."""
    payment = db.session.scalars(
        sa.select(Payment).where(Payment.invoice_id == invoice["id"])
    ).first()
    product = row.product
    if payment is None:
        payment = Payment(
            kind="subscription",
            contact_id=row.contact_id,
            product_id=row.product_id,
            subscription_id=row.id,
            status="paid",
            amount_minor=int(invoice.get("amount_paid") or 0),
            currency=invoice.get("currency") or (product.currency if product else "usd"),
            amount_refunded_minor=0,
            invoice_id=invoice["id"],
            paid_at=_at((invoice.get("status_transitions") or {}).get("paid_at") or created)
            or utcnow(),
            last_event_created=created,
        )
        try:
            with db.session.begin_nested():
                db.session.add(payment)
        except IntegrityError:
            payment = db.session.scalars(
                sa.select(Payment).where(Payment.invoice_id == invoice["id"])
            ).one()
    if product is None or grant_credit(payment, product, subscription=row) is None:
        return
    record_event(
        row.contact_id,
        "renewal_paid",
        payment=payment,
        subscription=row,
        amount_minor=payment.amount_minor,
        currency=payment.currency,
        detail=f"{product.name}: {product.sessions} sessions added",
    )


def start_dunning(row: Subscription, invoice: dict, created: int | None) -> bool:
    """Record a failed attempt on `invoice` and message the client, once per attempt.

    `invoice` is Stripe's current state (re-fetched). False when this attempt was known.
    """
    attempt = int(invoice.get("attempt_count") or 0)
    new_invoice = row.failed_invoice_id != invoice["id"]
    if not new_invoice and attempt <= row.attempt_count:
        return False
    if new_invoice or row.dunning_started_at is None:
        row.dunning_started_at = _at(created) or utcnow()
    row.failed_invoice_id = invoice["id"]
    row.attempt_count = attempt
    row.next_payment_attempt = _at(invoice.get("next_payment_attempt"))
    retry = (
        f"Stripe retries on {row.next_payment_attempt:%d %b %Y %H:%M} UTC"
        if row.next_payment_attempt
        else "no more automatic retries"
    )
    record_event(
        row.contact_id,
        "renewal_failed",
        subscription=row,
        amount_minor=invoice.get("amount_due"),
        currency=invoice.get("currency"),
        detail=f"Attempt {attempt} failed; {retry}.",
    )
    record_event(
        row.contact_id, "dunning_message", subscription=row, detail=send_dunning_message(row)
    )
    return True


def send_dunning_message(row: Subscription) -> str:
    """Queue the update-card link to the client; say what became of it."""
    contact = row.contact
    try:
        link = update_card_url(row)
    except PaymentError as exc:
        return f"Not sent: {exc}"
    plan = row.product.name if row.product else "subscription"
    body = (
        f"Hi {_first_name(contact)}, the payment for your {plan} did not go through. "
        f"Please update your card here: {link}"
    )
    preferred = contact.preferred_channel if contact.preferred_channel in CHANNEL_LABELS else "sms"
    # WhatsApp may refuse free text outside its 24-hour window; SMS is the fallback.
    channels = [preferred] + (["sms"] if preferred != "sms" else [])
    refusals = []
    for channel in channels:
        try:
            message = queue_message(open_conversation(contact, channel), body=body, actor=None)
        except SendRefused as exc:
            refusals.append(f"{CHANNEL_LABELS[channel]}: {exc}")
            continue
        return f"Sent by {CHANNEL_LABELS[channel]} (message {message.id})."
    return "Not sent: " + " ".join(refusals)


# --- credits ------------------------------------------------------------------------------


class _Spent(Exception):
    """The credit was used up by someone else meanwhile."""


def usable_credits(contact_id: int, service_id: int | None = None, *, any_service=False):
    """The contact's credits with sessions left and not expired, oldest first."""
    query = (
        sa.select(PackageCredit)
        .outerjoin(Product, Product.id == PackageCredit.product_id)
        .where(
            PackageCredit.contact_id == contact_id,
            PackageCredit.sessions_used < PackageCredit.sessions_total,
            sa.or_(PackageCredit.expires_at.is_(None), PackageCredit.expires_at > utcnow()),
        )
        .order_by(PackageCredit.created_at, PackageCredit.id)
    )
    if not any_service:
        # A product tied to a service pays only for sessions of that service.
        query = query.where(
            sa.or_(
                PackageCredit.product_id.is_(None),
                Product.service_id.is_(None),
                Product.service_id == service_id,
            )
        )
    return list(db.session.scalars(query).unique())


@on_outcome
def use_credit(booking: Booking, outcome: str) -> CreditUse | None:
    """A completed session of a client with credit left uses one (once per booking)."""
    if outcome != "completed" or booking.payment_status == "paid":
        return None  # a session paid on its own never also takes a credit
    used = db.session.scalars(sa.select(CreditUse).where(CreditUse.booking_id == booking.id))
    if used.first() is not None:
        return None
    for credit in usable_credits(booking.contact_id, booking.service_id):
        use = CreditUse(
            credit_id=credit.id,
            booking_id=booking.id,
            contact_id=booking.contact_id,
            used_at=utcnow(),
        )
        try:
            with db.session.begin_nested():
                db.session.add(use)
                db.session.flush()
                taken = db.session.execute(
                    sa.update(PackageCredit)
                    .where(
                        PackageCredit.id == credit.id,
                        PackageCredit.sessions_used < PackageCredit.sessions_total,
                    )
                    .values(sessions_used=PackageCredit.sessions_used + 1)
                    .execution_options(synchronize_session=False)
                )
                if taken.rowcount != 1:
                    raise _Spent
        except _Spent:
            continue
        except IntegrityError:
            return None  # the same booking, completed in another transaction, took one
        db.session.refresh(credit)
        if booking.payment_status in ("none", "unpaid"):
            booking.payment_status = "paid"
        name = credit.product.name if credit.product else "Package"
        record_event(
            booking.contact_id,
            "credit_used",
            detail=f"{name}: {credit.remaining} of {credit.sessions_total} sessions left "
            f"(session of {booking.start_at:%d %b %Y}).",
        )
        return use
    return None


def remaining_credits(contact_id: int) -> int:
    return sum(c.remaining for c in usable_credits(contact_id, any_service=True))
