"""Bookings' writes: coaches, contacts from invitees, booking, rescheduling, canceling,
outcomes and session notes. Services flush, never commit; the caller commits once.

Every provider (Calendly, Cal.com) and the staff's manual form end in the same few
functions, so a booking behaves the same whichever way it arrived: its history is
recorded (`BookingEvent`) and its workflow steps are planned or canceled.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from flask import current_app

from crm.audit.services import record_change
from crm.bookings import workflows
from crm.bookings.models import (
    ACTIVE,
    Booking,
    BookingEvent,
    CoachProfile,
    Service,
    SessionNote,
)
from crm.contacts.models import Contact
from crm.contacts.services import normalize_phone
from crm.database import utcnow
from crm.extensions import db
from crm.users.models import User, timezones
from crm.validation import is_email


class BookingError(Exception):
    """A booking change that cannot be made; the message is shown to the user."""


# --- coaches ----------------------------------------------------------------------


def coach_profile(user: User) -> CoachProfile:
    """The coach's profile row, created empty the first time it is needed."""
    profile = db.session.scalars(
        sa.select(CoachProfile).where(CoachProfile.user_id == user.id)
    ).first()
    if profile is None:
        profile = CoachProfile(user_id=user.id, user=user)
        db.session.add(profile)
        db.session.flush()
    return profile


def coach_name(user: User | None) -> str:
    """How a coach is shown to clients: the profile's display name, else the user's name."""
    if user is None:
        return ""
    profile = db.session.scalars(
        sa.select(CoachProfile).where(CoachProfile.user_id == user.id)
    ).first()
    return profile.name if profile else user.display_name


def coaches() -> list[User]:
    """Active users with the coach role, by name."""
    return list(
        db.session.scalars(
            sa.select(User)
            .where(User.role == "coach", User.active.is_(True))
            .order_by(User.name, User.email)
        )
    )


def find_coach(
    *,
    calendly_user_uri: str | None = None,
    calcom_username: str | None = None,
    email: str | None = None,
) -> User | None:
    """The coach a provider names: by their linked account first, then by email."""
    conditions = []
    if calendly_user_uri:
        conditions.append(CoachProfile.calendly_user_uri == calendly_user_uri)
    if calcom_username:
        conditions.append(CoachProfile.calcom_username == calcom_username)
    if conditions:
        user = db.session.scalars(
            sa.select(User)
            .join(CoachProfile, CoachProfile.user_id == User.id)
            .where(sa.or_(*conditions), User.active.is_(True))
            .limit(1)
        ).first()
        if user is not None:
            return user
    if email:
        return db.session.scalars(
            sa.select(User).where(
                User.email == email.strip().lower(),
                User.role == "coach",
                User.active.is_(True),
            )
        ).first()
    return None


# --- contacts from invitees -------------------------------------------------------


def _lock(key: str) -> None:
    """Serialize work on one invitee until commit, so two deliveries create one contact.
    SQLite serializes writers already (jobs write before they read); PostgreSQL takes a
    transaction-scoped advisory lock."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})


def clean_phone(raw: str | None) -> str | None:
    """An invitee's phone in E.164, or None when it is missing or not a phone number."""
    if not raw or not str(raw).strip():
        return None
    try:
        return normalize_phone(str(raw), current_app.config["DEFAULT_PHONE_REGION"])
    except ValueError:
        return None


def link_contact(
    *,
    email: str | None,
    phone: str | None,
    name: str | None,
    timezone: str | None = None,
) -> Contact:
    """The live contact with this email, else this phone; created when there is none.

    Raises BookingError when the invitee has neither a usable email nor a phone.
    """
    email = email.strip().lower() if email and is_email(email.strip()) else None
    phone = clean_phone(phone)
    if not email and not phone:
        raise BookingError("the invitee has neither an email address nor a phone number")
    _lock(f"invitee:{email or phone}")
    live = sa.select(Contact).where(Contact.deleted_at.is_(None)).order_by(Contact.id).limit(1)
    contact = None
    if email:
        contact = db.session.scalars(live.where(Contact.email == email)).first()
    if contact is None and phone:
        contact = db.session.scalars(live.where(Contact.phone == phone)).first()
    if contact is None:
        contact = Contact(
            name=(name or "").strip() or email or phone,
            email=email,
            phone=phone,
            timezone=timezone if timezone in timezones() else None,
        )
        db.session.add(contact)
        db.session.flush()
        record_change(
            "contact.created",
            "contact",
            contact.id,
            {"name": [None, contact.name], "email": [None, email], "phone": [None, phone]},
            actor=None,
        )
        return contact
    # Fill what the contact lacks; never overwrite what staff entered.
    if email and not contact.email:
        contact.email = email
    if phone and not contact.phone:
        contact.phone = phone
    if not contact.timezone and timezone in timezones():
        contact.timezone = timezone
    return contact


