"""The outbound call policy every provider module goes through.

`call(integration, fn)` checks the integration's circuit breaker, takes rate-limit tokens
for the integration (and for the sender, for messaging), runs `fn`, classifies a failure
as transient (retry later) or permanent, records the outcome in metrics and updates the
breaker. All state lives in Redis under `rapport:integration:` and changes through Lua
scripts, so web processes and workers on any host share one breaker and one bucket.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import redis
from flask import current_app

from crm.integrations import metrics
from crm.redis_client import get_redis

log = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX = "rapport:integration:"

# (tokens per second, burst). A sender bucket is named "<integration>:<kind>", the kind
# being what comes before ":" in `call(..., sender="sms:+14155550100")`.
LIMITS: dict[str, tuple[float, int]] = {
    "twilio": (100.0, 100),
    "twilio:sms": (1.0, 1),  # US long code: one segment per second per number
    "twilio:whatsapp": (80.0, 80),  # WhatsApp: 80 MPS per sender by default
    "stripe": (25.0, 25),
    "calendly": (10.0, 10),
    "crm_sync": (10.0, 10),  # HubSpot-like API limits
    "google": (10.0, 10),
}


class CallError(Exception):
    """A provider call that did not succeed."""

    def __init__(
        self,
        message: str = "",
        integration: str = "",
        status: int | None = None,
        code: str | int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.integration = integration
        self.status = status
        self.code = code
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"{self.integration}: " if self.integration else ""
        detail = ", ".join(
            part
            for part in (
                f"HTTP {self.status}" if self.status is not None else "",
                f"code {self.code}" if self.code is not None else "",
            )
            if part
        )
        return f"{where}{self.message}" + (f" ({detail})" if detail else "")


class TransientError(CallError):
    """Worth retrying later: 429, 5xx, timeouts, connection errors, breaker open, throttled."""


class PermanentError(CallError):
    """Retrying will not help: the request itself was refused."""


class CircuitOpen(TransientError):
    """The integration failed repeatedly; calls are refused until its reset time."""


class RateLimited(TransientError):
    """No token in the integration's (or the sender's) bucket within the wait allowed."""


# --- configuration ------------------------------------------------------------------


def timeout() -> float:
    """Seconds a provider SDK should wait for an answer (its own timeout setting)."""
    return float(current_app.config.get("INTEGRATION_TIMEOUT_SECONDS", 10.0))


def _threshold() -> int:
    return max(1, int(current_app.config.get("CIRCUIT_FAILURE_THRESHOLD", 5)))


def _reset_seconds() -> float:
    return float(current_app.config.get("CIRCUIT_RESET_SECONDS", 60))


def _default_limit(name: str) -> tuple[float, int] | None:
    overrides = current_app.config.get("RATE_LIMITS") or {}
    value = overrides.get(name, LIMITS.get(name))
    if value is None:
        return None
    if isinstance(value, dict):
        return float(value["rate"]), int(value["burst"])
    rate, burst = value
    return float(rate), int(burst)


def configure_limit(integration: str, rate: float, burst: int) -> None:
    """Set the bucket of `integration` (or "<integration>:<sender kind>") for every process."""
    if rate <= 0 or burst < 1:
        raise ValueError("rate must be positive and burst at least 1")
    get_redis().hset(_limit_key(integration), mapping={"rate": float(rate), "burst": int(burst)})


def _limit_key(name: str) -> str:
    return f"{PREFIX}limit:{name}"


def _bucket_key(name: str) -> str:
    return f"{PREFIX}bucket:{name}"


def _breaker_key(integration: str) -> str:
    return f"{PREFIX}breaker:{integration}"


def _probe_key(integration: str) -> str:
    return f"{PREFIX}probe:{integration}"


# --- token buckets --------------------------------------------------------------------

# KEYS: (bucket, limit override) per bucket. ARGV: default rate and burst per bucket.
# Takes one token from every bucket or from none, so a refused sender does not burn the
# integration's token. Returns {1, "0"} or {0, seconds until all could be taken}.
# Redis TIME is the clock: processes on different hosts share it.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = #KEYS / 2
local states = {}
local wait = 0
for i = 1, n do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local override = redis.call('HMGET', KEYS[2 * i], 'rate', 'burst')
  if override[1] then
    rate = tonumber(override[1])
    burst = tonumber(override[2])
  end
  local saved = redis.call('HMGET', KEYS[2 * i - 1], 'tokens', 'ts')
  local tokens = tonumber(saved[1])
  local ts = tonumber(saved[2])
  if tokens == nil then
    tokens = burst
    ts = now
  end
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  if tokens < 1 then
    wait = math.max(wait, (1 - tokens) / rate)
  end
  states[i] = {tokens, rate, burst}
end
local ok = wait == 0
for i = 1, n do
  local tokens, rate, burst = states[i][1], states[i][2], states[i][3]
  if ok then
    tokens = tokens - 1
  end
  redis.call('HSET', KEYS[2 * i - 1], 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[2 * i - 1], math.ceil(burst / rate * 1000) + 1000)
end
if ok then
  return {1, '0'}
end
return {0, tostring(wait)}
"""


