"""CRM sync: push contacts to the external CRM, coalesced, batched and recorded per contact.

Changed contact ids wait in a Redis set; the first change of a quiet period claims a flush
job due `CRM_SYNC_DELAY_SECONDS` later, so many edits of one contact make one push. The
flush reloads each contact and pushes its current state: live contacts are upserted by
email, or by phone when they have no email (the API can upsert by nothing else);
deleted ones (trashed, merged away or purged) are archived by their CRM id. Pushing the
same state twice updates one record, so a retry never duplicates anything.

Services flush, never commit: the jobs in `jobs/crm_sync.py` commit after each batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import redis
import sqlalchemy as sa
from flask import current_app
from rq import Retry
from sqlalchemy.exc import IntegrityError

from crm.contacts.models import Contact
from crm.crm_sync.models import CrmSyncRun, CrmSyncState
from crm.database import utcnow
from crm.extensions import db
from crm.integrations import crm_sync_api, policy
from crm.redis_client import get_redis
from crm.users.models import User
from jobs import enqueue_after_commit, get_queue

log = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE = "sync"
BATCH = crm_sync_api.BATCH_LIMIT
PREFIX = "rapport:crm_sync:"
PENDING_KEY = f"{PREFIX}pending"  # contact ids changed since the last flush
CLAIM_KEY = f"{PREFIX}flush-claim"  # held while a flush is scheduled and not started
WINDOW_KEY = f"{PREFIX}window"  # numbers the flush jobs: crm-sync-flush-<n>
# The claim outlives its delay by this much: a flush lost with its worker frees the slot.
CLAIM_MARGIN = 60
DEFAULT_DELAY = 5
DEFAULT_RETRY_INTERVALS = (5, 30, 120, 600, 1800)  # the last one repeats
# How long a push waits for a rate-limit token before it gives the batch back for later.
MAX_RATE_WAIT = 5.0
FLUSH_TIMEOUT = 600
RESYNC_TIMEOUT = 6 * 3600
# A run not heard from for this long lost its worker; a new one may replace it.
STALE_AFTER = timedelta(minutes=30)
MAX_ERROR = 1000
NEEDS_KEY = "needs an email or phone"


class SyncError(Exception):
    """A request the CRM sync cannot take (not configured, a run already going)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class PushResult:
    """Contact ids by outcome of one push."""

    synced: list[int] = field(default_factory=list)
    archived: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.synced) + len(self.archived) + len(self.unchanged)


# --- configuration ----------------------------------------------------------------------


def enabled() -> bool:
    """Whether CRM sync is configured (its URL and token are set)."""
    return not crm_sync_api.missing_settings()


def flush_delay() -> float:
    """Seconds edits are collected before one push (CRM_SYNC_DELAY_SECONDS)."""
    return max(0.0, float(current_app.config.get("CRM_SYNC_DELAY_SECONDS", DEFAULT_DELAY)))


def retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """Backoff before retry `attempt` (0-based), with jitter, never before `retry_after`."""
    intervals = list(current_app.config.get("CRM_SYNC_RETRY_INTERVALS") or DEFAULT_RETRY_INTERVALS)
    base = intervals[min(attempt, len(intervals) - 1)]
    # Jitter spreads the retries of many workers that met the same outage.
    return max(base * random.uniform(0.75, 1.25), retry_after or 0.0)


def resync_retry() -> Retry:
    intervals = list(current_app.config.get("CRM_SYNC_RETRY_INTERVALS") or DEFAULT_RETRY_INTERVALS)
    return Retry(max=len(intervals), interval=[round(i) for i in intervals])


# --- queueing ---------------------------------------------------------------------------


def queue_contacts(contact_ids: Iterable[int]) -> str | None:
    """Note changed contacts and make sure a flush will push them; return a new flush's id.

    Called after the commit that changed them. Does nothing when sync is not configured.
    """
    ids = sorted({int(i) for i in contact_ids})
    if not ids or not enabled():
        return None
    get_redis().sadd(PENDING_KEY, *ids)
    return schedule_flush()


