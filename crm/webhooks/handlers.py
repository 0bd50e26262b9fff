"""Who processes which webhook: a registry keyed by (provider, kind).

`kind` is Twilio's endpoint (`messages` or `status`) and, for every other provider, the
event type (`checkout.session.completed`, `invitee.created`, `BOOKING_CREATED`...).

The webhooks package never imports the domains that act on events (conversations,
bookings, payments...). Each domain registers its handlers at import time, from a module
the app always imports (its views module, imported by `create_app` through the
blueprint), exactly as contact sources register in crm/contacts/registry.py::

    from crm.webhooks.handlers import PermanentHandlerError, register

    @register("stripe", "checkout.session.completed")
    def fulfil_checkout(event, payload):
        ...

Web processes and workers both run `create_app`, so both see every registration: the
intake marks an event `ignored` when nothing handles its kind, and the job dispatches.

A handler is `fn(event: WebhookEvent, payload) -> None`; `payload` is the parsed body (a
dict for JSON, a werkzeug MultiDict for Twilio's form posts). It must be idempotent: a
retry or a replay runs it again. It writes through the session and never commits; the
job commits its effects together with the event's new status. Raise PermanentHandlerError
for what no retry can fix; any other exception is retried with backoff, then dead-lettered.

This module also ships one small default handler per provider. A domain that registers
the same key replaces it whatever the import order (defaults give way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from crm.extensions import db
from crm.webhooks.models import PROVIDERS, WebhookEvent

Handler = Callable[[WebhookEvent, Any], None]


class PermanentHandlerError(Exception):
    """Processing can never succeed (bad data, unknown reference): dead-letter at once."""


_handlers: dict[tuple[str, str], Handler] = {}
_defaults: dict[tuple[str, str], Handler] = {}


def register(provider: str, kind: str, *, default: bool = False) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of `kind` events from `provider`."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; providers are {', '.join(PROVIDERS)}")

    def decorator(fn: Handler) -> Handler:
        key = (provider, kind)
        if default:
            _defaults[key] = fn
        elif key in _handlers:
            raise ValueError(f"a handler for {provider} {kind} is already registered")
        else:
            _handlers[key] = fn
        return fn

    return decorator


def unregister(provider: str, kind: str) -> None:
    """Forget a (non-default) registration; the default, if any, applies again."""
    _handlers.pop((provider, kind), None)


def handler_for(provider: str, kind: str) -> Handler | None:
    """The handler for events of `kind` from `provider`, or None when they are ignored."""
    key = (provider, kind)
    return _handlers.get(key) or _defaults.get(key)


@contextmanager
def registered(provider: str, kind: str, fn: Handler) -> Iterator[Handler]:
    """Handle `kind` with `fn` inside a `with` block, then restore what was there."""
    previous = _handlers.pop((provider, kind), None)
    register(provider, kind)(fn)
    try:
        yield fn
    finally:
        unregister(provider, kind)
        if previous is not None:
            _handlers[(provider, kind)] = previous


# Default handlers: small, visible, idempotent effects that later domains replace.


def touch_contacts(condition, at: datetime) -> int:
    """Move the live contacts matching `condition` to a last contact of `at`, never back."""
    from crm.contacts.models import Contact

    result = db.session.execute(
        sa.update(Contact)
        .where(
            condition,
            Contact.deleted_at.is_(None),
            sa.or_(Contact.last_contact_at.is_(None), Contact.last_contact_at < at),
        )
        .values(last_contact_at=at)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _email(value) -> str | None:
    if isinstance(value, str) and "@" in value:
        return value.strip().lower()
    return None


@register("twilio", "messages", default=True)
def inbound_message(event: WebhookEvent, payload) -> None:
    """An inbound SMS or WhatsApp: the sender's contact was in touch when it arrived."""
    from crm.contacts.models import Contact

    sender = (payload.get("From") or "").removeprefix("whatsapp:").strip()
    if sender.startswith("+"):
        touch_contacts(Contact.phone == sender, event.received_at)


@register("twilio", "status", default=True)
def message_status(event: WebhookEvent, payload) -> None:
    """Status callbacks: recorded; messaging (a later release) tracks delivery."""


@register("stripe", "checkout.session.completed", default=True)
def checkout_completed(event: WebhookEvent, payload) -> None:
    """A paid checkout: recorded; payments (a later release) fulfil it."""


@register("calendly", "invitee.created", default=True)
def calendly_booked(event: WebhookEvent, payload) -> None:
    """A Calendly booking: the invitee's contact was in touch when it was booked."""
    from crm.contacts.models import Contact

    email = _email(_dict(payload.get("payload")).get("email"))
    if email:
        touch_contacts(Contact.email == email, event.received_at)


@register("calcom", "BOOKING_CREATED", default=True)
def calcom_booked(event: WebhookEvent, payload) -> None:
    """A Cal.com booking: each attendee's contact was in touch when it was booked."""
    from crm.contacts.models import Contact

    attendees = _dict(payload.get("payload")).get("attendees") or []
    emails = {_email(a.get("email")) for a in attendees if isinstance(a, dict)} - {None}
    if emails:
        touch_contacts(Contact.email.in_(sorted(emails)), event.received_at)
