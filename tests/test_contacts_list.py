"""The contacts list: keyset pages, search, filters, sort, saved views, count and export."""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import timedelta

import pytest
from sqlalchemy import event

from crm.contacts.models import Contact, SavedView, Tag
from crm.database import utcnow
from crm.extensions import db as _db

NEXT_RE = re.compile(r'id="load-more">\s*<td colspan="8">\s*<a href="([^"]+)"')
ROW_RE = re.compile(r'<tr id="contact-(\d+)"')


def row_ids(page: str) -> list[int]:
    return [int(i) for i in ROW_RE.findall(page)]


def next_link(page: str) -> str | None:
    match = NEXT_RE.search(page)
    return html.unescape(match.group(1)) if match else None


def walk(client, url: str, *, htmx: bool = False) -> list[int]:
    """Follow "load more" from `url` to the end; return every row id in order."""
    seen: list[int] = []
    while url:
        response = client.htmx_get(url) if htmx else client.get(url)
        assert response.status_code == 200
        page = response.get_data(as_text=True)
        seen += row_ids(page)
        url = next_link(page)
    return seen


def test_keyset_pages_cover_every_contact_once_when_names_tie(client, login_as, db):
    login_as("staff")
    db.session.add_all([Contact(name="Same Name") for _ in range(70)])
    db.session.add_all([Contact(name=f"Person {i:03}") for i in range(40)])
    db.session.commit()
    expected = [
        c.id for c in db.session.scalars(db.select(Contact).order_by(Contact.name, Contact.id))
    ]
    assert walk(client, "/contacts/?sort=name") == expected
    assert walk(client, "/contacts/?sort=name", htmx=True) == expected


def test_the_list_opens_newest_first_and_pages_by_id(client, login_as, db):
    """Newest first is the order contacts were added, whatever created_at says."""
    login_as("staff")
    contacts = [Contact(name=f"Person {i:03}") for i in range(120)]
    db.session.add_all(contacts)
    db.session.commit()
    newest = sorted((c.id for c in contacts), reverse=True)
    assert walk(client, "/contacts/") == newest
    assert walk(client, "/contacts/?sort=created", htmx=True) == newest
    page = client.get("/contacts/").get_data(as_text=True)
    assert '<option value="created" selected>Newest first</option>' in page
    assert "sort=" not in (next_link(page) or "")  # the default stays out of the URL


def test_last_contact_sort_pages_through_ties_and_blanks(client, login_as, db):
    login_as("staff")
    moment = utcnow().replace(microsecond=0)
    contacts = [
        Contact(name=f"Dated {i}", last_contact_at=moment - timedelta(days=i % 3))
        for i in range(60)
    ]
    contacts += [Contact(name=f"Never {i}") for i in range(45)]
    db.session.add_all(contacts)
    db.session.commit()
    by_last = sorted(
        contacts,
        key=lambda c: (
            c.last_contact_at is None,
            -(c.last_contact_at or moment).timestamp(),
            -c.id,
        ),
    )
    assert walk(client, "/contacts/?sort=last_contact") == [c.id for c in by_last]
    assert walk(client, "/contacts/?sort=last_contact", htmx=True) == [c.id for c in by_last]


def test_a_bad_page_marker_is_a_400(client, login_as):
    login_as("staff")
    assert client.get("/contacts/?after=garbage").status_code == 400
    assert client.get("/contacts/?sort=created&after=yesterday|4").status_code == 400
    assert client.get("/contacts/?sort=last_contact&after=yesterday|4").status_code == 400


@pytest.mark.parametrize(
    "typed",
    ["+1 (415) 555-26", "415 55526", "555-2671", "(415)555", "4155552671"],
)
def test_search_finds_a_phone_by_its_digits_however_typed(client, login_as, make_contact, typed):
    login_as("staff")
    wanted = make_contact("Phone Person", phone="+14155552671")
    make_contact("Other Person", phone="+442079460958")
    response = client.htmx_get("/contacts/", query_string={"q": typed})
    assert row_ids(response.get_data(as_text=True)) == [wanted.id]


