"""Which contacts a user may see, and the list's filters, search, sort and keyset pages.

Everything that selects contacts for a user (the list, its count, export, bulk actions
over "all matching") starts from `visible_contacts` or `matching`, so coach scoping and
the trash are applied in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode

import sqlalchemy as sa
from flask import abort
from werkzeug.datastructures import MultiDict

from crm.auth.access import scope_contacts
from crm.contacts.models import STATUSES, Contact, SavedView, Tag, contact_tags
from crm.extensions import db
from crm.users.models import User

SORTS = {
    "name": "Name",
    "last_contact": "Last contact",
    "created": "Newest",
}
MIN_SEARCH = 3
# Keep in step with migration 0002_contacts, which indexes the same expression.
PG_SEARCH_EXPRESSION = (
    "(contacts.name || ' ' || coalesce(contacts.email, '') || ' ' || coalesce(contacts.phone, ''))"
)
PHONE_LIKE = re.compile(r"[\d\s()+.\-/]+")


def visible_contacts(user: User):
    """Contacts `user` may see: not in the trash, and a coach's own clients only."""
    return scope_contacts(db.select(Contact).where(Contact.deleted_at.is_(None)), user)


def get_visible_or_404(contact_id: int, user: User) -> Contact:
    """The contact, or 404 when it does not exist, is in the trash or is not `user`'s to see."""
    query = visible_contacts(user).where(Contact.id == contact_id)
    contact = db.session.execute(query).unique().scalar_one_or_none()
    if contact is None:
        abort(404)
    return contact


@dataclass
class ListQuery:
    """The list's state, as it travels in the URL: search, filters and sort."""

    q: str = ""
    status: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    tag_mode: str = "any"
    owner: str = ""  # "", "none" or a coach's id
    sort: str = "name"

    @classmethod
    def from_args(cls, args: MultiDict) -> ListQuery:
        """Read the list state from query arguments, dropping values that make no sense."""
        owner = (args.get("owner") or "").strip()
        if owner not in ("", "none") and not owner.isdigit():
            owner = ""
        return cls(
            q=(args.get("q") or "").strip()[:200],
            status=[s for s in args.getlist("status") if s in STATUSES],
            tags=sorted({t.strip() for t in args.getlist("tag") if t.strip()}),
            tag_mode="all" if args.get("tag_mode") == "all" else "any",
            owner=owner,
            sort=args.get("sort") if args.get("sort") in SORTS else "name",
        )

    def to_args(self, **changes) -> list[tuple[str, str]]:
        """The state as query arguments, defaults left out so URLs stay short."""
        state = {**self.__dict__, **changes}
        args: list[tuple[str, str]] = []
        if state["q"]:
            args.append(("q", state["q"]))
        args += [("status", s) for s in state["status"]]
        args += [("tag", t) for t in state["tags"]]
        if len(state["tags"]) > 1 and state["tag_mode"] == "all":
            args.append(("tag_mode", "all"))
        if state["owner"]:
            args.append(("owner", state["owner"]))
        if state["sort"] != "name":
            args.append(("sort", state["sort"]))
        return args

    def query_string(self, **changes) -> str:
        return urlencode(self.to_args(**changes))

    @property
    def searching(self) -> bool:
        return len(self.q) >= MIN_SEARCH

    @property
    def filtered(self) -> bool:
        return bool(self.searching or self.status or self.tags or self.owner)


def matching(state: ListQuery, user: User):
    """Visible contacts matching the search and filters of `state` (unordered)."""
    query = visible_contacts(user)
    if state.searching:
        query = query.where(search_condition(state.q))
    if state.status:
        query = query.where(Contact.status.in_(state.status))
    if state.owner == "none":
        query = query.where(Contact.owner_id.is_(None))
    elif state.owner:
        query = query.where(Contact.owner_id == int(state.owner))
    if state.tags:
        tagged = (
            sa.select(contact_tags.c.contact_id)
            .join(Tag, Tag.id == contact_tags.c.tag_id)
            .where(Tag.name.in_(state.tags))
        )
        if state.tag_mode == "all" and len(state.tags) > 1:
            tagged = tagged.group_by(contact_tags.c.contact_id).having(
                sa.func.count() == len(state.tags)
            )
        query = query.where(Contact.id.in_(tagged))
    return query


def search_condition(term: str):
    """Infix search over name, email and phone digits, through the backend's index.

    A term made of digits and phone punctuation matches on the phone's digits, however
    it was typed: `+1 (415) 555-26` and `415 55526` both find +14155552671.
    """
    digits = re.sub(r"\D", "", term)
    phone_search = bool(PHONE_LIKE.fullmatch(term)) and len(digits) >= MIN_SEARCH
    words = [w for w in term.split() if len(w) >= MIN_SEARCH] or [term]
    if db.session.get_bind().dialect.name == "postgresql":
        expression = sa.literal_column(PG_SEARCH_EXPRESSION)
        if phone_search:
            variants = [digits] + (
                [digits[1:]] if digits.startswith("0") and len(digits) > 3 else []
            )
            return sa.or_(*[expression.like(f"%{v}%") for v in variants])
        return sa.and_(*[expression.ilike(f"%{_escape_like(w)}%", escape="\\") for w in words])
    if phone_search:
        variants = [digits] + ([digits[1:]] if digits.startswith("0") and len(digits) > 3 else [])
        match = " OR ".join(f'phone : "{v}"' for v in variants)
    else:
        match = " AND ".join('"' + w.replace('"', '""') + '"' for w in words)
    fts = sa.select(sa.literal_column("rowid")).select_from(sa.table("contacts_fts"))
    return Contact.id.in_(fts.where(sa.text("contacts_fts MATCH :match").bindparams(match=match)))


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# Keyset pages. Each sort has a key that is unique (it ends with the id) and a cursor
# that encodes the last row's key; a page seeks past it through an index, never OFFSET.


