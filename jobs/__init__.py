"""Queues and enqueueing for RQ jobs.

Jobs are plain importable functions that take ids. Enqueue them with
`enqueue_after_commit` so a worker never sees a row that is not committed yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rq import Queue
from sqlalchemy import event
from sqlalchemy.orm import Session

from crm.config import QUEUES
from crm.extensions import db
from crm.redis_client import get_redis

log = logging.getLogger(__name__)

_PENDING = "rapport_pending_jobs"


def get_queue(name: str = "default") -> Queue:
    """Return the RQ queue `name` on the application's Redis."""
    if name not in QUEUES:
        raise ValueError(f"unknown queue {name!r}; queues are {', '.join(QUEUES)}")
    return Queue(name, connection=get_redis())


def enqueue_after_commit(queue: str, func: Callable[..., Any], *args: Any, **options: Any) -> None:
    """Enqueue `func(*args)` on `queue` once the transaction commits; drop it on rollback.

    `at=<aware datetime>` schedules it for then instead (RQ's scheduler runs it).
    """
    get_queue(queue)  # fail now, inside the request, on a queue name typo
    _transaction().info.setdefault(_PENDING, []).append((queue, func, args, options))


def enqueue_committed(queue: str, func: Callable[..., Any], *args: Any, **options: Any) -> None:
    """Enqueue `func(*args)` on `queue` now: what it reads was committed without the session
    (a write that committed on its own, `crm.database.hot_write`)."""
    get_queue(queue)
    _send([(queue, func, args, options)])


def _transaction() -> Session:
    """The session, inside a transaction: a rollback before any SQL still drops what was
    registered, since Session.rollback() does nothing (no event) outside a transaction."""
    session = db.session()
    if not session.in_transaction():
        session.begin()
    return session


@event.listens_for(Session, "after_commit")
def _enqueue_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING, [])
    if pending:
        _send(pending)


def _send(pending: list) -> None:
    # Plain enqueues share one MULTI/EXEC. A scheduled or unique job goes on its own
    # afterwards (RQ schedules elsewhere, and checks uniqueness with a script), so a
    # DuplicateJobError it raises cannot lose what the pipeline carries.
    pipe = get_redis().pipeline()
    pipe.multi()
    queued, alone = [], []
    for queue, func, args, options in pending:
        if "at" in options or options.get("unique"):
            alone.append((queue, func, args, options))
            continue
        job = get_queue(queue).enqueue(func, *args, pipeline=pipe, **options)
        queued.append((func, queue, job))
    if len(pipe):
        pipe.execute()
    for func, queue, job in queued:
        log.info("enqueued %s on %s as %s", func.__name__, queue, job.id)
    for queue, func, args, options in alone:
        at = options.pop("at", None)
        if at is not None:
            job = get_queue(queue).enqueue_at(at, func, *args, **options)
        else:
            job = get_queue(queue).enqueue(func, *args, **options)
        log.info("enqueued %s on %s as %s", func.__name__, queue, job.id)


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, previous_transaction) -> None:
    # Every rollback() of the outermost transaction, even one that ran no SQL (so no
    # database rollback happened); a savepoint's rollback keeps the outer transaction's.
    if previous_transaction.parent is not None:
        return
    dropped = session.info.pop(_PENDING, [])
    if dropped:
        log.info("dropped %d job(s) of a rolled-back transaction", len(dropped))


def schedule_next(
    name: str, func: Callable[..., Any], *, interval: int, queue: str, **options: Any
) -> str | None:
    """Schedule `func` for the start of the next `interval`-second slot, once across processes.

    The slot number names the job (`<name>-<slot>`), and a SET NX claim on it in Redis
    lets only the first worker (or the previous run) that gets there schedule it: however
    many workers start, one chain of periodic jobs results. Return the job id when this
    call scheduled it.
    """
    if interval <= 0:
        return None
    slot = int(time.time() // interval) + 1
    if not get_redis().set(f"rapport:slot:{name}:{slot}", 1, nx=True, ex=2 * interval + 60):
        return None
    job_id = f"{name}-{slot}"
    get_queue(queue).enqueue_at(
        datetime.fromtimestamp(slot * interval, UTC), func, job_id=job_id, **options
    )
    return job_id
