"""Tags: add and remove on a contact (with suggestions), and the tags admin page."""

from __future__ import annotations

import pytest

from crm.audit.models import AuditEntry
from crm.contacts.models import Contact, Tag, contact_tags


def tag_names(db, contact_id):
    db.session.expire_all()
    return sorted(t.name for t in db.session.get(Contact, contact_id).tags)


def make_tag(db, name):
    tag = Tag(name=name)
    db.session.add(tag)
    db.session.commit()
    return tag


def audit_entries(db, object_type, object_id):
    query = db.select(AuditEntry).filter_by(object_type=object_type, object_id=object_id)
    return list(db.session.execute(query.order_by(AuditEntry.id)).scalars())


# The per-contact editor


def test_add_tag_with_htmx_returns_the_editor_and_audits(client, login_as, make_contact, db):
    staff = login_as("staff")
    contact = make_contact("Ana", tags=[make_tag(db, "alpha")])
    response = client.form(f"/contacts/{contact.id}/tags", {"name": "  vip "}, htmx=True)
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "<html" not in body
    assert f'id="tags-{contact.id}"' in body
    assert ">vip" in body
    assert f'list="tag-suggestions-{contact.id}"' in body
    assert tag_names(db, contact.id) == ["alpha", "vip"]
    [entry] = audit_entries(db, "contact", contact.id)
    assert entry.action == "contact.updated"
    assert entry.actor_id == staff.id
    assert entry.changes == {"tags": ["alpha", "alpha, vip"]}


def test_add_tag_without_js_redirects_to_a_local_next(client, login_as, make_contact, db):
    login_as("staff")
    contact = make_contact("Ana")
    response = client.form(
        f"/contacts/{contact.id}/tags", {"name": "vip", "next": "/contacts/?tag=vip"}
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/contacts/?tag=vip"
    assert tag_names(db, contact.id) == ["vip"]


@pytest.mark.parametrize("unsafe", ["//evil.example/x", "https://evil.example/", "/\\evil", ""])
def test_add_tag_ignores_an_unsafe_next(client, login_as, make_contact, db, unsafe):
    login_as("staff")
    contact = make_contact("Ana")
    response = client.form(f"/contacts/{contact.id}/tags", {"name": "vip", "next": unsafe})
    assert response.status_code == 303
    assert response.headers["Location"] == f"/contacts/{contact.id}"


@pytest.mark.parametrize("htmx", [False, True])
def test_adding_reuses_an_existing_tag_whatever_its_case(client, login_as, make_contact, db, htmx):
    login_as("staff")
    existing = make_tag(db, "vip")
    contact = make_contact("Ana")
    client.form(f"/contacts/{contact.id}/tags", {"name": "VIP"}, htmx=htmx)
    assert tag_names(db, contact.id) == ["vip"]
    assert db.session.execute(db.select(db.func.count(Tag.id))).scalar_one() == 1
    assert db.session.get(Contact, contact.id).tags[0].id == existing.id


def test_adding_a_tag_twice_changes_nothing(client, login_as, make_contact, db):
    login_as("staff")
    contact = make_contact("Ana", tags=[make_tag(db, "vip")])
    response = client.form(f"/contacts/{contact.id}/tags", {"name": "vip"}, htmx=True)
    assert response.status_code == 200
    assert tag_names(db, contact.id) == ["vip"]
    assert audit_entries(db, "contact", contact.id) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [("   ", "Enter a tag name."), ("x" * 65, "Keep tag names to 64 characters or fewer.")],
)
def test_invalid_tag_names_are_refused_with_a_reason(
    client, login_as, make_contact, db, name, message
):
    login_as("staff")
    contact = make_contact("Ana")
    response = client.form(f"/contacts/{contact.id}/tags", {"name": name}, htmx=True)
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert message in body
    assert f'id="tags-{contact.id}"' in body
    # Without JavaScript the same reason arrives as a flash on the page it came from.
    response = client.form(f"/contacts/{contact.id}/tags", {"name": name})
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert message in page
    assert tag_names(db, contact.id) == []
    assert db.session.execute(db.select(db.func.count(Tag.id))).scalar_one() == 0


@pytest.mark.parametrize("htmx", [False, True])
def test_remove_tag(client, login_as, make_contact, db, htmx):
    login_as("staff")
    vip, other = make_tag(db, "vip"), make_tag(db, "other")
    contact = make_contact("Ana", tags=[vip, other])
    response = client.form(f"/contacts/{contact.id}/tags/{vip.id}/remove", {}, htmx=htmx)
    if htmx:
        assert response.status_code == 200
        body = response.get_data(as_text=True)
        assert f'id="tags-{contact.id}"' in body
        assert "Remove tag vip" not in body
        assert "Remove tag other" in body
    else:
        assert response.status_code == 303
        assert response.headers["Location"] == f"/contacts/{contact.id}"
    assert tag_names(db, contact.id) == ["other"]
    [entry] = audit_entries(db, "contact", contact.id)
    assert entry.changes == {"tags": ["other, vip", "other"]}