def test_search_matches_inside_names_and_emails_ignoring_case(client, login_as, make_contact):
    login_as("staff")
    alice = make_contact("Alice Marchetti", email="alice@example.org")
    bob = make_contact("Bob Stone", email="bstone@rapport.test")
    make_contact("Carol King")
    page = lambda q: row_ids(client.get("/contacts/", query_string={"q": q}).get_data(as_text=True))  # noqa: E731
    assert page("RCHET") == [alice.id]
    assert page("rapport.te") == [bob.id]
    assert page("ston") == [bob.id]
    assert page("alice marc") == [alice.id]


def test_search_under_three_characters_says_so_and_does_not_filter(client, login_as, make_contact):
    login_as("staff")
    make_contact("Alice")
    make_contact("Bob")
    response = client.htmx_get("/contacts/?q=al")
    body = response.get_data(as_text=True)
    assert "Type at least 3 characters" in body
    assert len(row_ids(body)) == 2


def test_filters_by_status_tags_and_owner_live_in_the_url(client, login_as, make_user, db):
    login_as("staff")
    coach = make_user("coach", name="Coach Kim")
    vip, new = Tag(name="vip"), Tag(name="new")
    both = Contact(name="Both", tags=[vip, new], owner_id=coach.id)
    only_vip = Contact(name="Only VIP", tags=[vip])
    blocked = Contact(name="Blocked", status="blocked", tags=[new])
    db.session.add_all([both, only_vip, blocked])
    db.session.commit()

    def ids(query: str) -> set[int]:
        return set(row_ids(client.get(f"/contacts/?{query}").get_data(as_text=True)))

    assert ids("tag=vip&tag=new") == {both.id, only_vip.id, blocked.id}
    assert ids("tag=vip&tag=new&tag_mode=all") == {both.id}
    assert ids("status=blocked") == {blocked.id}
    assert ids("status=active&tag=new") == {both.id}
    assert ids(f"owner={coach.id}") == {both.id}
    assert ids("owner=none") == {only_vip.id, blocked.id}
    # The page shows the state it was given, so a bookmarked view reopens as it was.
    page = client.get("/contacts/?status=blocked&tag=new&sort=created").get_data(as_text=True)
    assert re.search(r'value="blocked" checked', page)
    assert re.search(r'<option value="new" selected>', page)
    assert re.search(r'<option value="created" selected>', page)


def test_filter_change_with_htmx_returns_the_results_only(client, login_as, make_contact):
    login_as("staff")
    make_contact("Alice")
    response = client.htmx_get("/contacts/?status=active")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "<html" not in body and 'id="contact-results"' in body
    assert "contact-filters" not in body  # the filter form keeps its focus and input
    assert "HX-Request" in response.headers["Vary"]


def test_count_is_loaded_lazily_and_counts_the_filter(client, login_as, make_contact):
    login_as("staff")
    for name in ("Ann", "Anna", "Bob"):
        make_contact(name)
    page = client.get("/contacts/?q=ann").get_data(as_text=True)
    assert 'hx-get="/contacts/count?q=ann"' in page
    fragment = client.htmx_get("/contacts/count?q=ann").get_data(as_text=True)
    assert "2 contacts match" in fragment and "<html" not in fragment
    # Without JavaScript the same count is a link away.
    assert "2 contacts match" in client.get("/contacts/?q=ann&count=1").get_data(as_text=True)
    assert "3 contacts" in client.htmx_get("/contacts/count").get_data(as_text=True)


