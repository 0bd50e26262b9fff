"""Queues and enqueueing for RQ jobs.

Jobs are plain importable functions that take ids. Enqueue them with
`enqueue_after_commit` so a worker never sees a row that is not committed yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from rq import Queue, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry
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
    """Enqueue `func(*args)` on `queue` once the transaction commits; drop it on rollback."""
    get_queue(queue)  # fail now, inside the request, on a queue name typo
    db.session().info.setdefault(_PENDING, []).append((queue, func, args, options))


@event.listens_for(Session, "after_commit")
def _enqueue_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING, [])
    for queue, func, args, options in pending:
        job = get_queue(queue).enqueue(func, *args, **options)
        log.info("enqueued %s on %s as %s", func.__name__, queue, job.id)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    dropped = session.info.pop(_PENDING, [])
    if dropped:
        log.info("dropped %d job(s) of a rolled-back transaction", len(dropped))


def queue_overview() -> dict:
    """Queue depths, oldest waiting job, failures, workers and schedulers, for the health page."""
    r = get_redis()
    now = time.time()
    queues = []
    for name in QUEUES:
        q = Queue(name, connection=r)
        oldest_age = None
        first = q.get_job_ids(0, 0)
        if first:
            job = Job.fetch(first[0], connection=r)
            if job.enqueued_at is not None:
                oldest_age = max(0.0, now - job.enqueued_at.timestamp())
        queues.append(
            {
                "name": name,
                "waiting": q.count,
                "oldest_age_seconds": oldest_age,
                "failed": FailedJobRegistry(queue=q).count,
                "scheduler": bool(r.exists(f"rq:scheduler-lock:{name}")),
            }
        )
    workers = Worker.all(connection=r)
    return {"queues": queues, "workers": len(workers)}
