"""Webhook intake and processing, per provider: signed deliveries stored and processed once,
everything else refused; retries with backoff, then the dead-letter list."""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import timedelta
from unittest import mock
from urllib.parse import urlencode

import pytest
import requests
import sqlalchemy as sa
import stripe
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import SimpleWorker
from rq.registry import ScheduledJobRegistry
from twilio.request_validator import RequestValidator

from crm.contacts.models import Contact
from crm.database import hot_write, utcnow
from crm.extensions import db as _db
from crm.integrations import metrics
from crm.integrations import stripe as integrations_stripe
from crm.integrations import twilio as integrations_twilio
from crm.redis_client import get_redis
from crm.webhooks import signatures
from crm.webhooks.handlers import PermanentHandlerError, handler_for, register, registered
from crm.webhooks.models import WebhookEvent
from crm.webhooks.services import last_deliveries, retry_policy
from jobs import get_queue
from tests.fakes.server import serve

BASE = "https://crm.example.test"
TWILIO_TOKEN = "twilio-auth-token-for-tests"
STRIPE_SECRETS = ["whsec_previous_secret", "whsec_current_secret"]
CALENDLY_KEY = "calendly-signing-key-for-tests"
CALCOM_SECRET = "calcom-secret-for-tests"

CASES = ("twilio_messages", "twilio_status", "stripe", "calendly", "calcom")
# The handler key each case's default delivery dispatches to.
KINDS = {
    "twilio_messages": ("twilio", "messages"),
    "twilio_status": ("twilio", "status"),
    "stripe": ("stripe", "checkout.session.completed"),
    "calendly": ("calendly", "invitee.created"),
    "calcom": ("calcom", "BOOKING_CREATED"),
}
SIGNATURE_HEADERS = {
    "twilio": "X-Twilio-Signature",
    "stripe": "Stripe-Signature",
    "calendly": "Calendly-Webhook-Signature",
    "calcom": "X-Cal-Signature-256",
}


@pytest.fixture(autouse=True)
def webhook_config(app, monkeypatch):
    """Every provider configured, Twilio's public URL fixed, retries immediate."""
    for key, value in {
        "PUBLIC_BASE_URL": BASE,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "STRIPE_WEBHOOK_SECRETS": list(STRIPE_SECRETS),
        "CALENDLY_WEBHOOK_SIGNING_KEY": CALENDLY_KEY,
        "CALCOM_WEBHOOK_SECRET": CALCOM_SECRET,
        "WEBHOOK_RETRY_INTERVALS": [0],
    }.items():
        monkeypatch.setitem(app.config, key, value)


# Signed deliveries, built as each provider builds them


@dataclass(frozen=True)
class Signed:
    provider: str
    path: str
    body: bytes
    headers: dict

    def post(self, client):
        return client.post(self.path, data=self.body, headers=self.headers)

    def without(self, header: str) -> Signed:
        return replace(self, headers={k: v for k, v in self.headers.items() if k != header})

    def with_body(self, body: bytes) -> Signed:
        return replace(self, body=body)


def message_sid(n: int) -> str:
    return f"SM{n:032x}"


def twilio_params(kind: str, n: int = 1, **fields) -> dict:
    common = {
        "MessageSid": message_sid(n),
        "SmsSid": message_sid(n),
        "AccountSid": "AC" + "c" * 32,
        "ApiVersion": "2010-04-01",
    }
    if kind == "messages":
        common.update(
            {
                "From": "+14155552671",
                "To": "+15005550006",
                "Body": "Hello there",
                "NumMedia": "0",
                "NumSegments": "1",
                "SmsStatus": "received",
            }
        )
    else:
        common.update(
            {
                "From": "+15005550006",
                "To": "+14155552671",
                "MessageStatus": "delivered",
                "SmsStatus": "delivered",
            }
        )
    return {**common, **fields}