def test_saved_views_belong_to_their_user(client, login_as, make_user, db):
    user = login_as("staff")
    response = client.form(
        "/contacts/views", {"name": "Blocked VIPs", "query": "status=blocked&tag=vip"}
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/contacts/?status=blocked&tag=vip"
    page = client.get("/contacts/").get_data(as_text=True)
    assert '<a href="/contacts/?status=blocked&amp;tag=vip">Blocked VIPs</a>' in page

    fragment = client.form("/contacts/views", {"name": "", "query": ""}, htmx=True)
    assert fragment.status_code == 422
    assert "Give the view a name." in fragment.get_data(as_text=True)

    view = db.session.execute(db.select(SavedView).filter_by(user_id=user.id)).scalar_one()
    other = make_user("staff")
    theirs = SavedView(user_id=other.id, name="Theirs", query="")
    db.session.add(theirs)
    db.session.commit()
    assert "Theirs" not in client.get("/contacts/").get_data(as_text=True)
    assert client.form(f"/contacts/views/{theirs.id}/delete").status_code == 404
    gone = client.form(f"/contacts/views/{view.id}/delete", htmx=True)
    assert gone.status_code == 200 and "Blocked VIPs" not in gone.get_data(as_text=True)


def test_coach_sees_only_their_clients_in_list_search_count_and_export(
    client, login_as, make_user, make_contact
):
    coach = login_as("coach")
    other = make_user("coach")
    mine = make_contact("Mine Smith", phone="+14155550101", owner_id=coach.id)
    make_contact("Theirs Smith", phone="+14155550102", owner_id=other.id)
    make_contact("Nobody Smith")
    assert row_ids(client.get("/contacts/").get_data(as_text=True)) == [mine.id]
    assert row_ids(client.get("/contacts/?q=smith").get_data(as_text=True)) == [mine.id]
    assert row_ids(client.get(f"/contacts/?owner={other.id}").get_data(as_text=True)) == []
    assert "1 contact matches" in client.htmx_get("/contacts/count?q=smith").get_data(as_text=True)
    exported = client.get("/contacts/export.csv", buffered=True).get_data(as_text=True)
    assert "Mine Smith" in exported and "Theirs" not in exported and "Nobody" not in exported


def test_export_streams_the_filter_with_formula_cells_neutralized(client, login_as, db):
    login_as("staff")
    vip = Tag(name="vip")
    db.session.add_all(
        [
            Contact(
                name='=HYPERLINK("http://evil.test","click")', phone="+14155552671", tags=[vip]
            ),
            Contact(name="@SUM(A1)", email="sum@example.com", tags=[vip]),
            Contact(name="Not exported"),
        ]
    )
    db.session.commit()
    response = client.get("/contacts/export.csv?tag=vip", buffered=True)
    assert response.status_code == 200
    assert "Content-Length" not in response.headers  # streamed, not built in memory
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True).lstrip("\ufeff"))))
    assert [row["name"] for row in rows] == [
        '\'=HYPERLINK("http://evil.test","click")',
        "'@SUM(A1)",
    ]
    assert rows[0]["phone"] == "+14155552671"  # a phone number stays dialable
    assert rows[0]["tags"] == "vip"


def test_names_render_escaped(client, login_as, make_contact):
    login_as("staff")
    make_contact("<script>alert(1)</script>")
    page = client.get("/contacts/").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def _statements(app, client, url: str, **kwargs) -> list[str]:
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")):
            seen.append(statement)

    engine = _db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        response = client.get(url, **kwargs)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert response.status_code == 200
    return seen


@pytest.mark.parametrize("rows", [5, 120])
def test_a_page_costs_at_most_four_queries_whatever_its_size(
    app, client, login_as, make_user, db, rows
):
    login_as("staff")
    coach = make_user("coach")
    tags = [Tag(name=f"tag{i}") for i in range(3)]
    db.session.add_all(
        [Contact(name=f"C {i}", owner_id=coach.id, tags=tags[: i % 4]) for i in range(rows)]
    )
    db.session.add(SavedView(user_id=coach.id, name="x", query=""))
    db.session.commit()
    # The top bar's unread-notification count is cached in Redis for a while (one query
    # per user now and then, crm/bookings/notifications.py); count only the page's own.
    client.get("/bookings/notifications")
    full = _statements(app, client, "/contacts/?sort=name")
    assert len(full) <= 4, full
    fragment = _statements(app, client, "/contacts/?status=active", headers={"HX-Request": "true"})
    assert len(fragment) <= 4, fragment
    # The last-contact order reads two index ranges, still in one statement.
    assert len(_statements(app, client, "/contacts/?sort=last_contact")) <= 4


