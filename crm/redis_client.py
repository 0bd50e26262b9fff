"""The one Redis connection of a process: REDIS_URL, or the embedded server's socket."""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
from flask import current_app

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
