from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crm.database import UTCDateTime, utcnow
from crm.extensions import db
from crm.users.models import User


class AuditEntry(db.Model):
    """Who did what to which object, with the field changes as {field: [old, new]}."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_object", "object_type", "object_id", "created_at"),
        Index("ix_audit_log_actor_id", "actor_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    object_type: Mapped[str] = mapped_column(String(64), nullable=False)
    object_id: Mapped[int | None] = mapped_column()
    changes: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    actor: Mapped[User | None] = relationship()

    @property
    def summary(self) -> str:
        """The action in words, for activity feeds."""
        phrase = ACTION_PHRASES.get(self.action)
        if phrase is None:
            return f"{self.action.replace('.', ' ').replace('_', ' ')} #{self.object_id}"
        return phrase.format(id=self.object_id)


ACTION_PHRASES = {
    "user.created": "added user #{id}",
    "user.updated": "changed user #{id}",
    "user.deactivated": "deactivated user #{id}",
    "user.reactivated": "reactivated user #{id}",
    "user.signed_in": "signed in",
}
