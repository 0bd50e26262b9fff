"""Duplicates: the scan over existing contacts, merging two of them, and undoing a merge.

The scan groups contacts three ways, each a GROUP BY ... HAVING count(*) > 1:
- phone: the same E.164 number (through ix_contacts_phone);
- email: the same address; emails are stored lower-case, so this ignores case and still
  uses ix_contacts_email;
- name: the same name ignoring case and surrounding spaces, with *similar* phones: phones
  that end in the same SIMILAR_DIGITS (7) digits but are not all identical (identical ones
  are already a phone group). That catches one number saved with and without its country
  or area code, or under two country codes. No index serves this expression, so it is one
  sequential scan with a hash aggregate (about a second on a million contacts).

Services flush; the calling view commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from crm.audit.services import diff, record_change
from crm.contacts.listing import visible_contacts
from crm.contacts.models import Contact, ContactMerge, Tag
from crm.contacts.registry import move_references, restore_references
from crm.contacts.services import EDITABLE
from crm.database import utcnow
from crm.extensions import db
from crm.users.models import User

MERGE_FIELDS = EDITABLE  # name, phone, email, status, owner_id
KINDS = {
    "phone": "Same phone number",
    "email": "Same email address",
    "name": "Same name, similar phone",
}
GROUPS_PAGE = 20
GROUP_MEMBERS = 10
SIMILAR_DIGITS = 7


@dataclass
class DuplicateGroup:
    kind: str
    key: str
    size: int
    contacts: list[Contact] = field(default_factory=list)


def _last_digits(column, n: int):
    if db.session.get_bind().dialect.name == "postgresql":
        return sa.func.right(column, n)
    return sa.func.substr(column, -n)


def _group_key(kind: str):
    if kind == "phone":
        return Contact.phone
    if kind == "email":
        return Contact.email
    name = sa.func.lower(sa.func.trim(Contact.name), type_=sa.String)
    return name + "|" + _last_digits(Contact.phone, SIMILAR_DIGITS)


def duplicate_groups(
    kind: str, user: User, *, after: str = "", size: int = GROUPS_PAGE
) -> tuple[list[DuplicateGroup], str | None]:
    """One page of duplicate groups of `kind` among the contacts `user` sees; next cursor."""
    if kind not in KINDS:
        raise ValueError(f"unknown duplicate kind {kind!r}")
    key = _group_key(kind)
    query = visible_contacts(user).with_only_columns(key, sa.func.count()).order_by(None)
    if kind == "name":
        query = query.where(sa.func.length(Contact.phone) >= SIMILAR_DIGITS)
        having = sa.and_(sa.func.count() > 1, sa.func.count(sa.distinct(Contact.phone)) > 1)
    else:
        query = query.where(key.is_not(None))
        having = sa.func.count() > 1
    if after:
        query = query.where(key > after)
    query = query.group_by(key).having(having).order_by(key).limit(size + 1)
    found = db.session.execute(query).all()
    next_after = None
    if len(found) > size:
        found = found[:size]
        next_after = found[-1][0]
    groups = {row[0]: DuplicateGroup(kind, row[0], row[1]) for row in found}
    if groups:
        # The first few members of every group on the page, oldest first, in one query.
        rank = sa.func.row_number().over(
            partition_by=key, order_by=(Contact.created_at, Contact.id)
        )
        members = (
            visible_contacts(user)
            .with_only_columns(Contact.id, key.label("key"), rank.label("rank"))
            .where(key.in_(list(groups)))
            .subquery()
        )
        rows = db.session.execute(
            sa.select(Contact, members.c.key)
            .join(members, members.c.id == Contact.id)
            .where(members.c.rank <= GROUP_MEMBERS)
            .order_by(members.c.key, members.c.rank)
        ).all()
        for contact, group_key in rows:
            groups[group_key].contacts.append(contact)
    return list(groups.values()), next_after


def default_choices(survivor: Contact, other: Contact) -> dict[str, int]:
    """Which contact's value each field keeps by default: the survivor's, unless it is empty."""
    return {
        name: other.id
        if getattr(survivor, name) in (None, "") and getattr(other, name) not in (None, "")
        else survivor.id
        for name in MERGE_FIELDS
    }


def _tag_names(tags) -> list[str]:
    return sorted(tag.name for tag in tags)


def merge_contacts(
    survivor: Contact, merged: Contact, values: dict, *, actor: User
) -> ContactMerge:
    """Fold `merged` into `survivor`: chosen values, tags, every registered related row.

    `merged` is soft-deleted and points at the survivor; the ContactMerge row records
    what is needed to undo it.
    """
    if survivor.id == merged.id:
        raise ValueError("A contact cannot be merged into itself.")
    if survivor.deleted_at is not None or merged.deleted_at is not None:
        raise ValueError("A contact in the trash cannot be merged.")
    values = {name: values.get(name, getattr(survivor, name)) for name in MERGE_FIELDS}
    before = {name: getattr(survivor, name) for name in MERGE_FIELDS}
    before["tag_ids"] = sorted(tag.id for tag in survivor.tags)
    merged_tag_ids = sorted(tag.id for tag in merged.tags)
    merged_label = f"{merged.name} (#{merged.id})"

    changes = diff(survivor, values)
    for name in changes:
        setattr(survivor, name, values[name])
    old_tags = _tag_names(survivor.tags)
    survivor.tags = list(survivor.tags) + [t for t in merged.tags if t.id not in before["tag_ids"]]
    if _tag_names(survivor.tags) != old_tags:
        changes["tags"] = [old_tags, _tag_names(survivor.tags)]

    survivor_id, merged_id = survivor.id, merged.id
    moved = move_references(merged_id, survivor_id)  # flushes, then expires the session

    merged = db.session.get(Contact, merged_id)
    deleted_at = utcnow()
    merged.deleted_at = deleted_at
    merged.merged_into_id = survivor_id
    merge = ContactMerge(
        survivor_id=survivor_id,
        merged_id=merged_id,
        actor_id=actor.id if actor is not None else None,
        survivor_before=before,
        merged_tag_ids=merged_tag_ids,
        moved=moved,
    )
    db.session.add(merge)
    db.session.flush()
    moved_summary = ", ".join(f"{name}: {len(ids)}" for name, ids in sorted(moved.items()))
    record_change(
        "contact.merged",
        "contact",
        survivor_id,
        {
            "merged_from": [None, merged_label],
            **changes,
            **({"moved": [None, moved_summary]} if moved else {}),
        },
        actor=actor,
    )
    record_change(
        "contact.merged",
        "contact",
        merged_id,
        {"merged_into_id": [None, survivor_id], "deleted_at": [None, deleted_at.isoformat()]},
        actor=actor,
    )
    return merge


def undo_merge(merge: ContactMerge, *, actor: User) -> Contact:
    """Put both contacts back as they were before `merge`; return the merged contact."""
    if merge.undone_at is not None:
        raise ValueError("This merge was already undone.")
    survivor = db.session.get(Contact, merge.survivor_id)
    merged = db.session.get(Contact, merge.merged_id)
    if survivor.merged_into_id is not None:
        # Its rows now sit on a third contact; undo that later merge first.
        raise ValueError(f"{survivor.name} was itself merged since; undo that merge first.")
    before = merge.survivor_before
    values = {name: before.get(name) for name in MERGE_FIELDS}
    changes = diff(survivor, values)
    for name in changes:
        setattr(survivor, name, values[name])
    old_tags = _tag_names(survivor.tags)
    tag_ids = before.get("tag_ids", [])
    # Tags deleted since the merge cannot come back; the rest do.
    survivor.tags = (
        list(db.session.execute(db.select(Tag).where(Tag.id.in_(tag_ids))).scalars())
        if tag_ids
        else []
    )
    if _tag_names(survivor.tags) != old_tags:
        changes["tags"] = [old_tags, _tag_names(survivor.tags)]

    survivor_id, merged_id = survivor.id, merged.id
    restore_references(merge.moved, survivor_id, merged_id)  # flushes, then expires

    merged = db.session.get(Contact, merged_id)
    merge = db.session.get(ContactMerge, merge.id)
    deleted_at = merged.deleted_at
    merged.deleted_at = None
    merged.merged_into_id = None
    merge.undone_at = utcnow()
    db.session.flush()
    record_change(
        "contact.merge_undone",
        "contact",
        survivor_id,
        {"merged_from": [f"{merged.name} (#{merged_id})", None], **changes},
        actor=actor,
    )
    record_change(
        "contact.merge_undone",
        "contact",
        merged_id,
        {
            "merged_into_id": [survivor_id, None],
            "deleted_at": [deleted_at.isoformat() if deleted_at else None, None],
        },
        actor=actor,
    )
    return merged
