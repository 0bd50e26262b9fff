"""Workflow steps of a booking: confirmation, coach notification, reminders, follow-up.

`plan_steps` turns a booking change into `BookingStep` rows, each run by
`jobs.bookings.run_step` at its `due_at`; `cancel_steps` cancels the rows still to come.
Which steps run and when is the service's setting (`WorkflowStep`), else the default
(`STEP_DEFAULTS`).

What each change plans:

- booked: the confirmation (client), the coach's notification and the reminders.
- imported (found by a Calendly sync): the reminders only.
- rescheduled / assigned: the reminders again (the scheduled ones are canceled first) and
  a new notification for the coach, who should know their session moved or is now theirs.
  The client gets no second confirmation: the provider (or staff) told them already.
- completed: the follow-up.

Timing: an offset of whole days is applied in the client's local wall time (so a
"1 day before" reminder for 10:00 goes at 10:00 the day before, 23 or 25 hours earlier
across a daylight-saving change); any other offset is an exact duration. Quiet hours
(BOOKING_QUIET_HOURS, the client's local time) move a reminder to their end when that is
still before the session, else to their start (the evening before); a follow-up moves to
their end. A confirmation and the coach's notification answer a booking just made and are
not held back; nothing is planned for a session that is already over.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from flask import current_app

from crm.bookings.models import (
    STEP_DEFAULTS,
    STEPS,
    Booking,
    BookingStep,
    Service,
    WorkflowStep,
)
from crm.bookings.timeline import booking_zone
from crm.database import utcnow
from crm.extensions import db

REASONS = ("booked", "imported", "rescheduled", "assigned", "completed")
REMINDERS = ("first_reminder", "second_reminder")
CLIENT_STEPS = ("confirmation", "first_reminder", "second_reminder", "follow_up")
DAY = 24 * 60
QUEUE = "default"


@dataclass(frozen=True)
class StepSetting:
    """A step as a service runs it: on or off, its offset (minutes) and its template."""

    step: str
    enabled: bool
    offset: int
    template_id: int | None

    @property
    def anchor(self) -> str:
        return STEP_DEFAULTS[self.step]["anchor"]


def step_settings(service: Service | None) -> dict[str, StepSetting]:
    """Each step's setting for `service`: its row, else the default (on, default offset)."""
    rows = {row.step: row for row in service.steps} if service is not None else {}
    settings = {}
    for step in STEPS:
        row = rows.get(step)
        offset = row.offset_minutes if row is not None else None
        settings[step] = StepSetting(
            step=step,
            enabled=row.enabled if row is not None else True,
            offset=STEP_DEFAULTS[step]["offset"] if offset is None else offset,
            template_id=row.template_id if row is not None else None,
        )
    return settings


# --- timing: small pure functions ---------------------------------------------------


