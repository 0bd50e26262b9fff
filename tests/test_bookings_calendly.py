"""Calendly onto bookings, against the Calendly fake: signed deliveries through
/webhooks/calendly processed by a real worker, the OAuth connection and its token refresh
(serialized across two worker processes), "Sync now", available times and canceling."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import sqlalchemy as sa
from cryptography.fernet import Fernet
from rq import SimpleWorker, Worker

from crm.bookings import calendly, tokens
from crm.bookings.models import (
    Booking,
    BookingEvent,
    BookingStep,
    CalendlyConnection,
    CoachProfile,
    Service,
)
from crm.bookings.services import BookingError
from crm.contacts.models import Contact
from crm.database import utcnow
from crm.extensions import db as _db
from crm.redis_client import get_redis
from crm.users.models import User
from crm.webhooks.models import WebhookEvent
from jobs import get_queue

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def immediate_retries(app, monkeypatch):
    monkeypatch.setitem(app.config, "WEBHOOK_RETRY_INTERVALS", [0])


@pytest.fixture(params=[False, True], ids=["plain", "htmx"])
def htmx(request) -> bool:
    """Run a test as a plain form post and as htmx."""
    return request.param


def run_worker(*queues: str) -> None:
    SimpleWorker([get_queue(q) for q in queues or ("webhooks",)], connection=get_redis()).work(
        burst=True
    )


def connect_coach(db, user: User, fake, *, expires_in: int = 7200) -> CalendlyConnection:
    """What a finished OAuth round trip leaves: encrypted tokens, the account's URIs."""
    granted = fake.issue_token()
    db.session.add(CoachProfile(user_id=user.id, calendly_user_uri=fake.user_uri))
    connection = CalendlyConnection(
        coach_id=user.id,
        user_uri=fake.user_uri,
        organization_uri=fake.organization_uri,
        access_token=tokens.encrypt(granted["access_token"]),
        refresh_token=tokens.encrypt(granted["refresh_token"]),
        expires_at=utcnow() + timedelta(seconds=expires_in),
        state="connected",
    )
    db.session.add(connection)
    db.session.commit()
    return connection


@pytest.fixture
def coach(db, make_user, calendly_fake):
    """A coach whose Calendly account is the fake's, connected."""
    user = make_user("coach", name="Casey Coach", timezone="Europe/London")
    connect_coach(db, user, calendly_fake)
    return user


def deliver(client, fake, event: str, payload: dict, *, run: bool = True):
    body, headers = fake.webhook(event, payload)
    response = client.post("/webhooks/calendly", data=body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    if run:
        run_worker()
    return response


def bookings(db) -> list[Booking]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(Booking).order_by(Booking.id)))


def kinds(db, booking: Booking) -> list[str]:
    query = sa.select(BookingEvent.kind).where(BookingEvent.booking_id == booking.id)
    return list(db.session.scalars(query.order_by(BookingEvent.id)))


def webhook_events(db) -> list[WebhookEvent]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(WebhookEvent).order_by(WebhookEvent.id)))


def refresh_grants(fake) -> int:
    return sum(1 for r in fake.calls("oauth_token") if r.form.get("grant_type") == "refresh_token")


def event_uuid(event: dict) -> str:
    return event["uri"].rsplit("/", 1)[1]


def start_at(days: int = 2, hour: int = 10) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(
        hour=hour, minute=0, second=0, microsecond=0
    )


def canceled(payload: dict, *, reason="", by="Ana Silva", rescheduled=False, new=None) -> dict:
    """The invitee.canceled payload for an invitee the fake rendered active."""
    body = copy.deepcopy(payload)
    cancellation = {
        "canceled_by": by,
        "canceler_type": "invitee",
        "created_at": "2030-01-01T00:00:00.000000Z",
        "reason": reason,
    }
    body.update(
        status="canceled",
        canceled=True,
        cancellation=cancellation,
        rescheduled=rescheduled,
        new_invitee=new,
    )
    body["scheduled_event"].update(status="canceled", cancellation=cancellation)
    return body


# --- webhooks ---------------------------------------------------------------------


