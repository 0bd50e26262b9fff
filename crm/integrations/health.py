"""What the integration-health page shows: providers, core services, queues and workers.

Plain functions returning dicts; the page and the probe job read them, nothing writes here
except `requeue_failed_job` and `delete_failed_job`.
"""

from __future__ import annotations

import time

import redis
from flask import current_app
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from sqlalchemy.exc import SQLAlchemyError

from crm.config import QUEUES
from crm.integrations import calendly, crm_sync_api, metrics, policy, stripe, twilio
from crm.redis_client import get_redis
from crm.webhooks.services import last_deliveries


def _own(settings: tuple[str, ...]) -> list[tuple[str, str]]:
    """A provider module's own settings, each set by the variable of the same name."""
    return [(name, name) for name in settings]


# Settings each provider needs: (config key, the environment variable to set).
# "required" makes calls possible; "webhook" lets its webhook endpoint verify deliveries.
PROVIDERS: list[dict] = [
    {
        "name": "twilio",
        "label": "Twilio",
        "required": _own(twilio.SETTINGS),
        # Twilio signs webhooks with the auth token; the URL it signs is PUBLIC_BASE_URL's.
        "webhook": [("PUBLIC_BASE_URL", "PUBLIC_BASE_URL")],
        "calls": True,
    },
    {
        "name": "stripe",
        "label": "Stripe",
        "required": _own(stripe.SETTINGS),
        "webhook": [("STRIPE_WEBHOOK_SECRETS", "STRIPE_WEBHOOK_SECRET")],
        "calls": True,
    },
    {
        "name": "calendly",
        "label": "Calendly",
        "required": _own(calendly.SETTINGS),
        "webhook": [("CALENDLY_WEBHOOK_SIGNING_KEY", "CALENDLY_WEBHOOK_SIGNING_KEY")],
        "calls": True,
    },
    {
        "name": "calcom",
        "label": "Cal.com",
        "required": [("CALCOM_WEBHOOK_SECRET", "CALCOM_WEBHOOK_SECRET")],
        "webhook": [],
        "calls": False,  # webhooks only: Rapport never calls Cal.com
    },
    {
        "name": "google",
        "label": "Google sign-in",
        "required": [
            ("GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_ID"),
            ("GOOGLE_CLIENT_SECRET", "GOOGLE_CLIENT_SECRET"),
        ],
        "webhook": None,
        "calls": True,
    },
    {
        "name": "crm_sync",
        "label": "CRM sync",
        "required": _own(crm_sync_api.SETTINGS),
        "webhook": None,
        "calls": True,
    },
]

WEBHOOK_PROVIDERS = frozenset(p["name"] for p in PROVIDERS if p["webhook"] is not None)

# An hour with at least this share of failed calls shows the integration as degraded.
DEGRADED_ERROR_RATE = 0.05
# A queue whose oldest job has waited this long is falling behind.
SLOW_QUEUE_SECONDS = 300
FAILED_JOBS_SHOWN = 20


def _missing(settings: list[tuple[str, str]]) -> list[str]:
    config = current_app.config
    return [f"{env} is not set" for key, env in settings if not config.get(key)]


def missing_settings(name: str) -> list[str]:
    """What stops provider `name` from working, as sentences naming the variables to set."""
    provider = next(p for p in PROVIDERS if p["name"] == name)
    return _missing(provider["required"])


def is_configured(name: str) -> bool:
    return not missing_settings(name)


def _provider_status(configured: bool, breaker: dict, summary: dict) -> tuple[str, str | None]:
    """Return (status, why) from what is known: breaker, latest probe, error rate."""
    if not configured:
        return "not_configured", None
    if breaker["state"] == "open":
        return "down", "circuit breaker open after repeated failures"
    last_probe_ok = summary["last_probe_ok"]
    probe_at = summary["last_probe_at"] or 0
    success_at = summary["last_success_at"] or 0
    if last_probe_ok is False and success_at < probe_at:
        return "down", summary["last_probe_error"] or "the last probe failed"
    if breaker["state"] == "half_open":
        return "degraded", "circuit breaker testing recovery"
    hour = summary["hour"]
    if hour["errors"] and (hour["error_rate"] or 0) >= DEGRADED_ERROR_RATE:
        return "degraded", f"{hour['error_rate']:.0%} of calls failed in the last hour"
    if last_probe_ok is False:
        return "degraded", "the last probe failed"
    return "ok", None


