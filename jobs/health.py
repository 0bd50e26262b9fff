"""The periodic health probe of every configured provider.

One chain of probe jobs runs however many workers start: the next run's job id is the
number of its time slot (now // interval + 1), and a SET NX claim on that slot lets
only the first worker or probe that gets there schedule it.
"""

from __future__ import annotations

import importlib
import logging
import time

from flask import current_app
from rq import Queue
from rq.registry import ScheduledJobRegistry

from crm.integrations import metrics, policy
from crm.integrations.health import is_configured
from jobs import schedule_next

log = logging.getLogger(__name__)

# Each provider's cheapest call, by name, so a provider module can arrive later (or
# fail to import) without breaking the others' probes.
PROBES: dict[str, str] = {
    "twilio": "crm.integrations.twilio:check_health",
    "stripe": "crm.integrations.stripe:check_health",
    "calendly": "crm.integrations.calendly:check_health",
    "crm_sync": "crm.integrations.crm_sync_api:check_health",
}

PROBE_QUEUE = "default"
PROBE_JOB_PREFIX = "integration-probe-"


def _interval() -> int:
    return int(current_app.config.get("HEALTH_PROBE_INTERVAL_SECONDS", 300))


def _load(target: str):
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        log.info("no probe for %s yet: %s", target, exc)
        return None


def probe_integrations() -> dict[str, bool]:
    """Schedule the next probe, then probe each configured provider and record the results."""
    schedule_probes()
    results: dict[str, bool] = {}
    for name, target in PROBES.items():
        if not is_configured(name):
            continue
        check = _load(target)
        if check is None:
            continue
        started = time.perf_counter()
        error = None
        try:
            policy.call(name, check, operation="probe")
        except policy.CallError as exc:
            error = str(exc)
        latency_ms = (time.perf_counter() - started) * 1000
        metrics.record_probe(name, ok=error is None, latency_ms=latency_ms, error=error)
        results[name] = error is None
        log.info("probe %s: %s in %.0f ms", name, error or "ok", latency_ms)
    return results


def schedule_probes() -> str | None:
    """Schedule the next probe unless it is already; return its job id when this call did."""
    interval = _interval()
    return schedule_next(
        PROBE_JOB_PREFIX.rstrip("-"),
        probe_integrations,
        interval=interval,
        queue=PROBE_QUEUE,
        result_ttl=interval,
        failure_ttl=24 * 3600,
        job_timeout=max(180, int(8 * policy.timeout())),
    )


def next_probe_at(queue: Queue) -> float | None:
    """When the next scheduled probe runs (epoch seconds), or None when none is."""
    registry = ScheduledJobRegistry(queue=queue)
    ids = [job_id for job_id in registry.get_job_ids() if job_id.startswith(PROBE_JOB_PREFIX)]
    scores = [queue.connection.zscore(registry.key, job_id) for job_id in ids]
    times = [float(score) for score in scores if score is not None]
    return min(times) if times else None