def test_invitee_created_books_a_session_with_contact_coach_and_service(
    client, db, coach, calendly_fake
):
    event = calendly_fake.add_scheduled_event(start_time=start_at(), event_type=1)
    payload = calendly_fake.invitee_payload(event_uuid(event))
    payload.update(
        timezone="America/Sao_Paulo",
        text_reminder_number="+55 11 98765-4321",
        questions_and_answers=[{"question": "Goal", "answer": "Career change", "position": 0}],
    )
    deliver(client, calendly_fake, "invitee.created", payload)

    [booking] = bookings(db)
    assert (booking.source, booking.status, booking.coach_id) == ("calendly", "scheduled", coach.id)
    assert booking.external_id == payload["uri"]
    assert booking.external_event_id == event["uri"]
    assert booking.start_at == start_at() and booking.end_at == start_at() + timedelta(minutes=15)
    assert booking.timezone == "America/Sao_Paulo"
    assert booking.meeting_url == event["location"]["join_url"]
    assert booking.cancel_url == payload["cancel_url"]
    assert booking.reschedule_url == payload["reschedule_url"]
    assert booking.questions == [{"question": "Goal", "answer": "Career change"}]
    contact = booking.contact
    assert (contact.email, contact.phone, contact.name) == (
        "ana@example.com",
        "+5511987654321",
        "Ana Silva",
    )
    service = booking.service
    assert (service.name, service.duration_minutes) == ("Discovery Call", 15)
    assert service.calendly_event_type_uri == event["event_type"]
    assert kinds(db, booking) == ["booked"]
    [stored] = webhook_events(db)
    assert stored.status == "processed"
    assert contact.last_contact_at == stored.received_at  # in touch when they booked


def test_an_existing_contact_is_linked_by_email(client, db, coach, calendly_fake, make_contact):
    ana = make_contact("Ana S.", email="ana@example.com")
    event = calendly_fake.add_scheduled_event(start_time=start_at())
    deliver(
        client, calendly_fake, "invitee.created", calendly_fake.invitee_payload(event_uuid(event))
    )
    [booking] = bookings(db)
    assert booking.contact_id == ana.id
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Contact)) == 1


def test_invitee_canceled_cancels_the_booking_once(client, db, coach, calendly_fake):
    event = calendly_fake.add_scheduled_event(start_time=start_at())
    payload = calendly_fake.invitee_payload(event_uuid(event))
    deliver(client, calendly_fake, "invitee.created", payload)
    cancel = canceled(payload, reason="Feeling unwell", by="Ana Silva")
    deliver(client, calendly_fake, "invitee.canceled", cancel)
    body, headers = calendly_fake.webhook("invitee.canceled", cancel)  # a replay, newly signed
    client.post("/webhooks/calendly", data=body, headers=headers)
    run_worker()

    [booking] = bookings(db)
    assert booking.status == "canceled"
    assert (booking.cancellation_reason, booking.canceled_by) == ("Feeling unwell", "Ana Silva")
    assert kinds(db, booking) == ["booked", "canceled"]


def test_a_cancellation_before_its_booking_keeps_it_canceled(client, db, coach, calendly_fake):
    event = calendly_fake.add_scheduled_event(start_time=start_at())
    payload = calendly_fake.invitee_payload(event_uuid(event))
    deliver(client, calendly_fake, "invitee.canceled", canceled(payload))
    deliver(client, calendly_fake, "invitee.created", payload)
    [booking] = bookings(db)
    assert booking.status == "canceled"
    assert kinds(db, booking) == ["booked", "canceled"]


@pytest.mark.parametrize("order", ["canceled first", "created first"])
def test_a_reschedule_is_one_rescheduled_booking(client, db, coach, calendly_fake, order):
    old_event = calendly_fake.add_scheduled_event(start_time=start_at(2))
    old = calendly_fake.invitee_payload(event_uuid(old_event))
    deliver(client, calendly_fake, "invitee.created", old)

    new_event = calendly_fake.add_scheduled_event(start_time=start_at(3, hour=15))
    new = calendly_fake.invitee_payload(event_uuid(new_event))
    new["old_invitee"] = old["uri"]
    cancel_half = canceled(old, rescheduled=True, new=new["uri"])
    halves = [("invitee.canceled", cancel_half), ("invitee.created", new)]
    if order == "created first":
        halves.reverse()
    for name, payload in halves:
        deliver(client, calendly_fake, name, payload)

    [booking] = bookings(db)
    assert booking.status == "rescheduled"
    assert booking.start_at == start_at(3, hour=15)
    assert booking.external_id == new["uri"]
    assert booking.external_event_id == new_event["uri"]
    assert kinds(db, booking) == ["booked", "rescheduled"]
    assert [e.status for e in webhook_events(db)] == ["processed"] * 3


