"""crm.integrations.twilio drives the real twilio-python against the Twilio fake."""

from __future__ import annotations

import re

import pytest
from twilio.request_validator import RequestValidator

from crm.integrations import metrics, policy
from crm.integrations import twilio as twilio_api

SID = re.compile(r"^SM[0-9a-f]{32}$")


def test_not_configured_names_what_is_missing(app, monkeypatch):
    monkeypatch.setitem(app.config, "TWILIO_ACCOUNT_SID", None)
    monkeypatch.setitem(app.config, "TWILIO_AUTH_TOKEN", "")
    assert twilio_api.missing_settings() == ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"]
    with pytest.raises(policy.PermanentError, match="TWILIO_ACCOUNT_SID"):
        twilio_api.send_message(to="+14155550123", from_="+15005550006", body="hi")


def test_send_then_fetch_a_message(twilio_fake):
    assert twilio_api.missing_settings() == []
    sent = twilio_api.send_message(
        to="+14155550123",
        from_="+15005550006",
        body="See you Tuesday",
        status_callback="http://localhost/webhooks/twilio/status",
    )
    assert SID.match(sent["sid"])
    assert sent["status"] == "queued"
    assert sent["error_code"] is None
    (create,) = twilio_fake.calls("messages_create")
    assert create.form["To"] == "+14155550123"
    assert create.form["From"] == "+15005550006"
    assert create.form["Body"] == "See you Tuesday"
    assert create.form["StatusCallback"] == "http://localhost/webhooks/twilio/status"
    assert create.headers["Authorization"].startswith("Basic ")

    twilio_fake.status_callback_requests(sent["sid"], ["sent", "delivered"])
    fetched = twilio_api.fetch_message(sent["sid"])
    assert fetched["sid"] == sent["sid"]
    assert fetched["status"] == "delivered"
    assert fetched["date_sent"] is not None
    assert metrics.summary("twilio")["last_success_at"] is not None


def test_whatsapp_template_through_a_messaging_service(twilio_fake):
    sent = twilio_api.send_message(
        to="whatsapp:+5511987654321",
        messaging_service_sid="MG" + "a" * 32,
        content_sid="HX" + "b" * 32,
        content_variables={"1": "Ana"},
        media_urls=None,
    )
    assert sent["status"] == "accepted"
    (create,) = twilio_fake.calls("messages_create")
    assert create.form["ContentSid"] == "HX" + "b" * 32
    assert create.form["ContentVariables"] == '{"1": "Ana"}'
    assert "From" not in create.form and "Body" not in create.form


def test_media_urls_are_sent_as_repeated_fields(twilio_fake):
    sent = twilio_api.send_message(
        to="+14155550123",
        from_="+15005550006",
        media_urls=["https://crm.example.com/a.jpg", "https://crm.example.com/b.jpg"],
    )
    assert sent["sid"].startswith("MM")
    (create,) = twilio_fake.calls("messages_create")
    assert create.form.getlist("MediaUrl") == [
        "https://crm.example.com/a.jpg",
        "https://crm.example.com/b.jpg",
    ]


def test_invalid_number_is_a_permanent_error_with_twilios_code(twilio_fake):
    with pytest.raises(policy.PermanentError) as caught:
        twilio_api.send_message(to="+1555", from_="+15005550006", body="hi")
    assert caught.value.code == 21211
    assert caught.value.status == 400
    assert caught.value.integration == "twilio"


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, 21211, policy.PermanentError),
        (400, 21610, policy.PermanentError),
        (429, 20429, policy.TransientError),
        (500, 20500, policy.TransientError),
        (503, 20503, policy.TransientError),
    ],
)
def test_injected_failures_are_classified(twilio_fake, status, code, error):
    twilio_fake.fail_next(1, status, code=code, endpoint="messages_create")
    with pytest.raises(error) as caught:
        twilio_api.send_message(to="+14155550123", from_="+15005550006", body="hi")
    assert (caught.value.status, caught.value.code) == (status, code)
    # The failure was one answer only: the next send goes through.
    assert twilio_api.send_message(to="+14155550124", from_="+15005550007", body="hi")["sid"]


def test_wrong_auth_token_is_refused(app, twilio_fake, monkeypatch):
    monkeypatch.setitem(app.config, "TWILIO_AUTH_TOKEN", "0" * 32)
    with pytest.raises(policy.PermanentError) as caught:
        twilio_api.check_health()
    assert (caught.value.status, caught.value.code) == (401, 20003)


def test_a_slow_answer_times_out_as_transient(app, twilio_fake, monkeypatch):
    monkeypatch.setitem(app.config, "INTEGRATION_TIMEOUT_SECONDS", 0.2)
    twilio_fake.delay_next(1.0, endpoint="messages_create")
    with pytest.raises(policy.TransientError):
        twilio_api.send_message(to="+14155550123", from_="+15005550006", body="hi")


def test_each_sending_number_has_its_own_bucket(twilio_fake, app, monkeypatch):
    monkeypatch.setitem(app.config, "RATE_LIMITS", {})  # the built-in limits, not the fake's
    twilio_api.send_message(to="+14155550123", from_="+15005550006", body="one")
    # A US long code sends one segment a second: the same number must wait...
    with pytest.raises(policy.RateLimited):
        twilio_api.send_message(to="+14155550124", from_="+15005550006", body="two")
    # ...while another number, or WhatsApp on the same number, need not.
    twilio_api.send_message(to="+14155550124", from_="+15005550007", body="two")
    twilio_api.send_message(to="whatsapp:+14155550124", from_="whatsapp:+15005550006", body="hi")
    assert len(twilio_fake.calls("messages_create")) == 3


def test_health_check_fetches_the_account(twilio_fake):
    twilio_api.check_health()
    (call,) = twilio_fake.calls()
    assert call.endpoint == "account_fetch"
    assert call.path == f"/2010-04-01/Accounts/{twilio_fake.account_sid}.json"


def test_status_callback_for_a_sent_message_validates(twilio_fake):
    callback = "https://crm.example.com/webhooks/twilio/status"
    sent = twilio_api.send_message(
        to="+14155550123", from_="+15005550006", body="hi", status_callback=callback
    )
    (delivery,) = twilio_fake.status_callback_requests(sent["sid"], ["delivered"])
    assert delivery.url == callback
    assert delivery.data["RawDlrDoneDate"]
    assert RequestValidator(twilio_fake.auth_token).validate(
        delivery.url, delivery.data, delivery.headers["X-Twilio-Signature"]
    )
