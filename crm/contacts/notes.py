"""Notes on a contact: add, edit, delete, each audited on the contact. Services flush only."""

from __future__ import annotations

import sqlalchemy as sa

from crm.audit.services import record_change
from crm.auth.access import STAFF_ROLES
from crm.contacts.models import Contact, Note
from crm.contacts.registry import (
    Cursor,
    TimelineEntry,
    entry_key,
    keyset_rows,
    register_contact_source,
)
from crm.extensions import db
from crm.users.models import User

MAX_NOTE = 10_000
NOTES_PAGE = 10


def read_note_body(raw: str | None) -> tuple[str, str | None]:
    """Return the trimmed body and an error message, or None when it is fine."""
    body = (raw or "").strip()
    if not body:
        return body, "Write something in the note first."
    if len(body) > MAX_NOTE:
        return body, f"Keep the note under {MAX_NOTE:,} characters (it has {len(body):,})."
    return body, None


def can_change_note(note: Note, user: User) -> bool:
    """Staff and admins may change any note; a coach only the notes they wrote."""
    return user.role in STAFF_ROLES or note.author_id == user.id


def add_note(contact: Contact, body: str, *, actor: User) -> Note:
    """Add a note to a contact and audit it."""
    note = Note(contact_id=contact.id, author_id=actor.id, body=body)
    db.session.add(note)
    db.session.flush()
    record_change("note.added", "contact", contact.id, {"note": [None, body]}, actor=actor)
    return note


def update_note(note: Note, body: str, *, actor: User) -> Note:
    """Change a note's text and audit the change (nothing when the text is the same)."""
    if body != note.body:
        old, note.body = note.body, body
        db.session.flush()
        record_change(
            "note.updated", "contact", note.contact_id, {"note": [old, body]}, actor=actor
        )
    return note


def delete_note(note: Note, *, actor: User) -> None:
    """Delete a note; the audit log keeps its text."""
    contact_id, body = note.contact_id, note.body
    db.session.delete(note)
    db.session.flush()
    record_change("note.deleted", "contact", contact_id, {"note": [body, None]}, actor=actor)


def note_cursor(note: Note) -> str:
    return str(Cursor(note.created_at, str(note.id)))


def notes_page(
    contact_id: int, *, before: str = "", size: int = NOTES_PAGE
) -> tuple[list[Note], str | None]:
    """A contact's notes, newest first, from `before` (a cursor); and the next page's cursor."""
    query = db.select(Note).where(Note.contact_id == contact_id)
    if before:
        cursor = Cursor.parse(before)
        if not cursor.key.isdigit():
            raise ValueError("not a notes cursor")
        key = sa.tuple_(Note.created_at, Note.id)
        query = query.where(key < sa.tuple_(cursor.at, int(cursor.key)))
    query = query.order_by(Note.created_at.desc(), Note.id.desc()).limit(size + 1)
    notes = list(db.session.execute(query).scalars())
    if len(notes) > size:
        notes = notes[:size]
        return notes, note_cursor(notes[-1])
    return notes, None


def _note_key(note: Note) -> str:
    return entry_key("note", note.id)


def note_entries(contact_id: int, before: Cursor | None, limit: int) -> list[TimelineEntry]:
    """The contact's notes as timeline entries."""
    query = db.select(Note).where(Note.contact_id == contact_id)
    notes = keyset_rows(query, Note.created_at, Note.id, before, limit, key=_note_key)
    return [
        TimelineEntry(
            at=note.created_at,
            kind="note",
            key=_note_key(note),
            title="Note",
            body=note.body,
            actor=note.author.display_name if note.author else None,
        )
        for note in notes
    ]


register_contact_source("notes", timeline=note_entries, reference=Note.contact_id)
