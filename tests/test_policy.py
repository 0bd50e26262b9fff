"""The outbound call policy: classification, circuit breaker and shared rate limits.

Failures come from a real HTTP server on a loopback port (real status codes, real
timeouts) reached with requests and with the Twilio and Stripe SDKs; breaker and buckets
live in the real Redis; the rate limiter is checked across three real worker processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import stripe
from rq import Worker
from twilio.rest import Client as TwilioClient
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from crm.integrations import metrics, policy
from crm.redis_client import get_redis
from jobs import get_queue

ROOT = Path(__file__).resolve().parent.parent


class FakeServer:
    """A loopback HTTP server answering each path as the test scripts it."""

    def __init__(self):
        self.routes: dict[str, tuple[int, dict, dict, float]] = {}
        self.hits: list[str] = []
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def script(self, path, status=200, body=None, headers=None, delay=0.0):
        self.routes[path] = (
            status,
            body if body is not None else {"ok": True},
            headers or {},
            delay,
        )

    @Request.application
    def app(self, request):
        self.hits.append(request.path)
        status, body, headers, delay = self.routes.get(
            request.path, (404, {"error": "no route"}, {}, 0.0)
        )
        if delay:
            time.sleep(delay)
        return Response(json.dumps(body), status, headers, content_type="application/json")

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    fake = FakeServer()
    yield fake
    fake.close()


@pytest.fixture
def ctx(app, redis):
    with app.app_context():
        yield app


@pytest.fixture
def breaker_config(app, monkeypatch):
    monkeypatch.setitem(app.config, "CIRCUIT_FAILURE_THRESHOLD", 3)
    monkeypatch.setitem(app.config, "CIRCUIT_RESET_SECONDS", 0.6)


def get(url, timeout=2.0):
    """What a provider module does: one request, raising for an error status."""

    def run():
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
        return response.json()

    return run


def failing_call(integration, fn):
    with pytest.raises(policy.CallError) as info:
        policy.call(integration, fn)
    return info.value


# --- classification -------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_429_and_5xx_are_transient(ctx, server, status):
    server.script("/x", status, {"error": "nope"})
    error = failing_call("crm_sync", get(server.url + "/x"))
    assert isinstance(error, policy.TransientError)
    assert error.status == status and error.integration == "crm_sync"
    assert isinstance(error.__cause__, requests.HTTPError)
    assert policy.classify(error.__cause__)[:2] == ("transient", status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_are_permanent(ctx, server, status):
    server.script("/x", status, {"error": "nope"})
    error = failing_call("crm_sync", get(server.url + "/x"))
    assert isinstance(error, policy.PermanentError) and not isinstance(error, policy.TransientError)
    assert error.status == status


def test_a_timeout_is_transient(ctx, server):
    server.script("/slow", delay=1.0)
    error = failing_call("crm_sync", get(server.url + "/slow", timeout=0.2))
    assert isinstance(error, policy.TransientError)
    assert error.code == "timeout" and error.status is None
    assert isinstance(error.__cause__, requests.Timeout)


def test_a_refused_connection_is_transient(ctx):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = failing_call("crm_sync", get(f"http://127.0.0.1:{port}/"))
    assert isinstance(error, policy.TransientError) and error.code == "connection"


def test_retry_after_is_kept(ctx, server):
    server.script("/busy", 429, {"error": "slow down"}, {"Retry-After": "7"})
    error = failing_call("crm_sync", get(server.url + "/busy"))
    assert isinstance(error, policy.TransientError) and error.retry_after == 7.0


def test_twilio_sdk_errors(ctx, server):
    path = "/2010-04-01/Accounts/AC123/Messages.json"
    client = TwilioClient("AC123", "token")
    client.api.base_url = server.url

    def send():
        return client.messages.create(to="+14155550101", from_="+14155550100", body="hi")

    server.script(path, 429, {"code": 20429, "message": "Too Many Requests", "status": 429})
    error = failing_call("twilio", send)
    assert isinstance(error, policy.TransientError) and error.code == 20429
    server.script(path, 400, {"code": 21211, "message": "Invalid 'To'", "status": 400})
    error = failing_call("twilio", send)
    assert isinstance(error, policy.PermanentError)
    assert (error.status, error.code) == (400, 21211)


def test_stripe_sdk_errors(ctx, server):
    client = stripe.StripeClient(
        "sk_test_123", base_addresses={"api": server.url}, max_network_retries=0
    )

    def fetch():
        return client.v1.customers.retrieve("cus_1")

    def stripe_error(kind, code):
        return {"error": {"type": kind, "code": code, "message": code}}

    server.script("/v1/customers/cus_1", 429, stripe_error("invalid_request_error", "rate_limit"))
    error = failing_call("stripe", fetch)
    assert isinstance(error, policy.TransientError)
    assert isinstance(error.__cause__, stripe.RateLimitError)
    server.script(
        "/v1/customers/cus_1", 404, stripe_error("invalid_request_error", "resource_missing")
    )
    error = failing_call("stripe", fetch)
    assert isinstance(error, policy.PermanentError)
    assert (error.status, error.code) == (404, "resource_missing")
    server.script("/v1/customers/cus_1", 500, stripe_error("api_error", "oops"))
    assert isinstance(failing_call("stripe", fetch), policy.TransientError)


def test_errors_raised_by_the_provider_module_keep_their_class(ctx):
    def refuse():
        raise policy.PermanentError("contact has no email or phone")

    error = failing_call("crm_sync", refuse)
    assert isinstance(error, policy.PermanentError) and error.integration == "crm_sync"
    assert "crm_sync: contact has no email" in str(error)


def test_timeout_comes_from_config(ctx, monkeypatch):
    monkeypatch.setitem(ctx.config, "INTEGRATION_TIMEOUT_SECONDS", 3.5)
    assert policy.timeout() == 3.5


# --- circuit breaker ------------------------------------------------------------------


def test_transient_failures_open_the_breaker_and_a_probe_closes_it(ctx, server, breaker_config):
    server.script("/down", 503)
    server.script("/up", 200, {"n": 1})
    for _ in range(3):
        assert isinstance(
            failing_call("crm_sync", get(server.url + "/down")), policy.TransientError
        )
    state = policy.breaker_state("crm_sync")
    assert state["state"] == "open" and state["failures"] == 3 and state["opened_at"]

    hits = len(server.hits)
    error = failing_call("crm_sync", get(server.url + "/up"))
    assert isinstance(error, policy.CircuitOpen) and isinstance(error, policy.TransientError)
    assert 0 < error.retry_after <= 0.6
    assert len(server.hits) == hits  # refused without calling the provider

    time.sleep(0.65)
    assert policy.breaker_state("crm_sync")["state"] == "half_open"
    assert policy.call("crm_sync", get(server.url + "/up")) == {"n": 1}
    assert policy.breaker_state("crm_sync") == {"state": "closed", "failures": 0, "opened_at": None}
    assert policy.call("crm_sync", get(server.url + "/up")) == {"n": 1}


def test_a_failed_probe_reopens_the_breaker(ctx, server, breaker_config):
    server.script("/down", 503)
    for _ in range(3):
        failing_call("crm_sync", get(server.url + "/down"))
    first_open = policy.breaker_state("crm_sync")["opened_at"]
    time.sleep(0.65)
    error = failing_call("crm_sync", get(server.url + "/down"))  # the probe
    assert type(error) is policy.TransientError
    state = policy.breaker_state("crm_sync")
    assert state["state"] == "open" and state["opened_at"] > first_open
    assert isinstance(failing_call("crm_sync", get(server.url + "/down")), policy.CircuitOpen)


def test_only_one_caller_probes_a_half_open_breaker(app, ctx, breaker_config):
    def fail():
        raise TimeoutError("provider did not answer")

    for _ in range(3):
        failing_call("calendly", fail)
    time.sleep(0.65)

    ran = []
    outcomes = []
    start = threading.Barrier(8)

    def probe():
        ran.append(1)
        time.sleep(1.0)  # the others arrive while the probe is out
        return "ok"

    def caller():
        with app.app_context():
            start.wait()
            try:
                outcomes.append(policy.call("calendly", probe))
            except policy.CircuitOpen:
                outcomes.append("refused")

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(ran) == 1
    assert sorted(outcomes) == ["ok"] + ["refused"] * 7
    assert policy.breaker_state("calendly")["state"] == "closed"


def test_permanent_errors_do_not_open_the_breaker(ctx, server, breaker_config):
    server.script("/missing", 404)
    for _ in range(6):
        assert isinstance(
            failing_call("crm_sync", get(server.url + "/missing")), policy.PermanentError
        )
    assert policy.breaker_state("crm_sync")["state"] == "closed"


def test_a_success_resets_the_count_of_consecutive_failures(ctx, server, breaker_config):
    server.script("/down", 503)
    server.script("/up")
    for _ in range(2):
        failing_call("crm_sync", get(server.url + "/down"))
    policy.call("crm_sync", get(server.url + "/up"))
    for _ in range(2):
        failing_call("crm_sync", get(server.url + "/down"))
    assert policy.breaker_state("crm_sync") == {"state": "closed", "failures": 2, "opened_at": None}


def test_reset_breaker_closes_it(ctx, server, breaker_config):
    server.script("/down", 503)
    for _ in range(3):
        failing_call("crm_sync", get(server.url + "/down"))
    policy.reset_breaker("crm_sync")
    assert policy.breaker_state("crm_sync")["state"] == "closed"
    server.script("/down", 200)
    assert policy.call("crm_sync", get(server.url + "/down")) == {"ok": True}


def test_breakers_are_per_integration(ctx, breaker_config):
    def fail():
        raise ConnectionResetError("reset by peer")

    for _ in range(3):
        failing_call("stripe", fail)
    assert policy.breaker_state("stripe")["state"] == "open"
    assert policy.call("calendly", lambda: "fine") == "fine"


# --- rate limits ----------------------------------------------------------------------


def test_take_token_allows_the_burst_then_refills(ctx):
    assert all(policy.take_token("bucket", 10, 3) for _ in range(3))
    assert not policy.take_token("bucket", 10, 3)
    started = time.monotonic()
    assert policy.take_token("bucket", 10, 3, wait=1.0)
    assert time.monotonic() - started > 0.05  # it waited for the refill


def test_sms_senders_are_limited_per_number(ctx):
    assert policy.call("twilio", lambda: 1, sender="sms:+14155550100") == 1
    with pytest.raises(policy.RateLimited) as info:
        policy.call("twilio", lambda: 2, sender="sms:+14155550100")
    assert 0 < info.value.retry_after <= 1.0
    assert policy.call("twilio", lambda: 3, sender="sms:+14155550199") == 3
    for _ in range(20):  # WhatsApp senders have 80/s
        policy.call("twilio", lambda: 4, sender="whatsapp:+14155550100")


def test_a_refused_sender_does_not_spend_the_integration_token(ctx):
    policy.configure_limit("twilio", 0.01, 2)
    policy.configure_limit("twilio:sms", 0.01, 1)
    policy.call("twilio", lambda: 1, sender="sms:+14155550100")
    with pytest.raises(policy.RateLimited):
        policy.call("twilio", lambda: 1, sender="sms:+14155550100")  # that number is spent
    policy.call("twilio", lambda: 1, sender="sms:+14155550101")  # the integration had one left
    with pytest.raises(policy.RateLimited):
        policy.call("twilio", lambda: 1, sender="sms:+14155550102")  # now the integration is


def test_rate_limits_come_from_config(ctx, monkeypatch):
    monkeypatch.setitem(ctx.config, "RATE_LIMITS", {"stripe": (1, 1)})
    policy.call("stripe", lambda: None)
    with pytest.raises(policy.RateLimited):
        policy.call("stripe", lambda: None)
    calls = []
    policy.call("stripe", lambda: calls.append(1), wait=1.5)  # waits for the next token
    assert calls == [1]


def test_rate_limited_calls_never_reach_the_provider(ctx):
    policy.configure_limit("crm_sync", 0.5, 1)
    calls = []
    policy.call("crm_sync", lambda: calls.append(1))
    for _ in range(3):
        with pytest.raises(policy.RateLimited):
            policy.call("crm_sync", lambda: calls.append(1))
    assert calls == [1]


def test_nested_calls_for_one_integration_count_once(ctx):
    policy.configure_limit("calendly", 1, 1)

    def outer():
        return policy.call("calendly", lambda: "inner", operation="users_me")

    assert policy.call("calendly", outer, operation="probe") == "inner"
    assert metrics.summary("calendly")["hour"]["calls"] == 1


def test_calls_are_recorded_in_metrics(ctx, server):
    server.script("/ok")
    server.script("/bad", 500, {"error": "boom"})
    policy.call("crm_sync", get(server.url + "/ok"), operation="upsert")
    failing_call("crm_sync", get(server.url + "/bad"))
    summary = metrics.summary("crm_sync")
    assert summary["hour"]["calls"] == 2 and summary["hour"]["error_rate"] == 0.5
    assert summary["last_success_at"] and "500 Server Error" in summary["last_error"]


# --- across processes ------------------------------------------------------------------


def stamp_limited_call(barrier_key: str) -> None:
    """A job: wait for every worker, then make one rate-limited call and stamp it.

    The stamp names the worker process (the parent of the work horse that runs the job).
    """
    r = get_redis()
    deadline = time.time() + 30
    while not r.exists(barrier_key) and time.time() < deadline:
        time.sleep(0.02)
    policy.call(
        "x",
        lambda: r.rpush("stamps", json.dumps([time.time(), os.getppid()])),
        wait=60,
    )


def test_rate_limit_holds_across_three_worker_processes(app, ctx, redis, database_url, redis_url):
    rate, burst, total = 5.0, 5, 30
    policy.configure_limit("x", rate, burst)
    queue = get_queue("sync")
    for _ in range(total):
        queue.enqueue(stamp_limited_call, "go")
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    cmd = [sys.executable, "-m", "flask", "--app", "app", "worker", "--burst", "sync"]
    workers = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(3)
    ]
    try:
        # Release the jobs only once all three workers hold one, so all three compete.
        deadline = time.time() + 30
        while time.time() < deadline:
            busy = [w for w in Worker.all(connection=redis) if w.get_current_job_id()]
            if len(busy) == 3:
                break
            time.sleep(0.05)
        redis.set("go", 1)
        for worker in workers:
            worker.wait(60)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            output = worker.stdout.read().decode()
            worker.stdout.close()
            assert worker.returncode == 0, output

    stamps = sorted(json.loads(raw) for raw in redis.lrange("stamps", 0, -1))
    assert len(stamps) == total
    assert len({pid for _, pid in stamps}) == 3  # three processes shared the bucket
    times = [t for t, _ in stamps]
    # Never more calls in any window than the burst plus what the rate refilled.
    slack = 0.1  # between the token grant and the stamp
    for i in range(total):
        for j in range(i, total):
            assert j - i + 1 <= burst + rate * (times[j] - times[i] + slack), (i, j)
    elapsed = times[-1] - times[0]
    assert elapsed >= (total - burst) / rate - slack
    assert elapsed < 2 * (total - burst) / rate  # waiting callers got the tokens as they came
