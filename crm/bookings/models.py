"""Bookings: coaches' profiles and provider connections, services, booked sessions, their
history, session notes and the workflow steps (confirmation, reminders, follow-up)."""

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
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crm.contacts.models import Contact
from crm.database import Timestamps, UTCDateTime, utcnow
from crm.extensions import db
from crm.users.models import User

STATUSES = ("scheduled", "rescheduled", "canceled", "completed", "no_show")
STATUS_LABELS = {
    "scheduled": "Scheduled",
    "rescheduled": "Rescheduled",
    "canceled": "Canceled",
    "completed": "Completed",
    "no_show": "No-show",
}
# Still going ahead: reminders are due and the coach's time is taken.
ACTIVE = ("scheduled", "rescheduled")
SOURCES = ("calendly", "calcom", "manual")
SOURCE_LABELS = {"calendly": "Calendly", "calcom": "Cal.com", "manual": "Manual"}
PAYMENT_STATUSES = ("none", "unpaid", "pending", "paid", "refunded", "partially_refunded")

# Workflow steps, in the order they happen; `offset` is minutes relative to the anchor
# (`created`: when booked; `start`: the session's start; `end`: its end).
STEPS = ("confirmation", "coach_notification", "first_reminder", "second_reminder", "follow_up")
STEP_DEFAULTS = {
    "confirmation": {"anchor": "created", "offset": 0, "label": "Confirmation to the client"},
    "coach_notification": {"anchor": "created", "offset": 0, "label": "Notification to the coach"},
    "first_reminder": {"anchor": "start", "offset": -24 * 60, "label": "First reminder"},
    "second_reminder": {"anchor": "start", "offset": -60, "label": "Second reminder"},
    "follow_up": {"anchor": "end", "offset": 60, "label": "Follow-up after the session"},
}
STEP_STATUSES = ("scheduled", "sent", "skipped", "failed", "canceled")

CONNECTION_STATES = ("connected", "needs_reconnect", "disconnected")


class CoachProfile(Timestamps, db.Model):
    """What Rapport knows of a coach beyond the user: booking accounts and meeting link."""

    __tablename__ = "coach_profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), unique=True, nullable=False
    )
    display_name: Mapped[str | None] = mapped_column(String(200))
    calendly_user_uri: Mapped[str | None] = mapped_column(String(500), unique=True)
    calcom_username: Mapped[str | None] = mapped_column(String(200), unique=True)
    meeting_link: Mapped[str | None] = mapped_column(String(500))

    user: Mapped[User] = relationship(lazy="joined")

    @property
    def name(self) -> str:
        return self.display_name or self.user.display_name


class CalendlyConnection(Timestamps, db.Model):
    """A coach's Calendly OAuth grant; tokens are encrypted at rest (crm.bookings.tokens)."""

    __tablename__ = "calendly_connections"
    __table_args__ = (
        CheckConstraint("state IN ('connected', 'needs_reconnect', 'disconnected')", name="state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    coach_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), unique=True, nullable=False
    )
    user_uri: Mapped[str | None] = mapped_column(String(500))
    organization_uri: Mapped[str | None] = mapped_column(String(500))
    access_token: Mapped[str | None] = mapped_column(Text)  # encrypted
    refresh_token: Mapped[str | None] = mapped_column(Text)  # encrypted
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(20), nullable=False, default="connected")
    last_error: Mapped[str | None] = mapped_column(Text)
    subscription_uri: Mapped[str | None] = mapped_column(String(500))
    refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    coach: Mapped[User] = relationship(lazy="joined")


class Service(Timestamps, db.Model):
    """What a client books: a Calendly event type, a Cal.com event type or a manual service."""

    __tablename__ = "services"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    duration_minutes: Mapped[int] = mapped_column(Integer, nullable=False, default=60)
    price_minor: Mapped[int | None] = mapped_column(Integer)  # in the currency's minor unit
    currency: Mapped[str | None] = mapped_column(String(3))
    active: Mapped[bool] = mapped_column(nullable=False, default=True)
    coach_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    calendly_event_type_uri: Mapped[str | None] = mapped_column(String(500), unique=True)
    calendly_scheduling_url: Mapped[str | None] = mapped_column(String(500))
    calcom_event_type_id: Mapped[str | None] = mapped_column(String(64), unique=True)

    coach: Mapped[User | None] = relationship(lazy="joined")
    steps: Mapped[list[WorkflowStep]] = relationship(
        back_populates="service", cascade="all, delete-orphan", lazy="selectin"
    )