def test_a_duplicate_delivery_makes_one_booking(client, db, coach, calendly_fake):
    event = calendly_fake.add_scheduled_event(start_time=start_at())
    body, headers = calendly_fake.webhook(
        "invitee.created", calendly_fake.invitee_payload(event_uuid(event))
    )
    for _ in range(2):
        assert client.post("/webhooks/calendly", data=body, headers=headers).status_code == 200
    run_worker()
    [booking] = bookings(db)
    assert kinds(db, booking) == ["booked"]


def _without(path: str):
    def strip(payload: dict) -> dict:
        *parents, last = path.split(".")
        target = payload
        for key in parents:
            target = target[key]
        target.pop(last)
        return payload

    return strip


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_without("scheduled_event"), "the invitee has no scheduled_event"),
        (_without("scheduled_event.start_time"), "the scheduled event has no start_time"),
        (_without("uri"), "the invitee has no uri"),
        (
            lambda p: {**p, "email": None, "text_reminder_number": None},
            "the invitee has neither an email address nor a phone number",
        ),
    ],
    ids=["no scheduled_event", "no start_time", "no invitee uri", "no email or phone"],
)
def test_a_payload_missing_fields_is_dead_lettered_with_nothing_applied(
    client, db, coach, calendly_fake, change, reason
):
    event = calendly_fake.add_scheduled_event(start_time=start_at())
    payload = change(calendly_fake.invitee_payload(event_uuid(event)))
    deliver(client, calendly_fake, "invitee.created", payload)
    [stored] = webhook_events(db)
    assert stored.status == "dead"
    assert reason in stored.last_error
    assert bookings(db) == []
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Contact)) == 0
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Service)) == 0


def test_a_booking_for_an_unknown_coach_is_kept_unassigned(client, db, calendly_fake):
    event = calendly_fake.add_scheduled_event(start_time=start_at())
    payload = calendly_fake.invitee_payload(event_uuid(event))
    payload["scheduled_event"]["event_memberships"] = [
        {
            "user": "https://api.calendly.com/users/SOMEONEELSE",
            "user_email": "stranger@example.org",
            "user_name": "Sam Stranger",
        }
    ]
    deliver(client, calendly_fake, "invitee.created", payload)
    [booking] = bookings(db)
    assert booking.coach_id is None
    assert booking.external_host == "Sam Stranger <stranger@example.org>"
    assert booking.status == "scheduled"


def test_a_coach_is_found_by_email_when_the_uri_is_unknown(client, db, make_user, calendly_fake):
    known = make_user("coach", email=calendly_fake.user_email)
    event = calendly_fake.add_scheduled_event(start_time=start_at())
    deliver(
        client, calendly_fake, "invitee.created", calendly_fake.invitee_payload(event_uuid(event))
    )
    assert bookings(db)[0].coach_id == known.id


# --- OAuth connection ---------------------------------------------------------------


