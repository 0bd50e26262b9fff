"""Coaches: the staff's list, a coach's page (profile, Calendly connection, "Sync now",
event types, available times) and the Calendly OAuth round trip.

A coach sees only their own page (another coach's answers 404); staff and admins see
every coach's. Only the coach themself may connect their Calendly account: the OAuth
state is kept in their session, bound to their id.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import abort, flash, redirect, request, session, url_for
from flask_login import current_user, login_required

from crm.audit.services import record_change
from crm.auth.access import STAFF_ROLES
from crm.bookings import calendly, services
from crm.bookings.models import CalendlyConnection, CoachProfile, Service
from crm.bookings.services import BookingError
from crm.bookings.views import bp
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.integrations import policy
from crm.users.models import User, timezones
from jobs.calendly import enqueue_sync, sync_pending

TEMPLATE = "bookings/coach.html"
OAUTH_SESSION_KEY = "calendly_oauth"
# "Sync now" defaults: a month back and two months ahead; at most a year at once.
SYNC_BACK, SYNC_AHEAD, SYNC_MAX = timedelta(days=30), timedelta(days=60), timedelta(days=366)


def _fragment_wanted() -> bool:
    return bool(request.htmx) and not request.htmx.boosted


def _coach_or_404(user_id: int) -> User:
    """The coach, when the current user may see their page: themself, or staff."""
    if current_user.role not in STAFF_ROLES and current_user.id != user_id:
        abort(404)
    coach = db.session.get(User, user_id)
    if coach is None or coach.role != "coach":
        abort(404)
    return coach


# --- the profile --------------------------------------------------------------------


def _profile_form(coach: User, profile: CoachProfile) -> dict:
    return {
        "display_name": profile.display_name or "",
        "timezone": coach.timezone,
        "calcom_username": profile.calcom_username or "",
        "meeting_link": profile.meeting_link or "",
    }


def _is_link(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def update_coach_profile(coach: User, form: dict, *, actor: User) -> dict[str, str]:
    """Apply the profile form; return errors by field (nothing is changed when any)."""
    profile = services.coach_profile(coach)
    display_name = (form.get("display_name") or "").strip()
    zone = (form.get("timezone") or "").strip()
    calcom = (form.get("calcom_username") or "").strip().lstrip("@") or None
    link = (form.get("meeting_link") or "").strip() or None
    errors = {}
    if len(display_name) > 200:
        errors["display_name"] = "Keep the display name under 200 characters."
    if zone not in timezones():
        errors["timezone"] = "Choose a timezone from the list."
    if link and (not _is_link(link) or len(link) > 500):
        errors["meeting_link"] = "Enter a full link starting with https://"
    if calcom:
        taken = db.session.scalars(
            sa.select(CoachProfile).where(
                CoachProfile.calcom_username == calcom, CoachProfile.user_id != coach.id
            )
        ).first()
        if taken is not None:
            errors["calcom_username"] = f"{taken.name} already uses this Cal.com username."
    if errors:
        return errors
    before = _profile_form(coach, profile)
    profile.display_name = display_name or None
    coach.timezone = zone
    profile.calcom_username = calcom
    profile.meeting_link = link
    after = _profile_form(coach, profile)
    changes = {k: [before[k], after[k]] for k in before if before[k] != after[k]}
    if changes:
        record_change("coach_profile.updated", "user", coach.id, changes, actor=actor)
    db.session.flush()
    return {}


def _context(coach: User, **extra) -> dict:
    profile = services.coach_profile(coach)
    connection = calendly.connection_for(coach.id)
    today = datetime.now(UTC).date()
    context = {
        "coach": coach,
        "profile": profile,
        "connection": connection,
        "may_connect": current_user.id == coach.id,
        "event_types": calendly.calendly_services(coach),
        "sync_pending": sync_pending(coach.id),
        "sync_start": (today - SYNC_BACK).isoformat(),
        "sync_end": (today + SYNC_AHEAD).isoformat(),
        "form": _profile_form(coach, profile),
        "errors": {},
        "availability": None,
        "timezones": sorted(timezones()),
        "notice": None,
        "error": None,
    }
    context.update(extra)
    return context


def _page(coach: User, block: str | None = None, *, status: int = 200, **extra):
    return render(TEMPLATE, block, status=status, **_context(coach, **extra))


@bp.get("/coaches")
@login_required
def coaches():
    """List coaches with their Calendly state; a coach goes to their own page."""
    if current_user.role not in STAFF_ROLES:
        return redirect(url_for("bookings.coach", user_id=current_user.id))
    people = services.coaches()
    ids = [c.id for c in people]
    profiles = {
        p.user_id: p
        for p in db.session.scalars(sa.select(CoachProfile).where(CoachProfile.user_id.in_(ids)))
    }
    connections = {
        c.coach_id: c
        for c in db.session.scalars(
            sa.select(CalendlyConnection).where(CalendlyConnection.coach_id.in_(ids))
        )
    }
    counts = dict(
        db.session.execute(
            sa.select(Service.coach_id, sa.func.count())
            .where(Service.coach_id.in_(ids), Service.active.is_(True))
            .group_by(Service.coach_id)
        ).all()
    )
    return render(
        "bookings/coaches.html",
        "coach_rows",
        coaches=people,
        profiles=profiles,
        connections=connections,
        service_counts=counts,
    )


@bp.route("/coaches/<int:user_id>", methods=["GET", "POST"])
@login_required
def coach(user_id: int):
    """Show a coach's page; POST saves their profile."""
    coach = _coach_or_404(user_id)
    if request.method == "GET":
        return _page(coach)
    errors = update_coach_profile(coach, request.form, actor=current_user)
    if errors:
        db.session.rollback()
        return _page(coach, "profile_form", status=422, form=dict(request.form), errors=errors)
    db.session.commit()
    if _fragment_wanted():
        return _page(coach, "profile_form", notice="Profile saved.")
    flash("Profile saved.", "success")
    return redirect_303(url_for("bookings.coach", user_id=coach.id))


