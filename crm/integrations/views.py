from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from flask import Blueprint, abort, flash, request, url_for
from flask_login import current_user
from markupsafe import Markup

from crm.auth.access import STAFF_ROLES, roles_required
from crm.health.checks import readiness
from crm.htmx import redirect_303, render
from crm.integrations import health

bp = Blueprint("integrations", __name__, url_prefix="/integrations")

# RQ job ids: letters, digits, "_" and "-" only.
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def _page(notice: str | None = None):
    checks = readiness()
    queues = health.queue_status() if checks["redis"]["ok"] else None
    providers = health.integration_status() if checks["redis"]["ok"] else None
    return render(
        "integrations/index.html",
        "cards",
        checks=checks,
        queues=queues,
        providers=providers,
        manage_jobs=current_user.role == "admin",
        notice=notice,
    )


@bp.get("/")
@roles_required(*STAFF_ROLES)
def index():
    """Show the health of every integration, the core services, queues and workers."""
    return _page()


def _job_action(action, queue: str, job_id: str, done: str):
    if not JOB_ID.match(job_id):
        abort(404)
    try:
        action(queue, job_id)
    except LookupError:
        abort(404)
    notice = f"Job {job_id} {done}."
    if request.htmx:
        return _page(notice)
    flash(notice, "success")
    return redirect_303(url_for("integrations.index"))


@bp.post("/queues/<queue>/failed/<job_id>/requeue")
@roles_required("admin")
def requeue_job(queue: str, job_id: str):
    """Put a failed job back on its queue."""
    return _job_action(health.requeue_failed_job, queue, job_id, "requeued")


@bp.post("/queues/<queue>/failed/<job_id>/delete")
@roles_required("admin")
def delete_job(queue: str, job_id: str):
    """Delete a failed job."""
    return _job_action(health.delete_failed_job, queue, job_id, "deleted")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


@bp.app_template_filter("epoch_ago")
def epoch_ago(value: float | None) -> Markup:
    """A past epoch time as "3 min ago" in a <time> element; "never" when None."""
    if value is None:
        return Markup("never")
    moment = datetime.fromtimestamp(value, UTC)
    return Markup('<time datetime="{}">{} ago</time>').format(
        moment.isoformat(timespec="seconds"), _duration(time.time() - value)
    )


@bp.app_template_filter("epoch_when")
def epoch_when(value: float | None) -> Markup:
    """A future epoch time as "in 4 min"; "not scheduled" when None."""
    if value is None:
        return Markup("not scheduled")
    moment = datetime.fromtimestamp(value, UTC)
    left = value - time.time()
    text = f"in {_duration(left)}" if left > 0 else "due now"
    return Markup('<time datetime="{}">{}</time>').format(
        moment.isoformat(timespec="seconds"), text
    )


@bp.app_template_filter("age_seconds")
def age_seconds(value: float | None) -> str:
    return "—" if value is None else _duration(value)


@bp.app_template_filter("latency_ms")
def latency_ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.1f} s"


@bp.app_template_filter("share")
def share(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1%}" if 0 < value < 0.1 else f"{value:.0%}"
