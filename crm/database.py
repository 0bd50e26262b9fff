"""Column types and helpers shared by every domain's models."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any

from sqlalchemy import DateTime, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError
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


def hot_write(session: Session, statement, values: dict) -> tuple[list[tuple], bool]:
    """Run one INSERT ... RETURNING, a hot path's only write (webhook intake), as cheaply
    as each backend allows. Returns its rows, and whether it is committed already.

    With the session bound to an engine, the statement runs on a pooled connection of its
    own, straight on the driver, and commits by itself: the caller sends its jobs at once.
    The session's transaction and SQLAlchemy's execution steps cost more than the INSERT's
    own round trip, and under load they decide how many deliveries a worker takes a second.
    - PostgreSQL: in driver autocommit, so no BEGIN and COMMIT round trips around it. The
      connection goes back to the pool transactional.
    - SQLite: one writer at a time, and a process that finds the write lock taken sleeps
      in its busy handler (1 ms, then 2, 5...) however soon the lock frees. Queueing on an
      advisory file lock beside the database instead wakes each waiter the moment the
      writer before it is done; the statement's own transaction ends before the lock is
      let go, and the caller's jobs (a Redis round trip) go out after.

    When the session was handed a connection that is already in a transaction (the tests'
    outer transaction) the statement runs in it, and commits with the session; on SQLite
    the gate opens at that commit.
    """
    bind = session.get_bind()
    compiled = _compiled(statement, bind.dialect, tuple(values))
    if not isinstance(bind, Engine):
        connection = session.connection()  # BEGIN, which takes no lock, before the gate
        path = _gated_path(connection.engine)
        if path:
            descriptor = _gate_descriptor(path)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            session.info[_GATE] = descriptor
        try:
            return _run(connection.connection, compiled, values), False
        except BaseException:
            _open_gate(session)  # no commit is coming
            raise
    autocommit = bind.dialect.name == "postgresql"
    path = _gated_path(bind)
    descriptor = _gate_descriptor(path) if path else None
    fairy = bind.raw_connection()
    try:
        if autocommit:
            fairy.driver_connection.autocommit = True
        if descriptor is not None:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        return _run(fairy, compiled, values), True
    finally:
        if descriptor is not None:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        if autocommit and fairy.is_valid:  # an invalidated one is not going back
            fairy.driver_connection.autocommit = False
        fairy.close()


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # in the driver's order when its parameters are positional
    positional: bool
    processors: dict[str, Callable[[Any], Any]]
    dialect: Dialect


_compiled_statements: dict[tuple, _Compiled] = {}


def _compiled(statement, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled:
    # Kept per process, for the hot path's few statements (each built once, and held here).
    key = (statement, dialect.name, keys)
    kept = _compiled_statements.get(key)
    if kept is None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        names = tuple(compiled.positiontup if compiled.positional else compiled.binds)
        processors = {}
        for name in names:
            process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors[name] = process
        kept = _Compiled(compiled.string, names, compiled.positional, processors, dialect)
        _compiled_statements[key] = kept
    return kept


def _run(fairy, compiled: _Compiled, values: dict) -> list[tuple]:
    params = {}
    for name in compiled.names:
        value = values[name]
        process = compiled.processors.get(name)
        params[name] = process(value) if process is not None else value
    dialect = compiled.dialect
    sent = tuple(params[name] for name in compiled.names) if compiled.positional else params
    cursor = fairy.cursor()
    try:
        cursor.execute(compiled.sql, sent)
        # Every row: SQLite commits a statement's own transaction once it has run out.
        return cursor.fetchall()
    except dialect.loaded_dbapi.Error as exc:
        # As SQLAlchemy's own execution would: a broken connection leaves the pool, and
        # the error is SQLAlchemy's (the intake answers OperationalError with a 503).
        invalidated = dialect.is_disconnect(exc, fairy.dbapi_connection, cursor)
        if invalidated:
            fairy.invalidate(exc)
        raise DBAPIError.instance(
            compiled.sql,
            sent,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,  # a delivery's body is not for the error log
            connection_invalidated=invalidated,
            dialect=dialect,
        ) from exc
    finally:
        cursor.close()


def _gated_path(engine) -> str | None:
    if engine.dialect.name != "sqlite":
        return None
    path = engine.url.database
    return path if path and path != ":memory:" else None


_GATE = "rapport_write_gate"


@event.listens_for(Session, "after_commit", insert=True)
@event.listens_for(Session, "after_rollback")
def _open_gate(session: Session) -> None:
    # First of the after-commit hooks: the database's write lock went with the COMMIT
    # (or with a ROLLBACK).
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
