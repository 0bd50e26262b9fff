"""Conversations: threads per contact and channel, messages with their status history,
consent per channel, message templates and campaigns.

Status moves only forward (see `STATUS_RANK`); failures are terminal unless a later
delivered or read arrives. Every transition is a `MessageStatusEvent` row.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import (
    JSON,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crm.contacts.models import Contact
from crm.database import Timestamps, UTCDateTime, utcnow
from crm.extensions import db
from crm.users.models import User

CHANNELS = ("sms", "whatsapp")
CHANNEL_LABELS = {"sms": "SMS", "whatsapp": "WhatsApp"}

# Twilio's outbound lifecycle, ranked (reference section 1.3). `scheduled` is ours too: a
# send-later message waiting for its time. Terminal failures rank below nothing: they
# replace anything but delivered/read, and only delivered/read replace them.
STATUS_RANK = {
    "scheduled": 0,
    "accepted": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "delivered": 4,
    "read": 5,
}
FAILURES = ("failed", "undelivered")
# Never sent: cancelled by staff or because the contact opted out before it went.
CANCELED = "canceled"
WINDOW = timedelta(hours=24)


def advances(current: str, new: str) -> bool:
    """Whether a callback saying `new` may replace `current` (status only moves forward)."""
    if current == new or current == CANCELED or new == CANCELED:
        return False
    if new in FAILURES:
        return current not in FAILURES and current not in ("delivered", "read")
    if new not in STATUS_RANK:
        return False
    if current in FAILURES:
        return new in ("delivered", "read")
    return STATUS_RANK[new] > STATUS_RANK.get(current, -1)


class Conversation(Timestamps, db.Model):
    """One thread with a contact on one channel; at most one open per contact and channel."""

    __tablename__ = "conversations"
    __table_args__ = (
        CheckConstraint("channel IN ('sms', 'whatsapp')", name="channel"),
        CheckConstraint("status IN ('open', 'closed')", name="status"),
        Index(
            "ix_conversations_open_contact_channel",
            "contact_id",
            "channel",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
        Index("ix_conversations_last_activity", "last_activity_at", "id"),
        Index("ix_conversations_assignee_id", "assignee_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False
    )
    channel: Mapped[str] = mapped_column(String(16), nullable=False)
    # Our side: the number (E.164) or Messaging Service SID the thread is held from.
    sender: Mapped[str | None] = mapped_column(String(64))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="open")
    unread_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_inbound_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    last_message_preview: Mapped[str | None] = mapped_column(String(200))

    contact: Mapped[Contact] = relationship(lazy="joined")
    assignee: Mapped[User | None] = relationship(lazy="joined")

    def __repr__(self) -> str:
        return f"<Conversation {self.id} contact={self.contact_id} {self.channel}>"

    @property
    def channel_label(self) -> str:
        return CHANNEL_LABELS[self.channel]

    def window_closes_at(self) -> datetime | None:
        """When WhatsApp's 24-hour window closes (None: never opened)."""
        if self.channel != "whatsapp" or self.last_inbound_at is None:
            return None
        return self.last_inbound_at + WINDOW

    def window_open(self, now: datetime | None = None) -> bool:
        """Free-form text is allowed: SMS always; WhatsApp within 24 h of the last inbound."""
        if self.channel != "whatsapp":
            return True
        closes = self.window_closes_at()
        return closes is not None and (now or utcnow()) < closes


class MessageTemplate(Timestamps, db.Model):
    """A named message with {{variables}}; `content_sid` makes it a WhatsApp template."""

    __tablename__ = "message_templates"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True, nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    # An approved WhatsApp template (Twilio Content SID, HX…): usable outside the window.
    content_sid: Mapped[str | None] = mapped_column(String(64))

    def __repr__(self) -> str:
        return f"<MessageTemplate {self.id} {self.name}>"