@pytest.mark.parametrize("htmx", [False, True])
def test_coach_gets_404_on_another_coachs_contact(
    client, login_as, make_user, make_contact, db, htmx
):
    other = make_user("coach")
    vip = make_tag(db, "vip")
    theirs = make_contact("Theirs", owner_id=other.id, tags=[vip])
    coach = login_as("coach")
    mine = make_contact("Mine", owner_id=coach.id)
    assert client.form(f"/contacts/{theirs.id}/tags", {"name": "x"}, htmx=htmx).status_code == 404
    url = f"/contacts/{theirs.id}/tags/{vip.id}/remove"
    assert client.form(url, {}, htmx=htmx).status_code == 404
    assert tag_names(db, theirs.id) == ["vip"]
    assert client.form(f"/contacts/{mine.id}/tags", {"name": "x"}, htmx=htmx).status_code in (
        200,
        303,
    )
    assert tag_names(db, mine.id) == ["x"]


def test_script_tag_names_render_escaped_in_the_editor(client, login_as, make_contact, db):
    login_as("staff")
    contact = make_contact("Ana")
    response = client.form(
        f"/contacts/{contact.id}/tags", {"name": "<script>alert(1)</script>"}, htmx=True
    )
    body = response.get_data(as_text=True)
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body


# Suggestions


@pytest.mark.parametrize("htmx", [False, True])
def test_suggest_returns_up_to_ten_matching_options(client, login_as, db, htmx):
    login_as("coach")
    for n in range(12):
        db.session.add(Tag(name=f"lead-{n:02d}"))
    db.session.add_all([Tag(name="Leader"), Tag(name="unrelated"), Tag(name="a<b>")])
    db.session.commit()
    get = client.htmx_get if htmx else client.get
    body = get("/contacts/tags/suggest?q=LEAD").get_data(as_text=True)
    assert "<html" not in body
    assert body.count("<option") == 10
    assert "unrelated" not in body
    # The editor's input sends its own field name; that works too, and escapes.
    body = get("/contacts/tags/suggest?name=a<").get_data(as_text=True)
    assert '<option value="a&lt;b&gt;">' in body


def test_suggest_treats_like_wildcards_literally(client, login_as, db):
    login_as("staff")
    db.session.add_all([Tag(name="100%"), Tag(name="1000")])
    db.session.commit()
    body = client.htmx_get("/contacts/tags/suggest?q=0%").get_data(as_text=True)
    assert body == '<option value="100%">'


# The tags admin page


def test_tags_admin_is_for_staff_only(client, login_as, db):
    login_as("coach")
    assert client.get("/contacts/tags").status_code == 403
    assert client.htmx_get("/contacts/tags").status_code == 403


@pytest.mark.parametrize("htmx", [False, True])
def test_tags_admin_lists_tags_with_contact_counts(client, login_as, make_contact, db, htmx):
    login_as("staff")
    vip, cold = make_tag(db, "vip"), make_tag(db, "<script>x</script>")
    make_contact("A", tags=[vip])
    make_contact("B", tags=[vip, cold])
    from crm.database import utcnow

    make_contact("Trashed", tags=[vip], deleted_at=utcnow())
    response = (client.htmx_get if htmx else client.get)("/contacts/tags")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert ("<html" in body) is not htmx
    assert 'id="tags-table"' in body
    assert f'id="tag-{vip.id}"' in body
    row = body.split(f'id="tag-{vip.id}"')[1].split("</tr>")[0]
    assert "<td>2</td>" in row  # the trashed contact does not count
    assert "<script>x</script>" not in body
    assert "&lt;script&gt;x&lt;/script&gt;" in body


@pytest.mark.parametrize("htmx", [False, True])
def test_rename_tag(client, login_as, make_contact, db, htmx):
    staff = login_as("staff")
    vip = make_tag(db, "vip")
    contact = make_contact("A", tags=[vip])
    response = client.form(f"/contacts/tags/{vip.id}/rename", {"name": " VIP client "}, htmx=htmx)
    if htmx:
        assert response.status_code == 200
        body = response.get_data(as_text=True)
        assert "Renamed “vip” to “VIP client”." in body
        assert 'id="tags-table"' in body
    else:
        assert response.status_code == 303
        assert response.headers["Location"] == "/contacts/tags"
        assert "Renamed “vip” to “VIP client”." in client.get("/contacts/tags").get_data(
            as_text=True
        )
    assert tag_names(db, contact.id) == ["VIP client"]
    [entry] = audit_entries(db, "tag", vip.id)
    assert (entry.action, entry.actor_id) == ("tag.renamed", staff.id)
    assert entry.changes == {"name": ["vip", "VIP client"]}