def schedule_flush(*, delay: float | None = None, attempt: int = 0) -> str | None:
    """Enqueue a flush unless one is already waiting; return its job id when this call did.

    A retry (`delay` given) takes the slot even when it is held: the waiting flush would
    only meet the same outage sooner.
    """
    redis = get_redis()
    retrying = delay is not None
    delay = flush_delay() if delay is None else max(0.0, delay)
    # rq 2.12 ignores unique=True for scheduled jobs, so a SET NX claim dedupes instead.
    claimed = redis.set(CLAIM_KEY, attempt, ex=int(delay) + CLAIM_MARGIN, nx=not retrying)
    if not claimed:
        return None
    from jobs.crm_sync import flush_contacts

    job_id = f"crm-sync-flush-{redis.incr(WINDOW_KEY)}"
    options = {
        "job_id": job_id,
        "job_timeout": FLUSH_TIMEOUT,
        "result_ttl": 0,  # the states are the record
        "failure_ttl": 7 * 24 * 3600,
        # Unexpected failures only (the database away): outages reschedule themselves.
        "retry": Retry(max=3, interval=[10, 60, 300]),
    }
    queue = get_queue(QUEUE)
    if delay > 0:
        queue.enqueue_in(timedelta(seconds=delay), flush_contacts, attempt, **options)
    else:
        queue.enqueue(flush_contacts, attempt, **options)
    return job_id


def start_flush() -> None:
    """A flush has started: edits from now on open a new window."""
    get_redis().delete(CLAIM_KEY)


def take_pending(limit: int = BATCH) -> list[int]:
    """Remove and return up to `limit` changed contact ids."""
    return sorted(int(i) for i in get_redis().spop(PENDING_KEY, limit) or [])


def give_back(contact_ids: Iterable[int]) -> None:
    """Return ids taken by a flush that could not push them."""
    ids = list(contact_ids)
    if ids:
        get_redis().sadd(PENDING_KEY, *ids)


def discard_pending() -> None:
    """Forget queued changes (sync was switched off: nothing may stay in Redis for it)."""
    get_redis().delete(PENDING_KEY, CLAIM_KEY)


def is_pending(contact_id: int) -> bool:
    return bool(get_redis().sismember(PENDING_KEY, contact_id))


# --- what is pushed ---------------------------------------------------------------------


def contact_input(contact: Contact) -> dict | None:
    """The batch-upsert input for a contact, or None when it has neither email nor phone.

    Email is the id property when there is one (what HubSpot-style CRMs key contacts on);
    phone otherwise. Empty strings clear a value the contact no longer has.
    """
    first, _, last = (contact.name or "").strip().partition(" ")
    properties = {
        "email": contact.email or "",
        "phone": contact.phone or "",
        "firstname": first,
        "lastname": last.strip(),
    }
    if contact.email:
        return {"idProperty": "email", "id": contact.email, "properties": properties}
    if contact.phone:
        return {"idProperty": "phone", "id": contact.phone, "properties": properties}
    return None


def _key(item: dict) -> tuple[str, str]:
    value = str(item["id"]).strip()
    return item["idProperty"], value.lower() if item["idProperty"] == "email" else value


def _digest(item: dict) -> str:
    return hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()


@dataclass
class _Upsert:
    contact_id: int
    state: CrmSyncState
    item: dict
    digest: str


# --- pushing ----------------------------------------------------------------------------


def _patient(fn: Callable[[], T]) -> T:
    """Run one CRM call, waiting briefly for a rate-limit token instead of giving up."""
    waited = 0.0
    while True:
        try:
            return fn()
        except policy.RateLimited as exc:
            pause = max(0.05, exc.retry_after or 0.5)
            if waited + pause > MAX_RATE_WAIT:
                raise
            time.sleep(pause)
            waited += pause


def _refusal(exc: policy.CallError) -> str:
    """The CRM's own words for a refused request, when its body has them."""
    response = getattr(exc.__cause__, "response", None)
    message = None
    if response is not None:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            message = body.get("message")
    text = f"The CRM refused it: {message or exc.message}"
    if exc.status is not None:
        text += f" (HTTP {exc.status})"
    return text[:MAX_ERROR]