def zone_of(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def parse_quiet_hours(value: str | None) -> tuple[time, time] | None:
    """`"21:00-08:00"` as (start, end) local times; None when empty or start == end."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        start, end = (time.fromisoformat(part.strip()) for part in value.split("-", 1))
    except ValueError as exc:
        raise ValueError(f"quiet hours must read like 21:00-08:00, not {value!r}") from exc
    return None if start == end else (start, end)


def shift(moment: datetime, minutes: int, zone: ZoneInfo) -> datetime:
    """`moment` moved by `minutes`: whole days in `zone`'s wall time, else exactly."""
    if minutes == 0:
        return moment
    if minutes % DAY:
        return moment + timedelta(minutes=minutes)
    local = moment.astimezone(zone).replace(tzinfo=None) + timedelta(days=minutes // DAY)
    return local.replace(tzinfo=zone).astimezone(UTC)


def _at(day: date, clock: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, clock, tzinfo=zone).astimezone(UTC)


def quiet_period(moment: datetime, quiet: tuple[time, time] | None, zone: ZoneInfo):
    """(start, end) in UTC of the quiet hours `moment` falls in, or None when it does not."""
    if quiet is None:
        return None
    start, end = quiet
    local = moment.astimezone(zone)
    day, clock = local.date(), local.time().replace(tzinfo=None)
    if start < end:  # within one day, e.g. 12:00-14:00
        if start <= clock < end:
            return _at(day, start, zone), _at(day, end, zone)
        return None
    if clock >= start:  # the evening part of an overnight period
        return _at(day, start, zone), _at(day + timedelta(days=1), end, zone)
    if clock < end:  # the morning part
        return _at(day - timedelta(days=1), start, zone), _at(day, end, zone)
    return None


def reminder_time(
    due: datetime, session_start: datetime, quiet: tuple[time, time] | None, zone: ZoneInfo
) -> datetime:
    """A reminder's time out of quiet hours: their end if still before the session, else
    their start (the evening before)."""
    period = quiet_period(due, quiet, zone)
    if period is None:
        return due
    start, end = period
    return end if end < session_start else start


def follow_up_time(due: datetime, quiet: tuple[time, time] | None, zone: ZoneInfo) -> datetime:
    """A follow-up's time out of quiet hours: their end."""
    period = quiet_period(due, quiet, zone)
    return due if period is None else period[1]


def quiet_hours() -> tuple[time, time] | None:
    return parse_quiet_hours(current_app.config.get("BOOKING_QUIET_HOURS"))


def due_time(booking: Booking, setting: StepSetting, *, now: datetime) -> datetime:
    """When `setting`'s step is due for `booking` as it stands now."""
    zone = zone_of(booking_zone(booking))
    if setting.anchor == "created":
        return shift(now, setting.offset, zone)
    if setting.anchor == "start":
        due = shift(booking.start_at, setting.offset, zone)
        return reminder_time(due, booking.start_at, quiet_hours(), zone)
    due = shift(booking.end_at, setting.offset, zone)
    return follow_up_time(due, quiet_hours(), zone)


# --- planning -----------------------------------------------------------------------


def _rows(booking: Booking, steps, *, status: str | None = "scheduled") -> list[BookingStep]:
    query = sa.select(BookingStep).where(
        BookingStep.booking_id == booking.id, BookingStep.step.in_(steps)
    )
    if status is not None:
        query = query.where(BookingStep.status == status)
    return list(db.session.scalars(query.order_by(BookingStep.id)))


def _cancel(rows: list[BookingStep], detail: str) -> None:
    for row in rows:
        row.status = "canceled"
        row.detail = detail


def _add(booking: Booking, step: str, due: datetime, *, now: datetime) -> BookingStep | None:
    """Plan `step` at `due`; a row already at that time is revived if it was canceled."""
    row = db.session.scalars(
        sa.select(BookingStep).where(
            BookingStep.booking_id == booking.id,
            BookingStep.step == step,
            BookingStep.due_at == due,
        )
    ).first()
    if row is not None:
        if row.status != "canceled":
            return None  # still planned, or already done at this very time
        row.status, row.detail, row.message_id = "scheduled", None, None
    else:
        row = BookingStep(booking_id=booking.id, step=step, due_at=due, status="scheduled")
        db.session.add(row)
    db.session.flush()
    enqueue(row, now=now)
    return row


def enqueue(row: BookingStep, *, now: datetime | None = None) -> None:
    """Run the row's step after commit: now, or at its due time (RQ's scheduler)."""
    from jobs import enqueue_after_commit
    from jobs.bookings import job_options, run_step

    options = job_options(row.id)
    if row.due_at > (now or utcnow()):
        options["at"] = row.due_at
    enqueue_after_commit(QUEUE, run_step, row.id, **options)


def _plan_reminders(booking: Booking, settings: dict[str, StepSetting], now: datetime) -> None:
    """Make the booking's scheduled reminders match its start: cancel the others."""
    wanted = {}
    if booking.active:
        for step in REMINDERS:
            setting = settings[step]
            if setting.enabled:
                due = due_time(booking, setting, now=now)
                if due > now:  # a reminder whose time has passed is not sent late
                    wanted[step] = due
    for row in _rows(booking, REMINDERS):
        if wanted.get(row.step) == row.due_at:
            del wanted[row.step]
        else:
            _cancel([row], "The session moved: replaced by a reminder at the new time.")
    for step, due in wanted.items():
        _add(booking, step, due, now=now)


def plan_steps(booking: Booking, *, reason: str) -> None:
    """Plan (or re-plan) the booking's steps that are still to come."""
    if reason not in REASONS:
        raise ValueError(f"unknown reason {reason!r}; reasons are {', '.join(REASONS)}")
    now = utcnow()
    settings = step_settings(booking.service)
    if reason == "completed":
        setting = settings["follow_up"]
        _cancel(_rows(booking, ("follow_up",)), "Replaced by a new follow-up.")
        if setting.enabled and booking.status == "completed":
            # Marked completed late: the follow-up goes now rather than never.
            due = max(due_time(booking, setting, now=now), now)
            _add(booking, "follow_up", due, now=now)
        return
    _plan_reminders(booking, settings, now)
    if not booking.active or booking.end_at <= now:
        return  # a session already over (imported by a sync) needs no message
    if reason == "imported":
        return  # found by a sync: client and coach heard of it when it was booked
    if reason == "booked" and settings["confirmation"].enabled:
        _add(booking, "confirmation", due_time(booking, settings["confirmation"], now=now), now=now)
    if booking.coach_id is not None and settings["coach_notification"].enabled:
        # A newer notice replaces one not sent yet (booked, then moved at once).
        _cancel(_rows(booking, ("coach_notification",)), "Replaced by a newer notification.")
        setting = settings["coach_notification"]
        _add(booking, "coach_notification", due_time(booking, setting, now=now), now=now)


def cancel_steps(booking: Booking, *, keep: tuple[str, ...] = ()) -> None:
    """Cancel the booking's scheduled steps, except those named in `keep`."""
    steps = [step for step in STEPS if step not in keep]
    detail = "The session was canceled." if booking.status == "canceled" else "No longer needed."
    _cancel(_rows(booking, steps), detail)


def replan_service(service: Service) -> int:
    """Move the reminders of the service's upcoming sessions to its current settings."""
    now = utcnow()
    settings = step_settings(service)
    bookings = db.session.scalars(
        sa.select(Booking).where(
            Booking.service_id == service.id,
            Booking.status.in_(("scheduled", "rescheduled")),
            Booking.start_at > now,
        )
    ).all()
    for booking in bookings:
        _plan_reminders(booking, settings, now)
    return len(bookings)


def is_current(row: BookingStep, *, now: datetime | None = None) -> str | None:
    """Why a scheduled row should no longer run (the booking changed), or None."""
    booking = row.booking
    if row.step == "follow_up":
        if booking.status != "completed":
            return f"The session is {booking.status_label.lower()}, not completed."
        return None
    if not booking.active:
        return f"The session is {booking.status_label.lower()}."
    if row.step == "coach_notification" and booking.coach_id is None:
        return "The session has no coach."
    if row.step in REMINDERS:
        setting = step_settings(booking.service)[row.step]
        if not setting.enabled:
            return "This reminder is turned off for the service."
        if due_time(booking, setting, now=now or utcnow()) != row.due_at:
            return "The session moved: a reminder at the new time replaces this one."
    return None


# --- services and their steps -------------------------------------------------------

SERVICE_FIELDS = ("name", "duration_minutes", "price_minor", "currency", "coach_id", "active")


def save_service(
    service: Service | None, values: dict, steps: dict[str, dict], *, actor
) -> Service:
    """Create or update a service and its step settings from cleaned form values; the
    upcoming sessions' reminders move to the new settings."""
    from crm.audit.services import record_change

    created = service is None
    if created:
        service = Service()
        db.session.add(service)
    changes = {
        name: [None if created else getattr(service, name), values[name]]
        for name in SERVICE_FIELDS
        if created or getattr(service, name) != values[name]
    }
    for name in SERVICE_FIELDS:
        setattr(service, name, values[name])
    db.session.flush()
    rows = {row.step: row for row in service.steps}
    for step, wanted in steps.items():
        row = rows.get(step)
        if row is None:
            row = WorkflowStep(service_id=service.id, step=step)
            service.steps.append(row)
        before = (row.enabled, row.offset_minutes, row.template_id)
        row.enabled = wanted["enabled"]
        row.offset_minutes = wanted["offset"]
        row.template_id = wanted["template_id"]
        if before != (row.enabled, row.offset_minutes, row.template_id):
            changes[f"step:{step}"] = [
                list(before),
                [row.enabled, row.offset_minutes, row.template_id],
            ]
    db.session.flush()
    if changes:
        action = "service.created" if created else "service.updated"
        record_change(action, "service", service.id, changes, actor=actor)
    if not created:
        db.session.expire(service, ["steps"])
        replan_service(service)
    return service
