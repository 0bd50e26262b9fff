"""Packages and plans (staff), buying them for a contact, the contact's payments panel,
and the client's public update-card page from a dunning message."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from flask import abort, current_app, flash, redirect, request, url_for
from flask_login import current_user, login_required

from crm.auth.access import STAFF_ROLES, roles_required
from crm.bookings.models import Booking, Service
from crm.contacts.listing import get_visible_or_404
from crm.conversations.models import CHANNEL_LABELS
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.integrations import policy
from crm.integrations import stripe as stripe_api
from crm.payments import packages
from crm.payments.models import PRODUCT_KINDS, Payment, Product, Subscription
from crm.payments.money import to_major, to_minor
from crm.payments.services import PaymentError, stripe_configured
from crm.payments.views import bp

PRODUCTS = "payments/products.html"
PRODUCT = "payments/product.html"
CONTACT = "payments/contact.html"
UPDATE_CARD = "payments/update_card.html"

KIND_LABELS = {"package": "Package", "subscription": "Monthly plan"}
PAYMENT_KIND_LABELS = {"booking": "Session", "package": "Package", "subscription": "Plan"}
MAX_SESSIONS = 100


# --- products -------------------------------------------------------------------------


@dataclass
class ProductForm:
    raw: dict
    clean: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)


def _initial(product: Product | None) -> dict:
    currency = product.currency if product else current_app.config["PAYMENTS_CURRENCY"]
    return {
        "name": product.name if product else "",
        "kind": product.kind if product else "package",
        "sessions": str(product.sessions) if product else "5",
        "price": str(to_major(product.price_minor, currency)) if product else "",
        "currency": currency.upper(),
        "service_id": str(product.service_id or "") if product else "",
        "active": product.active if product else True,
    }


def _read(data) -> ProductForm:
    raw = {k: (data.get(k) or "").strip() for k in ("name", "kind", "sessions", "price")}
    raw["currency"] = (data.get("currency") or "").strip().upper()
    raw["service_id"] = (data.get("service_id") or "").strip()
    raw["active"] = bool(data.get("active"))
    form = ProductForm(raw)
    clean, errors = form.clean, form.errors

    if not raw["name"]:
        errors["name"] = "Enter a name."
    elif len(raw["name"]) > 200:
        errors["name"] = "Keep the name under 200 characters."
    clean["name"] = raw["name"]

    if raw["kind"] not in PRODUCT_KINDS:
        errors["kind"] = "Choose a package or a monthly plan."
    clean["kind"] = raw["kind"]

    sessions = raw["sessions"]
    if not sessions.isdigit() or not 1 <= int(sessions) <= MAX_SESSIONS:
        errors["sessions"] = f"Enter a number of sessions from 1 to {MAX_SESSIONS}."
    clean["sessions"] = int(sessions) if sessions.isdigit() else None

    currency = raw["currency"]
    if not (len(currency) == 3 and currency.isalpha()):
        errors["currency"] = "Enter the currency's three-letter code, such as USD."
    clean["currency"] = currency.lower()

    clean["price_minor"] = None
    try:
        price = to_minor(raw["price"], currency or "usd") if raw["price"] else None
    except ValueError as exc:
        errors["price"] = (
            str(exc) if "decimals" in str(exc) else "Enter a price such as 250 or 249.90."
        )
    else:
        if price is None or price <= 0:
            errors["price"] = "Enter a price above zero."
        else:
            clean["price_minor"] = price

    clean["service_id"] = None
    if raw["service_id"]:
        chosen = raw["service_id"]
        service = db.session.get(Service, int(chosen)) if chosen.isdigit() else None
        if service is None:
            errors["service_id"] = "Choose one of the services."
        else:
            clean["service_id"] = service.id
    clean["active"] = raw["active"]
    return form


def _product_page(product: Product | None, form: ProductForm | None = None, *, status=200):
    services = db.session.scalars(sa.select(Service).order_by(Service.name)).all()
    return render(
        PRODUCT,
        "product_form",
        status=status,
        product=product,
        raw=form.raw if form else _initial(product),
        errors=form.errors if form else {},
        services=services,
        kinds=KIND_LABELS,
    )


@bp.get("/products")
@roles_required(*STAFF_ROLES)
def products():
    """List the packages and monthly plans clients can buy."""
    rows = db.session.scalars(
        sa.select(Product).order_by(Product.active.desc(), Product.kind, Product.name)
    ).all()
    services = {s.id: s for s in db.session.scalars(sa.select(Service))}
    return render(
        PRODUCTS,
        "product_table",
        products=rows,
        services=services,
        kinds=KIND_LABELS,
        stripe_ready=stripe_configured(),
    )


@bp.route("/products/new", methods=["GET", "POST"])
@roles_required(*STAFF_ROLES)
def product_new():
    """The form for a new package or plan, and saving it."""
    if request.method == "GET":
        return _product_page(None)
    form = _read(request.form)
    if form.errors:
        return _product_page(None, form, status=422)
    product = packages.save_product(None, form.clean, actor=current_user)
    db.session.commit()
    flash(f"Saved “{product.name}”.", "success")
    return redirect_303(url_for("payments.products"))


@bp.route("/products/<int:product_id>", methods=["GET", "POST"])
@roles_required(*STAFF_ROLES)
def product(product_id: int):
    """A package's or plan's settings; a new price applies to new purchases only."""
    product = db.get_or_404(Product, product_id)
    if request.method == "GET":
        return _product_page(product)
    form = _read(request.form)
    if form.errors:
        return _product_page(product, form, status=422)
    packages.save_product(product, form.clean, actor=current_user)
    db.session.commit()
    flash(f"Saved “{product.name}”.", "success")
    return redirect_303(url_for("payments.products"))


# --- the contact's panel ----------------------------------------------------------------


def _panel(contact, *, message: str | None = None, error: str | None = None):
    staff = current_user.role in STAFF_ROLES
    payments = sa.select(Payment).where(Payment.contact_id == contact.id)
    if not staff:
        # A coach sees the payments of their own sessions only.
        payments = payments.join(Booking, Booking.id == Payment.booking_id).where(
            Booking.coach_id == current_user.id
        )
    payments = payments.order_by(Payment.created_at.desc(), Payment.id.desc()).limit(20)
    subscriptions = db.session.scalars(
        sa.select(Subscription)
        .where(Subscription.contact_id == contact.id)
        .order_by(Subscription.created_at.desc(), Subscription.id.desc())
    ).all()
    credits = packages.usable_credits(contact.id, any_service=True)
    return render(
        CONTACT,
        "contact_panel",
        contact=contact,
        payments=db.session.scalars(payments).unique().all(),
        subscriptions=subscriptions,
        credits=credits,
        credits_left=sum(c.remaining for c in credits),
        products=packages.active_products() if staff else [],
        staff=staff,
        stripe_ready=stripe_configured(),
        channels=CHANNEL_LABELS,
        kind_labels=PAYMENT_KIND_LABELS,
        message=message,
        error=error,
    )


@bp.get("/contacts/<int:contact_id>")
@login_required
def contact_panel(contact_id: int):
    """The contact's payments, package credits and subscription (with its dunning)."""
    contact = get_visible_or_404(contact_id, current_user)
    return _panel(contact)


