"""The one Redis connection of a process: REDIS_URL, or the embedded server's socket."""

from __future__ import annotations

import redis
from flask import current_app


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
