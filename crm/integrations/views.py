from __future__ import annotations

from flask import Blueprint

from crm.auth.access import STAFF_ROLES, roles_required
from crm.health.checks import readiness
from crm.htmx import render
from jobs import queue_overview

bp = Blueprint("integrations", __name__, url_prefix="/integrations")


@bp.get("/")
@roles_required(*STAFF_ROLES)
def index():
    """Show the health of the database, Redis, the queues and the workers."""
    checks = readiness()
    queues = queue_overview() if checks["redis"]["ok"] else None
    return render("integrations/index.html", "cards", checks=checks, queues=queues)