def adopt_client(contact: Contact, coach: User | None) -> None:
    """A client without a coach becomes the booked coach's, so the coach can open them."""
    if coach is None or contact.owner_id is not None:
        return
    contact.owner_id = coach.id
    db.session.flush()
    record_change(
        "contact.updated", "contact", contact.id, {"owner_id": [None, coach.id]}, actor=None
    )


# --- history ----------------------------------------------------------------------


def record_event(
    booking: Booking,
    kind: str,
    *,
    actor: User | None = None,
    detail: str | None = None,
    at: datetime | None = None,
    **data,
) -> BookingEvent:
    """Add a line to the booking's history (and so to the contact's timeline)."""
    event = BookingEvent(
        booking_id=booking.id,
        contact_id=booking.contact_id,
        kind=kind,
        at=at or utcnow(),
        actor_id=actor.id if actor else None,
        detail=detail,
        data=data,
    )
    db.session.add(event)
    return event


# --- booking ----------------------------------------------------------------------


def overlapping(
    coach_id: int | None, start_at: datetime, end_at: datetime, *, exclude_id: int | None = None
) -> Booking | None:
    """The coach's first still-active booking that overlaps [start_at, end_at), if any."""
    if coach_id is None:
        return None
    query = sa.select(Booking).where(
        Booking.coach_id == coach_id,
        Booking.status.in_(ACTIVE),
        Booking.start_at < end_at,
        Booking.end_at > start_at,
    )
    if exclude_id is not None:
        query = query.where(Booking.id != exclude_id)
    return db.session.scalars(query.order_by(Booking.start_at).limit(1)).first()


def _check_times(start_at: datetime, end_at: datetime) -> None:
    if start_at.tzinfo is None or end_at.tzinfo is None:
        raise ValueError("booking times must be timezone-aware")
    if end_at <= start_at:
        raise BookingError("The session must end after it starts.")


def refuse_overlap(
    coach_id: int | None, start_at: datetime, end_at: datetime, *, exclude_id: int | None = None
) -> None:
    """Raise BookingError naming the clash when the coach is busy during [start_at, end_at)."""
    clash = overlapping(coach_id, start_at, end_at, exclude_id=exclude_id)
    if clash is not None:
        tz = _zone(clash.coach.timezone if clash.coach else None)
        raise BookingError(
            f"{clash.coach.display_name if clash.coach else 'The coach'} already has a session "
            f"from {clash.start_at.astimezone(tz):%a %d %b %H:%M} to "
            f"{clash.end_at.astimezone(tz):%H:%M} ({tz.key}) with {clash.contact.name}."
        )


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def create_booking(
    contact: Contact,
    *,
    coach: User | None,
    start_at: datetime,
    end_at: datetime,
    actor: User | None,
    service: Service | None = None,
    source: str = "manual",
    check_overlap: bool = True,
    imported: bool = False,
    **fields,
) -> Booking:
    """Book a session; a manual booking that overlaps the coach's others is refused.

    `imported`: found by a sync rather than just booked, so the client and coach are not
    told again (they were when it was booked); only its reminders are planned.

    `fields` are further Booking columns (title, timezone, location, meeting_url,
    external ids, cancel/reschedule URLs, questions...).
    """
    _check_times(start_at, end_at)
    if check_overlap:
        refuse_overlap(coach.id if coach else None, start_at, end_at)
    if coach is not None and not fields.get("meeting_url") and not fields.get("location"):
        profile = coach_profile(coach)
        fields["meeting_url"] = profile.meeting_link
    booking = Booking(
        contact_id=contact.id,
        contact=contact,
        coach_id=coach.id if coach else None,
        coach=coach,
        service_id=service.id if service else None,
        service=service,
        start_at=start_at,
        end_at=end_at,
        source=source,
        status=fields.pop("status", "scheduled"),
        created_by_id=actor.id if actor else None,
        **fields,
    )
    db.session.add(booking)
    db.session.flush()
    adopt_client(contact, coach)
    record_event(booking, "booked", actor=actor, start_at=start_at.isoformat())
    workflows.plan_steps(booking, reason="imported" if imported else "booked")
    return booking


