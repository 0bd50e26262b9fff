"""Admin > Webhooks: the event log and its filters, the payload with secrets hidden, replay of
one or many events (with and without htmx), and the dead-letter list."""

from __future__ import annotations

import json
import re

import pytest
import sqlalchemy as sa

from crm.audit.models import AuditEntry
from crm.database import utcnow
from crm.webhooks.models import WebhookEvent
from jobs import get_queue
from tests.test_webhooks import (  # noqa: F401 - the fixture is used by name
    counting,
    delivery,
    events,
    run_worker,
    stripe_delivery,
    stripe_event,
    webhook_config,
)

URL = "/admin/webhooks/"


def add_event(db, n: int, *, provider="stripe", status="processed", event_type="customer.created"):
    event = WebhookEvent(
        provider=provider,
        event_id=f"evt_{n}",
        kind=event_type,
        event_type=event_type,
        body=json.dumps({"id": f"evt_{n}", "type": event_type}),
        headers={"Content-Type": "application/json"},
        received_at=utcnow(),
        status=status,
        attempts=1 if status != "received" else 0,
    )
    db.session.add(event)
    db.session.commit()
    return event


def row_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="event-(\d+)"', html)]


def dead_event(client, db, app, monkeypatch, case="stripe"):
    """A delivery whose handler failed on every attempt."""
    monkeypatch.setitem(app.config, "WEBHOOK_MAX_RETRIES", 1)
    _, stack = counting(case, fail_times=99)
    with stack:
        assert delivery(case).post(client).status_code == 200
        run_worker()
    [event] = events(db)
    assert event.status == "dead"
    return event


# Access


@pytest.mark.parametrize("role", ["staff", "coach"])
def test_only_admins_see_the_webhooks_pages(client, db, login_as, role):
    event = add_event(db, 1)
    login_as(role)
    assert client.get(URL).status_code == 403
    assert client.get(f"{URL}{event.id}").status_code == 403
    assert client.form(f"{URL}{event.id}/replay").status_code == 403
    assert client.form(f"{URL}replay", {"ids": str(event.id)}).status_code == 403


def test_signed_out_visitors_are_sent_to_sign_in(client, db):
    response = client.get(URL)
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


# The event log


def test_the_log_lists_newest_first_under_admin(client, db, login_as):
    login_as("admin")
    first, second = add_event(db, 1), add_event(db, 2)
    response = client.get(URL)
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert row_ids(body) == [second.id, first.id]
    assert 'href="/admin/users"' in body
    assert re.search(r'<a href="/admin/users"\s+aria-current="page">Admin</a>', body)


@pytest.mark.parametrize("htmx", [False, True])
def test_filters_by_provider_status_and_type(client, db, login_as, htmx):
    login_as("admin")
    stripe_ok = add_event(db, 1)
    stripe_dead = add_event(db, 2, status="dead")
    twilio = add_event(db, 3, provider="twilio", event_type="status.delivered")
    refund = add_event(db, 4, event_type="charge.refunded", status="failed")
    get = client.htmx_get if htmx else client.get
    cases = {
        "provider=twilio": [twilio.id],
        "provider=stripe&status=dead": [stripe_dead.id],
        "type=charge.refunded&status=failed": [refund.id],
        "provider=stripe": [refund.id, stripe_dead.id, stripe_ok.id],
        "provider=nope": [refund.id, twilio.id, stripe_dead.id, stripe_ok.id],
    }
    for query, expected in cases.items():
        response = get(f"{URL}?{query}")
        body = response.get_data(as_text=True)
        assert row_ids(body) == expected, query
        assert ("<html" in body) is not htmx
        assert response.headers["Vary"] == "HX-Request" or "HX-Request" in response.headers["Vary"]


@pytest.mark.parametrize("htmx", [False, True])
def test_older_events_are_a_page_away(client, db, login_as, htmx):
    login_as("admin")
    made = [add_event(db, n, status="dead") for n in range(55)]
    first = client.get(f"{URL}?status=dead").get_data(as_text=True)
    assert row_ids(first) == [e.id for e in reversed(made)][:50]
    link = re.search(r'<a href="([^"]+)" hx-get="[^"]+"[^>]*>Older events</a>', first)
    assert link, "no link to older events"
    url = link.group(1).replace("&amp;", "&")
    assert "status=dead" in url
    second = (client.htmx_get if htmx else client.get)(url).get_data(as_text=True)
    assert row_ids(second) == [e.id for e in reversed(made)][50:]
    assert "Older events" not in second


def test_the_dead_letter_list_is_linked_with_its_count(client, db, login_as):
    login_as("admin")
    add_event(db, 1, status="dead")
    add_event(db, 2, status="dead")
    add_event(db, 3)
    body = client.get(URL).get_data(as_text=True)
    assert re.search(r'href="/admin/webhooks/\?status=dead">Dead letters \(2\)', body)


