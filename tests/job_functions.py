"""Jobs the tests enqueue: real importable functions, run by real RQ workers."""

from __future__ import annotations

from flask import current_app

from crm.extensions import db
from crm.redis_client import get_redis
from crm.users.models import User


def record_user_email(user_id: int, key: str) -> None:
    """Copy a user's email into Redis: proves the job ran inside the app and saw the row."""
    user = db.session.get(User, user_id)
    get_redis().set(key, user.email if user is not None else "missing")


def write_marker(key: str, value: str) -> None:
    """Write `value` and the app's name to Redis."""
    get_redis().set(key, f"{value}|{current_app.name}")
