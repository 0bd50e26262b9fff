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
from sqlalchemy.dialects.postgresql import aggregate_order_by
from werkzeug.datastructures import MultiDict

from crm.auth.access import scope_contacts, sees_every_contact
from crm.contacts.models import STATUSES, Contact, SavedView, Tag, contact_tags
from crm.database import escape_like
from crm.extensions import db
from crm.users.models import User

# Newest first is the default: the order contacts were added (their id, which follows
# created_at: the app sets it on insert). It is also the order each backend's search index
# can hand back a page in, so a search reads about one page of matches however common.
SORTS = {
    "created": "Newest first",
    "name": "Name",
    "last_contact": "Last contact",
}
DEFAULT_SORT = "created"
MIN_SEARCH = 3
# PostgreSQL only (migration 0008): name, email and phone joined and lower-cased, stored
# by the database. Not a model column: SQLite searches its FTS5 table instead.
PG_SEARCH_TEXT = sa.literal_column("contacts.search_text", sa.Text)
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
    sort: str = DEFAULT_SORT

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
            sort=args.get("sort") if args.get("sort") in SORTS else DEFAULT_SORT,
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
        if state["sort"] != DEFAULT_SORT:
            args.append(("sort", state["sort"]))
        return args

    def query_string(self, **changes) -> str:
        return urlencode(self.to_args(**changes))

    @property
    def searching(self) -> bool:
        return len(self.q) >= MIN_SEARCH

    @property
    def all_tags(self) -> bool:
        """Whether a contact must carry every chosen tag (not just one)."""
        return len(self.tags) > 1 and self.tag_mode == "all"

    @property
    def filtered(self) -> bool:
        return bool(self.searching or self.status or self.tags or self.owner)


def matching(state: ListQuery, user: User, *, search=None):
    """Visible contacts matching the search and filters of `state` (unordered).

    `search` replaces the search condition (the list page picks a plan per term).
    """
    query = visible_contacts(user)
    if search is not None:
        query = query.where(search)
    elif state.searching:
        query = query.where(search_condition(state.q))
    # Values are named parameters (`page_params` gives them): `page` keeps statements.
    if state.status:
        query = query.where(
            Contact.status.in_(sa.bindparam("statuses", list(state.status), expanding=True))
        )
    if state.owner == "none":
        query = query.where(Contact.owner_id.is_(None))
    elif state.owner:
        query = query.where(Contact.owner_id == sa.bindparam("owner_id", int(state.owner)))
    if state.tags:
        tagged = (
            sa.select(contact_tags.c.contact_id)
            .join(Tag, Tag.id == contact_tags.c.tag_id)
            .where(Tag.name.in_(sa.bindparam("tag_names", list(state.tags), expanding=True)))
        )
        if state.all_tags:
            tagged = tagged.group_by(contact_tags.c.contact_id).having(
                sa.func.count() == sa.bindparam("tag_count", len(state.tags))
            )
        query = query.where(Contact.id.in_(tagged))
    return query


def _parse_term(term: str) -> tuple[list[str], bool]:
    """The words to look for, and whether they are the digits of a phone number."""
    digits = re.sub(r"\D", "", term)
    if PHONE_LIKE.fullmatch(term) and len(digits) >= MIN_SEARCH:
        # A national number typed with its trunk 0 (07700 900123) is stored without it.
        variants = [digits] + ([digits[1:]] if digits.startswith("0") and len(digits) > 3 else [])
        return variants, True
    return [w for w in term.split() if len(w) >= MIN_SEARCH] or [term], False


def search_condition(term: str):
    """Infix search over name, email and phone digits, through the backend's index.

    A term made of digits and phone punctuation matches on the phone's digits, however
    it was typed: `+1 (415) 555-26` and `415 55526` both find +14155552671.
    """
    words, phone = _parse_term(term)
    if db.session.get_bind().dialect.name == "postgresql":
        return _pg_text_test(PG_SEARCH_TEXT, words, phone)
    return Contact.id.in_(_fts_hits(words, phone))