def _take(buckets: list[tuple[str, str, float, int]], wait: float) -> float | None:
    """Take a token from every (bucket, limit name, rate, burst) within `wait` s.

    Return None when taken, else the seconds until they could be.
    """
    if not buckets:
        return None
    keys: list[str] = []
    args: list[float | int] = []
    for bucket, limit, rate, burst in buckets:
        keys += [_bucket_key(bucket), _limit_key(limit)]
        args += [rate, burst]
    script = _script("take", _TAKE)
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        taken, retry_after = script(keys=keys, args=args)
        if int(taken):
            return None
        retry_after = float(retry_after)
        if deadline - time.monotonic() < retry_after:
            return retry_after
        time.sleep(retry_after)


def take_token(key: str, rate: float, burst: int, *, wait: float = 0.0) -> bool:
    """Take one token from bucket `key` (refilled at `rate`/s up to `burst`) within `wait` s."""
    return _take([(key, key, float(rate), int(burst))], wait) is None


def _buckets_for(integration: str, sender: str | None) -> list[tuple[str, str, float, int]]:
    """The buckets a call draws from: the integration's, and the sender's when limited.

    A sender bucket is keyed by the full sender ("sms:+14155550100": one per number) and
    limited by its kind ("twilio:sms"). A limit set with `configure_limit` counts even
    when there is no default, so tests and operators can limit any integration.
    """
    wanted = [(integration, integration)]
    if sender:
        kind = sender.split(":", 1)[0]
        wanted.append((f"{integration}:{sender}", f"{integration}:{kind}"))
    defaults = [_default_limit(limit) for _, limit in wanted]
    overridden: list[int] = [0] * len(wanted)
    if any(default is None for default in defaults):
        pipe = get_redis().pipeline(transaction=False)
        for _, limit in wanted:
            pipe.exists(_limit_key(limit))
        overridden = pipe.execute()
    buckets = []
    for (bucket, limit), default, has_override in zip(wanted, defaults, overridden, strict=True):
        if default is None and not has_override:
            continue
        rate, burst = default or (1.0, 1)  # the script reads the override instead
        buckets.append((bucket, limit, rate, burst))
    return buckets


# --- circuit breaker ------------------------------------------------------------------

# Before a call. KEYS: breaker hash, probe lock. ARGV: reset seconds, lock ms, lock token.
# Returns {"closed"} | {"probe"} | {"open", seconds until the reset time}. Once the reset
# time has passed, the one caller that sets the lock (SET NX) makes the half-open probe;
# the lock expires on its own should that caller die mid-call.
_BEFORE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'closed' then
  return {'closed'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at')) or 0
local left = opened + tonumber(ARGV[1]) - now
if left > 0 then
  return {'open', tostring(left)}
end
if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'half_open')
  return {'probe'}
end
return {'open', tostring(math.max(left, 0) + 1)}
"""

# After a call. KEYS: breaker hash, probe lock. ARGV: outcome ("ok" | "transient" |
# "permanent"), threshold, lock token ("" when not the prober).
# Consecutive transient failures open the breaker; the prober's failure re-opens it;
# any answer from the provider (success or permanent error) closes it.
_AFTER = """
local prober = ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3]
if prober then
  redis.call('DEL', KEYS[2])
