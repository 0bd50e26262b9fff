"""Messaging jobs: send one message through Twilio, exactly once; sweep up stalled sends.

A send is claimed with a lease in the database (two jobs never send one message), and an
in-flight marker is committed just before the call to Twilio. A job that finds the
marker set without a SID (its predecessor died after calling Twilio) asks Twilio whether
the message went before it sends anything.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

import sqlalchemy as sa
from flask import current_app
from rq import Retry, get_current_job
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from crm.conversations import services
from crm.conversations.models import Message, MessageStatusEvent
from crm.database import utcnow
from crm.extensions import db
from crm.integrations import policy, twilio
from jobs import enqueue_after_commit, get_queue, schedule_next

log = logging.getLogger(__name__)

QUEUE = "messaging"
# Reconcile: a message Twilio holds counts as ours when it was created this close to the
# marker (Twilio's dates have one-second resolution).
RECONCILE_SLACK = timedelta(seconds=5)


def _lease() -> timedelta:
    return timedelta(seconds=float(current_app.config.get("MESSAGING_LEASE_SECONDS", 120)))


def _rate_wait() -> float:
    # Wait a little for a rate-limit token inside the job; longer waits re-enqueue.
    return float(current_app.config.get("MESSAGING_RATE_WAIT_SECONDS", 5.0))


def retry_policy() -> Retry:
    intervals = current_app.config.get("MESSAGING_RETRY_INTERVALS") or [10, 60, 300, 900, 3600]
    return Retry(max=len(intervals), interval=list(intervals))


def send_job_options(message: Message | None = None) -> dict:
    """RQ options for a send job; a send-later message's job waits for its time."""
    options = {"retry": retry_policy(), "job_timeout": 300, "failure_ttl": 7 * 24 * 3600}
    if message is not None and message.send_at is not None and message.send_at > utcnow():
        options["at"] = message.send_at
    return options


def enqueue_send(message_id: int, *, at: datetime | None = None) -> None:
    """Enqueue the send now (or at `at`); duplicates are harmless, the lease decides."""
    queue = get_queue(QUEUE)
    options = send_job_options()
    if at is not None and at > utcnow():
        queue.enqueue_at(at, send_message, message_id, **options)
    else:
        queue.enqueue(send_message, message_id, **options)


def _retries_left() -> int:
    job = get_current_job()
    return (job.retries_left or 0) if job is not None else 0


