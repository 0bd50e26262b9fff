"""Bookings jobs: run one workflow step at its time, exactly once; sweep up lost steps.

Steps run on the "default" queue, not "messaging": a step only queues its message (the
send job then goes on "messaging"), and a reminder must not wait behind a campaign's
backlog of sends.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from werkzeug.routing import BuildError

from crm.bookings import workflows
from crm.bookings.models import BookingEvent, BookingStep
from crm.bookings.notifications import forget_unread, notify
from crm.bookings.services import coach_name, record_event
from crm.bookings.timeline import booking_zone, describe, local_time
from crm.conversations import services as conversations
from crm.conversations.models import CHANNEL_LABELS, MessageTemplate
from crm.database import utcnow
from crm.extensions import db
from crm.integrations import email, policy
from jobs import get_queue, schedule_next

log = logging.getLogger(__name__)

QUEUE = workflows.QUEUE
JOB_PREFIX = "booking-step-"


def job_options(step_id: int) -> dict:
    """RQ options of a step's job: one deterministic id per step row."""
    return {
        "job_id": f"{JOB_PREFIX}{step_id}",
        "job_timeout": 120,
        "result_ttl": 24 * 3600,
        "failure_ttl": 7 * 24 * 3600,
    }


def _lock(step_id: int) -> None:
    """Open the transaction with a write to the step's row: a second run of the same step
    waits here (PostgreSQL row lock, SQLite write lock), then sees it is no longer due."""
    db.session.execute(
        sa.update(BookingStep)
        .where(BookingStep.id == step_id)
        .values(updated_at=BookingStep.updated_at)
        .execution_options(synchronize_session=False)
    )


def run_step(step_id: int) -> str | None:
    """Run workflow step `step_id` unless it ran, was canceled or no longer fits the booking.

    Return the step's outcome (sent, skipped, failed, canceled), None when it had one already.
    """
    _lock(step_id)
    db.session.expire_all()
    row = db.session.get(BookingStep, step_id)
    if row is None or row.status != "scheduled":
        db.session.rollback()
        log.info("booking step %s: not scheduled (any more), nothing to do", step_id)
        return None
    stale = workflows.is_current(row)
    if stale:
        row.status, row.detail = "canceled", stale
        db.session.commit()
        log.info("booking step %s (%s) canceled: %s", step_id, row.step, stale)
        return "canceled"
    if row.step == "coach_notification":
        return _notify_coach(row)
    return _message_client(row)


def _finish(row: BookingStep, status: str, detail: str) -> str:
    """Record the step's outcome on its row and on the contact's timeline; commit."""
    row.status, row.detail = status, detail
    record_event(row.booking, "step", detail=detail, step=row.step, status=status)
    db.session.commit()
    log.info("booking step %s (%s, booking %s): %s", row.id, row.step, row.booking_id, status)
    return status


# --- the client's messages ------------------------------------------------------------


def booking_values(booking) -> dict[str, str]:
    """The template variables a booking adds: service, session_time, meeting_link, coach."""
    return {
        "service": booking.service.name if booking.service else (booking.title or "session"),
        "session_time": local_time(booking.start_at, booking_zone(booking)),
        "meeting_link": booking.meeting_url or booking.location or "",
        "coach_name": coach_name(booking.coach) or "your coach",
    }


def default_text(step: str, booking, values: dict[str, str]) -> str:
    """The message a step sends when its service has no template for it."""
    first = (booking.contact.name or "").strip().partition(" ")[0]
    hello = f"Hi {first}, " if first else ""
    what = f"your {values['service']} with {values['coach_name']}"
    link = f" Join here: {values['meeting_link']}" if values["meeting_link"] else ""
    if step == "confirmation":
        return f"{hello}{what} is booked for {values['session_time']}.{link}"
    if step == "first_reminder":
        return f"{hello}a reminder: {what} is on {values['session_time']}.{link}"
    if step == "second_reminder":
        return f"{hello}{what} starts soon, at {values['session_time']}.{link}"
    return f"{hello}thank you for {what}. Reply here if you have any questions."


def _message_client(row: BookingStep) -> str:
    booking = row.booking
    contact = booking.contact
    setting = workflows.step_settings(booking.service)[row.step]
    template = db.session.get(MessageTemplate, setting.template_id) if setting.template_id else None
    channel = contact.preferred_channel if contact.preferred_channel in CHANNEL_LABELS else "sms"
    label = CHANNEL_LABELS[channel]
    if contact.deleted_at is not None:
        return _finish(row, "skipped", "Not sent: the client's contact is deleted.")
    if not contact.phone:
        return _finish(row, "skipped", "Not sent: the client has no phone number.")
    optout = conversations.opted_out(contact.id, channel)
    if optout is not None:
        return _finish(
            row, "skipped", f"Not sent: {contact.name} opted out of {label} ({optout.source})."
        )
    conversation = conversations.open_conversation(contact, channel)
    if not conversation.window_open() and not (template and template.content_sid):
        return _finish(
            row,
            "failed",
            "Not sent: outside WhatsApp's 24-hour window, and the service has no approved "
            "WhatsApp template (with a Content SID) for this step.",
        )
    values = booking_values(booking)
    body = "" if template else default_text(row.step, booking, values)
    try:
        message = conversations.queue_message(
            conversation, body=body, template=template, actor=None, variables=values
        )
    except conversations.SendRefused as exc:
        return _finish(row, "failed", f"Not sent: {exc}")
    row.message_id = message.id
    how = "the WhatsApp template " + template.name if message.content_sid else label
    return _finish(row, "sent", f"Sent by {how}: {message.body}")


