"""Benchmark webhook intake against the app's static route, then a burst drained by workers.

    .venv/bin/python bench/webhooks.py                  # SQLite
    .venv/bin/python bench/webhooks.py --duration 5     # shorter, while developing
    DATABASE_URL=postgresql+psycopg://... .venv/bin/python bench/webhooks.py

It migrates a fresh database (SQLite in a temporary directory, or a dedicated schema on the
PostgreSQL that DATABASE_URL names), serves the app with gunicorn (2 sync workers) and:

1. drives `/static/rapport.css` (the floor) and then `POST /webhooks/twilio/status` with
   distinct, correctly signed status callbacks at a fixed concurrency (wrk with a Lua
   script reading pre-signed requests, or a small asyncio generator without wrk), and
   reports the acknowledgement rate as a ratio to the floor and its p99;
2. posts a burst of signed callbacks with no worker running, starts two workers
   (`flask --app app worker --burst webhooks`), times the drain and counts that every
   event was processed exactly once (one attempt each, nothing failed or left over).

Targets: ack rate >= 0.3 of the static floor, ack p99 <= 20 ms; exactly once.
The last line of output is JSON with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.contacts import (  # noqa: E402 - after the path setup above
    HEALTH_PATH,
    STATIC_PATH,
    Result,
    bench_environment,
    free_port,
    in_workdir,
    prepare_database,
    run_python,
    run_raw,
    run_wrk,
    start_gunicorn,
    start_workers,
    wait_until_up,
)

STATUS_PATH = "/webhooks/twilio/status"
ACK_RATIO_TARGET = 0.3
ACK_P99_TARGET_MS = 20.0
FORM = "application/x-www-form-urlencoded"
# Requests signed per second of load: more than gunicorn's two workers can take, so that
# every request in the run carries an event not seen before.
SIGNED_PER_SECOND = 4000

WRK_POST_SCRIPT = """
local items = {}
local counter = 0
init = function(args)
  for line in io.lines(args[1]) do
    local signature, body = line:match("^(%%S+) (.*)$")
    items[#items + 1] = {signature, body}
  end
end
request = function()
  counter = counter + 1
  local item = items[((counter - 1) %% #items) + 1]
  return wrk.format("POST", "%(path)s",
    {["Content-Type"] = "%(form)s", ["X-Twilio-Signature"] = item[1]}, item[2])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT %%d %%d %%d %%d %%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def main() -> int:
    args = parse_args()
    return in_workdir(
        "rapport-bench-webhooks-", args.keep, lambda workdir, cleanups: run(args, workdir, cleanups)
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per target")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--events", type=int, default=10_000, help="events in the burst")
    parser.add_argument("--workers", type=int, default=2, help="RQ workers draining it")
    parser.add_argument(
        "--web-workers", type=int, default=2, help="gunicorn sync workers serving the load"
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also drain a burst with warmed-up forking workers and one with SimpleWorkers",
    )
    parser.add_argument(
        "--schema", default="rapport_bench_webhooks", help="PostgreSQL schema (recreated)"
    )
    parser.add_argument(
        "--load", choices=("auto", "wrk", "python"), default="auto", help="load generator"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    return parser.parse_args()


def run(args, workdir: Path, cleanups: list) -> int:
    from crm import processes

    database_url, backend = prepare_database(args, workdir, cleanups)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    token = secrets.token_hex(16)
    env, redis_note = bench_environment(
        workdir,
        database_url,
        cleanups,
        # Twilio signs the public URL; here that is the benchmark's own server.
        PUBLIC_BASE_URL=base,
        TWILIO_AUTH_TOKEN=token,
    )
    app = migrate()
    print(f"Migrated a fresh {backend} database (Redis: {redis_note}).", flush=True)

    server = start_gunicorn(port, env, workdir, args.web_workers)
    cleanups.append(lambda: processes.stop(server))
    wait_until_up(base + HEALTH_PATH, server)

    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk"))
    generator = "wrk" if use_wrk else "python (asyncio, one process)"
    print(
        f"Load: {generator}, concurrency {args.concurrency}, {args.duration:g} s per target, "
        f"gunicorn 2 sync workers, {os.cpu_count()} CPUs.",
        flush=True,
    )
    warmup = min(2.0, args.duration / 5)
    next_n = 0

    def signed_batch(seconds: float) -> list[tuple[str, bytes]]:
        nonlocal next_n
        count = max(1000, int(seconds * SIGNED_PER_SECOND))
        batch = [status_callback(base, token, n) for n in range(next_n, next_n + count)]
        next_n += count
        return batch

    results: dict[str, Result] = {}
    measure = run_wrk if use_wrk else run_python
    measure(base, [STATIC_PATH], {}, args.concurrency, warmup, workdir)
    results["static"] = measure(base, [STATIC_PATH], {}, args.concurrency, args.duration, workdir)
    post = run_wrk_post if use_wrk else run_python_post
    post(base, signed_batch(warmup), args.concurrency, warmup, workdir)
    batch = signed_batch(args.duration)
    results["ack"] = post(base, batch, args.concurrency, args.duration, workdir)
    if server.poll() is not None:
        raise SystemExit("gunicorn died during the run; see " + str(workdir / "gunicorn.log"))
    stored = count_stored(app)
    floor = results["static"].rps or 1.0
    for result in results.values():
        result.ratio = result.rps / floor

    reset(app)
    sent_messages(app, range(next_n, next_n + args.events))
    burst = [status_callback(base, token, n) for n in range(next_n, next_n + args.events)]
    post_seconds, refused = post_all(base, burst, args.concurrency)
    queued = queue_depth(app)
    print(
        f"Posted {args.events:,} signed events in {post_seconds:.1f} s "
        f"({refused} refused); {queued:,} queued.",
        flush=True,
    )
    drain_seconds = drain(WORKER_COMMAND, args.workers, env, workdir)
    counts = processing_counts(app)
    compared = {}
    for name, argv in COMPARED_WORKERS.items() if args.compare else ():
        reset(app)
        next_n += args.events
        sent_messages(app, range(next_n, next_n + args.events))
        batch = [status_callback(base, token, i) for i in range(next_n, next_n + args.events)]
        post_all(base, batch, args.concurrency)
        seconds = drain(argv, args.workers, env, workdir)
        compared[name] = {"drain_s": round(seconds, 2), **processing_counts(app)}
        print(f"{name}: drained {args.events:,} in {seconds:.1f} s.", flush=True)

    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) + 0.5:
        print(f"Note: 1-minute load average {load:.1f}; other work on this machine skews these.")
    print_report(backend, results, args, drain_seconds, counts)
    checks = judge(results, args.events, counts, refused, stored)
    print(
        json.dumps(
            {
                "backend": backend,
                "concurrency": args.concurrency,
                "duration_s": args.duration,
                "load_generator": "wrk" if use_wrk else "python",
                "load_average": round(load, 2),
                "targets": {name: asdict(r) for name, r in results.items()},
                "ack_events_stored": stored,
                "burst": {
                    "events": args.events,
                    "workers": args.workers,
                    "post_s": round(post_seconds, 2),
                    "drain_s": round(drain_seconds, 2),
                    "drain_events_per_s": round(args.events / drain_seconds, 1),
                    **counts,
                },
                "compared_workers": compared,
                "checks": checks,
            },
            separators=(",", ":"),
        )
    )
    return 0


def migrate():
    import logging

    from flask_migrate import upgrade

    from crm import create_app
    from crm.extensions import db

    app = create_app()
    with app.app_context():
        upgrade()
        logging.getLogger("alembic").setLevel(logging.WARNING)
        for engine in db.engines.values():
            engine.dispose()
    return app


def status_callback(base: str, token: str, n: int) -> tuple[str, bytes]:
    """A delivered-status callback for message n, signed as Twilio signs it."""
    from crm.webhooks.signatures import twilio_signature

    sid = f"SM{n:032x}"
    params = {
        "AccountSid": "AC" + "b" * 32,
        "ApiVersion": "2010-04-01",
        "From": "+15005550006",
        "MessageSid": sid,
        "MessageStatus": "delivered",
        "SmsSid": sid,
        "SmsStatus": "delivered",
        "To": "+14155552671",
    }
    return twilio_signature(base + STATUS_PATH, params, token), urlencode(params).encode()


def run_wrk_post(base, batch, concurrency, duration, workdir) -> Result:
    """wrk posting the pre-signed requests in turn (one per line: signature, space, body)."""
    requests_file = workdir / "signed.txt"
    with requests_file.open("wb") as fh:
        for signature, body in batch:
            fh.write(signature.encode() + b" " + body + b"\n")
    script = workdir / "post.lua"
    script.write_text(WRK_POST_SCRIPT % {"path": STATUS_PATH, "form": FORM})
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s"]
    argv += ["-s", str(script), base + STATUS_PATH, "--", str(requests_file)]
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    for line in output.splitlines():
        if line.startswith("RESULT "):
            requests, micros, p50, p99, errors = map(int, line.split()[1:])
            return Result(
                rps=requests / (micros / 1e6),
                p50_ms=p50 / 1000,
                p99_ms=p99 / 1000,
                requests=requests,
                errors=errors,
            )
    raise SystemExit("wrk printed no result:\n" + output)


def _raw_post(host: str, port: str, signature: str, body: bytes) -> bytes:
    return (
        f"POST {STATUS_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {FORM}\r\n"
        f"X-Twilio-Signature: {signature}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def run_python_post(base, batch, concurrency, duration, workdir) -> Result:
    """The asyncio generator of bench/contacts.py, posting the signed requests in turn."""
    host, port = base.removeprefix("http://").split(":")
    payloads = [_raw_post(host, port, signature, body) for signature, body in batch]
    return run_raw(base, payloads, concurrency, duration)


def post_all(base: str, batch, concurrency: int) -> tuple[float, int]:
    """Post every request once; return the seconds taken and how many were not 2xx."""
    import requests

    def send(item) -> bool:
        signature, body = item
        headers = {"Content-Type": FORM, "X-Twilio-Signature": signature}
        return requests.post(base + STATUS_PATH, data=body, headers=headers, timeout=30).ok

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        refused = sum(1 for ok in pool.map(send, batch, chunksize=64) if not ok)
    return time.perf_counter() - started, refused


WORKER_COMMAND = [sys.executable, "-m", "flask", "--app", "app", "worker", "--burst", "webhooks"]


def _inline_worker(worker_class: str, warm: bool) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from app import app\n"
        f"from rq import {worker_class}\n"
        "from jobs import get_queue\n"
        "from jobs.webhooks import warm_up\n"
        "with app.app_context():\n"
        f"    {'warm_up()' if warm else 'pass'}\n"
        "    q = get_queue('webhooks')\n"
        f"    {worker_class}([q], connection=q.connection).work(burst=True, with_scheduler=True)\n",
    ]


# Other ways to drain the same queue, for comparison only (--compare).
COMPARED_WORKERS = {
    # RQ's forking worker, its parent having compiled the job's statements once.
    "forking_warmed": _inline_worker("Worker", warm=True),
    # No fork per job at all.
    "simple": _inline_worker("SimpleWorker", warm=False),
}


def drain(argv: list[str], workers: int, env: dict, workdir: Path) -> float:
    """Start the workers on the queued burst; seconds until the last one exits."""
    started = time.perf_counter()
    procs = start_workers(argv, workers, env, workdir, "drain")
    for proc in procs:
        if proc.wait(timeout=1800) != 0:
            raise SystemExit(f"a worker exited with {proc.returncode}; see {workdir}")
    return time.perf_counter() - started


def count_stored(app) -> int:
    import sqlalchemy as sa

    from crm.extensions import db
    from crm.webhooks.models import WebhookEvent

    with app.app_context():
        return db.session.execute(sa.select(sa.func.count(WebhookEvent.id))).scalar_one()


def reset(app) -> None:
    """Forget the load phase's events and jobs: the burst starts from nothing."""
    import sqlalchemy as sa

    from crm.extensions import db
    from crm.webhooks.models import WebhookEvent
    from jobs import get_queue

    with app.app_context():
        db.session.execute(sa.delete(WebhookEvent))
        db.session.commit()
        get_queue("webhooks").empty()


def sent_messages(app, numbers: range) -> None:
    """The sent messages the burst's callbacks are about (`SM<n>`), so each one applies."""
    import sqlalchemy as sa

    from crm.contacts.models import Contact
    from crm.conversations.models import Conversation, Message
    from crm.database import utcnow
    from crm.extensions import db

    with app.app_context():
        contact = Contact(name="Bench recipient", phone="+14155552671")
        db.session.add(contact)
        db.session.flush()
        thread = Conversation(contact_id=contact.id, channel="sms", status="closed")
        db.session.add(thread)
        db.session.flush()
        now = utcnow()
        rows = [
            {
                "conversation_id": thread.id,
                "contact_id": contact.id,
                "direction": "outbound",
                "channel": "sms",
                "body": "bench",
                "media": [],
                "sid": f"SM{n:032x}",
                "status": "sent",
                "dispatch_attempts": 1,
                "created_at": now,
                "updated_at": now,
            }
            for n in numbers
        ]
        for start in range(0, len(rows), 1000):
            db.session.execute(sa.insert(Message), rows[start : start + 1000])
        db.session.commit()


def queue_depth(app) -> int:
    from jobs import get_queue

    with app.app_context():
        return get_queue("webhooks").count


def processing_counts(app) -> dict:
    import sqlalchemy as sa
    from rq.registry import ScheduledJobRegistry

    from crm.extensions import db
    from crm.webhooks.models import WebhookEvent
    from jobs import get_queue

    with app.app_context():
        by_status = dict(
            db.session.execute(
                sa.select(WebhookEvent.status, sa.func.count()).group_by(WebhookEvent.status)
            ).all()
        )
        attempts = db.session.execute(
            sa.select(sa.func.coalesce(sa.func.sum(WebhookEvent.attempts), 0))
        ).scalar_one()
        more_than_once = db.session.execute(
            sa.select(sa.func.count()).where(WebhookEvent.attempts != 1)
        ).scalar_one()
        queue = get_queue("webhooks")
        scheduled = ScheduledJobRegistry(queue=queue)
        return {
            "rows": sum(by_status.values()),
            "processed": by_status.get("processed", 0),
            "by_status": by_status,
            "attempts": int(attempts),
            "rows_not_run_exactly_once": more_than_once,
            "left_in_queue": queue.count,
            "failed_jobs": queue.failed_job_registry.count,
            # Retries waiting for the scheduler: a burst worker leaves them behind.
            "scheduled_retries": scheduled.count,
        }


def print_report(backend: str, results: dict[str, Result], args, drain_s: float, counts) -> None:
    print(f"\n{backend}, signed Twilio status callbacks")
    print(f"{'target':<10}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}{'errors':>8}")
    for name, r in results.items():
        print(
            f"{name:<10}{r.rps:>9.1f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}{r.ratio:>8.3f}{r.errors:>8}"
        )
    print(
        f"\nburst: {args.events:,} events, {args.workers} workers, drained in {drain_s:.1f} s "
        f"({args.events / drain_s:.0f}/s); processed {counts['processed']:,}, "
        f"attempts {counts['attempts']:,}, not exactly once {counts['rows_not_run_exactly_once']}, "
        f"left {counts['left_in_queue']}, failed {counts['failed_jobs']}, "
        f"retries pending {counts['scheduled_retries']}"
    )


def judge(results: dict[str, Result], events: int, counts: dict, refused: int, stored) -> dict:
    ack = results["ack"]
    exactly_once = (
        counts["rows"] == events
        and counts["processed"] == events
        and counts["attempts"] == events
        and counts["rows_not_run_exactly_once"] == 0
        and counts["left_in_queue"] == 0
        and counts["failed_jobs"] == 0
        and counts["scheduled_retries"] == 0
    )
    checks = {
        "ack_ratio": {
            "value": round(ack.ratio, 3),
            "target": ACK_RATIO_TARGET,
            "pass": ack.ratio >= ACK_RATIO_TARGET,
        },
        "ack_p99_ms": {
            "value": round(ack.p99_ms, 1),
            "target": ACK_P99_TARGET_MS,
            "pass": ack.p99_ms <= ACK_P99_TARGET_MS,
        },
        "exactly_once": {"value": counts["processed"], "target": events, "pass": exactly_once},
        "no_errors": {
            "value": ack.errors + results["static"].errors + refused,
            "target": 0,
            "pass": ack.errors + results["static"].errors + refused == 0,
        },
    }
    print()
    for name, check in checks.items():
        verdict = "PASS" if check["pass"] else "FAIL"
        print(f"{verdict}  {name} = {check['value']} (target {check['target']})")
    print(f"      ({stored:,} distinct events stored during the load phase)")
    return checks


if __name__ == "__main__":
    sys.exit(main())
