from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crm.database import Timestamps, UTCDateTime, utcnow
from crm.extensions import db
from crm.users.models import User

STATUSES = ("active", "inactive", "blocked")

contact_tags = Table(
    "contact_tags",
    db.metadata,
    Column("contact_id", ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True),
    Index("ix_contact_tags_tag_id", "tag_id"),
)


class Tag(db.Model):
    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    def __repr__(self) -> str:
        return f"<Tag {self.name}>"


class Contact(Timestamps, db.Model):
    __tablename__ = "contacts"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'inactive', 'blocked')", name="status"),
        Index("ix_contacts_owner_id", "owner_id"),
        Index("ix_contacts_phone", "phone"),
        Index("ix_contacts_email", "email"),
        # The list's name order over live contacts, covering what a search scan tests so
        # that walking it never reads the table.
        Index(
            "ix_contacts_live_name",
            "name",
            "id",
            "email",
            "phone",
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index("ix_contacts_last_contact_at_id", "last_contact_at", "id"),
        Index("ix_contacts_created_at_id", "created_at", "id"),
        # Partial: only the trash reads it. A full index on a column that is almost always
        # NULL tempts the planner away from the sort indexes.
        Index(
            "ix_contacts_deleted_at",
            "deleted_at",
            sqlite_where=text("deleted_at IS NOT NULL"),
            postgresql_where=text("deleted_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    phone: Mapped[str | None] = mapped_column(String(20))  # E.164
    email: Mapped[str | None] = mapped_column(String(320))  # stored lower-case
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    last_contact_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # IANA name; campaigns send at a local time in it (None: the owner's, else UTC).
    timezone: Mapped[str | None] = mapped_column(String(64))
    # "sms" or "whatsapp": how booking confirmations and reminders reach them (None: SMS).
    preferred_channel: Mapped[str | None] = mapped_column(String(16))
    # Soft delete: bulk delete offers undo and a trash view.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The bulk action that deleted it, so that undo restores exactly that batch.
    deleted_by_action_id: Mapped[int | None] = mapped_column(
        ForeignKey("bulk_actions.id", ondelete="SET NULL")
    )
    # Set when a merge folded this contact into another (it is then soft-deleted).
    merged_into_id: Mapped[int | None] = mapped_column(
        ForeignKey("contacts.id", ondelete="SET NULL")
    )

    owner: Mapped[User | None] = relationship(lazy="joined")
    tags: Mapped[list[Tag]] = relationship(
        secondary=contact_tags, lazy="selectin", order_by="Tag.name"
    )
    notes: Mapped[list[Note]] = relationship(
        back_populates="contact", order_by="Note.created_at.desc()", cascade="all, delete-orphan"
    )

    def __repr__(self) -> str:
        return f"<Contact {self.id} {self.name}>"


class Note(Timestamps, db.Model):
    __tablename__ = "notes"
    __table_args__ = (Index("ix_notes_contact_id_created_at", "contact_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False
    )
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    body: Mapped[str] = mapped_column(Text, nullable=False)

    contact: Mapped[Contact] = relationship(back_populates="notes")
    author: Mapped[User | None] = relationship()


class SavedView(db.Model):
    """A named list query (filters, search, sort) a user keeps for one click."""

    __tablename__ = "saved_views"
    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_saved_views_user_id_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    query: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


BULK_ACTIONS = ("tag_add", "tag_remove", "status", "owner", "delete", "restore")
JOB_STATUSES = ("queued", "running", "done", "failed", "undone")


class BulkAction(db.Model):
    """One bulk change over selected contacts or over every contact matching a filter.

    Progress lives here so the page can poll it while a worker runs the change.
    """

    __tablename__ = "bulk_actions"
    __table_args__ = (Index("ix_bulk_actions_actor_id_created_at", "actor_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(20), nullable=False)
    params: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    # "selected" with a list of ids, or "matching" with the list's query string.
    scope: Mapped[str] = mapped_column(String(10), nullable=False)
    selection: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    status: Mapped[str] = mapped_column(String(12), nullable=False, default="queued")
    total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    processed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    undone_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    actor: Mapped[User | None] = relationship()


class ContactImport(db.Model):
    """A CSV upload: its bytes (workers may run on other machines), mapping and progress."""

    __tablename__ = "contact_imports"
    __table_args__ = (Index("ix_contact_imports_actor_id_created_at", "actor_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    content: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    encoding: Mapped[str] = mapped_column(String(20), nullable=False, default="utf-8")
    headers: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    mapping: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    on_match: Mapped[str] = mapped_column(String(10), nullable=False, default="update")
    region: Mapped[str] = mapped_column(String(2), nullable=False)
    # mapping -> queued -> running -> done | failed; done -> reverted
    status: Mapped[str] = mapped_column(String(12), nullable=False, default="mapping")
    total_rows: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    processed_rows: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    updated_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    skipped_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reverted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    actor: Mapped[User | None] = relationship()


class ContactImportRow(db.Model):
    """What one CSV row did (create, update, skip, error), enough to revert it or report it."""

    __tablename__ = "contact_import_rows"
    __table_args__ = (
        Index("ix_contact_import_rows_import_id_row_number", "import_id", "row_number"),
        Index("ix_contact_import_rows_contact_id", "contact_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    import_id: Mapped[int] = mapped_column(
        ForeignKey("contact_imports.id", ondelete="CASCADE"), nullable=False
    )
    row_number: Mapped[int] = mapped_column(Integer, nullable=False)
    outcome: Mapped[str] = mapped_column(String(10), nullable=False)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"))
    message: Mapped[str | None] = mapped_column(Text)
    data: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    before: Mapped[dict | None] = mapped_column(JSON)


class ContactMerge(db.Model):
    """One merge, with what it changed, so that it can be undone."""

    __tablename__ = "contact_merges"
    __table_args__ = (
        Index("ix_contact_merges_survivor_id", "survivor_id"),
        Index("ix_contact_merges_merged_id", "merged_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    survivor_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False
    )
    merged_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False
    )
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # The survivor's fields and tag ids before the merge, and the merged contact's tag ids.
    survivor_before: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    merged_tag_ids: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    # Related rows moved to the survivor: {reference name: [row ids]}.
    moved: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    undone_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    actor: Mapped[User | None] = relationship()
