"""CSV export of the list's current filter, streamed in constant memory."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator

import sqlalchemy as sa

from crm.contacts.listing import ListQuery, matching
from crm.contacts.models import Contact, Tag, contact_tags
from crm.extensions import db
from crm.users.models import User

COLUMNS = ("name", "phone", "email", "status", "tags", "owner", "last_contact_at", "created_at")
CHUNK = 1000
# A spreadsheet runs a cell starting with one of these as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# ...but a signed number or phone number is data, and `+14155552671` must stay dialable.
PLAIN_NUMBER = re.compile(r"[+-]?[\d\s().-]*\d[\d\s().-]*")


def safe_cell(value) -> str:
    """Render a value for a CSV cell that a spreadsheet will show, never evaluate."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_START) and not PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_line(values) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([safe_cell(v) for v in values])
    return buffer.getvalue()


def export_rows(state: ListQuery, user: User) -> Iterator[str]:
    """Yield the CSV header, then matching contacts by id, a chunk at a time."""
    yield "\ufeff" + csv_line(COLUMNS)  # the BOM tells Excel the file is UTF-8
    owner = sa.orm.aliased(User)
    base = (
        matching(state, user)
        .outerjoin(owner, owner.id == Contact.owner_id)
        .with_only_columns(
            Contact.id,
            Contact.name,
            Contact.phone,
            Contact.email,
            Contact.status,
            owner.email,
            Contact.last_contact_at,
            Contact.created_at,
        )
        .order_by(Contact.id)
        .limit(CHUNK)
    )
    last_id = 0
    while True:
        rows = db.session.execute(base.where(Contact.id > last_id)).all()
        if not rows:
            return
        ids = [row[0] for row in rows]
        tags: dict[int, list[str]] = {}
        tag_rows = db.session.execute(
            sa.select(contact_tags.c.contact_id, Tag.name)
            .join(Tag, Tag.id == contact_tags.c.tag_id)
            .where(contact_tags.c.contact_id.in_(ids))
            .order_by(Tag.name)
        )
        for contact_id, name in tag_rows:
            tags.setdefault(contact_id, []).append(name)
        chunk = io.StringIO()
        writer = csv.writer(chunk)
        for id_, name, phone, email, status, owner_email, last, created in rows:
            writer.writerow(
                [
                    safe_cell(v)
                    for v in (
                        name,
                        phone,
                        email,
                        status,
                        ", ".join(tags.get(id_, [])),
                        owner_email,
                        last.isoformat() if last else "",
                        created.isoformat() if created else "",
                    )
                ]
            )
        yield chunk.getvalue()
        last_id = ids[-1]
        # Free the session's identity map between chunks: memory stays flat.
        db.session.expunge_all()
