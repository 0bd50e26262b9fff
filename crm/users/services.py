"""Create and change users. Services flush; the calling view or command commits."""

from __future__ import annotations

from crm.audit.services import diff, record_change
from crm.extensions import db
from crm.users.models import ROLES, User, timezones
from crm.validation import is_email

MIN_PASSWORD = 10


class UserError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _validate(email: str, role: str, password: str | None, timezone: str) -> None:
    if not is_email(email):
        raise UserError("email", "Enter a valid email address.")
    if role not in ROLES:
        raise UserError("role", f"Role must be one of {', '.join(ROLES)}.")
    if password is not None and len(password) < MIN_PASSWORD:
        raise UserError("password", f"Use at least {MIN_PASSWORD} characters.")
    if timezone not in timezones():
        raise UserError("timezone", "Choose a timezone from the list.")


def create_user(
    email: str,
    *,
    name: str = "",
    role: str = "staff",
    password: str | None = None,
    timezone: str = "UTC",
    google_sub: str | None = None,
    actor: User | None,
) -> User:
    """Create a user; without a password they sign in with Google."""
    email = email.strip().lower()
    password = password or None
    _validate(email, role, password, timezone)
    exists = db.session.execute(db.select(User.id).filter_by(email=email)).first()
    if exists:
        raise UserError("email", f"A user with the email {email} already exists.")
    user = User(
        email=email,
        name=name.strip(),
        role=role,
        active=True,
        timezone=timezone,
        google_sub=google_sub,
    )
    if password:
        user.set_password(password)
    db.session.add(user)
    db.session.flush()
    changes = {"email": [None, email], "name": [None, user.name], "role": [None, role]}
    if google_sub:
        changes["source"] = [None, "google"]
    record_change("user.created", "user", user.id, changes, actor=actor)
    return user


def _active_admins() -> int:
    return db.session.execute(
        db.select(db.func.count(User.id)).filter_by(role="admin", active=True)
    ).scalar_one()


def update_user(user: User, *, role: str | None = None, actor: User) -> User:
    """Change a user's role, keeping at least one active admin."""
    if role is not None and role not in ROLES:
        raise UserError("role", f"Role must be one of {', '.join(ROLES)}.")
    if role is not None and role != "admin" and user.role == "admin" and user.active:
        if user.id == actor.id:
            raise UserError("role", "You cannot remove your own admin role.")
        if _active_admins() <= 1:
            raise UserError("role", "Rapport needs at least one active admin.")
    changes = diff(user, {"role": role} if role is not None else {})
    if changes:
        user.role = role
        db.session.flush()
        record_change("user.updated", "user", user.id, changes, actor=actor)
    return user


def deactivate_user(user: User, *, actor: User) -> User:
    """Stop a user from signing in; their open sessions end on the next request."""
    if user.id == actor.id:
        raise UserError("active", "You cannot deactivate your own account.")
    if user.role == "admin" and user.active and _active_admins() <= 1:
        raise UserError("active", "Rapport needs at least one active admin.")
    if user.active:
        user.active = False
        db.session.flush()
        record_change("user.deactivated", "user", user.id, {"active": [True, False]}, actor=actor)
    return user


def reactivate_user(user: User, *, actor: User) -> User:
    """Let a deactivated user sign in again."""
    if not user.active:
        user.active = True
        db.session.flush()
        record_change("user.reactivated", "user", user.id, {"active": [False, True]}, actor=actor)
    return user