class Campaign(Timestamps, db.Model):
    """One message per recipient of a contacts filter, sent now or at a local time."""

    __tablename__ = "campaigns"
    __table_args__ = (
        CheckConstraint("channel IN ('sms', 'whatsapp')", name="channel"),
        CheckConstraint(
            "status IN ('scheduled', 'running', 'done', 'canceled')",
            name="status",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    channel: Mapped[str] = mapped_column(String(16), nullable=False)
    template_id: Mapped[int | None] = mapped_column(
        ForeignKey("message_templates.id", ondelete="SET NULL")
    )
    # The contacts list's query string the recipients were chosen with.
    filter_query: Mapped[str] = mapped_column(Text, nullable=False, default="")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="scheduled")
    # A wall-clock time in each contact's timezone (None: now).
    send_at_local: Mapped[datetime | None] = mapped_column(db.DateTime(timezone=False))
    quiet_start: Mapped[int | None] = mapped_column(Integer)  # hour 0-23, contact's time
    quiet_end: Mapped[int | None] = mapped_column(Integer)
    recipient_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    template: Mapped[MessageTemplate | None] = relationship()
    created_by: Mapped[User | None] = relationship()

    def __repr__(self) -> str:
        return f"<Campaign {self.id} {self.name} {self.status}>"


class Message(Timestamps, db.Model):
    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("direction IN ('inbound', 'outbound')", name="direction"),
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        Index("ix_messages_contact_id_created_at", "contact_id", "created_at"),
        Index("ix_messages_campaign_id_status", "campaign_id", "status"),
        # The send sweep: outbound messages not yet handed to Twilio.
        Index(
            "ix_messages_unsent",
            "status",
            "send_at",
            sqlite_where=text("sid IS NULL AND direction = 'outbound'"),
            postgresql_where=text("sid IS NULL AND direction = 'outbound'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
    )
    # The contact at the time (a merge moves it with the conversation).
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False
    )
    direction: Mapped[str] = mapped_column(String(16), nullable=False)
    channel: Mapped[str] = mapped_column(String(16), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False, default="")
    media: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_reason: Mapped[str | None] = mapped_column(Text)
    sender_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    template_id: Mapped[int | None] = mapped_column(
        ForeignKey("message_templates.id", ondelete="SET NULL")
    )
    content_sid: Mapped[str | None] = mapped_column(String(64))
    content_variables: Mapped[dict | None] = mapped_column(JSON)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="SET NULL"))
    # Send later: not before this time.
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The in-flight marker: set (and committed) just before the call to Twilio. A retry
    # that finds it set and no sid asks Twilio first whether the message went.
    dispatch_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dispatch_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Who holds the send: a job claims it until then, so two jobs never send one message.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A retry is a new message (a new SID); it points to the failed one.
    retry_of_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))

    conversation: Mapped[Conversation] = relationship()
    sender: Mapped[User | None] = relationship()
    template: Mapped[MessageTemplate | None] = relationship()
    history: Mapped[list[MessageStatusEvent]] = relationship(
        order_by="MessageStatusEvent.id", cascade="all, delete-orphan"
    )

    def __repr__(self) -> str:
        return f"<Message {self.id} {self.direction} {self.status}>"

    @property
    def is_failed(self) -> bool:
        return self.status in FAILURES

    @property
    def retryable(self) -> bool:
        return self.direction == "outbound" and (self.is_failed or self.status == CANCELED)


class MessageStatusEvent(db.Model):
    """One transition of a message's status, or a callback that arrived too late to apply."""

    __tablename__ = "message_status_events"
    __table_args__ = (Index("ix_message_status_events_message_id", "message_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    error_code: Mapped[int | None] = mapped_column(Integer)
    # False when a callback arrived after a later status (kept, not applied).
    applied: Mapped[bool] = mapped_column(nullable=False, default=True)
    source: Mapped[str] = mapped_column(String(32), nullable=False, default="app")


class CampaignRecipient(db.Model):
    """A contact a campaign chose: its message, or why it was skipped."""

    __tablename__ = "campaign_recipients"
    __table_args__ = (
        UniqueConstraint("campaign_id", "contact_id", name="uq_campaign_recipients_contact"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False
    )
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False
    )
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    skip_reason: Mapped[str | None] = mapped_column(String(200))


class OptOut(db.Model):
    """The contact opted out of a channel: nothing is sent to them on it until opt-in."""

    __tablename__ = "opt_outs"
    __table_args__ = (
        UniqueConstraint("contact_id", "channel", name="uq_opt_outs_contact_channel"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False
    )
    channel: Mapped[str] = mapped_column(String(16), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    source: Mapped[str] = mapped_column(String(100), nullable=False)


class ConsentEvent(db.Model):
    """Every consent change, with where it came from: the contact's timeline shows them."""

    __tablename__ = "consent_events"
    __table_args__ = (
        CheckConstraint("action IN ('opt_out', 'opt_in')", name="action"),
        Index("ix_consent_events_contact_id_at", "contact_id", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False
    )
    channel: Mapped[str] = mapped_column(String(16), nullable=False)
    action: Mapped[str] = mapped_column(String(16), nullable=False)
    source: Mapped[str] = mapped_column(String(100), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
