"""Create and edit contacts: per-field errors in place, E.164 phones, duplicate warnings, audit."""

from __future__ import annotations

import pytest

from crm.audit.models import AuditEntry
from crm.contacts.models import Contact


def contact_named(db, name):
    db.session.expire_all()
    return db.session.execute(db.select(Contact).filter_by(name=name)).scalar_one_or_none()


@pytest.mark.parametrize("htmx", [False, True])
def test_create_stores_e164_and_audits(client, login_as, db, htmx):
    staff = login_as("staff")
    response = client.form(
        "/contacts/",
        {"name": "Rosa Diaz", "phone": "(415) 555-2671", "email": "Rosa@Example.org"},
        htmx=htmx,
    )
    assert response.status_code == 303
    contact = contact_named(db, "Rosa Diaz")
    assert contact.phone == "+14155552671"
    assert contact.email == "rosa@example.org"
    assert response.headers["Location"] == f"/contacts/{contact.id}"
    entry = db.session.execute(
        db.select(AuditEntry).filter_by(action="contact.created", object_id=contact.id)
    ).scalar_one()
    assert entry.actor_id == staff.id
    assert entry.changes["phone"] == [None, "+14155552671"]


@pytest.mark.parametrize("htmx", [False, True])
def test_invalid_fields_are_shown_in_place(client, login_as, db, htmx):
    login_as("staff")
    response = client.form(
        "/contacts/", {"name": "", "phone": "12", "email": "nope@", "status": "active"}, htmx=htmx
    )
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert ("<html" in body) is not htmx
    assert 'id="contact-form"' in body
    assert "Enter a name." in body
    assert "not a valid phone number for US" in body
    assert "Enter a valid email address" in body
    assert 'value="nope@"' in body  # nothing typed is lost
    assert db.session.execute(db.select(db.func.count(Contact.id))).scalar_one() == 0


def test_duplicate_phone_or_email_warns_and_links(client, login_as, make_contact, db):
    login_as("staff")
    existing = make_contact("Old Record", phone="+14155552671", email="same@example.org")
    response = client.form("/contacts/", {"name": "New Record", "email": "SAME@example.org"})
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "already exists" in body
    assert f'href="/contacts/{existing.id}"' in body
    assert contact_named(db, "New Record") is None
    response = client.form(
        "/contacts/",
        {"name": "New Record", "email": "same@example.org", "confirm_duplicate": "1"},
    )
    assert response.status_code == 303
    assert contact_named(db, "New Record") is not None


def test_coach_creates_their_own_clients_and_sees_no_others_as_duplicates(
    client, login_as, make_user, make_contact, db
):
    other = make_user("coach")
    make_contact("Hidden", phone="+14155552671", owner_id=other.id)
    coach = login_as("coach")
    response = client.form(
        "/contacts/", {"name": "Mine", "phone": "+1 415 555 2671", "owner_id": str(other.id)}
    )
    assert response.status_code == 303  # no warning naming another coach's client
    assert contact_named(db, "Mine").owner_id == coach.id


@pytest.mark.parametrize("htmx", [False, True])
def test_edit_page_and_update(client, login_as, make_contact, db, htmx):
    login_as("staff")
    contact = make_contact("Ed Itor", phone="+14155552671")
    page = client.get(f"/contacts/{contact.id}/edit").get_data(as_text=True)
    assert 'value="Ed Itor"' in page and "<html" in page
    response = client.form(
        f"/contacts/{contact.id}",
        {"name": "Ed Itor", "phone": "+44 20 7946 0958", "email": "", "status": "inactive"},
        htmx=htmx,
    )
    assert response.status_code == 303
    saved = contact_named(db, "Ed Itor")
    assert saved.phone == "+442079460958" and saved.status == "inactive"
    entry = db.session.execute(
        db.select(AuditEntry).filter_by(action="contact.updated", object_id=contact.id)
    ).scalar_one()
    assert entry.changes == {
        "phone": ["+14155552671", "+442079460958"],
        "status": ["active", "inactive"],
    }


def test_inline_edit_in_the_list(client, login_as, make_contact, db):
    login_as("staff")
    contact = make_contact("Inline Person", email="in@example.org")
    row = client.htmx_get(f"/contacts/{contact.id}/edit?inline=1").get_data(as_text=True)
    assert row.strip().startswith(f'<tr id="contact-{contact.id}" class="editing">')
    assert 'name="inline"' in row
    bad = client.form(
        f"/contacts/{contact.id}", {"inline": "1", "name": "", "phone": ""}, htmx=True
    )
    assert bad.status_code == 422
    assert "Enter a name." in bad.get_data(as_text=True)
    assert 'class="editing"' in bad.get_data(as_text=True)
    good = client.form(
        f"/contacts/{contact.id}",
        {"inline": "1", "name": "Inline Renamed", "phone": "415-555-0134", "status": "active"},
        htmx=True,
    )
    assert good.status_code == 200
    body = good.get_data(as_text=True)
    assert body.strip().startswith(f'<tr id="contact-{contact.id}">')
    assert "Inline Renamed" in body and "(415) 555-0134" in body  # shown nationally
    assert contact_named(db, "Inline Renamed").phone == "+14155550134"  # stored in E.164
    saved = contact_named(db, "Inline Renamed")
    assert saved.email == "in@example.org"  # fields the row does not carry are kept
    cancel = client.htmx_get(f"/contacts/{contact.id}/row").get_data(as_text=True)
    assert "Inline Renamed" in cancel and "editing" not in cancel


def test_coach_cannot_edit_another_coachs_client(client, login_as, make_user, make_contact, db):
    other = make_user("coach")
    contact = make_contact("Not Yours", owner_id=other.id)
    login_as("coach")
    assert client.get(f"/contacts/{contact.id}/edit").status_code == 404
    assert client.htmx_get(f"/contacts/{contact.id}/row").status_code == 404
    response = client.form(f"/contacts/{contact.id}", {"name": "Stolen"})
    assert response.status_code == 404
    assert contact_named(db, "Not Yours") is not None
