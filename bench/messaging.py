"""Benchmark a 10,000-recipient SMS campaign against the Twilio fake, in one run.

    .venv/bin/python bench/messaging.py                       # SQLite, embedded Redis
    .venv/bin/python bench/messaging.py --seconds 10          # shorter, while developing
    DATABASE_URL=postgresql+psycopg://... REDIS_URL=redis://127.0.0.1:6379/13 \\
        .venv/bin/python bench/messaging.py

It migrates a fresh database (SQLite in a temporary directory, or a dedicated schema on the
PostgreSQL that DATABASE_URL names), seeds the recipients (every one with a valid phone),
runs the Twilio fake in this process on a loopback port, and:

1. times the enqueue: `create_campaign` over every contact, then its `run_campaign` job
   (in-process, one job) until every recipient's send job is on the messaging queue;
2. measures one `flask --app app worker messaging --burst` for --seconds on no-op jobs, then
   on the campaign's send jobs (batches of MESSAGING_BATCH_SIZE messages; the SMS limit
   raised so that it does not bind), and reports the messages sent a second as a ratio to
   the no-op jobs a second of the same kind of worker;
3. runs --workers such workers for --seconds on the rest of the campaign with one sender
   limited to --rate messages/s (TWILIO_SMS_RATE), and reads the fake's acceptance times:
   the overall rate against the limit, and the most messages in any 1-second window.

Targets: send/no-op >= 0.7; observed rate within 95-100 % of the limit; no 1-second window
above the limit. The last line of output is JSON with every figure.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.contacts import (  # noqa: E402
    bench_environment,
    in_workdir,
    prepare_database,
    start_workers,
)

QUEUE = "messaging"
SEND_RATIO_TARGET = 0.7
RATE_LOW, RATE_HIGH = 0.95, 1.0
UNLIMITED = "100000"  # messages/s: a limit that never binds
STAFF_EMAIL = "bench.campaigns@example.com"
WORKER = [sys.executable, "-m", "flask", "--app", "app", "worker", QUEUE, "--burst"]


def _inline_worker(worker_class: str) -> list[str]:
    """A worker on the messaging queue whose process first does once what every forked
    horse of `flask worker` otherwise does again: twilio-python's lazy import of its REST
    API classes, SQLAlchemy's mapper configuration, compiling the send job's claim."""
    return [
        sys.executable,
        "-c",
        "from sqlalchemy.orm import configure_mappers\n"
        "import twilio.rest.api.v2010.account.message\n"
        f"from rq import {worker_class}\n"
        "from app import app\n"
        "from jobs import get_queue\n"
        "from jobs.messaging import send_message\n"
        "with app.app_context():\n"
        "    configure_mappers()\n"
        "    send_message(0)  # there is no message 0: it compiles the claim, sends nothing\n"
        f"    q = get_queue({QUEUE!r})\n"
        f"    {worker_class}([q], connection=q.connection).work(burst=True, with_scheduler=True)\n",
    ]


# Other workers measured the same way, for comparison only (--compare).
COMPARED_WORKERS = {
    # RQ's forking worker, warmed up as above before it forks.
    "warmed": _inline_worker("Worker"),
    # No fork per job at all (RQ's SimpleWorker), warmed up the same way.
    "simple": _inline_worker("SimpleWorker"),
}


def main() -> int:
    args = parse_args()
    return in_workdir(
        "rapport-bench-messaging-",
        args.keep,
        lambda workdir, cleanups: run(args, workdir, cleanups),
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=10_000, help="campaign size")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--workers", type=int, default=3, help="workers sharing the limit")
    parser.add_argument("--rate", type=float, default=50.0, help="the sender's limit, msg/s")
    parser.add_argument("--seed", type=int, default=42, help="random seed for the data")
    parser.add_argument(
        "--schema", default="rapport_bench_messaging", help="PostgreSQL schema (recreated)"
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also measure workers that warm up first (forking, and RQ's SimpleWorker)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    return parser.parse_args()


def run(args, workdir: Path, cleanups: list) -> int:
    from tests.fakes.server import serve
    from tests.fakes.twilio import TwilioFake

    database_url, backend = prepare_database(args, workdir, cleanups)
    fake = TwilioFake()
    stack = ExitStack()
    fake.url = stack.enter_context(serve(fake))
    cleanups.append(stack.close)
    config = fake.config()
    env, redis_note = bench_environment(
        workdir,
        database_url,
        cleanups,
        TWILIO_ACCOUNT_SID=config["TWILIO_ACCOUNT_SID"],
        TWILIO_AUTH_TOKEN=config["TWILIO_AUTH_TOKEN"],
        TWILIO_API_BASE=config["TWILIO_API_BASE"],
        TWILIO_SMS_FROM=config["TWILIO_SMS_FROM"],
        TWILIO_WHATSAPP_FROM=config["TWILIO_WHATSAPP_FROM"],
        TWILIO_MESSAGING_SERVICE_SID="",
        TWILIO_DEMO="",
        # Sends carry a StatusCallback URL, as in production; nothing is posted to it here.
        PUBLIC_BASE_URL="http://127.0.0.1:9",
        TWILIO_API_RATE=UNLIMITED,
        TWILIO_SMS_RATE=UNLIMITED,
    )
    app = prepare(args.recipients, args.seed)
    print(
        f"Seeded {args.recipients:,} contacts with phones on {backend} (Redis: {redis_note}); "
        f"Twilio fake on {fake.url}; {os.cpu_count()} CPUs.",
        flush=True,
    )
    clear_queue(app)

    # 1. Enqueue: the campaign, then its run job, until every send job is queued.
    enqueue = enqueue_campaign(app)
    print(
        f"Enqueue: {enqueue['messages']:,} messages queued in {enqueue['seconds']:.1f} s "
        f"({enqueue['per_s']:.0f}/s; {enqueue['skipped']} skipped).",
        flush=True,
    )
    if enqueue["messages"] != args.recipients:
        raise SystemExit(f"expected {args.recipients:,} messages, the campaign made {enqueue}")
    runs = {"flask_worker": measure(app, fake, args, env, workdir, WORKER, "flask worker")}
    for name, worker in COMPARED_WORKERS.items() if args.compare else ():
        runs[name] = measure(app, fake, args, env, workdir, worker, f"{name} worker")

    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) + 0.5:
        print(f"Note: 1-minute load average {load:.1f}; other work on this machine skews these.")
    main_run = runs["flask_worker"]
    checks = judge(main_run["send_ratio"], main_run["limited"], args.rate)
    print(
        json.dumps(
            {
                "backend": backend,
                "recipients": args.recipients,
                "seconds": args.seconds,
                "load_average": round(load, 2),
                "enqueue": enqueue,
                **main_run,
                "compared": {name: r for name, r in runs.items() if name != "flask_worker"},
                "checks": checks,
            },
            separators=(",", ":"),
        )
    )
    return 0


def measure(app, fake, args, env: dict, workdir: Path, worker: list[str], label: str) -> dict:
    """No-op and send throughput of one `worker`, then the shared limit with several."""
    # The send jobs wait aside while no-op jobs are measured on an otherwise empty queue.
    parked = park_jobs(app)
    noop_count = enqueue_noops(app, max(2_000, int(args.seconds * 1_200)))
    run_workers(1, args.seconds, env, workdir, worker, f"{label}-noop")
    noop = job_throughput(app, "time.sleep")
    print(f"{label}, no-op jobs: {noop['jobs']:,} in {noop['seconds']:.1f} s, {noop['per_s']}/s.")
    if noop["jobs"] >= noop_count:
        print("  (the queue ran dry: raise the no-op job count for a fair figure)")
    clear_queue(app)
    unpark_jobs(app, parked)

    accepted_before = len(fake.accepted)
    run_workers(1, args.seconds, env, workdir, worker, f"{label}-send")
    # Campaign sends go in batches (MESSAGING_BATCH_SIZE a job): count messages, as the
    # fake accepted them, from the first to the last.
    with fake.lock:
        sent_times = sorted(t for t, _ in fake.accepted[accepted_before:])
    span = sent_times[-1] - sent_times[0] if len(sent_times) > 1 else 0.0
    batches = job_throughput(app, "jobs.messaging.send_messages")
    send = {
        "messages": len(sent_times),
        "seconds": round(span, 2),
        "per_s": round((len(sent_times) - 1) / span, 1) if span else 0.0,
        "jobs": batches["jobs"],
        "failed": batches["failed"],
    }
    ratio = send["per_s"] / noop["per_s"] if noop["per_s"] else 0.0
    print(
        f"{label}, sends: {send['messages']:,} messages ({send['jobs']:,} batch jobs) in "
        f"{send['seconds']:.1f} s, {send['per_s']}/s; ratio to no-op jobs {ratio:.2f}.",
        flush=True,
    )
    clear_queue(app, keep_queued=True)

    left = queue_count(app)
    if left < args.rate * args.seconds:
        print(f"Note: only {left:,} sends left for {args.rate * args.seconds:,.0f} at the limit.")
    limited_env = {**env, "TWILIO_SMS_RATE": str(args.rate)}
    accepted_before = len(fake.accepted)
    run_workers(args.workers, args.seconds, limited_env, workdir, worker, f"{label}-limited")
    with fake.lock:
        accepted = fake.accepted[accepted_before:]
    limited = rate_figures(sorted(t for t, _ in accepted), args.rate)
    limited["senders"] = len({sender for _, sender in accepted})
    print(
        f"{label}, limit {args.rate:g}/s shared by {args.workers} workers, "
        f"{limited['senders']} sender: {limited['messages']:,} messages in "
        f"{limited['seconds']:.1f} s = {limited['rate']:.2f}/s "
        f"({limited['share_of_limit']:.1%} of the limit); busiest 1-second window "
        f"{limited['max_in_1s']} (first second {limited['first_second']}, "
        f"after it {limited['max_in_1s_after_first']}).",
        flush=True,
    )
    clear_queue(app, keep_queued=True)
    return {
        "noop": noop,
        "send": send,
        "send_ratio": round(ratio, 3),
        "limited": {"workers": args.workers, "limit": args.rate, **limited},
    }


def prepare(count: int, rng_seed: int):
    """Migrate, seed `count` contacts (a valid phone each), a staff user and a template."""
    import logging

    import sqlalchemy as sa
    from flask_migrate import upgrade

    from crm import create_app
    from crm.contacts.models import Contact
    from crm.conversations.campaigns import create_template
    from crm.extensions import db
    from crm.seed import demo_phone, seed_contacts
    from crm.users.services import create_user

    app = create_app()
    with app.app_context():
        upgrade()
        logging.getLogger("alembic").setLevel(logging.WARNING)
        seed_contacts(count, rng_seed=rng_seed)
        # Some seeded contacts have no phone: give them one, so that every contact gets a message.
        rng = random.Random(rng_seed)
        missing = db.session.scalars(sa.select(Contact.id).where(Contact.phone.is_(None))).all()
        for contact_id in missing:
            db.session.execute(
                sa.update(Contact)
                .where(Contact.id == contact_id)
                .values(phone=demo_phone(rng, "US"))
            )
        create_user(STAFF_EMAIL, name="Bench Staff", role="staff", password=None, actor=None)
        create_template(
            name="Bench reminder",
            body="Hi {{first_name}}, a reminder of your session this week. See you soon!",
            actor=None,
        )
        db.session.commit()
        db.session.remove()
    return app


def enqueue_campaign(app) -> dict:
    """Create the campaign and run its run job here; time both, until all sends are queued."""
    import sqlalchemy as sa
    from rq import SimpleWorker

    from crm.conversations.campaigns import create_campaign
    from crm.conversations.models import CampaignRecipient, Message, MessageTemplate
    from crm.extensions import db
    from crm.users.models import User
    from jobs import get_queue

    with app.app_context():
        actor = db.session.scalars(sa.select(User).where(User.email == STAFF_EMAIL)).one()
        template = db.session.scalars(sa.select(MessageTemplate)).one()
        started = time.perf_counter()
        campaign = create_campaign(
            name="Bench campaign", channel="sms", template=template, filter_query="", actor=actor
        )
        db.session.commit()
        queue = get_queue(QUEUE)
        # The run job, as a worker runs it; nothing else is on the queue yet.
        SimpleWorker([queue], connection=queue.connection).work(
            burst=True, max_jobs=1, logging_level="WARNING"
        )
        seconds = time.perf_counter() - started
        messages = db.session.scalar(
            sa.select(sa.func.count()).where(Message.campaign_id == campaign.id)
        )
        skipped = db.session.scalar(
            sa.select(sa.func.count()).where(
                CampaignRecipient.campaign_id == campaign.id,
                CampaignRecipient.message_id.is_(None),
            )
        )
        queued = sum(len(job.args[0]) for job in queue.get_jobs() if job is not None)
        db.session.remove()
    if queued != messages:
        raise SystemExit(f"{messages:,} messages but {queued:,} in the queued batches")
    return {
        "messages": messages,
        "skipped": skipped,
        "seconds": round(seconds, 2),
        "per_s": round(messages / seconds, 1),
    }


def park_jobs(app) -> list[str]:
    """Take the queued jobs off the queue (they stay in Redis); return their ids in order."""
    from jobs import get_queue

    with app.app_context():
        queue = get_queue(QUEUE)
        ids = queue.get_job_ids()
        queue.connection.delete(queue.key)
    return ids


def unpark_jobs(app, ids: list[str]) -> None:
    from jobs import get_queue

    with app.app_context():
        queue = get_queue(QUEUE)
        for start in range(0, len(ids), 1000):
            queue.connection.rpush(queue.key, *ids[start : start + 1000])


def enqueue_noops(app, count: int) -> int:
    """Queue `count` jobs that do nothing (`time.sleep(0)`), in one pipeline."""
    from rq import Queue

    from jobs import get_queue

    with app.app_context():
        queue = get_queue(QUEUE)
        jobs = [Queue.prepare_data(time.sleep, (0,)) for _ in range(count)]
        queue.enqueue_many(jobs)
    return count


def queue_count(app) -> int:
    """Messages still queued: the ids in the queued batch jobs."""
    from jobs import get_queue

    with app.app_context():
        jobs = get_queue(QUEUE).get_jobs()
    return sum(len(job.args[0]) for job in jobs if job is not None and job.args)


def clear_queue(app, *, keep_queued: bool = False) -> None:
    """Empty the messaging queue (unless `keep_queued`); forget finished and failed jobs."""
    from jobs import get_queue

    with app.app_context():
        queue = get_queue(QUEUE)
        if not keep_queued:
            queue.empty()
        for registry in (queue.finished_job_registry, queue.failed_job_registry):
            for job_id in registry.get_job_ids():
                registry.remove(job_id, delete_job=True)


def run_workers(
    count: int, seconds: float, env: dict, workdir: Path, worker: list[str], label: str
) -> None:
    """Run `count` burst workers for `seconds`, then stop them as Ctrl-C would (warm)."""
    procs = start_workers(worker, count, env, workdir, label.replace(" ", "-"))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # RQ: finish the job in hand, then stop
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def job_throughput(app, func_name: str) -> dict:
    """Jobs of `func_name` that finished, and their rate from the first to the last end."""
    from rq.job import Job

    from jobs import get_queue

    with app.app_context():
        queue = get_queue(QUEUE)
        ids = queue.finished_job_registry.get_job_ids()
        jobs = [j for j in Job.fetch_many(ids, connection=queue.connection) if j is not None]
        failed = queue.failed_job_registry.count
    ends = sorted(j.ended_at.timestamp() for j in jobs if j.func_name == func_name and j.ended_at)
    span = ends[-1] - ends[0] if len(ends) > 1 else 0.0
    return {
        "jobs": len(ends),
        "failed": failed,
        "seconds": round(span, 2),
        "per_s": round((len(ends) - 1) / span, 1) if span else 0.0,
    }


def rate_figures(times: list[float], limit: float) -> dict:
    """The rate from the first to the last message, and the busiest 1-second windows."""
    if len(times) < 2:
        return {
            "messages": len(times),
            "seconds": 0.0,
            "rate": 0.0,
            "share_of_limit": 0.0,
            "max_in_1s": len(times),
            "first_second": len(times),
            "max_in_1s_after_first": 0,
        }
    span = times[-1] - times[0]
    rate = (len(times) - 1) / span

    def busiest(start: int) -> int:
        # Every window [t, t + 1 s) that starts at a message: the busiest holds the maximum.
        return max(
            (bisect.bisect_left(times, times[i] + 1.0) - i for i in range(start, len(times))),
            default=0,
        )

    first_second = bisect.bisect_left(times, times[0] + 1.0)
    return {
        "messages": len(times),
        "seconds": round(span, 2),
        "rate": round(rate, 2),
        "share_of_limit": round(rate / limit, 4),
        "max_in_1s": busiest(0),
        "first_second": first_second,
        "max_in_1s_after_first": busiest(first_second),
    }


def judge(ratio: float, limited: dict, limit: float) -> dict:
    share = limited["share_of_limit"]
    checks = {
        "send_ratio": {
            "value": round(ratio, 3),
            "target": SEND_RATIO_TARGET,
            "pass": ratio >= SEND_RATIO_TARGET,
        },
        "rate_share_of_limit": {
            "value": share,
            "target": [RATE_LOW, RATE_HIGH],
            "pass": RATE_LOW <= share <= RATE_HIGH,
        },
        "max_in_any_1s": {
            "value": limited["max_in_1s"],
            "target": int(limit),
            "pass": limited["max_in_1s"] <= limit,
        },
    }
    print()
    for name, check in checks.items():
        verdict = "PASS" if check["pass"] else "FAIL"
        print(f"{verdict}  {name} = {check['value']} (target {check['target']})")
    return checks


if __name__ == "__main__":
    sys.exit(main())
