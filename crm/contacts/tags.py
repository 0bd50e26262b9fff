"""Tags on contacts: add, remove, suggest, rename and merge. Services flush; views commit."""

from __future__ import annotations

import sqlalchemy as sa

from crm.audit.services import record_change
from crm.contacts.models import Contact, Tag, contact_tags
from crm.extensions import db
from crm.users.models import User

MAX_TAG_LENGTH = 64
SUGGESTIONS = 10


class TagError(ValueError):
    """A tag name or operation that cannot be accepted; `message` is shown to the user."""

    def __init__(self, message: str, *, existing: Tag | None = None):
        super().__init__(message)
        self.message = message
        # The tag a rename collided with, so the page can offer a merge instead.
        self.existing = existing


def clean_tag_name(raw: str | None) -> str:
    """Return the trimmed name, or raise TagError when it is empty or too long."""
    name = (raw or "").strip()
    if not name:
        raise TagError("Enter a tag name.")
    if len(name) > MAX_TAG_LENGTH:
        raise TagError(f"Keep tag names to {MAX_TAG_LENGTH} characters or fewer.")
    return name


def find_tag(name: str) -> Tag | None:
    """Return the tag called `name`, ignoring case (the oldest one if several differ in case)."""
    query = db.select(Tag).where(sa.func.lower(Tag.name) == name.lower()).order_by(Tag.id)
    return db.session.execute(query.limit(1)).scalar_one_or_none()


def get_or_create_tag(raw: str | None) -> Tag:
    """Return the existing tag of that name (any case), or a new one."""
    name = clean_tag_name(raw)
    tag = find_tag(name)
    if tag is None:
        tag = Tag(name=name)
        db.session.add(tag)
        db.session.flush()
    return tag


def _names(tags) -> str:
    return ", ".join(sorted(tag.name for tag in tags))


def add_tag(contact: Contact, raw_name: str | None, *, actor: User) -> Tag:
    """Tag `contact`, reusing an existing tag case-insensitively; audit when it changed."""
    tag = get_or_create_tag(raw_name)
    if tag not in contact.tags:
        before = _names(contact.tags)
        contact.tags.append(tag)
        _audit_tags(contact, before, actor=actor)
    return tag


def remove_tag(contact: Contact, tag: Tag, *, actor: User) -> None:
    """Untag `contact`; audit when it had the tag."""
    if tag in contact.tags:
        before = _names(contact.tags)
        contact.tags.remove(tag)
        _audit_tags(contact, before, actor=actor)


def _audit_tags(contact: Contact, before: str, *, actor: User) -> None:
    db.session.flush()
    changes = {"tags": [before, _names(contact.tags)]}
    record_change("contact.updated", "contact", contact.id, changes, actor=actor)


def suggest_tags(term: str, *, limit: int = SUGGESTIONS) -> list[str]:
    """Existing tag names containing `term` (any case), names starting with it first."""
    term = (term or "").strip()[:MAX_TAG_LENGTH]
    query = db.select(Tag.name)
    if term:
        escaped = term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        lowered = sa.func.lower(Tag.name)
        query = query.where(lowered.like(f"%{escaped}%", escape="\\")).order_by(
            sa.case((lowered.like(f"{escaped}%", escape="\\"), 0), else_=1), Tag.name
        )
    else:
        query = query.order_by(Tag.name)
    return list(db.session.execute(query.limit(limit)).scalars())


def tags_with_counts() -> list[tuple[Tag, int]]:
    """Every tag with how many contacts (not in the trash) carry it, by name."""
    counted = (
        sa.select(contact_tags.c.tag_id, sa.func.count().label("n"))
        .join(Contact, Contact.id == contact_tags.c.contact_id)
        .where(Contact.deleted_at.is_(None))
        .group_by(contact_tags.c.tag_id)
        .subquery()
    )
    query = (
        db.select(Tag, sa.func.coalesce(counted.c.n, 0))
        .outerjoin(counted, counted.c.tag_id == Tag.id)
        .order_by(sa.func.lower(Tag.name), Tag.id)
    )
    return [(tag, n) for tag, n in db.session.execute(query)]


def rename_tag(tag: Tag, raw_name: str | None, *, actor: User) -> Tag:
    """Rename a tag; refuse a name another tag has (any case), pointing to it for a merge."""
    name = clean_tag_name(raw_name)
    if name == tag.name:
        return tag
    existing = find_tag(name)
    if existing is not None and existing.id != tag.id:
        raise TagError(
            f"A tag named “{existing.name}” already exists; merge into it instead.",
            existing=existing,
        )
    old = tag.name
    tag.name = name
    db.session.flush()
    record_change("tag.renamed", "tag", tag.id, {"name": [old, name]}, actor=actor)
    return tag


def merge_tags(source: Tag, target: Tag, *, actor: User) -> int:
    """Move `source`'s contacts to `target` (no duplicates), delete `source`; return moved."""
    if source.id == target.id:
        raise TagError("Choose a different tag to merge into.")
    already = sa.select(contact_tags.c.contact_id).where(contact_tags.c.tag_id == target.id)
    moving = sa.select(contact_tags.c.contact_id, sa.literal(target.id)).where(
        contact_tags.c.tag_id == source.id, contact_tags.c.contact_id.not_in(already)
    )
    # Counted first: drivers do not all report a rowcount for INSERT ... SELECT.
    moved = db.session.execute(
        sa.select(sa.func.count()).select_from(moving.subquery())
    ).scalar_one()
    db.session.execute(sa.insert(contact_tags).from_select(["contact_id", "tag_id"], moving))
    db.session.execute(sa.delete(contact_tags).where(contact_tags.c.tag_id == source.id))
    record_change(
        "tag.merged",
        "tag",
        source.id,
        {"name": [source.name, None], "merged_into": [None, target.name]},
        actor=actor,
    )
    db.session.delete(source)
    db.session.flush()
    # Contacts loaded earlier in this session still list the source tag.
    db.session.expire_all()
    return moved
