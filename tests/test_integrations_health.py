"""The integration-health page, the metrics behind it, failed jobs, and the probe job."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jinja2_fragments.flask import render_block
from rq import SimpleWorker, Worker
from rq.registry import FailedJobRegistry, ScheduledJobRegistry

from crm import create_app
from crm.health.checks import readiness
from crm.integrations import health, metrics, policy
from jobs import get_queue
from jobs import health as health_jobs

ROOT = Path(__file__).resolve().parent.parent

PROVIDER_CARDS = ("twilio", "stripe", "calendly", "calcom", "google", "crm_sync")
CORE_CARDS = ("database", "migrations", "redis", "scheduler", "workers")


def always_fails(label: str) -> None:
    """A job that fails, for the failed-jobs list."""
    raise RuntimeError(f"provider said no to {label}\nsecond line: the one shown")


@pytest.fixture
def ctx(app, redis):
    with app.app_context():
        yield app


@pytest.fixture
def unconfigured(app, monkeypatch):
    """No provider credentials, whatever the environment running the tests holds."""
    for key in (
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "STRIPE_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRETS",
        "CALENDLY_CLIENT_ID",
        "CALENDLY_CLIENT_SECRET",
        "CALENDLY_WEBHOOK_SIGNING_KEY",
        "CALCOM_WEBHOOK_SECRET",
        "CRM_SYNC_URL",
        "CRM_SYNC_TOKEN",
    ):
        monkeypatch.setitem(app.config, key, None)


def card(page: str, name: str) -> str:
    match = re.search(rf'<article[^>]*id="card-{name}".*?</article>', page, re.S)
    assert match, f"no card {name}"
    return match.group(0)


# --- metrics --------------------------------------------------------------------------


def test_summary_of_recorded_calls_probes_and_webhooks(ctx):
    for latency in (10, 20, 30, 40, 2000):
        metrics.record_call("stripe", ok=True, latency_ms=latency, operation="checkout")
    metrics.record_call("stripe", ok=False, latency_ms=25, operation="refund", error="HTTP 500")
    for ok in (True, True, True, False):
        metrics.record_probe("stripe", ok=ok, latency_ms=12, error=None if ok else "HTTP 503")
    metrics.record_refused_webhook("stripe")
    metrics.record_refused_webhook("stripe")

    summary = metrics.summary("stripe")
    for window in ("hour", "day"):
        assert summary[window]["calls"] == 6 and summary[window]["errors"] == 1
        assert summary[window]["error_rate"] == pytest.approx(1 / 6)
        assert 25 * 0.9 <= summary[window]["p50_ms"] <= 30 * 1.1  # bins are ~10 % wide
    assert summary["last_error"] == "HTTP 500"
    assert time.time() - summary["last_success_at"] < 5
    assert summary["uptime_day"] == 0.75 and summary["probes_day"] == 4
    assert summary["last_probe_ok"] is False and summary["last_probe_error"] == "HTTP 503"
    assert summary["signature_failures_day"] == 2

    line = metrics.sparkline("stripe")
    assert len(line) == 24 and line[-1] == summary["hour"]["p50_ms"]
    assert all(point is None for point in line[:-1])


def test_summary_without_data(ctx):
    summary = metrics.summary("calendly")
    assert summary["uptime_day"] is None and summary["last_success_at"] is None
    assert summary["hour"] == {"calls": 0, "errors": 0, "error_rate": None, "p50_ms": None}
    assert metrics.sparkline("calendly") == [None] * 24


def test_metrics_memory_is_bounded(ctx, redis):
    for _ in range(500):
        metrics.record_call("crm_sync", ok=True, latency_ms=15, operation="upsert")
    keys = redis.keys("rapport:integration:metrics:crm_sync:*")
    assert len(keys) == 2  # one 5-minute and one hourly bucket, whatever the call count
    assert all(0 < redis.ttl(key) <= 26 * 3600 for key in keys)


def test_sparkline_points_break_at_gaps():
    points = health.sparkline_points([None, 10.0, 20.0, None, 5.0, None], width=100, height=20)
    assert points["lines"] == ["20.0,10.0 40.0,2.0"]
    assert points["dots"] == [(80.0, 14.0)]
    assert points["max"] == 20.0 and points["last"] == 5.0
    assert health.sparkline_points([None, None])["lines"] == []


# --- the page -------------------------------------------------------------------------


def test_page_has_a_card_per_integration_and_says_what_is_missing(client, login_as, unconfigured):
    login_as("staff")
    response = client.get("/integrations/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for name in PROVIDER_CARDS + CORE_CARDS:
        assert f'id="card-{name}"' in page
    for queue in ("webhooks", "messaging", "default", "sync"):
        assert f'id="card-queue-{queue}"' in page
    twilio = card(page, "twilio")
    assert "Not configured" in twilio
    assert "TWILIO_ACCOUNT_SID is not set" in twilio and "TWILIO_AUTH_TOKEN is not set" in twilio
    assert "CRM_SYNC_URL is not set" in card(page, "crm_sync")
    assert "CALCOM_WEBHOOK_SECRET is not set" in card(page, "calcom")
    google = card(page, "google")  # the test app has Google credentials
    assert "Not configured" not in google and "OK" in google
    assert 'hx-trigger="every 10s"' in page


def test_a_configured_provider_shows_its_metrics_and_sparkline(
    app, client, login_as, monkeypatch, unconfigured
):
    monkeypatch.setitem(app.config, "STRIPE_SECRET_KEY", "sk_test_123")
    with app.app_context():
        policy.call("stripe", lambda: None, operation="checkout")
        metrics.record_refused_webhook("stripe")
    login_as("staff")
    stripe_card = card(client.get("/integrations/").get_data(as_text=True), "stripe")
    assert "Not configured" not in stripe_card
    assert "STRIPE_WEBHOOK_SECRET is not set" in stripe_card  # calls work, webhooks do not
    assert "<svg" in stripe_card and "<circle" in stripe_card
    assert "Signature failures (day)</dt><dd>1</dd>" in stripe_card
    assert re.search(
        r"Last success</dt><dd><time datetime=\"[^\"]+\">\d+ s ago</time>", stripe_card
    )
    assert "closed" in stripe_card


def test_an_open_breaker_shows_the_provider_down(app, client, login_as, monkeypatch):
    monkeypatch.setitem(app.config, "CRM_SYNC_URL", "http://127.0.0.1:9")
    monkeypatch.setitem(app.config, "CRM_SYNC_TOKEN", "token")
    monkeypatch.setitem(app.config, "CIRCUIT_FAILURE_THRESHOLD", 2)

    def fail():
        raise TimeoutError("no answer")

    with app.app_context():
        for _ in range(2):
            with pytest.raises(policy.TransientError):
                policy.call("crm_sync", fail)
    login_as("staff")
    crm_card = card(client.get("/integrations/").get_data(as_text=True), "crm_sync")
    assert "health-down" in crm_card and "Down" in crm_card
    assert "circuit breaker open" in crm_card and "TimeoutError: no answer" in crm_card


def test_htmx_gets_only_the_cards(client, login_as):
    login_as("staff")
    response = client.htmx_get("/integrations/")
    body = response.get_data(as_text=True)
    assert response.status_code == 200 and "<html" not in body
    assert body.strip().startswith('<div id="health-cards"')
    assert 'hx-get="/integrations/"' in body and 'hx-trigger="every 10s"' in body
    assert "HX-Request" in response.headers["Vary"]


def test_staff_see_the_page_coaches_do_not(client, login_as):
    assert client.get("/integrations/").status_code == 302  # to sign-in
    login_as("coach")
    assert client.get("/integrations/").status_code == 403
    assert client.htmx_get("/integrations/").status_code == 403


# --- failed jobs ----------------------------------------------------------------------


@pytest.fixture
def failed_job(app, redis):
    """A job that really failed in a real worker; return its id."""
    with app.app_context():
        queue = get_queue("messaging")
        job = queue.enqueue(always_fails, "sms-1")
        SimpleWorker([queue], connection=redis).work(burst=True)
        assert job.id in FailedJobRegistry(queue=queue)
        return job.id


def test_failed_jobs_are_listed_with_their_error(client, login_as, failed_job):
    login_as("staff")
    page = client.get("/integrations/").get_data(as_text=True)
    queue_card = card(page, "queue-messaging")
    assert failed_job in queue_card and "always_fails" in queue_card
    assert "second line: the one shown" in queue_card
    assert "health-degraded" in queue_card
    assert "Requeue" not in queue_card and "Delete" not in queue_card  # staff only look


@pytest.mark.parametrize("htmx", [False, True])
def test_admin_requeues_a_failed_job(client, login_as, failed_job, redis, htmx):
    login_as("admin")
    page = client.get("/integrations/").get_data(as_text=True)
    url = f"/integrations/queues/messaging/failed/{failed_job}/requeue"
    assert f'action="{url}"' in page and f'hx-post="{url}"' in page
    response = client.form(url, htmx=htmx)
    if htmx:
        body = response.get_data(as_text=True)
        assert response.status_code == 200 and "<html" not in body
        assert f"Job {failed_job} requeued." in body
    else:
        assert response.status_code == 303 and response.headers["Location"] == "/integrations/"
        follow = client.get("/integrations/").get_data(as_text=True)
        assert f"Job {failed_job} requeued." in follow
    queue = get_queue("messaging")
    assert queue.get_job_ids() == [failed_job]
    assert failed_job not in FailedJobRegistry(queue=queue)


@pytest.mark.parametrize("htmx", [False, True])
def test_admin_deletes_a_failed_job(client, login_as, failed_job, redis, htmx):
    login_as("admin")
    response = client.form(f"/integrations/queues/messaging/failed/{failed_job}/delete", htmx=htmx)
    assert response.status_code == (200 if htmx else 303)
    queue = get_queue("messaging")
    assert failed_job not in FailedJobRegistry(queue=queue) and queue.count == 0
    assert not redis.exists(f"rq:job:{failed_job}")
    page = client.get("/integrations/").get_data(as_text=True)
    assert failed_job not in card(page, "queue-messaging")


def test_staff_cannot_requeue_or_delete(client, login_as, failed_job):
    login_as("staff")
    for action in ("requeue", "delete"):
        url = f"/integrations/queues/messaging/failed/{failed_job}/{action}"
        assert client.form(url).status_code == 403
        assert client.form(url, htmx=True).status_code == 403
    assert failed_job in FailedJobRegistry(queue=get_queue("messaging"))


def test_unknown_failed_job_or_queue_is_a_404(client, login_as, failed_job):
    login_as("admin")
    assert client.form("/integrations/queues/messaging/failed/nope/requeue").status_code == 404
    assert client.form(f"/integrations/queues/sync/failed/{failed_job}/delete").status_code == 404
    assert client.form(f"/integrations/queues/emails/failed/{failed_job}/delete").status_code == 404


def test_requeue_needs_a_csrf_token(client, login_as, failed_job):
    login_as("admin")
    response = client.post(f"/integrations/queues/messaging/failed/{failed_job}/requeue")
    assert response.status_code == 400
    assert failed_job in FailedJobRegistry(queue=get_queue("messaging"))


# --- the probe job --------------------------------------------------------------------


def run_probe(redis):
    queue = get_queue(health_jobs.PROBE_QUEUE)
    queue.enqueue(health_jobs.probe_integrations)
    SimpleWorker([queue], connection=redis).work(burst=True)


def test_probe_records_each_configured_provider(
    ctx, redis, twilio_fake, stripe_fake, calendly_fake, crm_fake
):
    run_probe(redis)
    for name, fake in (
        ("twilio", twilio_fake),
        ("stripe", stripe_fake),
        ("calendly", calendly_fake),
        ("crm_sync", crm_fake),
    ):
        assert len(fake.calls()) == 1, name  # one cheap request each
        summary = metrics.summary(name)
        assert summary["uptime_day"] == 1.0 and summary["last_probe_ok"] is True, name
        assert summary["hour"]["calls"] == 1, name  # counted once, through the call policy
    for name in ("calcom", "google"):  # nothing to probe
        assert metrics.summary(name)["probes_day"] == 0


def test_a_failing_probe_shows_the_provider_down(app, client, login_as, redis, crm_fake):
    crm_fake.fail_next(status=503)
    with app.app_context():
        run_probe(redis)
        summary = metrics.summary("crm_sync")
    assert summary["uptime_day"] == 0.0 and "503" in summary["last_probe_error"]
    login_as("staff")
    crm_card = card(client.get("/integrations/").get_data(as_text=True), "crm_sync")
    assert "health-down" in crm_card and "Uptime (day)</dt><dd>0%" in crm_card


def test_probe_skips_unconfigured_and_missing_provider_modules(
    ctx, redis, monkeypatch, unconfigured
):
    run_probe(redis)
    monkeypatch.setitem(ctx.config, "CRM_SYNC_URL", "http://127.0.0.1:9")
    monkeypatch.setitem(ctx.config, "CRM_SYNC_TOKEN", "token")
    monkeypatch.setitem(
        health_jobs.PROBES, "crm_sync", "crm.integrations.no_such_module:check_health"
    )
    run_probe(redis)
    for name in PROVIDER_CARDS:
        assert metrics.summary(name)["probes_day"] == 0
    assert FailedJobRegistry(queue=get_queue("default")).count == 0


def test_probe_reschedules_itself_once(ctx, redis):
    queue = get_queue(health_jobs.PROBE_QUEUE)
    first = health_jobs.schedule_probes()
    assert first and health_jobs.schedule_probes() is None
    run_probe(redis)  # the running probe finds its successor already scheduled
    registry = ScheduledJobRegistry(queue=queue)
    assert registry.get_job_ids() == [first]
    interval = ctx.config["HEALTH_PROBE_INTERVAL_SECONDS"]
    assert 0 < health_jobs.next_probe_at(queue) - time.time() <= interval


def test_three_workers_start_one_probe_chain(app, redis, database_url, redis_url):
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    cmd = [sys.executable, "-m", "flask", "--app", "app", "worker", "default"]
    workers = [
        subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(3)
    ]
    try:
        deadline = time.time() + 30
        while len(Worker.all(connection=redis)) < 3 and time.time() < deadline:
            time.sleep(0.1)
        assert len(Worker.all(connection=redis)) == 3
        with app.app_context():
            registry = ScheduledJobRegistry(queue=get_queue(health_jobs.PROBE_QUEUE))
            probes = [
                job_id
                for job_id in registry.get_job_ids()
                if job_id.startswith(health_jobs.PROBE_JOB_PREFIX)
            ]
        assert len(probes) == 1
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def test_provider_cards_survive_an_unreachable_database(app, redis, tmp_path):
    """The last webhook comes from the stored deliveries; without the database it is
    "unknown", and the rest of each card still shows."""
    settings = {key: app.config[key] for key in ("TESTING", "REDIS_URL", "REDIS_EMBEDDED")}
    missing = tmp_path / "no-such-directory" / "rapport.db"
    broken = create_app({**settings, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{missing}"})
    broken.config["CALCOM_WEBHOOK_SECRET"] = "configured"
    with broken.test_request_context("/integrations/"):
        providers = health.integration_status()
        page = render_block(
            "integrations/index.html",
            "cards",
            checks=readiness(),
            queues=None,
            providers=providers,
            manage_jobs=False,
            notice=None,
        )
    assert not any("last_webhook_at" in p["metrics"] for p in providers)
    calcom = card(page, "calcom")
    assert "Last webhook</dt><dd>unknown (database unreachable)</dd>" in calcom
    assert "Signature failures (day)</dt><dd>0</dd>" in calcom
