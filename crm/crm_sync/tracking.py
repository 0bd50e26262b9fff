"""Notice contact writes and queue them for the CRM, without the contacts package knowing.

Like the list cache (crm/contacts/cache.py): flushed objects and bulk UPDATE/DELETE
statements on `contacts` mark the session; the commit hands the ids to the sync queue.
A rolled-back transaction queues nothing.
"""

from __future__ import annotations

import logging
from itertools import chain

import redis
import sqlalchemy as sa
from flask import has_app_context
from sqlalchemy import event
from sqlalchemy.orm import Session

from crm.contacts.models import Contact
from crm.integrations import crm_sync_api

log = logging.getLogger(__name__)

_CHANGED = "rapport_crm_sync_changed"


def _enabled() -> bool:
    # Migrations and scripts run sessions outside the app; they queue nothing.
    return has_app_context() and not crm_sync_api.missing_settings()


@event.listens_for(Session, "after_flush")
def _note_flushed(session: Session, _context) -> None:
    if not _enabled():
        return
    ids = [
        obj.id
        for obj in chain(session.new, session.dirty, session.deleted)
        if isinstance(obj, Contact)
        and obj.id is not None
        # A tag added to a contact dirties it without changing anything the CRM holds.
        and (obj not in session.dirty or session.is_modified(obj, include_collections=False))
    ]
    if ids:
        session.info.setdefault(_CHANGED, set()).update(ids)


@event.listens_for(Session, "do_orm_execute")
def _note_statement(state) -> None:
    # Bulk actions, merges and undo change contacts with UPDATE statements that skip the
    # flush: read which rows they touch before they run. (Bulk INSERTs have no ids yet;
    # the app makes none, and "Resync all" covers raw loads such as the seeder's COPY.)
    if not (state.is_update or state.is_delete):
        return
    table = getattr(state.statement, "table", None)
    if getattr(table, "name", None) != Contact.__tablename__ or not _enabled():
        return
    query = sa.select(table.c.id)
    where = state.statement.whereclause
    if where is not None:
        query = query.where(where)
    ids = state.session.connection().execute(query).scalars().all()
    if ids:
        state.session.info.setdefault(_CHANGED, set()).update(ids)


@event.listens_for(Session, "after_commit")
def _queue_after_commit(session: Session) -> None:
    ids = session.info.pop(_CHANGED, None)
    if not ids or not _enabled():
        return
    from crm.crm_sync.services import queue_contacts

    try:
        queue_contacts(ids)
    except redis.RedisError:
        # The write is committed and cannot be undone; "Resync all" catches the CRM up.
        log.error("could not queue contacts %s for the CRM", sorted(ids), exc_info=True)


@event.listens_for(Session, "after_rollback")
def _drop_after_rollback(session: Session) -> None:
    session.info.pop(_CHANGED, None)
