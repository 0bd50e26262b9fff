"""Counters in Redis, shared by every web process and worker."""

from __future__ import annotations

import redis


def hit(r: redis.Redis, key: str, window_seconds: int) -> int:
    """Count one event in the window that started with the key's first event."""
    pipe = r.pipeline(transaction=True)
    pipe.set(key, 0, ex=window_seconds, nx=True)
    pipe.incr(key)
    _, count = pipe.execute()
    return int(count)


def state(r: redis.Redis, keys: list[str]) -> list[tuple[int, int]]:
    """Return (count, seconds left in its window) for each key."""
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
        pipe.ttl(key)
    values = pipe.execute()
    return [(int(values[i] or 0), max(int(values[i + 1]), 0)) for i in range(0, len(values), 2)]


def clear(r: redis.Redis, key: str) -> None:
    r.delete(key)
