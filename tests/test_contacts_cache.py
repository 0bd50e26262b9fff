"""Rendered list pages are kept in Redis, and every write to what they show makes them stale."""

from __future__ import annotations

import redis as redis_py
import sqlalchemy as sa

from crm.contacts import cache
from crm.contacts.models import Contact


def test_a_kept_page_is_served_until_a_contact_changes(client, login_as, make_contact, redis, db):
    login_as("staff")
    ada = make_contact("Ada Lovelace", phone="+14155550100")
    assert "Ada Lovelace" in client.get("/contacts/").text
    assert redis.keys("rapport:contacts:page:*"), "the page was kept"

    # An inline edit commits through the ORM.
    client.form(
        f"/contacts/{ada.id}",
        {
            "name": "Ada King",
            "phone": "+14155550100",
            "email": "",
            "status": "active",
            "inline": "1",
        },
        htmx=True,
    )
    page = client.get("/contacts/").text
    assert "Ada King" in page and "Ada Lovelace" not in page

    # A bulk UPDATE statement skips the unit of work; it must make the page stale too.
    db.session.execute(sa.update(Contact).where(Contact.id == ada.id).values(status="blocked"))
    db.session.commit()
    assert 'status-blocked">blocked' in client.get("/contacts/").text
    assert 'status-blocked">blocked' in client.htmx_get("/contacts/").text


def test_a_tag_added_in_bulk_shows_on_the_kept_page(client, login_as, make_contact):
    login_as("staff")
    ada = make_contact("Ada Lovelace")
    assert "vip" not in client.get("/contacts/").text
    response = client.form(
        "/contacts/bulk", {"ids": [str(ada.id)], "action": "tag_add", "tag": "vip"}
    )
    assert response.status_code in (200, 303)
    assert '<span class="tag">vip</span>' in client.get("/contacts/").text


def test_staff_and_coaches_never_share_a_kept_page(client, login_as, make_user, make_contact):
    coach = make_user("coach")
    make_contact("Theirs", owner_id=coach.id)
    make_contact("Someone else's")
    login_as("staff")
    assert "Someone else" in client.get("/contacts/").text
    with client.session_transaction() as session:
        session["_user_id"] = str(coach.id)
    page = client.get("/contacts/").text
    assert "Theirs" in page and "Someone else" not in page


def test_the_count_is_kept_and_goes_stale_with_the_rows(client, login_as, make_contact):
    login_as("staff")
    make_contact("One")
    assert "1 contact" in client.htmx_get("/contacts/count").text
    make_contact("Two")
    assert "2 contacts" in client.htmx_get("/contacts/count").text


def test_searches_are_never_kept(client, login_as, make_contact, redis):
    login_as("staff")
    make_contact("Ada Lovelace")
    assert "Ada Lovelace" in client.htmx_get("/contacts/?q=love").text
    assert not redis.keys("rapport:contacts:page:*")


def test_nothing_is_kept_when_the_cache_is_off(app, client, login_as, make_contact, redis):
    login_as("staff")
    make_contact("Ada Lovelace")
    app.config["CONTACTS_LIST_CACHE_SECONDS"] = 0
    try:
        assert "Ada Lovelace" in client.get("/contacts/").text
    finally:
        app.config["CONTACTS_LIST_CACHE_SECONDS"] = 300
    assert not redis.keys("rapport:contacts:page:*") + redis.keys("rapport:contacts:options:*")


def test_a_version_bump_makes_every_kept_page_stale(app, client, login_as, make_contact, redis):
    login_as("staff")
    make_contact("Ada Lovelace")
    client.get("/contacts/")
    key = redis.keys("rapport:contacts:page:*")[0].decode()
    with app.app_context():
        version, (kept,) = cache.lookup(key)
        assert kept is not None
        cache.bump_version()
        assert cache.lookup(key)[1] == [None]


def test_a_search_reads_redis_once_and_still_offers_a_new_coach(
    client, login_as, make_user, make_contact, monkeypatch
):
    """A staff search reads the signed-in user's version and the bulk bar's coaches in one
    round trip; a coach added since is offered all the same."""
    login_as("staff")
    make_contact("Ada Lovelace")
    assert "Ada Lovelace" in client.htmx_get("/contacts/?q=love").text  # copies kept
    commands = []
    send = redis_py.Redis.execute_command

    def spy(self, *args, **options):
        commands.append(args[0])
        return send(self, *args, **options)

    monkeypatch.setattr(redis_py.Redis, "execute_command", spy)
    assert "Ada Lovelace" in client.htmx_get("/contacts/?q=love").text
    assert commands == ["MGET"]
    monkeypatch.undo()
    coach = make_user("coach", name="Zelda Coach")
    results = client.htmx_get("/contacts/?q=love").text
    assert f'<option value="{coach.id}">Zelda Coach</option>' in results