@pytest.mark.parametrize("sort", ["created", "name"])
def test_every_search_plan_pages_through_the_same_rows(client, login_as, db, monkeypatch, sort):
    """A search has a cheap plan (walk the page's order, test each row) and a fallback
    (collect the index's matches, sort them); whichever runs, the pages are the same."""
    from crm.contacts import listing, views

    login_as("staff")
    johnsons = [
        Contact(name=f"{first} Johnson", email=f"{first.lower()}@mail.test") for first in "HCFABGED"
    ]
    others = [Contact(name=f"Other {i}", email=f"o{i}@mail.test") for i in range(12)]
    db.session.add_all(johnsons[:4] + others + johnsons[4:])
    db.session.add(Contact(name="Zed Other", phone="+14155550199"))
    db.session.commit()
    gone = johnsons[2]
    gone.deleted_at = utcnow()
    db.session.commit()
    live = [c for c in johnsons if c is not gone]
    if sort == "name":
        expected = [c.id for c in sorted(live, key=lambda c: (c.name, c.id))]
    else:
        expected = sorted((c.id for c in live), reverse=True)
    url = f"/contacts/?sort={sort}&q="
    assert walk(client, url + "hnso") == expected
    assert walk(client, url + "HNSO", htmx=True) == expected
    assert len(walk(client, url + "555-0199")) == 1
    # Lower the bars so these terms count as common (SQLite's name order) and the scans
    # read too few rows (PostgreSQL): the other plans must agree, page after page.
    monkeypatch.setattr(listing, "COMMON_TERM", 2)
    monkeypatch.setattr(views, "PAGE_SIZE", 3)
    assert walk(client, url + "hnso") == expected
    monkeypatch.setattr(listing, "SCAN_BUDGET", 2)
    assert walk(client, url + "hnso") == expected
    assert walk(client, url + "555-0199") == walk(client, "/contacts/?q=4155550199")
    monkeypatch.setattr(listing, "SCAN_BUDGET", 10_000)
    assert walk(client, url + "hnso", htmx=True) == expected


def test_search_finds_an_edited_contact_by_its_new_values_in_every_plan(
    client, login_as, db, monkeypatch
):
    """What search reads (SQLite's FTS table, PostgreSQL's stored search text) follows
    every edit, whichever plan answers."""
    from crm.contacts import listing

    login_as("staff")
    edited = Contact(name="Marta Oldname", email="marta@old.test", phone="+14155550111")
    db.session.add_all([edited, Contact(name="Bystander", email="by@stander.test")])
    db.session.commit()
    response = client.form(
        f"/contacts/{edited.id}",
        {"name": "ÉLODIE Newname", "email": "elodie@new.test", "phone": "+1 415 555 0222"},
    )
    assert response.status_code in (302, 303)
    for budget in (10_000, 2):  # the scan finds it, or too few rows and the index does
        monkeypatch.setattr(listing, "SCAN_BUDGET", budget)
        for sort in ("created", "name"):
            found = lambda q: walk(client, f"/contacts/?sort={sort}&q={q}")  # noqa: E731, B023
            for old in ("oldname", "old.test", "555-0111"):
                assert found(old) == [], (budget, sort, old)
            for new in ("élodie", "ÉLOD", "newna", "new.test", "555 0222"):
                assert found(new) == [edited.id], (budget, sort, new)


def test_a_coach_searches_only_their_own_clients(client, login_as, make_user, db):
    coach = login_as("coach")
    other = make_user("coach")
    mine = [Contact(name=f"Mine Johnson {i}", owner_id=coach.id) for i in range(3)]
    db.session.add_all(
        mine + [Contact(name=f"Theirs Johnson {i}", owner_id=other.id) for i in range(3)]
    )
    db.session.commit()
    for sort in ("created", "name", "last_contact"):
        found = walk(client, f"/contacts/?sort={sort}&q=johns")
        assert sorted(found) == sorted(c.id for c in mine), sort


def test_a_row_swaps_in_its_tag_editor_on_demand(client, login_as, make_user, db):
    coach = login_as("coach")
    mine = Contact(name="Mine", owner_id=coach.id, tags=[Tag(name="vip")])
    theirs = Contact(name="Theirs", owner_id=make_user("coach").id)
    db.session.add_all([mine, theirs])
    db.session.commit()
    row = client.get("/contacts/").get_data(as_text=True)
    assert f'hx-get="/contacts/{mine.id}/tags"' in row
    assert f"/contacts/{mine.id}/tags/" not in row  # no remove forms until asked
    editor = client.htmx_get(f"/contacts/{mine.id}/tags").get_data(as_text=True)
    assert f'action="/contacts/{mine.id}/tags"' in editor and "Remove tag vip" in editor
    plain = client.get(f"/contacts/{mine.id}/tags")
    assert plain.status_code == 303 and plain.headers["Location"] == f"/contacts/{mine.id}"
    assert client.htmx_get(f"/contacts/{theirs.id}/tags").status_code == 404


