"""The signed-in user, kept by each process between requests while no user changes.

Every request loads the user it is signed in as. Read from the database that is a
transaction of its own (on PostgreSQL three round trips: BEGIN, SELECT, ROLLBACK), more
than a cached contacts page costs altogether. So each process keeps a copy of the users
it has loaded, with the users version they were read at. A request reads the version
from Redis (one round trip) and, while it has not changed, puts the copy in its session
without a query (`Session.merge(load=False)`).

Every commit that writes the users table (a deactivation, a role change, a sign-in)
gives the version a new random value, which every process sees on its next request. A
random value, not a counter: a Redis that restarts empty must not bring back a version
some process still holds copies for. A write from outside the application (psql) is seen
after SIGNED_IN_USER_CACHE_SECONDS at most; 0 turns the cache off.
"""

from __future__ import annotations

import logging
import secrets
import time

import redis
from flask import current_app
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from crm.database import after_commit_writing
from crm.extensions import db
from crm.redis_client import get_along, get_redis, invalidate
from crm.users.models import User

log = logging.getLogger(__name__)

VERSION_KEY = "rapport:users:version"
# Copies kept per process; past this many (a large team's worth) they are dropped at once.
MAX_COPIES = 10_000


def signed_in_user(user_id: int) -> User | None:
    """The user with this id, in the current session: the process's copy when current."""
    seconds = current_app.config["SIGNED_IN_USER_CACHE_SECONDS"]
    version = _version() if seconds else None
    copies = current_app.extensions.setdefault("rapport_user_copies", {})
    if version is not None:
        kept = copies.get(user_id)
        if kept is not None and kept[0] == version and time.monotonic() - kept[1] < seconds:
            return db.session.merge(kept[2], load=False)
    user = db.session.get(User, user_id)
    if user is None or version is None:
        return user
    if len(copies) >= MAX_COPIES:
        copies.clear()
    copies[user_id] = (version, time.monotonic(), _detached_copy(user))
    return user


def _detached_copy(user: User) -> User:
    """The user's columns in a new instance that no session holds (it is only merged)."""
    copy = User.__mapper__.class_manager.new_instance()
    for attribute in User.__mapper__.column_attrs:
        set_committed_value(copy, attribute.key, getattr(user, attribute.key))
    make_transient_to_detached(copy)
    return copy


def _version() -> str | None:
    """The current users version, starting one when Redis has none; None without Redis."""
    try:
        client = get_redis()
        version = get_along(VERSION_KEY)
        if version is None:
            client.set(VERSION_KEY, secrets.token_hex(8), nx=True)
            version = client.get(VERSION_KEY)
    except redis.RedisError:
        log.warning("Redis unavailable; the signed-in user is read from the database")
        return None
    return version.decode() if version is not None else None


def bump_version() -> None:
    """Make every process's copies stale."""
    invalidate(
        lambda client: client.set(VERSION_KEY, secrets.token_hex(8)), "the signed-in user copies"
    )


after_commit_writing(frozenset({User.__tablename__}), bump_version)
