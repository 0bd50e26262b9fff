"""Cal.com deliveries onto bookings: signed as Cal.com signs them, posted to
/webhooks/calcom, processed by a real worker. Created, rescheduled, canceled, duplicate,
meeting ended, unknown organizer, bad payloads dead-lettered, unsigned refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from rq import SimpleWorker

from crm.bookings.models import Booking, BookingEvent, CoachProfile, Service
from crm.contacts.models import Contact
from crm.database import utcnow
from crm.redis_client import get_redis
from crm.webhooks.models import WebhookEvent
from jobs import get_queue
from tests.fakes.calcom import booking_payload, webhook

SECRET = "calcom-secret-for-booking-tests"
START = "2030-01-01T10:00:00Z"


@pytest.fixture(autouse=True)
def calcom_secret(app, monkeypatch):
    monkeypatch.setitem(app.config, "CALCOM_WEBHOOK_SECRET", SECRET)
    monkeypatch.setitem(app.config, "WEBHOOK_RETRY_INTERVALS", [0])


@pytest.fixture
def host(db, make_user):
    """The coach Cal.com calls `host` (the docs' organizer), known by username."""
    coach = make_user("coach", name="Hana Host", email="hana@example.com")
    db.session.add(CoachProfile(user_id=coach.id, calcom_username="host"))
    db.session.commit()
    return coach


def deliver(client, trigger: str, payload: dict, *, created_at: str | None = None, run=True):
    body, headers = webhook(trigger, payload, secret=SECRET, created_at=created_at)
    response = client.post("/webhooks/calcom", data=body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    if run:
        SimpleWorker([get_queue("webhooks")], connection=get_redis()).work(burst=True)
    return response


def bookings(db) -> list[Booking]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(Booking).order_by(Booking.id)))


def events_of(db, booking) -> list[str]:
    query = sa.select(BookingEvent.kind).where(BookingEvent.booking_id == booking.id)
    return list(db.session.scalars(query.order_by(BookingEvent.id)))


def webhook_events(db) -> list[WebhookEvent]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(WebhookEvent).order_by(WebhookEvent.id)))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_created_booking_is_stored_with_its_contact_coach_service_and_answers(client, db, host):
    payload = booking_payload(
        responses={
            **booking_payload()["responses"],
            "notes": {"label": "What would you like to work on?", "value": "My career"},
            "guests": {"label": "Guests", "value": []},
        },
        bookerUrl="https://cal.example.com",
    )
    deliver(client, "BOOKING_CREATED", payload)

    [booking] = bookings(db)
    assert (booking.source, booking.status) == ("calcom", "scheduled")
    assert booking.external_id == "bFJeNb2uX8ANpT3JL5EfXw"
    assert booking.external_event_id == "100"
    assert booking.start_at == datetime(2030, 1, 1, 10, 0, tzinfo=UTC)
    assert booking.end_at == datetime(2030, 1, 1, 10, 15, tzinfo=UTC)
    assert booking.coach_id == host.id and booking.external_host is None
    assert booking.meeting_url == "https://app.cal.com/video/bFJeNb2uX8ANpT3JL5EfXw"
    assert booking.location is None  # `integrations:daily` names an app, not a place
    assert booking.questions == [
        {"question": "What would you like to work on?", "answer": "My career"}
    ]
    assert (
        booking.cancel_url == "https://cal.example.com/booking/bFJeNb2uX8ANpT3JL5EfXw?cancel=true"
    )
    assert booking.reschedule_url == "https://cal.example.com/reschedule/bFJeNb2uX8ANpT3JL5EfXw"
    contact = db.session.get(Contact, booking.contact_id)
    assert (contact.name, contact.email, contact.timezone) == (
        "Ana Silva",
        "ana@example.com",
        "UTC",
    )
    service = db.session.get(Service, booking.service_id)
    assert (service.name, service.duration_minutes, service.calcom_event_type_id) == (
        "Discovery call",
        15,
        "123",
    )
    assert events_of(db, booking) == ["booked"]
    [event] = webhook_events(db)
    assert event.status == "processed"
    assert contact.last_contact_at == event.received_at


def test_an_existing_contact_and_service_are_reused(client, db, host, make_contact):
    ana = make_contact("Ana S.", email="ana@example.com", phone="+14155550101")
    service = Service(name="Intro session", duration_minutes=30, calcom_event_type_id="123")
    db.session.add(service)
    db.session.commit()
    deliver(client, "BOOKING_CREATED", booking_payload())
    [booking] = bookings(db)
    assert (booking.contact_id, booking.service_id) == (ana.id, service.id)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Contact)) == 1
    assert db.session.get(Contact, ana.id).name == "Ana S."  # never overwritten


