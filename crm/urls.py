"""Absolute URLs for addresses that leave Rapport: redirects and webhooks given to providers,
links sent to clients."""

from __future__ import annotations

from flask import current_app, has_request_context, url_for


def external_url(endpoint: str, **values) -> str | None:
    """`endpoint`'s absolute URL: on PUBLIC_BASE_URL when set, else on the request's host;
    None outside a request when PUBLIC_BASE_URL is not set (no address is known)."""
    base = current_app.config.get("PUBLIC_BASE_URL")
    if base:
        return base.rstrip("/") + current_app.url_map.bind("").build(endpoint, values)
    if has_request_context():
        return url_for(endpoint, _external=True, **values)
    return None
