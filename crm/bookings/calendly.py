"""Calendly for bookings: a coach's OAuth connection and its tokens, the webhook handlers,
"Sync now", event types, available times and canceling from Rapport.

Low-level requests live in crm.integrations.calendly; this module decides what they mean
for coaches and bookings. Services here flush and never commit, with one exception: a
token refresh commits at once (see `access_token`).

Token refresh is serialized across processes. Calendly's refresh tokens are single-use:
two workers refreshing with the same one leave one of them holding a dead token and the
connection locked out. A refresh takes a Redis lock per connection, ends the caller's
transaction so the row is read fresh, and only refreshes when the stored token is still
the expiring (or rejected) one; otherwise another process already refreshed and its
token is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

import redis
import sqlalchemy as sa
from flask import current_app
from redis.exceptions import LockError
from sqlalchemy.exc import IntegrityError

from crm.bookings import services, tokens
from crm.bookings.models import Booking, CalendlyConnection, CoachProfile, Service
from crm.bookings.services import Applied, BookingError
from crm.contacts.models import Contact
from crm.database import utcnow
from crm.extensions import db
from crm.integrations import calendly as api
from crm.integrations import policy
from crm.redis_client import get_redis
from crm.urls import external_url as absolute_url
from crm.users.models import User, timezones
from crm.webhooks.handlers import PermanentHandlerError, register, touch_contacts

log = logging.getLogger(__name__)

T = TypeVar("T")

EVENTS = ("invitee.created", "invitee.canceled")
# A refresh holds its lock at most this long; a waiter gives up after LOCK_WAIT seconds.
LOCK_TIMEOUT = 60
LOCK_WAIT = 30
# Calendly's per-user limit answers with X-RateLimit-Reset; our own bucket with a wait.
# Within one sync, wait this long at most per call before giving up (the job retries).
MAX_RATE_WAIT = 10.0
REDIS_PREFIX = "rapport:calendly:"


# --- connections ------------------------------------------------------------------


def connection_for(coach_id: int) -> CalendlyConnection | None:
    """The coach's Calendly connection row, whatever its state."""
    return db.session.scalars(
        sa.select(CalendlyConnection).where(CalendlyConnection.coach_id == coach_id)
    ).first()


def connections_needing_reconnect() -> list[CalendlyConnection]:
    """Connections whose refresh was refused: their coach must connect Calendly again."""
    return list(
        db.session.scalars(
            sa.select(CalendlyConnection)
            .where(CalendlyConnection.state == "needs_reconnect")
            .order_by(CalendlyConnection.id)
        )
    )


def _external_url(endpoint: str, **values) -> str:
    """An absolute URL for `endpoint`, or BookingError when no address is known."""
    url = absolute_url(endpoint, **values)
    if url is None:
        raise BookingError("PUBLIC_BASE_URL is not set: Rapport cannot tell Calendly its address.")
    return url


def callback_url() -> str:
    """Where Calendly sends the coach back after authorizing (the OAuth redirect URI)."""
    return _external_url("bookings.calendly_callback")


def webhook_url() -> str:
    """Where Calendly delivers invitee events."""
    return _external_url("webhooks.calendly")


def authorize_url(coach: User, state: str) -> str:
    """Calendly's authorization page for `coach`, coming back to the callback with `state`."""
    missing = api.missing_settings()
    if missing:
        raise BookingError(f"Calendly is not configured: {', '.join(missing)} missing.")
    params = {
        "client_id": current_app.config["CALENDLY_CLIENT_ID"],
        "response_type": "code",
        "redirect_uri": callback_url(),
        "state": state,
    }
    return (
        current_app.config["CALENDLY_AUTH_BASE"].rstrip("/")
        + "/oauth/authorize?"
        + urlencode(params)
    )


def _message(exc: policy.CallError) -> str:
    """Calendly's own words for a refusal (`Event in the past`), else the error."""
    response = getattr(exc.__cause__, "response", None)
    if response is not None:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            text = body.get("message") or body.get("error_description") or body.get("title")
            if text:
                return str(text)
    return str(exc)


def _store_tokens(connection: CalendlyConnection, granted: dict) -> None:
    connection.access_token = tokens.encrypt(granted["access_token"])
    connection.refresh_token = tokens.encrypt(granted["refresh_token"])
    expires_in = int(granted.get("expires_in") or 7200)
    connection.expires_at = utcnow() + timedelta(seconds=expires_in)
    connection.refreshed_at = utcnow()


