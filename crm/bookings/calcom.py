"""Cal.com's webhooks onto bookings (providers.md section 4).

Cal.com has no API Rapport calls: a booking arrives as a signed delivery, stored and
queued by crm/webhooks, and one of these handlers applies it through the same services
as Calendly and the staff's form. `BOOKING_*` bodies wrap the booking in `payload`;
`MEETING_*` bodies carry its fields at the top level, next to `triggerEvent`.

A booking is known by its `uid` (Booking.external_id); a reschedule is a new uid naming
the old one (`rescheduleUid`), applied as one booking moved in place. Every handler is
idempotent: a duplicate or a replay finds the booking and changes nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from crm.bookings import services
from crm.bookings.models import Service
from crm.contacts.models import Contact
from crm.database import utcnow
from crm.extensions import db
from crm.webhooks.handlers import PermanentHandlerError, register, touch_contacts
from crm.webhooks.models import WebhookEvent

log = logging.getLogger(__name__)

SOURCE = "calcom"
# Responses already stored elsewhere on the booking or contact; the rest are questions.
KNOWN_RESPONSES = {"name", "email", "location", "attendeePhoneNumber", "rescheduleReason"}


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _text(value) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def booking_fields(payload) -> dict:
    """The booking's fields: inside `payload` for BOOKING_*, at the top level for MEETING_*."""
    payload = _dict(payload)
    inner = payload.get("payload")
    return inner if isinstance(inner, dict) else payload


