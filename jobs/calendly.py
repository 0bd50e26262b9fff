"""Calendly jobs: "Sync now" pulls a coach's scheduled events for a date range."""

from __future__ import annotations

import logging
from datetime import datetime

from rq import Retry, get_current_job
from rq.job import Job, JobStatus

from crm.bookings import calendly
from crm.bookings.services import BookingError
from crm.database import utcnow
from crm.extensions import db
from crm.integrations import policy
from crm.users.models import User
from jobs import get_queue

log = logging.getLogger(__name__)

QUEUE = "sync"
PENDING = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)


def sync_job_id(coach_id: int) -> str:
    return f"calendly-sync-{coach_id}"


def sync_pending(coach_id: int) -> bool:
    """Whether the coach's sync job is waiting or running."""
    job = Job.fetch_many([sync_job_id(coach_id)], connection=get_queue(QUEUE).connection)[0]
    return job is not None and job.get_status(refresh=False) in PENDING


def enqueue_sync(coach_id: int, start: datetime, end: datetime) -> bool:
    """Queue a sync of the coach's events in [start, end]; False when one is already pending.

    Nothing is written before, so there is no commit to wait for. One job id per coach:
    a second click while one runs is refused instead of syncing twice.
    """
    if sync_pending(coach_id):
        return False
    get_queue(QUEUE).enqueue(
        sync_calendly,
        coach_id,
        start.isoformat(),
        end.isoformat(),
        job_id=sync_job_id(coach_id),
        retry=Retry(max=3, interval=[30, 120, 600]),
        job_timeout=900,
        result_ttl=600,
        failure_ttl=7 * 24 * 3600,
    )
    return True


def _record(coach_id: int, **values) -> None:
    connection = calendly.connection_for(coach_id)
    if connection is not None:
        for key, value in values.items():
            setattr(connection, key, value)
    db.session.commit()


def sync_calendly(coach_id: int, start_iso: str, end_iso: str) -> dict | None:
    """Pull the coach's Calendly events for the range; record the outcome on the connection."""
    coach = db.session.get(User, coach_id)
    if coach is None:
        log.info("calendly sync: coach %s is gone", coach_id)
        return None
    start, end = datetime.fromisoformat(start_iso), datetime.fromisoformat(end_iso)
    try:
        counts = calendly.sync_events(coach, start, end)
    except (BookingError, policy.PermanentError) as exc:
        # Not connected, needing reconnection, or a refused request: no retry fixes it.
        db.session.rollback()
        _record(coach_id, last_error=f"Sync failed: {exc}")
        log.warning("calendly sync of coach %s failed: %s", coach_id, exc)
        return None
    except policy.TransientError as exc:
        db.session.rollback()
        job = get_current_job()
        retrying = job is not None and (job.retries_left or 0) > 0
        _record(
            coach_id,
            last_error=f"Sync failed{' (will retry)' if retrying else ''}: {exc}",
        )
        raise
    _record(coach_id, last_synced_at=utcnow(), last_error=None)
    log.info("calendly sync of coach %s (%s to %s): %s", coach_id, start_iso, end_iso, counts)
    return counts
