"""Paying for a booking through the Stripe fake with the real SDK: Checkout from the
session's page (plain and htmx), payment links by SMS, signed webhooks processed by a real
worker (duplicates, out of order, expiry, declines, refunds, disputes), destination
charges, coach scoping, public return pages, zero-decimal currencies."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from rq import SimpleWorker

from crm.bookings.models import Booking, Service
from crm.integrations import stripe as stripe_api
from crm.payments.models import ConnectAccount, Payment, PaymentEvent, Refund
from crm.redis_client import get_redis
from crm.webhooks.models import WebhookEvent
from jobs import get_queue

BASE = "https://crm.example.test"


@pytest.fixture(autouse=True)
def payments_config(app, monkeypatch):
    monkeypatch.setitem(app.config, "PUBLIC_BASE_URL", BASE)
    monkeypatch.setitem(app.config, "WEBHOOK_RETRY_INTERVALS", [0])
    monkeypatch.setitem(app.config, "STRIPE_PLATFORM_FEE_PERCENT", 10.0)
    monkeypatch.setitem(app.config, "PAYMENTS_CURRENCY", "usd")


@pytest.fixture
def priced(db, make_booking, make_contact, make_user):
    """Book a priced session: $50.00 unless told otherwise."""

    def make(price: int = 5000, currency: str | None = "usd", *, coach=None, **contact):
        service = Service(name="Coaching session", price_minor=price, currency=currency)
        db.session.add(service)
        db.session.commit()
        client = make_contact(
            contact.pop("name", "Ana Silva"),
            email=contact.pop("email", "ana@example.com"),
            phone=contact.pop("phone", "+14155550101"),
            **contact,
        )
        return make_booking(client, coach or make_user("coach"), service=service)

    return make


def work(*queues: str) -> None:
    SimpleWorker([get_queue(q) for q in queues or ("webhooks",)], connection=get_redis()).work(
        burst=True
    )


def deliver(client, stripe_fake, type_: str, obj: dict, *, event_id=None, times=1, run=True):
    """POST a signed event (`times` deliveries of the same event id), then run the worker."""
    body, headers = stripe_fake.event(type_, obj, event_id=event_id)
    for _ in range(times):
        response = client.post("/webhooks/stripe", data=body, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
    if run:
        work()


def text(response) -> str:
    return response.get_data(as_text=True)


def fresh(db, payment: Payment) -> Payment:
    db.session.expire_all()
    return db.session.get(Payment, payment.id)


def kinds(db, payment: Payment) -> list[str]:
    query = sa.select(PaymentEvent.kind).where(PaymentEvent.payment_id == payment.id)
    return list(db.session.scalars(query.order_by(PaymentEvent.id)))


def start_checkout(client, booking) -> Payment:
    response = client.form(f"/payments/bookings/{booking.id}/checkout")
    assert response.status_code == 303, text(response)
    return Payment.query.filter_by(booking_id=booking.id).order_by(Payment.id.desc()).first()


def paid(client, db, stripe_fake, booking) -> Payment:
    """Check out and pay; the completed event processed."""
    payment = start_checkout(client, booking)
    session = stripe_fake.complete_session(payment.checkout_session_id)
    deliver(client, stripe_fake, "checkout.session.completed", session)
    payment = fresh(db, payment)
    assert payment.status == "paid"
    return payment


def charge_of(stripe_fake, payment: Payment) -> dict:
    intent = stripe_fake.objects[payment.payment_intent_id]
    return dict(stripe_fake.objects[intent["latest_charge"]])


# --- Checkout from the session's page ---------------------------------------------


def test_the_session_page_loads_the_payments_panel_lazily_with_a_plain_link(
    client, login_as, priced, stripe_fake
):
    login_as("staff")
    booking = priced()
    page = text(client.get(f"/bookings/{booking.id}"))
    assert 'id="booking-payments"' in page
    assert f'hx-get="/payments/bookings/{booking.id}"' in page
    assert 'hx-trigger="load"' in page
    assert f'href="/payments/bookings/{booking.id}?next=' in page

    fragment = client.htmx_get(f"/payments/bookings/{booking.id}")
    assert fragment.status_code == 200 and "HX-Request" in fragment.headers["Vary"]
    body = text(fragment)
    assert body.lstrip().startswith('<section id="booking-payments"')
    assert "<html" not in body and "Pay now / Copy link" in body and "$50.00" in body
    full = text(client.get(f"/payments/bookings/{booking.id}"))
    assert "<html" in full and "Pay now / Copy link" in full


def test_pay_now_opens_a_checkout_session_tied_to_the_booking(
    client, db, login_as, priced, stripe_fake
):
    staff = login_as("staff")
    booking = priced()
    response = client.form(f"/payments/bookings/{booking.id}/checkout")

    assert response.status_code == 303
    assert response.headers["Location"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
    [payment] = Payment.query.filter_by(booking_id=booking.id).all()
    assert (payment.status, payment.amount_minor, payment.currency) == ("pending", 5000, "usd")
    assert payment.checkout_url == response.headers["Location"]
    assert payment.created_by_id == staff.id and payment.coach_id == booking.coach_id
    [call] = stripe_fake.calls("sessions_create")
    assert call.headers["Idempotency-Key"] == f"rapport-checkout-payment-{payment.id}"
    form = call.form
    assert form["mode"] == "payment"
    assert form["client_reference_id"] == f"booking-{booking.id}"
    assert form["customer_email"] == "ana@example.com"
    assert form["line_items[0][price_data][unit_amount]"] == "5000"
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert form["line_items[0][price_data][product_data][name]"] == "Coaching session"
    assert form["line_items[0][quantity]"] == "1"
    expected = {
        "booking_id": str(booking.id),
        "contact_id": str(booking.contact_id),
        "payment_id": str(payment.id),
        "kind": "booking",
    }
    for key, value in expected.items():
        assert form[f"metadata[{key}]"] == value
        assert form[f"payment_intent_data[metadata][{key}]"] == value
    assert (
        form["success_url"]
        == f"{BASE}/payments/checkout/success?session_id={{CHECKOUT_SESSION_ID}}"
    )
    assert form["cancel_url"] == f"{BASE}/payments/checkout/canceled"
    assert "payment_intent_data[application_fee_amount]" not in form
    assert kinds(db, payment) == ["checkout_created"]
    db.session.expire_all()
    assert db.session.get(Booking, booking.id).payment_status == "pending"

    # Asked again while the session is open: the same payment and link, no second session.
    again = client.form(f"/payments/bookings/{booking.id}/checkout")
    assert again.headers["Location"] == payment.checkout_url
    assert len(stripe_fake.calls("sessions_create")) == 1
    assert Payment.query.filter_by(booking_id=booking.id).count() == 1


def test_pay_now_with_htmx_shows_the_link_in_the_panel(client, db, login_as, priced, stripe_fake):
    login_as("staff")
    booking = priced()
    response = client.form(f"/payments/bookings/{booking.id}/checkout", htmx=True)
    assert response.status_code == 200
    assert response.headers["HX-Trigger"] == "payments-updated"
    body = text(response)
    [payment] = Payment.query.filter_by(booking_id=booking.id).all()
    assert body.lstrip().startswith('<section id="booking-payments"')
    assert f'value="{payment.checkout_url}"' in body and "Awaiting payment" in body


def test_a_session_without_a_price_or_canceled_cannot_be_paid(
    client, db, login_as, priced, make_booking, stripe_fake
):
    login_as("staff")
    unpriced = make_booking()
    response = client.form(f"/payments/bookings/{unpriced.id}/checkout", htmx=True)
    assert "This session has no priced service" in text(response)
    booking = priced()
    booking.status = "canceled"
    db.session.commit()
    response = client.form(f"/payments/bookings/{booking.id}/checkout")
    assert response.status_code == 303
    assert "This session is canceled" in text(client.get(response.headers["Location"]))
    assert Payment.query.count() == 0 and stripe_fake.calls("sessions_create") == []


# --- webhooks -----------------------------------------------------------------------


def test_a_paid_checkout_marks_the_booking_paid_once(client, db, login_as, priced, stripe_fake):
    login_as("staff")
    booking = priced()
    payment = start_checkout(client, booking)
    session = stripe_fake.complete_session(payment.checkout_session_id)

    # One event delivered three times, then the same session in three other events.
    deliver(client, stripe_fake, "checkout.session.completed", session, times=3)
    for type_ in ("checkout.session.completed",) * 2 + (
        "checkout.session.async_payment_succeeded",
    ):
        deliver(client, stripe_fake, type_, session)

    payment = fresh(db, payment)
    assert payment.status == "paid" and payment.paid_at is not None
    assert payment.payment_intent_id == session["payment_intent"]
    assert payment.charge_id == stripe_fake.objects[session["payment_intent"]]["latest_charge"]
    assert kinds(db, payment) == ["checkout_created", "paid"]
    assert db.session.get(Booking, booking.id).payment_status == "paid"
    events = WebhookEvent.query.order_by(WebhookEvent.id).all()
    assert len(events) == 4 and {e.status for e in events} == {"processed"}
    # Paid: no more Pay now.
    panel = text(client.htmx_get(f"/payments/bookings/{booking.id}"))
    assert "Pay now" not in panel and "Paid" in panel


def test_a_completed_session_still_unpaid_waits_for_the_async_event(
    client, db, login_as, priced, stripe_fake
):
    login_as("staff")
    booking = priced()
    payment = start_checkout(client, booking)
    session = stripe_fake.complete_session(payment.checkout_session_id)
    deliver(
        client, stripe_fake, "checkout.session.completed", {**session, "payment_status": "unpaid"}
    )
    assert fresh(db, payment).status == "pending"
    deliver(client, stripe_fake, "checkout.session.async_payment_succeeded", session)
    assert fresh(db, payment).status == "paid"


def test_completed_arriving_after_charge_refunded_ends_refunded(
    client, db, login_as, priced, stripe_fake
):
    login_as("staff")
    booking = priced()
    payment = start_checkout(client, booking)
    session = stripe_fake.complete_session(payment.checkout_session_id)
    # Refunded on Stripe's dashboard before Rapport heard the session completed.
    stripe_api.create_refund(
        idempotency_key="dashboard-1", payment_intent=session["payment_intent"]
    )
    charge = stripe_fake.objects[stripe_fake.objects[session["payment_intent"]]["latest_charge"]]
    assert charge["refunded"] is True

    deliver(client, stripe_fake, "charge.refunded", charge)
    deliver(client, stripe_fake, "checkout.session.completed", session)

    payment = fresh(db, payment)
    assert payment.status == "refunded" and payment.amount_refunded_minor == 5000
    assert kinds(db, payment) == ["checkout_created", "paid", "refunded"]
    [refund] = payment.refunds
    assert (refund.status, refund.amount_minor) == ("succeeded", 5000)
    assert refund.reason == "Refunded at Stripe"
    assert db.session.get(Booking, booking.id).payment_status == "refunded"


def test_completed_without_the_refund_event_still_ends_refunded(
    client, db, login_as, priced, stripe_fake
):
    """The charge.refunded event is lost or late: paying re-fetches the charge."""
    login_as("staff")
    booking = priced()
    payment = start_checkout(client, booking)
    session = stripe_fake.complete_session(payment.checkout_session_id)
    stripe_api.create_refund(
        idempotency_key="dashboard-2", payment_intent=session["payment_intent"], amount=1500
    )
    deliver(client, stripe_fake, "checkout.session.completed", session)
    payment = fresh(db, payment)
    assert payment.status == "partially_refunded" and payment.amount_refunded_minor == 1500
    assert [c.path for c in stripe_fake.calls() if c.method == "GET"][-3:] == [
        f"/v1/payment_intents/{session['payment_intent']}",
        f"/v1/charges/{payment.charge_id}",
        "/v1/refunds",
    ]


def test_an_expired_session_leaves_the_booking_unpaid(client, db, login_as, priced, stripe_fake):
    login_as("staff")
    booking = priced()
    payment = start_checkout(client, booking)
    stripe_api.expire_checkout_session(payment.checkout_session_id)
    expired = stripe_fake.objects[payment.checkout_session_id]
    deliver(client, stripe_fake, "checkout.session.expired", expired, times=2)

    payment = fresh(db, payment)
    assert payment.status == "expired" and payment.checkout_url is None
    assert kinds(db, payment) == ["checkout_created", "expired"]
    assert db.session.get(Booking, booking.id).payment_status == "unpaid"
    # A new link can be made: a second payment with its own session and key.
    again = start_checkout(client, booking)
    assert again.id != payment.id and again.checkout_session_id != payment.checkout_session_id
    keys = [c.headers["Idempotency-Key"] for c in stripe_fake.calls("sessions_create")]
    assert keys == [
        f"rapport-checkout-payment-{payment.id}",
        f"rapport-checkout-payment-{again.id}",
    ]


def test_an_expired_session_found_when_asking_again_is_replaced(
    client, db, login_as, priced, stripe_fake
):
    """The expired event has not come yet: Pay now sees the session closed at Stripe."""
    login_as("staff")
    booking = priced()
    payment = start_checkout(client, booking)
    stripe_api.expire_checkout_session(payment.checkout_session_id)
    again = start_checkout(client, booking)
    assert again.id != payment.id
    assert fresh(db, payment).status == "expired"


def test_a_declined_payment_then_a_success(client, db, login_as, priced, stripe_fake):
    login_as("staff")
    booking = priced()
    payment = start_checkout(client, booking)
    declined = stripe_fake.fail_session_payment(payment.checkout_session_id)
    deliver(client, stripe_fake, "payment_intent.payment_failed", declined)

    payment = fresh(db, payment)
    assert payment.status == "failed" and payment.failure_reason == "Your card was declined."
    assert db.session.get(Booking, booking.id).payment_status == "unpaid"
    panel = text(client.htmx_get(f"/payments/bookings/{booking.id}"))
    assert "Your card was declined." in panel

    session = stripe_fake.complete_session(payment.checkout_session_id)
    deliver(client, stripe_fake, "checkout.session.completed", session)
    # The decline delivered again late (a retry of Stripe's): the success wins.
    deliver(client, stripe_fake, "payment_intent.payment_failed", declined)

    payment = fresh(db, payment)
    assert payment.status == "paid"
    assert kinds(db, payment) == ["checkout_created", "failed", "paid"]
    assert db.session.get(Booking, booking.id).payment_status == "paid"


def test_a_dispute_marks_the_payment_disputed(client, db, login_as, priced, stripe_fake):
    login_as("staff")
    booking = priced()
    payment = paid(client, db, stripe_fake, booking)
    dispute = stripe_fake.dispute_charge(payment.charge_id, reason="product_not_received")
    deliver(client, stripe_fake, "charge.dispute.created", dispute, times=2)

    payment = fresh(db, payment)
    assert payment.status == "disputed"
    assert (payment.dispute_id, payment.dispute_reason) == (dispute["id"], "product_not_received")
    assert kinds(db, payment) == ["checkout_created", "paid", "disputed"]
    assert db.session.get(Booking, booking.id).payment_status == "disputed"
    panel = text(client.htmx_get(f"/payments/bookings/{booking.id}"))
    assert "Disputed: product not received" in panel and "Refund</button>" not in panel


def test_events_about_sessions_rapport_did_not_create_are_ignored(
    client, db, login_as, stripe_fake
):
    session = stripe_api.create_checkout_session(
        idempotency_key="elsewhere", mode="payment", success_url=f"{BASE}/x", metadata={}
    )
    deliver(
        client,
        stripe_fake,
        "checkout.session.completed",
        stripe_fake.complete_session(session["id"]),
    )
    [event] = WebhookEvent.query.all()
    assert event.status == "processed" and Payment.query.count() == 0


# --- refunds --------------------------------------------------------------------------


def test_a_partial_refund_then_the_rest(client, db, login_as, priced, stripe_fake):
    staff = login_as("staff")
    booking = priced()
    payment = paid(client, db, stripe_fake, booking)

    response = client.form(
        f"/payments/{payment.id}/refund", {"amount": "20.00", "reason": "Started late"}
    )
    assert response.status_code == 303
    assert response.headers["Location"] == f"/payments/bookings/{booking.id}"
    [refund] = Refund.query.all()
    assert (refund.amount_minor, refund.status, refund.reason) == (2000, "pending", "Started late")
    assert refund.created_by_id == staff.id and refund.stripe_refund_id.startswith("re_")
    [call] = stripe_fake.calls("refunds_create")
    assert call.headers["Idempotency-Key"] == f"rapport-refund-{refund.id}"
    assert call.form["payment_intent"] == payment.payment_intent_id
    assert call.form["amount"] == "2000"
    assert call.form["metadata[refund_id]"] == str(refund.id)
    assert call.form["metadata[reason]"] == "Started late"
    assert fresh(db, payment).status == "paid"  # until Stripe confirms

    deliver(client, stripe_fake, "charge.refunded", charge_of(stripe_fake, payment), times=2)
    payment = fresh(db, payment)
    assert payment.status == "partially_refunded" and payment.amount_refunded_minor == 2000
    assert [r.status for r in payment.refunds] == ["succeeded"]
    assert db.session.get(Booking, booking.id).payment_status == "partially_refunded"

    # The rest, with htmx and no amount: what is left ($30.00).
    response = client.form(f"/payments/{payment.id}/refund", {"reason": "Canceled"}, htmx=True)
    assert response.status_code == 200
    body = text(response)
    assert body.lstrip().startswith('<section id="booking-payments"')
    assert "Refund requested" in body and "$30.00 · Pending · Canceled" in body
    assert stripe_fake.calls("refunds_create")[-1].form["amount"] == "3000"
    deliver(client, stripe_fake, "charge.refunded", charge_of(stripe_fake, payment))

    payment = fresh(db, payment)
    assert payment.status == "refunded" and payment.amount_refunded_minor == 5000
    assert [(r.amount_minor, r.status) for r in payment.refunds] == [
        (2000, "succeeded"),
        (3000, "succeeded"),
    ]
    assert kinds(db, payment) == [
        "checkout_created",
        "paid",
        "refund_requested",
        "refunded",
        "refund_requested",
        "refunded",
    ]
    assert db.session.get(Booking, booking.id).payment_status == "refunded"


def test_a_refund_over_what_is_left_is_refused_with_a_clear_message(
    client, db, login_as, priced, stripe_fake
):
    login_as("staff")
    booking = priced()
    payment = paid(client, db, stripe_fake, booking)

    response = client.form(f"/payments/{payment.id}/refund", {"amount": "60"}, htmx=True)
    assert response.status_code == 200
    assert "You can refund at most $50.00 of this payment; $60.00 is too much." in text(response)
    response = client.form(f"/payments/{payment.id}/refund", {"amount": "abc"})
    assert response.status_code == 303
    assert "“abc” is not an amount." in text(client.get(response.headers["Location"]))
    for amount in ("0", "-5"):
        response = client.form(f"/payments/{payment.id}/refund", {"amount": amount}, htmx=True)
        assert "greater than zero" in text(response)

    # A pending refund counts against what is left.
    client.form(f"/payments/{payment.id}/refund", {"amount": "45"})
    response = client.form(f"/payments/{payment.id}/refund", {"amount": "10"}, htmx=True)
    assert "You can refund at most $5.00" in text(response)
    assert len(stripe_fake.calls("refunds_create")) == 1 and Refund.query.count() == 1


def test_a_refund_stripe_refuses_is_kept_as_failed(client, db, login_as, priced, stripe_fake):
    login_as("staff")
    booking = priced()
    payment = paid(client, db, stripe_fake, booking)
    stripe_fake.fail_next(1, 402, endpoint="refunds_create", code="charge_disputed")
    response = client.form(f"/payments/{payment.id}/refund", {"amount": "10"}, htmx=True)
    assert "Stripe refused the refund" in text(response)
    [refund] = Refund.query.all()
    assert refund.status == "failed"
    assert kinds(db, payment)[-1] == "refund_failed"


# --- Connect destination charges ----------------------------------------------------------


def test_a_ready_coach_gets_a_destination_charge_with_the_platform_fee(
    client, db, login_as, make_user, priced, stripe_fake
):
    login_as("staff")
    coach = make_user("coach")
    db.session.add(
        ConnectAccount(
            coach_id=coach.id,
            account_id="acct_READY1",
            charges_enabled=True,
            payouts_enabled=True,
            details_submitted=True,
        )
    )
    db.session.commit()
    booking = priced(4999, coach=coach)
    payment = start_checkout(client, booking)

    form = stripe_fake.calls("sessions_create")[0].form
    assert form["payment_intent_data[application_fee_amount]"] == "500"
    assert form["payment_intent_data[transfer_data][destination]"] == "acct_READY1"
    assert (payment.platform_fee_minor, payment.destination_account) == (500, "acct_READY1")
    panel = text(client.htmx_get(f"/payments/bookings/{booking.id}"))
    assert "platform fee $5.00" in panel


def test_a_coach_not_ready_keeps_the_charge_on_the_platform(
    client, db, login_as, make_user, priced, stripe_fake
):
    login_as("staff")
    coach = make_user("coach")
    db.session.add(ConnectAccount(coach_id=coach.id, account_id="acct_NOTYET"))
    db.session.commit()
    payment = start_checkout(client, priced(coach=coach))
    assert "payment_intent_data[transfer_data][destination]" not in (
        stripe_fake.calls("sessions_create")[0].form
    )
    assert payment.destination_account is None and payment.platform_fee_minor is None


# --- payment links by SMS and WhatsApp -------------------------------------------------


def test_send_the_link_by_sms(client, db, login_as, priced, stripe_fake, twilio_fake):
    login_as("staff")
    booking = priced()
    response = client.form(f"/payments/bookings/{booking.id}/send-link", {"channel": "sms"})
    assert response.status_code == 303
    assert "Payment link sent by SMS." in text(client.get(response.headers["Location"]))
    work("messaging")

    [payment] = Payment.query.all()
    [sent] = twilio_fake.messages.values()
    assert sent["to"] == "+14155550101"
    assert payment.checkout_url in sent["body"] and "$50.00" in sent["body"]
    assert kinds(db, payment) == ["checkout_created", "link_sent"]

    # WhatsApp outside the 24-hour window: refused with the reason, nothing queued.
    response = client.form(
        f"/payments/bookings/{booking.id}/send-link", {"channel": "whatsapp"}, htmx=True
    )
    assert "The link was not sent: Outside WhatsApp&#39;s 24-hour window" in text(response)
    assert len(stripe_fake.calls("sessions_create")) == 1


def test_send_the_link_with_htmx_and_a_refusal(
    client, db, login_as, priced, stripe_fake, twilio_fake
):
    login_as("staff")
    booking = priced(phone=None)
    response = client.form(
        f"/payments/bookings/{booking.id}/send-link", {"channel": "sms"}, htmx=True
    )
    assert response.status_code == 200
    assert "The link was not sent: This contact has no phone number." in text(response)
    # The checkout was kept for the next try; nothing was sent, no empty thread opened.
    [payment] = Payment.query.all()
    assert kinds(db, payment) == ["checkout_created"]
    from crm.conversations.models import Conversation

    assert Conversation.query.count() == 0
    response = client.form(
        f"/payments/bookings/{booking.id}/send-link", {"channel": "pigeon"}, htmx=True
    )
    assert "Choose SMS or WhatsApp." in text(response)


# --- public pages, not configured, scoping, currencies -------------------------------------


def test_the_return_pages_are_public_and_say_nothing_private(client, db):
    success = client.get("/payments/checkout/success?session_id=cs_test_anything")
    assert success.status_code == 200
    body = text(success)
    assert "Thank you — your payment is being confirmed" in body
    assert "cs_test_anything" not in body and "Sign out" not in body
    canceled = client.get("/payments/checkout/canceled")
    assert canceled.status_code == 200 and "Payment canceled" in text(canceled)


def test_without_stripe_the_pay_buttons_are_hidden(client, db, app, login_as, priced, monkeypatch):
    monkeypatch.setitem(app.config, "STRIPE_SECRET_KEY", None)
    login_as("staff")
    booking = priced()
    for response in (
        client.get(f"/payments/bookings/{booking.id}"),
        client.htmx_get(f"/payments/bookings/{booking.id}"),
    ):
        body = text(response)
        assert "Stripe is not configured: payments are off" in body
        assert "Pay now" not in body and "Send link" not in body
    response = client.form(f"/payments/bookings/{booking.id}/checkout", htmx=True)
    assert "Stripe is not configured" in text(response) and Payment.query.count() == 0


def test_another_coach_gets_404_and_the_own_coach_cannot_refund(
    client, db, login_as, make_user, priced, stripe_fake
):
    owner = make_user("coach")
    booking = priced(coach=owner)
    login_as("staff")
    payment = paid(client, db, stripe_fake, booking)

    login_as("coach")
    for response in (
        client.get(f"/payments/bookings/{booking.id}"),
        client.htmx_get(f"/payments/bookings/{booking.id}"),
        client.form(f"/payments/bookings/{booking.id}/checkout"),
        client.form(f"/payments/bookings/{booking.id}/send-link", {"channel": "sms"}),
        client.form(f"/payments/{payment.id}/refund", {"amount": "1"}),
        client.form(f"/payments/{payment.id}/refund", {"amount": "1"}, htmx=True),
    ):
        assert response.status_code == 404

    with client.session_transaction() as session:
        session["_user_id"] = str(owner.id)
    panel = client.htmx_get(f"/payments/bookings/{booking.id}")
    assert panel.status_code == 200 and "$50.00" in text(panel)
    assert "Refund</button>" not in text(panel)
    assert client.form(f"/payments/{payment.id}/refund", {"amount": "1"}).status_code == 403
    assert Refund.query.count() == 0


def test_zero_decimal_currencies_show_without_decimals(client, db, login_as, priced, stripe_fake):
    login_as("staff")
    booking = priced(1200, "jpy")
    panel = text(client.htmx_get(f"/payments/bookings/{booking.id}"))
    assert "¥1,200" in panel and "¥1,200.00" not in panel and "¥12.00" not in panel
    payment = paid(client, db, stripe_fake, booking)
    assert (
        stripe_fake.calls("sessions_create")[0].form["line_items[0][price_data][unit_amount]"]
        == "1200"
    )
    panel = text(client.htmx_get(f"/payments/bookings/{booking.id}"))
    assert "¥1,200" in panel and 'placeholder="1200"' in panel

    response = client.form(f"/payments/{payment.id}/refund", {"amount": "1.5"}, htmx=True)
    assert "JPY amounts have no decimals." in text(response)
    client.form(f"/payments/{payment.id}/refund", {"amount": "200"})
    assert stripe_fake.calls("refunds_create")[0].form["amount"] == "200"
    deliver(client, stripe_fake, "charge.refunded", charge_of(stripe_fake, payment))
    panel = text(client.htmx_get(f"/payments/bookings/{booking.id}"))
    assert "Refunded ¥200" in panel and "¥1,000" in panel


def test_the_service_currency_falls_back_to_the_default(client, db, login_as, priced, stripe_fake):
    login_as("staff")
    payment = start_checkout(client, priced(2500, None))
    assert (payment.amount_minor, payment.currency) == (2500, "usd")
