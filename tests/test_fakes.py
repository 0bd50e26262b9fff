"""The provider fakes themselves: their server, wire formats and signed webhook builders.

Signatures are checked with the providers' own validators (twilio's RequestValidator,
stripe.Webhook) or, where no SDK helper exists, by HMAC as the reference describes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

import pytest
import requests
import stripe
from twilio.request_validator import RequestValidator
from werkzeug.wrappers import Request, Response

from tests.fakes import calcom
from tests.fakes.server import serve
from tests.fakes.stripe import decode_form


@pytest.fixture
def receiver():
    """A real HTTP server recording the form posts it gets, for webhooks sent over HTTP."""
    received: list[tuple[str, dict, dict]] = []
    lock = threading.Lock()

    def app(environ, start_response):
        request = Request(environ)
        with lock:
            received.append((request.url, request.form.to_dict(), dict(request.headers)))
        return Response("ok")(environ, start_response)

    with serve(app) as url:
        yield url, received


# --- the server -----------------------------------------------------------------------


def test_serve_answers_then_stops_listening():
    with serve(Response("hello")) as url:
        with requests.get(url, timeout=5) as response:
            assert response.text == "hello"
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=1)


def test_stripe_bracket_notation_decodes_to_nested_objects():
    pairs = [
        ("mode", "payment"),
        ("line_items[0][price_data][currency]", "usd"),
        ("line_items[0][quantity]", "2"),
        ("line_items[1][price]", "price_1"),
        ("metadata[deal_id]", "42"),
        ("expand[]", "payment_intent"),
        ("expand[]", "customer"),
    ]
    assert decode_form(pairs) == {
        "mode": "payment",
        "line_items": [{"price_data": {"currency": "usd"}, "quantity": "2"}, {"price": "price_1"}],
        "metadata": {"deal_id": "42"},
        "expand": ["payment_intent", "customer"],
    }


def test_failure_knob_hits_only_its_endpoint_and_count(crm_fake):
    crm_fake.fail_next(2, 500, endpoint="batch_upsert")
    headers = {"Authorization": f"Bearer {crm_fake.token}"}
    url = f"{crm_fake.url}/crm/v3/objects/contacts"
    with requests.get(url, params={"limit": 1}, headers=headers, timeout=5) as r:
        assert r.status_code == 200  # another endpoint is not affected
    statuses = []
    for _ in range(3):
        with requests.post(
            f"{url}/batch/upsert", json={"inputs": []}, headers=headers, timeout=5
        ) as r:
            statuses.append(r.status_code)
    assert statuses == [500, 500, 200]
    assert [c.endpoint for c in crm_fake.calls()] == ["contacts_list"] + ["batch_upsert"] * 3


def test_fixture_points_the_app_at_the_fake_and_restores_it(app, crm_fake):
    assert app.config["CRM_SYNC_URL"] == crm_fake.url
    assert app.config["CRM_SYNC_TOKEN"] == crm_fake.token


# --- Twilio webhooks ------------------------------------------------------------------


def test_twilio_inbound_sms_is_signed_for_the_apps_public_url(app, twilio_fake, monkeypatch):
    monkeypatch.setitem(app.config, "PUBLIC_BASE_URL", "https://crm.example.com")
    delivery = twilio_fake.inbound_message(
        "+14155552671", "+15005550006", "Hi, is Tuesday ok?", messaging_service_sid="MG" + "b" * 32
    )
    assert delivery.url == "https://crm.example.com/webhooks/twilio/messages"
    assert delivery.path == "/webhooks/twilio/messages"
    params = delivery.data
    assert params["Body"] == "Hi, is Tuesday ok?"
    assert params["MessageSid"].startswith("SM") and len(params["MessageSid"]) == 34
    assert params["SmsSid"] == params["SmsMessageSid"] == params["MessageSid"]
    assert params["NumMedia"] == "0" and params["SmsStatus"] == "received"
    assert params["AccountSid"] == twilio_fake.account_sid
    assert params["MessagingServiceSid"] == "MG" + "b" * 32
    validator = RequestValidator(twilio_fake.auth_token)
    signature = delivery.headers["X-Twilio-Signature"]
    assert validator.validate(delivery.url, params, signature)
    assert not validator.validate(delivery.url, {**params, "Body": "tampered"}, signature)
    assert not validator.validate("https://crm.example.com/other", params, signature)
    assert not RequestValidator("wrong-token").validate(delivery.url, params, signature)


def test_twilio_inbound_whatsapp_with_media(twilio_fake):
    delivery = twilio_fake.inbound_message(
        "+5511987654321",
        "+14155238886",
        "Olá",
        media=["https://api.twilio.com/media/1", ("https://api.twilio.com/media/2", "image/png")],
        whatsapp=True,
        profile_name="Ana Silva",
    )
    params = delivery.data
    assert delivery.url == "http://localhost/webhooks/twilio/messages"
    assert params["From"] == "whatsapp:+5511987654321"
    assert params["To"] == "whatsapp:+14155238886"
    assert params["WaId"] == "5511987654321"
    assert params["ProfileName"] == "Ana Silva"
    assert params["NumMedia"] == "2"
    assert params["MediaUrl1"] == "https://api.twilio.com/media/2"
    assert params["MediaContentType0"] == "image/jpeg"
    assert params["MediaContentType1"] == "image/png"
    assert RequestValidator(twilio_fake.auth_token).validate(
        delivery.url, params, delivery.headers["X-Twilio-Signature"]
    )


def _create_message(fake, **form) -> dict:
    """Create a message on the fake as twilio-python would (form body, Basic auth)."""
    url = f"{fake.url}/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
    auth = (fake.account_sid, fake.auth_token)
    with requests.post(url, data=form, auth=auth, timeout=5) as response:
        assert response.status_code == 201, response.text
        return response.json()


def test_twilio_status_callbacks_are_signed_and_reach_a_real_server(twilio_fake, receiver):
    url, received = receiver
    callback_url = f"{url}/webhooks/twilio/status?tenant=1"
    message = _create_message(
        twilio_fake, To="+14155550123", From="+15005550006", Body="hi", StatusCallback=callback_url
    )
    assert message["status"] == "queued"  # no callback for the initial status
    sid = message["sid"]

    statuses = twilio_fake.deliver_status_http(sid, ["sent", "undelivered"], error_code=30003)

    assert statuses == [200, 200]
    validator = RequestValidator(twilio_fake.auth_token)
    assert [params["MessageStatus"] for _, params, _ in received] == ["sent", "undelivered"]
    for got_url, params, got_headers in received:
        assert got_url == callback_url
        assert params["MessageSid"] == sid and params["SmsStatus"] == params["MessageStatus"]
        assert validator.validate(got_url, params, got_headers["X-Twilio-Signature"])
    assert received[1][1]["ErrorCode"] == "30003"
    assert "ErrorCode" not in received[0][1]
    assert twilio_fake.messages[sid]["status"] == "undelivered"
    assert twilio_fake.messages[sid]["error_code"] == 30003


def test_twilio_status_callbacks_can_go_through_any_sender(twilio_fake):
    message = _create_message(
        twilio_fake,
        To="whatsapp:+5511987654321",
        MessagingServiceSid="MG" + "c" * 32,
        Body="hello",
        StatusCallback=twilio_fake.status_callback_url(),
    )
    assert message["status"] == "accepted"  # through a Messaging Service
    sent = []
    twilio_fake.advance(message["sid"], ["queued", "sent", "delivered"], send=sent.append)
    twilio_fake.deliver_status(message["sid"], "read", send=sent.append)
    assert [d.data["MessageStatus"] for d in sent] == ["queued", "sent", "delivered", "read"]
    assert all(d.path == "/webhooks/twilio/status" for d in sent)
    assert all(d.data["MessagingServiceSid"] == "MG" + "c" * 32 for d in sent)
    # Delivery receipts carry a carrier date only for SMS, not WhatsApp.
    assert all("RawDlrDoneDate" not in d.data for d in sent)


# --- Stripe events --------------------------------------------------------------------


def test_stripe_event_verifies_with_the_sdk(stripe_fake):
    session = {"id": "cs_test_1", "object": "checkout.session", "payment_status": "paid"}
    payload, headers = stripe_fake.event("checkout.session.completed", session)
    event = stripe.Webhook.construct_event(
        payload, headers["Stripe-Signature"], stripe_fake.webhook_secret
    )
    assert event.type == "checkout.session.completed"
    assert event.data.object.id == "cs_test_1"
    assert event.id.startswith("evt_") and event.api_version == stripe.api_version
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload + b" ", headers["Stripe-Signature"], "whsec_x")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, headers["Stripe-Signature"], "whsec_other")


def test_stripe_event_with_rotated_secrets_and_a_stale_timestamp(stripe_fake):
    old, new = "whsec_old", "whsec_new"
    payload, headers = stripe_fake.event("charge.refunded", {"id": "ch_1"}, secret=[old, new])
    signature = headers["Stripe-Signature"]
    assert signature.count("v1=") == 2
    for secret in (old, new):
        assert stripe.Webhook.construct_event(payload, signature, secret).type == "charge.refunded"

    payload, headers = stripe_fake.event(
        "charge.refunded", {"id": "ch_1"}, timestamp=int(time.time()) - 301
    )
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.Webhook.construct_event(
            payload, headers["Stripe-Signature"], stripe_fake.webhook_secret, tolerance=300
        )


def test_stripe_fake_refuses_a_bad_key_and_a_missing_one(stripe_fake):
    url = f"{stripe_fake.url}/v1/balance"
    with requests.get(url, headers={"Authorization": "Bearer sk_test_wrong"}, timeout=5) as r:
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "invalid_request_error"
    with requests.get(url, timeout=5) as r:
        assert r.status_code == 401


# --- Calendly and Cal.com webhooks ----------------------------------------------------


def _calendly_valid(body: bytes, header: str, key: str) -> bool:
    parts = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(key.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), parts["v1"])


def test_calendly_webhook_is_signed_over_timestamp_and_body(calendly_fake):
    event = calendly_fake.add_scheduled_event(invitees=[("ana@example.com", "Ana Silva")])
    uuid = event["uri"].rsplit("/", 1)[1]
    payload = calendly_fake.invitee_payload(uuid)
    body, headers = calendly_fake.webhook("invitee.created", payload, timestamp=1703438858)

    header = headers["Calendly-Webhook-Signature"]
    assert header.startswith("t=1703438858,v1=") and len(header.split("v1=")[1]) == 64
    assert _calendly_valid(body, header, calendly_fake.signing_key)
    assert not _calendly_valid(body + b" ", header, calendly_fake.signing_key)
    assert not _calendly_valid(body, header, "another-key")
    envelope = json.loads(body)
    assert envelope["event"] == "invitee.created"
    assert envelope["payload"]["email"] == "ana@example.com"
    assert envelope["payload"]["event"] == event["uri"]  # a URI string, not an object
    assert envelope["payload"]["scheduled_event"]["uri"] == event["uri"]


def test_calcom_webhook_signature_and_envelopes():
    payload = calcom.booking_payload(uid="booking-1")
    body, headers = calcom.webhook("BOOKING_CREATED", payload, secret="cal-secret")
    expected = hmac.new(b"cal-secret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Cal-Signature-256"], expected)
    assert headers["X-Cal-Webhook-Version"] == "2021-10-20"
    assert json.loads(body)["payload"]["uid"] == "booking-1"

    body, headers = calcom.webhook("MEETING_ENDED", payload, secret="cal-secret")
    assert json.loads(body)["uid"] == "booking-1"  # not wrapped in `payload`
    assert "payload" not in json.loads(body)

    _, headers = calcom.webhook("BOOKING_CREATED", payload, secret=None)
    assert headers["X-Cal-Signature-256"] == "no-secret-provided"