def parse_time(value, name: str) -> datetime:
    """A Cal.com time (`…Z`, `….000Z` or `+00:00`) as an aware UTC datetime."""
    text = _text(value)
    if text is None:
        raise PermanentHandlerError(f"the booking has no {name}")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise PermanentHandlerError(f"the booking's {name} is not a time: {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # Cal.com sends UTC; never a local wall time
    return moment.astimezone(UTC)


def _uid(fields: dict) -> str:
    uid = _text(fields.get("uid")) or _text(fields.get("bookingUid"))
    if uid is None:
        raise PermanentHandlerError("the booking has no uid")
    return uid


def _answer(value) -> str | None:
    """A response's value as text: `{"label", "value"}` objects, lists and plain values."""
    if isinstance(value, dict):
        if "value" in value:
            return _answer(value["value"])
        if "optionValue" in value:
            return _answer(value.get("optionValue"))
        return None
    if isinstance(value, list):
        parts = [a for a in (_answer(v) for v in value) if a]
        return ", ".join(parts) or None
    return _text(value)


def questions(fields: dict) -> list[dict]:
    """The booker's answers to the event type's questions, as [{question, answer}]."""
    found = []
    for key, value in _dict(fields.get("responses")).items():
        if key in KNOWN_RESPONSES:
            continue
        answer = _answer(value)
        if answer is None:
            continue
        label = _dict(value).get("label") if isinstance(value, dict) else None
        found.append({"question": _text(label) or key, "answer": answer})
    # Older event types (and older payloads) send `customInputs` as {label: value}.
    asked = {q["question"] for q in found}
    for label, value in _dict(fields.get("customInputs")).items():
        answer = _answer(value)
        if answer is not None and label not in asked:
            found.append({"question": str(label), "answer": answer})
    return found


def _attendee_phone(fields: dict, attendee: dict) -> str | None:
    responses = _dict(fields.get("responses"))
    return _text(attendee.get("phoneNumber")) or _answer(responses.get("attendeePhoneNumber"))


def link_attendee(fields: dict) -> Contact:
    """The contact of the booking's first attendee (the booker), found or created."""
    attendees = fields.get("attendees")
    attendee = _dict(attendees[0]) if isinstance(attendees, list) and attendees else {}
    responses = _dict(fields.get("responses"))
    email = _text(attendee.get("email")) or _answer(responses.get("email"))
    name = _text(attendee.get("name")) or _answer(responses.get("name"))
    try:
        return services.link_contact(
            email=email,
            phone=_attendee_phone(fields, attendee),
            name=name,
            timezone=_text(attendee.get("timeZone")),
        )
    except services.BookingError as exc:
        raise PermanentHandlerError(str(exc)) from exc


def organizer_coach(fields: dict):
    """The coach the organizer is (by Cal.com username, then email), and how Cal.com names
    them, kept for staff when Rapport does not know the coach."""
    organizer = _dict(fields.get("organizer"))
    email = _text(organizer.get("email"))
    coach = services.find_coach(
        calcom_username=_text(organizer.get("username")),
        email=email,
    )
    host = email or _text(organizer.get("username")) or _text(organizer.get("name"))
    return coach, (host[:320] if host else None)


def event_type_service(fields: dict, coach) -> Service | None:
    """The service of the booking's event type, created the first time it is seen."""
    event_type_id = _text(fields.get("eventTypeId"))
    if event_type_id is None:
        return None
    service = db.session.scalars(
        sa.select(Service).where(Service.calcom_event_type_id == event_type_id)
    ).first()
    if service is not None:
        return service
    slug = _text(fields.get("type"))
    name = (
        _text(fields.get("eventTitle"))
        or (slug.replace("-", " ").capitalize() if slug else None)
        or f"Cal.com event type {event_type_id}"
    )
    length = fields.get("length")
    price = fields.get("price")
    service = Service(
        name=name[:200],
        duration_minutes=length if isinstance(length, int) and length > 0 else 60,
        # Cal.com prices are in the currency's minor unit already.
        price_minor=price if isinstance(price, int) and price > 0 else None,
        currency=(_text(fields.get("currency")) or "").upper()[:3] or None,
        coach_id=coach.id if coach else None,
        calcom_event_type_id=event_type_id,
    )
    db.session.add(service)
    db.session.flush()
    return service


def meeting_place(fields: dict) -> tuple[str | None, str | None]:
    """(location, meeting_url): a video link wherever Cal.com put it; an address or
    phone as the location. `integrations:daily` and the like name an app, not a place."""
    location = _text(fields.get("location"))
    url = (
        _text(_dict(fields.get("metadata")).get("videoCallUrl"))
        or _text(_dict(fields.get("videoCallData")).get("url"))
        or (location if location and location.startswith(("https://", "http://")) else None)
    )
    if location and (location == url or location.startswith("integrations:")):
        location = None
    return location, (url[:1000] if url else None)


def _links(fields: dict, uid: str) -> dict:
    # Cal.com's own links (packages/lib/CalEventParser: getCancelLink, getRescheduleLink).
    base = _text(fields.get("bookerUrl"))
    if not base:
        return {}
    base = base.rstrip("/")
    return {
        "cancel_url": f"{base}/booking/{uid}?cancel=true",
        "reschedule_url": f"{base}/reschedule/{uid}",
    }


def apply_booking(event: WebhookEvent, fields: dict) -> services.Applied:
    """Create or move the booking these fields describe; everything needed is checked
    before anything is written, so a bad payload is dead-lettered, never half-applied."""
    uid = _uid(fields)
    start_at = parse_time(fields.get("startTime"), "startTime")
    end_at = parse_time(fields.get("endTime"), "endTime")
    if end_at <= start_at:
        raise PermanentHandlerError("the booking ends before it starts")
    contact = link_attendee(fields)
    coach, host = organizer_coach(fields)
    service = event_type_service(fields, coach)
    location, meeting_url = meeting_place(fields)
    attendees = fields.get("attendees")
    attendee = _dict(attendees[0]) if isinstance(attendees, list) and attendees else {}
    extra = {
        "title": (_text(fields.get("title")) or "")[:300] or None,
        "timezone": _text(attendee.get("timeZone")),
        "location": location,
        "meeting_url": meeting_url,
        "external_event_id": _text(fields.get("bookingId")),
        "external_host": None if coach else host,
        "questions": questions(fields) or None,
        **_links(fields, uid),
    }
    applied = services.apply_external_booking(
        SOURCE,
        uid,
        contact=contact,
        coach=coach,
        start_at=start_at,
        end_at=end_at,
        previous_external_id=_text(fields.get("rescheduleUid")),
        service=service,
        # What the payload does not say is left as it is (or to the column's default).
        **{key: value for key, value in extra.items() if value is not None},
    )
    # Every attendee was in touch when they booked (as the backbone's default handler had it).
    emails = {
        email.lower()
        for a in (attendees if isinstance(attendees, list) else [])
        if (email := _text(_dict(a).get("email")))
    }
    touch_contacts(
        sa.or_(Contact.id == contact.id, Contact.email.in_(sorted(emails))), event.received_at
    )
    log.info(
        "cal.com booking %s %s (booking %s)",
        uid,
        applied.change,
        applied.booking.id if applied.booking else None,
    )
    return applied


@register("calcom", "BOOKING_CREATED")
def booking_created(event: WebhookEvent, payload: Any) -> None:
    """A new Cal.com booking: create it (or find it, on a duplicate)."""
    apply_booking(event, booking_fields(payload))


@register("calcom", "BOOKING_RESCHEDULED")
def booking_rescheduled(event: WebhookEvent, payload: Any) -> None:
    """A Cal.com reschedule: the booking of `rescheduleUid` moves and takes the new uid."""
    apply_booking(event, booking_fields(payload))


@register("calcom", "BOOKING_CANCELLED")
def booking_cancelled(event: WebhookEvent, payload: Any) -> None:
    """A Cal.com cancellation: cancel the booking; one Rapport never saw needs nothing."""
    fields = booking_fields(payload)
    uid = _uid(fields)
    booking = services.find_external(SOURCE, uid)
    if booking is None:
        log.info("cal.com cancellation of unknown booking %s: nothing to do", uid)
        return
    reason = _text(fields.get("cancellationReason"))
    if fields.get("requestReschedule") is True and not reason:
        reason = "The host asked the client to pick another time."
    canceled_by = fields.get("cancelledBy")
    if isinstance(canceled_by, dict):
        canceled_by = canceled_by.get("email") or canceled_by.get("name")
    try:
        services.cancel_booking(
            booking,
            actor=None,
            reason=reason,
            canceled_by=(_text(canceled_by) or "Cal.com")[:200],
        )
    except services.BookingError as exc:
        raise PermanentHandlerError(f"booking {booking.id}: {exc}") from exc


@register("calcom", "MEETING_ENDED")
def meeting_ended(event: WebhookEvent, payload: Any) -> None:
    """A Cal.com video meeting ended: the session took place, so mark it completed.

    A booking Rapport missed is applied first. A canceled session or one already given an
    outcome keeps it; a room closed before the session's start (a host testing the link)
    proves nothing, so the booking is left as it is.
    """
    fields = booking_fields(payload)
    booking = services.find_external(SOURCE, _uid(fields))
    if booking is None:
        booking = apply_booking(event, fields).booking
    if booking is None or not booking.active:
        return
    if booking.start_at > utcnow():
        log.info("cal.com meeting for booking %s ended before its start; left", booking.id)
        return
    services.set_outcome(booking, "completed", actor=None)
