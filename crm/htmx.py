"""The one choice every page view makes: the whole page, or one of its blocks."""

from __future__ import annotations

from flask import make_response, render_template, request, url_for
from jinja2_fragments.flask import render_block


def render(template: str, block: str | None = None, *, status: int = 200, **context):
    """Render `template`, or only `block` of it when htmx asked; vary the cache on it."""
    if block is not None and request.htmx and not request.htmx.boosted:
        body = render_block(template, block, **context)
    else:
        body = render_template(template, **context)
    response = make_response(body, status)
    response.vary.add("HX-Request")
    return response


def redirect_303(location: str):
    """Redirect after a non-GET; htmx follows it with a GET as a browser does."""
    response = make_response("", 303)
    response.headers["Location"] = location
    return response


def login_redirect(next_path: str | None = None):
    """Send an expired session to the sign-in page, as htmx or as a plain redirect."""
    target = url_for("auth.login", next=next_path) if next_path else url_for("auth.login")
    if request.htmx:
        response = make_response("", 401)
        response.headers["HX-Redirect"] = target
        return response
    return redirect_303(target) if request.method != "GET" else _found(target)


def _found(location: str):
    response = make_response("", 302)
    response.headers["Location"] = location
    return response
