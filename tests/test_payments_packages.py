"""Packages and monthly plans: products, buying through Checkout (the Stripe fake), credits
used by completed sessions, subscriptions, dunning with the update-card link, and the
contact's payments panel. Events go through POST /webhooks/stripe, signed by the fake, and
a real RQ worker processes them."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from rq import SimpleWorker

from crm.bookings import services as booking_services
from crm.extensions import db as _db
from crm.payments.models import (
    CreditUse,
    PackageCredit,
    Payment,
    PaymentEvent,
    Product,
    Subscription,
)
from crm.redis_client import get_redis
from crm.webhooks.models import WebhookEvent
from jobs import get_queue

BASE = "https://crm.example.test"
RETRY_AT = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
CARD_LINK = re.compile(r"https://crm\.example\.test/payments/subscriptions/[^/\s]+/card")


@pytest.fixture(autouse=True)
def payments_config(app, monkeypatch):
    monkeypatch.setitem(app.config, "PUBLIC_BASE_URL", BASE)
    monkeypatch.setitem(app.config, "WEBHOOK_RETRY_INTERVALS", [0])


def run_worker(*queues: str) -> None:
    names = queues or ("webhooks",)
    SimpleWorker([get_queue(n) for n in names], connection=get_redis()).work(burst=True)


def deliver(client, stripe_fake, type_: str, obj: dict, *, times: int = 1) -> None:
    """Sign `obj` as a Stripe event, post it `times` times, and let a worker process it."""
    body, headers = stripe_fake.event(type_, obj)
    for _ in range(times):
        assert client.post("/webhooks/stripe", data=body, headers=headers).status_code == 200
    run_worker()
    event_id = json.loads(body)["id"]
    _db.session.expire_all()
    stored = _db.session.scalars(sa.select(WebhookEvent).where(WebhookEvent.event_id == event_id))
    assert [(e.status, e.last_error) for e in stored] == [("processed", None)]


def text(response) -> str:
    return re.sub(r"\s+", " ", response.get_data(as_text=True))


def events(db, contact_id: int, kind: str) -> list[PaymentEvent]:
    return list(
        db.session.scalars(
            sa.select(PaymentEvent)
            .where(PaymentEvent.contact_id == contact_id, PaymentEvent.kind == kind)
            .order_by(PaymentEvent.id)
        )
    )


@pytest.fixture
def product(db):
    def make(kind="package", *, sessions=5, price_minor=25000, currency="usd", **fields):
        name = fields.pop("name", "Five sessions" if kind == "package" else "Monthly coaching")
        row = Product(
            name=name,
            kind=kind,
            sessions=sessions,
            price_minor=price_minor,
            currency=currency,
            active=True,
            **fields,
        )
        db.session.add(row)
        db.session.commit()
        return row

    return make


@pytest.fixture
def ana(make_contact, make_user):
    coach = make_user("coach")
    return make_contact(
        "Ana Silva", phone="+15555550100", email="ana@example.com", owner_id=coach.id
    )


def buy(client, contact, product, *, htmx=False, **data):
    return client.form(
        f"/payments/contacts/{contact.id}/buy", {"product_id": product.id, **data}, htmx=htmx
    )


def paid_payment(db, client, stripe_fake, contact, product) -> Payment:
    """Buy `product` for `contact` and pay its Checkout Session; return the payment."""
    assert buy(client, contact, product).status_code == 303
    db.session.expire_all()
    payment = db.session.scalars(
        sa.select(Payment).where(Payment.contact_id == contact.id).order_by(Payment.id.desc())
    ).first()
    session = stripe_fake.complete_session(payment.checkout_session_id)
    deliver(client, stripe_fake, "checkout.session.completed", session)
    db.session.expire_all()
    return db.session.get(Payment, payment.id)


def credits(db, contact) -> list[PackageCredit]:
    db.session.expire_all()
    return list(
        db.session.scalars(
            sa.select(PackageCredit)
            .where(PackageCredit.contact_id == contact.id)
            .order_by(PackageCredit.id)
        )
    )


# --- products -------------------------------------------------------------------------


def test_staff_add_and_edit_packages_and_plans(client, db, login_as, stripe_fake):
    login_as("staff")
    assert "No packages or plans yet" in text(client.get("/payments/products"))

    answer = client.form(
        "/payments/products/new",
        {
            "name": "Ten sessions",
            "kind": "package",
            "sessions": "10",
            "price": "450.00",
            "currency": "eur",
            "active": "1",
        },
    )
    assert answer.status_code == 303
    assert answer.headers["Location"].endswith("/payments/products")
    product = db.session.scalars(sa.select(Product)).one()
    assert (product.kind, product.sessions, product.price_minor, product.currency) == (
        "package",
        10,
        45000,
        "eur",
    )
    page = text(client.get("/payments/products"))
    assert "Ten sessions" in page and "€450.00" in page

    # Invalid: the form comes back in place with its errors (htmx) or as a page.
    bad = {"name": "", "kind": "yearly", "sessions": "0", "price": "12.345", "currency": "usd"}
    answer = client.form(f"/payments/products/{product.id}", bad, htmx=True)
    assert answer.status_code == 422
    body = text(answer)
    assert body.lstrip().startswith('<form id="product-form"')
    for message in ("Enter a name.", "Choose a package or a monthly plan.", "at most 2 decimals"):
        assert message in body
    assert client.form(f"/payments/products/{product.id}", bad).status_code == 422

    answer = client.form(
        f"/payments/products/{product.id}",
        {"name": "Monthly", "kind": "subscription", "sessions": "4", "price": "12000"},
    )
    assert answer.status_code == 422  # no currency
    answer = client.form(
        f"/payments/products/{product.id}",
        {
            "name": "Monthly",
            "kind": "subscription",
            "sessions": "4",
            "price": "12000",
            "currency": "JPY",
        },
    )
    assert answer.status_code == 303
    db.session.refresh(product)
    assert (product.kind, product.price_minor, product.currency, product.active) == (
        "subscription",
        12000,
        "jpy",
        False,
    )
    assert "¥12,000 a month" in text(client.get("/payments/products"))


def test_products_are_for_staff_only(client, db, login_as, product):
    plan = product("subscription")
    login_as("coach")
    assert client.get("/payments/products").status_code == 403
    assert client.get(f"/payments/products/{plan.id}").status_code == 403
    assert client.form("/payments/products/new", {"name": "x"}).status_code == 403


# --- packages -----------------------------------------------------------------------------


def test_a_package_bought_through_checkout_grants_its_sessions_once(
    client, db, login_as, stripe_fake, product, ana
):
    staff = login_as("staff")
    package = product(sessions=5, price_minor=25000)
    answer = buy(client, ana, package)
    assert answer.status_code == 303
    assert answer.headers["Location"].endswith(f"/payments/contacts/{ana.id}")

    payment = db.session.scalars(sa.select(Payment)).one()
    assert (payment.kind, payment.status, payment.amount_minor, payment.currency) == (
        "package",
        "pending",
        25000,
        "usd",
    )
    assert payment.created_by_id == staff.id
    [call] = stripe_fake.calls("sessions_create")
    assert call.headers["Idempotency-Key"] == f"rapport-checkout-payment-{payment.id}"
    form = call.form
    assert form["mode"] == "payment"
    assert form["client_reference_id"] == f"contact-{ana.id}"
    assert form["metadata[kind]"] == "package"
    assert form["metadata[payment_id]"] == str(payment.id)
    assert form["metadata[contact_id]"] == str(ana.id)
    assert form["metadata[product_id]"] == str(package.id)
    assert form["line_items[0][price_data][unit_amount]"] == "25000"
    assert "line_items[0][price_data][recurring][interval]" not in form
    assert form["success_url"].startswith(f"{BASE}/payments/checkout/success")
    # The open link shows on the panel, ready to copy; buying again reuses it.
    assert payment.checkout_url in text(client.get(f"/payments/contacts/{ana.id}"))
    assert buy(client, ana, package).status_code == 303
    assert len(stripe_fake.calls("sessions_create")) == 1

    session = stripe_fake.complete_session(payment.checkout_session_id)
    deliver(client, stripe_fake, "checkout.session.completed", session, times=3)

    [credit] = credits(db, ana)
    assert (credit.sessions_total, credit.sessions_used, credit.payment_id) == (5, 0, payment.id)
    db.session.refresh(payment)
    assert payment.status == "paid" and payment.paid_at is not None
    assert payment.payment_intent_id == session["payment_intent"]
    assert payment.checkout_url is None
    assert len(events(db, ana.id, "package_purchased")) == 1

    # A replay of the same facts as a new event changes nothing.
    deliver(client, stripe_fake, "checkout.session.completed", session)
    assert len(credits(db, ana)) == 1
    assert len(events(db, ana.id, "package_purchased")) == 1
    page = text(client.get(f"/payments/contacts/{ana.id}"))
    assert "5</strong> sessions left" in page
    assert "Five sessions: 5 of 5 left" in page


def test_an_expired_package_checkout_is_marked_expired(
    client, db, login_as, stripe_fake, product, ana
):
    login_as("staff")
    buy(client, ana, product())
    payment = db.session.scalars(sa.select(Payment)).one()
    session = stripe_fake.objects[payment.checkout_session_id]
    session.update({"status": "expired", "url": None})
    deliver(client, stripe_fake, "checkout.session.expired", session)
    db.session.refresh(payment)
    assert payment.status == "expired" and payment.checkout_url is None
    assert credits(db, ana) == []


def test_completed_sessions_use_credits_once_each(
    client, db, login_as, stripe_fake, product, ana, make_booking
):
    login_as("staff")
    paid_payment(db, client, stripe_fake, ana, product(sessions=5))
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    first, second, third = (
        make_booking(ana, start_at=past + timedelta(hours=2 * n)) for n in range(3)
    )

    assert booking_services.set_outcome(first, "completed", actor=None)
    assert booking_services.set_outcome(second, "completed", actor=None)
    assert booking_services.set_outcome(third, "no_show", actor=None)
    db.session.commit()
    [credit] = credits(db, ana)
    assert credit.remaining == 3
    # Marking the same session completed again uses nothing.
    assert not booking_services.set_outcome(first, "completed", actor=None)
    db.session.commit()
    assert credits(db, ana)[0].remaining == 3
    uses = db.session.scalars(sa.select(CreditUse).order_by(CreditUse.id)).all()
    assert [u.booking_id for u in uses] == [first.id, second.id]
    assert first.payment_status == "paid" and third.payment_status == "none"
    assert len(events(db, ana.id, "credit_used")) == 2
    assert "3 of 5 sessions left" in events(db, ana.id, "credit_used")[-1].detail
    assert "3</strong> sessions left" in text(client.get(f"/payments/contacts/{ana.id}"))


def test_without_credit_or_when_paid_a_completed_session_uses_nothing(
    db, stripe_fake, product, ana, make_booking, make_contact
):
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    alone = make_booking(make_contact("Bo"), start_at=past)
    assert booking_services.set_outcome(alone, "completed", actor=None)
    assert alone.payment_status == "none"

    package = product(sessions=2)
    credit = PackageCredit(contact_id=ana.id, product_id=package.id, sessions_total=2)
    db.session.add(credit)
    paid = make_booking(ana, start_at=past)
    paid.payment_status = "paid"
    db.session.commit()
    booking_services.set_outcome(paid, "completed", actor=None)
    db.session.commit()
    assert credits(db, ana)[0].sessions_used == 0
    assert db.session.scalars(sa.select(CreditUse)).all() == []


def test_a_credit_tied_to_a_service_pays_only_for_that_service(db, product, ana, make_booking):
    from crm.bookings.models import Service

    yoga, talk = Service(name="Yoga"), Service(name="Talk")
    db.session.add_all([yoga, talk])
    db.session.commit()
    package = product(sessions=1, service_id=yoga.id)
    db.session.add(PackageCredit(contact_id=ana.id, product_id=package.id, sessions_total=1))
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    other = make_booking(ana, start_at=past, service=talk)
    booking_services.set_outcome(other, "completed", actor=None)
    assert credits(db, ana)[0].sessions_used == 0
    same = make_booking(ana, start_at=past + timedelta(hours=3), service=yoga)
    booking_services.set_outcome(same, "completed", actor=None)
    db.session.commit()
    assert credits(db, ana)[0].sessions_used == 1


# --- subscriptions and dunning -------------------------------------------------------------


def start_plan(db, client, stripe_fake, ana, product) -> tuple[Subscription, dict]:
    plan = product("subscription", sessions=4, price_minor=40000)
    answer = buy(client, ana, plan, htmx=True)
    assert answer.status_code == 200
    assert answer.headers["HX-Trigger"] == "payments-updated"
    body = text(answer)
    assert body.lstrip().startswith('<section id="contact-payments"')
    assert "Payment link for “Monthly coaching” ready" in body
    payment = db.session.scalars(sa.select(Payment).where(Payment.kind == "subscription")).one()
    assert payment.checkout_url in body
    session = stripe_fake.complete_session(payment.checkout_session_id)
    deliver(client, stripe_fake, "checkout.session.completed", session)
    db.session.expire_all()
    subscription = db.session.scalars(sa.select(Subscription)).one()
    return subscription, session


def test_a_plan_bought_through_checkout_starts_a_subscription(
    client, db, login_as, stripe_fake, product, ana
):
    login_as("staff")
    subscription, session = start_plan(db, client, stripe_fake, ana, product)

    [call] = stripe_fake.calls("sessions_create")
    assert call.form["mode"] == "subscription"
    assert call.form["line_items[0][price_data][recurring][interval]"] == "month"
    assert call.form["subscription_data[metadata][contact_id]"] == str(ana.id)
    stripe_sub = stripe_fake.objects[session["subscription"]]
    assert subscription.stripe_subscription_id == stripe_sub["id"]
    assert subscription.stripe_customer_id == session["customer"]
    assert subscription.status == "active"
    expected_end = stripe_sub["items"]["data"][0]["current_period_end"]
    assert subscription.current_period_end == datetime.fromtimestamp(expected_end, UTC)
    payment = db.session.scalars(sa.select(Payment)).one()
    assert (payment.status, payment.subscription_id, payment.invoice_id) == (
        "paid",
        subscription.id,
        session["invoice"],
    )
    [credit] = credits(db, ana)
    assert (credit.sessions_total, credit.subscription_id) == (4, subscription.id)
    assert len(events(db, ana.id, "subscription_started")) == 1

    # The first invoice's own `invoice.paid` grants nothing more.
    deliver(client, stripe_fake, "invoice.paid", stripe_fake.objects[session["invoice"]])
    assert len(credits(db, ana)) == 1
    assert events(db, ana.id, "renewal_paid") == []
    page = text(client.get(f"/payments/contacts/{ana.id}"))
    assert "Active — renews on" in page
    assert "4</strong> sessions left" in page


def test_a_failed_renewal_starts_dunning_and_the_client_gets_the_card_link(
    client, db, app, login_as, stripe_fake, twilio_fake, product, ana
):
    login_as("staff")
    subscription, session = start_plan(db, client, stripe_fake, ana, product)
    retry_at = int(RETRY_AT.timestamp())
    invoice = stripe_fake.renew_subscription(
        session["subscription"], paid=False, next_payment_attempt=retry_at - 3 * 24 * 3600
    )
    deliver(client, stripe_fake, "invoice.payment_failed", invoice, times=2)
    db.session.expire_all()
    subscription = db.session.get(Subscription, subscription.id)
    assert (subscription.status, subscription.attempt_count) == ("past_due", 1)
    assert subscription.failed_invoice_id == invoice["id"]
    assert subscription.dunning_started_at is not None
    [message_event] = events(db, ana.id, "dunning_message")
    assert message_event.detail.startswith("Sent by SMS")
    assert len(events(db, ana.id, "renewal_failed")) == 1

    run_worker("messaging")
    [sent] = twilio_fake.messages.values()
    assert sent["to"] == "+15555550100"
    link = CARD_LINK.search(sent["body"]).group(0)
    assert urlsplit(link).path.split("/")[3] != str(subscription.id)  # signed, not the id

    # The same attempt again (a late copy): no second message.
    deliver(client, stripe_fake, "invoice.payment_failed", invoice)
    assert len(events(db, ana.id, "dunning_message")) == 1

    # Attempt 2 fails: the schedule moves and the client hears once more.
    invoice = stripe_fake.retry_invoice(invoice["id"], paid=False, next_payment_attempt=retry_at)
    deliver(client, stripe_fake, "invoice.payment_failed", invoice, times=2)
    assert len(events(db, ana.id, "dunning_message")) == 2
    run_worker("messaging")
    assert len(twilio_fake.messages) == 2
    db.session.expire_all()
    assert db.session.get(Subscription, subscription.id).attempt_count == 2
    panel = text(client.get(f"/payments/contacts/{ana.id}"))
    assert "Past due — attempt 2 failed; Stripe retries on 28 Nov 2026 10:00" in panel

    # The public page opens Stripe's billing portal for the client's customer.
    anonymous = app.test_client()
    answer = anonymous.get(urlsplit(link).path)
    assert answer.status_code == 303
    [portal_call] = stripe_fake.calls("billing_portal_sessions_create")
    assert portal_call.form["customer"] == session["customer"]
    assert portal_call.form["return_url"].startswith(f"{BASE}/payments/subscriptions/")
    assert answer.headers["Location"].startswith("https://billing.stripe.com/p/session/")
    assert anonymous.get(urlsplit(link).path + "?done=1").status_code == 200
    token = urlsplit(link).path.split("/")[3]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert anonymous.get(f"/payments/subscriptions/{tampered}/card").status_code == 404
    assert anonymous.get(f"/payments/subscriptions/{subscription.id}/card").status_code == 404

    # Attempt 3 succeeds: dunning ends and the period's sessions arrive, once.
    invoice = stripe_fake.retry_invoice(invoice["id"], paid=True)
    deliver(client, stripe_fake, "invoice.paid", invoice)
    deliver(client, stripe_fake, "invoice.paid", invoice)
    db.session.expire_all()
    subscription = db.session.get(Subscription, subscription.id)
    assert subscription.status == "active"
    assert subscription.failed_invoice_id is None and subscription.attempt_count == 0
    assert subscription.next_payment_attempt is None
    assert [c.sessions_total for c in credits(db, ana)] == [4, 4]
    [renewal] = events(db, ana.id, "renewal_paid")
    renewal_payment = db.session.get(Payment, renewal.payment_id)
    assert (renewal_payment.invoice_id, renewal_payment.amount_minor) == (invoice["id"], 40000)
    # A late copy of an old failure does not restart dunning.
    deliver(client, stripe_fake, "invoice.payment_failed", {**invoice, "status": "open"})
    db.session.expire_all()
    assert db.session.get(Subscription, subscription.id).failed_invoice_id is None
    page = text(client.get(f"/payments/contacts/{ana.id}"))
    assert "Past due" not in page and "8</strong> sessions left" in page


def test_dunning_without_a_phone_records_why_nothing_was_sent(
    client, db, login_as, stripe_fake, twilio_fake, product, make_contact
):
    login_as("staff")
    bo = make_contact("Bo", email="bo@example.com")
    _, session = start_plan(db, client, stripe_fake, bo, product)
    invoice = stripe_fake.renew_subscription(session["subscription"], paid=False)
    deliver(client, stripe_fake, "invoice.payment_failed", invoice)
    [outcome] = events(db, bo.id, "dunning_message")
    assert outcome.detail == "Not sent: SMS: This contact has no phone number."
    assert twilio_fake.messages == {}


def test_subscription_changes_and_cancellation(client, db, login_as, stripe_fake, product, ana):
    login_as("staff")
    subscription, session = start_plan(db, client, stripe_fake, ana, product)
    stripe_id = session["subscription"]

    updated = stripe_fake.update_subscription(stripe_id, cancel_at_period_end=True)
    deliver(client, stripe_fake, "customer.subscription.updated", updated)
    db.session.expire_all()
    assert db.session.get(Subscription, subscription.id).cancel_at_period_end is True
    assert "Active — cancels on" in text(client.get(f"/payments/contacts/{ana.id}"))
    [change] = events(db, ana.id, "subscription_updated")
    assert change.detail.startswith("Cancels at the end of the period")

    deleted = stripe_fake.cancel_subscription(stripe_id)
    deliver(client, stripe_fake, "customer.subscription.deleted", deleted, times=2)
    # A stale snapshot arriving late never brings it back.
    deliver(client, stripe_fake, "customer.subscription.updated", {**updated, "status": "active"})
    db.session.expire_all()
    subscription = db.session.get(Subscription, subscription.id)
    assert subscription.status == "canceled" and subscription.cancel_at_period_end is False
    assert len(events(db, ana.id, "subscription_canceled")) == 1
    assert "Canceled" in text(client.get(f"/payments/contacts/{ana.id}"))


def test_events_for_subscriptions_rapport_did_not_sell_are_ignored(client, db, stripe_fake):
    foreign = {"id": "sub_foreign", "object": "subscription", "status": "active", "metadata": {}}
    deliver(client, stripe_fake, "customer.subscription.updated", foreign)
    invoice = {"id": "in_foreign", "object": "invoice", "status": "paid", "parent": None}
    deliver(client, stripe_fake, "invoice.paid", invoice)
    assert db.session.scalars(sa.select(Subscription)).all() == []


# --- the contact's panel ------------------------------------------------------------------


def test_the_contact_page_loads_the_panel_lazily_with_a_plain_link(client, db, login_as, ana):
    login_as("staff")
    page = client.get(f"/contacts/{ana.id}").get_data(as_text=True)
    url = f"/payments/contacts/{ana.id}"
    assert f'hx-get="{url}" hx-trigger="load"' in page
    assert f'<a href="{url}">' in page


def test_the_panel_is_a_fragment_for_htmx_and_a_page_without(
    client, db, login_as, stripe_fake, product, ana
):
    login_as("staff")
    product()
    fragment = client.htmx_get(f"/payments/contacts/{ana.id}")
    assert fragment.status_code == 200
    assert "HX-Request" in fragment.headers["Vary"]
    body = text(fragment)
    assert body.lstrip().startswith('<section id="contact-payments"')
    assert "<html" not in body
    assert "Create payment link" in body
    page = text(client.get(f"/payments/contacts/{ana.id}"))
    assert "<html" in page and "Payments for Ana Silva" in page and "Create payment link" in page


def test_without_stripe_the_buy_form_is_hidden_with_a_note(
    client, db, app, login_as, product, ana, monkeypatch
):
    monkeypatch.setitem(app.config, "STRIPE_SECRET_KEY", None)
    login_as("staff")
    package = product()
    body = text(client.htmx_get(f"/payments/contacts/{ana.id}"))
    assert "Stripe is not configured" in body and "Create payment link" not in body
    answer = buy(client, ana, package, htmx=True)
    assert "Stripe is not configured" in text(answer)
    assert db.session.scalars(sa.select(Payment)).all() == []
    answer = buy(client, ana, package)
    assert answer.status_code == 303
    assert "Stripe is not configured" in text(client.get(answer.headers["Location"]))


def test_sending_the_link_by_sms(client, db, login_as, stripe_fake, twilio_fake, product, ana):
    login_as("staff")
    answer = buy(client, ana, product(), channel="sms", htmx=True)
    assert "sent by SMS" in text(answer)
    run_worker("messaging")
    [sent] = twilio_fake.messages.values()
    payment = db.session.scalars(sa.select(Payment)).one()
    assert payment.checkout_url in sent["body"]
    assert len(events(db, ana.id, "link_sent")) == 1


def test_coaches_see_their_clients_panel_without_selling_and_others_get_404(
    client, db, login_as, make_user, stripe_fake, product, make_contact, make_booking
):
    coach = login_as("coach")
    other = make_user("coach")
    mine = make_contact("Mine", owner_id=coach.id)
    theirs = make_contact("Theirs", owner_id=other.id)
    product()
    own_booking = make_booking(mine, coach)
    other_booking = make_booking(mine, other, start_at=own_booking.start_at + timedelta(hours=3))
    for booking, amount in ((own_booking, 5000), (other_booking, 7000)):
        db.session.add(
            Payment(
                kind="booking",
                contact_id=mine.id,
                booking_id=booking.id,
                status="paid",
                amount_minor=amount,
                currency="usd",
                amount_refunded_minor=0,
            )
        )
    db.session.add(
        Payment(
            kind="package",
            contact_id=mine.id,
            status="paid",
            amount_minor=25000,
            currency="usd",
            amount_refunded_minor=0,
        )
    )
    db.session.commit()

    body = text(client.htmx_get(f"/payments/contacts/{mine.id}"))
    assert "$50.00" in body
    assert "$70.00" not in body and "$250.00" not in body
    assert "Create payment link" not in body
    assert client.get(f"/payments/contacts/{theirs.id}").status_code == 404
    assert client.htmx_get(f"/payments/contacts/{theirs.id}").status_code == 404
    assert client.form(f"/payments/contacts/{mine.id}/buy", {"product_id": 1}).status_code == 403
