"""Webhook events: read a verified delivery, store it once, enqueue it, replay it.

Services flush and never commit; views and jobs commit. One exception, the intake's hot
path: a new delivery's INSERT commits by itself (`store_delivery`, `crm.database.hot_write`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from typing import Any
from urllib.parse import parse_qsl

import sqlalchemy as sa
from flask import current_app
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus, Retry
from sqlalchemy.dialects import postgresql, sqlite
from werkzeug.datastructures import MultiDict

from crm.audit.services import record_change
from crm.database import hot_write, utcnow
from crm.extensions import db
from crm.redis_client import get_redis
from crm.users.models import User
from crm.webhooks.handlers import handler_for
from crm.webhooks.models import REPLAYABLE, WebhookEvent
from crm.webhooks.signatures import MalformedRequest
from jobs import enqueue_after_commit, enqueue_committed

QUEUE = "webhooks"
# Base seconds before retries 1..5; each gets +-25 % jitter when the job is enqueued.
DEFAULT_RETRY_INTERVALS = (30, 120, 480, 1920, 7680)
DEFAULT_MAX_RETRIES = 5
JOB_TIMEOUT = 120
STUCK_AFTER = timedelta(minutes=1)
# Request headers stored with an event: enough to debug a delivery, never a signature.
KEPT_HEADERS = (
    "Content-Type",
    "User-Agent",
    "I-Twilio-Idempotency-Token",
    "X-Twilio-Webhooks-Signature-Settings",
    "X-Cal-Webhook-Version",
)
_ACTIVE_JOB = {
    JobStatus.QUEUED.value,
    JobStatus.STARTED.value,
    JobStatus.SCHEDULED.value,
    JobStatus.DEFERRED.value,
}
_TWILIO_STATUS = re.compile(r"[a-z_]{1,40}")
MAX_ID = 255
MAX_TYPE = 100


@dataclass(frozen=True)
class Delivery:
    """What a verified request says, ready to store."""

    provider: str
    event_id: str
    kind: str
    event_type: str
    body: str
    headers: dict = field(default_factory=dict)


def kept_headers(headers) -> dict:
    return {name: headers[name][:500] for name in KEPT_HEADERS if headers.get(name)}


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRequest("the body is not UTF-8") from exc


def json_object(body: bytes) -> dict:
    try:
        data = json.loads(_text(body))
    except ValueError as exc:
        raise MalformedRequest("the body is not JSON") from exc
    if not isinstance(data, dict):
        raise MalformedRequest("the body is not a JSON object")
    return data


def _required(data: dict, key: str, what: str, limit: int = MAX_TYPE) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MalformedRequest(f"no {what} ({key}) in the body")
    if len(value) > limit:
        raise MalformedRequest(f"{key} is longer than {limit} characters")
    return value.strip()


def _digest(body: bytes | str) -> str:
    data = body.encode() if isinstance(body, str) else body
    return hashlib.sha256(data).hexdigest()


def _bounded_id(candidate: str) -> str:
    # Provider URIs can be long; a digest keeps the key stable and within the column.
    if len(candidate) <= MAX_ID:
        return candidate
    return f"sha256:{_digest(candidate)}"


def twilio_params(body: bytes) -> MultiDict:
    """Twilio's form parameters, URL-decoded, repeated names kept."""
    return MultiDict(parse_qsl(_text(body), keep_blank_values=True))


def read_twilio(kind: str, body: bytes, params: Any, headers) -> Delivery:
    """A Twilio inbound message (`messages`) or status callback (`status`)."""
    sid = params.get("MessageSid") or params.get("SmsSid")
    if not isinstance(sid, str) or not sid.strip() or len(sid) > 64:
        raise MalformedRequest("no MessageSid in the body")
    if kind == "status":
        status = params.get("MessageStatus") or params.get("SmsStatus")
        if not isinstance(status, str) or not _TWILIO_STATUS.fullmatch(status):
            raise MalformedRequest("no MessageStatus in the body")
        # One event per status: callbacks for one message arrive several times, unordered.
        event_id, event_type = f"{sid}:{status}", f"status.{status}"
    else:
        event_id, event_type = sid, "message.received"
    return Delivery("twilio", event_id, kind, event_type, _text(body), kept_headers(headers))


