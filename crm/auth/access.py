"""Who may see what: decorators for views, filters for queries."""

from __future__ import annotations

from functools import wraps

import sqlalchemy as sa
from flask import abort
from flask_login import current_user

from crm.extensions import login_manager

STAFF_ROLES = ("admin", "staff")


def roles_required(*roles: str):
    """Let only signed-in users with one of `roles` through; others get 403."""

    def decorator(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            if current_user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return decorator


def sees_every_contact(user) -> bool:
    return user.role in STAFF_ROLES


def scope_contacts(query, user):
    """Limit a Contact query to what `user` may see: a coach sees only their own clients.

    The coach's id is the named parameter `viewer_id`, so a statement built once can be
    run for another coach by passing theirs.
    """
    from crm.contacts.models import Contact

    if sees_every_contact(user):
        return query
    return query.where(Contact.owner_id == sa.bindparam("viewer_id", user.id))
