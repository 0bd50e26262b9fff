"""Admin > Webhooks: the event log, one event's payload, replay, the dead-letter list."""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, abort, flash, request, url_for
from flask_login import current_user

from crm.auth.access import roles_required
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.webhooks.models import PROVIDERS, STATUSES, WebhookEvent
from crm.webhooks.services import (
    count_dead,
    job_states,
    list_events,
    redacted_headers,
    redacted_payload,
    replay_events,
    replayable,
)

bp = Blueprint("webhooks_admin", __name__, url_prefix="/admin/webhooks")

PAGE_SIZE = 50
MAX_SELECTED = 500


def _filters(source) -> dict:
    """The list's filters from a query string or a form; unknown values are dropped."""
    provider = source.get("provider", "")
    status = source.get("status", "")
    event_type = source.get("type", "").strip()[:100]
    return {
        "provider": provider if provider in PROVIDERS else "",
        "status": status if status in STATUSES else "",
        "type": event_type,
    }


def _query(filters: dict, **extra) -> str:
    return urlencode({k: v for k, v in {**filters, **extra}.items() if v})


def _index_url(filters: dict, **extra) -> str:
    query = _query(filters, **extra)
    return url_for("webhooks_admin.index") + (f"?{query}" if query else "")


def _list_page(filters: dict, before: int | None = None, **context):
    events, next_before = list_events(
        provider=filters["provider"] or None,
        status=filters["status"] or None,
        event_type=filters["type"] or None,
        before=before,
        limit=PAGE_SIZE,
    )
    return render(
        "webhooks/index.html",
        "results",
        events=events,
        filters=filters,
        providers=PROVIDERS,
        statuses=STATUSES,
        dead_count=count_dead(),
        next_url=_index_url(filters, before=next_before) if next_before else None,
        list_url=_index_url(filters),
        **context,
    )


@bp.get("/")
@roles_required("admin")
def index():
    """The event log, newest first, filtered by provider, status and type."""
    before = request.args.get("before", "")
    return _list_page(_filters(request.args), int(before) if before.isdigit() else None)


def _event_or_404(event_id: int) -> WebhookEvent:
    event = db.session.get(WebhookEvent, event_id)
    if event is None:
        abort(404)
    return event


def _show_page(event: WebhookEvent, **context):
    state = job_states([event.id])[event.id]
    return render(
        "webhooks/show.html",
        "event_status",
        event=event,
        job_state=state,
        can_replay=replayable(event, state),
        payload=redacted_payload(event),
        headers=redacted_headers(event),
        **context,
    )


@bp.get("/<int:event_id>")
@roles_required("admin")
def show(event_id: int):
    """One event: what was received (secrets redacted) and how processing went."""
    return _show_page(_event_or_404(event_id))


def _replay_message(replayed: list[int], skipped: list[int]) -> str:
    parts = []
    if replayed:
        parts.append(f"Replaying {len(replayed)} event{'s' if len(replayed) != 1 else ''}.")
    if skipped:
        parts.append(
            f"{len(skipped)} skipped (being processed right now, or already waiting for a worker)."
        )
    return " ".join(parts) or "Nothing selected."


@bp.post("/<int:event_id>/replay")
@roles_required("admin")
def replay(event_id: int):
    """Send one event through processing again."""
    event = _event_or_404(event_id)
    replayed, skipped = replay_events([event.id], actor=current_user)
    db.session.commit()
    message = _replay_message(replayed, skipped)
    if request.htmx:
        return _show_page(db.session.get(WebhookEvent, event_id), message=message)
    flash(message, "success" if replayed else "warning")
    return redirect_303(url_for("webhooks_admin.show", event_id=event_id))


@bp.post("/replay")
@roles_required("admin")
def replay_many():
    """Send the selected events through processing again."""
    filters = _filters(request.form)
    ids = [int(i) for i in request.form.getlist("ids") if i.isdigit()][:MAX_SELECTED]
    replayed, skipped = replay_events(ids, actor=current_user) if ids else ([], [])
    db.session.commit()
    message = _replay_message(replayed, skipped)
    if request.htmx:
        return _list_page(filters, message=message)
    flash(message, "success" if replayed else "warning")
    return redirect_303(_index_url(filters))