def test_an_organizer_is_matched_by_email_when_the_username_is_unknown(client, db, make_user):
    coach = make_user("coach", email="host@example.com")
    deliver(client, "BOOKING_CREATED", booking_payload())
    [booking] = bookings(db)
    assert booking.coach_id == coach.id


def test_an_unknown_organizer_leaves_the_booking_unassigned_with_the_host_named(client, db):
    deliver(client, "BOOKING_CREATED", booking_payload())
    [booking] = bookings(db)
    assert booking.coach_id is None
    assert booking.external_host == "host@example.com"
    assert booking.status == "scheduled"


def test_an_attendee_known_only_by_phone_is_linked_by_it(client, db, host, make_contact):
    ben = make_contact("Ben", phone="+14155550123")
    payload = booking_payload(
        attendees=[{"name": "Ben", "timeZone": "America/New_York"}],
        responses={
            "name": {"label": "your_name", "value": "Ben"},
            "attendeePhoneNumber": {"label": "Phone", "value": "+1 415 555 0123"},
        },
    )
    deliver(client, "BOOKING_CREATED", payload)
    [booking] = bookings(db)
    assert booking.contact_id == ben.id
    assert booking.timezone == "America/New_York"


def test_a_duplicate_delivery_makes_one_booking(client, db, host):
    payload = booking_payload()
    deliver(client, "BOOKING_CREATED", payload, created_at="2029-12-01T10:00:00.000Z")
    deliver(client, "BOOKING_CREATED", payload, created_at="2029-12-01T10:00:00.000Z")
    # Sent again later (a retry with a new createdAt): stored, processed, changes nothing.
    deliver(client, "BOOKING_CREATED", payload, created_at="2029-12-01T10:05:00.000Z")
    assert [e.status for e in webhook_events(db)] == ["processed", "processed"]
    [booking] = bookings(db)
    assert events_of(db, booking) == ["booked"]


def test_a_reschedule_moves_the_same_booking_to_the_new_uid(client, db, host):
    deliver(client, "BOOKING_CREATED", booking_payload())
    [original] = bookings(db)
    moved = booking_payload(
        uid="newUid123",
        bookingId=101,
        startTime="2030-01-03T15:00:00+00:00",
        endTime="2030-01-03T15:15:00+00:00",
        rescheduleUid="bFJeNb2uX8ANpT3JL5EfXw",
        rescheduleId=100,
        rescheduleStartTime=START,
        rescheduleEndTime="2030-01-01T10:15:00Z",
    )
    deliver(client, "BOOKING_RESCHEDULED", moved)
    [booking] = bookings(db)
    assert booking.id == original.id
    assert booking.status == "rescheduled"
    assert (booking.external_id, booking.external_event_id) == ("newUid123", "101")
    assert booking.start_at == datetime(2030, 1, 3, 15, 0, tzinfo=UTC)
    assert booking.end_at == datetime(2030, 1, 3, 15, 15, tzinfo=UTC)
    assert events_of(db, booking) == ["booked", "rescheduled"]

    # The same reschedule again changes nothing; the old uid's cancellation finds nothing.
    deliver(client, "BOOKING_RESCHEDULED", moved, created_at="2029-12-02T00:00:00.000Z")
    deliver(client, "BOOKING_CANCELLED", booking_payload(status="CANCELLED"))
    [booking] = bookings(db)
    assert booking.status == "rescheduled"
    assert events_of(db, booking) == ["booked", "rescheduled"]


def test_a_reschedule_of_a_booking_never_seen_creates_it_as_rescheduled(client, db, host):
    deliver(client, "BOOKING_RESCHEDULED", booking_payload(uid="new", rescheduleUid="old"))
    [booking] = bookings(db)
    assert (booking.external_id, booking.status) == ("new", "rescheduled")


def test_a_cancellation_cancels_the_booking_once(client, db, host):
    deliver(client, "BOOKING_CREATED", booking_payload())
    canceled = booking_payload(
        status="CANCELLED",
        cancellationReason="Feeling unwell",
        cancelledBy="ana@example.com",
        requestReschedule=False,
    )
    deliver(client, "BOOKING_CANCELLED", canceled, created_at="2029-12-03T00:00:00.000Z")
    deliver(client, "BOOKING_CANCELLED", canceled, created_at="2029-12-03T00:01:00.000Z")
    [booking] = bookings(db)
    assert booking.status == "canceled"
    assert booking.cancellation_reason == "Feeling unwell"
    assert booking.canceled_by == "ana@example.com"
    assert booking.canceled_at is not None
    assert events_of(db, booking) == ["booked", "canceled"]
    assert [e.status for e in webhook_events(db)] == ["processed"] * 3

    # A late duplicate of the creation does not bring it back.
    deliver(client, "BOOKING_CREATED", booking_payload(), created_at="2029-12-04T00:00:00.000Z")
    [booking] = bookings(db)
    assert booking.status == "canceled"