def reschedule_booking(
    booking: Booking,
    *,
    start_at: datetime,
    end_at: datetime,
    actor: User | None,
    check_overlap: bool = True,
    reason: str | None = None,
) -> bool:
    """Move a booking to new times; its reminders move with it. False when nothing moved."""
    _check_times(start_at, end_at)
    if not booking.active:
        raise BookingError(f"A {booking.status_label.lower()} session cannot be rescheduled.")
    if booking.start_at == start_at and booking.end_at == end_at:
        return False
    if check_overlap:
        refuse_overlap(booking.coach_id, start_at, end_at, exclude_id=booking.id)
    previous = booking.start_at
    booking.start_at, booking.end_at = start_at, end_at
    booking.status = "rescheduled"
    db.session.flush()
    record_event(
        booking,
        "rescheduled",
        actor=actor,
        detail=reason or None,
        start_at=start_at.isoformat(),
        previous_start_at=previous.isoformat(),
    )
    workflows.plan_steps(booking, reason="rescheduled")
    return True


def cancel_booking(
    booking: Booking,
    *,
    actor: User | None,
    reason: str | None = None,
    canceled_by: str | None = None,
    at: datetime | None = None,
) -> bool:
    """Cancel a booking and every step still to come. False when it was already canceled.

    The provider is not told here: the view that cancels a Calendly booking calls
    Calendly first (crm.bookings.calendly), so a refusal there leaves the booking as is.
    """
    if booking.status == "canceled":
        return False
    if booking.status in ("completed", "no_show"):
        raise BookingError("A session that already took place cannot be canceled.")
    booking.status = "canceled"
    booking.canceled_at = at or utcnow()
    booking.cancellation_reason = (reason or "").strip() or None
    booking.canceled_by = canceled_by or (actor.display_name if actor else None)
    db.session.flush()
    record_event(booking, "canceled", actor=actor, detail=booking.cancellation_reason)
    workflows.cancel_steps(booking)
    return True


OUTCOMES = ("completed", "no_show")

# Other domains act on a session's outcome without bookings importing them (payments: a
# completed session uses a package credit). A hook is `fn(booking, outcome)`; it flushes.
_outcome_hooks: list = []


def on_outcome(fn):
    """Register `fn(booking, outcome)` to run when a session is marked completed or no-show."""
    _outcome_hooks.append(fn)
    return fn


def set_outcome(booking: Booking, outcome: str, *, actor: User | None) -> bool:
    """Mark a session completed or a no-show. False when it already had that outcome."""
    if outcome not in OUTCOMES:
        raise BookingError("Choose completed or no-show.")
    if booking.status == outcome:
        return False
    if booking.status == "canceled":
        raise BookingError("A canceled session cannot be marked as taken place.")
    if booking.start_at > utcnow():
        raise BookingError("This session has not started yet.")
    booking.status = outcome
    db.session.flush()
    record_event(booking, outcome, actor=actor)
    for hook in _outcome_hooks:
        hook(booking, outcome)
    workflows.cancel_steps(booking, keep=("confirmation", "coach_notification"))
    if outcome == "completed":
        workflows.plan_steps(booking, reason="completed")
    return True


def assign_coach(booking: Booking, coach: User | None, *, actor: User) -> None:
    """Give a booking to a coach (staff fixing an unassigned one, or moving it)."""
    if coach is not None and coach.role != "coach":
        raise BookingError(f"{coach.display_name} is not a coach.")
    if booking.coach_id == (coach.id if coach else None):
        return
    if coach is not None and booking.active:
        refuse_overlap(coach.id, booking.start_at, booking.end_at, exclude_id=booking.id)
    booking.coach_id = coach.id if coach else None
    booking.coach = coach
    db.session.flush()
    adopt_client(booking.contact, coach)
    record_event(booking, "assigned", actor=actor, coach=coach.display_name if coach else None)
    if booking.active:
        workflows.plan_steps(booking, reason="assigned")