def connect(coach: User, code: str, redirect_uri: str) -> CalendlyConnection:
    """Trade the authorization code for tokens, remember the account, subscribe to webhooks."""
    try:
        granted = api.exchange_code(code, redirect_uri)
        me = api.api_get(granted["access_token"], "/users/me")["resource"]
    except policy.PermanentError as exc:
        raise BookingError(f"Calendly refused the connection: {_message(exc)}") from exc
    except policy.TransientError as exc:
        raise BookingError("Calendly could not be reached. Please try again.") from exc
    user_uri = me["uri"]
    organization_uri = me.get("current_organization") or granted.get("organization")
    profile = services.coach_profile(coach)
    taken = db.session.scalars(
        sa.select(User)
        .join(CoachProfile, CoachProfile.user_id == User.id)
        .where(CoachProfile.calendly_user_uri == user_uri, User.id != coach.id)
    ).first()
    if taken is not None:
        raise BookingError(
            f"This Calendly account is already connected to {taken.display_name} in Rapport."
        )
    connection = connection_for(coach.id)
    if connection is None:
        connection = CalendlyConnection(coach_id=coach.id, coach=coach)
        db.session.add(connection)
    _store_tokens(connection, granted)
    connection.user_uri = user_uri
    connection.organization_uri = organization_uri
    connection.state = "connected"
    connection.last_error = None
    profile.calendly_user_uri = user_uri
    db.session.flush()
    try:
        connection.subscription_uri = _subscribe(granted["access_token"], connection)
    except (policy.CallError, BookingError) as exc:
        # The connection works without webhooks ("Sync now" still does); say why.
        text = _message(exc) if isinstance(exc, policy.CallError) else str(exc)
        connection.last_error = f"The webhook subscription could not be created: {text}"
        log.warning("calendly subscription for coach %s failed: %s", coach.id, text)
    db.session.flush()
    return connection


def _subscribe(token: str, connection: CalendlyConnection) -> str | None:
    """Create the user-scoped subscription (or find the one that already exists)."""
    url = webhook_url()
    body = {
        "url": url,
        "events": list(EVENTS),
        "organization": connection.organization_uri,
        "user": connection.user_uri,
        "scope": "user",
    }
    signing_key = current_app.config.get("CALENDLY_WEBHOOK_SIGNING_KEY")
    if signing_key:
        body["signing_key"] = signing_key
    try:
        return api.api_post(token, "/webhook_subscriptions", body)["resource"]["uri"]
    except policy.PermanentError as exc:
        if exc.status != 409:
            raise
    params = {
        "organization": connection.organization_uri,
        "user": connection.user_uri,
        "scope": "user",
    }

    def get(path: str, query: dict | None) -> dict:
        return api.api_get(token, path, query)

    for sub in _pages(get, "/webhook_subscriptions", params):
        if sub.get("callback_url") == url:
            return sub["uri"]
    return None


def disconnect(coach: User) -> None:
    """Remove the webhook subscription and forget the tokens."""
    connection = connection_for(coach.id)
    if connection is None:
        return
    if connection.subscription_uri and connection.state == "connected":
        try:
            with_token(coach, lambda token: api.api_delete(token, connection.subscription_uri))
        except (policy.CallError, BookingError) as exc:
            # Forgetting the tokens matters more; a leftover subscription only delivers
            # events for a coach Rapport still knows by their Calendly URI.
            if getattr(exc, "status", None) != 404:
                log.warning("calendly: subscription of coach %s not deleted: %s", coach.id, exc)
        connection = connection_for(coach.id)  # a refresh may have committed and expired it
    connection.access_token = connection.refresh_token = None
    connection.expires_at = None
    connection.subscription_uri = None
    connection.state = "disconnected"
    connection.last_error = None
    db.session.flush()


# --- tokens -----------------------------------------------------------------------


def _margin() -> timedelta:
    return timedelta(seconds=int(current_app.config.get("CALENDLY_REFRESH_MARGIN_SECONDS", 300)))


def _expiring(connection: CalendlyConnection) -> bool:
    return connection.expires_at is None or connection.expires_at <= utcnow() + _margin()


def _reconnect_error(connection: CalendlyConnection) -> BookingError:
    return _reconnect_message(connection.coach.display_name if connection.coach else None)