def twilio(
    kind: str,
    n: int = 1,
    *,
    token: str = TWILIO_TOKEN,
    signed_url: str | None = None,
    query: str = "",
    **fields,
) -> Signed:
    path = f"/webhooks/twilio/{kind}" + (f"?{query}" if query else "")
    params = twilio_params(kind, n, **fields)
    signature = RequestValidator(token).compute_signature(signed_url or BASE + path, params)
    return Signed(
        "twilio",
        path,
        urlencode(params).encode(),
        {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"},
    )


def stripe_event(n: int = 1, type_: str = "checkout.session.completed", **obj) -> dict:
    session = {
        "id": f"cs_test_{n}",
        "object": "checkout.session",
        "amount_total": 5000,
        "currency": "usd",
        "customer_email": "ana@example.com",
        "payment_status": "paid",
        "status": "complete",
        "metadata": {"deal_id": "42"},
        **obj,
    }
    return {
        "id": f"evt_test_{n:06d}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "livemode": False,
        "type": type_,
        "data": {"object": session},
    }


def stripe_delivery(
    event: dict | None = None, *, secret: str = STRIPE_SECRETS[1], timestamp: int | None = None
) -> Signed:
    payload = json.dumps(event or stripe_event())
    header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return Signed(
        "stripe",
        "/webhooks/stripe",
        payload.encode(),
        {"Stripe-Signature": header, "Content-Type": "application/json; charset=utf-8"},
    )


def calendly_event(n: int = 1, event: str = "invitee.created", email="ana@example.com") -> dict:
    scheduled = f"https://api.calendly.com/scheduled_events/{n:08d}-c99d-48e4-bc2b-b363b35c669c"
    return {
        "created_at": "2026-11-20T17:27:38.000000Z",
        "created_by": "https://api.calendly.com/users/f2f32253",
        "event": event,
        "payload": {
            "email": email,
            "name": "Ana Silva",
            "event": scheduled,
            "status": "active",
            "uri": f"{scheduled}/invitees/{n:08d}-9338-448d-b760-2217a35cc0a7",
            "questions_and_answers": [],
            # Real deliveries embed the event; the bookings handler needs its times.
            "scheduled_event": {
                "uri": scheduled,
                "name": "15 Minute Meeting",
                "start_time": "2026-12-01T10:00:00.000000Z",
                "end_time": "2026-12-01T10:15:00.000000Z",
                "event_memberships": [{"user": "https://api.calendly.com/users/f2f32253"}],
            },
        },
    }


def calendly_delivery(
    body: dict | None = None, *, key: str = CALENDLY_KEY, timestamp: int | None = None
) -> Signed:
    raw = json.dumps(body or calendly_event()).encode()
    ts = int(time.time()) if timestamp is None else timestamp
    signature = hmac.new(key.encode(), f"{ts}.".encode() + raw, hashlib.sha256).hexdigest()
    return Signed(
        "calendly",
        "/webhooks/calendly",
        raw,
        {
            "Calendly-Webhook-Signature": f"t={ts},v1={signature}",
            "Content-Type": "application/json",
        },
    )


def calcom_event(n: int = 1, trigger: str = "BOOKING_CREATED", emails=("ana@example.com",)) -> dict:
    return {
        "triggerEvent": trigger,
        "createdAt": "2026-11-20T10:00:00.000Z",
        "payload": {
            "type": "discovery-call",
            "title": "Discovery Call",
            "startTime": "2026-12-01T10:00:00Z",
            "endTime": "2026-12-01T10:15:00Z",
            "attendees": [{"email": e, "name": "Ana Silva", "timeZone": "UTC"} for e in emails],
            "uid": f"booking-uid-{n}",
            "bookingId": 100 + n,
            "status": "ACCEPTED",
        },
    }


def calcom_delivery(body: dict | None = None, *, secret: str = CALCOM_SECRET) -> Signed:
    raw = json.dumps(body or calcom_event()).encode()
    signature = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return Signed(
        "calcom",
        "/webhooks/calcom",
        raw,
        {
            "X-Cal-Signature-256": signature,
            "X-Cal-Webhook-Version": "2021-10-20",
            "Content-Type": "application/json",
        },
    )


def delivery(case: str, n: int = 1, *, secret: str | None = None) -> Signed:
    """Case `case`'s n-th distinct event, signed with the configured secret or `secret`."""
    if case.startswith("twilio_"):
        kind = case.removeprefix("twilio_")
        return twilio(kind, n, token=secret or TWILIO_TOKEN)
    if case == "stripe":
        return stripe_delivery(stripe_event(n), secret=secret or STRIPE_SECRETS[1])
    if case == "calendly":
        return calendly_delivery(calendly_event(n), key=secret or CALENDLY_KEY)
    return calcom_delivery(calcom_event(n), secret=secret or CALCOM_SECRET)


def tampered(signed: Signed) -> Signed:
    if signed.body.startswith(b"{"):
        return signed.with_body(signed.body[:-1] + b', "injected": true}')
    return signed.with_body(signed.body + b"&Injected=1")


# Reading the outcome


def run_worker() -> None:
    queue = get_queue("webhooks")
    SimpleWorker([queue], connection=get_redis()).work(burst=True)


def events(db) -> list[WebhookEvent]:
    db.session.expire_all()
    return list(db.session.execute(sa.select(WebhookEvent).order_by(WebhookEvent.id)).scalars())


class Counting:
    """A handler that counts its calls, then does what the registered one does."""

    def __init__(self, provider: str, kind: str, fail_times: int = 0, error=RuntimeError):
        self.calls = 0
        self.fail_times = fail_times
        self.error = error
        # Status callbacks need a sent message to act on (tests/test_conversations.py).
        self.inner = (
            None if (provider, kind) == ("twilio", "status") else handler_for(provider, kind)
        )

    def __call__(self, event, payload):
        self.calls += 1
        if self.calls <= self.fail_times:
            raise self.error(f"failure {self.calls}")
        if self.inner is not None:
            self.inner(event, payload)


def counting(case: str, **kwargs) -> tuple[Counting, ExitStack]:
    provider, kind = KINDS[case]
    handler = Counting(provider, kind, **kwargs)
    stack = ExitStack()
    stack.enter_context(registered(provider, kind, handler))
    return handler, stack


# Accepted deliveries


@pytest.mark.parametrize("case", CASES)
def test_a_delivery_sent_three_times_is_stored_once_and_processed_once(client, db, case):
    signed = delivery(case)
    handler, stack = counting(case)
    with stack:
        answers = [signed.post(client) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert get_queue("webhooks").count == 1
        run_worker()
    [event] = events(db)
    assert event.provider == signed.provider
    assert event.status == "processed"
    assert event.attempts == 1
    assert event.processed_at is not None
    assert event.body == signed.body.decode()
    assert handler.calls == 1
    sig_header = SIGNATURE_HEADERS[signed.provider]
    assert sig_header not in event.headers
    assert event.headers["Content-Type"].startswith(signed.headers["Content-Type"].split(";")[0])
    if signed.provider != "twilio" or case == "twilio_status":
        assert answers[0].mimetype in ("application/json", "text/plain")
    if answers[0].mimetype == "application/json":
        assert [a.json["duplicate"] for a in answers] == [False, True, True]


def test_an_inbound_message_is_answered_with_empty_twiml(client, db):
    response = twilio("messages").post(client)
    assert response.status_code == 200
    assert response.mimetype == "text/xml"
    assert response.get_data(as_text=True) == (
        '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
    )


def test_event_ids_follow_each_provider(client, db):
    for signed in (
        twilio("messages", 7),
        twilio("status", 7, MessageStatus="sent", SmsStatus="sent"),
        twilio("status", 7, MessageStatus="delivered", SmsStatus="delivered"),
        stripe_delivery(stripe_event(7)),
        calendly_delivery(calendly_event(7)),
        calcom_delivery(calcom_event(7)),
    ):
        assert signed.post(client).status_code == 200
    stored = {(e.provider, e.kind, e.event_type): e.event_id for e in events(db)}
    sid = message_sid(7)
    assert stored == {
        ("twilio", "messages", "message.received"): sid,
        ("twilio", "status", "status.sent"): f"{sid}:sent",
        ("twilio", "status", "status.delivered"): f"{sid}:delivered",
        ("stripe", "checkout.session.completed", "checkout.session.completed"): "evt_test_000007",
        ("calendly", "invitee.created", "invitee.created"): "invitee.created:"
        + calendly_event(7)["payload"]["uri"],
        ("calcom", "BOOKING_CREATED", "BOOKING_CREATED"): (
            "BOOKING_CREATED:booking-uid-7:2026-11-20T10:00:00.000Z"
        ),
    }


def test_stripe_accepts_either_secret_during_a_rotation(client, db):
    old = stripe_delivery(stripe_event(1), secret=STRIPE_SECRETS[0])
    assert old.post(client).status_code == 200
    # Stripe signs with both secrets while a rotation lasts: one header, two v1 values.
    payload = json.dumps(stripe_event(2))
    ts = int(time.time())
    v1 = [
        hmac.new(s.encode(), f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
        for s in ("whsec_unknown", STRIPE_SECRETS[1])
    ]
    header = f"t={ts},v1={v1[0]},v1={v1[1]},v0=deadbeef"
    response = client.post("/webhooks/stripe", data=payload, headers={"Stripe-Signature": header})
    assert response.status_code == 200
    assert len(events(db)) == 2


def test_twilio_json_bodies_are_checked_with_body_sha256(client, db):
    body = json.dumps({"MessageSid": message_sid(3), "MessageStatus": "read"}).encode()
    path = f"/webhooks/twilio/status?bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(BASE + path, {})
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/json"}
    assert client.post(path, data=body, headers=headers).status_code == 200
    tampered_body = body.replace(b"read", b"sent")
    assert client.post(path, data=tampered_body, headers=headers).status_code == 403
    [event] = events(db)
    assert event.event_id == f"{message_sid(3)}:read"


def test_twilio_signatures_made_with_or_without_the_default_port_both_pass(client, db):
    path = "/webhooks/twilio/status"
    with_port = twilio("status", 1, signed_url=f"https://crm.example.test:443{path}")
    assert with_port.post(client).status_code == 200


def test_twilio_shared_key_signing_needs_its_own_secret(client, db, app, monkeypatch):
    path = "/webhooks/twilio/status"
    params = twilio_params("status", 4)
    signature = RequestValidator("shared-key-secret").compute_signature(
        BASE + path, params, algorithm="HMAC_SHA256"
    )
    headers = {
        "X-Twilio-Signature": signature,
        "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
    }
    assert client.post(path, data=params, headers=headers).status_code == 403
    monkeypatch.setitem(app.config, "TWILIO_WEBHOOK_SHARED_KEY", "shared-key-secret")
    assert client.post(path, data=params, headers=headers).status_code == 200
    assert len(events(db)) == 1


def test_a_repeat_queues_an_event_whose_job_was_lost(client, db, redis):
    signed = stripe_delivery()
    signed.post(client)
    redis.flushdb()  # Redis lost the job (it was down at the commit, say)
    assert signed.post(client).status_code == 200
    assert get_queue("webhooks").count == 0  # a fresh repeat may race the first enqueue
    db.session.execute(sa.update(WebhookEvent).values(received_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    assert signed.post(client).status_code == 200
    assert get_queue("webhooks").count == 1
    run_worker()
    assert [(e.status, e.attempts) for e in events(db)] == [("processed", 1)]


def test_an_unknown_event_type_is_stored_ignored_and_not_queued(client, db):
    response = stripe_delivery(stripe_event(5, "customer.created")).post(client)
    assert response.status_code == 200
    [event] = events(db)
    assert (event.status, event.event_type, event.attempts) == ("ignored", "customer.created", 0)
    assert get_queue("webhooks").count == 0


# Refused deliveries


def refusals(case: str) -> list[tuple[str, Signed]]:
    signed = delivery(case)
    header = SIGNATURE_HEADERS[signed.provider]
    found = [
        ("tampered body", tampered(signed)),
        ("wrong secret", delivery(case, secret="not-the-secret")),
        ("missing header", signed.without(header)),
    ]
    stale = int(time.time()) - 3600
    if case == "stripe":
        found.append(("stale", stripe_delivery(stripe_event(), timestamp=stale)))
    if case == "calendly":
        found.append(("stale", calendly_delivery(calendly_event(), timestamp=stale)))
    if case.startswith("twilio_"):
        kind = case.removeprefix("twilio_")
        found.append(("other URL", twilio(kind, signed_url=f"{BASE}/webhooks/twilio/elsewhere")))
        found.append(("other host", twilio(kind, signed_url=f"https://evil.example/{kind}")))
    if case == "calcom":
        unsigned = replace(signed, headers={**signed.headers, header: "no-secret-provided"})
        found.append(("unsigned", unsigned))
    return found


@pytest.mark.parametrize("case", CASES)
def test_bad_signatures_are_refused_logged_and_nothing_is_stored(client, db, case, caplog):
    provider = KINDS[case][0]
    failures_before = metrics.summary(provider)["signature_failures_day"]
    cases = refusals(case)
    with caplog.at_level(logging.WARNING, logger="rapport.security"):
        for label, signed in cases:
            response = signed.post(client)
            assert response.status_code == 403, label
            assert "<html" not in response.get_data(as_text=True)
    assert events(db) == []
    assert get_queue("webhooks").count == 0
    refused = [r for r in caplog.records if r.name == "rapport.security"]
    assert len(refused) == len(cases)
    assert all(f"provider={provider}" in r.getMessage() for r in refused)
    assert all("ip=127.0.0.1" in r.getMessage() for r in refused)
    assert metrics.summary(provider)["signature_failures_day"] == failures_before + len(cases)


def health_card(client, provider: str, *, htmx: bool) -> str:
    headers = {"HX-Request": "true"} if htmx else {}
    page = client.get("/integrations/", headers=headers).get_data(as_text=True)
    match = re.search(rf'<article[^>]*id="card-{provider}".*?</article>', page, re.S)
    assert match, f"no card for {provider}"
    return match.group(0)


def test_the_health_page_counts_stored_deliveries_and_refusals(
    client, db, app, login_as, monkeypatch
):
    """The last delivery comes from the stored events, refusals from the counters."""
    for module in (integrations_twilio, integrations_stripe):
        for setting in module.SETTINGS:
            if not app.config.get(setting):
                monkeypatch.setitem(app.config, setting, "set-for-the-card")
    db.session.add(
        WebhookEvent(
            provider="stripe",
            event_id="evt_old",
            kind="checkout.session.completed",
            event_type="checkout.session.completed",
            body="{}",
            headers={},
            received_at=utcnow() - timedelta(days=3),
            status="processed",
            attempts=1,
        )
    )
    db.session.commit()
    refused_before = metrics.summary("twilio")["signature_failures_day"]
    assert delivery("twilio_status", 7).post(client).status_code == 200
    assert tampered(delivery("twilio_status", 8)).post(client).status_code == 403
    login_as("staff")
    for htmx in (False, True):
        twilio_card = health_card(client, "twilio", htmx=htmx)
        assert re.search(r"Last webhook</dt><dd><time datetime=\"[^\"]+\">\d+ s ago", twilio_card)
        failures = f"Signature failures (day)</dt><dd>{refused_before + 1}</dd>"
        assert failures in twilio_card
        assert "Last webhook</dt><dd><time" in health_card(client, "stripe", htmx=htmx)
        assert "3 days ago" in health_card(client, "stripe", htmx=htmx)
        assert "Last webhook</dt><dd>never</dd>" in health_card(client, "calcom", htmx=htmx)
    with client.application.app_context():
        last = last_deliveries(["twilio", "stripe", "calcom"])
    assert time.time() - last["twilio"] < 60
    assert time.time() - last["stripe"] == pytest.approx(3 * 86400, abs=60)
    assert last["calcom"] is None


@pytest.mark.parametrize("case", CASES)
def test_an_oversized_body_is_refused_before_it_is_read(client, db, app, case, monkeypatch):
    monkeypatch.setitem(app.config, "WEBHOOK_MAX_BYTES", 400)
    signed = delivery(case)
    padded = signed.with_body(signed.body + b" " * 500)
    response = padded.post(client)
    assert response.status_code == 413
    assert events(db) == []


def test_a_chunked_body_over_the_cap_is_refused_while_reading(app, live_server, monkeypatch):
    monkeypatch.setitem(app.config, "WEBHOOK_MAX_BYTES", 100)
    signed = stripe_delivery()
    # A generator body goes out chunked: no Content-Length to check before reading.
    chunks = (signed.body[i : i + 40] for i in range(0, len(signed.body), 40))
    response = requests.post(
        live_server + signed.path, data=chunks, headers=signed.headers, timeout=30
    )
    assert response.status_code == 413
    assert _db.session.execute(sa.select(sa.func.count(WebhookEvent.id))).scalar_one() == 0


def malformed(case: str) -> list[tuple[str, Signed]]:
    """Signed correctly, but unreadable; plus a garbled signature header."""
    if case.startswith("twilio_"):
        kind = case.removeprefix("twilio_")
        no_sid = twilio(kind, MessageSid="", SmsSid="")
        return [("no MessageSid", no_sid)]
    if case == "stripe":
        no_id = {k: v for k, v in stripe_event().items() if k != "id"}
        garbled = replace(stripe_delivery(), headers={"Stripe-Signature": "garbage"})
        not_json = _stripe_signed_raw(b"not json")
        return [
            ("no id", stripe_delivery(no_id)),
            ("garbled header", garbled),
            ("not JSON", not_json),
        ]
    if case == "calendly":
        no_event = {k: v for k, v in calendly_event().items() if k != "event"}
        garbled = replace(calendly_delivery(), headers={"Calendly-Webhook-Signature": "v1=abc"})
        return [("no event", calendly_delivery(no_event)), ("garbled header", garbled)]
    no_trigger = {k: v for k, v in calcom_event().items() if k != "triggerEvent"}
    garbled = replace(calcom_delivery(), headers={"X-Cal-Signature-256": "sha256=xyz"})
    return [("no trigger", calcom_delivery(no_trigger)), ("garbled header", garbled)]


def _stripe_signed_raw(raw: bytes) -> Signed:
    ts = int(time.time())
    header = stripe.WebhookSignature.generate_signature_header(
        raw.decode(), STRIPE_SECRETS[1], timestamp=ts
    )
    return Signed("stripe", "/webhooks/stripe", raw, {"Stripe-Signature": header})


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_request_is_answered_400(client, db, case, caplog):
    with caplog.at_level(logging.WARNING, logger="rapport.security"):
        for label, signed in malformed(case):
            response = signed.post(client)
            assert response.status_code == 400, label
            assert response.mimetype == "text/plain"
    assert events(db) == []
    assert any("status=400" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("case", "setting", "value"),
    [
        ("twilio_messages", "TWILIO_AUTH_TOKEN", None),
        ("stripe", "STRIPE_WEBHOOK_SECRETS", []),
        ("calendly", "CALENDLY_WEBHOOK_SIGNING_KEY", None),
        ("calcom", "CALCOM_WEBHOOK_SECRET", None),
    ],
)
def test_an_unconfigured_provider_answers_503_and_stores_nothing(
    client, db, app, monkeypatch, case, setting, value
):
    monkeypatch.setitem(app.config, setting, value)
    response = delivery(case).post(client)
    assert response.status_code == 503
    assert "not configured" in response.get_data(as_text=True)
    assert events(db) == []


def test_webhooks_need_no_csrf_token_but_only_accept_post(client, db):
    response = client.get("/webhooks/stripe")
    assert response.status_code == 405
    # A machine gets the reason in plain text, not the HTML error page.
    assert response.mimetype == "text/plain" and "<html" not in response.get_data(as_text=True)
    assert client.post("/webhooks/nowhere").mimetype == "text/plain"


# Concurrent repeats, against a real threaded server and committed data


@pytest.fixture
def live_server(app):
    """The app on a loopback port, its own sessions committing for real."""
    with app.app_context():
        last_contact = _db.session.scalar(sa.select(sa.func.max(Contact.id))) or 0
        _db.session.remove()
    with serve(app) as base:
        yield base
    with app.app_context():
        _db.session.execute(sa.delete(WebhookEvent))
        # Booking handlers create the invitee's contact (their bookings cascade with it).
        _db.session.execute(sa.delete(Contact).where(Contact.id > last_contact))
        _db.session.commit()
        _db.session.remove()


@pytest.mark.parametrize("case", CASES)
def test_three_concurrent_deliveries_are_stored_once_and_processed_once(app, live_server, case):
    signed = delivery(case, 11)
    start = threading.Barrier(3)
    answers: list[int] = []

    def send():
        start.wait()
        response = requests.post(
            live_server + signed.path, data=signed.body, headers=signed.headers, timeout=30
        )
        answers.append(response.status_code)

    handler, stack = counting(case)
    with stack:
        threads = [threading.Thread(target=send) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert answers == [200, 200, 200]
        assert get_queue("webhooks").count == 1
        run_worker()
    rows = _db.session.execute(sa.select(WebhookEvent)).scalars().all()
    assert [(r.status, r.attempts) for r in rows] == [("processed", 1)]
    assert handler.calls == 1


def test_after_the_intake_pooled_connections_still_roll_back(app, live_server):
    """The intake writes in autocommit on PostgreSQL; the connection it used must go
    back to the pool transactional, or a later request's rollback would keep its writes."""
    for n in range(4):
        signed = delivery("twilio_status", 40 + n)
        response = requests.post(
            live_server + signed.path, data=signed.body, headers=signed.headers, timeout=30
        )
        assert response.status_code == 200
    probe = Contact(name="Rolled Back Probe")
    _db.session.add(probe)
    _db.session.flush()
    _db.session.rollback()
    assert _db.session.scalar(sa.select(Contact).where(Contact.name == probe.name)) is None


def test_a_delivery_is_stored_as_received_on_a_connection_of_its_own(app, live_server):
    """The production path: the insert commits by itself, and what it stored reads back
    through the ORM as it was sent (the headers kept, the time zone-aware)."""
    signed = delivery("twilio_status", 50)
    sent = {"User-Agent": "TwilioProxy/1.1", "I-Twilio-Idempotency-Token": "idem-50"}
    before = utcnow()
    response = requests.post(
        live_server + signed.path,
        data=signed.body,
        headers=signed.headers | sent,
        timeout=30,
    )
    assert response.status_code == 200
    with app.app_context():
        [event] = _db.session.execute(sa.select(WebhookEvent)).scalars().all()
        assert (event.provider, event.kind, event.status) == ("twilio", "status", "received")
        assert event.body == signed.body.decode()
        # Kept headers only: never the signature.
        assert event.headers == {"Content-Type": "application/x-www-form-urlencoded"} | sent
        assert before - timedelta(seconds=1) <= event.received_at <= utcnow()
        assert event.received_at.tzinfo is not None
        assert get_queue("webhooks").job_ids == [f"webhook-{event.id}"]
        _db.session.remove()


def _gate_probe(path: str):
    other = os.open(f"{path}-writegate", os.O_RDWR | os.O_CREAT, 0o600)  # another process's

    def gate_free() -> bool:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(other, fcntl.LOCK_UN)
        return True

    return other, gate_free


@pytest.mark.parametrize("bound", [False, True], ids=["own connection", "session's transaction"])
def test_the_sqlite_write_gate_is_open_before_jobs_are_sent(app, live_server, request, bound):
    """Another process may write while this one sends the delivery's job to Redis: on a
    connection of its own the gate opens when the insert is done, in the session's
    transaction when it commits."""
    with app.app_context():
        path = _db.engine.url.database if _db.engine.dialect.name == "sqlite" else None
    if not path:
        pytest.skip("the write gate is SQLite's")
    other, gate_free = _gate_probe(path)
    seen = []
    real_execute = Pipeline.execute

    def execute(pipe, *args, **kwargs):  # a spy: notes the gate, then sends the jobs
        seen.append(gate_free())
        return real_execute(pipe, *args, **kwargs)

    signed = delivery("twilio_status", 60)
    try:
        with mock.patch.object(Pipeline, "execute", execute):
            if bound:  # the test client's session writes in the test's transaction
                assert signed.post(request.getfixturevalue("client")).status_code == 200
            else:
                response = requests.post(
                    live_server + signed.path, data=signed.body, headers=signed.headers, timeout=30
                )
                assert response.status_code == 200
        assert seen == [True]
    finally:
        os.close(other)


def test_a_failed_intake_write_raises_stores_nothing_and_frees_its_connection(app, db):
    """On a connection of its own and in the session's transaction alike: SQLAlchemy's
    error, nothing written, the connection usable after, SQLite's write gate open."""
    table = WebhookEvent.__table__
    statement = sa.insert(table).returning(table.c.id)
    bad = {  # provider outside the check constraint
        "provider": "nobody",
        "event_id": "evt_bad",
        "kind": "x",
        "event_type": "x",
        "body": "{}",
        "headers": {},
        "received_at": utcnow(),
        "status": "received",
        "attempts": 0,
    }
    path = db.engine.url.database if db.engine.dialect.name == "sqlite" else None
    own = sa.orm.Session(bind=db.engine)
    try:
        for session in (own, db.session):
            with pytest.raises(sa.exc.IntegrityError):
                hot_write(session, statement, bad)
            if path:
                other, gate_free = _gate_probe(path)
                assert gate_free()
                os.close(other)
            session.rollback()
            good = dict(bad, provider="stripe", event_id=f"evt_good_{id(session)}")
            rows, committed = hot_write(session, statement, good)
            assert committed is (session is own)
            assert len(rows) == 1
            if session is own:
                own.execute(sa.delete(WebhookEvent).where(WebhookEvent.id == rows[0][0]))
                own.commit()
            else:
                session.rollback()  # and the gate opens with it
        assert (
            db.session.scalar(
                sa.select(sa.func.count())
                .select_from(WebhookEvent)
                .where(WebhookEvent.event_id == "evt_bad")
            )
            == 0
        )
    finally:
        own.close()


def test_a_dropped_database_connection_answers_503_then_the_retry_is_stored(
    app, live_server, caplog
):
    """PostgreSQL restarted under a pooled connection: the delivery is answered 503 (the
    provider retries), the broken connection leaves the pool, and the retry is stored."""
    with app.app_context():
        engine = _db.engine
        if engine.dialect.name != "postgresql":
            pytest.skip("a server's connection can drop; SQLite's file cannot")
        engine.dispose()
        pooled = engine.raw_connection()  # the pool's only connection
        pid = pooled.driver_connection.info.backend_pid
        pooled.close()
        outside = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
        with outside.begin() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        outside.dispose()
    signed = delivery("stripe", 70)

    def post() -> int:
        return requests.post(
            live_server + signed.path, data=signed.body, headers=signed.headers, timeout=30
        ).status_code

    with caplog.at_level(logging.ERROR, logger="crm.webhooks.views"):
        assert post() == 503
    assert "webhook intake unavailable: OperationalError" in caplog.text
    assert get_queue("webhooks").count == 0
    assert post() == 200
    with app.app_context():
        stored = _db.session.execute(sa.select(WebhookEvent)).scalars().all()
        assert [e.event_id for e in stored] == [json.loads(signed.body)["id"]]
        assert get_queue("webhooks").job_ids == [f"webhook-{stored[0].id}"]
        _db.session.remove()


def test_an_event_stored_while_redis_was_down_is_queued_by_the_sweep(client, db, caplog):
    """Redis down at the intake: the delivery is stored and answered 503, and the sweep
    queues it once it has waited a minute (a fresh one may still have its job on the way;
    one whose job waits on the queue is not queued twice)."""
    from jobs.webhooks import SWEEP_JOB, sweep_webhooks

    handler, stack = counting("twilio_status")
    with stack:
        with mock.patch.object(Pipeline, "execute", side_effect=RedisConnectionError("down")):
            with caplog.at_level(logging.ERROR, logger="crm.webhooks.views"):
                assert delivery("twilio_status", 80).post(client).status_code == 503
        assert "webhook intake unavailable: ConnectionError" in caplog.text
        [lost] = events(db)
        assert lost.status == "received"
        assert get_queue("webhooks").count == 0
        assert sweep_webhooks() == 0  # under a minute old
        assert delivery("twilio_status", 81).post(client).status_code == 200
        db.session.execute(
            sa.update(WebhookEvent).values(received_at=utcnow() - timedelta(minutes=2))
        )
        db.session.commit()
        assert sweep_webhooks() == 1  # the lost one; the other's job is on the queue
        assert sorted(get_queue("webhooks").job_ids) == sorted(
            f"webhook-{e.id}" for e in events(db)
        )
        assert any(j.startswith(f"{SWEEP_JOB}-") for j in scheduled_job_ids())
        run_worker()
        assert [(e.status, e.attempts) for e in events(db)] == [("processed", 1)] * 2
        assert handler.calls == 2
        assert sweep_webhooks() == 0


def scheduled_job_ids() -> list[str]:
    return ScheduledJobRegistry(queue=get_queue("webhooks")).get_job_ids()


# Processing: retries, the dead-letter list, default handlers


@pytest.mark.parametrize("case", CASES)
def test_a_handler_that_fails_twice_then_succeeds_ends_processed(client, db, case):
    handler, stack = counting(case, fail_times=2)
    with stack:
        assert delivery(case).post(client).status_code == 200
        run_worker()
    [event] = events(db)
    assert (event.status, event.attempts) == ("processed", 3)
    assert event.last_error == "RuntimeError: failure 2"
    assert handler.calls == 3
    assert get_queue("webhooks").failed_job_registry.count == 0


@pytest.mark.parametrize("case", CASES)
def test_a_handler_that_always_fails_ends_dead_lettered(client, db, app, monkeypatch, case):
    monkeypatch.setitem(app.config, "WEBHOOK_MAX_RETRIES", 2)
    handler, stack = counting(case, fail_times=99)
    with stack:
        delivery(case).post(client)
        run_worker()
    [event] = events(db)
    assert (event.status, event.attempts) == ("dead", 3)
    assert event.last_error == "RuntimeError: failure 3"
    assert handler.calls == 3
    assert get_queue("webhooks").failed_job_registry.count == 1


def test_a_permanent_error_is_dead_lettered_without_retries(client, db):
    handler, stack = counting("stripe", fail_times=99, error=PermanentHandlerError)
    with stack:
        stripe_delivery().post(client)
        run_worker()
    [event] = events(db)
    assert (event.status, event.attempts, handler.calls) == ("dead", 1, 1)
    assert "PermanentHandlerError" in event.last_error


def test_a_failed_attempt_is_retried_later_with_backoff(client, db, app, monkeypatch):
    monkeypatch.setitem(app.config, "WEBHOOK_RETRY_INTERVALS", [30, 120])
    handler, stack = counting("stripe", fail_times=99)
    with stack:
        stripe_delivery().post(client)
        run_worker()
    [event] = events(db)
    assert (event.status, event.attempts) == ("failed", 1)
    scheduled = ScheduledJobRegistry(queue=get_queue("webhooks"))
    assert scheduled.get_job_ids() == [f"webhook-{event.id}"]
    # Due in 30 s give or take the jitter, not now.
    due = scheduled.get_scheduled_time(f"webhook-{event.id}")
    assert timedelta(seconds=20) < due - utcnow() < timedelta(seconds=40)


def test_retry_intervals_grow_with_jitter(app, monkeypatch):
    monkeypatch.setitem(app.config, "WEBHOOK_RETRY_INTERVALS", None)  # the defaults
    policies = [retry_policy() for _ in range(20)]
    assert {p.max for p in policies} == {5}
    for policy in policies:
        bases = (30, 120, 480, 1920, 7680)
        assert all(
            0.75 * b - 1 <= i <= 1.25 * b + 1 for i, b in zip(policy.intervals, bases, strict=True)
        )
    assert len({tuple(p.intervals) for p in policies}) > 1


def test_an_inbound_message_moves_the_senders_last_contact_forward(client, db, make_contact):
    old = utcnow() - timedelta(days=3)
    ana = make_contact("Ana", phone="+5511987654321", last_contact_at=old)
    other = make_contact("Ben", phone="+14155550000", last_contact_at=old)
    signed = twilio("messages", 1, From="whatsapp:+5511987654321", To="whatsapp:+14155238886")
    assert signed.post(client).status_code == 200
    run_worker()
    [event] = events(db)
    assert db.session.get(Contact, ana.id).last_contact_at == event.received_at
    assert db.session.get(Contact, other.id).last_contact_at == old


def test_a_late_event_never_moves_last_contact_back(client, db, make_contact):
    recent = utcnow() + timedelta(hours=1)
    ana = make_contact("Ana", phone="+14155552671", last_contact_at=recent)
    twilio("messages").post(client)
    run_worker()
    assert events(db)[0].status == "processed"
    assert db.session.get(Contact, ana.id).last_contact_at == recent


@pytest.mark.parametrize("case", ["calendly", "calcom"])
def test_a_booking_moves_the_invitees_last_contact(client, db, make_contact, case):
    ana = make_contact("Ana", email="ana@example.com")
    deleted = make_contact("Old Ana", email="ana@example.com", deleted_at=utcnow())
    delivery(case).post(client)
    run_worker()
    [event] = events(db)
    assert event.status == "processed"
    assert db.session.get(Contact, ana.id).last_contact_at == event.received_at
    assert db.session.get(Contact, deleted.id).last_contact_at is None


def test_a_job_for_an_event_already_processed_does_nothing(client, db):
    from jobs.webhooks import process_webhook

    handler, stack = counting("stripe")
    with stack:
        stripe_delivery().post(client)
        run_worker()
        [event] = events(db)
        process_webhook(event.id)
    assert handler.calls == 1
    assert events(db)[0].attempts == 1


def test_the_retry_of_a_worker_that_died_mid_run_takes_the_event_back(client, db):
    handler, stack = counting("stripe")
    with stack:
        stripe_delivery().post(client)
        [event] = events(db)
        # What a worker killed after claiming leaves behind: the row claimed, no outcome.
        event.status, event.attempts = "processing", 1
        db.session.commit()
        run_worker()
    [event] = events(db)
    assert (event.status, event.attempts, handler.calls) == ("processed", 2, 1)


def test_warming_a_worker_up_changes_nothing(client, db):
    from jobs.webhooks import warm_up

    stripe_delivery().post(client)
    warm_up()
    assert [(e.status, e.attempts) for e in events(db)] == [("received", 0)]


def test_handlers_registered_by_a_domain_replace_the_default(db):
    def mine(event, payload):
        pass

    default = handler_for("stripe", "checkout.session.completed")
    with registered("stripe", "checkout.session.completed", mine):
        assert handler_for("stripe", "checkout.session.completed") is mine
        with pytest.raises(ValueError, match="already registered"):
            register("stripe", "checkout.session.completed")(mine)
    assert handler_for("stripe", "checkout.session.completed") is default


# The signature functions on their own


def test_twilio_signature_matches_twilios_published_example():
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    signatures.verify_twilio(url, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", "12345")
    with pytest.raises(signatures.SignatureError):
        signatures.verify_twilio(
            url, {**params, "Digits": "0"}, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", "12345"
        )


def test_twilio_repeated_parameters_are_sorted_by_value():
    from werkzeug.datastructures import MultiDict

    params = MultiDict([("Body", "hi"), ("MediaUrl", "b"), ("MediaUrl", "a")])
    expected = RequestValidator("t").compute_signature("https://x.test/h", params)
    assert signatures.twilio_signature("https://x.test/h", params, "t") == expected


def test_stripe_and_calendly_refuse_timestamps_far_in_the_future():
    payload = b'{"id": "evt_1"}'
    future = int(time.time()) + 3600
    header = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), "whsec_x", timestamp=future
    )
    with pytest.raises(signatures.SignatureError, match="tolerance"):
        signatures.verify_stripe(payload, header, ["whsec_x"])
    signatures.verify_stripe(payload, header, ["whsec_x"], now=future)
