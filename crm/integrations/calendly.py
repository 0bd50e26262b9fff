"""Calendly: API v2 requests with a coach's OAuth token, and the OAuth token exchange.

The API lives at CALENDLY_API_BASE and OAuth at CALENDLY_AUTH_BASE. Every request goes
through `policy.call("calendly", ...)`; a refused request keeps Calendly's reason as the
error's `code` (`invalid_grant`, `Unauthenticated`, ...) so callers can tell a revoked
connection from a bad request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests
from flask import current_app

from crm.integrations import policy

SETTINGS = ("CALENDLY_CLIENT_ID", "CALENDLY_CLIENT_SECRET")


def missing_settings() -> list[str]:
    """Return the settings Calendly still needs; empty when it can be used."""
    return [name for name in SETTINGS if not current_app.config.get(name)]


def _api_base() -> str:
    return current_app.config["CALENDLY_API_BASE"].rstrip("/")


def _reason(exc: BaseException | None) -> str | None:
    """Calendly's reason for refusing: OAuth's `error`, or the API error's `title`."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    return body.get("error") or body.get("title")


def _call(operation: str, send: Callable[[], requests.Response]) -> Any:
    def request() -> requests.Response:
        response = send()
        response.raise_for_status()
        return response

    try:
        response = policy.call("calendly", request, operation=operation)
    except policy.CallError as exc:
        if exc.code is None:
            exc.code = _reason(exc.__cause__)
        raise
    return response.json() if response.content else {}


def _url(path: str) -> str:
    """An API URL from a path, or from a full URI Calendly returned (`next_page`, `uri`)."""
    base = _api_base()
    if path.startswith(("http://", "https://")):
        # The token goes only to the configured API, whatever a payload says.
        if not path.startswith(base + "/"):
            raise ValueError(f"not a Calendly API URL: {path}")
        return path
    return f"{base}/{path.lstrip('/')}"


def _api(method: str, token: str, path: str, **kwargs) -> dict:
    url = _url(path)
    # Named by the collection, not the full path: ids would make every call its own metric.
    resource = url[len(_api_base()) :].strip("/").split("/", 1)[0].split("?", 1)[0]
    return _call(
        f"{method.lower()}_{resource}",
        lambda: requests.request(
            method,
            url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=policy.timeout(),
            **kwargs,
        ),
    )


def api_get(token: str, path: str, params: dict | None = None) -> dict:
    """GET an API path (e.g. `/users/me`) or a full API URI with the coach's access token."""
    return _api("GET", token, path, params=params)


def api_post(token: str, path: str, json: dict | None = None) -> dict:
    """POST JSON to an API path with the coach's access token."""
    return _api("POST", token, path, json=json if json is not None else {})


def api_delete(token: str, path: str) -> None:
    """DELETE an API resource (e.g. a webhook subscription) with the coach's access token."""
    _api("DELETE", token, path)


def _token(operation: str, form: dict) -> dict:
    config = current_app.config
    missing = missing_settings()
    if missing:
        raise policy.PermanentError(f"not configured: {', '.join(missing)} missing", "calendly")
    url = config["CALENDLY_AUTH_BASE"].rstrip("/") + "/oauth/token"
    return _call(
        operation,
        lambda: requests.post(
            url,
            data=form,
            # A web app authenticates with HTTP Basic (reference section 3.4).
            auth=(config["CALENDLY_CLIENT_ID"], config["CALENDLY_CLIENT_SECRET"]),
            timeout=policy.timeout(),
        ),
    )


def exchange_code(code: str, redirect_uri: str) -> dict:
    """Trade an authorization code for tokens (access_token, refresh_token, owner, ...)."""
    return _token(
        "oauth_code",
        {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri},
    )


def refresh(refresh_token: str) -> dict:
    """Trade a refresh token for new tokens; the old refresh token stops working at once,
    so the caller must store the new pair before anything else can use the old one."""
    return _token("oauth_refresh", {"grant_type": "refresh_token", "refresh_token": refresh_token})


def check_health(token: str | None = None) -> None:
    """Ask for `/users/me`: with a coach's token, that it works; without, that Calendly answers.

    Every API call needs a coach's token, so with no connected account the probe checks
    only that the API is up: an unauthenticated request must be refused with 401.
    """
    if token:
        api_get(token, "/users/me")
        return
    url = _api_base() + "/users/me"

    def probe() -> requests.Response:
        response = requests.get(url, timeout=policy.timeout())
        if response.status_code != 401:
            response.raise_for_status()
        return response

    policy.call("calendly", probe, operation="health")