end
if ARGV[1] ~= 'transient' then
  redis.call('DEL', KEYS[1])
  return 'closed'
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if prober or (state == 'closed' and failures >= tonumber(ARGV[2])) then
  local t = redis.call('TIME')
  local opened_at = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', opened_at)
  return 'open'
end
if state == 'closed' then
  redis.call('HSET', KEYS[1], 'state', 'closed')
end
return state
"""

# Release an unused probe lock (the prober was rate-limited before calling).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'half_open' then
  redis.call('HSET', KEYS[2], 'state', 'open')
end
return 1
"""


def breaker_state(integration: str) -> dict:
    """The breaker of `integration`: state, consecutive transient failures, when it opened."""
    saved = get_redis().hgetall(_breaker_key(integration))
    state = (saved.get(b"state") or b"closed").decode()
    opened_at = float(saved[b"opened_at"]) if saved.get(b"opened_at") else None
    if state == "open" and opened_at is not None and time.time() >= opened_at + _reset_seconds():
        state = "half_open"  # the next call will be let through as the probe
    return {
        "state": state,
        "failures": int(saved.get(b"failures") or 0),
        "opened_at": opened_at if state != "closed" else None,
    }


def reset_breaker(integration: str) -> None:
    """Close the breaker of `integration` by hand."""
    get_redis().delete(_breaker_key(integration), _probe_key(integration))


# --- classification -------------------------------------------------------------------


def _is_transient_status(status: int | None) -> bool:
    return status is not None and (status == 429 or status >= 500)


def classify(exc: BaseException) -> tuple[str, int | None, object | None]:
    """Return ("transient" | "permanent", HTTP status, provider code) for a failure."""
    if isinstance(exc, CallError):
        kind = "transient" if isinstance(exc, TransientError) else "permanent"
        return kind, exc.status, exc.code

    # Only loaded modules can have raised their exceptions: no import (and its cost) here.
    twilio_errors = sys.modules.get("twilio.base.exceptions")
    if twilio_errors is not None and isinstance(exc, twilio_errors.TwilioRestException):
        status = exc.status
        transient = exc.code == 20429 or _is_transient_status(status)
        return ("transient" if transient else "permanent"), status, exc.code

    stripe_kind = _classify_stripe(exc)
    if stripe_kind is not None:
        return stripe_kind

    http = _classify_http_libraries(exc)
    if http is not None:
        return http

    if isinstance(exc, TimeoutError):
        return "transient", None, "timeout"
    if isinstance(exc, ConnectionError | redis.ConnectionError):
        return "transient", None, "connection"
    if isinstance(exc, OSError):  # DNS failures, resets, unreachable networks
        return "transient", None, "network"

    status = _status_of(exc)
    if status is not None:
        return ("transient" if _is_transient_status(status) else "permanent"), status, None
    return "permanent", None, None


def _classify_stripe(exc: BaseException):
    stripe = sys.modules.get("stripe")
    if stripe is None or not isinstance(exc, stripe.StripeError):
        return None
    status = exc.http_status
    code = exc.code
    if isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError):
        return "transient", status, code
    headers = exc.headers or {}
    should_retry = {k.lower(): v for k, v in dict(headers).items()}.get("stripe-should-retry")
    if should_retry == "true":
        return "transient", status, code
    if should_retry == "false":
        return "permanent", status, code
    if isinstance(exc, stripe.APIError) and status is None:
        return "transient", status, code
    return ("transient" if _is_transient_status(status) else "permanent"), status, code


def _classify_http_libraries(exc: BaseException):
    requests = sys.modules.get("requests")
    if requests is not None and isinstance(exc, requests.RequestException):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None) if response is not None else None
        if isinstance(exc, requests.Timeout):
            return "transient", status, "timeout"
        if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
            return "transient", status, "connection"
        if status is not None:
            return ("transient" if _is_transient_status(status) else "permanent"), status, None
        return "permanent", None, None

    httpx = sys.modules.get("httpx")
    if httpx is not None:
        if isinstance(exc, httpx.HTTPStatusError):
            status = exc.response.status_code
            return ("transient" if _is_transient_status(status) else "permanent"), status, None
        if isinstance(exc, httpx.TimeoutException):
            return "transient", None, "timeout"
        if isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol):
            return "transient", None, "connection"

    urllib3 = sys.modules.get("urllib3")
    if urllib3 is not None:
        errors = urllib3.exceptions
        if isinstance(exc, errors.TimeoutError):
            return "transient", None, "timeout"
        if isinstance(exc, errors.ProtocolError | errors.MaxRetryError | errors.NewConnectionError):
            return "transient", None, "connection"
    return None


