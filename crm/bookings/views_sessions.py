"""A coach's sessions: "My sessions", a session's page, its outcome and session notes.

A coach sees only their own sessions (`services.scope_bookings`): another coach's session
answers 404 on every URL. Staff and admins see every coach's sessions here too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from flask import abort, current_app, flash, request, url_for
from flask_login import current_user, login_required
from sqlalchemy.orm import selectinload
from werkzeug.datastructures import MultiDict

from crm.auth.access import STAFF_ROLES, scope_contacts
from crm.auth.views import safe_next
from crm.bookings import services
from crm.bookings.models import (
    STATUS_LABELS,
    STATUSES,
    STEP_DEFAULTS,
    Booking,
    BookingEvent,
    BookingStep,
    SessionNote,
)
from crm.bookings.timeline import booking_zone, event_title
from crm.bookings.views import bp
from crm.contacts.models import Contact, Note
from crm.contacts.notes import read_note_body
from crm.conversations.models import CHANNEL_LABELS, Message
from crm.database import utcnow
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.users.models import User

PAGE_SIZE = 20
TABS = {"upcoming": "Upcoming", "past": "Past"}
SORTS = {"asc": "Soonest first", "desc": "Latest first"}
# Recent messages and notes per client: in a row of the list, and on a session's page.
RECENT_IN_ROW = 3
RECENT_ON_PAGE = 5
# Blocks of show.html that htmx may ask for with ?part=.
PARTS = ("header", "history", "steps", "session_notes")
# History and steps reload themselves on this event (an outcome was set).
UPDATED = "booking-updated"
PAYMENT_LABELS = {
    "none": "—",
    "unpaid": "Unpaid",
    "pending": "Pending",
    "paid": "Paid",
    "refunded": "Refunded",
    "partially_refunded": "Partially refunded",
    "disputed": "Disputed",
}
STEP_STATUS_LABELS = {
    "scheduled": "Scheduled",
    "sent": "Sent",
    "skipped": "Skipped",
    "failed": "Failed",
    "canceled": "Canceled",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def _fragment() -> bool:
    return bool(request.htmx and not request.htmx.boosted)


def _is_staff(user: User) -> bool:
    return user.role in STAFF_ROLES


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _parse_date(raw: str) -> date | None:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        return None


# --- the list's state -------------------------------------------------------------


@dataclass
class SessionQuery:
    """The list's state, as it travels in the URL: tab, filters and sort."""

    tab: str = "upcoming"
    statuses: list[str] = field(default_factory=list)
    date_from: str = ""
    date_to: str = ""
    sort: str = ""
    coach: int | None = None
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: MultiDict, user: User) -> SessionQuery:
        tab = args.get("tab", "")
        state = cls(
            tab=tab if tab in TABS else "upcoming",
            statuses=[s for s in STATUSES if s in args.getlist("status")],
            sort=args.get("sort", "") if args.get("sort") in SORTS else "",
        )
        for name in ("from", "to"):
            raw = args.get(name, "").strip()
            if raw and _parse_date(raw) is None:
                state.errors.append(f"“{raw}” is not a date (YYYY-MM-DD); it was ignored.")
                raw = ""
            setattr(state, f"date_{name}", raw)
        start, end = state.first_day, state.last_day
        if start and end and end < start:
            state.errors.append("The end date is before the start date; the dates were ignored.")
            state.date_from = state.date_to = ""
        # Only staff choose a coach; a coach's list is always their own.
        coach = args.get("coach", "")
        if _is_staff(user) and coach.isdigit():
            state.coach = int(coach)
        return state

    @property
    def first_day(self) -> date | None:
        return _parse_date(self.date_from) if self.date_from else None

    @property
    def last_day(self) -> date | None:
        return _parse_date(self.date_to) if self.date_to else None

    @property
    def order(self) -> str:
        """Upcoming sessions read soonest first, past ones latest first, unless chosen."""
        return self.sort or ("asc" if self.tab == "upcoming" else "desc")

    @property
    def filtered(self) -> bool:
        return bool(self.statuses or self.date_from or self.date_to)

    def to_args(self, **changes) -> list[tuple[str, str]]:
        values = {
            "tab": self.tab,
            "coach": self.coach,
            "status": self.statuses,
            "from": self.date_from,
            "to": self.date_to,
            "sort": self.sort,
        } | changes
        args: list[tuple[str, str]] = []
        if values["tab"] != "upcoming":
            args.append(("tab", values["tab"]))
        if values["coach"]:
            args.append(("coach", str(values["coach"])))
        args.extend(("status", s) for s in values["status"])
        for name in ("from", "to", "sort"):
            if values[name]:
                args.append((name, values[name]))
        return args

    def url(self, *, after: str | None = None, **changes) -> str:
        args = self.to_args(**changes)
        if after:
            args.append(("after", after))
        query = urlencode(args)
        return url_for("bookings.mine") + ("?" + query if query else "")


