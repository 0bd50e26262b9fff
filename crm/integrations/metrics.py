"""Call, probe and webhook metrics per integration, in Redis.

Every process adds to time buckets with HINCRBY, so workers and web processes on any
host add up without coordination, and memory stays bounded whatever the call rate:
5-minute buckets (kept 3 h) answer "last hour" and the sparkline; hourly buckets (kept
26 h) answer "last day". Latency goes into a logarithmic histogram per bucket (bins
about 10 % wide), from which the p50 is read.
"""

from __future__ import annotations

import math
import time

from crm.redis_client import get_redis

PREFIX = "rapport:integration:"

FINE = 300  # seconds per fine bucket
COARSE = 3600  # seconds per coarse bucket
_FINE_TTL = 3 * 3600
_COARSE_TTL = 26 * 3600
_RATIO = 1.1  # latency bin width: each bin 10 % wider than the one before
_SPARK_POINTS = 24  # 2 h of 5-minute buckets


def _bucket_key(integration: str, width: int, start: int) -> str:
    return f"{PREFIX}metrics:{integration}:{width}:{start}"


def _last_key(integration: str) -> str:
    return f"{PREFIX}last:{integration}"


def _bin(latency_ms: float) -> int:
    return max(0, int(math.log(max(latency_ms, 1.0), _RATIO)))


def _bin_value(index: int) -> float:
    """The middle (geometric) of a latency bin, in ms."""
    return _RATIO ** (index + 0.5) if index > 0 else 1.0


def _add(
    integration: str,
    fields: dict[str, int],
    last: dict[str, str | float],
    now: float,
    pipeline=None,
):
    """Add to the integration's counters: in `pipeline` when given (its owner executes
    it), else in a pipeline of its own."""
    pipe = pipeline if pipeline is not None else get_redis().pipeline(transaction=False)
    for width, ttl in ((FINE, _FINE_TTL), (COARSE, _COARSE_TTL)):
        key = _bucket_key(integration, width, int(now // width * width))
        for field, amount in fields.items():
            pipe.hincrby(key, field, amount)
        pipe.expire(key, ttl)
    if last:
        pipe.hset(_last_key(integration), mapping=last)
    if pipeline is None:
        pipe.execute()


def record_call(
    integration: str,
    *,
    ok: bool,
    latency_ms: float,
    operation: str,
    error: str | None = None,
) -> None:
    """Count one provider call, its outcome and latency."""
    now = time.time()
    fields = {"calls": 1, f"lat:{_bin(latency_ms)}": 1}
    if not ok:
        fields["errors"] = 1
    if ok:
        last = {"success_at": now, "success_operation": operation}
    else:
        last = {
            "error_at": now,
            "error": (error or "failed")[:500],
            "error_operation": operation,
        }
    _add(integration, fields, last, now)


def record_probe(
    integration: str, *, ok: bool, latency_ms: float, error: str | None = None
) -> None:
    """Count one health probe of the integration."""
    now = time.time()
    fields = {"probes": 1}
    if ok:
        fields["probes_ok"] = 1
    last = {"probe_at": now, "probe_ok": int(ok), "probe_latency_ms": round(latency_ms, 2)}
    last["probe_error"] = "" if ok else (error or "failed")[:500]
    _add(integration, fields, last, now)


def record_refused_webhook(provider: str) -> None:
    """Count one webhook delivery refused for its signature, size or form.

    Accepted deliveries are not counted here: each is stored, and the health page reads
    their count and the last one's time from the stored deliveries.
    """
    now = time.time()
    _add(provider, {"signature_failures": 1}, {"signature_failure_at": now}, now)


def _buckets(integration: str, width: int, count: int, now: float) -> list[dict[str, int]]:
    """The last `count` buckets of `width` s, oldest first, the current one included."""
    current = int(now // width * width)
    pipe = get_redis().pipeline(transaction=False)
    for i in range(count - 1, -1, -1):
        pipe.hgetall(_bucket_key(integration, width, current - i * width))
    return [{k.decode(): int(v) for k, v in raw.items()} for raw in pipe.execute()]


def _merge(buckets: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for bucket in buckets:
        for field, amount in bucket.items():
            total[field] = total.get(field, 0) + amount
    return total


def _p50(counts: dict[str, int]) -> float | None:
    bins = sorted(
        (int(field[4:]), amount) for field, amount in counts.items() if field.startswith("lat:")
    )
    total = sum(amount for _, amount in bins)
    if not total:
        return None
    seen = 0
    for index, amount in bins:
        seen += amount
        if seen * 2 >= total:
            return round(_bin_value(index), 1)
    return None  # pragma: no cover - the loop always reaches half


def _window(counts: dict[str, int]) -> dict:
    calls = counts.get("calls", 0)
    return {
        "calls": calls,
        "errors": counts.get("errors", 0),
        "error_rate": (counts.get("errors", 0) / calls) if calls else None,
        "p50_ms": _p50(counts),
    }


def _float(raw: dict, field: str) -> float | None:
    value = raw.get(field.encode())
    return float(value) if value not in (None, b"") else None


def _text(raw: dict, field: str) -> str | None:
    value = raw.get(field.encode())
    return value.decode() if value else None


def summary(integration: str) -> dict:
    """What the health page shows for one integration, over the last hour and day."""
    now = time.time()
    hour = _merge(_buckets(integration, FINE, COARSE // FINE, now))
    day = _merge(_buckets(integration, COARSE, 24, now))
    last = get_redis().hgetall(_last_key(integration))
    probes = day.get("probes", 0)
    error_at = _float(last, "error_at")
    return {
        "last_success_at": _float(last, "success_at"),
        "last_error": _text(last, "error"),
        "last_error_at": error_at,
        "hour": _window(hour),
        "day": _window(day),
        "uptime_day": (day.get("probes_ok", 0) / probes) if probes else None,
        "probes_day": probes,
        "last_probe_at": _float(last, "probe_at"),
        "last_probe_ok": bool(int(last[b"probe_ok"])) if last.get(b"probe_ok") else None,
        "last_probe_error": _text(last, "probe_error"),
        "signature_failures_day": day.get("signature_failures", 0),
    }


def sparkline(integration: str) -> list[float | None]:
    """p50 latency (ms) per 5 minutes over the last 2 hours, oldest first; None when idle."""
    return [_p50(bucket) for bucket in _buckets(integration, FINE, _SPARK_POINTS, time.time())]
