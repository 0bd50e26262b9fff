"""Run a contact CSV import in the background, chunk by chunk, with progress in its row."""

from __future__ import annotations

import itertools
import logging

from crm.contacts.imports import ImportRun, chunked, iter_rows, process_chunk
from crm.contacts.models import ContactImport
from crm.database import utcnow
from crm.extensions import db

log = logging.getLogger(__name__)

# A 10 MB file is about 100k rows; allow well beyond the time that takes.
IMPORT_JOB_TIMEOUT = 60 * 60


def run_import(import_id: int) -> None:
    """Import the rows of a queued import, committing progress after every chunk."""
    # A worker keeps one session across jobs: read the row as it is now, not as cached.
    contact_import = db.session.get(ContactImport, import_id, populate_existing=True)
    if contact_import is None or contact_import.status not in ("queued", "running"):
        log.info("import %s: nothing to do", import_id)
        return
    # A run that died part-way resumes after the rows it had committed.
    already = contact_import.processed_rows if contact_import.status == "running" else 0
    contact_import.status = "running"
    db.session.commit()
    log.info("import %s: running from row %s", import_id, already)
    run = ImportRun(contact_import, actor=contact_import.actor, dry_run=False)
    try:
        rows = itertools.islice(iter_rows(contact_import), already, None)
        for chunk in chunked(rows):
            process_chunk(run, chunk)
            contact_import.processed_rows += len(chunk)
            contact_import.created_count += run.counts["create"]
            contact_import.updated_count += run.counts["update"]
            contact_import.skipped_count += run.counts["skip"]
            contact_import.error_count += run.counts["error"]
            run.counts = dict.fromkeys(run.counts, 0)
            db.session.commit()
        contact_import.status = "done"
        contact_import.finished_at = utcnow()
        db.session.commit()
    except Exception as exc:
        # Record the failure on the import so the page stops polling and says why.
        db.session.rollback()
        failed = db.session.get(ContactImport, import_id)
        failed.status = "failed"
        failed.error = f"{exc.__class__.__name__}: {exc}"[:2000]
        failed.finished_at = utcnow()
        db.session.commit()
        log.exception("import %s failed", import_id)
        raise
    log.info(
        "import %s: done, %s created, %s updated, %s skipped, %s rejected",
        import_id,
        contact_import.created_count,
        contact_import.updated_count,
        contact_import.skipped_count,
        contact_import.error_count,
    )