def read_stripe(body: bytes, headers) -> Delivery:
    """A Stripe event: its `id` (evt_…) and `type`."""
    data = json_object(body)
    event_id = _required(data, "id", "event id", MAX_ID)
    event_type = _required(data, "type", "event type")
    return Delivery("stripe", event_id, event_type, event_type, _text(body), kept_headers(headers))


def read_calendly(body: bytes, headers) -> Delivery:
    """A Calendly event; its id is the event name and the invitee's URI."""
    data = json_object(body)
    event_type = _required(data, "event", "event name")
    payload = data.get("payload") if isinstance(data.get("payload"), dict) else {}
    uri = payload.get("uri")
    if isinstance(uri, str) and uri.strip():
        event_id = _bounded_id(f"{event_type}:{uri.strip()}")
    else:
        event_id = _bounded_id(f"{event_type}:sha256:{_digest(body)}")
    return Delivery(
        "calendly", event_id, event_type, event_type, _text(body), kept_headers(headers)
    )


def read_calcom(body: bytes, headers) -> Delivery:
    """A Cal.com event; its id is the trigger, the booking's uid and when it was sent."""
    data = json_object(body)
    trigger = _required(data, "triggerEvent", "trigger")
    # MEETING_* events are not wrapped in `payload`: their fields sit at the top level.
    payload = data.get("payload") if isinstance(data.get("payload"), dict) else data
    ref = payload.get("uid") or payload.get("bookingUid") or payload.get("bookingId")
    if isinstance(ref, str | int) and not isinstance(ref, bool) and str(ref).strip():
        # createdAt tells apart two updates of one booking (no-show changes, say).
        sent = data.get("createdAt") if isinstance(data.get("createdAt"), str) else ""
        event_id = _bounded_id(f"{trigger}:{ref}:{sent}" if sent else f"{trigger}:{ref}")
    else:
        event_id = _bounded_id(f"{trigger}:sha256:{_digest(body)}")
    return Delivery("calcom", event_id, trigger, trigger, _text(body), kept_headers(headers))


def parse_payload(event: WebhookEvent) -> Any:
    """The event's body as handlers see it: a dict for JSON, a MultiDict for a form post."""
    content_type = (event.headers or {}).get("Content-Type", "")
    if event.provider == "twilio" and "json" not in content_type.lower():
        return MultiDict(parse_qsl(event.body, keep_blank_values=True))
    return json.loads(event.body)


# Storing and enqueueing


def retry_policy() -> Retry | None:
    """Exponential backoff with jitter, from WEBHOOK_MAX_RETRIES and WEBHOOK_RETRY_INTERVALS."""
    config = current_app.config
    retries = int(config.get("WEBHOOK_MAX_RETRIES", DEFAULT_MAX_RETRIES))
    if retries < 1:
        return None
    bases = list(config.get("WEBHOOK_RETRY_INTERVALS") or DEFAULT_RETRY_INTERVALS)
    # Jitter spreads the retries of a burst that failed together (a provider outage, say).
    intervals = [
        max(0, round(bases[min(i, len(bases) - 1)] * random.uniform(0.75, 1.25)))
        for i in range(retries)
    ]
    return Retry(max=retries, interval=intervals)


def enqueue_processing(event_id: int, *, unique: bool = True, committed: bool = False) -> None:
    """Process event `event_id` on the webhooks queue once the transaction commits.

    `unique=False` is for a row this transaction just inserted: the insert already let
    exactly one request through, so RQ's uniqueness check (a Lua script, one more round
    trip on the intake's hot path) has nothing left to catch. `committed=True` is for a
    row that committed on its own (`hot_write`): its job goes out now.
    """
    from jobs.webhooks import process_webhook

    enqueue = enqueue_committed if committed else enqueue_after_commit
    enqueue(
        QUEUE,
        process_webhook,
        event_id,
        job_id=f"webhook-{event_id}",
        unique=unique,
        retry=retry_policy(),
        job_timeout=JOB_TIMEOUT,
        # The row is the record of the outcome; a finished job need not linger in Redis.
        result_ttl=0,
    )


@cache
def _insert(dialect: str):
    # Built once per dialect: the intake's hot path runs it through `hot_write`.
    table = WebhookEvent.__table__
    if dialect == "postgresql":
        statement = postgresql.insert(table)
    elif dialect == "sqlite":
        statement = sqlite.insert(table)
    else:  # pragma: no cover - Rapport runs on these two
        raise RuntimeError(f"webhook intake does not support {dialect}")
    return statement.on_conflict_do_nothing(index_elements=["provider", "event_id"]).returning(
        table.c.id
    )