def test_a_coach_connects_calendly_through_oauth(client, db, login_as, calendly_fake):
    me = login_as("coach", name="Casey Coach")
    response = client.form(f"/bookings/coaches/{me.id}/calendly/connect")
    assert response.status_code == 303
    authorize = response.headers["Location"]
    assert authorize.startswith(calendly_fake.auth_base + "/oauth/authorize?")
    query = parse_qs(urlsplit(authorize).query)
    assert query["client_id"] == [calendly_fake.client_id]
    assert query["redirect_uri"] == ["http://localhost/bookings/calendly/callback"]

    with requests.get(authorize, allow_redirects=False, timeout=5) as approved:
        assert approved.status_code == 302
        back = urlsplit(approved.headers["Location"])
    assert parse_qs(back.query)["state"] == query["state"]
    response = client.get(f"{back.path}?{back.query}")
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/bookings/coaches/{me.id}")

    db.session.expire_all()
    connection = calendly.connection_for(me.id)
    assert connection.state == "connected" and connection.last_error is None
    assert connection.user_uri == calendly_fake.user_uri
    assert connection.organization_uri == calendly_fake.organization_uri
    assert connection.expires_at > utcnow() + timedelta(hours=1)
    [access] = calendly_fake.access_tokens
    [refresh] = calendly_fake.refresh_tokens
    raw = db.session.execute(
        sa.text("SELECT access_token, refresh_token FROM calendly_connections WHERE id = :id"),
        {"id": connection.id},
    ).one()
    assert access not in raw.access_token and refresh not in raw.refresh_token
    assert tokens.decrypt(raw.access_token) == access
    assert tokens.decrypt(raw.refresh_token) == refresh
    profile = db.session.scalars(sa.select(CoachProfile).where(CoachProfile.user_id == me.id)).one()
    assert profile.calendly_user_uri == calendly_fake.user_uri

    [subscription] = calendly_fake.subscriptions.values()
    assert subscription["callback_url"] == "http://localhost/webhooks/calendly"
    assert subscription["events"] == ["invitee.created", "invitee.canceled"]
    assert subscription["scope"] == "user" and subscription["user"] == calendly_fake.user_uri
    assert subscription["signing_key"] == calendly_fake.signing_key
    assert connection.subscription_uri == subscription["uri"]
    # The event types arrive with the connection.
    names = sorted(s.name for s in calendly.calendly_services(me))
    assert names == ["30 Minute Meeting", "Discovery Call"]
    page = client.get(f"/bookings/coaches/{me.id}").get_data(as_text=True)
    assert "Calendly is connected." in page and "Disconnect" in page


def test_an_existing_subscription_is_kept(client, db, login_as, calendly_fake, app):
    me = login_as("coach")
    calendly_fake.subscriptions["existing"] = {
        "uuid": "existing",
        "uri": f"{calendly_fake.api_base}/webhook_subscriptions/existing",
        "callback_url": "http://localhost/webhooks/calendly",
        "organization": calendly_fake.organization_uri,
        "scope": "user",
        "user": calendly_fake.user_uri,
        "events": ["invitee.created", "invitee.canceled"],
        "signing_key": None,
    }
    with app.test_request_context():
        code = calendly_fake.authorization_code(calendly.callback_url())
        calendly.connect(me, code, calendly.callback_url())
    assert calendly.connection_for(me.id).subscription_uri.endswith("/existing")
    assert len(calendly_fake.subscriptions) == 1


def test_a_callback_with_a_wrong_state_is_refused(client, db, login_as, calendly_fake):
    me = login_as("coach")
    client.form(f"/bookings/coaches/{me.id}/calendly/connect")
    code = calendly_fake.authorization_code("http://localhost/bookings/calendly/callback")
    response = client.get(f"/bookings/calendly/callback?code={code}&state=forged")
    assert response.status_code == 302
    assert calendly.connection_for(me.id) is None
    assert calendly_fake.calls("oauth_token") == []
    page = client.get(f"/bookings/coaches/{me.id}").get_data(as_text=True)
    assert "expired or is not yours" in page


def test_only_the_coach_connects_their_own_calendly(client, db, login_as, make_user, calendly_fake):
    other = make_user("coach")
    login_as("staff")
    assert client.form(f"/bookings/coaches/{other.id}/calendly/connect").status_code == 403
    login_as("coach")
    assert client.form(f"/bookings/coaches/{other.id}/calendly/connect").status_code == 404


