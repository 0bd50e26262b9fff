"""Webhook signature checks, one plain function per provider.

Each returns None when the request is genuine, raises SignatureError (answered 403) when
the signature is missing, wrong or stale, and MalformedRequest (answered 400) when the
signature header cannot be read at all. Every comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qs, urlsplit, urlunsplit

TWILIO_HMAC_SHA1 = "HMAC_SHA1"
TWILIO_HMAC_SHA256 = "HMAC_SHA256"
_TWILIO_HASHES = {TWILIO_HMAC_SHA1: hashlib.sha1, TWILIO_HMAC_SHA256: hashlib.sha256}
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# What Cal.com sends in place of a signature when its webhook has no secret.
CALCOM_UNSIGNED = "no-secret-provided"


class SignatureError(Exception):
    """The request is not provably from the provider (missing, wrong or stale signature)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class MalformedRequest(Exception):
    """The request cannot be read: a garbled signature header, a body that does not parse."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _hmac_hex(key: str, message: bytes) -> str:
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


# Twilio


def twilio_algorithm(settings_header: str | None) -> str:
    """The algorithm X-Twilio-Webhooks-Signature-Settings names (HMAC_SHA1 when absent)."""
    for part in (settings_header or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return TWILIO_HMAC_SHA1


def _twilio_values(params, name: str) -> list[str]:
    getlist = getattr(params, "getlist", None)
    if getlist is not None:
        return list(getlist(name))
    value = params[name]
    return list(value) if isinstance(value, list | tuple) else [value]


def twilio_signature(url: str, params, token: str, algorithm: str = TWILIO_HMAC_SHA1) -> str:
    """Twilio's signature of `url` and the form `params`: names sorted, then their values."""
    digest = _TWILIO_HASHES.get(algorithm)
    if digest is None:
        raise SignatureError(f"unsupported signature algorithm {algorithm[:40]!r}")
    signed = url
    for name in sorted(set(params or ())):
        for value in sorted(set(_twilio_values(params, name))):
            signed += name + value
    mac = hmac.new(token.encode(), signed.encode(), digest)
    return base64.b64encode(mac.digest()).decode()


def _with_and_without_port(url: str) -> list[str]:
    # Twilio signs the URL as configured; a default port may or may not be in it.
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError as exc:
        raise MalformedRequest("the request URL has a bad port") from exc
    if port is None:
        return [url, urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}"))]
    if port == default:
        netloc = parts.netloc.rsplit(":", 1)[0] if host else parts.netloc
        return [url, urlunsplit(parts._replace(netloc=netloc))]
    return [url]


def verify_twilio(
    url: str,
    params: Mapping | None,
    signature: str | None,
    token: str,
    body: bytes | None = None,
    algorithm: str = TWILIO_HMAC_SHA1,
) -> None:
    """Check X-Twilio-Signature over the public URL and the form parameters.

    For a JSON body pass `body`: Twilio then signs the URL alone, whose `bodySHA256`
    query parameter must be the SHA-256 of the body.
    """
    if not signature:
        raise SignatureError("missing X-Twilio-Signature header")
    if algorithm not in _TWILIO_HASHES:
        raise SignatureError(f"unsupported signature algorithm {algorithm[:40]!r}")
    if body is not None:
        claimed = parse_qs(urlsplit(url).query).get("bodySHA256")
        if not claimed:
            raise SignatureError("JSON body without a bodySHA256 query parameter")
        if not _equal(hashlib.sha256(body).hexdigest(), claimed[0].lower()):
            raise SignatureError("body does not match bodySHA256")
        params = {}
    for candidate in _with_and_without_port(url):
        if _equal(twilio_signature(candidate, params, token, algorithm), signature):
            return
    raise SignatureError("signature does not match")


# Stripe and Calendly share the "t=<unix seconds>,v1=<hex>" header shape.


def _timestamped_header(header: str, name: str) -> tuple[int, list[str]]:
    timestamp = None
    signatures = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise MalformedRequest(f"{name} header is not a list of key=value pairs")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError as exc:
                raise MalformedRequest(f"{name} timestamp is not a number") from exc
        elif key == "v1":
            signatures.append(value.strip())
    if timestamp is None:
        raise MalformedRequest(f"{name} header has no timestamp")
    return timestamp, signatures


def _check_fresh(timestamp: int, tolerance: int, now: float | None) -> None:
    # Both directions: a timestamp far in the future is as suspect as an old one.
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance:
        raise SignatureError(f"timestamp outside the {tolerance} s tolerance ({age:.0f} s)")


def verify_stripe(
    payload: bytes,
    header: str | None,
    secrets: Iterable[str],
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> None:
    """Check Stripe-Signature: any v1 made with any of `secrets` (several during a rotation)."""
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    timestamp, signatures = _timestamped_header(header, "Stripe-Signature")
    if not signatures:
        # Only v0 (test-mode) signatures would be a downgrade: never accept them.
        raise SignatureError("no v1 signature in Stripe-Signature")
    signed = str(timestamp).encode() + b"." + payload
    expected = [_hmac_hex(secret, signed) for secret in secrets if secret]
    if not expected:
        raise SignatureError("no Stripe webhook secret configured")
    matched = False
    for candidate in signatures:
        for good in expected:
            # No early exit: the time taken does not tell which pair matched.
            matched |= _equal(good, candidate)
    if not matched:
        raise SignatureError("no v1 signature matches")
    _check_fresh(timestamp, tolerance, now)


def verify_calendly(
    payload: bytes,
    header: str | None,
    key: str,
    tolerance: int = 180,
    *,
    now: float | None = None,
) -> None:
    """Check Calendly-Webhook-Signature (t=…,v1=…) with the subscription's signing key."""
    if not header:
        raise SignatureError("missing Calendly-Webhook-Signature header")
    timestamp, signatures = _timestamped_header(header, "Calendly-Webhook-Signature")
    if not signatures:
        raise MalformedRequest("Calendly-Webhook-Signature header has no v1 signature")
    good = _hmac_hex(key, str(timestamp).encode() + b"." + payload)
    matched = False
    for candidate in signatures:
        matched |= _equal(good, candidate)
    if not matched:
        raise SignatureError("signature does not match")
    _check_fresh(timestamp, tolerance, now)


def verify_calcom(payload: bytes, header: str | None, secret: str) -> None:
    """Check X-Cal-Signature-256: the hex HMAC-SHA256 of the body (Cal.com has no timestamp)."""
    if not header:
        raise SignatureError("missing X-Cal-Signature-256 header")
    header = header.strip()
    if header == CALCOM_UNSIGNED:
        raise SignatureError("unsigned delivery: the Cal.com webhook has no secret set")
    if not _HEX64.fullmatch(header):
        raise MalformedRequest("X-Cal-Signature-256 is not a hex SHA-256 digest")
    if not _equal(_hmac_hex(secret, payload), header.lower()):
        raise SignatureError("signature does not match")
