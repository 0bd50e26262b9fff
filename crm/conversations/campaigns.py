"""Campaigns and message templates: one message per contact of a contacts-list filter.

Services flush, never commit. `create_campaign` enqueues `jobs.campaigns.run_campaign`
after the commit; that job gives every matching contact one `CampaignRecipient` row with
its message or the reason it was skipped, so a campaign is resumable and its progress is
plain counts over those rows.

A campaign's audience is the contacts list's filter as its creator saw it, limited to the
contacts that existed when it was created: a contact added later never gets it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from types import SimpleNamespace
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from werkzeug.datastructures import MultiDict

from crm.audit.services import diff, record_change
from crm.contacts import listing
from crm.contacts.models import Contact
from crm.conversations import services
from crm.conversations.models import (
    CANCELED,
    CHANNEL_LABELS,
    CHANNELS,
    Campaign,
    CampaignRecipient,
    Message,
    MessageTemplate,
    OptOut,
)
from crm.database import utcnow
from crm.extensions import db
from crm.users.models import User

ACTIVE = ("scheduled", "running")
NO_PHONE = "no phone number"
INVALID_PHONE = "invalid phone number"
EXAMPLES = 3
# What the progress page counts, by message status. "skipped" are recipients without one.
COUNT_GROUPS = {
    "queued": ("queued", "scheduled", "accepted"),
    "sent": ("sending", "sent"),
    "delivered": ("delivered", "read"),
    "failed": ("failed", "undelivered"),
    "canceled": (CANCELED,),
}
COUNT_KEYS = ("queued", "sent", "delivered", "failed", "skipped", "canceled", "total")
# Still on its way to the carrier: a campaign with any of these is not done. A message
# Twilio reports `sent` is settled; many carriers never send a delivery receipt.
UNSETTLED = ("scheduled", "queued", "accepted", "sending")
# A campaign is created "scheduled"; `run_campaign` makes it "running" within seconds.
# The westernmost timezone is UTC-12: a wall-clock time that long ago has passed everywhere.
EARLIEST_OFFSET = timedelta(hours=12)


class CampaignError(Exception):
    """A campaign cannot be created or changed; `errors` maps form fields to messages."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def opted_out_reason(channel: str) -> str:
    return f"opted out of {CHANNEL_LABELS[channel]}"


@lru_cache(maxsize=65536)
def phone_is_valid(phone: str) -> bool:
    """Whether a stored (E.164) number is a real, dialable number."""
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(phone))
    except phonenumbers.NumberParseException:
        return False


def skip_reason(contact: Contact, channel: str, *, opted_out: bool) -> str | None:
    """Why a campaign on `channel` skips `contact`, or None when it can be sent to.

    The preview counts the same reasons in the same order, so its numbers match the run's.
    """
    if opted_out:
        return opted_out_reason(channel)
    if not contact.phone:
        return NO_PHONE
    if not phone_is_valid(contact.phone):
        return INVALID_PHONE
    return None


# --- the audience -------------------------------------------------------------------


def list_query(filter_query: str) -> listing.ListQuery:
    """The contacts list's state from its query string."""
    return listing.ListQuery.from_args(MultiDict(parse_qsl(filter_query or "")))


def describe_filter(filter_query: str) -> str:
    """The filter in words, for the form and the progress page."""
    state = list_query(filter_query)
    parts = []
    if state.q:
        parts.append(f"matching “{state.q}”")
    if state.status:
        parts.append("with status " + " or ".join(state.status))
    if state.tags:
        joiner = " and " if state.tag_mode == "all" else " or "
        parts.append("tagged " + joiner.join(state.tags))
    if state.owner == "none":
        parts.append("without an owner")
    elif state.owner:
        owner = db.session.get(User, int(state.owner))
        parts.append(f"owned by {owner.display_name if owner else 'a removed user'}")
    return "Contacts " + ", ".join(parts) if parts else "All contacts"


def _chooser(actor: User | None):
    # A campaign whose creator was removed keeps a staff-wide audience, as when created.
    return actor if actor is not None else SimpleNamespace(role="staff", id=None)


def audience(filter_query: str, actor: User | None, *, created_before: datetime | None = None):
    """The contacts the filter selects for `actor` (coach scoping included), unordered."""
    query = listing.matching(list_query(filter_query), _chooser(actor))
    if created_before is not None:
        query = query.where(Contact.created_at <= created_before)
    return query