def test_disconnect_deletes_the_subscription_and_forgets_the_tokens(
    client, db, login_as, calendly_fake, htmx
):
    me = login_as("coach")
    connection = connect_coach(db, me, calendly_fake)
    with client.application.test_request_context():
        token = tokens.decrypt(connection.access_token)
        connection.subscription_uri = calendly.api.api_post(
            token,
            "/webhook_subscriptions",
            {
                "url": "http://localhost/webhooks/calendly",
                "events": ["invitee.created"],
                "organization": calendly_fake.organization_uri,
                "user": calendly_fake.user_uri,
                "scope": "user",
            },
        )["resource"]["uri"]
    db.session.commit()
    response = client.form(f"/bookings/coaches/{me.id}/calendly/disconnect", htmx=htmx)
    if htmx:
        assert response.status_code == 200
        assert 'id="coach-calendly"' in response.get_data(as_text=True)
        assert "<html" not in response.get_data(as_text=True)
    else:
        assert response.status_code == 303
    db.session.expire_all()
    connection = calendly.connection_for(me.id)
    assert connection.state == "disconnected"
    assert connection.access_token is None and connection.refresh_token is None
    assert calendly_fake.subscriptions == {}


# --- tokens -------------------------------------------------------------------------


def test_a_token_expiring_within_the_margin_is_refreshed_first(client, db, login_as, calendly_fake):
    me = login_as("coach")
    connection = connect_coach(db, me, calendly_fake, expires_in=60)
    old = tokens.decrypt(connection.access_token)
    response = client.form(f"/bookings/coaches/{me.id}/calendly/event-types")
    assert response.status_code == 303
    assert refresh_grants(calendly_fake) == 1
    db.session.expire_all()
    connection = calendly.connection_for(me.id)
    new = tokens.decrypt(connection.access_token)
    assert new != old and connection.expires_at > utcnow() + timedelta(hours=1)
    [listing] = calendly_fake.calls("event_types")
    assert listing.headers["Authorization"] == f"Bearer {new}"


def test_a_token_refused_with_401_is_refreshed_once_and_the_call_retried(
    client, db, login_as, calendly_fake
):
    me = login_as("coach")
    connect_coach(db, me, calendly_fake)
    calendly_fake.expire_access_tokens()  # Calendly revoked it early; our clock says it's fine
    response = client.form(f"/bookings/coaches/{me.id}/calendly/event-types")
    assert response.status_code == 303
    assert refresh_grants(calendly_fake) == 1
    statuses = [c.endpoint for c in calendly_fake.calls()]
    assert statuses == ["event_types", "oauth_token", "event_types"]
    assert len(calendly.calendly_services(me)) == 2


def test_a_refused_refresh_asks_for_reconnection_on_coach_and_health_pages(
    client, db, login_as, make_user, calendly_fake
):
    me = make_user("coach", name="Casey Coach")
    connection = connect_coach(db, me, calendly_fake, expires_in=0)
    connection.refresh_token = tokens.encrypt("a-refresh-token-already-used")
    db.session.commit()
    with pytest.raises(BookingError, match="reconnect Calendly"):
        calendly.with_token(me, lambda token: None)
    db.session.expire_all()
    connection = calendly.connection_for(me.id)
    assert connection.state == "needs_reconnect"
    assert "invalid" in connection.last_error
    # Further calls do not try the dead refresh token again.
    with pytest.raises(BookingError):
        calendly.with_token(me, lambda token: None)
    assert refresh_grants(calendly_fake) == 1

    with client.session_transaction() as session:
        session["_user_id"] = str(me.id)
        session["_fresh"] = True
    page = client.get(f"/bookings/coaches/{me.id}").get_data(as_text=True)
    assert "Needs reconnection" in page and "Reconnect Calendly" in page
    login_as("staff")
    coaches = client.get("/bookings/coaches").get_data(as_text=True)
    assert "needs reconnection" in coaches
    health = client.get("/integrations/").get_data(as_text=True)
    card = health.split('id="card-calendly"')[1].split("</article>")[0]
    assert "Degraded" in card and "Casey Coach must reconnect Calendly" in card


@pytest.fixture
def committed_coach(app, calendly_fake, monkeypatch):
    """A connected coach committed for real (worker processes see only committed rows),
    deleted afterwards; the token key is one the workers are given too."""
    key = Fernet.generate_key().decode()
    monkeypatch.setitem(app.config, "TOKEN_ENCRYPTION_KEY", key)
    with app.app_context():
        user = User(email="racing.coach@example.com", name="Racing Coach", role="coach")
        _db.session.add(user)
        _db.session.flush()
        connect_coach(_db, user, calendly_fake, expires_in=0)  # commits
        yield user.id, key
        _db.session.rollback()
        _db.session.execute(
            sa.delete(CalendlyConnection).where(CalendlyConnection.coach_id == user.id)
        )
        _db.session.execute(sa.delete(CoachProfile).where(CoachProfile.user_id == user.id))
        _db.session.execute(sa.delete(User).where(User.id == user.id))
        _db.session.commit()