def _term_params(words: list[str], phone: bool) -> dict[str, str]:
    """Each word as a LIKE pattern, under the name the statements give it."""
    if phone:
        return {f"term_{i}": f"%{v}%" for i, v in enumerate(words)}
    return {f"term_{i}": f"%{escape_like(w)}%" for i, w in enumerate(words)}


def _terms(words: list[str], phone: bool) -> list:
    """The patterns of `_term_params` as named parameters, in the order of `words`."""
    return [sa.bindparam(name, value) for name, value in _term_params(words, phone).items()]


def _fts_match(words: list[str], phone: bool) -> str:
    if phone:
        return " OR ".join(f'phone : "{v}"' for v in words)
    return " AND ".join('"' + w.replace('"', '""') + '"' for w in words)


def _fts_hits(words: list[str], phone: bool, limit: int | None = None):
    match = _fts_match(words, phone)
    hits = (
        sa.select(sa.literal_column("rowid").label("rowid"))
        .select_from(sa.table("contacts_fts"))
        .where(sa.text("contacts_fts MATCH :match").bindparams(match=match))
    )
    return hits.limit(limit) if limit else hits


def _like_condition(words: list[str], phone: bool):
    """The same search as a row-by-row test, for terms so common a scan finds 50 fast."""
    if phone:
        return sa.or_(*[Contact.phone.like(term) for term in _terms(words, phone)])
    return sa.and_(
        *[
            sa.or_(
                *[
                    column.like(term, escape="\\")
                    for column in (Contact.name, Contact.email, Contact.phone)
                ]
            )
            for term in _terms(words, phone)
        ]
    )


# Above this many matches a term is common: walking the sort index and testing each row
# finds a page sooner than collecting and sorting every match (`gmail` at a million).
COMMON_TERM = 20_000


def _page_queries(state: ListQuery, user: User, size: int, dialect: str) -> list[tuple]:
    """The filtered queries whose union is the page, each with its row limit.

    A search has two plans: collect the index's hits and sort them (a rare term), or walk
    the sort index testing each row (a common term, where 50 matches come soon). Neither
    planner can choose per term, so both go in one statement and the count of index hits
    sets one plan's LIMIT to zero; both backends read a LIMIT before they start scanning.
    """
    if not state.searching:
        return [(matching(state, user), size + 1)]
    words, phone = _parse_term(state.q)
    if dialect == "sqlite":
        if not state.q.isascii():  # LIKE folds ASCII case only; keep the index's semantics
            return [(matching(state, user), size + 1)]
        hits = _fts_hits(words, phone, COMMON_TERM).subquery()
        scan = _like_condition(words, phone)
    else:
        condition = search_condition(state.q)
        hits = sa.select(Contact.id.label("rowid")).where(condition).limit(COMMON_TERM)
        hits = hits.subquery()
        scan = condition
    many = sa.select(sa.func.count()).select_from(hits).scalar_subquery()
    rare = matching(state, user, search=Contact.id.in_(sa.select(hits.c.rowid)))
    common = matching(state, user, search=scan)
    return [
        (rare, sa.case((many < COMMON_TERM, size + 1), else_=0)),
        (common, sa.case((many >= COMMON_TERM, size + 1), else_=0)),
    ]


# Keyset pages. Each sort has a key that is unique (it ends with the id) and a cursor
# that encodes the last row's key; a page seeks past it through an index, never OFFSET.


def encode_cursor(state: ListQuery, contact: Contact) -> str:
    if state.sort == "name":
        return f"{contact.name}|{contact.id}"
    if state.sort == "created":
        return str(contact.id)
    value = contact.last_contact_at
    return f"{value.isoformat() if value else ''}|{contact.id}"


