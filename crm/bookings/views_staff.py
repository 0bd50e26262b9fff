"""The staff's bookings pages: every booking with filters, manual booking, rescheduling,
canceling and assigning; the week calendar (everyone, a coach their own sessions); and
utilization per coach.

Times are entered and shown in a timezone that the page names: the coach's when booking,
the reader's when listing. Everything is stored in UTC.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from flask import abort, current_app, flash, make_response, redirect, request, url_for
from flask_login import current_user, login_required
from werkzeug.datastructures import MultiDict

from crm.auth.access import STAFF_ROLES, roles_required
from crm.auth.views import safe_next
from crm.bookings import services
from crm.bookings.models import (
    ACTIVE,
    SOURCE_LABELS,
    SOURCES,
    STATUS_LABELS,
    Booking,
    Service,
)
from crm.bookings.timeline import describe
from crm.bookings.views import bp
from crm.contacts.listing import MIN_SEARCH, search_condition, visible_contacts
from crm.contacts.models import Contact
from crm.database import utcnow
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.users.models import User, timezones

PAGE_SIZE = 50
SORTS = {"start": "Soonest first", "-start": "Latest first"}
STATUS_FILTERS = {"active": "Scheduled or rescheduled", **STATUS_LABELS}
# A full-time week: utilization is booked hours against this many hours per 7 days.
WEEK_HOURS = 40
MAX_UTILIZATION_DAYS = 366
# The calendar shows at least these hours; earlier or later sessions widen it.
DAY_HOURS = (7, 20)
MIN_MINUTES, MAX_MINUTES = 5, 12 * 60
CONTACT_CHOICES = 10


# --- time in a named zone -----------------------------------------------------------


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def viewer_zone() -> ZoneInfo:
    return zone(current_user.timezone)


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC moment a day starts in `tz` (not always 24 h after the day before)."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def parse_date(value: str | None) -> date | None:
    try:
        return date.fromisoformat((value or "").strip())
    except ValueError:
        return None


def _go(location: str):
    """After a change: a browser is redirected; htmx is told to load the page."""
    if request.htmx and not request.htmx.boosted:
        response = make_response("", 204)
        response.headers["HX-Redirect"] = location
        return response
    return redirect_303(location)


def booking_url(booking: Booking) -> str:
    """Where a booking is shown: its page (views_sessions), else the list."""
    if "bookings.show" in current_app.view_functions:
        return url_for("bookings.show", booking_id=booking.id)
    return url_for("bookings.index", coach=booking.coach_id or "unassigned")


def _visible_or_404(booking_id: int) -> Booking:
    booking = services.get_visible(booking_id, current_user)
    if booking is None:
        abort(404)
    return booking


def _all_services() -> list[Service]:
    return list(db.session.scalars(sa.select(Service).order_by(Service.name, Service.id)))


# --- the list -----------------------------------------------------------------------


@dataclass
class ListState:
    """The list's filters, sort and page, as they travel in the URL.

    `start` absent from the URL means today (the list opens on what is coming); present
    but empty means no lower bound, so clearing the field shows the past too.
    """

    coach: str = ""  # "", "unassigned" or a coach's id
    service: str = ""
    status: str = ""  # "", "active" or a status
    source: str = ""
    start: str = ""
    end: str = ""
    sort: str = "start"
    page: int = 1

    @classmethod
    def from_args(cls, args, today: date) -> ListState:
        def pick(name: str, allowed=None) -> str:
            value = (args.get(name) or "").strip()
            if allowed is not None and value not in allowed:
                return ""
            return value

        coach = pick("coach")
        if coach != "unassigned" and not coach.isdigit():
            coach = ""
        service = pick("service")
        start = args.get("from", today.isoformat())
        page = args.get("page", "1")
        return cls(
            coach=coach,
            service=service if service.isdigit() else "",
            status=pick("status", STATUS_FILTERS),
            source=pick("source", SOURCES),
            start=(start or "").strip() if parse_date(start) else "",
            end=pick("end") if parse_date(args.get("end")) else "",
            sort=pick("sort", SORTS) or "start",
            page=max(1, int(page)) if page.isdigit() else 1,
        )

    def to_args(self, **changes) -> list[tuple[str, str]]:
        values = {f.name: getattr(self, f.name) for f in fields(self)} | changes
        args = [("from", values.pop("start"))]  # always: its absence means today
        for name, value in values.items():
            if name == "sort" and value == "start" or name == "page" and value == 1:
                continue
            if value:
                args.append((name, str(value)))
        return args

    def query_string(self, **changes) -> str:
        return urlencode(self.to_args(**changes))

    def url(self, **changes) -> str:
        return url_for("bookings.index") + "?" + self.query_string(**changes)


def list_query(state: ListState, tz: ZoneInfo):
    """The bookings matching the list's filters, in its order."""
    query = sa.select(Booking)
    if state.coach == "unassigned":
        query = query.where(Booking.coach_id.is_(None))
    elif state.coach:
        query = query.where(Booking.coach_id == int(state.coach))
    if state.service:
        query = query.where(Booking.service_id == int(state.service))
    if state.status == "active":
        query = query.where(Booking.status.in_(ACTIVE))
    elif state.status:
        query = query.where(Booking.status == state.status)
    if state.source:
        query = query.where(Booking.source == state.source)
    if start := parse_date(state.start):
        query = query.where(Booking.start_at >= local_midnight(start, tz))
    if end := parse_date(state.end):
        query = query.where(Booking.start_at < local_midnight(end + timedelta(days=1), tz))
    if state.sort == "-start":
        return query.order_by(Booking.start_at.desc(), Booking.id.desc())
    return query.order_by(Booking.start_at, Booking.id)