# --- Calendly connection --------------------------------------------------------------


@bp.post("/coaches/<int:user_id>/calendly/connect")
@login_required
def calendly_connect(user_id: int):
    """Send the coach to Calendly to authorize Rapport (only for their own account)."""
    coach = _coach_or_404(user_id)
    if coach.id != current_user.id:
        abort(403)
    state = secrets.token_urlsafe(24)
    try:
        target = calendly.authorize_url(coach, state)
    except BookingError as exc:
        flash(str(exc), "error")
        return redirect_303(url_for("bookings.coach", user_id=coach.id))
    session[OAUTH_SESSION_KEY] = {"state": state, "coach_id": coach.id}
    if request.htmx:
        # An XHR cannot follow a redirect to another site: have htmx navigate instead.
        return "", 200, {"HX-Redirect": target, "Vary": "HX-Request"}
    return redirect_303(target)


@bp.get("/calendly/callback")
@login_required
def calendly_callback():
    """Finish the Calendly authorization: check the state, store the tokens, subscribe."""
    expected = session.pop(OAUTH_SESSION_KEY, None) or {}
    own_page = url_for("bookings.coach", user_id=current_user.id)
    state = request.args.get("state", "")
    if (
        not expected.get("state")
        or not hmac.compare_digest(str(expected["state"]), state)
        or expected.get("coach_id") != current_user.id
    ):
        flash("That Calendly link has expired or is not yours. Please connect again.", "error")
        return redirect(own_page if current_user.role == "coach" else url_for("bookings.coaches"))
    if request.args.get("error"):
        flash("Calendly was not connected: the authorization was declined.", "error")
        return redirect(own_page)
    code = request.args.get("code", "")
    if not code:
        flash("Calendly sent no authorization code. Please connect again.", "error")
        return redirect(own_page)
    try:
        connection = calendly.connect(current_user, code, calendly.callback_url())
    except BookingError as exc:
        db.session.rollback()
        flash(str(exc), "error")
        return redirect(own_page)
    try:
        calendly.sync_event_types(current_user)
    except (BookingError, policy.CallError) as exc:
        connection.last_error = f"Event types could not be listed: {exc}"
    db.session.commit()
    flash("Calendly is connected.", "success")
    return redirect(own_page)