def campaign_audience(campaign: Campaign):
    return audience(campaign.filter_query, campaign.created_by, created_before=campaign.created_at)


def unprepared(campaign: Campaign):
    """The campaign's audience that has no recipient row yet."""
    done = sa.exists().where(
        CampaignRecipient.campaign_id == campaign.id,
        CampaignRecipient.contact_id == Contact.id,
    )
    return campaign_audience(campaign).where(~done)


def prepared(campaign: Campaign) -> bool:
    """Whether every contact of the audience has its recipient row."""
    query = unprepared(campaign).with_only_columns(Contact.id).order_by(None).limit(1)
    return db.session.execute(query).first() is None


@dataclass
class Preview:
    """What a campaign would do: how many it reaches, and whom it skips and why."""

    channel: str
    total: int
    sendable: int
    skipped: dict[str, int]
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def preview_recipients(*, channel: str, filter_query: str, actor: User) -> Preview:
    """Count the filter's contacts: sendable, and skipped by reason with a few names each.

    Aggregates only: one count query, one query of distinct phone numbers (checked in
    Python, cached) and a few small example queries.
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    base = audience(filter_query, actor).order_by(None)
    opted = sa.exists().where(OptOut.contact_id == Contact.id, OptOut.channel == channel)
    no_phone = sa.or_(Contact.phone.is_(None), Contact.phone == "")
    total, opted_count, no_phone_count = db.session.execute(
        base.with_only_columns(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.case((opted, 1), else_=0)), 0),
            sa.func.coalesce(sa.func.sum(sa.case((sa.and_(~opted, no_phone), 1), else_=0)), 0),
        )
    ).one()
    with_phone = base.where(~opted, ~no_phone)
    phones = db.session.execute(
        with_phone.with_only_columns(Contact.phone, sa.func.count()).group_by(Contact.phone)
    ).all()
    invalid = [phone for phone, _ in phones if not phone_is_valid(phone)]
    invalid_count = sum(n for phone, n in phones if not phone_is_valid(phone))
    skipped = {
        opted_out_reason(channel): int(opted_count),
        NO_PHONE: int(no_phone_count),
        INVALID_PHONE: invalid_count,
    }
    conditions = {
        opted_out_reason(channel): opted,
        NO_PHONE: sa.and_(~opted, no_phone),
        INVALID_PHONE: sa.and_(~opted, Contact.phone.in_(invalid[:100])),
    }
    examples = {}
    for reason, condition in conditions.items():
        if skipped[reason]:
            names = base.where(condition).with_only_columns(Contact.name).order_by(Contact.name)
            examples[reason] = list(db.session.scalars(names.limit(EXAMPLES)))
    return Preview(
        channel=channel,
        total=int(total),
        sendable=int(total) - sum(skipped.values()),
        skipped=skipped,
        examples=examples,
    )


# --- scheduling ---------------------------------------------------------------------


def _zone(name: str | None) -> tzinfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def contact_zone(contact: Contact) -> tzinfo:
    """The contact's timezone, else its owner's, else UTC."""
    owner = contact.owner
    return _zone(contact.timezone) or _zone(owner.timezone if owner else None) or UTC


def in_quiet_hours(hour: int, start: int, end: int) -> bool:
    """Whether `hour` falls in start..end (end excluded), which may wrap midnight."""
    if start < end:
        return start <= hour < end
    return hour >= start or hour < end


def after_quiet_hours(at: datetime, zone: tzinfo, start: int | None, end: int | None) -> datetime:
    """`at` (UTC), or the next `end` o'clock in `zone` when `at` falls in quiet hours."""
    if start is None or end is None:
        return at
    local = at.astimezone(zone)
    if not in_quiet_hours(local.hour, start, end):
        return at
    # Wall-clock arithmetic: the next `end` o'clock as the contact's clock shows it.
    target = local.replace(hour=end, minute=0, second=0, microsecond=0)
    if target <= local:
        target = (local + timedelta(days=1)).replace(hour=end, minute=0, second=0, microsecond=0)
    return target.astimezone(UTC)


def send_time(campaign: Campaign, contact: Contact, *, now: datetime) -> datetime | None:
    """When the campaign's message goes to `contact` (UTC), or None for now."""
    zone = contact_zone(contact)
    at = now
    if campaign.send_at_local is not None:
        at = max(now, campaign.send_at_local.replace(tzinfo=zone).astimezone(UTC))
    at = after_quiet_hours(at, zone, campaign.quiet_start, campaign.quiet_end)
    return at if at > now else None