def demo_url(name: str) -> str | None:
    """Where provider `name`'s local fake runs in demo mode (`flask serve`), else None."""
    config = current_app.config
    if name == "twilio" and config.get("TWILIO_DEMO") and is_configured(name):
        return config.get("TWILIO_API_BASE")
    return None


def _calendly_connections(status: str, reason: str | None) -> tuple[str, str | None]:
    """Coaches whose Calendly connection must be renewed make the card degraded."""
    from crm.bookings.calendly import connections_needing_reconnect

    try:
        stale = connections_needing_reconnect()
    except SQLAlchemyError:
        return status, reason  # the database card says why
    if not stale:
        return status, reason
    names = ", ".join(c.coach.display_name for c in stale)
    note = f"needs reconnection: {names} must reconnect Calendly"
    return ("degraded" if status == "ok" else status), (f"{reason}; {note}" if reason else note)


def integration_status() -> list[dict]:
    """One entry per provider: configured or not (and what is missing), status, metrics."""
    try:
        received = {
            name: {"last_webhook_at": at}
            for name, at in last_deliveries(sorted(WEBHOOK_PROVIDERS)).items()
        }
    except SQLAlchemyError:
        received = {}  # the database card says why; the webhook lines say "unknown"
    entries = []
    for provider in PROVIDERS:
        name = provider["name"]
        missing = _missing(provider["required"])
        webhook_missing = _missing(provider["webhook"]) if provider["webhook"] else []
        summary = {**metrics.summary(name), **received.get(name, {})}
        breaker = policy.breaker_state(name)
        status, reason = _provider_status(not missing, breaker, summary)
        if name == "calendly" and not missing:
            status, reason = _calendly_connections(status, reason)
        spark = metrics.sparkline(name) if provider["calls"] else []
        entries.append(
            {
                "name": name,
                "label": provider["label"],
                "configured": not missing,
                "missing": missing,
                "demo_url": demo_url(name),
                "webhooks": provider["webhook"] is not None,
                "webhook_missing": webhook_missing,
                "calls": provider["calls"],
                "status": status,
                "reason": reason,
                "breaker": breaker,
                "metrics": summary,
                "sparkline": spark,
                "spark": sparkline_points(spark),
            }
        )
    return entries


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


def _failed_jobs(queue: Queue, registry: FailedJobRegistry) -> list[dict]:
    # Latest failures first: the registry is scored by expiry, which follows failure time.
    ids = [
        raw.decode() for raw in queue.connection.zrevrange(registry.key, 0, FAILED_JOBS_SHOWN - 1)
    ]
    jobs = Job.fetch_many(ids, connection=queue.connection) if ids else []
    failed = []
    for job_id, job in zip(ids, jobs, strict=True):
        if job is None:  # expired between the two reads
            continue
        try:
            func = job.func_name
        except (ValueError, AttributeError):  # an unloadable payload still gets listed
            func = "?"
        result = job.latest_result()
        failed.append(
            {
                "id": job_id,
                "func": func,
                "error": _last_line(result.exc_string if result is not None else None),
                "failed_at": job.ended_at.timestamp() if job.ended_at else None,
            }
        )
    return failed


