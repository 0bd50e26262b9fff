"""Campaigns: the list, a new campaign from a contacts filter, its progress, cancel (staff)."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, flash, request, url_for
from flask_login import current_user
from sqlalchemy.orm import selectinload

from crm.auth.access import STAFF_ROLES, roles_required
from crm.conversations import campaigns
from crm.conversations.models import CHANNEL_LABELS, CHANNELS, Campaign, MessageTemplate
from crm.extensions import db
from crm.htmx import redirect_303, render

bp = Blueprint("campaigns", __name__, url_prefix="/campaigns")

PAGE_SIZE = 50
FORM_FIELDS = ("name", "channel", "template_id", "send", "send_at", "quiet_start", "quiet_end")
OUTCOMES = {
    "": "Everyone",
    "queued": "Queued",
    "sent": "Sent",
    "delivered": "Delivered",
    "failed": "Failed",
    "skipped": "Skipped",
    "canceled": "Cancelled",
}
STATUS_LABELS = {
    "scheduled": "Waiting for a worker",
    "running": "Sending",
    "done": "Done",
    "canceled": "Cancelled",
}


def _fragment_wanted() -> bool:
    return bool(request.htmx) and not request.htmx.boosted


def _get_or_404(campaign_id: int) -> Campaign:
    return db.get_or_404(Campaign, campaign_id)


@bp.get("/")
@roles_required(*STAFF_ROLES)
def index():
    """List the campaigns, newest first, with their status and counts."""
    before = request.args.get("before", "")
    query = (
        db.select(Campaign)
        .options(selectinload(Campaign.template), selectinload(Campaign.created_by))
        .order_by(Campaign.id.desc())
        .limit(PAGE_SIZE + 1)
    )
    if before.isdigit():
        query = query.where(Campaign.id < int(before))
    rows = db.session.scalars(query).all()
    next_before = rows[PAGE_SIZE - 1].id if len(rows) > PAGE_SIZE else None
    rows = rows[:PAGE_SIZE]
    return render(
        "campaigns/index.html",
        "campaign_rows",
        campaigns=rows,
        counts=campaigns.counts_by_campaign(rows),
        next_before=next_before,
        channels=CHANNEL_LABELS,
        status_labels=STATUS_LABELS,
    )


def _form_page(
    form: dict,
    filter_query: str,
    *,
    errors: dict | None = None,
    status: int = 200,
    block: str | None = "campaign_form",
):
    preview = campaigns.preview_recipients(
        channel=form["channel"], filter_query=filter_query, actor=current_user
    )
    templates = db.session.scalars(db.select(MessageTemplate).order_by(MessageTemplate.name))
    return render(
        "campaigns/new.html",
        block,
        status=status,
        form=form,
        errors=errors or {},
        filter_query=filter_query,
        filter_label=campaigns.describe_filter(filter_query),
        contacts_url=url_for("contacts.index") + ("?" + filter_query if filter_query else ""),
        preview=preview,
        message_templates=templates.all(),
        channels=CHANNEL_LABELS,
        hours=range(24),
    )


def _clean_form(values) -> dict:
    form = {name: (values.get(name) or "").strip() for name in FORM_FIELDS}
    if form["channel"] not in CHANNELS:
        form["channel"] = "sms"
    if form["send"] != "later":
        form["send"] = "now"
    return form


@bp.get("/new")
@roles_required(*STAFF_ROLES)
def new():
    """The form for a campaign to the contacts a contacts-list query string selects.

    htmx asks for the preview count again when the channel changes.
    """
    if "filter_query" in request.args:  # the form itself, asking again
        filter_query = request.args["filter_query"]
    else:  # from the contacts list: its own query string
        filter_query = request.query_string.decode()
    filter_query = campaigns.list_query(filter_query).query_string()
    return _form_page(_clean_form(request.args), filter_query, block="preview")


def _parse(form: dict) -> tuple[dict, dict]:
    """The create_campaign arguments a form gives, and the errors of the fields it cannot."""
    errors: dict[str, str] = {}
    template = None
    if form["template_id"].isdigit():
        template = db.session.get(MessageTemplate, int(form["template_id"]))
    send_at_local = None
    if form["send"] == "later":
        try:
            send_at_local = datetime.fromisoformat(form["send_at"]).replace(
                tzinfo=None, second=0, microsecond=0
            )
        except ValueError:
            errors["send_at"] = "Give the date and time to send at."
    quiet = {}
    for key in ("quiet_start", "quiet_end"):
        raw = form[key]
        quiet[key] = int(raw) if raw.isdigit() else None
        if raw and not raw.isdigit():
            errors["quiet_hours"] = "Quiet hours are whole hours from 0 to 23."
    arguments = {
        "name": form["name"],
        "channel": form["channel"],
        "template": template,
        "send_at_local": send_at_local,
        **quiet,
    }
    return arguments, errors


@bp.post("/")
@roles_required(*STAFF_ROLES)
def create():
    """Create a campaign and start preparing its recipients; then show its progress."""
    form = _clean_form(request.form)
    filter_query = campaigns.list_query(request.form.get("filter_query", "")).query_string()
    arguments, errors = _parse(form)
    try:
        if errors:
            raise campaigns.CampaignError(campaigns.validate_campaign(**arguments) | errors)
        campaign = campaigns.create_campaign(
            **arguments, filter_query=filter_query, actor=current_user
        )
    except campaigns.CampaignError as exc:
        return _form_page(form, filter_query, errors=exc.errors, status=422)
    db.session.commit()
    flash(f"Campaign “{campaign.name}” created: its recipients are being prepared.", "success")
    return redirect_303(url_for("campaigns.show", campaign_id=campaign.id))


def _progress(campaign: Campaign) -> dict:
    counts = campaigns.campaign_counts(campaign)
    signature = "-".join([campaign.status, *(str(counts[key]) for key in campaigns.COUNT_KEYS)])
    return {
        "campaign": campaign,
        "counts": counts,
        "active": campaign.status in campaigns.ACTIVE,
        "signature": signature,
        "status_label": STATUS_LABELS[campaign.status],
        "channel_label": CHANNEL_LABELS[campaign.channel],
        "filter_label": campaigns.describe_filter(campaign.filter_query),
    }


def _recipients(campaign: Campaign) -> dict:
    outcome = request.args.get("outcome", "")
    if outcome not in OUTCOMES:
        outcome = ""
    after = request.args.get("after", "")
    after_id = int(after) if after.isdigit() else 0
    rows, next_after = campaigns.recipients_page(
        campaign, outcome=outcome, after=after_id, size=PAGE_SIZE
    )
    url_args = {"outcome": outcome} if outcome else {}
    return {
        "recipients": rows,
        "outcome": outcome,
        "outcomes": OUTCOMES,
        "after": after_id,
        "first_url": url_for("campaigns.show", campaign_id=campaign.id, **url_args),
        "next_url": url_for("campaigns.show", campaign_id=campaign.id, after=next_after, **url_args)
        if next_after
        else None,
        "recipients_url": url_for(
            "campaigns.show",
            campaign_id=campaign.id,
            **url_args,
            **({"after": after_id} if after_id else {}),
        ),
    }


def _refresh(campaign: Campaign) -> None:
    if campaigns.refresh_campaign_status(campaign):
        db.session.commit()


@bp.get("/<int:campaign_id>")
@roles_required(*STAFF_ROLES)
def show(campaign_id: int):
    """A campaign's progress and its recipients, a page at a time.

    htmx asks for the recipients table alone (paging, filtering, or after progress).
    """
    campaign = _get_or_404(campaign_id)
    _refresh(campaign)
    return render(
        "campaigns/show.html", "recipients", **_progress(campaign), **_recipients(campaign)
    )


@bp.get("/<int:campaign_id>/progress")
@roles_required(*STAFF_ROLES)
def progress(campaign_id: int):
    """The live counts: a fragment that polls itself while the campaign is active.

    When the counts differ from the ones the page shows (`seen`), the recipients table is
    told to refresh too (`recipients-updated`).
    """
    campaign = _get_or_404(campaign_id)
    _refresh(campaign)
    context = _progress(campaign)
    if not _fragment_wanted():
        return render("campaigns/show.html", **context, **_recipients(campaign))
    response = render("campaigns/show.html", "progress", **context)
    if request.args.get("seen") != context["signature"]:
        response.headers["HX-Trigger"] = "recipients-updated"
    return response


@bp.post("/<int:campaign_id>/cancel")
@roles_required(*STAFF_ROLES)
def cancel(campaign_id: int):
    """Cancel a campaign: every message not yet on its way stays unsent."""
    campaign = _get_or_404(campaign_id)
    try:
        canceled = campaigns.cancel_campaign(campaign, actor=current_user)
    except campaigns.CampaignError as exc:
        db.session.rollback()
        message, category = exc.errors["campaign"], "error"
    else:
        db.session.commit()
        message = (
            f"Cancelled “{campaign.name}”: {canceled} unsent "
            f"message{'' if canceled == 1 else 's'} will not go."
        )
        category = "success"
    if _fragment_wanted():
        # The progress fragment shows the outcome (and tells the table to refresh).
        return redirect_303(url_for("campaigns.progress", campaign_id=campaign_id))
    flash(message, category)
    return redirect_303(url_for("campaigns.show", campaign_id=campaign_id))
