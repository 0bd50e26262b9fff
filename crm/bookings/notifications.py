"""In-app notifications: written by jobs, counted on every page.

The unread count sits in the top bar of every page, so it is cached in Redis rather than
asked of the database on each request; every write drops the cached value. A count read
between a write and its commit could be cached stale, so it lives only CACHE_SECONDS.
"""

from __future__ import annotations

import sqlalchemy as sa
from redis.exceptions import RedisError

from crm.bookings.models import Notification
from crm.extensions import db
from crm.redis_client import get_redis
from crm.users.models import User

CACHE_SECONDS = 30


def _key(user_id: int) -> str:
    return f"rapport:notifications:unread:{user_id}"


def forget_unread(user_id: int) -> None:
    """Drop the cached unread count (after a notification is added or read)."""
    try:
        get_redis().delete(_key(user_id))
    except RedisError:
        pass  # the cached value expires on its own


def notify(user_id: int, title: str, *, body: str | None = None, url: str | None = None):
    """Add a notification for a user."""
    notification = Notification(user_id=user_id, title=title[:300], body=body, url=url)
    db.session.add(notification)
    forget_unread(user_id)
    return notification


def unread_count(user: User) -> int:
    """How many of the user's notifications are unread (cached briefly in Redis)."""
    try:
        cached = get_redis().get(_key(user.id))
    except RedisError:
        cached = None
    if cached is not None:
        return int(cached)
    count = db.session.scalar(
        sa.select(sa.func.count(Notification.id)).where(
            Notification.user_id == user.id, Notification.read_at.is_(None)
        )
    )
    try:
        get_redis().set(_key(user.id), count, ex=CACHE_SECONDS)
    except RedisError:
        pass
    return count