def test_two_worker_processes_refresh_the_token_once(
    app, committed_coach, calendly_fake, database_url, redis_url
):
    from jobs.calendly import sync_calendly

    coach_id, key = committed_coach
    start, end = utcnow(), utcnow() + timedelta(days=7)
    queue = get_queue("sync")
    # The first refresh takes a while, so the other worker's job arrives while it runs.
    calendly_fake.delay_next(3.0, endpoint="oauth_token")
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    env.update({k: v for k, v in calendly_fake.config().items() if isinstance(v, str)})
    env["TOKEN_ENCRYPTION_KEY"] = key
    cmd = [sys.executable, "-m", "flask", "--app", "app", "worker", "sync"]
    workers = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        # Both workers listen before the jobs exist, so each takes one at once: however
        # slowly a process starts on a loaded machine, the two refreshes do race.
        deadline = time.monotonic() + 120
        while [w.get_state() for w in Worker.all(queue=queue)] != ["idle", "idle"]:
            assert time.monotonic() < deadline, "the workers did not start"
            assert all(w.poll() is None for w in workers), "a worker exited"
            time.sleep(0.1)
        jobs = [
            queue.enqueue(
                sync_calendly, coach_id, start.isoformat(), end.isoformat(), job_id=f"race-{n}"
            )
            for n in (1, 2)
        ]
        deadline = time.monotonic() + 120
        while not all(job.get_status(refresh=True) in ("finished", "failed") for job in jobs):
            assert time.monotonic() < deadline, "the jobs did not finish"
            time.sleep(0.1)
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)  # warm shutdown: the jobs are done
        for worker in workers:
            try:
                outputs.append(worker.communicate(timeout=30)[0].decode())
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                outputs.append(worker.communicate()[0].decode())
    assert [job.get_status() for job in jobs] == ["finished", "finished"], outputs
    assert all("Job OK" in out for out in outputs), outputs  # each process ran one job

    assert refresh_grants(calendly_fake) == 1, outputs
    with app.app_context():
        connection = calendly.connection_for(coach_id)
        assert connection.state == "connected" and connection.last_error is None
        assert connection.last_synced_at is not None
        fresh = tokens.decrypt(connection.access_token)
    listings = calendly_fake.calls("scheduled_events")
    assert len(listings) == 2
    assert {c.headers["Authorization"] for c in listings} == {f"Bearer {fresh}"}


# --- sync, event types, availability, cancel ------------------------------------------


def test_sync_now_pulls_every_page_of_events(client, db, login_as, calendly_fake, app, monkeypatch):
    monkeypatch.setitem(app.config, "CALENDLY_PAGE_SIZE", 2)
    me = login_as("coach")
    connect_coach(db, me, calendly_fake)
    for hour in (9, 11, 13, 15):
        calendly_fake.add_scheduled_event(start_time=start_at(1, hour=hour))
    gone = calendly_fake.add_scheduled_event(
        start_time=start_at(2), invitees=[("ben@example.com", "Ben Bell")]
    )
    with calendly_fake.lock:
        calendly_fake.events[event_uuid(gone)].update(status="canceled")
        calendly_fake.events[event_uuid(gone)]["invitees"][0]["status"] = "canceled"
        calendly_fake.events[event_uuid(gone)]["cancellation"] = {
            "canceled_by": "Ben Bell",
            "reason": "Travelling",
            "canceler_type": "invitee",
            "created_at": "2030-01-01T00:00:00.000000Z",
        }
    day = datetime.now(UTC).date()
    response = client.form(
        f"/bookings/coaches/{me.id}/calendly/sync",
        {"start": day.isoformat(), "end": (day + timedelta(days=7)).isoformat()},
    )
    assert response.status_code == 303
    assert get_queue("sync").count == 1
    run_worker("sync")

    found = bookings(db)
    assert len(found) == 5
    assert sorted(b.status for b in found) == ["canceled"] + ["scheduled"] * 4
    assert next(b for b in found if b.status == "canceled").cancellation_reason == "Travelling"
    # Found by a sync, not just booked: reminders are planned, nobody is told again.
    steps = set(
        db.session.scalars(sa.select(BookingStep.step).where(BookingStep.status == "scheduled"))
    )
    assert "second_reminder" in steps and steps <= {"first_reminder", "second_reminder"}
    pages = calendly_fake.calls("scheduled_events")
    assert len(pages) == 3 and "page_token" in pages[-1].query
    assert len(calendly_fake.calls("invitees")) == 5
    db.session.expire_all()
    assert calendly.connection_for(me.id).last_synced_at is not None

    # Again: nothing new, nothing doubled.
    client.form(
        f"/bookings/coaches/{me.id}/calendly/sync",
        {"start": day.isoformat(), "end": (day + timedelta(days=7)).isoformat()},
    )
    run_worker("sync")
    assert len(bookings(db)) == 5


