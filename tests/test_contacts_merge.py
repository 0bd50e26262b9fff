"""Duplicates: the scan, merging two contacts with a preview, and undoing a merge."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from crm.audit.models import AuditEntry
from crm.contacts.models import (
    Contact,
    ContactImport,
    ContactImportRow,
    ContactMerge,
    Note,
    Tag,
)
from crm.contacts.registry import contact_source
from crm.database import utcnow

# A stand-in for a later domain's table that points at contacts (messages, bookings...).
_metadata = sa.MetaData()
calls = sa.Table(
    "test_merge_calls",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("contact_id", sa.Integer),
    sa.Column("summary", sa.String(100)),
)


@pytest.fixture
def calls_table(db):
    """A table of a 'later domain', registered as a contact reference for the test."""
    _metadata.create_all(db.session.connection())
    with contact_source("test_calls", reference=calls.c.contact_id):
        yield calls


def fresh(db, model, id_):
    db.session.expire_all()
    return db.session.get(model, id_)


def tag(db, name):
    found = db.session.execute(db.select(Tag).filter_by(name=name)).scalar_one_or_none()
    if found is None:
        found = Tag(name=name)
        db.session.add(found)
        db.session.flush()
    return found


def make_pair(db, make_contact, make_user):
    coach_a, coach_b = make_user("coach", name="Coach A"), make_user("coach", name="Coach B")
    older = make_contact(
        "Ann Smith",
        phone="+14155552671",
        email=None,
        status="active",
        owner_id=coach_a.id,
        created_at=utcnow() - timedelta(days=10),
    )
    newer = make_contact(
        "Ann Smith-Jones",
        phone="+14155550134",
        email="ann@example.org",
        status="inactive",
        owner_id=coach_b.id,
    )
    older.tags = [tag(db, "vip"), tag(db, "shared")]
    newer.tags = [tag(db, "shared"), tag(db, "spring")]
    db.session.add_all(
        [
            Note(contact_id=older.id, body="Older note"),
            Note(contact_id=newer.id, body="Newer note 1"),
            Note(contact_id=newer.id, body="Newer note 2"),
        ]
    )
    upload = ContactImport(filename="a.csv", content=b"x", region="US")
    db.session.add(upload)
    db.session.flush()
    db.session.add(
        ContactImportRow(import_id=upload.id, row_number=2, outcome="created", contact_id=newer.id)
    )
    db.session.commit()
    return older, newer, coach_a, coach_b


def snapshot(db, contact_id):
    """Everything a merge may touch on one contact, for exact before/after comparison."""
    db.session.expire_all()
    contact = db.session.get(Contact, contact_id)
    note_ids = db.session.execute(
        db.select(Note.id, Note.body, Note.updated_at).filter_by(contact_id=contact_id)
    ).all()
    import_rows = db.session.execute(
        db.select(ContactImportRow.id).filter_by(contact_id=contact_id)
    ).scalars()
    call_ids = db.session.execute(
        sa.select(calls.c.id).where(calls.c.contact_id == contact_id)
    ).scalars()
    return {
        "fields": {
            f: getattr(contact, f)
            for f in ("name", "phone", "email", "status", "owner_id", "deleted_at")
        },
        "merged_into_id": contact.merged_into_id,
        "tags": sorted(t.name for t in contact.tags),
        "notes": sorted(note_ids),
        "import_rows": sorted(import_rows),
        "calls": sorted(call_ids),
    }


def test_merge_carries_everything_and_undo_restores_it(
    client, login_as, make_user, make_contact, db, calls_table
):
    staff = login_as("staff")
    older, newer, coach_a, coach_b = make_pair(db, make_contact, make_user)
    db.session.execute(
        calls.insert(),
        [
            {"contact_id": newer.id, "summary": "Booked a call"},
            {"contact_id": newer.id, "summary": "Follow-up"},
            {"contact_id": older.id, "summary": "Intro"},
        ],
    )
    db.session.commit()
    before_older, before_newer = snapshot(db, older.id), snapshot(db, newer.id)

    preview = client.get(f"/contacts/merge?ids={newer.id}&ids={older.id}")
    assert preview.status_code == 200
    page = preview.get_data(as_text=True)
    # The older contact survives by default; an empty field defaults to the other's value.
    assert re.search(rf'name="survivor" value="{older.id}" checked', page)
    assert re.search(rf'name="take_email" value="{newer.id}" checked', page)
    assert re.search(rf'name="take_name" value="{older.id}" checked', page)

    response = client.form(
        "/contacts/merge",
        {
            "ids": [older.id, newer.id],
            "survivor": str(older.id),
            "take_name": str(older.id),
            "take_phone": str(newer.id),
            "take_email": str(newer.id),
            "take_status": str(older.id),
            "take_owner_id": str(newer.id),
        },
    )
    assert response.status_code == 303
    assert response.headers["Location"] == f"/contacts/{older.id}"

    after = snapshot(db, older.id)
    assert after["fields"]["name"] == "Ann Smith"
    assert after["fields"]["phone"] == "+14155550134"
    assert after["fields"]["email"] == "ann@example.org"
    assert after["fields"]["status"] == "active"
    assert after["fields"]["owner_id"] == coach_b.id
    assert after["tags"] == ["shared", "spring", "vip"]
    assert sorted(n[1] for n in after["notes"]) == ["Newer note 1", "Newer note 2", "Older note"]
    assert after["import_rows"] == before_newer["import_rows"]
    assert after["calls"] == sorted(before_older["calls"] + before_newer["calls"])
    # Moving a note is not editing it.
    moved_note = [n for n in after["notes"] if n[1] == "Newer note 1"][0]
    assert moved_note in before_newer["notes"]

    gone = snapshot(db, newer.id)
    assert gone["fields"]["deleted_at"] is not None and gone["merged_into_id"] == older.id
    assert gone["notes"] == [] and gone["import_rows"] == [] and gone["calls"] == []
    assert client.get(f"/contacts/{newer.id}").status_code == 404

    merge = db.session.execute(db.select(ContactMerge)).scalar_one()
    assert merge.actor_id == staff.id
    assert sorted(merge.moved) == ["import_rows", "notes", "test_calls"]
    entries = {
        e.object_id: e
        for e in db.session.execute(db.select(AuditEntry).filter_by(action="contact.merged"))
        .scalars()
        .all()
    }
    assert entries[older.id].changes["phone"] == ["+14155552671", "+14155550134"]
    assert entries[older.id].changes["owner_id"] == [coach_a.id, coach_b.id]
    assert entries[older.id].changes["tags"] == [["shared", "vip"], ["shared", "spring", "vip"]]
    assert entries[newer.id].changes["merged_into_id"] == [None, older.id]

    page = client.get(f"/contacts/{older.id}").get_data(as_text=True)
    assert "Ann Smith-Jones was merged into this contact" in page
    assert f'action="/contacts/merges/{merge.id}/undo"' in page
    assert "Newer note 2" in page

    response = client.form(f"/contacts/merges/{merge.id}/undo")
    assert response.status_code == 303
    assert snapshot(db, older.id) == before_older
    assert snapshot(db, newer.id) == before_newer
    assert fresh(db, ContactMerge, merge.id).undone_at is not None
    undone = db.session.execute(
        db.select(AuditEntry).filter_by(action="contact.merge_undone")
    ).scalars()
    assert sorted(e.object_id for e in undone) == sorted([older.id, newer.id])
    page = client.get(f"/contacts/{older.id}").get_data(as_text=True)
    assert "Merge undone" in page and "Undo merge" not in page

    again = client.form(f"/contacts/merges/{merge.id}/undo", follow_redirects=True)
    assert "This merge was already undone." in again.get_data(as_text=True)
    assert snapshot(db, older.id) == before_older


def test_on_merge_hook_chooses_which_rows_move(client, login_as, make_contact, db):
    """A table with a unique key picks the rows that may move; the others stay for undo."""
    _metadata.create_all(db.session.connection())
    login_as("staff")
    a, b = make_contact("A"), make_contact("B")
    db.session.execute(
        calls.insert(),
        [
            {"id": 1, "contact_id": a.id, "summary": "whatsapp"},
            {"id": 2, "contact_id": b.id, "summary": "whatsapp"},  # would clash with row 1
            {"id": 3, "contact_id": b.id, "summary": "sms"},
        ],
    )
    db.session.commit()

    def movable(survivor_id, merged_id):
        taken = sa.select(calls.c.summary).where(calls.c.contact_id == survivor_id)
        query = sa.select(calls.c.id).where(
            calls.c.contact_id == merged_id, calls.c.summary.not_in(taken)
        )
        return db.session.execute(query).scalars().all()

    def owners():
        query = sa.select(calls.c.id, calls.c.contact_id).order_by(calls.c.id)
        return dict(db.session.execute(query).all())

    with contact_source("test_channels", reference=calls.c.contact_id, on_merge=movable):
        client.form("/contacts/merge", {"ids": [a.id, b.id], "survivor": str(a.id)})
        assert owners() == {1: a.id, 2: b.id, 3: a.id}
        merge = db.session.execute(db.select(ContactMerge)).scalar_one()
        assert merge.moved["test_channels"] == [3]
        client.form(f"/contacts/merges/{merge.id}/undo")
        assert owners() == {1: a.id, 2: b.id, 3: b.id}


def test_choosing_the_newer_contact_as_survivor(client, login_as, make_user, make_contact, db):
    login_as("admin")
    older, newer, *_ = make_pair(db, make_contact, make_user)
    response = client.form(
        "/contacts/merge", {"ids": [older.id, newer.id], "survivor": str(newer.id)}
    )
    assert response.headers["Location"] == f"/contacts/{newer.id}"
    survivor = fresh(db, Contact, newer.id)
    assert survivor.name == "Ann Smith-Jones"  # unspecified fields keep the survivor's value
    assert sorted(t.name for t in survivor.tags) == ["shared", "spring", "vip"]
    assert fresh(db, Contact, older.id).merged_into_id == newer.id


@pytest.mark.parametrize(
    "query, status, message",
    [
        ("ids=1", 400, "Choose exactly two different contacts to merge."),
        ("ids=1&ids=1", 400, "Choose exactly two different contacts to merge."),
        ("ids=a&ids=b", 400, "Choose exactly two different contacts to merge."),
        ("ids={a}&ids=999999", 404, None),
    ],
)
def test_merge_preview_needs_two_visible_contacts(
    client, login_as, make_contact, db, query, status, message
):
    login_as("staff")
    a = make_contact("A")
    response = client.get("/contacts/merge?" + query.format(a=a.id))
    assert response.status_code == status
    if message:
        assert message in response.get_data(as_text=True)


def test_merge_rejects_a_survivor_outside_the_pair(client, login_as, make_contact, db):
    login_as("staff")
    a, b, c = make_contact("A"), make_contact("B"), make_contact("C")
    response = client.form("/contacts/merge", {"ids": [a.id, b.id], "survivor": str(c.id)})
    assert response.status_code == 400
    assert "Choose which of the two contacts survives" in response.get_data(as_text=True)
    response = client.form(
        "/contacts/merge", {"ids": [a.id, b.id], "survivor": str(a.id), "take_name": str(c.id)}
    )
    assert response.status_code == 400
    assert fresh(db, Contact, b.id).deleted_at is None


def test_coach_merges_only_their_own_clients(client, login_as, make_user, make_contact, db):
    other = make_user("coach")
    coach = login_as("coach")
    mine = make_contact("Mine", owner_id=coach.id)
    mine_too = make_contact("Mine too", owner_id=coach.id)
    theirs = make_contact("Theirs", owner_id=other.id)
    assert client.get(f"/contacts/merge?ids={mine.id}&ids={theirs.id}").status_code == 404
    response = client.form(
        "/contacts/merge", {"ids": [mine.id, theirs.id], "survivor": str(mine.id)}
    )
    assert response.status_code == 404
    assert fresh(db, Contact, theirs.id).deleted_at is None
    response = client.form(
        "/contacts/merge", {"ids": [mine.id, mine_too.id], "survivor": str(mine.id)}
    )
    assert response.status_code == 303
    assert fresh(db, Contact, mine_too.id).merged_into_id == mine.id


def test_coach_gets_404_undoing_another_coachs_merge(client, login_as, make_user, make_contact, db):
    other = make_user("coach")
    a = make_contact("A", owner_id=other.id)
    b = make_contact("B", owner_id=other.id)
    login_as("staff")
    client.form("/contacts/merge", {"ids": [a.id, b.id], "survivor": str(a.id)})
    merge = db.session.execute(db.select(ContactMerge)).scalar_one()
    login_as("coach")
    assert client.form(f"/contacts/merges/{merge.id}/undo").status_code == 404
    assert client.form("/contacts/merges/999999/undo").status_code == 404
    assert fresh(db, ContactMerge, merge.id).undone_at is None
    assert fresh(db, Contact, b.id).deleted_at is not None


def group_names(page, kind):
    section = page[page.index(f'id="duplicates-{kind}"') :]
    section = section[: section.index("</section>")]
    return re.findall(r'<a href="/contacts/\d+">([^<]+)</a>', section)


def test_duplicates_finds_each_kind_and_ignores_the_trash(client, login_as, make_contact, db):
    login_as("staff")
    make_contact("Phone One", phone="+14155552671")
    make_contact("Phone Two", phone="+14155552671")
    make_contact("Mail One", email="same@example.org")
    make_contact("Mail Two", email="same@example.org")
    make_contact("Lee Park", phone="+14155550134")
    make_contact(" lee park", phone="+16505550134")  # same last 7 digits, other area code
    make_contact("Lee Park", phone="+14155559999")  # same name, different phone: not similar
    make_contact("Trash One", phone="+442079460958")
    make_contact("Trash Two", phone="+442079460958", deleted_at=utcnow())
    make_contact("Alone", phone="+14155550000", email="alone@example.org")

    page = client.get("/contacts/duplicates").get_data(as_text=True)
    assert group_names(page, "phone") == ["Phone One", "Phone Two"]
    assert group_names(page, "email") == ["Mail One", "Mail Two"]
    assert group_names(page, "name") == ["Lee Park", " lee park"]
    assert "Trash" not in page and "Alone" not in page
    assert "/contacts/merge?ids=" in page


def test_duplicates_for_a_coach_are_among_their_own_clients(
    client, login_as, make_user, make_contact, db
):
    other = make_user("coach")
    coach = login_as("coach")
    make_contact("Mine", phone="+14155552671", owner_id=coach.id)
    make_contact("Theirs", phone="+14155552671", owner_id=other.id)
    make_contact("My A", email="x@example.org", owner_id=coach.id)
    make_contact("My B", email="x@example.org", owner_id=coach.id)
    page = client.get("/contacts/duplicates").get_data(as_text=True)
    assert group_names(page, "phone") == []
    assert group_names(page, "email") == ["My A", "My B"]
    assert "Theirs" not in page


@pytest.mark.parametrize("htmx", [False, True])
def test_duplicates_show_more(client, login_as, make_contact, db, htmx):
    login_as("staff")
    for i in range(23):
        for name in ("First", "Second"):
            make_contact(f"{name} {i:02d}", phone=f"+1415555{i:04d}")
    page = client.get("/contacts/duplicates").get_data(as_text=True)
    assert len(group_names(page, "phone")) == 40  # 20 groups of 2
    more = re.search(r'hx-get="([^"]+part=groups)"', page).group(1).replace("&amp;", "&")
    plain = re.search(r'href="([^"]+after=[^"#]+)#duplicates-phone"', page).group(1)
    if htmx:
        rest = client.htmx_get(more).get_data(as_text=True)
        assert "<html" not in rest
        assert re.findall(r'<a href="/contacts/\d+">([^<]+)</a>', rest) == [
            f"{name} {i:02d}" for i in (20, 21, 22) for name in ("First", "Second")
        ]
        assert "Show more" not in rest
    else:
        rest = client.get(plain.replace("&amp;", "&")).get_data(as_text=True)
        assert "<html" in rest
        assert group_names(rest, "phone")[0] == "First 20"


def test_script_in_names_renders_escaped_on_duplicates_and_merge(
    client, login_as, make_contact, db
):
    login_as("staff")
    a = make_contact("<script>alert(1)</script>", phone="+14155552671")
    b = make_contact("<img src=x onerror=alert(2)>", phone="+14155552671")
    for url in ("/contacts/duplicates", f"/contacts/merge?ids={a.id}&ids={b.id}"):
        page = client.get(url).get_data(as_text=True)
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