def encode_cursor(state: ListQuery, contact: Contact) -> str:
    if state.sort == "name":
        return f"{contact.name}|{contact.id}"
    value = contact.last_contact_at if state.sort == "last_contact" else contact.created_at
    return f"{value.isoformat() if value else ''}|{contact.id}"


def _decode_cursor(state: ListQuery, after: str):
    value, _, last_id = after.rpartition("|")
    if not last_id.isdigit():
        abort(400, "The page marker is not valid.")
    if state.sort == "name":
        return value, int(last_id)
    if not value:
        return None, int(last_id)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        abort(400, "The page marker is not valid.")
    if moment.tzinfo is None:
        abort(400, "The page marker is not valid.")
    return moment, int(last_id)


def page(state: ListQuery, user: User, *, after: str = "", size: int = 50):
    """One page of matching contacts in the chosen order, and the cursor of the next."""
    query = matching(state, user)
    cursor = _decode_cursor(state, after) if after else None
    if state.sort == "name":
        key = sa.tuple_(Contact.name, Contact.id)
        if cursor:
            query = query.where(key > sa.tuple_(*cursor))
        query = query.order_by(Contact.name, Contact.id)
    elif state.sort == "created":
        key = sa.tuple_(Contact.created_at, Contact.id)
        if cursor:
            if cursor[0] is None:
                abort(400, "The page marker is not valid.")
            query = query.where(key < sa.tuple_(*cursor))
        query = query.order_by(Contact.created_at.desc(), Contact.id.desc())
    else:
        query = _last_contact_order(query, cursor, size)
    contacts = list(db.session.execute(query.limit(size + 1)).unique().scalars())
    next_after = None
    if len(contacts) > size:
        contacts = contacts[:size]
        next_after = encode_cursor(state, contacts[-1])
    return contacts, next_after


def _last_contact_order(query, cursor, size: int):
    """Most recent contact first, never-contacted last; one statement either side of the gap.

    A row comparison cannot seek past NULLs, so the dated rows and the undated rows are
    two index range scans joined with UNION ALL.
    """
    moment, last_id = cursor if cursor else (None, None)
    dated = query.where(Contact.last_contact_at.is_not(None))
    undated = query.where(Contact.last_contact_at.is_(None))
    if cursor and moment is not None:
        dated = dated.where(
            sa.tuple_(Contact.last_contact_at, Contact.id) < sa.tuple_(moment, last_id)
        )
    elif cursor:
        dated = None
        undated = undated.where(Contact.id < last_id)
    parts = []
    if dated is not None:
        first = (
            dated.with_only_columns(Contact.id)
            .order_by(Contact.last_contact_at.desc(), Contact.id.desc())
            .limit(size + 1)
            .subquery()
        )
        parts.append(sa.select(first.c.id, sa.literal(0).label("part")))
    rest = undated.with_only_columns(Contact.id).order_by(Contact.id.desc()).limit(size + 1)
    rest = rest.subquery()
    parts.append(sa.select(rest.c.id, sa.literal(1).label("part")))
    keys = sa.union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    return (
        sa.select(Contact)
        .join(keys, keys.c.id == Contact.id)
        .order_by(keys.c.part, Contact.last_contact_at.desc(), Contact.id.desc())
    )


def count(state: ListQuery, user: User) -> int:
    """How many contacts match; cheap enough to load lazily after the page."""
    query = matching(state, user).with_only_columns(sa.func.count()).order_by(None)
    return db.session.execute(query).scalar_one()


def filter_options(user: User) -> dict:
    """Coaches, tags and this user's saved views for the filter bar, in one query."""
    coaches = sa.select(
        sa.literal("coach").label("kind"),
        User.id,
        sa.func.coalesce(User.name, User.email).label("label"),
        sa.null().label("query"),
    ).where(User.role == "coach", User.active.is_(True))
    tags = sa.select(sa.literal("tag"), Tag.id, Tag.name, sa.null())
    views = sa.select(sa.literal("view"), SavedView.id, SavedView.name, SavedView.query).where(
        SavedView.user_id == user.id
    )
    rows = db.session.execute(sa.union_all(coaches, tags, views)).all()
    options: dict[str, list] = {"coaches": [], "tags": [], "saved_views": []}
    plural = {"coach": "coaches", "tag": "tags", "view": "saved_views"}
    for kind, id_, label, query in sorted(rows, key=lambda r: (r.kind, r.label.lower())):
        options[plural[kind]].append({"id": id_, "label": label, "query": query})
    return options