def _record_error(state: CrmSyncState, message: str) -> None:
    state.last_error = message[:MAX_ERROR]
    state.error_at = utcnow()


def _states_for(contact_ids: list[int]) -> dict[int, CrmSyncState]:
    query = sa.select(CrmSyncState).where(CrmSyncState.contact_id.in_(contact_ids))
    return {state.contact_id: state for state in db.session.execute(query).scalars()}


def _state(states: dict[int, CrmSyncState], contact_id: int) -> CrmSyncState:
    state = states.get(contact_id)
    if state is None:
        state = CrmSyncState(contact_id=contact_id)
        db.session.add(state)
        states[contact_id] = state
    return state


def push_contacts(contact_ids: Iterable[int], *, force: bool = False) -> PushResult:
    """Push the current state of up to 100 contacts and record the outcome on each.

    Contacts whose pushed input has not changed since their last successful push are
    skipped unless `force`. Raises policy.TransientError (nothing recorded) when the CRM
    cannot be reached; the caller gives the ids back for a later attempt.
    """
    ids = sorted({int(i) for i in contact_ids})
    if len(ids) > BATCH:
        raise ValueError(f"at most {BATCH} contacts per push, got {len(ids)}")
    result = PushResult()
    if not ids:
        return result
    contacts = {
        c.id: c
        for c in db.session.execute(
            sa.select(Contact).where(Contact.id.in_(ids)).execution_options(populate_existing=True)
        ).scalars()
    }
    states = _states_for(ids)
    upserts: list[_Upsert] = []
    archives: list[CrmSyncState] = []
    for contact_id in ids:
        contact = contacts.get(contact_id)
        if contact is None:
            continue  # purged: its state row has lost its contact; archive_orphans takes it
        if contact.deleted_at is not None:
            state = states.get(contact_id)
            if state is not None and state.crm_id and state.archived_at is None:
                archives.append(state)
            elif state is not None:
                state.last_error = None  # nothing in the CRM to remove
            result.archived.append(contact_id)
            continue
        item = contact_input(contact)
        if item is None:
            _record_error(_state(states, contact_id), f"Not synced: {NEEDS_KEY}.")
            result.failed.append(contact_id)
            continue
        state = _state(states, contact_id)
        digest = _digest(item)
        unchanged = (
            state.pushed_digest == digest
            and state.crm_id
            and not state.last_error
            and state.archived_at is None
        )
        if unchanged and not force:
            result.unchanged.append(contact_id)
            continue
        upserts.append(_Upsert(contact_id, state, item, digest))

    failed_archives = _archive(archives)
    result.archived = [i for i in result.archived if i not in failed_archives]
    result.failed += failed_archives
    # Two contacts sharing an email are one CRM record, and the API refuses a batch that
    # names it twice: each goes in its own call, the later one winning.
    for batch in _without_repeated_keys(upserts):
        synced, failed = _upsert(batch)
        result.synced += synced
        result.failed += failed
    db.session.flush()
    return result


def _without_repeated_keys(upserts: list[_Upsert]) -> list[list[_Upsert]]:
    batches: list[list[_Upsert]] = []
    keys: list[set] = []
    for upsert in upserts:
        key = _key(upsert.item)
        for batch, seen in zip(batches, keys, strict=True):
            if key not in seen:
                batch.append(upsert)
                seen.add(key)
                break
        else:
            batches.append([upsert])
            keys.append({key})
    return batches


