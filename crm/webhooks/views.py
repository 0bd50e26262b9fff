"""Webhook intake: machine endpoints that verify, store raw, enqueue and answer fast.

CSRF-exempt (the provider's signature is the proof) and answered in plain text, JSON or
TwiML, never with a page. Nothing here calls a provider: processing runs in a job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
import sqlalchemy.exc
from flask import Blueprint, Response, current_app, jsonify, request
from rq.exceptions import DuplicateJobError
from werkzeug.exceptions import HTTPException

from crm.extensions import db
from crm.integrations.metrics import record_refused_webhook
from crm.webhooks import signatures
from crm.webhooks.services import (
    Delivery,
    Stored,
    json_object,
    read_calcom,
    read_calendly,
    read_stripe,
    read_twilio,
    store_delivery,
    twilio_params,
)
from crm.webhooks.signatures import MalformedRequest, SignatureError

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
log = logging.getLogger(__name__)
security_log = logging.getLogger("rapport.security")

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
# The setting each provider's signature check needs, and the variable that sets it.
SECRETS = {
    "twilio": ("TWILIO_AUTH_TOKEN", "TWILIO_AUTH_TOKEN"),
    "stripe": ("STRIPE_WEBHOOK_SECRETS", "STRIPE_WEBHOOK_SECRET"),
    "calendly": ("CALENDLY_WEBHOOK_SIGNING_KEY", "CALENDLY_WEBHOOK_SIGNING_KEY"),
    "calcom": ("CALCOM_WEBHOOK_SECRET", "CALCOM_WEBHOOK_SECRET"),
}


class TooLarge(Exception):
    pass


def _plain(text: str, status: int) -> Response:
    return Response(text + "\n", status=status, mimetype="text/plain")


def _count_refusal(provider: str) -> None:
    try:
        record_refused_webhook(provider)
    except redis.RedisError:
        # Counters are for the health page; losing one must not change the answer.
        log.warning("could not count a refused %s webhook", provider, exc_info=True)


def _refuse(provider: str, status: int, reason: str, answer: str) -> Response:
    security_log.warning(
        "webhook refused provider=%s status=%s reason=%s ip=%s path=%s",
        provider,
        status,
        reason,
        request.remote_addr or "unknown",
        request.path,
    )
    _count_refusal(provider)
    return _plain(answer, status)


def _read_body() -> bytes:
    """The raw body, refused before reading when it says it is too long, and while reading."""
    limit = current_app.config["WEBHOOK_MAX_BYTES"]
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"Content-Length {request.content_length} over {limit}")
    # A chunked body has no length to check up front: read one byte past the limit.
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise TooLarge(f"body over {limit} bytes")
    return body


def _secret(provider: str):
    return current_app.config.get(SECRETS[provider][0])


def _receive(
    provider: str, accept: Callable[[bytes], Delivery], answer: Callable[[Stored], Response]
):
    if not _secret(provider):
        variable = SECRETS[provider][1]
        log.warning("%s webhook refused: %s is not set", provider, variable)
        return _plain(f"{provider} webhooks are not configured: {variable} is not set", 503)
    try:
        body = _read_body()
        delivery = accept(body)
    except TooLarge as exc:
        return _refuse(provider, 413, str(exc), "request body too large")
    except SignatureError as exc:
        return _refuse(provider, 403, exc.reason, "signature verification failed")
    except MalformedRequest as exc:
        return _refuse(provider, 400, exc.reason, f"malformed request: {exc.reason}")
    try:
        # The stored row is what the health page counts: no counter to keep as well.
        stored = store_delivery(delivery)
        if db.session().in_transaction():
            # A repeat's read, or a write in a transaction the session was handed.
            db.session.commit()
    except DuplicateJobError:
        # Committed; the job for this id is already queued, which is all that was wanted.
        log.info("webhook event %s was already queued", stored.id)
    log.info(
        "webhook %s %s %s stored as %s (%s%s)",
        provider,
        delivery.event_type,
        delivery.event_id,
        stored.id,
        stored.status,
        "" if stored.created else ", repeat",
    )
    return answer(stored)


def _json_answer(stored: Stored) -> Response:
    return jsonify(received=True, duplicate=not stored.created)


def _twiml_answer(stored: Stored) -> Response:
    # Twilio reads the answer to an inbound message as instructions: an empty one says none.
    return Response(EMPTY_TWIML, status=200, mimetype="text/xml")


def _plain_answer(stored: Stored) -> Response:
    return _plain("ok", 200)


def public_url() -> str:
    """The URL Twilio was given: PUBLIC_BASE_URL, this path and the query string as sent."""
    base = current_app.config.get("PUBLIC_BASE_URL")
    if not base:
        return request.url
    query = request.query_string.decode("utf-8", "replace")
    return f"{base}{request.root_path}{request.path}" + (f"?{query}" if query else "")


def _accept_twilio(kind: str) -> Callable[[bytes], Delivery]:
    def accept(body: bytes) -> Delivery:
        algorithm = signatures.twilio_algorithm(
            request.headers.get("X-Twilio-Webhooks-Signature-Settings")
        )
        if algorithm == signatures.TWILIO_HMAC_SHA1:
            key = _secret("twilio")
        else:
            # SharedKey signing (HMAC-SHA256) uses its own secret, not the Auth Token.
            key = current_app.config.get("TWILIO_WEBHOOK_SHARED_KEY")
            if not key:
                raise SignatureError(f"{algorithm[:40]} signing is not configured")
        signature = request.headers.get("X-Twilio-Signature")
        if "json" in (request.mimetype or ""):
            signatures.verify_twilio(
                public_url(), None, signature, key, body=body, algorithm=algorithm
            )
            params = json_object(body)
        else:
            params = twilio_params(body)
            signatures.verify_twilio(public_url(), params, signature, key, algorithm=algorithm)
        return read_twilio(kind, body, params, request.headers)

    return accept


def _accept_stripe(body: bytes) -> Delivery:
    signatures.verify_stripe(body, request.headers.get("Stripe-Signature"), _secret("stripe"))
    return read_stripe(body, request.headers)


def _accept_calendly(body: bytes) -> Delivery:
    signatures.verify_calendly(
        body, request.headers.get("Calendly-Webhook-Signature"), _secret("calendly")
    )
    return read_calendly(body, request.headers)


def _accept_calcom(body: bytes) -> Delivery:
    signatures.verify_calcom(body, request.headers.get("X-Cal-Signature-256"), _secret("calcom"))
    return read_calcom(body, request.headers)


@bp.post("/twilio/messages")
def twilio_messages():
    """Receive an inbound SMS or WhatsApp message; answer with empty TwiML."""
    return _receive("twilio", _accept_twilio("messages"), _twiml_answer)


@bp.post("/twilio/status")
def twilio_status():
    """Receive a message status callback."""
    return _receive("twilio", _accept_twilio("status"), _plain_answer)


@bp.post("/stripe")
def stripe():
    """Receive a Stripe event."""
    return _receive("stripe", _accept_stripe, _json_answer)


@bp.post("/calendly")
def calendly():
    """Receive a Calendly event."""
    return _receive("calendly", _accept_calendly, _json_answer)


@bp.post("/calcom")
def calcom():
    """Receive a Cal.com event."""
    return _receive("calcom", _accept_calcom, _json_answer)


# Errors inside these endpoints are answered for machines too.


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException):
    return _plain(f"{error.code} {error.name}", error.code or 500)


@bp.errorhandler(sqlalchemy.exc.OperationalError)
@bp.errorhandler(sqlalchemy.exc.InterfaceError)
@bp.errorhandler(redis.exceptions.ConnectionError)
@bp.errorhandler(redis.exceptions.TimeoutError)
def unavailable(error):
    # 503: the provider retries later, and its repeat is stored once.
    log.error("webhook intake unavailable: %s", error.__class__.__name__, exc_info=error)
    # close, not rollback: Redis failing inside the commit's hooks leaves the session
    # committed, where a rollback is refused. Closing ends it in any state.
    db.session.close()
    return _plain("temporarily unavailable", 503)