# --- campaigns ----------------------------------------------------------------------


def validate_campaign(
    *,
    name: str,
    channel: str,
    template: MessageTemplate | None,
    send_at_local: datetime | None,
    quiet_start: int | None,
    quiet_end: int | None,
) -> dict[str, str]:
    """What is wrong with these campaign settings, by form field (empty: nothing)."""
    errors: dict[str, str] = {}
    name = (name or "").strip()
    if not name:
        errors["name"] = "Give the campaign a name."
    elif len(name) > 200:
        errors["name"] = "Keep the name under 200 characters."
    if channel not in CHANNELS:
        errors["channel"] = "Choose SMS or WhatsApp."
    elif missing := services.twilio_missing():
        errors["channel"] = (
            f"Twilio is not configured ({', '.join(missing)} missing): nothing can be sent."
        )
    elif services.default_sender(channel) is None:
        errors["channel"] = f"No {CHANNEL_LABELS[channel]} sender number is configured."
    if template is None:
        errors["template"] = "Choose the message template to send."
    elif channel == "whatsapp" and not template.content_sid:
        errors["template"] = (
            "A WhatsApp campaign starts the conversation, so it needs an approved WhatsApp "
            "template (one with a Content SID)."
        )
    if (quiet_start is None) != (quiet_end is None):
        errors["quiet_hours"] = "Give quiet hours both a start and an end, or neither."
    elif quiet_start is not None:
        if not (0 <= quiet_start <= 23 and 0 <= quiet_end <= 23):
            errors["quiet_hours"] = "Quiet hours are whole hours from 0 to 23."
        elif quiet_start == quiet_end:
            errors["quiet_hours"] = "Quiet hours must start and end at different hours."
    if send_at_local is not None:
        if send_at_local.tzinfo is not None:
            raise ValueError("send_at_local is a wall-clock time: pass a naive datetime")
        if send_at_local < utcnow().replace(tzinfo=None) - EARLIEST_OFFSET:
            errors["send_at"] = "That time has already passed in every timezone."
    return errors


def create_campaign(
    *,
    name: str,
    channel: str,
    template: MessageTemplate | None,
    filter_query: str,
    actor: User,
    send_at_local: datetime | None = None,
    quiet_start: int | None = None,
    quiet_end: int | None = None,
) -> Campaign:
    """Create a campaign over a contacts filter; its run job is enqueued after commit."""
    from jobs import enqueue_after_commit
    from jobs.campaigns import RUN_OPTIONS, run_campaign

    name = (name or "").strip()
    errors = validate_campaign(
        name=name,
        channel=channel,
        template=template,
        send_at_local=send_at_local,
        quiet_start=quiet_start,
        quiet_end=quiet_end,
    )
    if errors:
        raise CampaignError(errors)
    campaign = Campaign(
        name=name,
        channel=channel,
        template_id=template.id,
        filter_query=list_query(filter_query).query_string(),
        status="scheduled",
        send_at_local=send_at_local,
        quiet_start=quiet_start,
        quiet_end=quiet_end,
        recipient_count=0,
        created_by_id=actor.id,
    )
    db.session.add(campaign)
    db.session.flush()
    record_change(
        "create",
        "campaign",
        campaign.id,
        {
            "name": name,
            "channel": channel,
            "template": template.name,
            "filter": campaign.filter_query,
        },
        actor=actor,
    )
    enqueue_after_commit("messaging", run_campaign, campaign.id, **RUN_OPTIONS)
    return campaign


