from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Column, ForeignKey, Index, String, Table, Text
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
        Index("ix_contacts_name_id", "name", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    phone: Mapped[str | None] = mapped_column(String(20))  # E.164
    email: Mapped[str | None] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    last_contact_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Soft delete: bulk delete offers undo and a trash view.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

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