def encode_cursor(booking: Booking) -> str:
    return f"{(booking.start_at - _EPOCH) // _MICRO}.{booking.id}"


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The (start, id) a page continues after; ValueError when it is not one."""
    micros, _, booking_id = cursor.partition(".")
    return _EPOCH + timedelta(microseconds=int(micros)), int(booking_id)


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=zone).astimezone(UTC)


def matching(state: SessionQuery, user: User, now: datetime):
    """The sessions `user` may see that match the list's state, unordered."""
    query = services.scope_bookings(sa.select(Booking), user)
    if state.coach is not None:
        query = query.where(Booking.coach_id == state.coach)
    if state.tab == "upcoming":
        query = query.where(Booking.end_at >= now)
    else:
        query = query.where(Booking.end_at < now)
    if state.statuses:
        query = query.where(Booking.status.in_(state.statuses))
    # Dates are days in the reader's timezone: from its first moment to the next day's.
    zone = _zone(user.timezone)
    if state.first_day:
        query = query.where(Booking.start_at >= _local_midnight(state.first_day, zone))
    if state.last_day:
        end = _local_midnight(state.last_day + timedelta(days=1), zone)
        query = query.where(Booking.start_at < end)
    return query


def sessions_page(
    state: SessionQuery, user: User, *, after: str = "", size: int = PAGE_SIZE
) -> tuple[list[Booking], str | None]:
    """Up to `size` sessions in the state's order after the cursor; and the next cursor."""
    query = matching(state, user, utcnow())
    if after:
        at, booking_id = decode_cursor(after)
        if state.order == "asc":
            later = sa.and_(Booking.start_at == at, Booking.id > booking_id)
            query = query.where(sa.or_(Booking.start_at > at, later))
        else:
            earlier = sa.and_(Booking.start_at == at, Booking.id < booking_id)
            query = query.where(sa.or_(Booking.start_at < at, earlier))
    if state.order == "asc":
        query = query.order_by(Booking.start_at, Booking.id)
    else:
        query = query.order_by(Booking.start_at.desc(), Booking.id.desc())
    rows = list(db.session.scalars(query.limit(size + 1)))
    if len(rows) > size:
        rows = rows[:size]
        return rows, encode_cursor(rows[-1])
    return rows, None


# --- what a session shows of its client -------------------------------------------


def _latest_per(model, key, ids, limit: int, *options) -> dict[int, list]:
    """The `limit` newest rows of `model` for each of `ids` (by `key`), in one query."""
    grouped: dict[int, list] = defaultdict(list)
    ids = sorted(set(ids))
    if not ids:
        return grouped
    rank = (
        sa.func.row_number()
        .over(partition_by=key, order_by=(model.created_at.desc(), model.id.desc()))
        .label("rank")
    )
    ranked = sa.select(model.id, rank).where(key.in_(ids)).subquery()
    query = (
        sa.select(model)
        .join(ranked, ranked.c.id == model.id)
        .where(ranked.c.rank <= limit)
        .order_by(model.created_at.desc(), model.id.desc())
        .options(*options)
    )
    for row in db.session.scalars(query):
        grouped[getattr(row, key.key)].append(row)
    return grouped


@dataclass
class Details:
    """Per session, what its row or page shows of the client: recent messages and notes."""

    messages: dict[int, list[Message]]
    notes: dict[int, list[Note]]
    session_notes: dict[int, list[SessionNote]]
    # The contacts the reader may open (a coach: their own clients, not in the trash).
    linkable: set[int]

    def contact_url(self, booking: Booking) -> str | None:
        if booking.contact_id not in self.linkable:
            return None
        return url_for("contacts.show", contact_id=booking.contact_id)