@pytest.mark.parametrize("htmx", [False, True])
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "Enter a tag name."),
        ("y" * 65, "Keep tag names to 64 characters or fewer."),
        ("GOLD", "A tag named “gold” already exists; merge into it instead."),
    ],
)
def test_rename_errors_show_in_place(client, login_as, db, htmx, name, message):
    login_as("admin")
    vip, gold = make_tag(db, "vip"), make_tag(db, "gold")
    response = client.form(f"/contacts/tags/{vip.id}/rename", {"name": name}, htmx=htmx)
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert ("<html" in body) is not htmx
    assert message in body
    assert f'value="{name}"' in body  # what was typed stays in the field
    if name == "GOLD":
        # The page offers the merge instead.
        assert f'action="/contacts/tags/{vip.id}/merge"' in body
        assert f'name="into" value="{gold.id}"' in body
    db.session.expire_all()
    assert db.session.get(Tag, vip.id).name == "vip"


def test_rename_may_change_only_the_case(client, login_as, db):
    login_as("staff")
    vip = make_tag(db, "vip")
    assert client.form(f"/contacts/tags/{vip.id}/rename", {"name": "VIP"}).status_code == 303
    db.session.expire_all()
    assert db.session.get(Tag, vip.id).name == "VIP"


def test_merge_form_is_offered_per_tag(client, login_as, db):
    login_as("staff")
    vip, gold = make_tag(db, "vip"), make_tag(db, "gold")
    body = client.htmx_get(f"/contacts/tags?merge={vip.id}").get_data(as_text=True)
    merge_form = body.split(f'action="/contacts/tags/{vip.id}/merge"')[1].split("</form>")[0]
    assert f'<option value="{gold.id}">gold</option>' in merge_form
    assert f'<option value="{vip.id}">' not in merge_form


@pytest.mark.parametrize("htmx", [False, True])
def test_merge_moves_contacts_without_duplicates_and_deletes_the_source(
    client, login_as, make_contact, db, htmx
):
    staff = login_as("staff")
    vip, gold = make_tag(db, "vip"), make_tag(db, "gold")
    both = make_contact("Both", tags=[vip, gold])
    only_vip = make_contact("Only vip", tags=[vip])
    only_gold = make_contact("Only gold", tags=[gold])
    vip_id = vip.id
    response = client.form(f"/contacts/tags/{vip_id}/merge", {"into": str(gold.id)}, htmx=htmx)
    if htmx:
        assert response.status_code == 200
        assert "Merged “vip” into “gold”: 1 contact newly tagged." in response.get_data(
            as_text=True
        )
    else:
        assert response.status_code == 303
        assert response.headers["Location"] == "/contacts/tags"
    for contact in (both, only_vip, only_gold):
        assert tag_names(db, contact.id) == ["gold"]
    assert db.session.get(Tag, vip_id) is None
    links = db.session.execute(
        db.select(db.func.count()).select_from(contact_tags).where(contact_tags.c.tag_id == vip_id)
    ).scalar_one()
    assert links == 0
    [entry] = audit_entries(db, "tag", vip_id)
    assert (entry.action, entry.actor_id) == ("tag.merged", staff.id)
    assert entry.changes == {"name": ["vip", None], "merged_into": [None, "gold"]}


@pytest.mark.parametrize("htmx", [False, True])
@pytest.mark.parametrize(
    ("into", "message"),
    [("", "Choose the tag to merge into."), ("self", "Choose a different tag to merge into.")],
)
def test_merge_errors(client, login_as, db, htmx, into, message):
    login_as("staff")
    vip = make_tag(db, "vip")
    value = str(vip.id) if into == "self" else into
    response = client.form(f"/contacts/tags/{vip.id}/merge", {"into": value}, htmx=htmx)
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert ("<html" in body) is not htmx
    assert message in body
    assert db.session.get(Tag, vip.id) is not None


def test_coach_may_not_rename_or_merge(client, login_as, db):
    login_as("coach")
    vip, gold = make_tag(db, "vip"), make_tag(db, "gold")
    assert client.form(f"/contacts/tags/{vip.id}/rename", {"name": "x"}).status_code == 403
    assert client.form(f"/contacts/tags/{vip.id}/merge", {"into": gold.id}).status_code == 403
    db.session.expire_all()
    assert db.session.get(Tag, vip.id).name == "vip"
