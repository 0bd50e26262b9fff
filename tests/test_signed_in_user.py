"""Each process keeps the signed-in users it loaded (crm/users/cache.py); a change to any
user reaches every process on its next request."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from crm import create_app
from crm.contacts.models import Contact
from crm.extensions import db as _db

SHARED_SETTINGS = ("TESTING", "SQLALCHEMY_DATABASE_URI", "REDIS_URL", "REDIS_EMBEDDED")


@pytest.fixture
def other_process(app):
    """A second app on the same database and Redis: another web process, with its own copies."""
    other = create_app({key: app.config[key] for key in SHARED_SETTINGS})
    other.test_client_class = app.test_client_class
    yield other
    with other.app_context():
        _db.engine.dispose()


def sign_in(client, user) -> None:
    with client.session_transaction() as session:
        session["_user_id"] = str(user.id)
        session["_fresh"] = True


def user_queries(client, url: str) -> tuple[int, int]:
    """The response's status and how many statements loaded a whole user row."""
    seen: list[str] = []

    def record(conn, cursor, statement, *args):
        if "users.password_hash" in statement:
            seen.append(statement)

    event.listen(_db.engine, "before_cursor_execute", record)
    try:
        status = client.get(url).status_code
    finally:
        event.remove(_db.engine, "before_cursor_execute", record)
    return status, len(seen)


def test_a_role_change_or_deactivation_in_another_process_applies_on_the_next_request(
    app, other_process, make_user, make_contact, db
):
    staff = make_user("staff", name="Sam Staff")
    someone_elses = make_contact("Not Yours", owner_id=make_user("coach").id)
    browser = app.test_client()
    sign_in(browser, staff)
    assert user_queries(browser, "/contacts/")[0] == 200
    # Nothing changed since: the process's copy stands in for the query.
    assert user_queries(browser, f"/contacts/{someone_elses.id}") == (200, 0)

    admin = other_process.test_client()
    sign_in(admin, make_user("admin"))
    assert admin.form(f"/admin/users/{staff.id}/role", {"role": "coach"}).status_code == 303
    # Now a coach: another coach's client is a 404 at once, read afresh.
    assert user_queries(browser, f"/contacts/{someone_elses.id}") == (404, 1)

    assert admin.form(f"/admin/users/{staff.id}/deactivate").status_code == 303
    response = browser.get("/contacts/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_a_change_made_outside_the_app_is_seen_within_the_cache_seconds(
    app, client, login_as, db, monkeypatch
):
    monkeypatch.setitem(app.config, "SIGNED_IN_USER_CACHE_SECONDS", 1)
    user = login_as("staff")
    assert client.get("/contacts/").status_code == 200
    # As psql would: a statement the app cannot tell writes users.
    db.session.execute(sa.text("UPDATE users SET active = false WHERE id = :id"), {"id": user.id})
    db.session.commit()
    assert client.get("/contacts/").status_code == 200  # the copy, for at most a second
    time.sleep(1.1)
    assert client.get("/contacts/").status_code == 302


def test_a_redis_that_restarts_empty_does_not_revive_old_copies(client, login_as, db, redis):
    user = login_as("staff")
    redis.flushdb()  # no version yet: the first request starts one
    assert client.get("/contacts/").status_code == 200
    db.session.execute(sa.text("UPDATE users SET active = false WHERE id = :id"), {"id": user.id})
    db.session.commit()
    redis.flushdb()  # a restart of a Redis that keeps nothing on disk
    assert client.get("/contacts/").status_code == 302


def test_with_the_cache_off_every_request_reads_the_user(app, client, login_as, monkeypatch):
    monkeypatch.setitem(app.config, "SIGNED_IN_USER_CACHE_SECONDS", 0)
    login_as("staff")
    assert user_queries(client, "/contacts/") == (200, 1)
    assert user_queries(client, "/contacts/") == (200, 1)


def test_a_user_edited_through_the_app_is_shown_afresh(client, login_as, db):
    user = login_as("staff", name="Old Name")
    assert "Old Name" in client.get("/contacts/").text
    db.session.execute(sa.update(Contact).values(status="active"))  # unrelated bulk write
    user.name = "New Name"
    db.session.commit()
    page = client.get("/contacts/").text
    assert "New Name" in page and "Old Name" not in page
