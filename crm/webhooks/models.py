from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from crm.database import UTCDateTime, utcnow
from crm.extensions import db

PROVIDERS = ("twilio", "stripe", "calendly", "calcom")
# received: stored, waiting for a worker; failed: an attempt failed and a retry is due;
# dead: no attempts left (the dead-letter list); ignored: no handler for its type.
STATUSES = ("received", "processing", "processed", "ignored", "failed", "dead")
# What an admin may send through processing again.
REPLAYABLE = ("processed", "ignored", "failed", "dead")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class WebhookEvent(db.Model):
    """One delivery a provider signed, stored raw under the provider's own event id."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_id", name="uq_webhook_events_provider_event_id"),
        CheckConstraint(_in("provider", PROVIDERS), name="provider"),
        CheckConstraint(_in("status", STATUSES), name="status"),
        Index("ix_webhook_events_status_received_at", "status", "received_at"),
        Index("ix_webhook_events_provider_received_at", "provider", "received_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(16), nullable=False)
    event_id: Mapped[str] = mapped_column(String(255), nullable=False)
    # What handlers dispatch on: Twilio's endpoint ("messages" or "status"), else the type.
    kind: Mapped[str] = mapped_column(String(100), nullable=False)
    event_type: Mapped[str] = mapped_column(String(100), nullable=False)
    # Exactly the bytes that were signed, decoded as UTF-8.
    body: Mapped[str] = mapped_column(Text, nullable=False)
    # A few request headers worth keeping; never a signature.
    headers: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="received")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def __repr__(self) -> str:
        return f"<WebhookEvent {self.id} {self.provider} {self.event_type} {self.status}>"

    @property
    def job_id(self) -> str:
        """The RQ job id that processes this event (letters, digits and dashes only)."""
        return f"webhook-{self.id}"

    @property
    def replayable(self) -> bool:
        return self.status in REPLAYABLE