def test_sync_now_as_htmx_answers_with_the_sync_block(client, db, login_as, calendly_fake):
    me = login_as("coach")
    connect_coach(db, me, calendly_fake)
    response = client.form(
        f"/bookings/coaches/{me.id}/calendly/sync",
        {"start": "2030-01-01", "end": "2030-01-31"},
        htmx=True,
    )
    body = response.get_data(as_text=True)
    assert response.status_code == 200 and 'id="coach-sync"' in body and "<html" not in body
    assert "Sync queued" in body and 'hx-trigger="every 2s"' in body
    again = client.form(
        f"/bookings/coaches/{me.id}/calendly/sync",
        {"start": "2030-01-01", "end": "2030-01-31"},
        htmx=True,
    )
    assert again.status_code == 422 and "already running" in again.get_data(as_text=True)
    run_worker("sync")
    polled = client.htmx_get(f"/bookings/coaches/{me.id}/calendly/sync")
    assert polled.status_code == 286  # done: htmx stops polling
    assert "every 2s" not in polled.get_data(as_text=True)
    bad = client.form(
        f"/bookings/coaches/{me.id}/calendly/sync",
        {"start": "2030-02-01", "end": "2030-01-01"},
        htmx=True,
    )
    assert bad.status_code == 422 and "must not be before" in bad.get_data(as_text=True)


def test_refresh_event_types(client, db, login_as, calendly_fake, htmx):
    me = login_as("coach")
    connect_coach(db, me, calendly_fake)
    response = client.form(f"/bookings/coaches/{me.id}/calendly/event-types", htmx=htmx)
    if htmx:
        body = response.get_data(as_text=True)
        assert 'id="coach-event-types"' in body and "<html" not in body
        assert "30 Minute Meeting" in body and "2 event types" in body
    else:
        assert response.status_code == 303
    services = calendly.calendly_services(me)
    assert [(s.name, s.duration_minutes, s.active) for s in services] == [
        ("30 Minute Meeting", 30, True),
        ("Discovery Call", 15, True),
    ]
    assert services[0].calendly_scheduling_url == "https://calendly.com/casey-coach/30min"
    calendly_fake.kinds.pop()  # the coach deleted an event type
    client.form(f"/bookings/coaches/{me.id}/calendly/event-types")
    db.session.expire_all()
    assert [s.active for s in calendly.calendly_services(me)] == [True, False]


