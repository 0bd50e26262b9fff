"""Column types and helpers shared by every domain's models."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import chain

from sqlalchemy import DateTime, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


def escape_like(value: str) -> str:
    """`value` as a literal inside a LIKE pattern whose escape character is a backslash."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False
    )


# Search objects that migrations create outside the models: the SQLite FTS5 table (and
# its shadow tables); on PostgreSQL the generated `contacts.search_text` and the indexes
# on it. Schema comparison skips them.
UNMANAGED_PREFIXES = ("contacts_fts", "ix_contacts_search_", "search_text")


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    """Alembic `include_name` hook: compare everything but the search objects."""
    return not (name or "").startswith(UNMANAGED_PREFIXES)


@contextmanager
def hot_write(session):
    """Run a hot path's short write (webhook intake: one INSERT) as cheaply as it can be.

    - PostgreSQL: each statement commits on its own (driver autocommit). A single INSERT
      needs no BEGIN and COMMIT round trips around it, and `session.commit()` still fires
      the after-commit hooks that enqueue its jobs. Not when the session was handed a
      connection that is already in a transaction (the tests' outer transaction).
    - SQLite: one writer at a time, and a process that finds the write lock taken sleeps
      in its busy handler (1 ms, then 2, 5...) however soon the lock frees. Queueing on an
      advisory file lock beside the database instead wakes each waiter the moment the
      writer before it is done. The next writer goes in as soon as this one's COMMIT is
      through: the after-commit hooks (its jobs' Redis round trip) run outside the lock.
    """
    bind = session.get_bind()
    engine = bind.engine  # an Engine, or the Connection a test binds
    if engine.dialect.name == "postgresql":
        if isinstance(bind, Engine):
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        yield
        return
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    descriptor = _gate_descriptor(path)
    session.connection()  # BEGIN, which takes no lock, before queueing for the gate
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    session.info[_GATE] = descriptor
    try:
        yield
    finally:
        _open_gate(session)  # not committed (an error): still held


_GATE = "rapport_write_gate"


@event.listens_for(Session, "after_commit", insert=True)
def _open_gate(session: Session) -> None:
    # First of the after-commit hooks: the database's write lock went with the COMMIT.
    descriptor = session.info.pop(_GATE, None)
    if descriptor is not None:
        fcntl.flock(descriptor, fcntl.LOCK_UN)


_gates: dict[tuple[int, str], int] = {}


def _gate_descriptor(path: str) -> int:
    # One descriptor per process and database, opened after any fork (flock locks belong
    # to the open file description, which a forked child would share with its parent).
    key = (os.getpid(), path)
    if key not in _gates:
        _gates[key] = os.open(f"{path}-writegate", os.O_RDWR | os.O_CREAT, 0o600)
    return _gates[key]


def after_commit_writing(tables: frozenset[str], callback: Callable[[], None]):
    """Call `callback()` after each commit whose transaction wrote any of `tables`.

    Writes through the unit of work and INSERT, UPDATE or DELETE statements (bulk actions,
    which skip it) both count. A rolled-back write keeps its mark until the next commit:
    one needless call is cheaper than telling a rolled-back savepoint from the transaction
    around it. Returns `mark(session)`, for writes the session cannot see (raw SQL, COPY).
    """
    key = f"rapport_wrote_{'_'.join(sorted(tables))}"

    def mark(session: Session) -> None:
        session.info[key] = True

    @event.listens_for(Session, "after_flush")
    def _note_flushed(session: Session, _context) -> None:
        for obj in chain(session.new, session.dirty, session.deleted):
            table = getattr(obj, "__table__", None)
            if table is not None and table.name in tables:
                mark(session)
                return

    @event.listens_for(Session, "do_orm_execute")
    def _note_statement(state) -> None:
        if state.is_insert or state.is_update or state.is_delete:
            table = getattr(state.statement, "table", None)
            if getattr(table, "name", None) in tables:
                mark(state.session)

    @event.listens_for(Session, "after_commit")
    def _call_after_commit(session: Session) -> None:
        if session.info.pop(key, False):
            callback()

    return mark
