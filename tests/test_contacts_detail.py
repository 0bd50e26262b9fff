"""The contact page: notes, change history, and a timeline other domains extend."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from crm.audit.models import AuditEntry
from crm.contacts.models import Contact, Note
from crm.contacts.registry import TimelineEntry, contact_source, contact_sources
from crm.database import utcnow


def notes_of(db, contact):
    db.session.expire_all()
    query = db.select(Note).filter_by(contact_id=contact.id).order_by(Note.id)
    return list(db.session.execute(query).scalars())


def audit(db, contact, action):
    query = db.select(AuditEntry).filter_by(object_type="contact", object_id=contact.id)
    return list(db.session.execute(query.filter_by(action=action)).scalars())


def history_of(page):
    return page[page.index('<section id="history"') :]


def add_note(client, contact, body, htmx=False):
    return client.form(f"/contacts/{contact.id}/notes", {"body": body}, htmx=htmx)


def test_page_shows_profile_tags_and_edit_link(client, login_as, make_user, make_contact, db):
    login_as("staff")
    coach = make_user("coach", name="Carla Coach")
    contact = make_contact(
        "Paula Page", phone="+14155552671", email="p@example.org", owner_id=coach.id
    )
    page = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
    assert "<h1>Paula Page</h1>" in page
    assert "(415) 555-2671" in page  # through the phone filter
    assert "p@example.org" in page and "Carla Coach" in page
    assert f'id="tags-{contact.id}"' in page
    assert f'href="/contacts/{contact.id}/edit"' in page
    for section in ('id="notes"', 'id="history"', 'id="timeline"'):
        assert section in page


@pytest.mark.parametrize("htmx", [False, True])
def test_add_note(client, login_as, make_contact, db, htmx):
    staff = login_as("staff", name="Sam Staff")
    contact = make_contact("Noted")
    response = add_note(client, contact, "  Called about the March session.  ", htmx=htmx)
    [note] = notes_of(db, contact)
    assert note.body == "Called about the March session." and note.author_id == staff.id
    if htmx:
        assert response.status_code == 200
        body = response.get_data(as_text=True)
        assert "<html" not in body and body.strip().startswith('<section id="notes"')
        assert "Called about the March session." in body
        assert response.headers["HX-Trigger"] == "contact-updated"
    else:
        assert response.status_code == 303
        assert response.headers["Location"] == f"/contacts/{contact.id}#notes"
        page = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
        assert "Called about the March session." in page and "Note added." in page
    [entry] = audit(db, contact, "note.added")
    assert entry.changes == {"note": [None, "Called about the March session."]}
    assert entry.actor_id == staff.id


@pytest.mark.parametrize("htmx", [False, True])
def test_invalid_note_shows_error_in_place_and_keeps_text(client, login_as, make_contact, db, htmx):
    login_as("staff")
    contact = make_contact("Noted")
    response = add_note(client, contact, "   ", htmx=htmx)
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert ("<html" in body) is not htmx
    assert "Write something in the note first." in body
    long = "x" * 10_001
    response = add_note(client, contact, long, htmx=htmx)
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert "Keep the note under 10,000 characters (it has 10,001)." in body
    assert long in body  # nothing typed is lost
    assert notes_of(db, contact) == []
    assert add_note(client, contact, "y" * 10_000, htmx=htmx).status_code in (200, 303)
    assert len(notes_of(db, contact)) == 1


@pytest.mark.parametrize("htmx", [False, True])
def test_edit_and_delete_note(client, login_as, make_contact, db, htmx):
    login_as("staff")
    contact = make_contact("Noted")
    add_note(client, contact, "First draft")
    [note] = notes_of(db, contact)
    url = f"/contacts/{contact.id}/notes/{note.id}"
    if htmx:
        form = client.htmx_get(f"{url}/edit").get_data(as_text=True)
        assert form.strip().startswith(f'<article class="note" id="note-{note.id}">')
        assert 'name="body"' in form and "First draft" in form
    else:
        form = client.get(f"{url}/edit").get_data(as_text=True)
        assert "<html" in form and f'action="{url}"' in form and "First draft" in form

    if htmx:  # Cancel puts the notes back as they were
        cancel = client.htmx_get(f"/contacts/{contact.id}?part=notes").get_data(as_text=True)
        assert cancel.strip().startswith('<section id="notes"') and 'name="body"' in cancel
        assert f"{url}/edit" in cancel and "<html" not in cancel

    bad = client.form(url, {"body": ""}, htmx=htmx)
    assert bad.status_code == 422
    assert "Write something in the note first." in bad.get_data(as_text=True)
    assert notes_of(db, contact)[0].body == "First draft"

    saved = client.form(url, {"body": "Second draft"}, htmx=htmx)
    if htmx:
        assert saved.status_code == 200
        assert saved.headers["HX-Trigger"] == "contact-updated"
        assert "Second draft" in saved.get_data(as_text=True)
        assert 'name="body"' not in saved.get_data(as_text=True)
    else:
        assert saved.status_code == 303
        assert saved.headers["Location"] == f"/contacts/{contact.id}#note-{note.id}"
    assert notes_of(db, contact)[0].body == "Second draft"
    [entry] = audit(db, contact, "note.updated")
    assert entry.changes == {"note": ["First draft", "Second draft"]}

    deleted = client.form(f"{url}/delete", htmx=htmx)
    assert deleted.status_code == (200 if htmx else 303)
    if htmx:
        assert "No notes yet." in deleted.get_data(as_text=True)
    assert notes_of(db, contact) == []
    [entry] = audit(db, contact, "note.deleted")
    assert entry.changes == {"note": ["Second draft", None]}


def test_coach_changes_only_own_notes_on_own_clients(client, login_as, make_user, make_contact, db):
    staff = make_user("staff")
    coach = login_as("coach")
    contact = make_contact("Mine", owner_id=coach.id)
    staff_note = Note(contact_id=contact.id, author_id=staff.id, body="Staff wrote this")
    db.session.add(staff_note)
    db.session.commit()
    assert add_note(client, contact, "Coach wrote this").status_code == 303
    own = [n for n in notes_of(db, contact) if n.author_id == coach.id][0]

    page = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
    assert f"/notes/{own.id}/edit" in page
    assert f"/notes/{staff_note.id}/edit" not in page  # no button for what they may not do
    base = f"/contacts/{contact.id}/notes/{staff_note.id}"
    assert client.get(f"{base}/edit").status_code == 403
    assert client.form(base, {"body": "Changed"}).status_code == 403
    assert client.form(f"{base}/delete").status_code == 403
    assert (
        client.form(f"/contacts/{contact.id}/notes/{own.id}", {"body": "Mine, edited"}).status_code
        == 303
    )
    bodies = {n.body for n in notes_of(db, contact)}
    assert bodies == {"Staff wrote this", "Mine, edited"}


def test_staff_changes_any_note(client, login_as, make_user, make_contact, db):
    coach = make_user("coach")
    contact = make_contact("Theirs", owner_id=coach.id)
    note = Note(contact_id=contact.id, author_id=coach.id, body="Coach note")
    db.session.add(note)
    db.session.commit()
    login_as("staff")
    url = f"/contacts/{contact.id}/notes/{note.id}"
    assert client.form(url, {"body": "Fixed by staff"}).status_code == 303
    assert client.form(f"{url}/delete").status_code == 303
    assert notes_of(db, contact) == []


def test_note_of_another_contact_is_404(client, login_as, make_contact, db):
    login_as("staff")
    one, other = make_contact("One"), make_contact("Other")
    note = Note(contact_id=other.id, body="Elsewhere")
    db.session.add(note)
    db.session.commit()
    assert client.get(f"/contacts/{one.id}/notes/{note.id}/edit").status_code == 404
    assert client.form(f"/contacts/{one.id}/notes/{note.id}/delete").status_code == 404


def test_coach_gets_404_on_every_route_for_another_coachs_client(
    client, login_as, make_user, make_contact, db
):
    other = make_user("coach")
    contact = make_contact("Not Yours", owner_id=other.id)
    note = Note(contact_id=contact.id, author_id=other.id, body="Private")
    db.session.add(note)
    db.session.commit()
    login_as("coach")
    base = f"/contacts/{contact.id}"
    assert client.get(base).status_code == 404
    for part in ("timeline", "timeline_items", "history", "history_items", "notes", "note_items"):
        assert client.htmx_get(f"{base}?part={part}").status_code == 404, part
        assert client.get(f"{base}?part={part}").status_code == 404, part
    assert client.htmx_get(f"{base}/tags").status_code == 404
    assert client.htmx_get(f"/contacts/{contact.id}/edit?inline=1").status_code == 404
    assert client.htmx_get(f"/contacts/{contact.id}/row").status_code == 404
    assert client.form(f"{base}/notes", {"body": "Hi"}).status_code == 404
    assert client.get(f"{base}/notes/{note.id}/edit").status_code == 404
    assert client.form(f"{base}/notes/{note.id}", {"body": "Hijacked"}).status_code == 404
    assert client.form(f"{base}/notes/{note.id}/delete", htmx=True).status_code == 404
    assert [n.body for n in notes_of(db, contact)] == ["Private"]


def test_history_shows_field_by_field_diffs_after_an_edit(
    client, login_as, make_user, make_contact, db
):
    login_as("staff", name="Erin Editor")
    coach = make_user("coach", name="Olga Owner")
    client.form("/contacts/", {"name": "Hal History", "phone": "+14155552671", "email": ""})
    contact = db.session.execute(db.select(Contact).filter_by(name="Hal History")).scalar_one()
    response = client.form(
        f"/contacts/{contact.id}",
        {
            "name": "Hal History",
            "phone": "",
            "email": "hal@example.org",
            "status": "inactive",
            "owner_id": str(coach.id),
        },
    )
    assert response.status_code == 303
    page = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
    history = history_of(page)
    assert "Contact changed" in history and "Erin Editor" in history
    assert "phone</span>: +14155552671 → —" in history
    assert "email</span>: — → hal@example.org" in history
    assert "status</span>: active → inactive" in history
    assert "owner</span>: — → Olga Owner" in history  # owners by name, not id
    assert history.index("Contact changed") < history.index("Contact created")  # newest first
    fragment = client.htmx_get(f"/contacts/{contact.id}?part=history").get_data(as_text=True)
    assert fragment.strip().startswith('<section id="history"') and "<html" not in fragment


def test_history_pages(client, login_as, make_contact, db):
    staff = login_as("staff")
    contact = make_contact("Busy")
    start = utcnow() - timedelta(days=1)
    for i in range(25):
        db.session.add(
            AuditEntry(
                actor_id=staff.id,
                action="contact.updated",
                object_type="contact",
                object_id=contact.id,
                changes={"name": [f"Name {i}", f"Name {i + 1}"]},
                created_at=start + timedelta(minutes=i),
            )
        )
    db.session.commit()
    page = history_of(client.get(f"/contacts/{contact.id}").get_data(as_text=True))
    assert "Name 24 → Name 25" in page and "Name 4 → Name 5" not in page
    link = re.search(r'href="(/contacts/\d+\?history_before=[^"#]+)#history"', page).group(1)
    plain = history_of(client.get(link.replace("&amp;", "&")).get_data(as_text=True))
    assert "Name 4 → Name 5" in plain and "Name 0 → Name 1" in plain and "Name 24 → " not in plain
    more = client.htmx_get(link.replace("&amp;", "&") + "&part=history_items").get_data(
        as_text=True
    )
    assert "<html" not in more and "Name 0 → Name 1" in more and 'id="history-more"' not in more
    assert client.get(f"/contacts/{contact.id}?history_before=nonsense").status_code == 400


def timeline_keys(body):
    return re.findall(r'id="timeline-((?:note|change|call)-\d+)"', body)


def test_timeline_merges_sources_and_pages_with_an_extra_registered_source(
    client, login_as, make_contact, db
):
    """A later domain (here a list of calls) joins the feed without contacts importing it."""
    login_as("staff")
    contact = make_contact("Timely")
    start = utcnow() - timedelta(days=2)
    for i in range(12):
        db.session.add(
            Note(contact_id=contact.id, body=f"note {i}", created_at=start + timedelta(hours=2 * i))
        )
    db.session.commit()
    calls = [
        TimelineEntry(
            at=start + timedelta(hours=2 * i + 1),
            kind="call",
            key=f"call-{i:012d}",
            title=f"Call {i}",
            body="<script>alert(1)</script>",
        )
        for i in range(12)
    ]
    # Two entries at exactly the same time: the key breaks the tie, none is lost.
    calls.append(
        TimelineEntry(at=calls[5].at, kind="call", key="call-000000000099", title="Call twin")
    )

    def call_entries(contact_id, before, limit):
        if contact_id != contact.id:
            return []
        older = [c for c in calls if before is None or (c.at, c.key) < (before.at, before.key)]
        return sorted(older, key=lambda c: (c.at, c.key), reverse=True)[:limit]

    with contact_source("calls", timeline=call_entries):
        first = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
        timeline = first[first.index('id="timeline"') : first.index('id="history"')]
        seen = timeline_keys(timeline)
        assert len(seen) == 20
        assert (
            seen[0] == "call-000000000011"
            and seen[1] == "note-" + f"{notes_of(db, contact)[-1].id:012d}"
        )
        assert (
            "&lt;script&gt;alert(1)&lt;/script&gt;" in timeline and "<script>alert" not in timeline
        )
        while True:
            link = re.search(r'hx-get="([^"]+part=timeline_items)"', timeline)
            if not link:
                break
            timeline = client.htmx_get(link.group(1).replace("&amp;", "&")).get_data(as_text=True)
            assert "<html" not in timeline
            seen += timeline_keys(timeline)
        assert len(seen) == len(set(seen))
        # 12 notes, 13 calls, plus the audit of nothing (notes were added directly).
        assert len([k for k in seen if k.startswith("call-")]) == 13
        assert len([k for k in seen if k.startswith("note-")]) == 12
        plain = re.search(r'href="([^"]+timeline_before=[^"#]+)#timeline"', first).group(1)
        page_two = client.get(plain.replace("&amp;", "&")).get_data(as_text=True)
        assert "<html" in page_two and "Back to the newest" in page_two
    assert "calls" not in [s.name for s in contact_sources()]
    after = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
    assert "call-" not in after
    assert client.get(f"/contacts/{contact.id}?timeline_before=bogus").status_code == 400


def test_timeline_includes_changes_and_refreshes_after_a_note(client, login_as, make_contact, db):
    login_as("staff")
    client.form("/contacts/", {"name": "Feed Me", "phone": ""})
    contact = db.session.execute(db.select(Contact).filter_by(name="Feed Me")).scalar_one()
    add_note(client, contact, "A fresh note", htmx=True)
    fragment = client.htmx_get(f"/contacts/{contact.id}?part=timeline").get_data(as_text=True)
    assert fragment.strip().startswith('<section id="timeline"')
    assert 'hx-trigger="contact-updated from:body"' in fragment
    assert "Contact created" in fragment and "A fresh note" in fragment
    assert fragment.index("A fresh note") < fragment.index("Contact created")
    assert "Note added" not in fragment  # the note itself stands for it


def test_script_in_note_and_name_is_escaped(client, login_as, make_contact, db):
    login_as("staff")
    contact = make_contact("<script>alert('name')</script>")
    add_note(client, contact, "<script>alert('note')</script><b>bold</b>")
    page = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
    assert "<script>alert" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(&#39;note&#39;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in page


def test_the_contact_page_deletes_to_the_trash_with_undo(client, login_as, make_contact, db):
    login_as("staff")
    contact = make_contact("Deleted From Page")
    page = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
    assert f'action="/contacts/{contact.id}/delete"' in page
    response = client.form(f"/contacts/{contact.id}/delete")
    assert response.status_code == 303
    listing = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Deleted From Page was moved to the trash." in listing and ">Undo<" in listing
    assert client.get(f"/contacts/{contact.id}").status_code == 404
