"""What other domains hang off a contact: timeline entries and rows that follow a merge.

The contacts package never imports the domains that point at contacts (messages,
bookings, payments...). Instead each of those domains registers itself here, once, at
import time, from a module the app always imports (its views module is imported by
`create_app` through the blueprint)::

    from crm.contacts.registry import TimelineEntry, keyset_rows, register_contact_source

    def message_entries(contact_id, before, limit):
        query = db.select(Message).where(Message.contact_id == contact_id)
        rows = keyset_rows(query, Message.sent_at, Message.id, before, limit, key=_key)
        return [TimelineEntry(at=m.sent_at, kind="message", key=_key(m), title=...) for m in rows]

    register_contact_source(
        "messages",
        timeline=message_entries,       # optional: entries for the contact page's feed
        reference=Message.contact_id,   # optional: moved to the survivor on merge
        on_merge=None,                  # optional: choose which rows move (unique keys)
    )

A timeline source is `fn(contact_id, before, limit) -> list[TimelineEntry]`: up to `limit`
entries strictly older than the `before` cursor (by `(at, key)`; all of them when it is
None), newest first. Keys must be unique across sources and, within one source, sort as
its rows do: zero-pad numeric ids (`entry_key("message", 12)` does that).

A reference is a column holding contact ids on a table with an integer `id` primary key.
Merging moves every row pointing at the merged contact to the survivor and records the
row ids; undo moves exactly those rows back. A table with a unique constraint involving
the column passes `on_merge(survivor_id, merged_id) -> ids`: the ids of the rows that may
move; the rest stay attached to the merged (soft-deleted) contact, so undo loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from crm.extensions import db

# Big enough for any integer primary key; keeps string order equal to numeric order.
KEY_WIDTH = 12
# IN lists stay well under every backend's bound-parameter limit.
CHUNK = 500
_CURSOR_TIME = "%Y%m%dT%H%M%S.%fZ"


@dataclass(frozen=True)
class TimelineEntry:
    """One event in a contact's feed."""

    at: datetime  # aware UTC
    kind: str  # "note", "change", later "message", "booking", "payment"...
    key: str  # unique across sources, e.g. "note-000000000012"
    title: str
    body: str | None = None
    url: str | None = None
    actor: str | None = None


@dataclass(frozen=True)
class Cursor:
    """A place in the feed: everything strictly older than (at, key) comes after it."""

    at: datetime
    key: str

    def __str__(self) -> str:
        # URL-safe: digits, letters, "." "_" "-" only, so it travels in a query string as is.
        return f"{self.at.astimezone(UTC).strftime(_CURSOR_TIME)}_{self.key}"

    @classmethod
    def parse(cls, value: str) -> Cursor:
        """Read a cursor written by `str(cursor)`; ValueError when it is not one."""
        moment, _, key = value.partition("_")
        if not key:
            raise ValueError("not a timeline cursor")
        at = datetime.strptime(moment, _CURSOR_TIME).replace(tzinfo=UTC)
        return cls(at, key)

    @classmethod
    def of(cls, entry: TimelineEntry) -> Cursor:
        return cls(entry.at, entry.key)


@dataclass(frozen=True)
class ContactSource:
    """What one domain contributes: feed entries and/or a column of contact ids."""

    name: str
    timeline: Callable[[int, Cursor | None, int], list[TimelineEntry]] | None = None
    reference: sa.Column | None = None
    on_merge: Callable[[int, int], Iterable[int]] | None = None

    @property
    def table(self) -> sa.Table:
        return self.reference.table

    @property
    def row_id(self) -> sa.Column:
        return self.reference.table.c.id


_sources: dict[str, ContactSource] = {}


def register_contact_source(
    name: str,
    *,
    timeline: Callable[[int, Cursor | None, int], list[TimelineEntry]] | None = None,
    reference=None,
    on_merge: Callable[[int, int], Iterable[int]] | None = None,
) -> ContactSource:
    """Register a domain's timeline source and/or contact reference under a unique name."""
    if name in _sources:
        raise ValueError(f"a contact source named {name!r} is already registered")
    if timeline is None and reference is None:
        raise ValueError("register a timeline, a reference, or both")
    column = None
    if reference is not None:
        # A mapped attribute (Note.contact_id) or a Core column both give the table column.
        column = getattr(reference, "expression", reference)
        table = getattr(column, "table", None)
        if table is None or "id" not in table.c:
            raise ValueError(f"{name}: the reference must be a column of a table with an id")
    elif on_merge is not None:
        raise ValueError(f"{name}: on_merge needs a reference")
    source = ContactSource(name, timeline, column, on_merge)
    _sources[name] = source
    return source