def _decode_cursor(state: ListQuery, after: str):
    value, _, last_id = after.rpartition("|")
    if not last_id.isdigit():
        abort(400, "The page marker is not valid.")
    if state.sort == "name":
        return value, int(last_id)
    if state.sort == "created":
        if value:
            abort(400, "The page marker is not valid.")
        return int(last_id)
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
    """One page of matching contacts in the chosen order, and the cursor of the next.

    One statement: the keys of the page come from index range scans (UNION ALL of the
    plans that apply), then the contacts, their owners and tags are read by id.
    """
    cursor = _decode_cursor(state, after) if after else None
    dialect = _dialect()
    params = page_params(state, user, cursor, dialect)
    statement = page_statement(state, user, cursor, size, dialect, params)
    if state.searching and state.sort == "created" and dialect == "postgresql":
        # The covering index is wider than the primary key, so at the default page
        # cost (4, a disk seek) the planner prefers walking the key and reading each
        # row from the table, about twice the work when both are in memory, as a
        # searched table is. For this transaction only.
        db.session.execute(sa.text("SET LOCAL random_page_cost = 1.1"))
    rows = db.session.connection().execute(statement, params).all()
    next_after = None
    if len(rows) > size:
        rows = rows[:size]
        next_after = encode_cursor(state, rows[-1])
    result = [ListRow(*row) for row in rows]
    if dialect != "postgresql":
        for row in result:
            row.tag_names.sort()
    return result, next_after


# Built page statements, per process, by shape: building one costs a search more than
# its SQL does. Within a shape only named parameters vary (`page_params` gives them), so
# a kept statement serves every request of that shape; tests/test_contacts_list.py builds
# each shape twice from different values and compares what is left.
_PAGE_STATEMENTS: dict[tuple, sa.Select] = {}
_PAGE_STATEMENTS_KEPT = 512


def page_statement(
    state: ListQuery, user: User, cursor, size: int, dialect: str, params: dict
) -> sa.Select:
    """The page's statement, built for the first request of its shape and then kept;
    `params` are this request's `page_params`, which the statement must all take."""
    shape = _page_shape(state, user, cursor, size, dialect)
    statement = _PAGE_STATEMENTS.get(shape)
    if statement is None:
        statement = build_page_statement(state, user, cursor, size, dialect)
        _check_named(statement, params, dialect)
        if len(_PAGE_STATEMENTS) >= _PAGE_STATEMENTS_KEPT:
            _PAGE_STATEMENTS.clear()
        _PAGE_STATEMENTS[shape] = statement
    return statement


def _page_shape(state: ListQuery, user: User, cursor, size: int, dialect: str) -> tuple:
    """What decides a page statement's SQL; everything else is a named parameter."""
    words, phone = _parse_term(state.q) if state.searching else ([], False)
    if cursor is None:
        cursor_shape = None
    elif state.sort == "last_contact":
        cursor_shape = "dated" if cursor[0] is not None else "undated"
    else:
        cursor_shape = "past"
    return (
        dialect,
        size,
        state.sort,
        state.searching,
        state.searching and state.q.isascii(),
        phone,
        len(words),
        bool(state.status),
        bool(state.tags),
        state.all_tags,
        state.owner if state.owner in ("", "none") else "coach",
        sees_every_contact(user),
        cursor_shape,
        COMMON_TERM,
        SCAN_BUDGET,
    )


def page_params(state: ListQuery, user: User, cursor, dialect: str) -> dict:
    """The values of every named parameter a page statement may hold (extra ones are
    ignored by the execution)."""
    params: dict = {} if sees_every_contact(user) else {"viewer_id": user.id}
    if state.status:
        params["statuses"] = list(state.status)
    if state.owner not in ("", "none"):
        params["owner_id"] = int(state.owner)
    if state.tags:
        params["tag_names"] = list(state.tags)
        params["tag_count"] = len(state.tags)
    if state.searching:
        words, phone = _parse_term(state.q)
        params.update(_term_params(words, phone))
        if dialect == "sqlite":
            params["match"] = _fts_match(words, phone)
    if cursor is not None:
        params.update(_cursor_params(state, cursor))
    return params


