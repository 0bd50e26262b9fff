"""Cal.com has no API Rapport calls; this builds the signed webhooks it POSTs (section 4)."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime

# `MEETING_*` bodies are not wrapped in `payload`: their booking fields sit at the top level.
UNWRAPPED = {"MEETING_STARTED", "MEETING_ENDED"}
UNSIGNED = "no-secret-provided"

BOOKING = {
    "type": "discovery-call",
    "title": "Discovery Call between Host and Ana",
    "description": "",
    "additionalNotes": "",
    "customInputs": {},
    "startTime": "2030-01-01T10:00:00Z",
    "endTime": "2030-01-01T10:15:00Z",
    "organizer": {
        "id": 1,
        "name": "Host",
        "email": "host@example.com",
        "username": "host",
        "timeZone": "UTC",
        "language": {"locale": "en"},
        "timeFormat": "h:mma",
        "utcOffset": 0,
    },
    "attendees": [
        {
            "email": "ana@example.com",
            "name": "Ana Silva",
            "firstName": "Ana",
            "lastName": "Silva",
            "timeZone": "UTC",
            "language": {"locale": "en"},
            "utcOffset": 0,
        }
    ],
    "responses": {
        "name": {"label": "your_name", "value": "Ana Silva", "isHidden": False},
        "email": {"label": "email_address", "value": "ana@example.com", "isHidden": False},
    },
    "location": "integrations:daily",
    "eventTypeId": 123,
    "uid": "bFJeNb2uX8ANpT3JL5EfXw",
    "bookingId": 100,
    "metadata": {"videoCallUrl": "https://app.cal.com/video/bFJeNb2uX8ANpT3JL5EfXw"},
    "price": 0,
    "currency": "usd",
    "length": 15,
    "status": "ACCEPTED",
}


def booking_payload(**overrides) -> dict:
    """A version 2021-10-20 booking payload (the docs' BOOKING_CREATED example) with overrides."""
    payload = copy.deepcopy(BOOKING)
    payload.update(overrides)
    return payload


def signature(body: bytes, secret: str | None) -> str:
    """`X-Cal-Signature-256`: hex HMAC-SHA256 of the raw body; no prefix, no timestamp."""
    if not secret:
        return UNSIGNED
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook(
    trigger_event: str,
    payload: dict,
    *,
    secret: str | None,
    created_at: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A Cal.com delivery: JSON body and headers, signed with `secret` (None: unsigned)."""
    created_at = created_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    if trigger_event in UNWRAPPED:
        envelope = {"triggerEvent": trigger_event, "createdAt": created_at, **payload}
    else:
        envelope = {"triggerEvent": trigger_event, "createdAt": created_at, "payload": payload}
    body = json.dumps(envelope).encode()
    return body, {
        "Content-Type": "application/json",
        "X-Cal-Signature-256": signature(body, secret),
        "X-Cal-Webhook-Version": "2021-10-20",
    }