def load_details(bookings: list[Booking], user: User, limit: int) -> Details:
    """The details of many sessions in four queries, whatever their number."""
    contact_ids = [b.contact_id for b in bookings]
    booking_ids = [b.id for b in bookings]
    linkable: set[int] = set()
    if contact_ids:
        query = sa.select(Contact.id).where(
            Contact.id.in_(set(contact_ids)), Contact.deleted_at.is_(None)
        )
        linkable = set(db.session.scalars(scope_contacts(query, user)))
    return Details(
        messages=_latest_per(Message, Message.contact_id, contact_ids, limit),
        notes=_latest_per(Note, Note.contact_id, contact_ids, limit, selectinload(Note.author)),
        session_notes=_latest_per(SessionNote, SessionNote.booking_id, booking_ids, limit),
        linkable=linkable,
    )


def meeting_link(booking: Booking) -> str | None:
    """The session's meeting URL when it is a web address (never a `javascript:` link)."""
    url = (booking.meeting_url or "").strip()
    return url if url.startswith(("https://", "http://")) else None


def can_set_outcome(booking: Booking) -> bool:
    """Completed or no-show: once the session has started, unless it was canceled."""
    return booking.status != "canceled" and booking.start_at <= utcnow()


def _common() -> dict:
    return {
        "meeting_link": meeting_link,
        "can_set_outcome": can_set_outcome,
        "payment_label": lambda b: PAYMENT_LABELS.get(b.payment_status, b.payment_status),
        "is_staff": _is_staff(current_user),
        "channels": CHANNEL_LABELS,
    }


# --- My sessions ------------------------------------------------------------------


def _url_if(endpoint: str, **values) -> str | None:
    """The URL of another part's page, once that part exists."""
    if endpoint not in current_app.view_functions:
        return None
    return url_for(endpoint, **values)


def _coach_choices() -> list[User]:
    return services.coaches() if _is_staff(current_user) else []


def _list_context(state: SessionQuery, after: str = "") -> dict:
    try:
        rows, next_after = sessions_page(state, current_user, after=after)
    except (ValueError, OverflowError):
        abort(400, "The page marker is not valid. Go back to My sessions and try again.")
    return {
        "state": state,
        "rows": rows,
        "after": after,
        "next_url": state.url(after=next_after) if next_after else None,
        "details": load_details(rows, current_user, RECENT_IN_ROW),
        "tabs": TABS,
        "sorts": SORTS,
        "statuses": STATUS_LABELS,
        "coaches": _coach_choices(),
        "open_id": None,
        "row_errors": {},
        "back": state.url(after=after or None),
        "all_url": _url_if("bookings.index"),
        **_common(),
    }


@bp.get("/mine")
@login_required
def mine():
    """A coach's own sessions, upcoming or past, filtered and sorted from the URL.

    htmx asks for the list (a tab, a filter change) or for more rows (load more).
    """
    state = SessionQuery.from_args(request.args, current_user)
    after = request.args.get("after", "")
    context = _list_context(state, after)
    response = render("bookings/mine.html", "rows" if after else "sessions", **context)
    if _fragment() and not after:
        # The filter form sends its empty fields too; the address bar gets the clean URL.
        response.headers["HX-Push-Url"] = state.url()
    return response


# --- a session's page -------------------------------------------------------------


def _visible_or_404(booking_id: int) -> Booking:
    booking = services.get_visible(booking_id, current_user)
    if booking is None:
        abort(404)
    return booking


def _staff_links(booking: Booking) -> dict:
    """Reschedule and cancel, for staff (once the staff pages exist)."""
    if not _is_staff(current_user):
        return {"edit_url": None, "cancel_url": None}
    taken_place = booking.status in ("completed", "no_show")
    return {
        "edit_url": None if taken_place else _url_if("bookings.edit", booking_id=booking.id),
        "cancel_url": _url_if("bookings.cancel", booking_id=booking.id) if booking.active else None,
    }


