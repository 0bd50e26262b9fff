"""What every request carries: its signed session cookie and the response's headers."""

from __future__ import annotations

from flask import Flask, Response
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer

CSP = (
    "default-src 'self'; "
    "script-src 'self'; "
    "style-src 'self'; "
    # Twilio's media URLs (MMS and WhatsApp attachments) redirect to its CDN.
    "img-src 'self' data: https://api.twilio.com https://*.twiliocdn.com; "
    "connect-src 'self'; "
    "form-action 'self'; "
    "base-uri 'self'; "
    "object-src 'none'; "
    "frame-ancestors 'none'"
)


def add_security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie sessions, with the signer made once per set of keys.

    Flask makes a new one to open the cookie and again to save it, and making one
    serializes a probe value to learn what the serializer returns: more work than reading
    a short cookie. A changed SECRET_KEY or SECRET_KEY_FALLBACKS makes a new one.
    """

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        keys = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        kept = app.extensions.get("rapport_session_signer")
        if kept is None or kept[0] != keys:
            kept = (keys, super().get_signing_serializer(app))
            app.extensions["rapport_session_signer"] = kept
        return kept[1]