def _check_named(statement: sa.Select, params: dict, dialect: str) -> None:
    """Refuse to keep a statement holding a named parameter `page_params` does not pass:
    its value would be this request's for every later one."""
    from sqlalchemy.dialects import postgresql, sqlite

    compiled = statement.compile(
        dialect=(postgresql if dialect == "postgresql" else sqlite).dialect()
    )
    missing = {bind.key for bind in compiled.binds.values() if not bind.unique} - set(params)
    if missing:
        raise RuntimeError(f"page statement parameters without values: {sorted(missing)}")


def _cursor_params(state: ListQuery, cursor) -> dict:
    if state.sort == "created":
        return {"cursor_id": cursor}
    value, last_id = cursor
    if state.sort == "name":
        return {"cursor_name": value, "cursor_id": last_id}
    return {"cursor_id": last_id} | ({} if value is None else {"cursor_moment": value})


def _cursor_binds(state: ListQuery, cursor):
    """The decoded cursor with named parameters (those of `_cursor_params`) for values."""
    if cursor is None:
        return None
    if state.sort == "created":
        return sa.bindparam("cursor_id", cursor, Contact.id.type)
    value, last_id = cursor
    last_id = sa.bindparam("cursor_id", last_id, Contact.id.type)
    if state.sort == "name":
        return sa.bindparam("cursor_name", value, Contact.name.type), last_id
    if value is None:
        return None, last_id
    return sa.bindparam("cursor_moment", value, Contact.last_contact_at.type), last_id


def build_page_statement(state: ListQuery, user: User, cursor, size: int, dialect: str):
    """The statement of `page`, with the values of `page_params` as its parameters."""
    cursor = _cursor_binds(state, cursor)
    if state.searching and state.sort == "created":
        if dialect == "postgresql":
            keys = _pg_search(state, user, cursor, size + 1, newest=True).subquery()
        else:
            keys = _sqlite_newest_search(state, user, cursor, size + 1).subquery()
    elif state.searching and state.sort == "name" and dialect == "postgresql":
        keys = _pg_search(state, user, cursor, size + 1, newest=False).subquery()
    else:
        arms = []
        for query, limit in _page_queries(state, user, size, dialect):
            arms += _keyset_arms(query, state.sort, cursor, limit)
        keys = (sa.union_all(*arms) if len(arms) > 1 else arms[0]).subquery()
    if state.sort == "name":
        order = (Contact.name, Contact.id)
    elif state.sort == "created":
        order = (Contact.id.desc(),)
    else:
        order = (keys.c.part, Contact.last_contact_at.desc(), Contact.id.desc())
    return (
        sa.select(
            *ROW_COLUMNS,
            sa.func.coalesce(User.name, User.email).label("owner_name"),
            _tag_names(dialect).label("tag_names"),
        )
        .join(keys, keys.c.id == Contact.id)
        .outerjoin(User, User.id == Contact.owner_id)
        .order_by(*order)
        .limit(size + 1)
    )


# A list row is read as plain columns, not as an ORM object: the list shows 50 of them
# per request, and identity-mapped instances cost more than the rest of the page.
ROW_COLUMNS = (
    Contact.id,
    Contact.name,
    Contact.phone,
    Contact.email,
    Contact.status,
    Contact.last_contact_at,
)


@dataclass(slots=True)
class ListRow:
    """What a list row shows; `row_of` gives the same for a loaded Contact."""

    id: int
    name: str
    phone: str | None
    email: str | None
    status: str
    last_contact_at: datetime | None
    owner_name: str | None
    tag_names: list[str]


def row_of(contact: Contact) -> ListRow:
    return ListRow(
        *(getattr(contact, column.key) for column in ROW_COLUMNS),
        owner_name=contact.owner.display_name if contact.owner else None,
        tag_names=[tag.name for tag in contact.tags],
    )