class WorkflowStep(db.Model):
    """A service's setting for one workflow step; a missing row means the default."""

    __tablename__ = "workflow_steps"
    __table_args__ = (UniqueConstraint("service_id", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    service_id: Mapped[int] = mapped_column(
        ForeignKey("services.id", ondelete="CASCADE"), nullable=False
    )
    step: Mapped[str] = mapped_column(String(32), nullable=False)
    enabled: Mapped[bool] = mapped_column(nullable=False, default=True)
    offset_minutes: Mapped[int | None] = mapped_column(Integer)
    template_id: Mapped[int | None] = mapped_column(
        ForeignKey("message_templates.id", ondelete="SET NULL")
    )

    service: Mapped[Service] = relationship(back_populates="steps")


class Booking(Timestamps, db.Model):
    """One session between a contact and a coach, from a provider or entered by staff."""

    __tablename__ = "bookings"
    __table_args__ = (
        CheckConstraint(
            "status IN ('scheduled', 'rescheduled', 'canceled', 'completed', 'no_show')",
            name="status",
        ),
        CheckConstraint("source IN ('calendly', 'calcom', 'manual')", name="source"),
        CheckConstraint("end_at > start_at", name="ends_after_start"),
        UniqueConstraint("source", "external_id"),
        Index("ix_bookings_coach_start", "coach_id", "start_at"),
        Index("ix_bookings_contact_start", "contact_id", "start_at"),
        Index("ix_bookings_start", "start_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False
    )
    # None: a booking for a coach Rapport does not know, kept for staff to assign.
    coach_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    service_id: Mapped[int | None] = mapped_column(ForeignKey("services.id", ondelete="SET NULL"))
    title: Mapped[str | None] = mapped_column(String(300))
    start_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    end_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    timezone: Mapped[str | None] = mapped_column(String(64))  # the invitee's
    location: Mapped[str | None] = mapped_column(Text)
    meeting_url: Mapped[str | None] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="scheduled")
    source: Mapped[str] = mapped_column(String(16), nullable=False, default="manual")
    # Calendly: the invitee URI (changes on reschedule); Cal.com: the booking uid.
    external_id: Mapped[str | None] = mapped_column(String(500))
    # Calendly: the scheduled event URI; Cal.com: the numeric booking id.
    external_event_id: Mapped[str | None] = mapped_column(String(500))
    # The coach as the provider named them, for staff fixing an unassigned booking.
    external_host: Mapped[str | None] = mapped_column(String(320))
    cancel_url: Mapped[str | None] = mapped_column(String(1000))
    reschedule_url: Mapped[str | None] = mapped_column(String(1000))
    questions: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    cancellation_reason: Mapped[str | None] = mapped_column(Text)
    canceled_by: Mapped[str | None] = mapped_column(String(200))
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    payment_status: Mapped[str] = mapped_column(String(24), nullable=False, default="none")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    contact: Mapped[Contact] = relationship(lazy="joined")
    coach: Mapped[User | None] = relationship(foreign_keys=[coach_id], lazy="joined")
    service: Mapped[Service | None] = relationship(lazy="joined")

    def __repr__(self) -> str:
        return f"<Booking {self.id} {self.source} {self.status} {self.start_at:%Y-%m-%d %H:%M}>"

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def duration(self) -> timedelta:
        return self.end_at - self.start_at

    @property
    def upcoming(self) -> bool:
        return self.active and self.end_at > utcnow()

    @property
    def status_label(self) -> str:
        return STATUS_LABELS.get(self.status, self.status)

    @property
    def source_label(self) -> str:
        return SOURCE_LABELS.get(self.source, self.source)


class BookingEvent(db.Model):
    """What happened to a booking: booked, rescheduled, canceled, a workflow step's outcome."""

    __tablename__ = "booking_events"
    __table_args__ = (Index("ix_booking_events_contact_at", "contact_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), nullable=False, index=True
    )
    # Denormalized so the contact's timeline reads one index; moves with a merge.
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    detail: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)

    booking: Mapped[Booking] = relationship(lazy="joined")
    actor: Mapped[User | None] = relationship(lazy="joined")


class SessionNote(Timestamps, db.Model):
    """A coach's note about one session."""

    __tablename__ = "session_notes"
    __table_args__ = (Index("ix_session_notes_contact_created", "contact_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), nullable=False, index=True
    )
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False
    )
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    body: Mapped[str] = mapped_column(Text, nullable=False)

    booking: Mapped[Booking] = relationship(lazy="joined")
    author: Mapped[User | None] = relationship(lazy="joined")


class BookingStep(Timestamps, db.Model):
    """One run of a workflow step for a booking: due at a time, then sent, skipped or failed.

    A reschedule cancels the scheduled runs and plans new ones; the job that runs a step
    acts only while its row is still `scheduled`, so a moved or canceled reminder never goes.
    """

    __tablename__ = "booking_steps"
    __table_args__ = (
        UniqueConstraint("booking_id", "step", "due_at"),
        CheckConstraint(
            "status IN ('scheduled', 'sent', 'skipped', 'failed', 'canceled')", name="status"
        ),
        Index("ix_booking_steps_status_due", "status", "due_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    booking_id: Mapped[int] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), nullable=False
    )
    step: Mapped[str] = mapped_column(String(32), nullable=False)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="scheduled")
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"))
    detail: Mapped[str | None] = mapped_column(Text)

    booking: Mapped[Booking] = relationship(lazy="joined")


class Notification(db.Model):
    """An in-app notice for one user (a coach's new booking...)."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_user_created", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    body: Mapped[str | None] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