@dataclass(frozen=True)
class Stored:
    id: int
    created: bool
    status: str


def store_delivery(delivery: Delivery) -> Stored:
    """Insert the delivery unless its (provider, event id) is stored; enqueue a new one.

    Concurrent repeats race on the unique key, and the database lets exactly one insert
    through; the others find the row and do nothing else. The insert commits on its own
    (`crm.database.hot_write`) unless the session was handed a transaction to write in.
    """
    status = "received" if handler_for(delivery.provider, delivery.kind) else "ignored"
    rows, committed = hot_write(
        db.session,
        _insert(db.session.get_bind().dialect.name),
        {
            "provider": delivery.provider,
            "event_id": delivery.event_id,
            "kind": delivery.kind,
            "event_type": delivery.event_type,
            "body": delivery.body,
            "headers": delivery.headers,
            "received_at": utcnow(),
            "status": status,
            "attempts": 0,
        },
    )
    if rows:
        new_id = rows[0][0]
        if status == "received":
            enqueue_processing(new_id, unique=False, committed=committed)
        return Stored(new_id, True, status)
    row = db.session.execute(
        sa.select(WebhookEvent.id, WebhookEvent.status, WebhookEvent.received_at).where(
            WebhookEvent.provider == delivery.provider,
            WebhookEvent.event_id == delivery.event_id,
        )
    ).one()
    if (
        row.status == "received"
        and row.received_at < utcnow() - STUCK_AFTER
        and job_states([row.id]).get(row.id) not in _ACTIVE_JOB
    ):
        # Stored but never queued (Redis was down at the commit): the provider's retry
        # is the moment to queue it. Not sooner: a concurrent repeat lands here while
        # the first request is still between its commit and its enqueue.
        _discard_jobs([row.id])
        enqueue_processing(row.id)
    return Stored(row.id, False, row.status)


def last_deliveries(providers: Iterable[str]) -> dict[str, float | None]:
    """When each provider's last verified delivery arrived (epoch seconds), or None.

    Read from the stored deliveries, one seek each on (provider, received_at) in one
    statement, so the intake keeps no counter of accepted deliveries anywhere else.
    """
    providers = list(providers)
    if not providers:
        return {}
    latest = [
        sa.select(sa.func.max(WebhookEvent.received_at))
        .where(WebhookEvent.provider == provider)
        .scalar_subquery()
        for provider in providers
    ]
    row = db.session.execute(sa.select(*latest)).one()
    return {
        provider: (at.timestamp() if at is not None else None)
        for provider, at in zip(providers, row, strict=True)
    }


# Replay


def job_states(event_ids: list[int]) -> dict[int, str | None]:
    """The RQ status ("queued", "started", "failed"...) of each event's job, None if none."""
    jobs = Job.fetch_many([f"webhook-{i}" for i in event_ids], connection=get_redis())
    states = {}
    for event_id, job in zip(event_ids, jobs, strict=True):
        status = job.get_status(refresh=False) if job is not None else None
        states[event_id] = JobStatus(status).value if status else None
    return states


def _discard_jobs(event_ids: list[int]) -> None:
    """Delete the leftover jobs of these events so their ids can be enqueued again."""
    connection = get_redis()
    for event_id in event_ids:
        try:
            job = Job.fetch(f"webhook-{event_id}", connection=connection)
        except NoSuchJobError:
            continue
        if job.get_status(refresh=False) != JobStatus.STARTED.value:
            job.delete()


def requeue_stuck(limit: int = 1000) -> int:
    """Queue again the events stored as received over STUCK_AFTER ago whose job is gone.

    Redis down at the intake's commit leaves such a row (the provider got a 503 and may
    retry, or may not), as does a Redis that lost what it held. The oldest `limit` are
    checked. Returns how many were queued.
    """
    ids = list(
        db.session.scalars(
            sa.select(WebhookEvent.id)
            .where(
                WebhookEvent.status == "received",
                WebhookEvent.received_at < utcnow() - STUCK_AFTER,
            )
            .order_by(WebhookEvent.id)
            .limit(limit)
        )
    )
    if not ids:
        return 0
    states = job_states(ids)
    stuck = [event_id for event_id in ids if states[event_id] not in _ACTIVE_JOB]
    _discard_jobs(stuck)
    for event_id in stuck:
        enqueue_processing(event_id)
    return len(stuck)


