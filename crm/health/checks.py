"""Health checks as plain functions: each returns {"ok": bool, ...details}."""

from __future__ import annotations

import time
from pathlib import Path

import redis
import sqlalchemy.exc
from alembic.config import Config
from alembic.script import ScriptDirectory
from flask import current_app
from rq import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry
from sqlalchemy import text

from crm.config import QUEUES
from crm.extensions import db
from crm.redis_client import get_redis


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


def migration_heads() -> set[str]:
    heads = current_app.extensions.get("rapport_migration_heads")
    if heads is None:
        directory = Path(current_app.root_path).parent / "migrations"
        config = Config()
        config.set_main_option("script_location", str(directory))
        heads = set(ScriptDirectory.from_config(config).get_heads())
        current_app.extensions["rapport_migration_heads"] = heads
    return heads


def check_database() -> dict:
    def run():
        try:
            with db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except sqlalchemy.exc.SQLAlchemyError as exc:
            return {"ok": False, "error": f"unreachable: {exc.__class__.__name__}"}
        return {"ok": True, "backend": db.engine.dialect.name}

    return _timed(run)


def check_migrations() -> dict:
    heads = migration_heads()
    try:
        with db.engine.connect() as conn:
            current = {
                row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))
            }
    except sqlalchemy.exc.SQLAlchemyError:
        return {"ok": False, "error": "no migrations applied: run `flask --app app db upgrade`"}
    if current != heads:
        return {
            "ok": False,
            "error": "database is not at the latest migration: run `flask --app app db upgrade`",
            "current": sorted(current),
            "head": sorted(heads),
        }
    return {"ok": True, "revision": sorted(current)}


def check_redis() -> dict:
    def run():
        try:
            get_redis().ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            return {"ok": False, "error": f"unreachable: {exc.__class__.__name__}"}
        return {"ok": True, "embedded": current_app.config["REDIS_EMBEDDED"]}

    return _timed(run)


def check_queues() -> dict:
    """Queue depths and failed-job counts, read in one round trip.

    Ready does not require a worker: a web process can accept work that waits in a queue.
    """

    def run():
        r = get_redis()
        pipe = r.pipeline(transaction=False)
        for name in QUEUES:
            queue = Queue(name, connection=r)
            pipe.llen(queue.key)
            pipe.zcard(StartedJobRegistry(queue=queue).key)
            pipe.zcard(FailedJobRegistry(queue=queue).key)
        try:
            counts = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            return {"ok": False, "error": f"unreachable: {exc.__class__.__name__}"}
        depths = {
            name: {
                "waiting": counts[3 * i],
                "running": counts[3 * i + 1],
                "failed": counts[3 * i + 2],
            }
            for i, name in enumerate(QUEUES)
        }
        return {"ok": True, "queues": depths}

    return _timed(run)


def readiness() -> dict:
    """The core checks /readyz and the integrations page report."""
    checks = {"database": check_database()}
    checks["migrations"] = (
        check_migrations() if checks["database"]["ok"] else {"ok": False, "error": "no database"}
    )
    checks["redis"] = check_redis()
    checks["queues"] = (
        check_queues() if checks["redis"]["ok"] else {"ok": False, "error": "no Redis"}
    )
    return checks