def _reconnect_message(name: str | None) -> BookingError:
    return BookingError(
        f"{name or 'The coach'}'s Calendly connection needs to be renewed: "
        "reconnect Calendly on the coach page."
    )


def _usable(connection: CalendlyConnection | None) -> CalendlyConnection:
    if connection is None or connection.state == "disconnected" or not connection.refresh_token:
        raise BookingError("This coach has not connected Calendly.")
    if connection.state == "needs_reconnect":
        raise _reconnect_error(connection)
    return connection


def access_token(connection: CalendlyConnection) -> str:
    """A working access token, refreshed first when it expires within the margin.

    A refresh commits the session at once: Calendly has already revoked the old refresh
    token when it answers, so the new pair must be durable before anything else happens.
    Every caller asks for a token before writing anything of its own (views call Calendly
    first and then write; the sync job likewise), so the commit never carries a half-done
    change. It also ends the caller's snapshot, which a fresh read of the row needs.
    """
    connection = _usable(connection)
    if not _expiring(connection):
        try:
            return tokens.decrypt(connection.access_token)
        except tokens.TokenError:
            pass  # a changed key: the refresh below marks the connection for reconnecting
    return _refresh(connection.id, rejected=None)


def _lock(connection_id: int):
    return get_redis().lock(
        f"{REDIS_PREFIX}refresh:{connection_id}",
        timeout=LOCK_TIMEOUT,
        blocking_timeout=LOCK_WAIT,
    )


def _refresh(connection_id: int, *, rejected: str | None) -> str:
    """Refresh the connection's tokens once across processes; return the access token.

    `rejected`: the token Calendly just refused (a 401); None for an expiring token.
    """
    lock = _lock(connection_id)
    if not lock.acquire():
        raise policy.TransientError("another process is still refreshing the token", "calendly")
    try:
        db.session.commit()  # end the snapshot: the row must be read as committed now
        connection = _usable(
            db.session.get(CalendlyConnection, connection_id, populate_existing=True)
        )
        name = connection.coach.display_name if connection.coach else None
        try:
            current = tokens.decrypt(connection.access_token) if connection.access_token else None
            stale = rejected is not None and current == rejected
            if current and not stale and not _expiring(connection):
                log.info("calendly connection %s: token already refreshed", connection_id)
                return current
            refresh_token = tokens.decrypt(connection.refresh_token)
        except tokens.TokenError:
            _mark_reconnect(connection, "The stored tokens cannot be read: the key changed.")
            raise _reconnect_message(name) from None
        # End the read before the call: the write after it then starts a transaction of its
        # own (SQLite cannot upgrade a read that another process's commit has overtaken).
        db.session.commit()
        try:
            granted = api.refresh(refresh_token)
        except policy.PermanentError as exc:
            if exc.code != "invalid_grant":
                raise
            _mark_reconnect(connection, f"Calendly refused to renew the token: {_message(exc)}")
            raise _reconnect_message(name) from exc
        _store_tokens(connection, granted)
        db.session.commit()
        log.info("calendly connection %s: token refreshed", connection_id)
        return granted["access_token"]
    finally:
        try:
            lock.release()
        except LockError:
            log.warning("calendly connection %s: the refresh lock expired first", connection_id)


def _mark_reconnect(connection: CalendlyConnection, reason: str) -> None:
    """Record that the coach must reconnect, durably (the caller will roll back)."""
    db.session.commit()  # the write below starts its own transaction
    connection.state = "needs_reconnect"
    connection.last_error = reason
    db.session.commit()
    log.warning("calendly connection %s needs reconnecting: %s", connection.id, reason)


def with_token(coach: User, fn: Callable[[str], T]) -> T:
    """Call `fn(token)` with the coach's token; on a 401 refresh once and call it again."""
    connection = _usable(connection_for(coach.id))
    connection_id = connection.id
    token = access_token(connection)
    try:
        return _rate_limited(lambda: fn(token))
    except policy.PermanentError as exc:
        if exc.status != 401:
            raise
        log.info("calendly connection %s: token refused, refreshing", connection_id)
    token = _refresh(connection_id, rejected=token)
    return _rate_limited(lambda: fn(token))


