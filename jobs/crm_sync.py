"""CRM sync jobs: flush the queued contact changes, and walk every contact for a resync."""

from __future__ import annotations

import logging

from rq import get_current_job

from crm.crm_sync import services
from crm.crm_sync.models import CrmSyncRun
from crm.extensions import db
from crm.integrations import policy

log = logging.getLogger(__name__)


def _retries_left() -> int:
    job = get_current_job()
    return (job.retries_left or 0) if job is not None else 0


def flush_contacts(attempt: int = 0) -> int:
    """Push every queued contact change, 100 a call; reschedule itself through outages.

    Return how many contacts were pushed. `attempt` counts the outages met in a row.
    """
    if not services.enabled():
        services.discard_pending()
        log.info("CRM sync is not configured; dropped the queued changes")
        return 0
    services.start_flush()
    pushed = 0
    ids: list[int] = []
    try:
        services.archive_orphans()
        db.session.commit()
        while ids := services.take_pending():
            result = services.push_contacts(ids)
            db.session.commit()
            pushed += len(ids)
            log.info(
                "CRM sync pushed %d: %d synced, %d archived, %d failed, %d unchanged",
                len(ids),
                len(result.synced),
                len(result.archived),
                len(result.failed),
                len(result.unchanged),
            )
    except policy.TransientError as exc:
        db.session.rollback()
        services.give_back(ids)
        services.record_unavailable(ids, exc)
        db.session.commit()
        delay = services.retry_delay(attempt, exc.retry_after)
        services.schedule_flush(delay=delay, attempt=attempt + 1)
        log.warning("CRM unavailable (%s); %d contacts retry in %.0f s", exc, len(ids), delay)
    except BaseException:
        # Whatever happened, the taken ids must not be lost: the job's retry pushes them.
        db.session.rollback()
        services.give_back(ids)
        raise
    return pushed


def resync_contacts(run_id: int) -> None:
    """Push every live contact again, in id order, recording progress on the run."""
    run = db.session.get(CrmSyncRun, run_id)
    if run is None or run.finished_at is not None:
        log.info("CRM resync %s is gone or finished; nothing to do", run_id)
        return
    try:
        services.archive_orphans()
        run.error = None
        db.session.commit()
        # Resuming after a retry continues after the last committed batch.
        while ids := services.next_batch(run):
            result = services.push_contacts(ids, force=True)
            db.session.refresh(run)
            if run.finished_at is not None:
                log.info("CRM resync %s was stopped; leaving it", run_id)
                db.session.commit()
                return
            run.done += result.ok
            run.failed += len(result.failed)
            run.last_contact_id = ids[-1]
            db.session.commit()
        services.finish_run(run)
        db.session.commit()
    except policy.TransientError as exc:
        db.session.rollback()
        run = db.session.get(CrmSyncRun, run_id)
        if _retries_left() > 0:
            run.error = f"CRM unavailable, retrying: {exc}"[: services.MAX_ERROR]
        else:
            services.finish_run(run, error=f"Stopped, the CRM is unavailable: {exc}")
        db.session.commit()
        raise
    except Exception as exc:
        db.session.rollback()
        run = db.session.get(CrmSyncRun, run_id)
        services.finish_run(run, error=f"Stopped: {type(exc).__name__}: {exc}")
        db.session.commit()
        log.exception("CRM resync %s failed after %d contacts", run_id, run.done)
        raise
    log.info("CRM resync %s done: %d synced, %d failed", run_id, run.done, run.failed)