def cancel_campaign(campaign: Campaign, *, actor: User | None) -> int:
    """Cancel a campaign and every message of it no job has started sending; return how many.

    A message a send job holds (its lease) or has handed to Twilio is on its way already.
    """
    now = utcnow()
    # The campaign's row first: a batch of the run job in progress commits before this
    # reads its messages, and the next batch sees the cancellation (on SQLite, the write
    # lock comes before any read).
    changed = db.session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.status.in_(ACTIVE))
        .values(status="canceled", canceled_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.refresh(campaign)
    if not changed:
        raise CampaignError({"campaign": "This campaign has finished: there is nothing to cancel."})
    name = actor.display_name if actor else "the system"
    reason = f"Cancelled with the campaign by {name}."
    messages = db.session.scalars(
        sa.select(Message)
        .where(
            Message.campaign_id == campaign.id,
            Message.direction == "outbound",
            Message.sid.is_(None),
            Message.dispatch_started_at.is_(None),
            Message.status.in_(("queued", "scheduled")),
            sa.or_(Message.lease_until.is_(None), Message.lease_until < now),
        )
        .order_by(Message.id)
        # PostgreSQL waits for a send job holding a row, then tests it again: one that
        # set its in-flight marker meanwhile is left to go (SQLite has the write lock).
        .with_for_update()
    ).all()
    for message in messages:
        services.set_status(message, CANCELED, source="campaign", reason=reason)
    record_change(
        "cancel", "campaign", campaign.id, {"messages_canceled": len(messages)}, actor=actor
    )
    return len(messages)


def _status_counts(campaign_ids: list[int]) -> dict[int, dict[str | None, int]]:
    """{campaign id: {message status (None: skipped): recipients}} in one GROUP BY."""
    rows = db.session.execute(
        sa.select(CampaignRecipient.campaign_id, Message.status, sa.func.count())
        .select_from(CampaignRecipient)
        .outerjoin(Message, Message.id == CampaignRecipient.message_id)
        .where(CampaignRecipient.campaign_id.in_(campaign_ids))
        .group_by(CampaignRecipient.campaign_id, Message.status)
    )
    result: dict[int, dict[str | None, int]] = {cid: {} for cid in campaign_ids}
    for campaign_id, status, n in rows:
        result[campaign_id][status] = n
    return result


def _grouped(raw: dict[str | None, int]) -> dict[str, int]:
    counts = {key: 0 for key in COUNT_KEYS}
    for status, n in raw.items():
        counts["total"] += n
        if status is None:
            counts["skipped"] += n
            continue
        for key, statuses in COUNT_GROUPS.items():
            if status in statuses:
                counts[key] += n
    return counts


def counts_by_campaign(campaigns: list[Campaign]) -> dict[int, dict[str, int]]:
    """campaign_counts for many campaigns in one query (the campaigns list)."""
    if not campaigns:
        return {}
    raw = _status_counts([c.id for c in campaigns])
    return {cid: _grouped(by_status) for cid, by_status in raw.items()}


def campaign_counts(campaign: Campaign) -> dict[str, int]:
    """Recipients by outcome: queued, sent, delivered, failed, skipped, canceled and total.

    Counted over the recipient rows, so a retried message counts once, as its retry.
    """
    return _grouped(_status_counts([campaign.id])[campaign.id])


def refresh_campaign_status(campaign: Campaign) -> bool:
    """Mark a running campaign done once all its recipients exist and no message is unsent.

    One cheap GROUP BY while messages are still going; the audience is checked only once
    they have all gone. Return True when the campaign became done.
    """
    if campaign.status != "running":
        return False
    raw = _status_counts([campaign.id])[campaign.id]
    if any(raw.get(status) for status in UNSETTLED) or not prepared(campaign):
        return False
    now = utcnow()
    pending = sa.exists().where(Message.campaign_id == campaign.id, Message.status.in_(UNSETTLED))
    done = db.session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.status == "running", ~pending)
        .values(status="done", finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.refresh(campaign)
    return bool(done)


def recipients_page(campaign: Campaign, *, outcome: str = "", after: int = 0, size: int = 50):
    """One page of the campaign's recipients with their messages, and the next page's marker.

    Rows are (recipient, contact name, contact phone, message status, message reason).
    """
    query = (
        sa.select(
            CampaignRecipient.id,
            CampaignRecipient.contact_id,
            CampaignRecipient.skip_reason,
            Contact.name,
            Contact.phone,
            Message.id.label("message_id"),
            Message.status,
            Message.error_reason,
            Message.send_at,
            Message.conversation_id,
        )
        .select_from(CampaignRecipient)
        .join(Contact, Contact.id == CampaignRecipient.contact_id)
        .outerjoin(Message, Message.id == CampaignRecipient.message_id)
        .where(CampaignRecipient.campaign_id == campaign.id, CampaignRecipient.id > after)
        .order_by(CampaignRecipient.id)
        .limit(size + 1)
    )
    if outcome == "skipped":
        query = query.where(CampaignRecipient.message_id.is_(None))
    elif outcome in COUNT_GROUPS:
        query = query.where(Message.status.in_(COUNT_GROUPS[outcome]))
    rows = db.session.execute(query).all()
    next_after = rows[size - 1].id if len(rows) > size else None
    return rows[:size], next_after


# --- message templates ----------------------------------------------------------------

CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")
# Anything between double braces: what is not a known variable would go out as typed.
PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")


class TemplateError(Exception):
    """A template cannot be saved or removed; `errors` maps form fields to messages."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def unknown_placeholders(body: str) -> list[str]:
    """Placeholders that would not be filled in: unknown names and malformed ones."""
    unknown = list(services.unknown_variables(body))
    for raw in PLACEHOLDER.findall(body or ""):
        if services.VARIABLE.fullmatch("{{" + raw + "}}") is None and raw.strip() not in unknown:
            unknown.append(raw.strip())
    return unknown


def allowed_variables() -> str:
    return ", ".join("{{" + name + "}}" for name in services.VARIABLES)


def _template_errors(
    name: str, body: str, content_sid: str | None, current: MessageTemplate | None
) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not name:
        errors["name"] = "Give the template a name."
    elif len(name) > 100:
        errors["name"] = "Keep the name under 100 characters."
    else:
        same = sa.select(MessageTemplate.id).where(
            sa.func.lower(MessageTemplate.name) == name.lower()
        )
        if current is not None:
            same = same.where(MessageTemplate.id != current.id)
        if db.session.scalar(same.limit(1)) is not None:
            errors["name"] = f"A template named “{name}” already exists."
    if not body.strip():
        errors["body"] = "Write the message."
    elif len(body) > 1600:
        errors["body"] = "A message can be at most 1,600 characters."
    elif unknown := unknown_placeholders(body):
        names = ", ".join("{{" + n + "}}" for n in unknown)
        errors["body"] = f"Unknown variable{'s' if len(unknown) > 1 else ''} {names}. " + (
            f"Use {allowed_variables()}."
        )
    if content_sid and not CONTENT_SID.fullmatch(content_sid):
        errors["content_sid"] = (
            "A Content SID is HX followed by 32 hexadecimal characters, as Twilio shows it."
        )
    return errors


def _save_template(template: MessageTemplate) -> None:
    # A name taken by a concurrent save surfaces here (the unique index), in a savepoint.
    try:
        with db.session.begin_nested():
            db.session.add(template)
    except IntegrityError as exc:
        raise TemplateError(
            {"name": f"A template named “{template.name}” already exists."}
        ) from exc


def create_template(
    *, name: str, body: str, content_sid: str | None = None, actor: User | None
) -> MessageTemplate:
    """Create a message template; unknown variables and a taken name are refused."""
    name, body = (name or "").strip(), (body or "").strip()
    content_sid = (content_sid or "").strip() or None
    errors = _template_errors(name, body, content_sid, None)
    if errors:
        raise TemplateError(errors)
    template = MessageTemplate(name=name, body=body, content_sid=content_sid)
    _save_template(template)
    record_change("create", "message_template", template.id, {"name": name}, actor=actor)
    return template


def update_template(
    template: MessageTemplate,
    *,
    name: str,
    body: str,
    content_sid: str | None = None,
    actor: User | None,
) -> MessageTemplate:
    """Change a template's name, body or Content SID, with the same checks as creating."""
    name, body = (name or "").strip(), (body or "").strip()
    content_sid = (content_sid or "").strip() or None
    errors = _template_errors(name, body, content_sid, template)
    if errors:
        raise TemplateError(errors)
    changes = diff(template, {"name": name, "body": body, "content_sid": content_sid})
    template.name, template.body, template.content_sid = name, body, content_sid
    _save_template(template)
    if changes:
        record_change("update", "message_template", template.id, changes, actor=actor)
    return template


def delete_template(template: MessageTemplate, *, actor: User | None) -> None:
    """Remove a template; refused while a campaign still sending uses it."""
    in_use = db.session.scalar(
        sa.select(Campaign.name)
        .where(Campaign.template_id == template.id, Campaign.status.in_(ACTIVE))
        .limit(1)
    )
    if in_use is not None:
        raise TemplateError(
            {"template": f"The campaign “{in_use}” is still sending it: cancel it or wait."}
        )
    record_change("delete", "message_template", template.id, {"name": template.name}, actor=actor)
    db.session.delete(template)
    db.session.flush()
