"""What conversations add to a contact: messages and consent changes on the timeline, and
their rows following a merge (see crm/contacts/registry.py)."""

from __future__ import annotations

import sqlalchemy as sa
from flask import url_for

from crm.contacts.registry import (
    Cursor,
    TimelineEntry,
    entry_key,
    keyset_rows,
    register_contact_source,
)
from crm.conversations.models import (
    CHANNEL_LABELS,
    CampaignRecipient,
    ConsentEvent,
    Conversation,
    Message,
    OptOut,
)
from crm.extensions import db


def _message_key(message: Message) -> str:
    return entry_key("message", message.id)


def message_entries(contact_id: int, before: Cursor | None, limit: int) -> list[TimelineEntry]:
    """The contact's messages, each with its channel, direction and current status."""
    query = sa.select(Message).where(Message.contact_id == contact_id)
    messages = keyset_rows(query, Message.created_at, Message.id, before, limit, key=_message_key)
    entries = []
    for m in messages:
        channel = CHANNEL_LABELS.get(m.channel, m.channel)
        if m.direction == "inbound":
            title = f"{channel} received"
        else:
            title = f"{channel} sent · {m.status}"
            if m.error_reason and m.status in ("failed", "undelivered", "canceled"):
                title += f": {m.error_reason}"
        entries.append(
            TimelineEntry(
                at=m.created_at,
                kind="message",
                key=_message_key(m),
                title=title,
                body=m.body or ("(media)" if m.media else None),
                url=url_for("conversations.show", conversation_id=m.conversation_id),
                actor=m.sender.display_name if m.sender else None,
            )
        )
    return entries


def _consent_key(event: ConsentEvent) -> str:
    return entry_key("consent", event.id)


def consent_entries(contact_id: int, before: Cursor | None, limit: int) -> list[TimelineEntry]:
    """Opt-outs and opt-ins, with where they came from."""
    query = sa.select(ConsentEvent).where(ConsentEvent.contact_id == contact_id)
    events = keyset_rows(query, ConsentEvent.at, ConsentEvent.id, before, limit, key=_consent_key)
    return [
        TimelineEntry(
            at=e.at,
            kind="consent",
            key=_consent_key(e),
            title=(
                f"Opted out of {CHANNEL_LABELS.get(e.channel, e.channel)}"
                if e.action == "opt_out"
                else f"Opted in to {CHANNEL_LABELS.get(e.channel, e.channel)}"
            ),
            body=f"Source: {e.source}",
        )
        for e in events
    ]


def _movable_conversations(survivor_id: int, merged_id: int) -> list[int]:
    """Every thread follows the merge, as its messages do. At most one thread per contact
    and channel is open, so the merged contact's open thread on a channel where the
    survivor has one open is closed first (undo brings it back closed)."""
    open_channels = set(
        db.session.scalars(
            sa.select(Conversation.channel).where(
                Conversation.contact_id == survivor_id, Conversation.status == "open"
            )
        )
    )
    if open_channels:
        db.session.execute(
            sa.update(Conversation)
            .where(
                Conversation.contact_id == merged_id,
                Conversation.status == "open",
                Conversation.channel.in_(sorted(open_channels)),
            )
            .values(status="closed")
            .execution_options(synchronize_session=False)
        )
    return list(
        db.session.scalars(sa.select(Conversation.id).where(Conversation.contact_id == merged_id))
    )


def _movable_opt_outs(survivor_id: int, merged_id: int) -> list[int]:
    taken = set(
        db.session.scalars(sa.select(OptOut.channel).where(OptOut.contact_id == survivor_id))
    )
    rows = db.session.execute(
        sa.select(OptOut.id, OptOut.channel).where(OptOut.contact_id == merged_id)
    )
    return [r.id for r in rows if r.channel not in taken]


def _movable_recipients(survivor_id: int, merged_id: int) -> list[int]:
    taken = sa.select(CampaignRecipient.campaign_id).where(
        CampaignRecipient.contact_id == survivor_id
    )
    return list(
        db.session.scalars(
            sa.select(CampaignRecipient.id).where(
                CampaignRecipient.contact_id == merged_id,
                CampaignRecipient.campaign_id.not_in(taken),
            )
        )
    )


register_contact_source("messages", timeline=message_entries, reference=Message.contact_id)
register_contact_source("consent", timeline=consent_entries, reference=ConsentEvent.contact_id)
register_contact_source(
    "conversations", reference=Conversation.contact_id, on_merge=_movable_conversations
)
register_contact_source("opt_outs", reference=OptOut.contact_id, on_merge=_movable_opt_outs)
register_contact_source(
    "campaign_recipients", reference=CampaignRecipient.contact_id, on_merge=_movable_recipients
)