def _rate_limited(call: Callable[[], T]) -> T:
    """Run a call, waiting out our own rate-limit bucket (a short wait) instead of failing."""
    deadline = time.monotonic() + MAX_RATE_WAIT
    while True:
        try:
            return call()
        except policy.RateLimited as exc:
            wait = exc.retry_after or 0.2
            if time.monotonic() + wait > deadline:
                raise
            time.sleep(min(wait, 2.0))


def _pages(get: Callable[[str, dict | None], dict], path: str, params: dict) -> Iterator[dict]:
    """Every item of a paginated collection, following `pagination.next_page`."""
    page = get(path, params)
    while True:
        yield from page.get("collection") or []
        next_page = (page.get("pagination") or {}).get("next_page")
        if not next_page:
            return
        page = get(next_page, None)


def _page_size() -> int:
    return max(1, min(100, int(current_app.config.get("CALENDLY_PAGE_SIZE", 100))))


def _coach_pages(coach: User, path: str, params: dict) -> Iterator[dict]:
    def get(p: str, q: dict | None) -> dict:
        return with_token(coach, lambda token: api.api_get(token, p, q))

    return _pages(get, path, params)


# --- invitees into bookings -------------------------------------------------------


class InviteeError(ValueError):
    """A payload without what a booking needs; the message says what is missing."""


@dataclass
class Invitee:
    uri: str
    event_uri: str
    start_at: datetime
    end_at: datetime
    email: str | None
    phone: str | None
    name: str | None
    timezone: str | None
    canceled: bool
    rescheduled: bool
    old_invitee: str | None
    event_name: str | None = None
    event_type_uri: str | None = None
    host_uri: str | None = None
    host_email: str | None = None
    host_name: str | None = None
    location: str | None = None
    meeting_url: str | None = None
    cancel_url: str | None = None
    reschedule_url: str | None = None
    questions: list = field(default_factory=list)
    cancellation: dict = field(default_factory=dict)


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _time(value: Any, what: str) -> datetime:
    text = _text(value)
    if text is None:
        raise InviteeError(f"the scheduled event has no {what}")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InviteeError(f"the scheduled event's {what} is not a time: {text!r}") from exc
    if moment.tzinfo is None:
        raise InviteeError(f"the scheduled event's {what} has no timezone: {text!r}")
    return moment


def read_invitee(payload: Any, event: Any = None) -> Invitee:
    """What a booking needs from an Invitee and its scheduled event (embedded or given)."""
    if not isinstance(payload, dict):
        raise InviteeError("the delivery has no invitee payload")
    event = event if event is not None else payload.get("scheduled_event")
    if not isinstance(event, dict):
        raise InviteeError("the invitee has no scheduled_event")
    uri = _text(payload.get("uri"))
    if uri is None:
        raise InviteeError("the invitee has no uri")
    event_uri = _text(event.get("uri")) or _text(payload.get("event"))
    if event_uri is None:
        raise InviteeError("the scheduled event has no uri")
    start_at = _time(event.get("start_time"), "start_time")
    end_at = _time(event.get("end_time"), "end_time")
    if end_at <= start_at:
        raise InviteeError("the scheduled event ends before it starts")
    email = _text(payload.get("email"))
    phone = _text(payload.get("text_reminder_number"))
    if not email and not phone:
        raise InviteeError("the invitee has neither an email address nor a phone number")
    memberships = event.get("event_memberships") or []
    host = memberships[0] if memberships and isinstance(memberships[0], dict) else {}
    location = event.get("location") if isinstance(event.get("location"), dict) else {}
    join_url = _text(location.get("join_url"))
    place = _text(location.get("location"))
    questions = [
        {"question": q.get("question"), "answer": q.get("answer")}
        for q in payload.get("questions_and_answers") or []
        if isinstance(q, dict)
    ]
    cancellation = payload.get("cancellation") or event.get("cancellation") or {}
    zone = _text(payload.get("timezone"))
    return Invitee(
        uri=uri,
        event_uri=event_uri,
        start_at=start_at,
        end_at=end_at,
        email=email,
        phone=phone,
        name=_text(payload.get("name")),
        timezone=zone if zone in timezones() else None,
        canceled=payload.get("status") == "canceled" or bool(payload.get("canceled")),
        rescheduled=bool(payload.get("rescheduled")) or bool(_text(payload.get("new_invitee"))),
        old_invitee=_text(payload.get("old_invitee")),
        event_name=_text(event.get("name")),
        event_type_uri=_text(event.get("event_type")),
        host_uri=_text(host.get("user")),
        host_email=_text(host.get("user_email")),
        host_name=_text(host.get("user_name")),
        location=place if not join_url else None,
        meeting_url=join_url,
        cancel_url=_text(payload.get("cancel_url")),
        reschedule_url=_text(payload.get("reschedule_url")),
        questions=questions,
        cancellation=cancellation if isinstance(cancellation, dict) else {},
    )