def replayable(event: WebhookEvent, job_state: str | None) -> bool:
    """May `event` go through processing again now? Never while a worker is on it."""
    if job_state == JobStatus.STARTED.value:
        return False
    if event.status in REPLAYABLE:
        return True
    # Stuck: stored but its job is gone (lost enqueue, or a worker killed mid-run).
    return job_state not in _ACTIVE_JOB


def replay_events(ids: Iterable[int], *, actor: User | None) -> tuple[list[int], list[int]]:
    """Send events back to `received` with no attempts and enqueue them; (replayed, skipped)."""
    wanted = sorted({int(i) for i in ids})
    events = list(
        db.session.execute(sa.select(WebhookEvent).where(WebhookEvent.id.in_(wanted))).scalars()
    )
    states = job_states([e.id for e in events]) if events else {}
    replayed, skipped = [], [i for i in wanted if i not in {e.id for e in events}]
    for event in events:
        if not replayable(event, states.get(event.id)):
            skipped.append(event.id)
            continue
        # Only from the state we saw: of two admins replaying at once, one wins.
        claimed = db.session.execute(
            sa.update(WebhookEvent)
            .where(
                WebhookEvent.id == event.id,
                WebhookEvent.status == event.status,
                WebhookEvent.attempts == event.attempts,
            )
            .values(status="received", attempts=0, last_error=None, processed_at=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        if claimed != 1:
            skipped.append(event.id)
            continue
        record_change(
            "webhook.replayed",
            "webhook_event",
            event.id,
            {"status": [event.status, "received"], "attempts": [event.attempts, 0]},
            actor=actor,
        )
        replayed.append(event.id)
    _discard_jobs(replayed)
    for event_id in replayed:
        enqueue_processing(event_id)
    for event in events:
        db.session.expire(event)
    return replayed, sorted(skipped)


# Reading, for the admin pages

_SECRET_KEY = re.compile(
    r"token|secret|password|passwd|authorization|api[_-]?key|signature|cvc|cvv|"
    r"card[_-]?number|^number$|^pan$|ssn|private[_-]?key|credential",
    re.I,
)
_CARD = re.compile(r"\d(?:[ -]?\d){12,18}")
REDACTED = "[redacted]"


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _redact_value(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key or "") and value not in (None, "", [], {}):
        return REDACTED
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(key, v) for v in value]
    if isinstance(value, str) and _CARD.fullmatch(value.strip()):
        digits = re.sub(r"\D", "", value)
        if _luhn(digits):
            return REDACTED
    return value


def redacted_payload(event: WebhookEvent) -> str:
    """The body for people to read: pretty, with secrets and card numbers replaced."""
    try:
        payload = parse_payload(event)
    except ValueError:
        return REDACTED if _SECRET_KEY.search(event.body) else event.body
    if isinstance(payload, MultiDict):
        lines = [f"{k} = {_redact_value(k, v)}" for k, v in payload.items(multi=True)]
        return "\n".join(lines)
    return json.dumps(_redact_value("", payload), indent=2, ensure_ascii=False)


def redacted_headers(event: WebhookEvent) -> dict:
    return {k: _redact_value(k, v) for k, v in (event.headers or {}).items()}


def list_events(
    *,
    provider: str | None = None,
    status: str | None = None,
    event_type: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> tuple[list[WebhookEvent], int | None]:
    """Newest first, keyset by id; returns the page and the id to continue before."""
    query = sa.select(WebhookEvent)
    if provider:
        query = query.where(WebhookEvent.provider == provider)
    if status:
        query = query.where(WebhookEvent.status == status)
    if event_type:
        query = query.where(WebhookEvent.event_type == event_type)
    if before:
        query = query.where(WebhookEvent.id < before)
    rows = list(
        db.session.execute(query.order_by(WebhookEvent.id.desc()).limit(limit + 1)).scalars()
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


def count_dead() -> int:
    return db.session.execute(
        sa.select(sa.func.count()).select_from(WebhookEvent).where(WebhookEvent.status == "dead")
    ).scalar_one()