@bp.post("/contacts/<int:contact_id>/buy")
@roles_required(*STAFF_ROLES)
def buy(contact_id: int):
    """Open a Checkout for a package or plan; optionally send its link by SMS or WhatsApp."""
    contact = get_visible_or_404(contact_id, current_user)
    product_id = request.form.get("product_id", type=int)
    product = db.session.get(Product, product_id) if product_id else None
    channel = (request.form.get("channel") or "").strip()
    try:
        if product is None:
            raise PaymentError("Choose a package or plan.")
        if channel and channel not in CHANNEL_LABELS:
            raise PaymentError("Choose SMS or WhatsApp.")
        payment = packages.create_product_checkout(contact, product, actor=current_user)
        if channel:
            packages.send_checkout_link(payment, channel, actor=current_user)
    except PaymentError as exc:
        db.session.rollback()
        if request.htmx:
            return _panel(contact, error=str(exc))
        flash(str(exc), "error")
        return redirect_303(url_for("payments.contact_panel", contact_id=contact_id))
    db.session.commit()
    text = (
        f"Payment link for “{product.name}” sent by {CHANNEL_LABELS[channel]}."
        if channel
        else f"Payment link for “{product.name}” ready: copy it for the client."
    )
    if request.htmx:
        response = _panel(contact, message=text)
        response.headers["HX-Trigger"] = "payments-updated"
        return response
    flash(text, "success")
    return redirect_303(url_for("payments.contact_panel", contact_id=contact_id))


# --- the client's update-card page (public) ---------------------------------------------


@bp.get("/subscriptions/<token>/card")
def update_card(token: str):
    """From a dunning message: open Stripe's billing portal for the client's card."""
    subscription = packages.subscription_for_token(token)
    if subscription is None or not subscription.stripe_customer_id:
        abort(404)
    if request.args.get("done"):
        return render(UPDATE_CARD, state="done")
    if not stripe_configured():
        return render(UPDATE_CARD, state="unavailable", status=503)
    try:
        return_url = packages.external_url("payments.update_card", token=token) + "?done=1"
        portal = stripe_api.create_billing_portal_session(
            customer=subscription.stripe_customer_id, return_url=return_url
        )
    except (policy.CallError, PaymentError):
        current_app.logger.warning(
            "billing portal unavailable for subscription %s", subscription.id
        )
        return render(UPDATE_CARD, state="unavailable", status=503)
    response = redirect(portal["url"], 303)
    response.headers["Cache-Control"] = "no-store"
    return response