def _service_for(invitee: Invitee, coach: User | None) -> Service | None:
    """The service for the invitee's event type, created on the fly when new."""
    uri = invitee.event_type_uri
    if not uri:
        return None
    query = sa.select(Service).where(Service.calendly_event_type_uri == uri)
    service = db.session.scalars(query).first()
    if service is not None:
        return service
    minutes = int((invitee.end_at - invitee.start_at).total_seconds() // 60)
    service = Service(
        name=invitee.event_name or "Calendly event",
        duration_minutes=max(1, minutes),
        coach_id=coach.id if coach else None,
        calendly_event_type_uri=uri,
    )
    try:
        with db.session.begin_nested():
            db.session.add(service)
    except IntegrityError:  # another delivery created it in between
        service = db.session.scalars(query).one()
    return service


def apply_invitee(invitee: Invitee, *, imported: bool = False) -> Applied:
    """Create, move, update or cancel the booking for one Calendly invitee, idempotently.

    `imported`: found by a sync, so a new booking plans its reminders but no confirmation.
    """
    if invitee.canceled:
        return _apply_canceled(invitee)
    return _apply_active(invitee, imported=imported)


def _apply_active(
    invitee: Invitee, *, previous: str | None = None, imported: bool = False
) -> Applied:
    coach = services.find_coach(calendly_user_uri=invitee.host_uri, email=invitee.host_email)
    try:
        contact = services.link_contact(
            email=invitee.email, phone=invitee.phone, name=invitee.name, timezone=invitee.timezone
        )
    except BookingError as exc:
        raise InviteeError(str(exc)) from exc
    fields: dict[str, Any] = {
        "title": invitee.event_name,
        "timezone": invitee.timezone,
        "location": invitee.location,
        "meeting_url": invitee.meeting_url,
        "cancel_url": invitee.cancel_url,
        "reschedule_url": invitee.reschedule_url,
        "external_event_id": invitee.event_uri,
        "questions": invitee.questions,
    }
    if coach is None:
        host = invitee.host_email or invitee.host_name
        if invitee.host_name and invitee.host_email:
            host = f"{invitee.host_name} <{invitee.host_email}>"
        fields["external_host"] = host
    applied = services.apply_external_booking(
        "calendly",
        invitee.uri,
        contact=contact,
        coach=coach,
        start_at=invitee.start_at,
        end_at=invitee.end_at,
        previous_external_id=previous if previous is not None else invitee.old_invitee,
        service=_service_for(invitee, coach),
        imported=imported,
        **fields,
    )
    if applied.change != "unchanged" and applied.booking and applied.booking.coach_id:
        invalidate_availability(applied.booking.coach_id)
    return applied


def _apply_canceled(invitee: Invitee) -> Applied:
    if invitee.rescheduled:
        # The cancel half of a reschedule: the matching invitee.created moves the booking
        # (before or after this one arrives), so nothing is canceled here.
        return Applied(services.find_external("calendly", invitee.uri), "unchanged")
    booking = services.find_external("calendly", invitee.uri)
    if booking is None:
        # Canceled before Rapport saw it booked (a delivery out of order, or a sync):
        # keep it as a canceled booking, so a late invitee.created changes nothing.
        booking = _apply_active(invitee, previous="").booking
    reason = _text(invitee.cancellation.get("reason"))
    canceled_by = _text(invitee.cancellation.get("canceled_by"))
    at = None
    if _text(invitee.cancellation.get("created_at")):
        try:
            at = _time(invitee.cancellation.get("created_at"), "cancellation time")
        except InviteeError:
            at = None
    try:
        changed = services.cancel_booking(
            booking, actor=None, reason=reason, canceled_by=canceled_by, at=at
        )
    except BookingError as exc:  # the session already took place: keep its outcome
        log.info("calendly cancellation of booking %s ignored: %s", booking.id, exc)
        return Applied(booking, "unchanged")
    if changed and booking.coach_id:
        invalidate_availability(booking.coach_id)
    return Applied(booking, "canceled" if changed else "unchanged")


def _handle(body: Any) -> Applied:
    payload = body.get("payload") if isinstance(body, dict) else None
    try:
        return apply_invitee(read_invitee(payload))
    except InviteeError as exc:
        raise PermanentHandlerError(str(exc)) from exc


@register("calendly", "invitee.created")
def invitee_created(event, body) -> None:
    """A Calendly booking (or the new half of a reschedule): create or move the booking."""
    applied = _handle(body)
    if applied.booking is not None:
        # The invitee was in touch when they booked (as the backbone's default handler had it).
        touch_contacts(Contact.id == applied.booking.contact_id, event.received_at)
    log.info(
        "calendly invitee.created event %s: booking %s %s",
        event.id,
        applied.booking.id if applied.booking else None,
        applied.change,
    )


@register("calendly", "invitee.canceled")
def invitee_canceled(event, body) -> None:
    """A Calendly cancellation: cancel the booking (a reschedule's cancel half is not one)."""
    applied = _handle(body)
    log.info(
        "calendly invitee.canceled event %s: booking %s %s",
        event.id,
        applied.booking.id if applied.booking else None,
        applied.change,
    )


# --- sync -------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    """Calendly's timestamp format: UTC with microseconds and a `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sync_events(coach: User, start: datetime, end: datetime) -> dict[str, int]:
    """Pull the coach's scheduled events in [start, end] (every page, active and canceled)
    with their invitees, and apply each as the webhooks would. Return counts per change.

    Commits what came before (a sync is a job's whole work, and a token refresh commits
    anyway), then leaves the applied changes to the caller's commit.
    """
    connection = _usable(connection_for(coach.id))
    params = {
        "user": connection.user_uri,
        "min_start_time": _iso(start),
        "max_start_time": _iso(end),
        "sort": "start_time:asc",
        "count": _page_size(),
    }
    counts: Counter[str] = Counter()
    found = []
    for event in list(_coach_pages(coach, "/scheduled_events", params)):
        counts["events"] += 1
        invitees = _coach_pages(coach, event["uri"] + "/invitees", {"count": _page_size()})
        found.extend((payload, event) for payload in list(invitees))
    # Calendly has answered; apply it all in one transaction that writes first: on SQLite a
    # transaction that reads and then writes fails at once ("database is locked") when
    # another worker committed in between. On PostgreSQL the row lock serializes syncs.
    connection_id = connection.id
    db.session.commit()
    db.session.execute(
        sa.update(CalendlyConnection)
        .where(CalendlyConnection.id == connection_id)
        .values(updated_at=CalendlyConnection.updated_at)
        .execution_options(synchronize_session=False)
    )
    for payload, event in found:
        try:
            applied = apply_invitee(read_invitee(payload, event), imported=True)
        except InviteeError as exc:
            log.warning("calendly sync: invitee %s skipped: %s", payload.get("uri"), exc)
            counts["skipped"] += 1
            continue
        counts[applied.change] += 1
    db.session.flush()
    return dict(counts)


def sync_event_types(coach: User) -> dict[str, int]:
    """List the coach's event types into services (created, updated, deactivated)."""
    connection = _usable(connection_for(coach.id))
    params = {"user": connection.user_uri, "count": _page_size()}
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    for kind in list(_coach_pages(coach, "/event_types", params)):
        uri = kind["uri"]
        seen.add(uri)
        service = db.session.scalars(
            sa.select(Service).where(Service.calendly_event_type_uri == uri)
        ).first()
        if service is None:
            service = Service(calendly_event_type_uri=uri, name=kind.get("name") or "Event type")
            db.session.add(service)
            counts["created"] += 1
        else:
            counts["updated"] += 1
        service.name = kind.get("name") or service.name
        service.duration_minutes = int(kind.get("duration") or service.duration_minutes or 60)
        service.calendly_scheduling_url = kind.get("scheduling_url")
        service.coach_id = coach.id
        service.active = bool(kind.get("active", True))
    for service in db.session.scalars(
        sa.select(Service).where(
            Service.coach_id == coach.id,
            Service.calendly_event_type_uri.is_not(None),
            Service.active.is_(True),
        )
    ):
        if service.calendly_event_type_uri not in seen:
            service.active = False
            counts["deactivated"] += 1
    db.session.flush()
    invalidate_availability(coach.id)
    return dict(counts)


def calendly_services(coach: User) -> list[Service]:
    """The coach's services that are Calendly event types, by name."""
    return list(
        db.session.scalars(
            sa.select(Service)
            .where(Service.coach_id == coach.id, Service.calendly_event_type_uri.is_not(None))
            .order_by(Service.active.desc(), Service.name)
        )
    )


# --- availability -----------------------------------------------------------------


def _version_key(coach_id: int) -> str:
    return f"{REDIS_PREFIX}availability-version:{coach_id}"


def invalidate_availability(coach_id: int) -> None:
    """Forget the coach's cached available times (every key carries this version)."""
    try:
        get_redis().incr(_version_key(coach_id))
    except redis.RedisError:
        log.warning("calendly: could not invalidate availability of coach %s", coach_id)


@dataclass
class Slot:
    start_at: datetime
    scheduling_url: str | None
    invitees_remaining: int | None


def available_times(
    coach: User, service: Service, start: datetime | None = None, end: datetime | None = None
) -> list[Slot]:
    """The event type's open slots in [start, end] (at most 7 days, from now on), cached.

    The cache key carries the requested window and the coach's availability version, which
    webhooks bump; entries live CALENDLY_AVAILABILITY_TTL_SECONDS.
    """
    if not service.calendly_event_type_uri:
        return []
    now = utcnow()
    # The default window starts at the hour, so repeated visits share one cache entry.
    start = start or now.replace(minute=0, second=0, microsecond=0)
    end = end or start + timedelta(days=7)
    r = get_redis()
    version = int(r.get(_version_key(coach.id)) or 0)
    digest = hashlib.sha256(service.calendly_event_type_uri.encode()).hexdigest()[:16]
    key = f"{REDIS_PREFIX}availability:{coach.id}:{version}:{digest}:{_iso(start)}:{_iso(end)}"
    cached = r.get(key)
    if cached is not None:
        collection = json.loads(cached)
    else:
        low = max(start, now + timedelta(minutes=1))
        high = min(end, low + timedelta(days=7))
        if high <= low:
            return []
        params = {
            "event_type": service.calendly_event_type_uri,
            "start_time": _iso(low),
            "end_time": _iso(high),
        }
        answer = with_token(
            coach, lambda token: api.api_get(token, "/event_type_available_times", params)
        )
        collection = [
            {
                "start_time": item.get("start_time"),
                "scheduling_url": item.get("scheduling_url"),
                "invitees_remaining": item.get("invitees_remaining"),
            }
            for item in answer.get("collection") or []
            if item.get("status", "available") == "available" and item.get("start_time")
        ]
        ttl = int(current_app.config.get("CALENDLY_AVAILABILITY_TTL_SECONDS", 300))
        if ttl > 0:
            r.set(key, json.dumps(collection), ex=ttl)
    slots = []
    for item in collection:
        moment = datetime.fromisoformat(item["start_time"].replace("Z", "+00:00"))
        if moment > now:
            slots.append(Slot(moment, item.get("scheduling_url"), item.get("invitees_remaining")))
    return slots


# --- canceling from Rapport ---------------------------------------------------------


def cancel_event(booking: Booking, reason: str | None) -> None:
    """Cancel the booking's event in Calendly with its coach's token.

    Raises BookingError with a readable message when Calendly refuses (`Event in the
    past`) or the coach is not connected. An event Calendly already canceled is fine.
    """
    if booking.source != "calendly" or not booking.external_event_id:
        raise BookingError("This session was not booked through Calendly.")
    if booking.coach is None:
        raise BookingError("Assign a coach first: Calendly is told through the coach's account.")
    uri = booking.external_event_id.rstrip("/") + "/cancellation"
    body = {"reason": reason.strip()} if reason and reason.strip() else {}
    try:
        with_token(booking.coach, lambda token: api.api_post(token, uri, body))
    except ValueError as exc:  # an event URI not on the configured API
        raise BookingError(f"Calendly's event address is not valid: {exc}") from exc
    except policy.PermanentError as exc:
        text = _message(exc)
        if "already canceled" in text.lower():
            return
        raise BookingError(f"Calendly refused to cancel the session: {text}") from exc
    except policy.TransientError as exc:
        raise BookingError(
            "Calendly could not be reached; the session was not canceled. Try again."
        ) from exc
