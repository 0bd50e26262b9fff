"""A contact's change history from the audit log, as a page of its own and as feed entries.

The feed itself (`contact_timeline`) and the way other domains join it live in
`crm.contacts.registry`; this module registers the contacts package's own change source.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from crm.audit.models import AuditEntry
from crm.contacts.models import ContactImportRow
from crm.contacts.registry import (
    Cursor,
    TimelineEntry,
    entry_key,
    keyset_rows,
    register_contact_source,
)
from crm.extensions import db
from crm.users.models import User

HISTORY_PAGE = 20
DASH = "—"
FIELD_LABELS = {"owner_id": "owner", "merged_into_id": "merged into", "deleted_at": "deleted"}
ACTION_TITLES = {
    "contact.created": "Contact created",
    "contact.updated": "Contact changed",
    "contact.merged": "Merged",
    "contact.merge_undone": "Merge undone",
    "note.added": "Note added",
    "note.updated": "Note edited",
    "note.deleted": "Note deleted",
}


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: str
    new: str


def _contact_entries(contact_id: int):
    return db.select(AuditEntry).where(
        AuditEntry.object_type == "contact", AuditEntry.object_id == contact_id
    )


def history_page(
    contact_id: int, *, before: str = "", size: int = HISTORY_PAGE
) -> tuple[list[AuditEntry], str | None]:
    """The contact's audit entries, newest first, from `before`; and the next page's cursor."""
    query = _contact_entries(contact_id)
    if before:
        cursor = Cursor.parse(before)
        if not cursor.key.isdigit():
            raise ValueError("not a history cursor")
        key = sa.tuple_(AuditEntry.created_at, AuditEntry.id)
        query = query.where(key < sa.tuple_(cursor.at, int(cursor.key)))
    query = query.order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc()).limit(size + 1)
    entries = list(db.session.execute(query).scalars())
    if len(entries) > size:
        entries = entries[:size]
        return entries, str(Cursor(entries[-1].created_at, str(entries[-1].id)))
    return entries, None


def action_title(entry: AuditEntry) -> str:
    """The audit action in words."""
    return (
        ACTION_TITLES.get(entry.action)
        or entry.action.replace(".", " ").replace("_", " ").capitalize()
    )


def _show(value, users: dict[int, str], field: str) -> str:
    if value is None or value == "" or value == []:
        return DASH
    if field == "owner_id" and isinstance(value, int):
        return users.get(value, f"user #{value}")
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def field_changes(entries: list[AuditEntry]) -> dict[int, list[FieldChange]]:
    """Each entry's changes as display lines, owners by name; {entry id: [FieldChange]}."""
    owner_ids = {
        value
        for entry in entries
        for value in (entry.changes or {}).get("owner_id", [])
        if isinstance(value, int)
    }
    users = {}
    if owner_ids:
        query = db.select(User).where(User.id.in_(owner_ids))
        users = {user.id: user.display_name for user in db.session.execute(query).scalars()}
    lines = {}
    for entry in entries:
        lines[entry.id] = [
            FieldChange(
                FIELD_LABELS.get(field, field).replace("_", " "),
                _show(pair[0] if len(pair) > 0 else None, users, field),
                _show(pair[1] if len(pair) > 1 else None, users, field),
            )
            for field, pair in (entry.changes or {}).items()
            if isinstance(pair, list)
        ]
    return lines


def _change_key(entry: AuditEntry) -> str:
    return entry_key("change", entry.id)


def change_entries(contact_id: int, before: Cursor | None, limit: int) -> list[TimelineEntry]:
    """The contact's audit entries as timeline entries (an added note shows as the note)."""
    query = _contact_entries(contact_id).where(AuditEntry.action != "note.added")
    rows = keyset_rows(query, AuditEntry.created_at, AuditEntry.id, before, limit, key=_change_key)
    lines = field_changes(rows)
    return [
        TimelineEntry(
            at=row.created_at,
            kind="change",
            key=_change_key(row),
            title=action_title(row),
            body="; ".join(f"{c.field}: {c.old} → {c.new}" for c in lines[row.id]) or None,
            actor=row.actor.display_name if row.actor else None,
        )
        for row in rows
    ]


register_contact_source("changes", timeline=change_entries)
# Import rows name the contact they created or updated; after a merge that is the survivor.
register_contact_source("import_rows", reference=ContactImportRow.contact_id)
