from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from crm.database import UTCDateTime, utcnow
from crm.extensions import db


class CrmSyncState(db.Model):
    """What the external CRM holds for one contact: its record id, last push, last error.

    Not a column set on `contacts`: the contacts package knows nothing of the CRM. The
    row outlives its contact: purging a contact sets `contact_id` to NULL and keeps the
    CRM id until the record is archived there; the next flush does that and drops the row.
    """

    __tablename__ = "crm_sync_states"
    __table_args__ = (
        # The orphans the flush archives (a purged contact) are found through it.
        Index("ix_crm_sync_states_contact_id", "contact_id", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"))
    crm_id: Mapped[str | None] = mapped_column(String(64))
    # A digest of the last pushed input: an edit that changes nothing the CRM holds
    # (owner, last contact time) makes no call.
    pushed_digest: Mapped[str | None] = mapped_column(String(64))
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set once the CRM record is archived (the contact was deleted); cleared on restore.
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    error_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<CrmSyncState contact={self.contact_id} crm={self.crm_id}>"

    @property
    def status(self) -> str:
        """ "error", "archived", "synced" or "never" (not pushed yet)."""
        if self.last_error:
            return "error"
        if self.archived_at is not None:
            return "archived"
        if self.synced_at is not None:
            return "synced"
        return "never"


class CrmSyncRun(db.Model):
    """One admin "resync all": progress the page polls while a worker walks the contacts."""

    __tablename__ = "crm_sync_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    started_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    # Heartbeat: a run not heard from for a while lost its worker and may be replaced.
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False
    )
    total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Keyset position: a retried job resumes after the last batch it committed.
    last_contact_id: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    # True while the run is unfinished, NULL after: the unique index lets one run at a time
    # hold it, whatever two admins click at the same moment.
    running: Mapped[bool | None] = mapped_column(Boolean, unique=True, default=True)

    def __repr__(self) -> str:
        return f"<CrmSyncRun {self.id} {self.done}/{self.total}>"

    @property
    def is_running(self) -> bool:
        return self.finished_at is None

    @property
    def percent(self) -> int:
        if not self.total:
            return 100 if not self.is_running else 0
        return min(100, round(100 * (self.done + self.failed) / self.total))

    @property
    def job_id(self) -> str:
        """The RQ job id of this run (letters, digits and dashes only)."""
        return f"crm-sync-resync-{self.id}"