def test_the_event_page_hides_secrets_and_card_numbers(client, db, login_as):
    login_as("admin")
    event = stripe_event(
        9,
        client_secret="cs_secret_ABCDEF",
        metadata={"api_key": "sk_live_abc123", "note": "keep me"},
        card="4242 4242 4242 4242",
    )
    stripe_delivery(event).post(client)
    [stored] = events(db)
    stored.headers = {**stored.headers, "Authorization": "Bearer abc.def"}
    db.session.commit()
    body = client.get(f"{URL}{stored.id}").get_data(as_text=True)
    for secret in ("cs_secret_ABCDEF", "sk_live_abc123", "4242 4242 4242 4242", "abc.def"):
        assert secret not in body
    assert "keep me" in body
    assert "[redacted]" in body
    assert "evt_test_000009" in body


def test_a_form_payload_is_shown_field_by_field(client, db, login_as):
    login_as("admin")
    delivery("twilio_messages").post(client)
    [stored] = events(db)
    body = client.get(f"{URL}{stored.id}").get_data(as_text=True)
    assert "From = +14155552671" in body
    assert "X-Twilio-Signature" not in body


def test_an_unknown_event_is_404(client, db, login_as):
    login_as("admin")
    assert client.get(f"{URL}999999").status_code == 404


# Replay


@pytest.mark.parametrize("htmx", [False, True])
def test_replaying_a_dead_event_processes_it(client, db, app, monkeypatch, login_as, htmx):
    event = dead_event(client, db, app, monkeypatch)
    assert get_queue("webhooks").failed_job_registry.count == 1
    admin = login_as("admin")
    page = client.get(f"{URL}{event.id}").get_data(as_text=True)
    assert f'action="/admin/webhooks/{event.id}/replay"' in page
    assert f'hx-post="/admin/webhooks/{event.id}/replay"' in page

    response = client.form(f"{URL}{event.id}/replay", htmx=htmx)
    if htmx:
        body = response.get_data(as_text=True)
        assert response.status_code == 200
        assert "<html" not in body
        assert 'id="event-status"' in body
        assert "Replaying 1 event." in body
        assert ">received<" in body
    else:
        assert response.status_code == 303
        assert response.headers["Location"] == f"/admin/webhooks/{event.id}"
        assert "Replaying 1 event." in client.get(response.headers["Location"]).get_data(True)
    [replayed] = events(db)
    assert (replayed.status, replayed.attempts, replayed.last_error) == ("received", 0, None)
    assert get_queue("webhooks").count == 1
    assert get_queue("webhooks").failed_job_registry.count == 0

    handler, stack = counting("stripe")  # the provider's side is fixed now
    with stack:
        run_worker()
    [done] = events(db)
    assert (done.status, done.attempts) == ("processed", 1)
    assert handler.calls == 1
    [audit] = db.session.execute(
        sa.select(AuditEntry).filter_by(action="webhook.replayed", object_id=event.id)
    ).scalars()
    assert audit.actor_id == admin.id
    assert audit.changes["status"] == ["dead", "received"]


@pytest.mark.parametrize("htmx", [False, True])
def test_replaying_selected_events(client, db, app, monkeypatch, login_as, htmx):
    dead = dead_event(client, db, app, monkeypatch)
    done = add_event(db, 2)
    waiting = add_event(db, 3, status="received")
    get_queue("webhooks").enqueue(
        "jobs.webhooks.process_webhook", waiting.id, job_id=f"webhook-{waiting.id}"
    )
    untouched = add_event(db, 4, status="dead")
    login_as("admin")
    page = client.get(f"{URL}?provider=stripe").get_data(as_text=True)
    assert 'action="/admin/webhooks/replay"' in page and 'name="ids"' in page

    data = {"ids": [str(dead.id), str(done.id), str(waiting.id)], "provider": "stripe"}
    response = client.form(f"{URL}replay", data, htmx=htmx)
    if htmx:
        body = response.get_data(as_text=True)
        assert response.status_code == 200 and "<html" not in body
        assert "Replaying 2 events. 1 skipped" in body
        assert set(row_ids(body)) == {dead.id, done.id, waiting.id, untouched.id}
    else:
        assert response.status_code == 303
        assert response.headers["Location"] == "/admin/webhooks/?provider=stripe"
    states = {e.id: (e.status, e.attempts) for e in events(db)}
    assert states[dead.id] == ("received", 0)
    assert states[done.id] == ("received", 0)
    assert states[waiting.id] == ("received", 0)
    assert states[untouched.id] == ("dead", 1)
    # The waiting event keeps its one job; the two replayed ones get theirs.
    assert get_queue("webhooks").count == 3

    handler, stack = counting("stripe")
    with stack:
        run_worker()
    states = {e.id: e.status for e in events(db)}
    assert states[dead.id] == "processed"
    # No handler for customer.created: ignored, as at intake.
    assert states[done.id] == states[waiting.id] == "ignored"


def test_an_event_being_processed_cannot_be_replayed(client, db, login_as):
    login_as("admin")
    event = add_event(db, 1, status="failed")
    job = get_queue("webhooks").enqueue(
        "jobs.webhooks.process_webhook", event.id, job_id=f"webhook-{event.id}"
    )
    job.set_status("started")
    page = client.get(f"{URL}{event.id}").get_data(as_text=True)
    assert "cannot be replayed now" in page
    assert "<dt>Job</dt><dd>started</dd>" in page
    response = client.form(f"{URL}{event.id}/replay", htmx=True)
    assert "1 skipped" in response.get_data(as_text=True)
    assert events(db)[0].status == "failed"