@pytest.mark.parametrize("htmx", [False, True])
def test_each_row_shows_its_own_tags_in_name_order(client, login_as, db, htmx):
    login_as("staff")
    zeta, alpha, mid = Tag(name="zeta"), Tag(name="alpha"), Tag(name="mid")
    tagged = Contact(name="Tagged Tess", tags=[zeta, alpha, mid])
    other = Contact(name="Other Otto", tags=[mid])
    bare = Contact(name="Bare Bea")
    db.session.add_all([tagged, other, bare])
    db.session.commit()
    url = "/contacts/?q=tess" if htmx else "/contacts/"
    page = (client.htmx_get(url) if htmx else client.get(url)).get_data(as_text=True)

    def tags_of(contact) -> list[str]:
        cell = re.search(rf'id="tags-{contact.id}">(.*?)</span></td>', page, re.S).group(1)
        return re.findall(r'<span class="tag">([^<]*)</span>', cell)

    assert tags_of(tagged) == ["alpha", "mid", "zeta"]
    if not htmx:
        assert tags_of(other) == ["mid"]
        assert tags_of(bare) == [] and 'Edit the tags of Bare Bea">add tag' in page
        assert f'<a href="/contacts/{bare.id}">Bare Bea</a>' in page


def test_htmx_filtering_pushes_the_clean_url(client, login_as, make_contact):
    login_as("staff")
    make_contact("Ada Lovelace")
    response = client.htmx_get("/contacts/?q=&status=active&tag_mode=any&owner=&sort=created")
    assert response.headers["HX-Push-Url"] == "/contacts/?status=active"
    assert "HX-Push-Url" not in client.get("/contacts/?status=active").headers


def test_the_bulk_bar_offers_every_coach_after_a_search_or_filter(client, login_as, make_user):
    """htmx swaps in the results with their bulk bar: its owner list must still be full."""
    login_as("staff")
    coach = make_user("coach", name="Zelda Coach")
    option = f'<option value="{coach.id}">Zelda Coach</option>'
    assert option in client.get("/contacts/?q=zzz").get_data(as_text=True)
    for url in ("/contacts/?q=zzz", "/contacts/?status=active"):
        results = client.htmx_get(url).get_data(as_text=True)
        assert 'id="bulk-form"' in results and option in results, url


def test_kept_page_statements_serve_each_request_its_own_values(client, login_as, make_user, db):
    """A page statement is built once per shape and kept: the search term, filters, the
    coach whose clients are listed and the page marker of every later request of that
    shape must still be its own."""
    staff = make_user("staff")
    coach, other = make_user("coach"), make_user("coach")
    vip, new = Tag(name="vip"), Tag(name="new")
    alpha = Contact(name="Alpha One", status="active", tags=[vip], owner_id=coach.id)
    bravo = Contact(name="Bravo One", status="inactive", tags=[new], owner_id=other.id)
    db.session.add_all([alpha, bravo])
    db.session.add_all(
        [
            Contact(name=f"Alpha {i:02}", phone=f"+1415555{i:04}", owner_id=coach.id)
            for i in range(60)
        ]
    )
    db.session.commit()

    def ids(query: str, *, htmx: bool = False) -> set[int]:
        response = (
            client.htmx_get(f"/contacts/?{query}") if htmx else client.get(f"/contacts/?{query}")
        )
        return set(row_ids(response.get_data(as_text=True)))

    def sign_in(user) -> None:
        with client.session_transaction() as session:
            session["_user_id"] = str(user.id)

    sign_in(staff)
    for htmx in (False, True):
        assert ids("q=alpha+one", htmx=htmx) == {alpha.id}
        assert ids("q=bravo+one", htmx=htmx) == {bravo.id}
        assert ids("q=555-0007", htmx=htmx) == {
            db.session.scalar(db.select(Contact.id).where(Contact.phone == "+14155550007"))
        }
        assert ids("q=one&status=active", htmx=htmx) == {alpha.id}
        assert ids("q=one&status=inactive", htmx=htmx) == {bravo.id}
        assert ids("sort=name&tag=vip", htmx=htmx) == {alpha.id}
        assert ids("sort=name&tag=new", htmx=htmx) == {bravo.id}
        assert ids(f"sort=last_contact&owner={other.id}", htmx=htmx) == {bravo.id}
        assert ids(f"sort=last_contact&owner={coach.id}&q=one", htmx=htmx) == {alpha.id}
    # Two coaches in turn, through the same kept statements.
    for sort in ("created", "name", "last_contact"):
        sign_in(coach)
        assert bravo.id not in set(walk(client, f"/contacts/?sort={sort}&q=one"))
        assert len(walk(client, f"/contacts/?sort={sort}&q=alpha")) == 61
        sign_in(other)
        assert walk(client, f"/contacts/?sort={sort}&q=one") == [bravo.id]
        assert walk(client, f"/contacts/?sort={sort}&q=alpha") == []
    # Page markers: the second page past two different first pages.
    sign_in(staff)
    everyone = walk(client, "/contacts/?sort=name&q=alpha")
    assert len(everyone) == len(set(everyone)) == 61