def _status_of(exc: BaseException) -> int | None:
    for attr in ("http_status", "status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) else None


def _retry_after(exc: BaseException) -> float | None:
    """Seconds the provider asked us to wait (Retry-After, Calendly's X-RateLimit-Reset)."""
    headers = None
    response = getattr(exc, "response", None)
    if response is not None:
        headers = getattr(response, "headers", None)
    if headers is None:
        headers = getattr(exc, "headers", None)
    if not headers:
        return None
    try:
        lowered = {str(k).lower(): v for k, v in dict(headers).items()}
    except (TypeError, ValueError):
        return None
    for name in ("retry-after", "x-ratelimit-reset"):
        value = lowered.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            continue  # an HTTP date: the caller's backoff is good enough
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    return f"{exc.__class__.__name__}: {message}"[:300] if message else exc.__class__.__name__


# --- the call -------------------------------------------------------------------------

# The integrations whose `call` is running in this thread: a provider function that goes
# through `call` itself, inside a caller that already did (the health probe), is not
# counted, limited or broken twice.
_active: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "rapport_integration_calls", default=frozenset()
)


def call(
    integration: str,
    fn: Callable[[], T],
    *,
    sender: str | None = None,
    operation: str = "call",
    wait: float = 0.0,
) -> T:
    """Run `fn` (one provider request) under the integration's breaker and rate limits.

    Return what `fn` returns, or raise TransientError / PermanentError from its exception.
    """
    active = _active.get()
    if integration in active:
        return fn()

    breaker_keys = [_breaker_key(integration), _probe_key(integration)]
    lock = uuid.uuid4().hex
    lock_ms = int((max(0.0, wait) + 2 * timeout() + 5) * 1000)
    state, *rest = _script("before", _BEFORE)(
        keys=breaker_keys, args=[_reset_seconds(), lock_ms, lock]
    )
    state = state.decode() if isinstance(state, bytes) else state
    if state == "open":
        raise CircuitOpen(
            "circuit open after repeated failures",
            integration,
            retry_after=float(rest[0]) if rest else None,
        )
    prober = state == "probe"

    retry_after = _take(_buckets_for(integration, sender), wait)
    if retry_after is not None:
        if prober:
            _script("release", _RELEASE)(
                keys=[_probe_key(integration), breaker_keys[0]], args=[lock]
            )
        raise RateLimited("rate limit reached", integration, retry_after=retry_after)

    token = _active.set(active | {integration})
    started = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:
        latency_ms = (time.perf_counter() - started) * 1000
        kind, status, code = classify(exc)
        _script("after", _AFTER)(
            keys=breaker_keys, args=[kind, _threshold(), lock if prober else ""]
        )
        metrics.record_call(
            integration,
            ok=False,
            latency_ms=latency_ms,
            operation=operation,
            error=_describe(exc),
        )
        log.warning(
            "%s %s failed (%s, status=%s, code=%s): %s",
            integration,
            operation,
            kind,
            status,
            code,
            _describe(exc),
        )
        if isinstance(exc, CallError):
            if not exc.integration:
                exc.integration = integration
            raise
        error_class = TransientError if kind == "transient" else PermanentError
        raise error_class(
            _describe(exc),
            integration,
            status=status,
            code=code,
            retry_after=_retry_after(exc),
        ) from exc
    finally:
        _active.reset(token)
    latency_ms = (time.perf_counter() - started) * 1000
    _script("after", _AFTER)(keys=breaker_keys, args=["ok", _threshold(), lock if prober else ""])
    metrics.record_call(integration, ok=True, latency_ms=latency_ms, operation=operation)
    return result


def _script(name: str, source: str):
    """The registered Lua script `name` on this app's Redis (EVALSHA, loaded on demand)."""
    scripts = current_app.extensions.setdefault("rapport_policy_scripts", {})
    script = scripts.get(name)
    if script is None:
        script = get_redis().register_script(source)
        scripts[name] = script
    return script