def _tag_names(dialect: str):
    """Each row's tag names as a JSON list, read with the row: no second query per page.

    In name order on PostgreSQL; SQLite (before 3.44) cannot order inside an aggregate,
    so `page` sorts them (its BINARY collation is Python's order).
    """
    if dialect == "postgresql":
        names = sa.func.coalesce(
            sa.func.json_agg(aggregate_order_by(Tag.name, Tag.name)), sa.text("'[]'::json")
        )
    else:
        names = sa.func.json_group_array(Tag.name)
    tagged = contact_tags.join(Tag, Tag.id == contact_tags.c.tag_id)
    subquery = sa.select(names).select_from(tagged).where(contact_tags.c.contact_id == Contact.id)
    return sa.type_coerce(subquery.scalar_subquery(), sa.JSON)


# How many contacts, in the page's order, a search reads before it asks the index instead.
SCAN_BUDGET = 20_000


def _sqlite_newest_search(state: ListQuery, user: User, cursor, limit: int):
    """Keys of the next page of a search, newest first, on SQLite.

    FTS5 hands back its matches in rowid order, which is the contacts' id, so walking
    them from the newest and joining each to its contact stops after one page: the cost
    is the same for a term with a hundred matches or a hundred thousand.
    """
    words, phone = _parse_term(state.q)
    fts = sa.table("contacts_fts", sa.column("rowid"))
    query = (
        matching(state, user, search=sa.true())
        .join(fts, fts.c.rowid == Contact.id)
        .where(sa.text("contacts_fts MATCH :match").bindparams(match=_fts_match(words, phone)))
    )
    if cursor is not None:
        query = query.where(fts.c.rowid < cursor)
    return (
        query.with_only_columns(Contact.id, sa.literal(0).label("part"))
        .order_by(fts.c.rowid.desc())
        .limit(limit)
    )


