"""Response headers that every page carries."""

from __future__ import annotations

from flask import Response

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