def _page_context(booking: Booking, **overrides) -> dict:
    details = load_details([booking], current_user, RECENT_ON_PAGE)
    history = db.session.scalars(
        sa.select(BookingEvent)
        .where(BookingEvent.booking_id == booking.id)
        .order_by(BookingEvent.at, BookingEvent.id)
    )
    steps = db.session.scalars(
        sa.select(BookingStep)
        .where(BookingStep.booking_id == booking.id)
        .order_by(BookingStep.due_at, BookingStep.id)
    )
    notes = db.session.scalars(
        sa.select(SessionNote)
        .where(SessionNote.booking_id == booking.id)
        .order_by(SessionNote.created_at.desc(), SessionNote.id.desc())
    )
    return {
        "booking": booking,
        "details": details,
        "messages": details.messages.get(booking.contact_id, []),
        "notes": details.notes.get(booking.contact_id, []),
        "history": list(history),
        "event_title": event_title,
        "steps": list(steps),
        "step_label": lambda s: STEP_DEFAULTS.get(s.step, {}).get("label", s.step),
        "step_status": lambda s: STEP_STATUS_LABELS.get(s.status, s.status),
        "session_notes": list(notes),
        "client_zone": booking_zone(booking),
        "outcome_error": None,
        "note_error": None,
        "note_draft": "",
        **_staff_links(booking),
        **_common(),
    } | overrides


@bp.get("/<int:booking_id>")
@login_required
def show(booking_id: int):
    """One session: the client, their recent messages and notes, history, steps, notes."""
    booking = _visible_or_404(booking_id)
    part = request.args.get("part")
    block = part if _fragment() and part in PARTS else None
    return render("bookings/show.html", block, **_page_context(booking))


def _back(booking: Booking, anchor: str | None = None) -> str:
    return safe_next(request.form.get("next")) or url_for(
        "bookings.show", booking_id=booking.id, _anchor=anchor
    )


def _row(booking: Booking, **overrides):
    """One session's row of My sessions, as htmx swaps it in place after an action."""
    back = safe_next(request.form.get("next")) or url_for("bookings.mine")
    context = {
        "booking": booking,
        "details": load_details([booking], current_user, RECENT_IN_ROW),
        "open_id": booking.id,
        "row_errors": {},
        "back": back,
        **_common(),
    } | overrides
    return render("bookings/mine.html", "session", **context)


@bp.post("/<int:booking_id>/outcome")
@login_required
def outcome(booking_id: int):
    """Mark a session completed or a no-show; a refusal is shown where the buttons are.

    From My sessions (`view=row`) htmx gets the session's row back, from the session's
    page its header (and history and steps reload themselves).
    """
    booking = _visible_or_404(booking_id)
    chosen = request.form.get("outcome", "")
    in_row = request.form.get("view") == "row"
    try:
        changed = services.set_outcome(booking, chosen, actor=current_user)
    except services.BookingError as exc:
        db.session.rollback()
        if _fragment():
            # 200, so htmx swaps the message in as it swaps any answer.
            if in_row:
                return _row(booking, row_errors={booking.id: str(exc)})
            context = _page_context(booking, outcome_error=str(exc))
            return render("bookings/show.html", "header", **context)
        flash(str(exc), "error")
        return redirect_303(_back(booking))
    db.session.commit()
    done = f"Marked as {booking.status_label.lower()}." if changed else "Nothing to change."
    if _fragment():
        if in_row:
            response = _row(booking)
        else:
            response = render("bookings/show.html", "header", **_page_context(booking))
        response.headers["HX-Trigger"] = UPDATED
        return response
    flash(done, "success")
    return redirect_303(_back(booking))


@bp.post("/<int:booking_id>/notes")
@login_required
def add_note(booking_id: int):
    """Write a note about a session (its coach or staff); it shows on the client's timeline."""
    booking = _visible_or_404(booking_id)
    draft = request.form.get("body", "")
    # The same rules as the contact's notes: not empty, not longer than a note may be.
    body, error = read_note_body(draft)
    if error is None:
        try:
            services.add_session_note(booking, body, actor=current_user)
        except services.BookingError as exc:
            db.session.rollback()
            error = str(exc)
    if error is not None:
        context = _page_context(booking, note_error=error, note_draft=draft)
        # htmx swaps the form back with its message (base.html swaps 4xx answers).
        return render("bookings/show.html", "session_notes", status=422, **context)
    db.session.commit()
    if _fragment():
        return render("bookings/show.html", "session_notes", **_page_context(booking))
    flash("Note added.", "success")
    return redirect_303(url_for("bookings.show", booking_id=booking.id, _anchor="session-notes"))
