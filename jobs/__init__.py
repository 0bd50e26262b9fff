"""Queues and enqueueing for RQ jobs.

Jobs are plain importable functions that take ids. Enqueue them with
`enqueue_after_commit` so a worker never sees a row that is not committed yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
    db.session().info.setdefault(_PENDING, []).append((queue, func, args, options))


@event.listens_for(Session, "after_commit")
def _enqueue_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING, [])
    for queue, func, args, options in pending:
        at = options.pop("at", None)
        if at is not None:
            job = get_queue(queue).enqueue_at(at, func, *args, **options)
        else:
            job = get_queue(queue).enqueue(func, *args, **options)
        log.info("enqueued %s on %s as %s", func.__name__, queue, job.id)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    dropped = session.info.pop(_PENDING, [])
    if dropped:
        log.info("dropped %d job(s) of a rolled-back transaction", len(dropped))
