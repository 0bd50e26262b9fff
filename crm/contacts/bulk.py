"""Bulk actions, soft delete with undo, the trash. Services flush; views and jobs commit.

A bulk action freezes its selection when it is submitted: the ids of the contacts it
will change (already limited to what the user may see) are stored on the BulkAction, in
id order. Inline runs and the RQ job then walk that list in chunks, so a long job never
chases a filter that moves under it, and a resumed job continues at `processed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import parse_qsl

import sqlalchemy as sa
from werkzeug.datastructures import MultiDict

from crm.audit.models import AuditEntry
from crm.audit.services import record_change
from crm.auth.access import scope_contacts
from crm.contacts.listing import ListQuery, matching, visible_contacts
from crm.contacts.models import STATUSES, BulkAction, Contact, Tag, contact_tags
from crm.contacts.tags import TagError, find_tag, get_or_create_tag
from crm.database import utcnow
from crm.extensions import db
from crm.users.models import User

# At or above this many contacts a bulk action runs as a job with a progress fragment.
JOB_THRESHOLD = 1000
CHUNK_SIZE = 500
UNDO_WINDOW = timedelta(seconds=30)
FORM_ACTIONS = ("tag_add", "tag_remove", "status", "owner", "delete")


class BulkError(ValueError):
    """A bulk request that cannot run; `message` is shown to the user."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class BulkRequest:
    """A validated bulk form: what to do, with which parameters, to which contacts."""

    action: str
    params: dict
    scope: str
    query: str = ""
    ids: list[int] = field(default_factory=list)


def _posted_ids(values: list[str]) -> list[int]:
    return sorted({int(v) for v in values if v.strip().isdigit()})


def read_bulk_form(form: MultiDict, *, actor: User) -> BulkRequest:
    """Validate the list toolbar's form and resolve the contacts it names, or raise BulkError.

    Ids the actor may not see are dropped silently: they are simply not touched.
    """
    action = form.get("action", "")
    if action not in FORM_ACTIONS:
        raise BulkError("Choose what to do with the contacts.")
    params: dict = {}
    if action in ("tag_add", "tag_remove"):
        try:
            tag = (
                get_or_create_tag(form.get("tag"))
                if action == "tag_add"
                else _existing_tag(form.get("tag"))
            )
        except TagError as exc:
            raise BulkError(exc.message) from exc
        params = {"tag_id": tag.id, "tag": tag.name}
    elif action == "status":
        status = form.get("status", "")
        if status not in STATUSES:
            raise BulkError(f"Choose a status: {', '.join(STATUSES)}.")
        params = {"status": status}
    elif action == "owner":
        raw = (form.get("owner_id") or "").strip()
        if raw:
            owner = db.session.get(User, int(raw)) if raw.isdigit() else None
            if owner is None or owner.role != "coach" or not owner.active:
                raise BulkError("Choose an active coach as the owner.")
            params = {"owner_id": owner.id, "owner": owner.display_name}
        else:
            params = {"owner_id": None, "owner": None}

    scope = "matching" if form.get("scope") == "matching" else "selected"
    query = form.get("query", "")
    if scope == "matching":
        state = ListQuery.from_args(MultiDict(parse_qsl(query)))
        ids = _ids_of(matching(state, actor))
        if not ids:
            raise BulkError("No contacts match this filter.")
    else:
        posted = _posted_ids(form.getlist("ids"))
        if not posted:
            raise BulkError("Select at least one contact.")
        ids = _ids_of(visible_contacts(actor).where(Contact.id.in_(posted)))
        if not ids:
            raise BulkError("None of the selected contacts can be changed.")
    return BulkRequest(action=action, params=params, scope=scope, query=query, ids=ids)


def _existing_tag(raw: str | None) -> Tag:
    name = (raw or "").strip()
    if not name:
        raise TagError("Enter the tag to remove.")
    tag = find_tag(name)
    if tag is None:
        raise TagError(f"There is no tag named “{name}”.")
    return tag


def _ids_of(query) -> list[int]:
    ids = query.with_only_columns(Contact.id).order_by(Contact.id)
    return list(db.session.execute(ids).scalars())


def create_bulk_action(request: BulkRequest, *, actor: User) -> BulkAction:
    """Record a queued bulk action over the frozen selection."""
    selection: dict = {"ids": request.ids}
    if request.scope == "matching":
        selection["query"] = request.query
    action = BulkAction(
        actor_id=actor.id,
        action=request.action,
        params=request.params,
        scope=request.scope,
        selection=selection,
        status="queued",
        total=len(request.ids),
        processed=0,
    )
    db.session.add(action)
    db.session.flush()
    return action


def runs_as_job(action: BulkAction) -> bool:
    return action.total >= JOB_THRESHOLD