# --- the coach's notification ---------------------------------------------------------

TITLES = {
    "booked": "New session",
    "rescheduled": "Session moved",
    "assigned": "Session assigned to you",
}


def _reason(row: BookingStep) -> str:
    """What planned the notification: the booking's last change at or before the row."""
    kind = db.session.scalar(
        sa.select(BookingEvent.kind)
        .where(
            BookingEvent.booking_id == row.booking_id,
            BookingEvent.kind.in_(tuple(TITLES)),
            BookingEvent.at <= row.created_at,
        )
        .order_by(BookingEvent.at.desc(), BookingEvent.id.desc())
        .limit(1)
    )
    return kind or "booked"


def booking_path(booking_id: int) -> str | None:
    """The session's page, built without a request (jobs have none)."""
    try:
        return current_app.url_map.bind("").build("bookings.show", {"booking_id": booking_id})
    except BuildError:
        return None


def _notify_coach(row: BookingStep) -> str:
    booking = row.booking
    coach = booking.coach
    when = local_time(booking.start_at, coach.timezone)
    title = f"{TITLES[_reason(row)]}: {booking.contact.name}, {when}"[:300]
    lines = [describe(booking), f"Client: {booking.contact.name}", f"When: {when}"]
    if booking.meeting_url or booking.location:
        lines.append(f"Where: {booking.meeting_url or booking.location}")
    path = booking_path(booking.id)
    notify(coach.id, title, body="\n".join(lines), url=path)
    # Committed before the email: the notice exists once, whatever the mail server does.
    row.status, row.detail = "sent", f"{coach.display_name} was notified in Rapport."
    db.session.commit()
    forget_unread(coach.id)  # again: a page may have cached the count before the commit
    detail = row.detail
    if email.configured() and coach.email:
        base = current_app.config.get("PUBLIC_BASE_URL")
        if path and base:
            lines.append(base.rstrip("/") + path)
        try:
            email.send_email(coach.email, title, "\n".join(lines) + "\n")
        except policy.CallError as exc:
            detail += f" The email to {coach.email} failed: {exc}"
        else:
            detail += f" Emailed to {coach.email}."
    return _finish(row, "sent", detail)


# --- the sweep --------------------------------------------------------------------------

SWEEP_JOB = "bookings-sweep"


def schedule_sweep() -> str | None:
    """Schedule the next sweep unless it is already (one chain however many workers)."""
    interval = int(current_app.config.get("BOOKINGS_SWEEP_INTERVAL_SECONDS", 300))
    return schedule_next(
        SWEEP_JOB, sweep_steps, interval=interval, queue=QUEUE, result_ttl=interval
    )


def _waiting_step_ids() -> set[int]:
    """Steps whose job still waits in the queue or the scheduler."""
    queue = get_queue(QUEUE)
    ids = queue.get_job_ids() + ScheduledJobRegistry(queue=queue).get_job_ids(cleanup=False)
    waiting = set()
    for job in Job.fetch_many(
        [i for i in ids if i.startswith(JOB_PREFIX)], connection=queue.connection
    ):
        if job is not None and job.args:
            waiting.add(job.args[0])
    return waiting


def sweep_steps() -> int:
    """Enqueue the steps still scheduled a minute past their time whose job is lost (its
    worker died, Redis lost it). Runs every BOOKINGS_SWEEP_INTERVAL_SECONDS."""
    schedule_sweep()
    ids = db.session.scalars(
        sa.select(BookingStep.id)
        .where(
            BookingStep.status == "scheduled",
            BookingStep.due_at < utcnow() - timedelta(minutes=1),
        )
        .order_by(BookingStep.due_at)
        .limit(10_000)
    ).all()
    db.session.rollback()
    if ids:
        waiting = _waiting_step_ids()
        ids = [step_id for step_id in ids if step_id not in waiting]
    queue = get_queue(QUEUE)
    for step_id in ids:
        queue.enqueue(run_step, step_id, **job_options(step_id))
    if ids:
        log.info("swept %d lost booking step(s) back onto the queue", len(ids))
    return len(ids)