def _claim(message_id: int) -> bool:
    now = utcnow()
    claimed = db.session.execute(
        sa.update(Message)
        .where(
            Message.id == message_id,
            Message.direction == "outbound",
            Message.sid.is_(None),
            Message.status.in_(("queued", "scheduled")),
            sa.or_(Message.send_at.is_(None), Message.send_at <= now + timedelta(seconds=1)),
            sa.or_(Message.lease_until.is_(None), Message.lease_until < now),
        )
        .values(lease_until=now + _lease())
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    return bool(claimed)


def _twilio_date(value) -> datetime | None:
    if isinstance(value, datetime):
        return value
    try:
        return parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None


def _address(message: Message) -> str:
    return services.address_of(message.channel, message.conversation.contact.phone)


def _sender_args(message: Message) -> dict:
    sender = services.sender_of(message.conversation) or ""
    if sender.startswith("MG"):
        return {"messaging_service_sid": sender}
    return {"from_": services.address_of(message.channel, sender)}


def _reconcile(*, to: str, from_: str | None, since: datetime, body: str | None) -> dict | None:
    """The message Twilio accepted for this row before its sender died, if any.

    Twilio has no client reference on a message: a candidate is one to the same number,
    from the same sender, created after the marker, with the same body (any body for a
    template), that no row holds yet; the oldest such wins.
    """
    listed = twilio.list_messages(to=to, from_=from_)
    known = set(
        db.session.scalars(
            sa.select(Message.sid).where(Message.sid.in_([m["sid"] for m in listed]))
        )
    )
    db.session.rollback()
    candidates = []
    for found in listed:
        created = _twilio_date(found.get("date_created"))
        if found["sid"] in known or created is None or created < since:
            continue
        if body is not None and (found.get("body") or "") != body:
            continue
        candidates.append((created, found["sid"], found))
    return min(candidates, key=lambda c: (c[0], c[1]))[2] if candidates else None


def _lock(message_id: int) -> None:
    """Open the transaction with a write to the message's row.

    On SQLite a transaction that reads first and writes later fails at once ("database
    is locked") when another worker committed in between; writing first takes the write
    lock up front. On PostgreSQL it locks the row against a racing status callback.
    """
    db.session.execute(
        sa.update(Message)
        .where(Message.id == message_id)
        .values(lease_until=Message.lease_until)
        .execution_options(synchronize_session=False)
    )


def _accepted(message_id: int, found: dict, *, source: str) -> None:
    """Record the SID (and status) Twilio gave the message, and let go of it."""
    _lock(message_id)
    message = db.session.get(Message, message_id, populate_existing=True)
    message.sid = found["sid"]
    message.lease_until = None
    message.error_reason = None
    status = (found.get("status") or "queued").lower()
    if status != message.status:
        services.set_status(message, status, source=source)
    db.session.commit()


def _give_up(message_id: int, status: str | None = None, **values) -> Message:
    """Record an outcome that sends nothing (now): set `values`, maybe a status; release."""
    _lock(message_id)
    message = db.session.get(Message, message_id, populate_existing=True)
    code, reason = values.pop("error_code", None), values.pop("reason", None)
    if status is not None:
        services.set_status(message, status, source="send", error_code=code, reason=reason)
    for name, value in values.items():
        setattr(message, name, value)
    message.lease_until = None
    return message


def _call_arguments(message: Message) -> dict:
    return {
        "to": _address(message),
        "body": None if message.content_sid else message.body,
        "media_urls": [m["url"] for m in message.media or []] or None,
        "status_callback": services.status_callback_url(),
        "content_sid": message.content_sid,
        "content_variables": message.content_variables,
        "wait": _rate_wait(),
        **_sender_args(message),
    }


def send_message(message_id: int) -> None:
    """Send outbound message `message_id` through Twilio unless it went already."""
    delay = _send(message_id)
    if delay is not None:
        get_queue(QUEUE).enqueue_in(
            timedelta(seconds=delay), send_message, message_id, **send_job_options()
        )


def send_messages(message_ids: list[int]) -> None:
    """Send a batch of messages (a campaign's), one after the other, each exactly once.

    A batch spreads a job's fixed cost (the worker's fork, connections) over many sends.
    A message that fails for a passing reason does not stop the others; the batch then
    fails and RQ retries it, and the messages already sent are skipped by their claim.
    When the sender's rate limit would make a message wait long, the rest of the batch
    comes back as a new batch once a token is due.
    """
    failure: Exception | None = None
    for index, message_id in enumerate(message_ids):
        try:
            delay = _send(message_id)
        except policy.TransientError as exc:
            failure = failure or exc
            continue
        if delay is not None:
            rest = list(message_ids[index:])
            get_queue(QUEUE).enqueue_in(
                timedelta(seconds=delay), send_messages, rest, **send_job_options()
            )
            break
    if failure is not None:
        raise failure


def enqueue_sends_after_commit(messages: list[Message]) -> None:
    """Enqueue the sends of `messages` after commit, in batches (by send time)."""
    size = max(1, int(current_app.config.get("MESSAGING_BATCH_SIZE", 50)))
    by_time: dict[datetime | None, list[int]] = {}
    for message in messages:
        by_time.setdefault(message.send_at, []).append(message.id)
    for at, ids in by_time.items():
        for start in range(0, len(ids), size):
            options = send_job_options()
            if at is not None:
                options["at"] = at
            enqueue_after_commit(QUEUE, send_messages, ids[start : start + size], **options)


def _send(message_id: int) -> float | None:
    """Send one message unless it went already; return a delay when the rate limit says
    to come back later."""
    if not _claim(message_id):
        log.info("message %s: not due, done or held by another job", message_id)
        return
    _lock(message_id)
    message = db.session.get(Message, message_id, populate_existing=True)
    if message.status not in ("queued", "scheduled") or message.sid is not None:
        # Cancelled (or sent) between the claim and this transaction.
        message.lease_until = None
        db.session.commit()
        return
    conversation = message.conversation
    contact = conversation.contact
    optout = services.opted_out(contact.id, message.channel)
    if optout is not None or contact.deleted_at is not None:
        reason = (
            f"Not sent: the contact opted out ({optout.source})."
            if optout
            else "Not sent: the contact was deleted."
        )
        services.set_status(message, "canceled", source="send", reason=reason)
        message.lease_until = None
        db.session.commit()
        log.info("message %s cancelled before sending: %s", message_id, reason)
        return
    if message.status == "scheduled":
        message.status = "queued"
        db.session.add(MessageStatusEvent(message_id=message.id, status="queued", source="send"))
    if not message.content_sid and not conversation.window_open():
        services.set_status(message, "failed", source="send", error_code=63016)
        message.lease_until = None
        db.session.commit()
        return

    if message.dispatch_started_at is not None:
        # A job before this one called Twilio and died before recording the answer: ask
        # Twilio before sending anything. No transaction stays open over the call.
        lookup = {
            "to": _address(message),
            "from_": _sender_args(message).get("from_"),
            "since": message.dispatch_started_at - RECONCILE_SLACK,
            "body": None if message.content_sid else message.body,
        }
        db.session.commit()
        try:
            found = _reconcile(**lookup)
        except policy.CallError as exc:
            _give_up(message_id, error_reason=f"Retrying: {exc}")
            db.session.commit()
            raise
        if found is not None:
            _accepted(message_id, found, source="reconcile")
            log.info("message %s was already accepted by Twilio as %s", message_id, found["sid"])
            return
        _lock(message_id)
        message = db.session.get(Message, message_id, populate_existing=True)

    arguments = _call_arguments(message)
    message.dispatch_started_at = utcnow()
    message.dispatch_attempts = (message.dispatch_attempts or 0) + 1
    db.session.commit()  # the in-flight marker, before Twilio hears of the message
    # From here to the answer, touch no ORM attribute: that would open a read transaction.
    try:
        sent = twilio.send_message(**arguments)
    except policy.RateLimited as exc:
        # Nothing reached Twilio: clear the marker and come back when a token is due.
        _give_up(message_id, dispatch_started_at=None)
        db.session.commit()
        delay = max(0.2, exc.retry_after or 1.0)
        log.info("message %s waits %.1f s for the sender's rate limit", message_id, delay)
        return delay
    except policy.PermanentError as exc:
        # Twilio refused it: nothing was sent, and no retry would change that.
        code = exc.code if isinstance(exc.code, int) else None
        failed = _give_up(
            message_id,
            "failed",
            error_code=code,
            reason=_reason(exc, code),
            dispatch_started_at=None,
        )
        if code == 21610:
            services.opt_out(failed.conversation.contact, failed.channel, source="Twilio 21610")
        db.session.commit()
        log.warning("message %s failed for good: %s", message_id, exc)
        return
    except policy.TransientError as exc:
        # The marker stays: after a timeout Twilio may have the message; the retry asks.
        code = exc.code if isinstance(exc.code, int) else None
        if _retries_left() > 0:
            _give_up(message_id, error_reason=f"Retrying: {_reason(exc, code)}")
        else:
            _give_up(message_id, "failed", error_code=code, reason=_reason(exc, code))
        db.session.commit()
        log.warning("message %s attempt failed: %s", message_id, exc)
        raise
    _accepted(message_id, sent, source="twilio")
    log.info("message %s accepted by Twilio as %s", message_id, sent["sid"])


def warm_up() -> None:
    """Load what a send needs once in a worker, before it forks a horse per job.

    twilio-python loads its API modules lazily and SQLAlchemy maps the models on first
    use; in a forking worker every job would pay for both again (0.1-0.2 s a send).
    """
    from sqlalchemy.orm import configure_mappers
    from twilio.rest import Client

    # Reaching the messages list loads every module a send uses; no request is made.
    Client("AC" + "0" * 32, "warm-up").api.v2010.account.messages  # noqa: B018
    configure_mappers()
    # Compile the claim (it matches nothing: ids start at 1) and the sweep's query.
    _claim(0)
    db.session.rollback()


def _reason(exc: policy.CallError, code: int | None) -> str:
    if code in services.ERROR_REASONS:
        return services.ERROR_REASONS[code]
    return str(exc)


SWEEP_JOB = "messaging-sweep"


def schedule_sweep() -> str | None:
    """Schedule the next sweep unless it is already (one chain however many workers)."""
    interval = int(current_app.config.get("MESSAGING_SWEEP_INTERVAL_SECONDS", 60))
    return schedule_next(
        SWEEP_JOB, sweep_messages, interval=interval, queue=QUEUE, result_ttl=interval
    )


def _waiting_message_ids() -> set[int]:
    """Messages a send job still waits to handle: queued, or scheduled (send later, a
    rate-limit delay, a retry). Started jobs are left out: their worker may be dead, and
    sending again is safe (the claim and the in-flight marker see to that)."""
    queue = get_queue(QUEUE)
    ids = queue.get_job_ids() + ScheduledJobRegistry(queue=queue).get_job_ids(cleanup=False)
    waiting: set[int] = set()
    for job in Job.fetch_many(ids, connection=queue.connection):
        if job is None or not job.args:
            continue
        if job.func_name == f"{__name__}.send_message":
            waiting.add(job.args[0])
        elif job.func_name == f"{__name__}.send_messages":
            waiting.update(job.args[0])
    return waiting


def sweep_messages() -> int:
    """Re-enqueue every due outbound message no job holds or waits to handle (its job was
    lost with a worker that died).

    Runs every MESSAGING_SWEEP_INTERVAL_SECONDS; schedules its own next run first.
    """
    from jobs.campaigns import resume_campaigns

    schedule_sweep()
    resume_campaigns()
    now = utcnow()
    ids = db.session.scalars(
        sa.select(Message.id)
        .where(
            Message.direction == "outbound",
            Message.sid.is_(None),
            Message.status.in_(("queued", "scheduled")),
            sa.or_(Message.send_at.is_(None), Message.send_at <= now),
            sa.or_(Message.lease_until.is_(None), Message.lease_until < now),
            Message.created_at < now - timedelta(seconds=5),
        )
        .order_by(Message.id)
        .limit(10_000)
    ).all()
    db.session.rollback()
    if ids:
        waiting = _waiting_message_ids()
        ids = [message_id for message_id in ids if message_id not in waiting]
    for message_id in ids:
        enqueue_send(message_id)
    if ids:
        log.info("swept %d unsent message(s) back onto the queue", len(ids))
    return len(ids)