def _upsert(batch: list[_Upsert]) -> tuple[list[int], list[int]]:
    """Upsert one batch; on a 400 find the refused input(s) by halving. Return (ok, failed)."""
    try:
        results = _patient(lambda: crm_sync_api.batch_upsert([u.item for u in batch]))
    except policy.PermanentError as exc:
        if exc.status == 400 and len(batch) > 1:
            # The API does not say which input it refused: halve until it is found.
            middle = len(batch) // 2
            first_ok, first_failed = _upsert(batch[:middle])
            second_ok, second_failed = _upsert(batch[middle:])
            return first_ok + second_ok, first_failed + second_failed
        message = _refusal(exc)
        for upsert in batch:
            _record_error(upsert.state, message)
        log.warning("CRM refused contacts %s: %s", [u.contact_id for u in batch], message)
        return [], [u.contact_id for u in batch]

    by_key = {}
    for position, record in enumerate(results):
        properties = record.get("properties") or {}
        for name in ("email", "phone"):
            if properties.get(name):
                by_key.setdefault(_key({"idProperty": name, "id": properties[name]}), record)
        by_key.setdefault(("position", position), record)
    now = utcnow()
    replaced: list[tuple[CrmSyncState, str]] = []
    synced, failed = [], []
    for position, upsert in enumerate(batch):
        # Results need not come back in input order: match them by the id property.
        record = by_key.get(_key(upsert.item)) or by_key.get(("position", position))
        if record is None or not record.get("id"):
            _record_error(upsert.state, "The CRM did not return this contact.")
            failed.append(upsert.contact_id)
            continue
        state = upsert.state
        crm_id = str(record["id"])
        if state.crm_id and state.crm_id != crm_id and state.archived_at is None:
            # The email changed: the CRM made a new record; retire the old one.
            replaced.append((state, state.crm_id))
        state.crm_id = crm_id
        state.synced_at = now
        state.archived_at = None
        state.last_error = None
        state.error_at = None
        state.pushed_digest = upsert.digest
        synced.append(upsert.contact_id)
    if replaced:
        db.session.flush()
        old_ids = [crm_id for _, crm_id in replaced]
        shared = _held_elsewhere(old_ids, exclude=[state.id for state, _ in replaced])
        retired = sorted(set(old_ids) - shared)
        if retired:
            try:
                _patient(lambda: crm_sync_api.batch_archive(retired))
            except policy.PermanentError as exc:
                log.warning("could not archive replaced CRM records %s: %s", retired, exc)
    return synced, failed


def _held_elsewhere(crm_ids: list[str], *, exclude: list[int]) -> set[str]:
    """CRM ids another live contact still syncs to (duplicates sharing an email)."""
    if not crm_ids:
        return set()
    query = (
        sa.select(CrmSyncState.crm_id)
        .join(Contact, Contact.id == CrmSyncState.contact_id)
        .where(
            CrmSyncState.crm_id.in_(crm_ids),
            CrmSyncState.archived_at.is_(None),
            Contact.deleted_at.is_(None),
        )
    )
    if exclude:
        query = query.where(CrmSyncState.id.not_in(exclude))
    return set(db.session.execute(query).scalars())


def _archive(states: list[CrmSyncState]) -> list[int]:
    """Archive these states' CRM records; return the contact ids that failed."""
    if not states:
        return []
    db.session.flush()
    shared = _held_elsewhere([s.crm_id for s in states], exclude=[s.id for s in states])
    crm_ids = sorted({s.crm_id for s in states} - shared)
    try:
        _patient(lambda: crm_sync_api.batch_archive(crm_ids))
    except policy.PermanentError as exc:
        message = _refusal(exc)
        for state in states:
            _record_error(state, message)
        return [s.contact_id for s in states if s.contact_id is not None]
    now = utcnow()
    for state in states:
        state.archived_at = now
        state.synced_at = now
        state.pushed_digest = None
        state.last_error = None
        state.error_at = None
    return []


def archive_orphans() -> int:
    """Archive the CRM records of purged contacts and forget them; return how many.

    Raises policy.TransientError when the CRM cannot be reached; they wait for next time.
    """
    count = 0
    while True:
        orphans = list(
            db.session.execute(
                sa.select(CrmSyncState)
                .where(CrmSyncState.contact_id.is_(None))
                .order_by(CrmSyncState.id)
                .limit(BATCH)
            ).scalars()
        )
        if not orphans:
            return count
        live = [s for s in orphans if s.crm_id and s.archived_at is None]
        if live:
            failed = _archive(live)
            if failed or any(s.last_error for s in live):
                # Nobody can see an error on a contact that is gone: log it, then let go.
                log.warning("CRM refused to archive purged contacts' records %s", live)
        for state in orphans:
            db.session.delete(state)
        db.session.flush()
        count += len(live)


