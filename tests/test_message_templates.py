"""Message templates: staff write them with {{variables}}, see a live preview, and cannot
save a variable that would go out as typed."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from crm.audit.models import AuditEntry
from crm.contacts.models import Contact
from crm.conversations.models import Campaign, MessageTemplate
from crm.users.models import User

CONTENT_SID = "HX" + "0123456789abcdef" * 2


def make_template(db, name="Welcome", body="Hi {{first_name}}, welcome!", **fields):
    template = MessageTemplate(name=name, body=body, **fields)
    db.session.add(template)
    db.session.commit()
    return template


def templates(db) -> list[MessageTemplate]:
    db.session.expire_all()
    return db.session.scalars(sa.select(MessageTemplate).order_by(MessageTemplate.id)).all()


@pytest.mark.parametrize("htmx", [False, True])
def test_staff_create_a_template_and_see_it_listed(client, db, login_as, htmx):
    login_as("staff")
    response = client.form(
        "/message-templates/",
        {
            "name": "Reminder",
            "body": "Hi {{first_name}}, see you {{ coach_name }}",
            "content_sid": "",
        },
        htmx=htmx,
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/message-templates/"
    [template] = templates(db)
    assert (template.name, template.content_sid) == ("Reminder", None)
    assert template.body == "Hi {{first_name}}, see you {{ coach_name }}"
    page = client.get("/message-templates/").get_data(as_text=True)
    assert "Saved the template “Reminder”." in page
    assert f'id="template-{template.id}"' in page and "coach_name" in page
    entry = db.session.scalars(
        sa.select(AuditEntry).where(AuditEntry.object_type == "message_template")
    ).one()
    assert entry.action == "create"


@pytest.mark.parametrize("htmx", [False, True])
def test_unknown_variables_are_refused_with_the_allowed_ones(client, db, login_as, htmx):
    login_as("staff")
    response = client.form(
        "/message-templates/",
        {"name": "Oops", "body": "Hi {{firstname}} and {{ first name }}", "content_sid": ""},
        htmx=htmx,
    )
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert ("<html" in body) is not htmx  # htmx gets the form alone
    assert 'id="template-body-error"' in body
    assert "Unknown variables {{firstname}}, {{first name}}." in body
    assert (
        "Use {{first_name}}, {{last_name}}, {{name}}, {{phone}}, {{email}}, {{coach_name}}, "
        "{{service}}, {{session_time}}, {{meeting_link}}." in body
    )
    # What was typed is kept.
    assert "Hi {{firstname}} and {{ first name }}</textarea>" in body
    assert templates(db) == []


def test_a_name_is_required_and_unique_whatever_its_case(client, db, login_as):
    login_as("admin")
    make_template(db, "Welcome")
    missing = client.form("/message-templates/", {"name": " ", "body": "Hi"})
    assert missing.status_code == 422
    assert "Give the template a name." in missing.get_data(as_text=True)
    taken = client.form("/message-templates/", {"name": "welcome", "body": "Hello"})
    assert taken.status_code == 422
    assert "A template named “welcome” already exists." in taken.get_data(as_text=True)
    assert [t.name for t in templates(db)] == ["Welcome"]


def test_a_content_sid_must_look_like_twilios(client, db, login_as):
    login_as("staff")
    bad = client.form(
        "/message-templates/", {"name": "WA", "body": "Hi {{first_name}}", "content_sid": "HX123"}
    )
    assert bad.status_code == 422
    assert "HX followed by 32 hexadecimal characters" in bad.get_data(as_text=True)
    good = client.form(
        "/message-templates/",
        {"name": "WA", "body": "Hi {{first_name}}", "content_sid": f" {CONTENT_SID} "},
    )
    assert good.status_code == 303
    [template] = templates(db)
    assert template.content_sid == CONTENT_SID
    assert "approved template" in client.get("/message-templates/").get_data(as_text=True)


@pytest.mark.parametrize("htmx", [False, True])
def test_edit_and_update_a_template(client, db, login_as, htmx):
    login_as("staff")
    template = make_template(db, "Welcome")
    make_template(db, "Other", "Hello")
    form = client.get(f"/message-templates/{template.id}/edit").get_data(as_text=True)
    assert 'value="Welcome"' in form and "Hi {{first_name}}, welcome!</textarea>" in form
    assert "Hi Ana, welcome!" in form  # the preview of what is saved
    clash = client.form(
        f"/message-templates/{template.id}", {"name": "other", "body": "Hi"}, htmx=htmx
    )
    assert clash.status_code == 422
    assert "A template named “other” already exists." in clash.get_data(as_text=True)
    assert templates(db)[0].name == "Welcome"
    saved = client.form(
        f"/message-templates/{template.id}",
        {"name": "Welcome", "body": "Hello {{name}}", "content_sid": ""},
        htmx=htmx,
    )
    assert saved.status_code == 303
    assert templates(db)[0].body == "Hello {{name}}"


@pytest.mark.parametrize("htmx", [False, True])
def test_a_template_is_removed(client, db, login_as, htmx):
    login_as("staff")
    template = make_template(db)
    response = client.form(f"/message-templates/{template.id}/delete", htmx=htmx)
    assert response.status_code == 303
    assert templates(db) == []
    page = client.get("/message-templates/").get_data(as_text=True)
    assert ("Removed the template “Welcome”." in page) is not htmx  # htmx: the row just goes
    assert "No templates yet." in page


@pytest.mark.parametrize("htmx", [False, True])
def test_a_template_a_running_campaign_sends_cannot_be_removed(client, db, login_as, htmx):
    user = login_as("staff")
    template = make_template(db)
    db.session.add(
        Campaign(
            name="Spring",
            channel="sms",
            template_id=template.id,
            status="running",
            created_by_id=user.id,
        )
    )
    db.session.commit()
    response = client.form(f"/message-templates/{template.id}/delete", htmx=htmx)
    message = "The campaign “Spring” is still sending it: cancel it or wait."
    if htmx:
        assert response.status_code == 422
        body = response.get_data(as_text=True)
        assert body.lstrip().startswith('<div id="template-table">') and message in body
    else:
        assert response.status_code == 303
        assert message in client.get("/message-templates/").get_data(as_text=True)
    assert len(templates(db)) == 1


def test_the_live_preview_renders_for_a_sample_contact(client, db, login_as):
    login_as("staff", name="Sam Coach")
    contacts_before = db.session.scalar(sa.select(sa.func.count()).select_from(Contact))
    response = client.form(
        "/message-templates/preview",
        {"name": "", "body": "Hi {{first_name}} {{last_name}}, {{coach_name}} here. {{nope}}"},
        htmx=True,
    )
    assert response.status_code == 200
    assert "HX-Request" in response.headers["Vary"]
    body = response.get_data(as_text=True)
    assert body.lstrip().startswith('<section id="template-preview"')
    assert "Hi Ana Silva, Sam Coach here. {{nope}}" in body
    assert "<code>{{first_name}}</code> (first name)" in body
    assert "Not a known variable: {{nope}}" in body
    assert "1 SMS segment (GSM-7)" in body
    # The sample contact (and its coach) never reach the database.
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Contact)) == contacts_before
    assert db.session.scalar(sa.select(sa.func.count()).select_from(User)) == 1


def test_the_preview_works_without_javascript(client, db, login_as):
    login_as("staff")
    template = make_template(db)
    response = client.form(
        "/message-templates/preview",
        {"template_id": str(template.id), "name": "Welcome", "body": "Bye {{first_name}}"},
    )
    body = response.get_data(as_text=True)
    assert response.status_code == 200 and "<html" in body
    assert "Bye Ana" in body
    # The form still saves the template it was editing, with what was typed.
    assert f'action="/message-templates/{template.id}"' in body
    assert "Bye {{first_name}}</textarea>" in body
    assert templates(db)[0].body == "Hi {{first_name}}, welcome!"


def test_the_form_has_the_live_preview_wired(client, db, login_as):
    login_as("staff")
    page = client.get("/message-templates/new").get_data(as_text=True)
    assert 'hx-post="/message-templates/preview"' in page
    assert 'hx-trigger="keyup changed delay:300ms"' in page
    assert 'formaction="/message-templates/preview"' in page
    assert "<code>{{coach_name}}</code>" in page


def test_coaches_cannot_manage_templates(client, db, login_as):
    login_as("coach")
    template = make_template(db)
    for url in (
        "/message-templates/",
        "/message-templates/new",
        f"/message-templates/{template.id}/edit",
    ):
        assert client.get(url).status_code == 403
        assert client.htmx_get(url).status_code == 403
    for url in (
        "/message-templates/",
        f"/message-templates/{template.id}",
        f"/message-templates/{template.id}/delete",
        "/message-templates/preview",
    ):
        assert client.form(url, {"name": "X", "body": "Y"}).status_code == 403
    assert [t.name for t in templates(db)] == ["Welcome"]


def test_signed_out_users_are_sent_to_sign_in(client, db):
    response = client.get("/message-templates/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    htmx = client.htmx_get("/message-templates/")
    assert htmx.status_code == 401 and "/login" in htmx.headers["HX-Redirect"]
