"""crm.integrations.stripe drives the real stripe-python against the Stripe fake."""

from __future__ import annotations

import pytest
import stripe

from crm.integrations import policy
from crm.integrations import stripe as stripe_api

SESSION = {
    "mode": "payment",
    "success_url": "https://crm.example.com/pay/ok?session_id={CHECKOUT_SESSION_ID}",
    "cancel_url": "https://crm.example.com/pay/cancel",
    "client_reference_id": "deal_42",
    "customer_email": "ana@example.com",
    "metadata": {"deal_id": "42"},
    "line_items": [
        {
            "price_data": {
                "currency": "usd",
                "unit_amount": 2500,
                "product_data": {"name": "Coaching session"},
            },
            "quantity": 2,
        }
    ],
}


def test_not_configured_names_what_is_missing(app, monkeypatch):
    monkeypatch.setitem(app.config, "STRIPE_SECRET_KEY", None)
    assert stripe_api.missing_settings() == ["STRIPE_SECRET_KEY"]
    with pytest.raises(policy.PermanentError, match="STRIPE_SECRET_KEY"):
        stripe_api.check_health()


def test_health_check_retrieves_the_balance_with_the_secret_key(stripe_fake):
    assert stripe_api.missing_settings() == []
    stripe_api.check_health()
    (call,) = stripe_fake.calls()
    assert (call.method, call.path) == ("GET", "/v1/balance")
    assert call.headers["Authorization"] == f"Bearer {stripe_fake.secret_key}"
    assert call.headers["Stripe-Version"] == stripe.api_version


def test_checkout_session_with_the_same_idempotency_key_is_created_once(stripe_fake):
    first = stripe_api.create_checkout_session(idempotency_key="deal_42-deposit", **SESSION)
    again = stripe_api.create_checkout_session(idempotency_key="deal_42-deposit", **SESSION)

    assert first["id"] == again["id"]
    assert first["id"].startswith("cs_test_")
    assert first["status"] == "open" and first["payment_status"] == "unpaid"
    assert first["amount_total"] == 5000 and first["currency"] == "usd"
    assert first["client_reference_id"] == "deal_42"
    assert first["metadata"] == {"deal_id": "42"}
    assert first["url"].startswith("https://checkout.stripe.com/")
    calls = stripe_fake.calls("sessions_create")
    assert [c.headers["Idempotency-Key"] for c in calls] == ["deal_42-deposit"] * 2
    assert calls[0].form["line_items[0][price_data][unit_amount]"] == "2500"
    sessions = [o for o in stripe_fake.objects.values() if o["object"] == "checkout.session"]
    assert len(sessions) == 1

    other = stripe_api.create_checkout_session(idempotency_key="deal_43-deposit", **SESSION)
    assert other["id"] != first["id"]


def test_reusing_a_key_with_other_parameters_is_refused(stripe_fake):
    stripe_api.create_checkout_session(idempotency_key="deal_42-deposit", **SESSION)
    with pytest.raises(policy.PermanentError) as caught:
        stripe_api.create_checkout_session(
            idempotency_key="deal_42-deposit", **{**SESSION, "client_reference_id": "deal_99"}
        )
    assert caught.value.status == 400


def test_retrieve_and_expire_a_session(stripe_fake):
    created = stripe_api.create_checkout_session(idempotency_key="k1", **SESSION)
    assert stripe_api.retrieve_checkout_session(created["id"])["status"] == "open"
    expired = stripe_api.expire_checkout_session(created["id"])
    assert expired["status"] == "expired" and expired["url"] is None
    with pytest.raises(policy.PermanentError) as caught:
        stripe_api.expire_checkout_session(created["id"])
    assert caught.value.status == 400


def test_unknown_session_is_a_permanent_not_found(stripe_fake):
    with pytest.raises(policy.PermanentError) as caught:
        stripe_api.retrieve_checkout_session("cs_test_missing")
    assert (caught.value.status, caught.value.code) == (404, "resource_missing")


@pytest.mark.parametrize(
    ("status", "details", "error"),
    [
        (429, {}, policy.TransientError),
        (500, {}, policy.TransientError),
        (503, {}, policy.TransientError),
        (402, {"code": "card_declined"}, policy.PermanentError),
        (400, {"code": "parameter_invalid_integer", "param": "amount"}, policy.PermanentError),
    ],
)
def test_injected_failures_are_classified(stripe_fake, status, details, error):
    stripe_fake.fail_next(1, status, **details)
    with pytest.raises(error) as caught:
        stripe_api.create_checkout_session(idempotency_key="deal_1", **SESSION)
    assert caught.value.status == status
    # An injected failure stands for a request Stripe never ran: the retry creates it.
    assert stripe_api.create_checkout_session(idempotency_key="deal_1", **SESSION)["id"]


def test_refund_a_paid_session(stripe_fake):
    session = stripe_api.create_checkout_session(idempotency_key="k1", **SESSION)
    paid = stripe_fake.complete_session(session["id"])
    assert paid["payment_status"] == "paid"

    refund = stripe_api.create_refund(
        idempotency_key="refund-1", payment_intent=paid["payment_intent"], amount=1000
    )
    assert refund["status"] == "succeeded" and refund["amount"] == 1000
    assert refund["payment_intent"] == paid["payment_intent"]
    rest = stripe_api.create_refund(
        idempotency_key="refund-2", payment_intent=paid["payment_intent"]
    )
    assert rest["amount"] == 4000
    with pytest.raises(policy.PermanentError) as caught:
        stripe_api.create_refund(idempotency_key="refund-3", payment_intent=paid["payment_intent"])
    assert caught.value.code == "charge_already_refunded"


def test_connect_express_account_and_onboarding_link(stripe_fake):
    account = stripe_api.create_account(
        idempotency_key="coach-7-account", type="express", email="coach@example.com"
    )
    assert account["id"].startswith("acct_")
    assert account["charges_enabled"] is False
    link = stripe_api.create_account_link(
        account=account["id"],
        type="account_onboarding",
        refresh_url="https://crm.example.com/stripe/refresh",
        return_url="https://crm.example.com/stripe/return",
    )
    assert link["object"] == "account_link" and account["id"] in link["url"]

    stripe_fake.complete_onboarding(account["id"])
    assert stripe_api.retrieve_account(account["id"])["charges_enabled"] is True


def test_the_sdks_global_settings_are_left_alone(stripe_fake):
    before = (stripe.api_key, stripe.api_base, stripe.max_network_retries)
    stripe_api.check_health()
    assert (stripe.api_key, stripe.api_base, stripe.max_network_retries) == before


def test_a_signed_event_about_a_created_session(stripe_fake):
    session = stripe_api.create_checkout_session(idempotency_key="k1", **SESSION)
    paid = stripe_fake.complete_session(session["id"])
    payload, headers = stripe_fake.event("checkout.session.completed", paid)
    event = stripe.Webhook.construct_event(
        payload, headers["Stripe-Signature"], stripe_fake.webhook_secret
    )
    assert event.data.object.id == session["id"]
    assert event.data.object.payment_status == "paid"


def test_a_request_refused_at_validation_does_not_use_up_its_key(stripe_fake):
    without_mode = {k: v for k, v in SESSION.items() if k != "mode"}
    with pytest.raises(policy.PermanentError) as caught:
        stripe_api.create_checkout_session(idempotency_key="deal_5", **without_mode)
    assert (caught.value.status, caught.value.code) == (400, "parameter_missing")
    assert stripe_api.create_checkout_session(idempotency_key="deal_5", **SESSION)["id"]