@pytest.mark.parametrize(
    "first, second",
    [
        ({"q": "alpha"}, {"q": "bravo"}),
        ({"q": "alpha beta"}, {"q": "gamma delta"}),
        ({"q": "415 555"}, {"q": "212-444"}),
        ({"q": "alpha", "status": ["active"]}, {"q": "bravo", "status": ["blocked", "inactive"]}),
        ({"tag": ["vip"]}, {"tag": ["new", "old"]}),
        ({"tag": ["a", "b"], "tag_mode": "all"}, {"tag": ["c", "d", "e"], "tag_mode": "all"}),
        ({"owner": "3"}, {"owner": "9"}),
        ({"sort": "name", "q": "alp"}, {"sort": "name", "q": "bra"}),
        ({"sort": "last_contact", "q": "alpha"}, {"sort": "last_contact", "q": "brav"}),
        ({"q": "élan"}, {"q": "ñoño"}),
    ],
)
@pytest.mark.parametrize("role", ["staff", "coach"])
@pytest.mark.parametrize("paged", [False, True])
def test_a_page_statement_differs_from_another_of_its_shape_only_in_named_values(
    app, db, make_user, first, second, role, paged
):
    """What `page` keeps per shape: building it from other values of the same shape must
    give the same SQL and the same unnamed values; only `page_params` may differ."""
    from werkzeug.datastructures import MultiDict

    from crm.contacts import listing

    users = [make_user(role), make_user(role)]
    dialect = db.session.get_bind().dialect
    built = []
    for args, user, marker in zip((first, second), users, ("Alpha|7", "Bravo|9"), strict=True):
        state = listing.ListQuery.from_args(
            MultiDict(
                [
                    (k, v)
                    for k, values in args.items()
                    for v in (values if isinstance(values, list) else [values])
                ]
            )
        )
        if state.sort == "name":
            after = marker
        elif state.sort == "created":
            after = marker.split("|")[1]
        else:
            after = ("2026-11-02T10:00:00+00:00|5", "2026-10-01T08:30:00+00:00|8")[len(built)]
        cursor = listing._decode_cursor(state, after) if paged else None
        shape = listing._page_shape(state, user, cursor, 50, dialect.name)
        statement = listing.build_page_statement(state, user, cursor, 50, dialect.name)
        compiled = statement.compile(dialect=dialect)
        named = listing.page_params(state, user, cursor, dialect.name)
        unnamed = {
            name: bind.effective_value for bind, name in compiled.bind_names.items() if bind.unique
        }
        assert {b.key for b in compiled.binds.values() if not b.unique} <= set(named)
        built.append((shape, str(compiled), unnamed, named))
    (shape_a, sql_a, unnamed_a, named_a), (shape_b, sql_b, unnamed_b, named_b) = built
    assert shape_a == shape_b
    assert sql_a == sql_b
    assert unnamed_a == unnamed_b
    assert named_a != named_b