def run_chunk(action: BulkAction) -> bool:
    """Apply the action to its next chunk of contacts; return True while chunks remain.

    Set-based: one UPDATE (or INSERT/DELETE on contact_tags) per chunk, and one
    executemany insert of audit entries for the contacts that actually changed.
    """
    actor = db.session.get(User, action.actor_id) if action.actor_id else None
    if actor is None or not actor.active:
        raise BulkError("The user who started this action can no longer act.")
    ids = action.selection.get("ids", [])
    chunk = ids[action.processed : action.processed + CHUNK_SIZE]
    if chunk:
        # Re-check visibility: a contact may have been reassigned or trashed meanwhile.
        base = scope_contacts(
            sa.select(Contact.id).where(Contact.id.in_(chunk), Contact.deleted_at.is_(None)),
            actor,
        )
        entries = APPLY[action.action](action, base)
        if entries:
            now = utcnow()
            db.session.execute(
                sa.insert(AuditEntry),
                [
                    {
                        "actor_id": actor.id,
                        "action": kind,
                        "object_type": "contact",
                        "object_id": contact_id,
                        "changes": changes,
                        "created_at": now,
                    }
                    for contact_id, kind, changes in entries
                ],
            )
    action.processed = min(action.processed + CHUNK_SIZE, len(ids))
    if action.processed >= len(ids):
        action.status = "done"
        action.finished_at = utcnow()
    else:
        action.status = "running"
    db.session.flush()
    return action.status != "done"


def _apply_tag_add(action: BulkAction, base) -> list:
    tag_id = action.params["tag_id"]
    has_tag = sa.select(contact_tags.c.contact_id).where(contact_tags.c.tag_id == tag_id)
    missing = list(db.session.execute(base.where(Contact.id.not_in(has_tag))).scalars())
    if missing:
        db.session.execute(
            sa.insert(contact_tags), [{"contact_id": i, "tag_id": tag_id} for i in missing]
        )
    return [(i, "contact.updated", {"tags": [None, action.params["tag"]]}) for i in missing]


def _apply_tag_remove(action: BulkAction, base) -> list:
    tag_id = action.params["tag_id"]
    has_tag = sa.select(contact_tags.c.contact_id).where(contact_tags.c.tag_id == tag_id)
    tagged = list(db.session.execute(base.where(Contact.id.in_(has_tag))).scalars())
    if tagged:
        db.session.execute(
            sa.delete(contact_tags).where(
                contact_tags.c.tag_id == tag_id, contact_tags.c.contact_id.in_(tagged)
            )
        )
    return [(i, "contact.updated", {"tags": [action.params["tag"], None]}) for i in tagged]


def _apply_field(name: str):
    def apply(action: BulkAction, base) -> list:
        new = action.params[f"{name}_id" if name == "owner" else name]
        column = getattr(Contact, "owner_id" if name == "owner" else name)
        changing = base.add_columns(column).where(
            column.is_not(None) if new is None else sa.or_(column.is_(None), column != new)
        )
        rows = list(db.session.execute(changing))
        if rows:
            db.session.execute(
                sa.update(Contact)
                .where(Contact.id.in_([row[0] for row in rows]))
                .values({column.key: new, "updated_at": utcnow()})
                .execution_options(synchronize_session="fetch")
            )
        return [(row[0], "contact.updated", {column.key: [row[1], new]}) for row in rows]

    return apply


def _apply_delete(action: BulkAction, base) -> list:
    ids = list(db.session.execute(base).scalars())
    now = utcnow()
    if ids:
        db.session.execute(
            sa.update(Contact)
            .where(Contact.id.in_(ids))
            .values(deleted_at=now, deleted_by_action_id=action.id)
            .execution_options(synchronize_session="fetch")
        )
    return [(i, "contact.deleted", {"deleted_at": [None, now.isoformat()]}) for i in ids]


APPLY = {
    "tag_add": _apply_tag_add,
    "tag_remove": _apply_tag_remove,
    "status": _apply_field("status"),
    "owner": _apply_field("owner"),
    "delete": _apply_delete,
}


def run_all_chunks(action: BulkAction) -> None:
    """Apply the whole action now, in chunks, without committing (the inline path)."""
    while run_chunk(action):
        pass


def may_see_action(action: BulkAction, user: User) -> bool:
    """Whether `user` may follow or undo `action`: its actor, or an admin."""
    return action.actor_id == user.id or user.role == "admin"


def undo_deadline(action: BulkAction) -> datetime | None:
    if action.finished_at is None:
        return None
    return action.finished_at + UNDO_WINDOW


