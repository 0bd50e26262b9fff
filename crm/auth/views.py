from __future__ import annotations

import logging
from urllib.parse import urlsplit

import requests
from authlib.integrations.base_client.errors import MismatchingStateError, OAuthError
from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_required, login_user, logout_user
from joserfc.errors import JoseError

from crm.auth import google
from crm.auth.services import (
    SignInError,
    authenticate_password,
    mark_signed_in,
    resolve_google_user,
)
from crm.extensions import db, login_manager
from crm.htmx import login_redirect, redirect_303, render
from crm.users.cache import signed_in_user
from crm.users.models import User

bp = Blueprint("auth", __name__)
log = logging.getLogger(__name__)
security_log = logging.getLogger("rapport.security")


def configure_login_manager(app) -> None:
    login_manager.login_view = "auth.login"

    @login_manager.user_loader
    def load_user(user_id: str):
        try:
            user = signed_in_user(int(user_id))
        except ValueError:
            return None
        return user if user is not None and user.active else None

    @login_manager.unauthorized_handler
    def unauthorized():
        if request.htmx and request.htmx.current_url:
            parts = urlsplit(request.htmx.current_url)
            next_path = parts.path + (f"?{parts.query}" if parts.query else "")
        else:
            next_path = request.full_path.rstrip("?")
        flash("Please sign in to continue.", "info")
        return login_redirect(safe_next(next_path))


def safe_next(target: str | None) -> str | None:
    """Keep a post-sign-in redirect on this site: a path, never another host."""
    if not target:
        return None
    target = target.strip().replace("\\", "/")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    if any(ord(ch) < 32 for ch in target):
        return None
    return target


def _client_ip() -> str:
    return request.remote_addr or "unknown"


def _finish_sign_in(user: User, method: str, next_path: str | None):
    # A fresh session at sign-in: nothing from before carries over.
    session.clear()
    login_user(user)
    mark_signed_in(user, method)
    db.session.commit()
    return redirect_303(next_path or url_for("dashboard.index"))


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the sign-in page; sign in with a local password."""
    next_path = safe_next(request.values.get("next"))
    if current_user.is_authenticated:
        return redirect(next_path or url_for("dashboard.index"))
    context = {
        "next_path": next_path,
        "google_enabled": google.is_configured(),
        "email": "",
        "error": None,
    }
    if request.method == "GET":
        return render("auth/login.html", **context)

    email = request.form.get("email", "")
    context["email"] = email
    try:
        user = authenticate_password(email, request.form.get("password", ""), ip=_client_ip())
    except SignInError as exc:
        security_log.warning(
            "sign-in refused email=%r ip=%s status=%s", email[:320], _client_ip(), exc.status
        )
        db.session.rollback()
        context["error"] = exc.message
        return render("auth/login.html", status=exc.status, **context)
    return _finish_sign_in(user, "password", next_path)


@bp.get("/login/google")
def google_login():
    """Start Google sign-in (Authlib stores state and nonce in the session)."""
    if not google.is_configured():
        flash("Google sign-in is not configured on this server.", "error")
        return redirect(url_for("auth.login"))
    session["google_next"] = safe_next(request.args.get("next"))
    base = current_app.config["PUBLIC_BASE_URL"]
    callback = url_for("auth.google_callback")
    redirect_uri = f"{base}{callback}" if base else url_for("auth.google_callback", _external=True)
    allowed = current_app.config["GOOGLE_ALLOWED_DOMAINS"]
    extra = {"hd": allowed[0]} if len(allowed) == 1 else {}  # a hint only; the claim decides
    return google.client().authorize_redirect(redirect_uri, **extra)


@bp.get("/login/google/callback")
def google_callback():
    """Finish Google sign-in: check state, nonce, verified email and domain."""
    if not google.is_configured():
        flash("Google sign-in is not configured on this server.", "error")
        return redirect(url_for("auth.login"))
    next_path = session.pop("google_next", None)
    try:
        token = google.client().authorize_access_token()
        identity = google.identity_from_token(token)
    except MismatchingStateError:
        security_log.warning("google sign-in refused: state mismatch ip=%s", _client_ip())
        return _refuse("That sign-in link has expired or was already used. Please try again.")
    except OAuthError as exc:
        security_log.warning("google sign-in refused: %s ip=%s", exc.error, _client_ip())
        if exc.error == "access_denied":
            return _refuse("Google sign-in was cancelled.")
        return _refuse("Google could not sign you in. Please try again.")
    except (requests.ConnectionError, requests.Timeout) as exc:
        log.error("google sign-in failed: provider unreachable (%s)", exc)
        return _refuse("Google could not be reached. Please try again in a moment.", 503)
    except requests.RequestException as exc:
        log.error("google sign-in failed: provider answered with an error (%s)", exc)
        return _refuse("Google could not sign you in. Please try again.", 502)
    except (JoseError, ValueError) as exc:
        security_log.warning("google sign-in refused: bad ID token (%s) ip=%s", exc, _client_ip())
        return _refuse("Google's answer could not be verified. Please try again.")
    try:
        user = resolve_google_user(identity)
    except SignInError as exc:
        security_log.warning(
            "google sign-in refused sub=%s email=%r: %s", identity.sub, identity.email, exc.message
        )
        db.session.rollback()
        return _refuse(exc.message, exc.status)
    return _finish_sign_in(user, "google", next_path)


def _refuse(message: str, status: int = 400):
    context = {
        "next_path": None,
        "google_enabled": google.is_configured(),
        "email": "",
        "error": message,
    }
    return render("auth/login.html", status=status, **context)


@bp.post("/logout")
@login_required
def logout():
    """Sign out and forget the session."""
    logout_user()
    session.clear()
    flash("You have signed out.", "info")
    return redirect_303(url_for("auth.login"))