def test_available_times_are_cached_and_a_webhook_invalidates_them(
    client, db, login_as, calendly_fake
):
    me = login_as("coach")
    connect_coach(db, me, calendly_fake)
    client.form(f"/bookings/coaches/{me.id}/calendly/event-types")
    tomorrow = start_at(1, hour=15)
    calendly_fake.available_slots = [tomorrow, tomorrow + timedelta(hours=2)]

    page = client.get(f"/bookings/coaches/{me.id}").get_data(as_text=True)
    assert 'hx-trigger="load"' in page and "Show available times" in page
    fragment = client.htmx_get(f"/bookings/coaches/{me.id}/availability")
    body = fragment.get_data(as_text=True)
    assert fragment.status_code == 200 and "<html" not in body
    assert tomorrow.isoformat() in body and "book</a>" in body
    assert len(calendly_fake.calls("available_times")) == 2  # one per event type

    full = client.get(f"/bookings/coaches/{me.id}/availability").get_data(as_text=True)
    assert "<html" in full and tomorrow.isoformat() in full
    assert len(calendly_fake.calls("available_times")) == 2  # served from the cache

    calendly_fake.available_slots = [tomorrow + timedelta(hours=2)]  # someone booked 15:00
    event = calendly_fake.add_scheduled_event(start_time=tomorrow)
    body, headers = calendly_fake.webhook(
        "invitee.created", calendly_fake.invitee_payload(event_uuid(event))
    )
    client.post("/webhooks/calendly", data=body, headers=headers)
    run_worker()
    fragment = client.htmx_get(f"/bookings/coaches/{me.id}/availability").get_data(as_text=True)
    assert len(calendly_fake.calls("available_times")) == 4
    assert tomorrow.isoformat() not in fragment
    assert (tomorrow + timedelta(hours=2)).isoformat() in fragment


def test_availability_window_is_clamped_to_the_future_and_seven_days(db, coach, calendly_fake):
    service = Service(
        name="30",
        coach_id=coach.id,
        calendly_event_type_uri=f"{calendly_fake.api_base}/event_types/RAPPORTTYPE00030",
    )
    db.session.add(service)
    db.session.commit()
    slots = calendly.available_times(
        coach, service, utcnow() - timedelta(days=1), utcnow() + timedelta(days=30)
    )
    assert slots and all(s.start_at > utcnow() for s in slots)
    [call] = calendly_fake.calls("available_times")
    low = datetime.fromisoformat(call.query["start_time"].replace("Z", "+00:00"))
    high = datetime.fromisoformat(call.query["end_time"].replace("Z", "+00:00"))
    assert low > utcnow() and high - low <= timedelta(days=7)


def test_cancel_from_rapport_calls_calendlys_cancellation(client, db, coach, calendly_fake):
    event = calendly_fake.add_scheduled_event(start_time=start_at())
    deliver(
        client, calendly_fake, "invitee.created", calendly_fake.invitee_payload(event_uuid(event))
    )
    [booking] = bookings(db)
    calendly.cancel_event(booking, "Coach is ill")
    [call] = calendly_fake.calls("cancellation")
    assert call.json == {"reason": "Coach is ill"}
    assert call.path.endswith(f"/scheduled_events/{event_uuid(event)}/cancellation")
    assert calendly_fake.events[event_uuid(event)]["status"] == "canceled"
    calendly.cancel_event(booking, None)  # already canceled there: fine


def test_a_cancellation_calendly_refuses_is_a_readable_error(client, db, coach, calendly_fake):
    past = calendly_fake.add_scheduled_event(start_time=utcnow() - timedelta(hours=3))
    deliver(
        client, calendly_fake, "invitee.created", calendly_fake.invitee_payload(event_uuid(past))
    )
    [booking] = bookings(db)
    with pytest.raises(BookingError, match="Event in the past"):
        calendly.cancel_event(booking, "late")


def test_cancel_needs_a_connected_coach(db, make_booking):
    booking = make_booking(source="calendly", external_event_id="https://api.calendly.com/x")
    with pytest.raises(BookingError, match="not connected Calendly"):
        calendly.cancel_event(booking, None)
    manual = make_booking()
    with pytest.raises(BookingError, match="not booked through Calendly"):
        calendly.cancel_event(manual, None)


# --- tokens at rest -----------------------------------------------------------------


def test_tokens_are_encrypted_with_a_key_derived_from_the_secret_key(app, monkeypatch):
    with app.app_context():
        monkeypatch.setitem(app.config, "TOKEN_ENCRYPTION_KEY", None)
        sealed = tokens.encrypt("secret-token")
        assert "secret-token" not in sealed and tokens.decrypt(sealed) == "secret-token"
        monkeypatch.setitem(app.config, "TOKEN_ENCRYPTION_KEY", Fernet.generate_key().decode())
        with pytest.raises(tokens.TokenError):
            tokens.decrypt(sealed)
        assert json.dumps(tokens.decrypt(tokens.encrypt("x")))