def can_undo(action: BulkAction, *, now: datetime | None = None) -> bool:
    """A finished delete may be undone for 30 seconds."""
    deadline = undo_deadline(action)
    return (
        action.action == "delete"
        and action.status == "done"
        and deadline is not None
        and (now or utcnow()) <= deadline
    )


def undo_bulk_action(action: BulkAction, *, actor: User) -> int:
    """Restore exactly the contacts this delete put in the trash; return how many."""
    if action.action != "delete" or action.status != "done":
        raise BulkError("Only a finished delete can be undone.")
    if not can_undo(action):
        raise BulkError("Too late to undo here; restore them from the trash.")
    trashed = sa.select(Contact.id, Contact.deleted_at).where(
        Contact.deleted_by_action_id == action.id, Contact.deleted_at.is_not(None)
    )
    rows = list(db.session.execute(trashed))
    restored = _restore_ids(rows, actor=actor)
    action.status = "undone"
    action.undone_at = utcnow()
    db.session.flush()
    return restored


def _restore_ids(rows, *, actor: User) -> int:
    """Take (id, deleted_at) rows out of the trash, with one audit entry each."""
    for start in range(0, len(rows), CHUNK_SIZE):
        part = rows[start : start + CHUNK_SIZE]
        db.session.execute(
            sa.update(Contact)
            .where(Contact.id.in_([row[0] for row in part]))
            .values(deleted_at=None, deleted_by_action_id=None)
            .execution_options(synchronize_session="fetch")
        )
        now = utcnow()
        db.session.execute(
            sa.insert(AuditEntry),
            [
                {
                    "actor_id": actor.id,
                    "action": "contact.restored",
                    "object_type": "contact",
                    "object_id": row[0],
                    "changes": {"deleted_at": [row[1].isoformat(), None]},
                    "created_at": now,
                }
                for row in part
            ],
        )
    return len(rows)


# The trash


def trashed_contacts(user: User):
    """Contacts in the trash that `user` may see; merged-away contacts are not restorable."""
    query = db.select(Contact).where(
        Contact.deleted_at.is_not(None), Contact.merged_into_id.is_(None)
    )
    return scope_contacts(query, user)


def trash_page(user: User, *, after: str = "", size: int = 50):
    """One page of the trash, newest deletion first, and the cursor of the next page."""
    query = trashed_contacts(user)
    if after:
        moment, last_id = _decode_trash_cursor(after)
        query = query.where(sa.tuple_(Contact.deleted_at, Contact.id) < sa.tuple_(moment, last_id))
    query = query.order_by(Contact.deleted_at.desc(), Contact.id.desc()).limit(size + 1)
    contacts = list(db.session.execute(query).unique().scalars())
    next_after = None
    if len(contacts) > size:
        contacts = contacts[:size]
        last = contacts[-1]
        next_after = f"{last.deleted_at.isoformat()}|{last.id}"
    return contacts, next_after


def _decode_trash_cursor(after: str) -> tuple[datetime, int]:
    value, _, last_id = after.rpartition("|")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or not last_id.isdigit():
        raise BulkError("The page marker is not valid.")
    return moment, int(last_id)


def get_trashed(contact_id: int, user: User) -> Contact | None:
    query = trashed_contacts(user).where(Contact.id == contact_id)
    return db.session.execute(query).unique().scalar_one_or_none()


def restore_contact(contact: Contact, *, actor: User) -> None:
    """Take one contact out of the trash and audit it."""
    _restore_ids([(contact.id, contact.deleted_at)], actor=actor)
    db.session.refresh(contact)


def purge_contact(contact: Contact, *, actor: User) -> None:
    """Delete a trashed contact for good (its notes and tag links go with it); audit it."""
    if actor.role != "admin":
        raise BulkError("Only an admin can delete contacts for good.")
    record_change(
        "contact.purged",
        "contact",
        contact.id,
        {"name": [contact.name, None], "deleted_at": [contact.deleted_at.isoformat(), None]},
        actor=actor,
    )
    db.session.delete(contact)
    db.session.flush()


def describe(action: BulkAction) -> str:
    """The result in words: "Tagged 12 contacts with vip."."""
    n = action.total
    contacts = f"{n} contact{'s' if n != 1 else ''}"
    params = action.params or {}
    if action.action == "tag_add":
        return f"Tagged {contacts} with {params.get('tag')}."
    if action.action == "tag_remove":
        return f"Removed the tag {params.get('tag')} from {contacts}."
    if action.action == "status":
        return f"Set {contacts} to {params.get('status')}."
    if action.action == "owner":
        if params.get("owner_id") is None:
            return f"Removed the owner from {contacts}."
        return f"Assigned {contacts} to {params.get('owner')}."
    if action.action == "delete":
        return f"Deleted {contacts}."
    return f"Changed {contacts}."
