"""Sign-in decisions: local passwords, Google identities, and failure limits."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cache

from flask import current_app
from werkzeug.security import check_password_hash, generate_password_hash

from crm import ratelimit
from crm.audit.services import record_change
from crm.database import utcnow
from crm.extensions import db
from crm.redis_client import get_redis
from crm.users.models import User
from crm.users.services import create_user


@cache
def _dummy_hash() -> str:
    # Checking a password against this keeps timing equal whether or not the account exists.
    return generate_password_hash("no account has this password")


class SignInError(Exception):
    def __init__(self, message: str, status: int = 401):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class GoogleIdentity:
    sub: str
    email: str
    email_verified: bool
    name: str
    hosted_domain: str | None


def _keys(email: str, ip: str) -> tuple[str, str]:
    digest = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    return f"rapport:signin-failures:account:{digest}", f"rapport:signin-failures:ip:{ip}"


def _minutes(seconds: int) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


def check_sign_in_allowed(email: str, ip: str) -> None:
    """Refuse further attempts once an account or an address has failed too often."""
    cfg = current_app.config
    account_key, ip_key = _keys(email, ip)
    (account_count, account_ttl), (ip_count, ip_ttl) = ratelimit.state(
        get_redis(), [account_key, ip_key]
    )
    if account_count >= cfg["LOGIN_MAX_FAILURES_PER_ACCOUNT"]:
        raise SignInError(
            "Too many failed sign-in attempts for this account. "
            f"Try again in {_minutes(account_ttl)}.",
            429,
        )
    if ip_count >= cfg["LOGIN_MAX_FAILURES_PER_IP"]:
        raise SignInError(
            f"Too many failed sign-in attempts from your network. Try again in {_minutes(ip_ttl)}.",
            429,
        )


def _record_failure(email: str, ip: str) -> None:
    window = current_app.config["LOGIN_FAILURE_WINDOW_SECONDS"]
    account_key, ip_key = _keys(email, ip)
    r = get_redis()
    ratelimit.hit(r, account_key, window)
    ratelimit.hit(r, ip_key, window)


def authenticate_password(email: str, password: str, *, ip: str) -> User:
    """Return the active user with this email and password, or raise SignInError."""
    email = email.strip().lower()
    if not email or not password:
        raise SignInError("Enter your email and password.", 400)
    check_sign_in_allowed(email, ip)
    user = db.session.execute(db.select(User).filter_by(email=email)).scalar_one_or_none()
    if user is None or not user.has_password:
        check_password_hash(_dummy_hash(), password)
        _record_failure(email, ip)
        raise SignInError("That email and password do not match an account.")
    if not user.check_password(password):
        _record_failure(email, ip)
        raise SignInError("That email and password do not match an account.")
    if not user.active:
        raise SignInError("This account has been deactivated. Ask an admin to reactivate it.", 403)
    ratelimit.clear(get_redis(), _keys(email, ip)[0])
    return user


def resolve_google_user(identity: GoogleIdentity) -> User:
    """Map a verified Google identity to an active user, creating staff for allowed domains."""
    if identity.email_verified is not True:
        raise SignInError("Your Google account's email address is not verified.", 403)
    allowed = current_app.config["GOOGLE_ALLOWED_DOMAINS"]
    user = db.session.execute(
        db.select(User).filter_by(google_sub=identity.sub)
    ).scalar_one_or_none()
    if user is None:
        user = db.session.execute(
            db.select(User).filter_by(email=identity.email.lower())
        ).scalar_one_or_none()
        if user is not None and user.google_sub not in (None, identity.sub):
            raise SignInError("Another Google account is already linked to this Rapport user.", 403)
    if user is None:
        domain = (identity.hosted_domain or "").lower()
        if not allowed:
            raise SignInError(
                f"There is no Rapport account for {identity.email}. Ask an admin to invite you.",
                403,
            )
        if domain not in allowed:
            shown = domain or "a personal Google account"
            raise SignInError(
                f"Google accounts from {shown} are not allowed here. "
                "Sign in with your organisation's account, or ask an admin to invite you.",
                403,
            )
        user = create_user(
            identity.email,
            name=identity.name,
            role="staff",
            google_sub=identity.sub,
            actor=None,
        )
    if not user.active:
        raise SignInError("This account has been deactivated. Ask an admin to reactivate it.", 403)
    if user.google_sub is None:
        user.google_sub = identity.sub
    if not user.name and identity.name:
        user.name = identity.name
    db.session.flush()
    return user


def mark_signed_in(user: User, method: str) -> None:
    """Stamp the sign-in time and write it to the audit log."""
    user.last_sign_in_at = utcnow()
    record_change("user.signed_in", "user", user.id, {"method": [None, method]}, actor=user)