def update_booking(
    booking: Booking,
    *,
    start_at: datetime,
    end_at: datetime,
    coach: User | None,
    service: Service | None,
    location: str | None,
    meeting_url: str | None,
    actor: User,
) -> None:
    """Staff's edit: reschedule, change coach, service or place; overlaps are refused.

    A provider's booking keeps the provider's times: a change here would be undone by its
    next update, so the message points at the provider's reschedule link.
    """
    if not booking.active:
        raise BookingError(f"A {booking.status_label.lower()} session cannot be changed.")
    _check_times(start_at, end_at)
    moved = (start_at, end_at) != (booking.start_at, booking.end_at)
    if moved and booking.source != "manual":
        raise BookingError(
            f"This session was booked through {booking.source_label}: reschedule it there"
            + (f" ({booking.reschedule_url})." if booking.reschedule_url else ".")
        )
    coach_id = coach.id if coach else None
    if moved or coach_id != booking.coach_id:
        # Checked for the coach it will have at the times it will have.
        refuse_overlap(coach_id, start_at, end_at, exclude_id=booking.id)
    if moved:
        reschedule_booking(
            booking, start_at=start_at, end_at=end_at, actor=actor, check_overlap=False
        )
    assign_coach(booking, coach, actor=actor)
    if (service.id if service else None) != booking.service_id:
        booking.service_id, booking.service = (service.id if service else None), service
    booking.location = location
    booking.meeting_url = meeting_url
    db.session.flush()


def add_session_note(booking: Booking, body: str, *, actor: User) -> SessionNote:
    """Write a note about a session."""
    body = (body or "").strip()
    if not body:
        raise BookingError("Write the note first.")
    note = SessionNote(
        booking_id=booking.id, contact_id=booking.contact_id, author_id=actor.id, body=body
    )
    db.session.add(note)
    db.session.flush()
    return note


@dataclass
class Applied:
    """What applying a provider's booking did: `created`, `rescheduled`, `updated`,
    `unchanged` or `canceled`."""

    booking: Booking | None
    change: str


def find_external(source: str, *external_ids: str | None) -> Booking | None:
    """The booking a provider knows by any of `external_ids`."""
    ids = [i for i in external_ids if i]
    if not ids:
        return None
    return db.session.scalars(
        sa.select(Booking)
        .where(Booking.source == source, Booking.external_id.in_(ids))
        .order_by(Booking.id)
        .limit(1)
    ).first()


def apply_external_booking(
    source: str,
    external_id: str,
    *,
    contact: Contact,
    coach: User | None,
    start_at: datetime,
    end_at: datetime,
    previous_external_id: str | None = None,
    service: Service | None = None,
    imported: bool = False,
    **fields,
) -> Applied:
    """Create or update the booking a provider sent, idempotently.

    A reschedule names the booking it replaces (`previous_external_id`): that booking is
    moved in place and takes the new id, so the client's session stays one booking.
    Provider bookings are never refused for overlapping: the coach's calendar allowed it.
    """
    booking = find_external(source, external_id)
    if booking is None and previous_external_id:
        booking = find_external(source, previous_external_id)
    if booking is None:
        booking = create_booking(
            contact,
            coach=coach,
            service=service,
            start_at=start_at,
            end_at=end_at,
            actor=None,
            source=source,
            check_overlap=False,
            imported=imported,
            external_id=external_id,
            status="rescheduled" if previous_external_id else "scheduled",
            **fields,
        )
        return Applied(booking, "created")
    if booking.status == "canceled" and booking.external_id == external_id:
        return Applied(booking, "unchanged")  # a late duplicate of a booking since canceled
    moved = booking.start_at != start_at or booking.end_at != end_at
    booking.external_id = external_id
    for key, value in fields.items():
        if value is not None and getattr(booking, key) != value:
            setattr(booking, key, value)
    if service is not None:
        booking.service_id, booking.service = service.id, service
    if coach is not None and booking.coach_id is None:
        booking.coach_id, booking.coach = coach.id, coach
        adopt_client(booking.contact, coach)
    if booking.status == "canceled" and previous_external_id:
        # Calendly's cancel half of a reschedule came first and was applied as a
        # cancellation by an older release; the new half brings the session back.
        booking.status = "scheduled"
        booking.canceled_at = booking.cancellation_reason = booking.canceled_by = None
    if moved and booking.active:
        reschedule_booking(
            booking, start_at=start_at, end_at=end_at, actor=None, check_overlap=False
        )
        return Applied(booking, "rescheduled")
    db.session.flush()
    return Applied(booking, "updated")


# --- who sees what ----------------------------------------------------------------


def scope_bookings(query, user: User):
    """Limit a Booking query to what `user` may see: a coach sees only their own sessions."""
    if user.role in ("admin", "staff"):
        return query
    return query.where(Booking.coach_id == user.id)


def get_visible(booking_id: int, user: User) -> Booking | None:
    """The booking if `user` may see it, else None (views answer 404)."""
    return db.session.scalars(
        scope_bookings(sa.select(Booking).where(Booking.id == booking_id), user)
    ).first()