def _pg_search(state: ListQuery, user: User, cursor, limit: int, *, newest: bool):
    """Keys of the next page of a search on PostgreSQL, newest first or in name order.

    First read up to SCAN_BUDGET live contacts in the page's order, testing each: a term
    matching more than one contact in 400 fills the page from there. Only when that finds
    too few does the trigram index collect every match for a top-N sort. That plan runs
    under LIMIT 0 (PostgreSQL does not start a plan under a zero limit, nor a CTE nobody
    reads) unless the scan fell short, so one statement does either.

    Newest first, the scan walks `ix_contacts_search_live` backwards: ids with the stored
    `search_text`, so it never reads the table and tests each row with one LIKE. Matches
    are spread evenly along the id (an id says nothing of a name), so its cost is bounded
    by how rare a term is. In name order it walks the covering name index and tests the
    columns (the stored text is not in that index): a term common overall can be absent
    from long stretches (a surname among first names that cluster), the slow case, and
    why newest first is the default.
    """
    words, phone = _parse_term(state.q)
    query = matching(state, user, search=sa.true())
    if newest:
        key, order = Contact.id, (Contact.id.desc(),)
        if cursor is not None:
            query = query.where(Contact.id < cursor)
        window = query.with_only_columns(Contact.id, PG_SEARCH_TEXT.label("search_text"))
    else:
        key, order = Contact.name, (Contact.name, Contact.id)
        if cursor:
            query = query.where(sa.tuple_(Contact.name, Contact.id) > sa.tuple_(*cursor))
        window = query.with_only_columns(Contact.id, Contact.name, Contact.email, Contact.phone)
    window = window.order_by(*order).limit(SCAN_BUDGET).subquery("window")
    if newest:
        test = _pg_text_test(window.c.search_text, words, phone)
    else:
        test = _row_test(window.c, words, phone)
    scan = (
        sa.select(window.c.id, *([] if newest else [window.c.name]))
        .where(test)
        .order_by(*([window.c.id.desc()] if newest else [window.c.name, window.c.id]))
        .limit(limit)
        .cte("scan")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    found = sa.select(sa.func.count()).select_from(scan).scalar_subquery()
    # Every match with its key, in one pass over the trigram index's heap pages; the
    # fence keeps the planner from walking the order's index instead, a path the scan
    # above has just found too long.
    hits = (
        matching(state, user, search=search_condition(state.q))
        .with_only_columns(Contact.id, key.label("key"))
        .cte("hits")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    if newest:
        after_cursor = hits.c.id < cursor if cursor is not None else sa.true()
        hit_order = (hits.c.id.desc(),)
    else:
        after_cursor = (
            sa.tuple_(hits.c.key, hits.c.id) > sa.tuple_(*cursor) if cursor else sa.true()
        )
        hit_order = (hits.c.key, hits.c.id)
    indexed = (
        sa.select(hits.c.id)
        .where(after_cursor)
        .order_by(*hit_order)
        .limit(sa.case((found < limit, limit), else_=0))
        .subquery("indexed")
    )
    return sa.union_all(
        sa.select(scan.c.id, sa.literal(0).label("part")).where(found >= limit),
        sa.select(indexed.c.id, sa.literal(0).label("part")),
    )


def _pg_text_test(text, words: list[str], phone: bool):
    """The search as a test of the stored `search_text` (lower-cased: LIKE, not ILIKE).

    The trigram index answers this test; so does a row by row scan, at one LIKE a row.
    """
    if phone:
        return sa.or_(*[text.like(term) for term in _terms(words, phone)])
    return sa.and_(*[text.like(sa.func.lower(term), escape="\\") for term in _terms(words, phone)])


def _row_test(columns, words: list[str], phone: bool):
    """The search as a test of one row's columns, with the trigram index's meaning.

    For scans along an index that holds the columns but not `search_text` (name order).
    Emails are stored in lower case and phones are digits, so only the name needs folding.
    (A word has no spaces, so it cannot match across the joins.)
    """
    if phone:
        return sa.or_(*[columns.phone.like(term) for term in _terms(words, phone)])
    tests = []
    for term in _terms(words, phone):
        pattern = sa.func.lower(term)
        tests.append(
            sa.or_(
                sa.func.lower(columns.name).like(pattern, escape="\\"),
                columns.email.like(pattern, escape="\\"),
                columns.phone.like(pattern, escape="\\"),
            )
        )
    return sa.and_(*tests)


def _dialect() -> str:
    return db.session.get_bind().dialect.name


def _keyset_arms(query, sort: str, cursor, limit) -> list:
    """Selects of (id, part) for the next `limit` rows past `cursor`, in index order."""

    def arm(q, order, part: int):
        sub = q.with_only_columns(Contact.id).order_by(*order).limit(limit).subquery()
        return sa.select(sub.c.id, sa.literal(part).label("part"))

    if sort == "name":
        if cursor:
            query = query.where(sa.tuple_(Contact.name, Contact.id) > sa.tuple_(*cursor))
        return [arm(query, (Contact.name, Contact.id), 0)]
    if sort == "created":
        if cursor is not None:
            query = query.where(Contact.id < cursor)
        return [arm(query, (Contact.id.desc(),), 0)]
    # Most recent contact first, never-contacted last. A row comparison cannot seek past
    # NULLs, so the dated and the undated rows are two range scans.
    moment, last_id = cursor if cursor else (None, None)
    dated = query.where(Contact.last_contact_at.is_not(None))
    undated = query.where(Contact.last_contact_at.is_(None))
    arms = []
    if not cursor or moment is not None:
        if cursor:
            dated = dated.where(
                sa.tuple_(Contact.last_contact_at, Contact.id) < sa.tuple_(moment, last_id)
            )
        arms.append(arm(dated, (Contact.last_contact_at.desc(), Contact.id.desc()), 0))
    else:
        undated = undated.where(Contact.id < last_id)
    arms.append(arm(undated, (Contact.id.desc(),), 1))
    return arms


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
