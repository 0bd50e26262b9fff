"""Twilio: send and fetch SMS/WhatsApp messages through twilio-python, at TWILIO_API_BASE.

Every request goes through `policy.call("twilio", ...)`, which owns the circuit breaker,
the rate limits (the account's and the sending number's) and the error classification.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import requests
from flask import current_app
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from crm.integrations import policy

SETTINGS = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")


def missing_settings() -> list[str]:
    """Return the settings Twilio still needs; empty when it can be used."""
    return [name for name in SETTINGS if not current_app.config.get(name)]


class _HttpClient(TwilioHttpClient):
    """A connection per request, closed after it: no socket outlives the job that used it."""

    def request(self, *args, **kwargs):
        with requests.Session() as session:
            self.session = session
            try:
                return super().request(*args, **kwargs)
            finally:
                self.session = None


def client() -> Client:
    """A Twilio client for the configured account, its requests sent to TWILIO_API_BASE."""
    missing = missing_settings()
    if missing:
        raise policy.PermanentError(f"not configured: {', '.join(missing)} missing", "twilio")
    config = current_app.config
    twilio = Client(
        config["TWILIO_ACCOUNT_SID"],
        config["TWILIO_AUTH_TOKEN"],
        http_client=_HttpClient(pool_connections=False, timeout=policy.timeout()),
    )
    # twilio-python has no base URL option; the API domain's base_url is a plain attribute
    # (reference section 1.8), and Messages and Accounts both live on that domain.
    twilio.api.base_url = config["TWILIO_API_BASE"].rstrip("/")
    return twilio


def _message(message) -> dict:
    return {
        "sid": message.sid,
        "status": message.status,
        "to": message.to,
        "from": message.from_,
        "body": message.body,
        "messaging_service_sid": message.messaging_service_sid,
        "num_segments": message.num_segments,
        "num_media": message.num_media,
        "error_code": message.error_code,
        "error_message": message.error_message,
        "price": message.price,
        "price_unit": message.price_unit,
        "date_created": message.date_created,
        "date_sent": message.date_sent,
        "date_updated": message.date_updated,
    }


def send_message(
    *,
    to: str,
    from_: str | None = None,
    body: str | None = None,
    media_urls: Sequence[str] | None = None,
    status_callback: str | None = None,
    messaging_service_sid: str | None = None,
    content_sid: str | None = None,
    content_variables: dict | str | None = None,
    wait: float = 0.0,
) -> dict:
    """Create an outbound message; return its sid, status and error fields.

    WhatsApp messages have `whatsapp:`-prefixed numbers; templates go as `content_sid` with
    `content_variables`. `wait` is how long to wait for a rate-limit token before giving up.
    """
    if not (from_ or messaging_service_sid):
        raise ValueError("send_message needs from_ or messaging_service_sid")
    if isinstance(content_variables, dict):
        content_variables = json.dumps(content_variables)
    params = {
        "to": to,
        "from_": from_,
        "body": body,
        "media_url": list(media_urls) if media_urls else None,
        "status_callback": status_callback,
        "messaging_service_sid": messaging_service_sid,
        "content_sid": content_sid,
        "content_variables": content_variables,
    }
    params = {name: value for name, value in params.items() if value is not None}
    channel = "whatsapp" if to.startswith("whatsapp:") else "sms"
    twilio = client()
    message = policy.call(
        "twilio",
        lambda: twilio.messages.create(**params),
        sender=f"{channel}:{from_ or messaging_service_sid}",
        operation="send_message",
        wait=wait,
    )
    return _message(message)


def fetch_message(sid: str) -> dict:
    """Fetch a message's current state from Twilio."""
    twilio = client()
    message = policy.call("twilio", lambda: twilio.messages(sid).fetch(), operation="fetch_message")
    return _message(message)


def list_messages(*, to: str, from_: str | None = None, limit: int = 50) -> list[dict]:
    """The latest messages to `to` (from `from_`), newest first: how a send is reconciled."""
    twilio = client()
    filters = {"to": to, "limit": limit, "page_size": limit}
    if from_:
        filters["from_"] = from_
    messages = policy.call(
        "twilio", lambda: twilio.messages.list(**filters), operation="list_messages"
    )
    return [_message(m) for m in messages]


def check_health() -> None:
    """Fetch the account: the cheapest authenticated request Twilio answers."""
    twilio = client()
    sid = current_app.config["TWILIO_ACCOUNT_SID"]
    policy.call("twilio", lambda: twilio.api.v2010.accounts(sid).fetch(), operation="health")