def queue_status() -> dict:
    """Queues (depth, oldest waiting job, failed jobs), workers and the scheduler."""
    r = get_redis()
    now = time.time()
    workers = Worker.all(connection=r)
    served = {name for worker in workers for name in worker.queue_names()}
    queues = []
    for name in QUEUES:
        queue = Queue(name, connection=r)
        oldest_age = None
        first = queue.get_job_ids(0, 0)
        if first:
            try:
                job = Job.fetch(first[0], connection=r)
            except NoSuchJobError:
                job = None
            if job is not None and job.enqueued_at is not None:
                oldest_age = max(0.0, now - job.enqueued_at.timestamp())
        registry = FailedJobRegistry(queue=queue)
        failed_count = registry.count
        waiting = queue.count
        if waiting and name not in served:
            status, reason = "down", "no worker serves this queue"
        elif oldest_age is not None and oldest_age > SLOW_QUEUE_SECONDS:
            status, reason = "degraded", "jobs are waiting longer than 5 minutes"
        elif failed_count:
            status, reason = "degraded", "failed jobs need attention"
        else:
            status, reason = "ok", None
        queues.append(
            {
                "name": name,
                "waiting": waiting,
                "oldest_age_seconds": oldest_age,
                "failed": failed_count,
                "failed_jobs": _failed_jobs(queue, registry) if failed_count else [],
                "scheduled": ScheduledJobRegistry(queue=queue).count,
                "scheduler": bool(r.exists(f"rq:scheduler-lock:{name}")),
                "served": name in served,
                "status": status,
                "reason": reason,
            }
        )
    worker_rows = [
        {
            "name": worker.name,
            "state": worker.get_state(),
            "queues": worker.queue_names(),
            "current_job": worker.get_current_job_id(),
        }
        for worker in workers
    ]
    unserved = [q["name"] for q in queues if not q["served"]]
    if not workers:
        workers_status, workers_reason = "down", "no worker is running"
    elif unserved:
        workers_status = "degraded"
        workers_reason = f"no worker serves {', '.join(unserved)}"
    else:
        workers_status, workers_reason = "ok", None
    scheduled = [q["name"] for q in queues if q["scheduler"]]
    if len(scheduled) == len(queues):
        scheduler_status, scheduler_reason = "ok", None
    elif scheduled:
        scheduler_status = "degraded"
        scheduler_reason = f"no scheduler for {', '.join(q for q in QUEUES if q not in scheduled)}"
    else:
        scheduler_status = "down"
        scheduler_reason = "no scheduler is running: retries and probes wait"
    return {
        "queues": queues,
        "workers": worker_rows,
        "workers_status": workers_status,
        "workers_reason": workers_reason,
        "scheduler_status": scheduler_status,
        "scheduler_reason": scheduler_reason,
        "next_probe_at": _next_probe_at(r),
    }


def _next_probe_at(r: redis.Redis) -> float | None:
    from jobs.health import PROBE_QUEUE, next_probe_at

    return next_probe_at(Queue(PROBE_QUEUE, connection=r))


def _failed_registry(queue_name: str) -> FailedJobRegistry:
    if queue_name not in QUEUES:
        raise LookupError(queue_name)
    return FailedJobRegistry(queue=Queue(queue_name, connection=get_redis()))


def requeue_failed_job(queue_name: str, job_id: str) -> None:
    """Put a failed job back on its queue; LookupError when it is not a failed job there."""
    registry = _failed_registry(queue_name)
    if job_id not in registry:
        raise LookupError(job_id)
    registry.requeue(job_id)


def delete_failed_job(queue_name: str, job_id: str) -> None:
    """Forget a failed job; LookupError when it is not a failed job there."""
    registry = _failed_registry(queue_name)
    if job_id not in registry:
        raise LookupError(job_id)
    registry.remove(job_id, delete_job=True)


def sparkline_points(values: list[float | None], width: int = 120, height: int = 28) -> dict:
    """SVG coordinates for a latency sparkline: polylines over runs of data, lone dots.

    Gaps (None: no calls in that bucket) break the line rather than drawing a zero.
    """
    known = [v for v in values if v is not None]
    if not known or len(values) < 2:
        return {"lines": [], "dots": [], "max": None, "last": None}
    top = max(known) or 1.0
    step = width / (len(values) - 1)
    pad = 2

    def point(i: int, value: float) -> tuple[float, float]:
        y = height - pad - (value / top) * (height - 2 * pad)
        return round(i * step, 1), round(y, 1)

    runs: list[list[tuple[float, float]]] = [[]]
    for i, value in enumerate(values):
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append(point(i, value))
    lines = [" ".join(f"{x},{y}" for x, y in run) for run in runs if len(run) > 1]
    dots = [run[0] for run in runs if len(run) == 1]
    return {"lines": lines, "dots": dots, "max": max(known), "last": known[-1]}
