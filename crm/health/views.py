from __future__ import annotations

from flask import Blueprint, jsonify

from crm.extensions import csrf
from crm.health.checks import readiness

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Readiness: database reachable, migrations at head, Redis and the queues readable."""
    checks = readiness()
    failed = sorted(name for name, result in checks.items() if not result["ok"])
    body = {"status": "fail" if failed else "ok", "failed": failed, "checks": checks}
    return jsonify(body), 503 if failed else 200


csrf.exempt(bp)
