"""Jobs: enqueued only after commit, run by a real worker inside the app."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rq import SimpleWorker

from jobs import enqueue_after_commit, get_queue
from tests import job_functions

ROOT = Path(__file__).resolve().parent.parent


def test_job_is_enqueued_after_commit_and_sees_the_row(app, db, make_user, redis):
    user = make_user("coach", email="queued@example.com")
    enqueue_after_commit("default", job_functions.record_user_email, user.id, "seen")
    queue = get_queue("default")
    assert queue.count == 0  # nothing reaches Redis before the commit
    db.session.commit()
    assert queue.count == 1
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    assert redis.get("seen") == b"queued@example.com"


def test_rollback_drops_the_job(app, db, make_user):
    user = make_user()
    enqueue_after_commit("messaging", job_functions.record_user_email, user.id, "never")
    db.session.rollback()
    db.session.commit()
    assert get_queue("messaging").count == 0


def test_plain_and_unique_jobs_of_one_commit_are_queued_and_go_with_a_rollback(
    app, db, make_user, redis
):
    user = make_user()
    enqueue_after_commit("default", job_functions.record_user_email, user.id, "seen")
    enqueue_after_commit(
        "sync", job_functions.record_user_email, user.id, "u", job_id="only-one", unique=True
    )
    assert get_queue("default").count == 0 and get_queue("sync").count == 0
    db.session.commit()
    assert get_queue("default").count == 1 and get_queue("sync").count == 1

    enqueue_after_commit("default", job_functions.record_user_email, user.id, "again")
    db.session.rollback()
    db.session.commit()
    assert get_queue("default").count == 1


def test_unknown_queue_is_refused_at_once(app, db):
    with pytest.raises(ValueError, match="unknown queue"):
        enqueue_after_commit("emails", job_functions.write_marker, "k", "v")


def test_worker_command_runs_jobs_inside_the_app(app, db, redis, database_url, redis_url):
    get_queue("sync").enqueue(job_functions.write_marker, "from-cli", "hello")
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "worker", "--burst", "sync"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert redis.get("from-cli") == b"hello|crm"
    assert get_queue("sync").count == 0


def test_worker_command_refuses_unknown_queues(app):
    result = app.test_cli_runner().invoke(args=["worker", "--burst", "nope"])
    assert result.exit_code != 0
    assert "unknown queue(s) nope" in result.output
