"""Sending with real worker processes: the per-sender rate limit holds across them.

Worker subprocesses only see committed rows, so this test commits its own data (in the
app's context, not the rolled-back `db` fixture) and deletes it afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from crm.contacts.models import Contact
from crm.conversations import services
from crm.conversations.models import Conversation, Message
from crm.extensions import db

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def committed(app, redis):
    """Yield an app context; delete every contact the test made (their threads cascade)."""
    made: list[int] = []
    with app.app_context():
        yield made
        db.session.rollback()
        db.session.execute(sa.delete(Message).where(Message.contact_id.in_(made)))
        db.session.execute(sa.delete(Conversation).where(Conversation.contact_id.in_(made)))
        db.session.execute(sa.delete(Contact).where(Contact.id.in_(made)))
        db.session.commit()


def worker_env(twilio_fake, database_url, redis_url, **extra) -> dict:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    for key, value in twilio_fake.config().items():
        if isinstance(value, str):
            env[key] = value
    env["PUBLIC_BASE_URL"] = "http://localhost"
    env.update(extra)
    return env


def test_the_sms_rate_limit_holds_across_two_worker_processes(
    app, committed, twilio_fake, database_url, redis_url
):
    rate, total = 4, 14
    for n in range(total):
        contact = Contact(name=f"Rate {n}", phone=f"+1415555{n:04d}")
        db.session.add(contact)
        db.session.flush()
        committed.append(contact.id)
        services.queue_message(
            services.open_conversation(contact, "sms"), body=f"Hello {n}", actor=None
        )
    db.session.commit()  # enqueues the sends

    env = worker_env(twilio_fake, database_url, redis_url, TWILIO_SMS_RATE=str(rate))
    cmd = [sys.executable, "-m", "flask", "--app", "app", "worker", "--burst", "messaging"]
    workers = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=60)[0].decode())
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    assert all(w.returncode == 0 for w in workers), outputs

    times = sorted(t for t, sender in twilio_fake.accepted if sender == "+15005550006")
    assert len(times) == total, outputs
    # Both processes sent: each logged at least one completed send job.
    assert all("Job OK" in out for out in outputs), outputs
    # No one-second window holds more than the rate, whichever process sent. The fake
    # stamps a request when it arrives, a little after the limiter granted it, and that
    # delay varies: a 0.9 s window leaves it 0.1 s (sends are 1/rate = 0.25 s apart).
    busiest = max(sum(1 for t in times if start <= t < start + 0.9) for start in times)
    assert busiest <= rate
    # ... and the limit is used, not just respected: the whole run takes about total/rate s.
    assert times[-1] - times[0] >= (total - 1) / rate - 0.3
    sids = db.session.scalars(sa.select(Message.sid).where(Message.contact_id.in_(committed)))
    assert len({sid for sid in sids if sid}) == total