def unregister_contact_source(name: str) -> None:
    """Forget a registration (tests use this to clean up after themselves)."""
    _sources.pop(name, None)


@contextmanager
def contact_source(name: str, **kwargs) -> Iterator[ContactSource]:
    """Register a source for the duration of a `with` block."""
    source = register_contact_source(name, **kwargs)
    try:
        yield source
    finally:
        unregister_contact_source(name)


def contact_sources() -> list[ContactSource]:
    return list(_sources.values())


def entry_key(prefix: str, row_id: int) -> str:
    """A feed key for row `row_id` whose string order matches the id order."""
    return f"{prefix}-{row_id:0{KEY_WIDTH}d}"


def keyset_rows(query, at, row_id, before: Cursor | None, limit: int, *, key: Callable):
    """Rows of `query` strictly older than `before` by (at, key), newest first, at most `limit`.

    For sources whose keys follow their ids (see `entry_key`). Rows sharing the cursor's
    exact time are few; they are compared by key here, the rest seek through the index.
    """
    ordered = query.order_by(at.desc(), row_id.desc())
    if before is None:
        return list(db.session.execute(ordered.limit(limit)).scalars())
    same = db.session.execute(ordered.where(at == before.at)).scalars()
    rows = [row for row in same if key(row) < before.key]
    older = db.session.execute(ordered.where(at < before.at).limit(limit)).scalars()
    return (rows + list(older))[:limit]


def contact_timeline(
    contact_id: int, *, before: Cursor | None = None, limit: int = 20
) -> tuple[list[TimelineEntry], Cursor | None]:
    """One page of the contact's feed from every source, newest first, and the next cursor."""
    entries: list[TimelineEntry] = []
    for source in contact_sources():
        if source.timeline is not None:
            entries.extend(source.timeline(contact_id, before, limit + 1))
    entries.sort(key=lambda e: (e.at, e.key), reverse=True)
    if len(entries) > limit:
        entries = entries[:limit]
        return entries, Cursor.of(entries[-1])
    return entries, None


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


def _repoint(source: ContactSource, ids: list[int], to_contact_id: int, from_contact_id: int):
    values = {source.reference.name: to_contact_id}
    # Moving a row to another contact is not an edit of the row: keep its updated_at.
    if "updated_at" in source.table.c:
        values["updated_at"] = source.table.c.updated_at
    for chunk in _chunks(ids):
        db.session.execute(
            sa.update(source.table)
            .where(source.row_id.in_(chunk), source.reference == from_contact_id)
            .values(values)
        )


def move_references(merged_id: int, survivor_id: int) -> dict[str, list[int]]:
    """Point every registered reference at the survivor; return {name: moved row ids}.

    Core updates bypass the session, so it is flushed before and expired after.
    """
    db.session.flush()
    moved: dict[str, list[int]] = {}
    for source in contact_sources():
        if source.reference is None:
            continue
        if source.on_merge is not None:
            ids = sorted(int(i) for i in source.on_merge(survivor_id, merged_id))
        else:
            query = sa.select(source.row_id).where(source.reference == merged_id)
            ids = sorted(db.session.execute(query).scalars())
        if ids:
            _repoint(source, ids, survivor_id, merged_id)
            moved[source.name] = ids
    db.session.expire_all()
    return moved


def restore_references(moved: dict[str, list[int]], survivor_id: int, merged_id: int) -> None:
    """Move the rows a merge moved back to the merged contact (those still on the survivor)."""
    db.session.flush()
    for name, ids in moved.items():
        source = _sources.get(name)
        # A domain no longer registered has no column to move; its rows stay where they are.
        if source is not None and source.reference is not None:
            _repoint(source, list(ids), merged_id, survivor_id)
    db.session.expire_all()
