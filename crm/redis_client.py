"""The one Redis connection of a process: REDIS_URL, or the embedded server's socket."""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
from flask import current_app, g, has_request_context

log = logging.getLogger(__name__)


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
    )


def get_redis() -> redis.Redis:
    """Return the application's shared Redis client (connections are pooled)."""
    client = current_app.extensions.get("rapport_redis")
    if client is None:
        client = connect(current_app.config["REDIS_URL"])
        current_app.extensions["rapport_redis"] = client
    return client


def invalidate(write: Callable[[redis.Redis], object], what: str) -> None:
    """Run `write`, which makes cached copies of `what` stale everywhere.

    An embedded Redis that is not running yet (`make run` seeds before it starts one)
    holds nothing to make stale: it starts empty. Any other failure leaves copies to live
    out their expiry, the only way they can be stale, so it is logged as an error.
    """
    try:
        write(get_redis())
    except redis.ConnectionError:
        if current_app.config.get("REDIS_EMBEDDED"):
            log.info("embedded Redis is not running; %s starts afresh with it", what)
            return
        log.error("could not invalidate %s", what, exc_info=True)
    except redis.RedisError:
        log.error("could not invalidate %s", what, exc_info=True)


# One round trip for what a request reads first: the signed-in user's version check,
# which every request makes, can carry keys a view will read next (`read_along`).
_ALONG = "rapport_redis_along"
_READ = "rapport_redis_read"


def read_along(*keys: str) -> None:
    """Have this request's `get_along` also read `keys`, in the same round trip.

    For a view that knows, before the signed-in user is loaded, what it will read; it
    takes them back with `read_before`.
    """
    g.setdefault(_ALONG, []).extend(keys)


def get_along(key: str) -> bytes | None:
    """GET `key` and, in the same MGET, whatever `read_along` asked for."""
    along = g.pop(_ALONG, None) if has_request_context() else None
    if not along:
        return get_redis().get(key)
    value, *read = get_redis().mget(key, *along)
    g.setdefault(_READ, {}).update(zip(along, read, strict=True))
    return value


def read_before(*keys: str) -> list[bytes | None] | None:
    """What `get_along` read for `keys` in this request (once), or None if not all."""
    read = g.get(_READ) if has_request_context() else None
    if not read or any(key not in read for key in keys):
        return None
    return [read.pop(key) for key in keys]