def unassigned_count() -> int:
    """Bookings still to take place that no coach has: staff should assign them."""
    return db.session.scalar(
        sa.select(sa.func.count())
        .select_from(Booking)
        .where(Booking.coach_id.is_(None), Booking.status.in_(ACTIVE))
    )


def _list_context(state: ListState, **extra) -> dict:
    tz = viewer_zone()
    query = list_query(state, tz)
    total = db.session.scalar(sa.select(sa.func.count()).select_from(query.subquery()))
    pages = max(1, -(-total // PAGE_SIZE))
    state.page = min(state.page, pages)
    rows = list(db.session.scalars(query.offset((state.page - 1) * PAGE_SIZE).limit(PAGE_SIZE)))
    return {
        "bookings": rows,
        "total": total,
        "pages": pages,
        "state": state,
        "list_url": state.url(),
        "coaches": services.coaches(),
        "all_services": _all_services(),
        "statuses": STATUS_FILTERS,
        "sources": SOURCE_LABELS,
        "sorts": SORTS,
        "unassigned": unassigned_count(),
        "unassigned_url": ListState(coach="unassigned", status="active").url(),
        "show_booking": "bookings.show" in current_app.view_functions,
        "zone_name": tz.key,
        "row_errors": {},
        **extra,
    }


def _today() -> date:
    return utcnow().astimezone(viewer_zone()).date()


@bp.get("/")
@login_required
def index():
    """Every booking, filtered by coach, service, status, source and dates (staff).

    A coach has their own page, "My sessions". htmx asks for the rows after a filter change.
    """
    if current_user.role not in STAFF_ROLES:
        if "bookings.mine" in current_app.view_functions:
            return redirect(url_for("bookings.mine"))
        return redirect(url_for("bookings.calendar"))
    state = ListState.from_args(request.args, _today())
    context = _list_context(state)
    response = render("bookings/index.html", "rows", **context)
    if request.htmx and not request.htmx.boosted:
        response.headers["HX-Push-Url"] = context["list_url"]
    return response


def _back_to_list() -> str:
    """The list page the form was posted from (kept on this site), else the list."""
    target = safe_next(request.form.get("next"))
    if target and urlsplit(target).path == url_for("bookings.index"):
        return target
    return url_for("bookings.index")


@bp.post("/<int:booking_id>/assign")
@roles_required(*STAFF_ROLES)
def assign(booking_id: int):
    """Give a booking to a coach (one a provider sent for a coach Rapport did not know)."""
    booking = _visible_or_404(booking_id)
    raw = request.form.get("coach_id", "")
    coach = db.session.get(User, int(raw)) if raw.isdigit() else None
    error = None
    if coach is None or coach.role != "coach" or not coach.active:
        error = "Choose a coach."
    else:
        try:
            services.assign_coach(booking, coach, actor=current_user)
        except services.BookingError as exc:
            error = str(exc)
    if error:
        db.session.rollback()
    else:
        db.session.commit()
    back = _back_to_list()
    if request.htmx and not request.htmx.boosted:
        args = MultiDict(parse_qsl(urlsplit(back).query, keep_blank_values=True))
        state = ListState.from_args(args, _today())
        context = _list_context(state, row_errors={booking.id: error} if error else {})
        return render("bookings/index.html", "rows", status=422 if error else 200, **context)
    if error:
        flash(error, "error")
    else:
        flash(f"{describe(booking)}: assigned.", "success")
    return redirect_303(back)


# --- booking and rescheduling -------------------------------------------------------


@dataclass
class BookingForm:
    """The booking form: what was typed (`raw`), what is wrong, and the clean values."""

    raw: dict
    errors: dict
    clean: dict

    @property
    def valid(self) -> bool:
        return not self.errors


FORM_FIELDS = (
    "contact_id",
    "coach_id",
    "service_id",
    "date",
    "time",
    "timezone",
    "duration",
    "location",
    "meeting_url",
)


def read_form(values, *, booking: Booking | None = None) -> BookingForm:
    """Check the booking form; times are read in the chosen zone, else the coach's."""
    raw = {name: (values.get(name) or "").strip() for name in FORM_FIELDS}
    errors: dict[str, str] = {}
    clean: dict = {}

    if booking is None:
        contact = None
        if raw["contact_id"].isdigit():
            contact = db.session.scalars(
                visible_contacts(current_user).where(Contact.id == int(raw["contact_id"]))
            ).first()
        if contact is None:
            errors["contact_id"] = "Choose the client."
        clean["contact"] = contact

    coach = db.session.get(User, int(raw["coach_id"])) if raw["coach_id"].isdigit() else None
    if coach is None or coach.role != "coach" or not coach.active:
        errors["coach_id"] = "Choose a coach."
        coach = None
    clean["coach"] = coach

    service = None
    if raw["service_id"]:
        service = (
            db.session.get(Service, int(raw["service_id"])) if raw["service_id"].isdigit() else None
        )
        if service is None:
            errors["service_id"] = "Choose a service from the list."
    clean["service"] = service

    day = parse_date(raw["date"])
    if day is None:
        errors["date"] = "Enter the date (YYYY-MM-DD)." if raw["date"] else "Enter the date."
    try:
        at = time.fromisoformat(raw["time"]) if raw["time"] else None
    except ValueError:
        at = None
    if at is None:
        errors["time"] = "Enter the time (HH:MM)." if raw["time"] else "Enter the time."

    tz_name = raw["timezone"] or (coach.timezone if coach else "")
    if raw["timezone"] and raw["timezone"] not in timezones():
        errors["timezone"] = "Choose a timezone from the list."
    clean["timezone"] = tz_name

    minutes = None
    if raw["duration"]:
        minutes = int(raw["duration"]) if raw["duration"].isdigit() else 0
        if not MIN_MINUTES <= minutes <= MAX_MINUTES:
            errors["duration"] = f"Enter the length in minutes ({MIN_MINUTES} to {MAX_MINUTES})."
    else:
        minutes = service.duration_minutes if service else 60
    clean["minutes"] = minutes

    if len(raw["location"]) > 500:
        errors["location"] = "Keep the location under 500 characters."
    clean["location"] = raw["location"] or None
    if raw["meeting_url"] and (
        not raw["meeting_url"].startswith(("https://", "http://"))
        or len(raw["meeting_url"]) > 1000
        or " " in raw["meeting_url"]
    ):
        errors["meeting_url"] = "Enter a link starting with https://."
    clean["meeting_url"] = raw["meeting_url"] or None

    if day and at and tz_name and "timezone" not in errors and "duration" not in errors:
        tz = zone(tz_name)
        local = datetime.combine(day, at.replace(second=0, microsecond=0), tzinfo=tz)
        start_at = local.astimezone(UTC)
        if start_at.astimezone(tz).replace(tzinfo=None) != local.replace(tzinfo=None):
            errors["time"] = (
                f"{at:%H:%M} does not exist on {day:%d %b %Y} in {tz.key}: the clocks change."
            )
        clean["start_at"] = start_at
        clean["end_at"] = start_at + timedelta(minutes=minutes)
    return BookingForm(raw, errors, clean)


def _contact_choices(term: str) -> list[Contact]:
    if len(term) < MIN_SEARCH:
        return []
    query = visible_contacts(current_user).where(search_condition(term))
    return list(db.session.scalars(query.order_by(Contact.name).limit(CONTACT_CHOICES)))


def _form_page(form: BookingForm, *, booking: Booking | None, contact, status=200, **extra):
    block = "booking_form"
    if request.args.get("part") == "contacts":
        block = "contact_choices"
    return render(
        "bookings/new.html",
        block,
        status=status,
        form=form,
        errors=form.errors,
        value=form.raw,
        booking=booking,
        contact=contact,
        coaches=services.coaches(),
        all_services=[s for s in _all_services() if s.active or (form.clean.get("service") is s)],
        timezones=sorted(timezones()),
        contact_q=(request.args.get("contact_q") or "").strip(),
        choices=_contact_choices((request.args.get("contact_q") or "").strip()),
        show_booking="bookings.show" in current_app.view_functions,
        **extra,
    )


def _prefill(args, *, booking: Booking | None = None) -> BookingForm:
    """The form as it opens: from a booking, from the URL (links, the service's length)."""
    raw = {name: "" for name in FORM_FIELDS}
    if booking is not None:
        tz = zone(booking.coach.timezone if booking.coach else current_user.timezone)
        start = booking.start_at.astimezone(tz)
        raw.update(
            coach_id=str(booking.coach_id or ""),
            service_id=str(booking.service_id or ""),
            date=start.date().isoformat(),
            time=f"{start:%H:%M}",
            timezone=tz.key,
            duration=str(int(booking.duration.total_seconds() // 60)),
            location=booking.location or "",
            meeting_url=booking.meeting_url or "",
        )
    for name in FORM_FIELDS:
        if name in args:
            raw[name] = (args.get(name) or "").strip()
    if args.get("fill") == "service":
        # The service was just chosen: its length replaces the one typed.
        chosen = (
            db.session.get(Service, int(raw["service_id"])) if raw["service_id"].isdigit() else None
        )
        if chosen is not None:
            raw["duration"] = str(chosen.duration_minutes)
    if not raw["timezone"] and raw["coach_id"].isdigit():
        coach = db.session.get(User, int(raw["coach_id"]))
        if coach is not None:
            raw["timezone"] = coach.timezone
    return BookingForm(raw, {}, {})


@bp.get("/new")
@roles_required(*STAFF_ROLES)
def new():
    """The form to book a session for a client (`contact_id` from the contact's page)."""
    form = _prefill(request.args)
    contact = None
    if form.raw["contact_id"].isdigit():
        contact = db.session.scalars(
            visible_contacts(current_user).where(Contact.id == int(form.raw["contact_id"]))
        ).first()
    return _form_page(form, booking=None, contact=contact)


@bp.post("/new")
@roles_required(*STAFF_ROLES)
def create():
    """Book a session; one overlapping the coach's other sessions is refused."""
    form = read_form(request.form)
    contact = form.clean.get("contact")
    if not form.valid:
        return _form_page(form, booking=None, contact=contact, status=422)
    try:
        booking = services.create_booking(
            contact,
            coach=form.clean["coach"],
            service=form.clean["service"],
            start_at=form.clean["start_at"],
            end_at=form.clean["end_at"],
            actor=current_user,
            location=form.clean["location"],
            meeting_url=form.clean["meeting_url"],
        )
    except services.BookingError as exc:
        db.session.rollback()
        form.errors["form"] = str(exc)
        return _form_page(form, booking=None, contact=contact, status=422)
    db.session.commit()
    when = booking.start_at.astimezone(zone(form.clean["timezone"]))
    flash(
        f"Booked {describe(booking)} for {contact.name}, "
        f"{when:%a %d %b %Y %H:%M} ({when.tzinfo.key}).",
        "success",
    )
    return _go(booking_url(booking))


@bp.get("/<int:booking_id>/edit")
@roles_required(*STAFF_ROLES)
def edit(booking_id: int):
    """The form to reschedule a booking, or change its coach, service or place."""
    booking = _visible_or_404(booking_id)
    return _form_page(
        _prefill(request.args, booking=booking), booking=booking, contact=booking.contact
    )


@bp.post("/<int:booking_id>/edit")
@roles_required(*STAFF_ROLES)
def update(booking_id: int):
    """Save a reschedule or a change of coach, service or place; overlaps are refused."""
    booking = _visible_or_404(booking_id)
    form = read_form(request.form, booking=booking)
    if form.valid:
        try:
            _apply_changes(booking, form.clean)
        except services.BookingError as exc:
            form.errors["form"] = str(exc)
    if not form.valid:
        db.session.rollback()
        return _form_page(form, booking=booking, contact=booking.contact, status=422)
    db.session.commit()
    flash(f"Saved {describe(booking)}.", "success")
    return _go(booking_url(booking))


def _apply_changes(booking: Booking, clean: dict) -> None:
    services.update_booking(
        booking,
        start_at=clean["start_at"],
        end_at=clean["end_at"],
        coach=clean["coach"],
        service=clean["service"],
        location=clean["location"],
        meeting_url=clean["meeting_url"],
        actor=current_user,
    )


# --- canceling ----------------------------------------------------------------------


def _calendly_cancel():
    """Calendly's cancellation call (crm.bookings.calendly), when that module has it."""
    from crm.bookings import calendly

    return getattr(calendly, "cancel_event", None)


@bp.post("/<int:booking_id>/cancel")
@login_required
def cancel(booking_id: int):
    """Cancel a session (staff any, a coach their own); Calendly is told first."""
    booking = _visible_or_404(booking_id)
    reason = (request.form.get("reason") or "").strip()[:2000]
    back = safe_next(request.form.get("next")) or booking_url(booking)
    if booking.status == "canceled":
        flash("This session was already canceled.", "success")
        return _go(back)
    try:
        if booking.status in ("completed", "no_show"):
            raise services.BookingError("A session that already took place cannot be canceled.")
        told = ""
        if booking.source == "calendly":
            cancel_event = _calendly_cancel()
            if cancel_event is not None:
                cancel_event(booking, reason or None)
                told = " Calendly was told."
            else:
                told = " Calendly was not told: cancel it there too."
        services.cancel_booking(
            booking, actor=current_user, reason=reason, canceled_by=current_user.display_name
        )
    except services.BookingError as exc:
        db.session.rollback()
        flash(f"Not canceled: {exc}", "error")
        return _go(back)
    db.session.commit()
    flash(f"Canceled {describe(booking)} with {booking.contact.name}.{told}", "success")
    return _go(back)


# --- the week calendar --------------------------------------------------------------


@bp.get("/calendar")
@login_required
def calendar():
    """A week of sessions, Monday to Sunday in the reader's timezone; a coach sees their own."""
    tz = viewer_zone()
    today = _today()
    week = parse_date(request.args.get("week")) or today
    monday = week - timedelta(days=week.weekday())
    days = [monday + timedelta(days=i) for i in range(7)]
    start_utc, end_utc = local_midnight(monday, tz), local_midnight(monday + timedelta(days=7), tz)

    coach = ""
    query = sa.select(Booking).where(
        Booking.start_at >= start_utc,
        Booking.start_at < end_utc,
        Booking.status != "canceled",
    )
    if current_user.role in STAFF_ROLES:
        coach = (request.args.get("coach") or "").strip()
        if coach == "unassigned":
            query = query.where(Booking.coach_id.is_(None))
        elif coach.isdigit():
            query = query.where(Booking.coach_id == int(coach))
        else:
            coach = ""
    query = services.scope_bookings(query, current_user)
    sessions = list(db.session.scalars(query.order_by(Booking.start_at, Booking.id)))

    slots: dict[tuple[date, int], list[Booking]] = defaultdict(list)
    first, last = DAY_HOURS
    for booking in sessions:
        local = booking.start_at.astimezone(tz)
        slots[(local.date(), local.hour)].append(booking)
        first = min(first, local.hour)
        end_local = booking.end_at.astimezone(tz)
        if end_local.date() == local.date():
            last = max(last, end_local.hour - (1 if end_local.minute == 0 else 0))
        else:
            last = 23

    def week_url(day: date) -> str:
        args = {"week": day.isoformat()}
        if coach:
            args["coach"] = coach
        return url_for("bookings.calendar", **args)

    response = render(
        "bookings/calendar.html",
        "calendar",
        days=days,
        hours=list(range(first, last + 1)),
        slots=slots,
        sessions=sessions,
        today=today,
        zone_name=tz.key,
        coach=coach,
        coaches=services.coaches() if current_user.role in STAFF_ROLES else [],
        prev_url=week_url(monday - timedelta(days=7)),
        next_url=week_url(monday + timedelta(days=7)),
        this_url=week_url(today),
        week_url=week_url(monday),
        monday=monday,
        show_booking="bookings.show" in current_app.view_functions,
        can_book=current_user.role in STAFF_ROLES,
    )
    if request.htmx and not request.htmx.boosted:
        response.headers["HX-Push-Url"] = week_url(monday)
    return response


# --- utilization --------------------------------------------------------------------


@dataclass
class Usage:
    """One coach's sessions in the range."""

    name: str
    coach_id: int | None
    sessions: int = 0
    minutes: int = 0
    completed: int = 0
    no_show: int = 0
    canceled: int = 0
    capacity_hours: float = 0.0

    @property
    def hours(self) -> float:
        return self.minutes / 60

    @property
    def share(self) -> float | None:
        return self.hours / self.capacity_hours if self.capacity_hours else None


def utilization_rows(start: date, end: date, tz: ZoneInfo) -> list[Usage]:
    """Per coach, the sessions starting between `start` and `end` (inclusive, in `tz`)."""
    days = (end - start).days + 1
    capacity = WEEK_HOURS * days / 7
    rows: dict[int | None, Usage] = {
        c.id: Usage(c.display_name, c.id, capacity_hours=capacity) for c in services.coaches()
    }
    found = db.session.execute(
        sa.select(Booking.coach_id, Booking.status, Booking.start_at, Booking.end_at).where(
            Booking.start_at >= local_midnight(start, tz),
            Booking.start_at < local_midnight(end + timedelta(days=1), tz),
        )
    )
    for coach_id, status, start_at, end_at in found:
        usage = rows.get(coach_id)
        if usage is None:
            # A deactivated coach's sessions, or those no coach has.
            user = db.session.get(User, coach_id) if coach_id else None
            name = user.display_name if user else "Unassigned"
            usage = rows[coach_id] = Usage(name, coach_id, capacity_hours=capacity if user else 0.0)
        if status == "canceled":
            usage.canceled += 1
            continue
        usage.sessions += 1
        usage.minutes += int((end_at - start_at).total_seconds() // 60)
        if status == "completed":
            usage.completed += 1
        elif status == "no_show":
            usage.no_show += 1
    return sorted(rows.values(), key=lambda u: (u.coach_id is None, u.name.lower()))


@bp.get("/utilization")
@roles_required(*STAFF_ROLES)
def utilization():
    """Per coach for a date range: sessions, booked hours, outcomes and share of a 40 h week."""
    tz = viewer_zone()
    today = _today()
    monday = today - timedelta(days=today.weekday())
    start = parse_date(request.args.get("from")) or monday
    end = parse_date(request.args.get("to")) or start + timedelta(days=6)
    error = None
    if end < start:
        start, end = end, start
    if (end - start).days + 1 > MAX_UTILIZATION_DAYS:
        error = f"Showing the first {MAX_UTILIZATION_DAYS} days: choose a shorter range."
        end = start + timedelta(days=MAX_UTILIZATION_DAYS - 1)
    rows = utilization_rows(start, end, tz)
    totals = Usage("All coaches", None)
    for row in rows:
        for name in ("sessions", "minutes", "completed", "no_show", "canceled", "capacity_hours"):
            setattr(totals, name, getattr(totals, name) + getattr(row, name))
    page_url = url_for("bookings.utilization", **{"from": start.isoformat(), "to": end.isoformat()})
    response = render(
        "bookings/utilization.html",
        "utilization",
        rows=rows,
        totals=totals,
        start=start,
        end=end,
        days=(end - start).days + 1,
        week_hours=WEEK_HOURS,
        zone_name=tz.key,
        error=error,
        page_url=page_url,
    )
    if request.htmx and not request.htmx.boosted:
        response.headers["HX-Push-Url"] = page_url
    return response
