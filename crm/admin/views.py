from __future__ import annotations

from flask import Blueprint, abort, flash, request, url_for
from flask_login import current_user

from crm.auth.access import roles_required
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.users.models import ROLES, User, timezones
from crm.users.services import (
    UserError,
    create_user,
    deactivate_user,
    reactivate_user,
    update_user,
)

bp = Blueprint("admin", __name__, url_prefix="/admin")


def _users() -> list[User]:
    return list(db.session.execute(db.select(User).order_by(User.email)).scalars())


def _page(status: int = 200, block: str | None = None, **context):
    context.setdefault("users", _users())
    context.setdefault("form", {})
    context.setdefault("errors", {})
    context.setdefault("row_errors", {})
    return render(
        "admin/users.html",
        block,
        status=status,
        roles=ROLES,
        timezones=sorted(timezones()),
        **context,
    )


def _get_user(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    return user


@bp.get("/users")
@roles_required("admin")
def users():
    """List users and the invite form."""
    return _page()


@bp.post("/users")
@roles_required("admin")
def create():
    """Invite a user: create the account, optionally with a password."""
    form = {k: request.form.get(k, "") for k in ("email", "name", "role", "password", "timezone")}
    try:
        user = create_user(
            form["email"],
            name=form["name"],
            role=form["role"] or "staff",
            password=form["password"] or None,
            timezone=form["timezone"] or "UTC",
            actor=current_user,
        )
    except UserError as exc:
        db.session.rollback()
        form["password"] = ""
        return _page(422, "users_section", form=form, errors={exc.field: exc.message})
    db.session.commit()
    if request.htmx:
        # Widen the target: the whole users section re-renders with the new row and a blank form.
        return _page(block="users_section", created=user)
    flash(f"{user.email} can now sign in as {user.role}.", "success")
    return redirect_303(url_for("admin.users"))


def _row_response(user: User, error: str | None = None):
    status = 422 if error else 200
    if request.htmx:
        return _page(status, "rows", users=[user], row_errors={user.id: error} if error else {})
    if error:
        flash(error, "error")
    return redirect_303(url_for("admin.users"))


@bp.post("/users/<int:user_id>/role")
@roles_required("admin")
def update(user_id: int):
    """Change a user's role."""
    user = _get_user(user_id)
    try:
        update_user(user, role=request.form.get("role", ""), actor=current_user)
    except UserError as exc:
        db.session.rollback()
        return _row_response(user, exc.message)
    db.session.commit()
    if not request.htmx:
        flash(f"{user.email} is now {user.role}.", "success")
    return _row_response(user)


@bp.post("/users/<int:user_id>/deactivate")
@roles_required("admin")
def deactivate(user_id: int):
    """Deactivate a user."""
    user = _get_user(user_id)
    try:
        deactivate_user(user, actor=current_user)
    except UserError as exc:
        db.session.rollback()
        return _row_response(user, exc.message)
    db.session.commit()
    if not request.htmx:
        flash(f"{user.email} can no longer sign in.", "success")
    return _row_response(user)


@bp.post("/users/<int:user_id>/reactivate")
@roles_required("admin")
def reactivate(user_id: int):
    """Reactivate a user."""
    user = _get_user(user_id)
    reactivate_user(user, actor=current_user)
    db.session.commit()
    if not request.htmx:
        flash(f"{user.email} can sign in again.", "success")
    return _row_response(user)