def test_a_cancellation_of_an_unknown_booking_records_nothing(client, db):
    deliver(client, "BOOKING_CANCELLED", booking_payload(uid="never-seen", status="CANCELLED"))
    [event] = webhook_events(db)
    assert event.status == "processed"
    assert bookings(db) == []
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Contact)) == 0


def test_meeting_ended_completes_a_session_that_has_started(client, db, host):
    start = (utcnow() - timedelta(hours=1)).replace(microsecond=0)
    fields = {"startTime": iso(start), "endTime": iso(start + timedelta(minutes=15))}
    deliver(client, "BOOKING_CREATED", booking_payload(**fields))
    deliver(client, "MEETING_ENDED", booking_payload(**fields))
    [booking] = bookings(db)
    assert booking.status == "completed"
    assert events_of(db, booking) == ["booked", "completed"]
    [_, ended] = webhook_events(db)
    assert (ended.kind, ended.status) == ("MEETING_ENDED", "processed")


def test_meeting_ended_before_the_start_leaves_the_booking_as_it_is(client, db, host):
    deliver(client, "BOOKING_CREATED", booking_payload())  # 2030
    deliver(client, "MEETING_ENDED", booking_payload())
    [booking] = bookings(db)
    assert booking.status == "scheduled"
    assert webhook_events(db)[-1].status == "processed"


def test_meeting_ended_for_a_canceled_session_keeps_it_canceled(client, db, host):
    start = (utcnow() - timedelta(hours=1)).replace(microsecond=0)
    fields = {"startTime": iso(start), "endTime": iso(start + timedelta(minutes=15))}
    deliver(client, "BOOKING_CREATED", booking_payload(**fields))
    deliver(client, "BOOKING_CANCELLED", booking_payload(**fields, status="CANCELLED"))
    deliver(client, "MEETING_ENDED", booking_payload(**fields))
    assert bookings(db)[0].status == "canceled"


def test_meeting_ended_for_a_booking_never_seen_records_it_completed(client, db, host):
    start = (utcnow() - timedelta(hours=2)).replace(microsecond=0)
    fields = {"startTime": iso(start), "endTime": iso(start + timedelta(minutes=30))}
    deliver(client, "MEETING_ENDED", booking_payload(uid="missed", **fields))
    [booking] = bookings(db)
    assert (booking.external_id, booking.status, booking.coach_id) == (
        "missed",
        "completed",
        host.id,
    )


def _without(key: str) -> dict:
    payload = booking_payload()
    del payload[key]
    return payload


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_without("uid"), "the booking has no uid"),
        (_without("startTime"), "the booking has no startTime"),
        (_without("endTime"), "the booking has no endTime"),
        (booking_payload(startTime="next tuesday"), "startTime is not a time"),
        (booking_payload(endTime="2030-01-01T09:00:00Z"), "ends before it starts"),
        (
            booking_payload(attendees=[{"name": "Nobody"}], responses={}),
            "neither an email address nor a phone number",
        ),
        (booking_payload(attendees=[], responses={}), "neither an email address"),
    ],
    ids=["uid", "start", "end", "bad-start", "backwards", "no-email-or-phone", "no-attendee"],
)
def test_a_payload_missing_what_a_booking_needs_is_dead_lettered_with_the_reason(
    client, db, host, payload, reason
):
    deliver(client, "BOOKING_CREATED", payload)
    [event] = webhook_events(db)
    assert (event.status, event.attempts) == ("dead", 1)
    assert "PermanentHandlerError" in event.last_error and reason in event.last_error
    assert bookings(db) == []
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Contact)) == 0
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Service)) == 0


def test_an_unsigned_delivery_is_refused_and_nothing_is_stored(client, db):
    body, headers = webhook("BOOKING_CREATED", booking_payload(), secret=None)
    assert headers["X-Cal-Signature-256"] == "no-secret-provided"
    response = client.post("/webhooks/calcom", data=body, headers=headers)
    assert response.status_code == 403
    body, headers = webhook("BOOKING_CREATED", booking_payload(), secret="someone-elses")
    assert client.post("/webhooks/calcom", data=body, headers=headers).status_code == 403
    assert webhook_events(db) == []
    assert get_queue("webhooks").count == 0
    assert bookings(db) == []
