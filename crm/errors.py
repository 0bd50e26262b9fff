"""Error pages: plain pages for people, never a stack trace."""

from __future__ import annotations

import logging

import redis
import sqlalchemy.exc
from flask import Flask, g, render_template, request
from flask_wtf.csrf import CSRFError

log = logging.getLogger(__name__)
security_log = logging.getLogger("rapport.security")


def _page(status: int, title: str, message: str):
    if request.path.startswith("/webhooks/"):
        # Machine endpoints answer machines: a reason in plain text, never an HTML page.
        return message, status, {"Content-Type": "text/plain; charset=utf-8"}
    body = render_template("errors/error.html", status=status, title=title, message=message)
    return body, status, {"Vary": "HX-Request"}


def _rollback() -> None:
    from crm.extensions import db

    try:
        db.session.rollback()
    except sqlalchemy.exc.SQLAlchemyError:
        log.exception("rollback after an error failed")


def register(app: Flask) -> None:
    @app.errorhandler(400)
    def bad_request(error):
        description = getattr(error, "description", None) or "The request could not be read."
        return _page(400, "Bad request", description)

    @app.errorhandler(CSRFError)
    def csrf_error(error):
        security_log.warning(
            "CSRF check failed: %s %s ip=%s (%s)",
            request.method,
            request.path,
            request.remote_addr,
            error.description,
        )
        return _page(
            400,
            "This form has expired",
            "The form's security token was missing or out of date. Reload the page and try again.",
        )

    @app.errorhandler(403)
    def forbidden(error):
        return _page(403, "Not allowed", "Your account does not have access to this page.")

    @app.errorhandler(404)
    def not_found(error):
        return _page(404, "Not found", "There is nothing here, or it is not yours to see.")

    @app.errorhandler(405)
    def method_not_allowed(error):
        return _page(405, "Method not allowed", "This address does not accept that request.")

    @app.errorhandler(413)
    def too_large(error):
        return _page(413, "Too large", "What you sent is larger than this server accepts.")

    @app.errorhandler(sqlalchemy.exc.OperationalError)
    @app.errorhandler(sqlalchemy.exc.InterfaceError)
    def database_unavailable(error):
        log.error("database unreachable: %s", error.__class__.__name__, exc_info=error)
        g.degraded = True
        _rollback()
        return _page(
            503,
            "Database unavailable",
            "Rapport cannot reach its database right now. "
            "Nothing was saved; please try again in a minute.",
        )

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def redis_unavailable(error):
        log.error("redis unreachable: %s", error)
        g.degraded = True
        _rollback()
        return _page(
            503,
            "Redis unavailable",
            "Rapport cannot reach Redis, which it needs for this action. "
            "Please try again in a minute.",
        )

    @app.errorhandler(500)
    def internal_error(error):
        g.degraded = True
        _rollback()
        return _page(500, "Something went wrong", "The error has been logged. Please try again.")
