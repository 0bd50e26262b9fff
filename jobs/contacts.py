"""Contact jobs: bulk actions too large to run inside a request."""

from __future__ import annotations

import logging

from crm.contacts.bulk import run_chunk
from crm.contacts.models import BulkAction
from crm.database import utcnow
from crm.extensions import db

log = logging.getLogger(__name__)


def run_bulk_action(action_id: int) -> None:
    """Apply a queued bulk action chunk by chunk, committing progress after each chunk."""
    action = db.session.get(BulkAction, action_id)
    if action is None:
        log.warning("bulk action %s does not exist", action_id)
        return
    if action.status in ("done", "undone"):
        log.info("bulk action %s is already %s", action_id, action.status)
        return
    # Resuming after a crash continues at `processed`: finished chunks are not redone.
    action.status = "running"
    action.error = None
    db.session.commit()
    try:
        while run_chunk(action):
            db.session.commit()
        db.session.commit()
    except Exception as exc:
        # Record the failure on the action so the progress fragment can show it.
        db.session.rollback()
        action = db.session.get(BulkAction, action_id)
        action.status = "failed"
        action.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        action.finished_at = utcnow()
        db.session.commit()
        log.exception("bulk action %s failed after %s contacts", action_id, action.processed)
        raise
    log.info("bulk action %s (%s) done: %s contacts", action_id, action.action, action.total)