@bp.post("/coaches/<int:user_id>/calendly/disconnect")
@login_required
def calendly_disconnect(user_id: int):
    """Disconnect the coach's Calendly: remove the webhook subscription, forget the tokens."""
    coach = _coach_or_404(user_id)
    calendly.disconnect(coach)
    db.session.commit()
    if _fragment_wanted():
        return _page(coach, "calendly", notice="Calendly is disconnected.")
    flash("Calendly is disconnected.", "success")
    return redirect_303(url_for("bookings.coach", user_id=coach.id))


def _parse_day(value: str | None, default: date) -> date | None:
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


@bp.route("/coaches/<int:user_id>/calendly/sync", methods=["GET", "POST"])
@login_required
def calendly_sync(user_id: int):
    """POST: queue "Sync now" for a date range. GET: the sync state (polled while it runs)."""
    coach = _coach_or_404(user_id)
    if request.method == "GET":
        if not _fragment_wanted():
            return redirect(url_for("bookings.coach", user_id=coach.id))
        response = _page(coach, "sync")
        if not sync_pending(coach.id):
            response.status_code = 286  # htmx: stop polling
        return response
    today = datetime.now(UTC).date()
    start = _parse_day(request.form.get("start"), today - SYNC_BACK)
    end = _parse_day(request.form.get("end"), today + SYNC_AHEAD)
    error = notice = None
    connection = calendly.connection_for(coach.id)
    if connection is None or connection.state != "connected":
        error = "Connect Calendly first."
    elif start is None or end is None:
        error = "Enter the dates as YYYY-MM-DD."
    elif end < start:
        error = "The end date must not be before the start date."
    elif end - start > SYNC_MAX:
        error = "Sync at most one year at a time."
    elif not enqueue_sync(
        coach.id,
        datetime.combine(start, time.min, UTC),
        datetime.combine(end, time.max, UTC),
    ):
        error = "A sync is already running for this coach."
    else:
        notice = f"Sync queued for {start:%d %b %Y} to {end:%d %b %Y}."
    if _fragment_wanted():
        return _page(
            coach,
            "sync",
            status=422 if error else 200,
            error=error,
            notice=notice,
            sync_start=request.form.get("start") or None,
            sync_end=request.form.get("end") or None,
        )
    flash(error or notice, "error" if error else "success")
    return redirect_303(url_for("bookings.coach", user_id=coach.id))


@bp.post("/coaches/<int:user_id>/calendly/event-types")
@login_required
def calendly_event_types(user_id: int):
    """Refresh the coach's event types from Calendly."""
    coach = _coach_or_404(user_id)
    error = notice = None
    try:
        counts = calendly.sync_event_types(coach)
    except (BookingError, policy.CallError) as exc:
        db.session.rollback()
        error = f"Event types could not be refreshed: {exc}"
    else:
        db.session.commit()
        total = counts.get("created", 0) + counts.get("updated", 0)
        notice = f"{total} event type{'s' if total != 1 else ''} from Calendly."
    if _fragment_wanted():
        return _page(coach, "event_types", status=200, error=error, notice=notice)
    flash(error or notice, "error" if error else "success")
    return redirect_303(url_for("bookings.coach", user_id=coach.id))


@bp.get("/coaches/<int:user_id>/availability")
@login_required
def availability(user_id: int):
    """Open times for the next 7 days per event type (a fragment, or the page with them)."""
    coach = _coach_or_404(user_id)
    times = {}
    for service in calendly.calendly_services(coach):
        if not service.active:
            continue
        try:
            times[service.id] = calendly.available_times(coach, service)
        except (BookingError, policy.CallError) as exc:
            times[service.id] = str(exc)
    return _page(coach, "availability", availability=times)