def record_unavailable(contact_ids: Iterable[int], exc: policy.CallError) -> None:
    """Note on each contact that the CRM could not be reached and a retry is due."""
    ids = sorted({int(i) for i in contact_ids})
    if not ids:
        return
    live = set(
        db.session.execute(
            sa.select(Contact.id).where(Contact.id.in_(ids), Contact.deleted_at.is_(None))
        ).scalars()
    )
    states = _states_for(ids)
    for contact_id in ids:
        if contact_id in live or contact_id in states:
            _record_error(_state(states, contact_id), f"CRM unavailable, will retry: {exc}")
    db.session.flush()


# --- what the pages show ----------------------------------------------------------------


def contact_sync_state(contact_id: int) -> dict:
    """For the contact page: configured or what is missing, the stored state, pending."""
    missing = crm_sync_api.missing_settings()
    state = db.session.execute(
        sa.select(CrmSyncState).where(CrmSyncState.contact_id == contact_id)
    ).scalar_one_or_none()
    pending = False
    if not missing:
        try:
            pending = is_pending(contact_id)
        except redis.RedisError:  # the page renders without it
            log.warning("could not read the CRM sync queue", exc_info=True)
    return {"missing": missing, "state": state, "pending": pending}


# --- resync all -------------------------------------------------------------------------


def latest_run() -> CrmSyncRun | None:
    return db.session.execute(
        sa.select(CrmSyncRun).order_by(CrmSyncRun.id.desc()).limit(1)
    ).scalar_one_or_none()


def _running_run() -> CrmSyncRun | None:
    return db.session.execute(
        sa.select(CrmSyncRun).where(CrmSyncRun.finished_at.is_(None)).limit(1)
    ).scalar_one_or_none()


def finish_run(run: CrmSyncRun, *, error: str | None = None) -> None:
    """Mark a run finished (with its error, when it stopped early)."""
    run.finished_at = utcnow()
    run.running = None
    if error is not None:
        run.error = error[:MAX_ERROR]
    run.total = max(run.total, run.done + run.failed)


def start_resync(*, actor: User) -> CrmSyncRun:
    """Start pushing every live contact again, as a job; refuse while another run goes."""
    missing = crm_sync_api.missing_settings()
    if missing:
        raise SyncError(f"CRM sync is not configured: {', '.join(missing)} missing.")
    current = _running_run()
    if current is not None:
        if utcnow() - current.updated_at < STALE_AFTER:
            raise SyncError("A resync is already running. Wait for it to finish.")
        finish_run(current, error="Interrupted: its worker stopped before the end.")
        db.session.flush()
    total = db.session.execute(
        sa.select(sa.func.count()).select_from(Contact).where(Contact.deleted_at.is_(None))
    ).scalar_one()
    run = CrmSyncRun(started_by_id=actor.id, total=total, running=True)
    try:
        with db.session.begin_nested():
            db.session.add(run)
    except IntegrityError as exc:  # another admin's run started in between
        raise SyncError("A resync is already running. Wait for it to finish.") from exc
    from jobs.crm_sync import resync_contacts

    enqueue_after_commit(
        QUEUE,
        resync_contacts,
        run.id,
        job_id=run.job_id,
        unique=True,
        retry=resync_retry(),
        job_timeout=RESYNC_TIMEOUT,
        result_ttl=0,
        failure_ttl=7 * 24 * 3600,
    )
    return run


def next_batch(run: CrmSyncRun) -> list[int]:
    """The next (up to) 100 live contact ids after the run's position, by id (keyset)."""
    return list(
        db.session.execute(
            sa.select(Contact.id)
            .where(Contact.deleted_at.is_(None), Contact.id > run.last_contact_id)
            .order_by(Contact.id)
            .limit(BATCH)
        ).scalars()
    )
