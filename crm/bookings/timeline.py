"""What bookings add to a contact: booked, rescheduled and canceled sessions, their
workflow steps and session notes on the timeline, and their rows following a merge."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from flask import url_for
from sqlalchemy import orm

from crm.bookings.models import STEP_DEFAULTS, Booking, BookingEvent, SessionNote
from crm.contacts.registry import (
    Cursor,
    TimelineEntry,
    entry_key,
    keyset_rows,
    register_contact_source,
)


def local_time(moment: datetime, zone: str | None) -> str:
    """`moment` as a reader in `zone` sees it: `Tue 3 Dec 2030, 10:00 (Europe/London)`."""
    try:
        tz = ZoneInfo(zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    local = moment.astimezone(tz)
    return f"{local:%a} {local.day} {local:%b %Y, %H:%M} ({tz.key})"


def booking_zone(booking: Booking) -> str:
    """The timezone a booking's times read in: the client's, else the coach's, else UTC."""
    if booking.timezone:
        return booking.timezone
    if booking.contact is not None and booking.contact.timezone:
        return booking.contact.timezone
    if booking.coach is not None:
        return booking.coach.timezone
    return "UTC"


def describe(booking: Booking) -> str:
    """`Discovery Call with Casey Coach` (the service, else the title, else `Session`)."""
    what = booking.service.name if booking.service else (booking.title or "Session")
    if booking.coach is not None:
        return f"{what} with {booking.coach.display_name}"
    return f"{what} (no coach assigned)"


def event_title(event: BookingEvent) -> str:
    booking = event.booking
    zone = booking_zone(booking)
    data = event.data or {}
    when = data.get("start_at")
    when = local_time(datetime.fromisoformat(when), zone) if when else None
    if event.kind == "booked":
        return f"Session booked: {describe(booking)}, {when}"
    if event.kind == "rescheduled":
        return f"Session rescheduled to {when}: {describe(booking)}"
    if event.kind == "canceled":
        return f"Session canceled: {describe(booking)}"
    if event.kind == "completed":
        return f"Session completed: {describe(booking)}"
    if event.kind == "no_show":
        return f"No-show: {describe(booking)}"
    if event.kind == "assigned":
        coach = data.get("coach")
        return f"Session assigned to {coach}" if coach else "Session unassigned"
    if event.kind == "step":
        label = STEP_DEFAULTS.get(data.get("step"), {}).get("label", data.get("step", "Step"))
        return f"{label}: {data.get('status', '')}".rstrip(": ")
    return event.kind.replace("_", " ").capitalize()


def _with_booking(booking):
    """Loader options for timeline rows: the booking with what `describe` reads, and nothing
    of the models' other joined relationships (each one more join to plan per page). The
    booking's contact is the page's own, already in the session."""
    return (
        orm.lazyload("*"),
        orm.joinedload(booking).lazyload("*"),
        orm.joinedload(booking).joinedload(Booking.service).lazyload("*"),
        orm.joinedload(booking).joinedload(Booking.coach).lazyload("*"),
    )


def _event_key(event: BookingEvent) -> str:
    return entry_key("booking", event.id)


def booking_entries(contact_id: int, before: Cursor | None, limit: int) -> list[TimelineEntry]:
    """The contact's sessions: each change and each workflow step's outcome."""
    query = (
        sa.select(BookingEvent)
        .where(BookingEvent.contact_id == contact_id)
        .options(
            *_with_booking(BookingEvent.booking),
            orm.joinedload(BookingEvent.actor).lazyload("*"),
        )
    )
    events = keyset_rows(query, BookingEvent.at, BookingEvent.id, before, limit, key=_event_key)
    return [
        TimelineEntry(
            at=e.at,
            kind="booking",
            key=_event_key(e),
            title=event_title(e),
            body=e.detail,
            url=url_for("bookings.show", booking_id=e.booking_id),
            actor=e.actor.display_name if e.actor else None,
        )
        for e in events
    ]


def _note_key(note: SessionNote) -> str:
    return entry_key("session-note", note.id)


def session_note_entries(contact_id: int, before: Cursor | None, limit: int) -> list[TimelineEntry]:
    """Coaches' notes about the contact's sessions."""
    query = (
        sa.select(SessionNote)
        .where(SessionNote.contact_id == contact_id)
        .options(
            *_with_booking(SessionNote.booking),
            orm.joinedload(SessionNote.author).lazyload("*"),
        )
    )
    notes = keyset_rows(query, SessionNote.created_at, SessionNote.id, before, limit, key=_note_key)
    return [
        TimelineEntry(
            at=n.created_at,
            kind="session_note",
            key=_note_key(n),
            title=f"Session note: {describe(n.booking)}",
            body=n.body,
            url=url_for("bookings.show", booking_id=n.booking_id),
            actor=n.author.display_name if n.author else None,
        )
        for n in notes
    ]


register_contact_source("bookings", reference=Booking.contact_id)
register_contact_source(
    "booking_events", timeline=booking_entries, reference=BookingEvent.contact_id
)
register_contact_source(
    "session_notes", timeline=session_note_entries, reference=SessionNote.contact_id
)
