"""Rendered list pages, kept in Redis until any contact, tag or user changes.

Staff open the same list pages far more often than contacts change, and rendering fifty
rows costs more than everything else in the request. Each rendered page is stored with the
data version it was read at; every commit that writes contacts, tags, their links or
users bumps that version, so the next request renders afresh. The version is read before
the query, so a page read while a write commits is stored under the old version and never
served once the new one is out. Searches are not cached: their speed is the index's.

Every web process and worker shares the version through Redis. A write made outside the
application (psql, a restore) is seen after CONTACTS_LIST_CACHE_SECONDS at most; raw SQL
inside it (the seeder's COPY) calls `mark_changed`.
"""

from __future__ import annotations

import hashlib
import logging

import redis
from flask import current_app

from crm.database import after_commit_writing
from crm.redis_client import get_redis, invalidate, read_before

log = logging.getLogger(__name__)

VERSION_KEY = "rapport:contacts:version"
_PAGE_KEY = "rapport:contacts:page:{scope}:{digest}"
OPTIONS_KEY = "rapport:contacts:options:{user_id}"
# What the list shows (rows, and the filter bar's coaches, tags and saved views).
WATCHED_TABLES = frozenset({"contacts", "tags", "contact_tags", "users", "saved_views"})


def page_key(scope: str, query: str) -> str:
    digest = hashlib.sha256(query.encode()).hexdigest()[:32]
    return _PAGE_KEY.format(scope=scope, digest=digest)


def lookup(*keys: str) -> tuple[str | None, list[str | None]]:
    """Return the current version and, per key, what was kept at that version (or None).

    One round trip, whatever the number of keys, or none when the request read them with
    the signed-in user's version (`read_along`).
    """
    misses: list[str | None] = [None] * len(keys)
    if not current_app.config["CONTACTS_LIST_CACHE_SECONDS"]:
        return None, misses
    try:
        read = read_before(VERSION_KEY, *keys)
        version, *entries = read if read is not None else get_redis().mget(VERSION_KEY, *keys)
    except redis.RedisError:
        log.warning("list cache unavailable; rendering without it", exc_info=True)
        return None, misses
    version = (version or b"0").decode()
    found: list[str | None] = []
    for entry in entries:
        stored_version, _, value = (entry or b"").decode().partition("\n")
        found.append(value if entry is not None and stored_version == version else None)
    return version, found


def store(key: str, version: str | None, value: str) -> None:
    """Keep `value`, made from data read at `version`."""
    seconds = current_app.config["CONTACTS_LIST_CACHE_SECONDS"]
    if version is None or not seconds:
        return
    try:
        get_redis().set(key, f"{version}\n{value}", ex=seconds)
    except redis.RedisError:
        log.warning("list cache unavailable; page not kept", exc_info=True)


def bump_version() -> None:
    """Make every cached list page stale (also called after writes outside the ORM)."""
    invalidate(lambda client: client.incr(VERSION_KEY), "the contacts list cache")


# Called by writes the session cannot see (raw SQL, the seeder's COPY): the commit makes
# pages stale.
mark_changed = after_commit_writing(WATCHED_TABLES, bump_version)
