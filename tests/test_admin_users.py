"""Admin > Users: list, invite, change role, deactivate — each audited, with and without htmx."""

from __future__ import annotations

import pytest

from crm.audit.models import AuditEntry
from crm.users.models import User


@pytest.fixture
def admin(login_as):
    return login_as("admin", email="boss@example.com", name="Boss")


def audit(db, action, object_id):
    return db.session.execute(
        db.select(AuditEntry).filter_by(action=action, object_id=object_id)
    ).scalar_one()


def find(db, email):
    db.session.expire_all()
    return db.session.execute(db.select(User).filter_by(email=email)).scalar_one_or_none()


def test_list_shows_every_user(client, admin, make_user):
    make_user("coach", email="carla@example.com", name="Carla <b>Coach</b>")
    page = client.get("/admin/users").get_data(as_text=True)
    assert "boss@example.com" in page
    assert "carla@example.com" in page
    assert "Carla &lt;b&gt;Coach&lt;/b&gt;" in page  # names are escaped


def test_invite_without_javascript(client, admin, db):
    response = client.form(
        "/admin/users",
        {"email": "New@Example.com", "name": "Nia", "role": "coach", "password": "a long password"},
    )
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "new@example.com can now sign in as coach." in page
    user = find(db, "new@example.com")
    assert user.role == "coach" and user.check_password("a long password")
    entry = audit(db, "user.created", user.id)
    assert entry.actor_id == admin.id
    assert entry.changes["role"] == [None, "coach"]


def test_invite_with_htmx_returns_the_section(client, admin, db):
    response = client.form("/admin/users", {"email": "kai@example.com", "role": "staff"}, htmx=True)
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "<html" not in body
    assert 'id="users-section"' in body
    assert "kai@example.com can now sign in as staff." in body
    assert "HX-Request" in response.headers["Vary"]
    assert find(db, "kai@example.com").password_hash is None  # Google sign-in only


@pytest.mark.parametrize("htmx", [False, True])
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"email": "not-an-email"}, "Enter a valid email address."),
        ({"email": "boss@example.com"}, "already exists"),
        ({"email": "x@example.com", "password": "short"}, "at least 10 characters"),
        ({"email": "x@example.com", "role": "owner"}, "Role must be one of"),
    ],
)
def test_invalid_invite_shows_the_error_in_place(client, admin, db, htmx, fields, message):
    count = db.session.execute(db.select(db.func.count(User.id))).scalar_one()
    response = client.form("/admin/users", {"name": "Keep me", **fields}, htmx=htmx)
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert message in body
    assert 'value="Keep me"' in body  # what was typed is kept
    assert ("<html" in body) is not htmx
    assert db.session.execute(db.select(db.func.count(User.id))).scalar_one() == count


@pytest.mark.parametrize("htmx", [False, True])
def test_change_role(client, admin, make_user, db, htmx):
    user = make_user("staff")
    response = client.form(f"/admin/users/{user.id}/role", {"role": "coach"}, htmx=htmx)
    if htmx:
        assert response.status_code == 200
        body = response.get_data(as_text=True)
        assert body.strip().startswith(f'<tr id="user-{user.id}"')
        assert '<option value="coach" selected>' in body
    else:
        assert response.status_code == 303
    assert find(db, user.email).role == "coach"
    assert audit(db, "user.updated", user.id).changes == {"role": ["staff", "coach"]}


@pytest.mark.parametrize("htmx", [False, True])
def test_deactivate_and_reactivate(client, admin, make_user, db, htmx):
    user = make_user("coach", password="coach password 1")
    response = client.form(f"/admin/users/{user.id}/deactivate", htmx=htmx)
    assert response.status_code == (200 if htmx else 303)
    if htmx:
        assert "Reactivate" in response.get_data(as_text=True)
    assert find(db, user.email).active is False
    assert audit(db, "user.deactivated", user.id).changes == {"active": [True, False]}

    client.form(f"/admin/users/{user.id}/reactivate", htmx=htmx)
    assert find(db, user.email).active is True
    assert audit(db, "user.reactivated", user.id).actor_id == admin.id


def test_deactivated_user_cannot_sign_in(app, client, admin, make_user, db):
    user = make_user("coach", email="gone@example.com", password="coach password 1")
    client.form(f"/admin/users/{user.id}/deactivate")
    other = app.test_client()
    response = other.form("/login", {"email": "gone@example.com", "password": "coach password 1"})
    assert response.status_code == 403
    assert "deactivated" in response.get_data(as_text=True)


@pytest.mark.parametrize("htmx", [False, True])
def test_admin_cannot_lock_themselves_out(client, admin, db, htmx):
    response = client.form(f"/admin/users/{admin.id}/role", {"role": "staff"}, htmx=htmx)
    if htmx:
        assert response.status_code == 422
        assert "You cannot remove your own admin role." in response.get_data(as_text=True)
    else:
        page = client.get(response.headers["Location"]).get_data(as_text=True)
        assert "You cannot remove your own admin role." in page
    response = client.form(f"/admin/users/{admin.id}/deactivate", htmx=htmx)
    assert find(db, admin.email).active is True
    assert find(db, admin.email).role == "admin"


@pytest.mark.parametrize("role", ["staff", "coach"])
def test_only_admins_manage_users(client, login_as, make_user, db, role):
    login_as(role)
    target = make_user("staff")
    assert client.get("/admin/users").status_code == 403
    assert client.form(f"/admin/users/{target.id}/role", {"role": "admin"}).status_code == 403
    assert client.form("/admin/users", {"email": "sneaky@example.com"}).status_code == 403
    assert find(db, target.email).role == "staff"
    assert find(db, "sneaky@example.com") is None


def test_unknown_user_is_404(client, admin):
    assert client.form("/admin/users/999999/deactivate").status_code == 404
