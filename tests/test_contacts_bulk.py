"""Bulk actions on selected or matching contacts, the job for large ones, undo and the trash."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from rq import SimpleWorker

from crm.audit.models import AuditEntry
from crm.contacts.models import BulkAction, Contact, Note, Tag
from crm.database import utcnow
from crm.redis_client import get_redis
from jobs import get_queue
from jobs.contacts import run_bulk_action


def fresh(db, contact_id):
    db.session.expire_all()
    return db.session.get(Contact, contact_id)


def tag_names(db, contact_id):
    return sorted(t.name for t in fresh(db, contact_id).tags)


def last_action(db):
    db.session.expire_all()
    return db.session.execute(
        db.select(BulkAction).order_by(BulkAction.id.desc()).limit(1)
    ).scalar_one()


def audits(db, action=None, object_id=None):
    query = db.select(AuditEntry).filter_by(object_type="contact")
    if action:
        query = query.filter_by(action=action)
    if object_id is not None:
        query = query.filter_by(object_id=object_id)
    return list(db.session.execute(query.order_by(AuditEntry.id)).scalars())


def run_worker():
    queue = get_queue("default")
    SimpleWorker([queue], connection=get_redis()).work(burst=True)


def bulk_post(client, data, *, htmx):
    return client.form("/contacts/bulk", data, htmx=htmx)


@pytest.fixture
def people(make_contact, make_user, db):
    """Three contacts; Ana and Ben are selected in most tests, Cy never is."""
    vip = Tag(name="vip")
    db.session.add(vip)
    db.session.commit()
    return {
        "ana": make_contact("Ana", status="active", tags=[vip]),
        "ben": make_contact("Ben", status="active"),
        "cy": make_contact("Cy", status="active"),
        "vip": vip,
    }


ACTIONS = [
    ({"action": "tag_add", "tag": "gold"}, "Tagged 2 contacts with gold."),
    ({"action": "tag_remove", "tag": "VIP"}, "Removed the tag vip from 2 contacts."),
    ({"action": "status", "status": "blocked"}, "Set 2 contacts to blocked."),
    ({"action": "owner", "owner_id": "COACH"}, "Assigned 2 contacts to Coach Carla."),
    ({"action": "owner", "owner_id": ""}, "Removed the owner from 2 contacts."),
    ({"action": "delete"}, "Deleted 2 contacts."),
]


def check_applied(db, people, fields, coach):
    ana, ben, cy = (people[k].id for k in ("ana", "ben", "cy"))
    action = fields["action"]
    if action == "tag_add":
        assert tag_names(db, ana) == ["gold", "vip"]
        assert tag_names(db, ben) == ["gold"]
        assert tag_names(db, cy) == []
        # Ana and Ben both lacked gold: one entry each.
        assert {e.changes["tags"][1] for e in audits(db, "contact.updated")} == {"gold"}
    elif action == "tag_remove":
        assert tag_names(db, ana) == []
        assert [e.object_id for e in audits(db, "contact.updated")] == [ana]  # Ben had no vip
        assert audits(db, "contact.updated")[0].changes == {"tags": ["vip", None]}
    elif action == "status":
        assert [fresh(db, i).status for i in (ana, ben, cy)] == ["blocked", "blocked", "active"]
        changes = [e.changes for e in audits(db, "contact.updated")]
        assert changes == [{"status": ["active", "blocked"]}] * 2
    elif action == "owner" and fields["owner_id"]:
        assert [fresh(db, i).owner_id for i in (ana, ben, cy)] == [coach.id, coach.id, None]
        changes = [e.changes for e in audits(db, "contact.updated")]
        assert changes == [{"owner_id": [None, coach.id]}] * 2
    elif action == "owner":
        assert [fresh(db, i).owner_id for i in (ana, ben, cy)] == [None, None, coach.id]
        changes = [e.changes for e in audits(db, "contact.updated")]
        assert changes == [{"owner_id": [coach.id, None]}] * 2
    elif action == "delete":
        assert fresh(db, ana).deleted_at is not None
        assert fresh(db, ben).deleted_by_action_id == last_action(db).id
        assert fresh(db, cy).deleted_at is None
        entries = audits(db, "contact.deleted")
        assert sorted(e.object_id for e in entries) == [ana, ben]
        assert entries[0].changes["deleted_at"][0] is None


def prepare(db, people, make_user, fields):
    coach = make_user("coach", name="Coach Carla")
    fields = {k: (str(coach.id) if v == "COACH" else v) for k, v in fields.items()}
    if fields["action"] == "owner" and not fields["owner_id"]:
        for contact in (people["ana"], people["ben"], people["cy"]):
            contact.owner_id = coach.id
        db.session.commit()
    return coach, fields


@pytest.mark.parametrize(("fields", "message"), ACTIONS)
def test_each_action_on_selected_ids_with_htmx(
    client, login_as, make_user, people, db, fields, message
):
    coach, fields = prepare(db, people, make_user, fields)
    login_as("staff")
    ids = [str(people["ana"].id), str(people["ben"].id)]
    response = bulk_post(client, {"scope": "selected", "ids": ids, **fields}, htmx=True)
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "<html" not in body
    assert message in body
    assert 'hx-trigger="every 1s"' not in body
    assert response.headers["HX-Trigger"] == "contacts-updated"
    assert ("Undo" in body) is (fields["action"] == "delete")
    check_applied(db, people, fields, coach)


@pytest.mark.parametrize(("fields", "message"), ACTIONS)
def test_each_action_on_a_matching_query_without_js(
    client, login_as, make_user, people, db, fields, message
):
    coach, fields = prepare(db, people, make_user, fields)
    login_as("admin")
    # "Cy" is not matched by the search, and posted ids are ignored for "matching".
    data = {
        "scope": "matching",
        "query": "status=active&sort=name",
        "ids": [str(people["cy"].id)],
        **fields,
    }
    people["cy"].status = "inactive"
    db.session.commit()
    if fields["action"] == "status":
        data["status"] = "blocked"
    response = bulk_post(client, data, htmx=False)
    assert response.status_code == 303
    action = last_action(db)
    assert response.headers["Location"] == f"/contacts/bulk/{action.id}"
    assert action.scope == "matching"
    assert action.selection["ids"] == sorted([people["ana"].id, people["ben"].id])
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "<html" in page
    assert message in page
    fresh(db, people["cy"].id).status = "active"  # as in the other test, for the checks
    db.session.commit()
    check_applied(db, people, fields, coach)


def test_matching_uses_the_lists_search_and_filters(client, login_as, make_contact, db):
    login_as("staff")
    alice = make_contact("Alice Smith", status="active")
    alina = make_contact("Alina Jones", status="inactive")
    bob = make_contact("Bob Alibi", status="active", deleted_at=utcnow())  # in the trash
    response = bulk_post(
        client,
        {
            "scope": "matching",
            "query": "q=ali&status=active",
            "action": "status",
            "status": "blocked",
        },
        htmx=True,
    )
    assert "Set 1 contact to blocked." in response.get_data(as_text=True)
    assert fresh(db, alice.id).status == "blocked"
    assert fresh(db, alina.id).status == "inactive"
    assert fresh(db, bob.id).status == "active"


def test_coach_never_touches_other_coaches_contacts(client, login_as, make_user, make_contact, db):
    other = make_user("coach")
    theirs = make_contact("Theirs", owner_id=other.id)
    coach = login_as("coach")
    mine = make_contact("Mine", owner_id=coach.id)
    ids = [str(theirs.id), str(mine.id)]
    for fields in ({"action": "status", "status": "blocked"}, {"action": "delete"}):
        response = bulk_post(client, {"scope": "selected", "ids": ids, **fields}, htmx=True)
        assert response.status_code == 200
    assert fresh(db, theirs.id).status == "active"
    assert fresh(db, theirs.id).deleted_at is None
    assert fresh(db, mine.id).status == "blocked"
    assert fresh(db, mine.id).deleted_at is not None
    # "All matching" is scoped as well.
    fresh(db, mine.id).deleted_at = None
    db.session.commit()
    response = bulk_post(
        client, {"scope": "matching", "query": "", "action": "tag_add", "tag": "x"}, htmx=True
    )
    assert "Tagged 1 contact with x." in response.get_data(as_text=True)
    assert tag_names(db, theirs.id) == []
    # Only the other coach's contact posted: nothing to change.
    response = bulk_post(
        client, {"scope": "selected", "ids": [str(theirs.id)], "action": "delete"}, htmx=True
    )
    assert response.status_code == 422
    assert fresh(db, theirs.id).deleted_at is None


@pytest.mark.parametrize("htmx", [False, True])
def test_coach_may_not_assign_owners(client, login_as, make_user, make_contact, db, htmx):
    other = make_user("coach")
    coach = login_as("coach")
    mine = make_contact("Mine", owner_id=coach.id)
    response = bulk_post(
        client,
        {"scope": "selected", "ids": [str(mine.id)], "action": "owner", "owner_id": str(other.id)},
        htmx=htmx,
    )
    assert response.status_code == 403
    assert fresh(db, mine.id).owner_id == coach.id


@pytest.mark.parametrize("htmx", [False, True])
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"action": "explode"}, "Choose what to do with the contacts."),
        ({"action": "tag_add", "tag": " "}, "Enter a tag name."),
        ({"action": "tag_remove", "tag": "nope"}, "There is no tag named “nope”."),
        ({"action": "status", "status": ""}, "Choose a status: active, inactive, blocked."),
        ({"action": "owner", "owner_id": "INACTIVE"}, "Choose an active coach as the owner."),
        ({"action": "owner", "owner_id": "STAFF"}, "Choose an active coach as the owner."),
        ({"action": "delete", "ids": []}, "Select at least one contact."),
        ({"action": "delete", "scope": "matching", "query": "q=zzzz"}, "No contacts match"),
    ],
)
def test_invalid_bulk_requests_explain_and_change_nothing(
    client, login_as, make_user, make_contact, db, htmx, fields, message
):
    staff = login_as("staff")
    inactive = make_user("coach", active=False)
    contact = make_contact("Ana")
    replace = {"INACTIVE": str(inactive.id), "STAFF": str(staff.id)}
    data = {"scope": "selected", "ids": [str(contact.id)], "query": "q=an"}
    data.update({k: replace.get(v, v) if isinstance(v, str) else v for k, v in fields.items()})
    response = bulk_post(client, data, htmx=htmx)
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert ("<html" in body) is not htmx
    assert message in body
    if not htmx:
        assert f'href="/contacts/?{data["query"]}"' in body  # back to the list as it was
    assert db.session.execute(db.select(db.func.count(BulkAction.id))).scalar_one() == 0
    assert fresh(db, contact.id).deleted_at is None
    assert db.session.execute(db.select(db.func.count(Tag.id))).scalar_one() == 0


def test_tag_names_render_escaped_in_the_result(client, login_as, make_contact, db):
    login_as("staff")
    contact = make_contact("Ana")
    response = bulk_post(
        client,
        {"scope": "selected", "ids": [str(contact.id)], "action": "tag_add", "tag": "<script>"},
        htmx=True,
    )
    body = response.get_data(as_text=True)
    assert "Tagged 1 contact with &lt;script&gt;." in body
    assert "<script>" not in body


def insert_contacts(db, n, **fields):
    """Insert `n` contacts with one executemany: fast enough for a thousand."""
    now = utcnow()
    rows = [
        {"name": f"Bulk {i:04d}", "status": "active", "created_at": now, "updated_at": now} | fields
        for i in range(n)
    ]
    db.session.execute(sa.insert(Contact), rows)
    db.session.commit()


def test_a_thousand_contacts_run_as_a_job_with_a_progress_fragment(
    client, login_as, make_contact, db
):
    staff = login_as("staff")
    insert_contacts(db, 1000)
    response = bulk_post(
        client,
        {"scope": "matching", "query": "q=bulk", "action": "status", "status": "inactive"},
        htmx=True,
    )
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    action = last_action(db)
    assert (action.status, action.total, action.processed) == ("queued", 1000, 0)
    assert f'hx-get="/contacts/bulk/{action.id}"' in body
    assert 'hx-trigger="every 1s"' in body
    assert "HX-Trigger" not in response.headers
    # The filter moves after submitting; the job keeps the selection it was given.
    late = make_contact("Bulk latecomer", status="active")
    # Nothing runs before the worker does.
    inactive = db.select(db.func.count(Contact.id)).filter_by(status="inactive")
    assert db.session.execute(inactive).scalar_one() == 0
    poll = client.htmx_get(f"/contacts/bulk/{action.id}")
    assert 'hx-trigger="every 1s"' in poll.get_data(as_text=True)
    assert get_queue("default").job_ids == [f"bulk-{action.id}"]

    run_worker()

    action = last_action(db)
    assert (action.status, action.processed) == ("done", 1000)
    assert db.session.execute(inactive).scalar_one() == 1000
    assert fresh(db, late.id).status == "active"
    entries = audits(db, "contact.updated")
    assert len(entries) == 1000
    assert entries[0].changes == {"status": ["active", "inactive"]}
    assert entries[0].actor_id == staff.id
    poll = client.htmx_get(f"/contacts/bulk/{action.id}")
    body = poll.get_data(as_text=True)
    assert "Set 1000 contacts to inactive." in body
    assert "hx-trigger" not in body  # polling stops
    assert poll.headers["HX-Trigger"] == "contacts-updated"
    # Without JavaScript: a page with a plain Refresh link while it runs.
    page = client.get(f"/contacts/bulk/{action.id}").get_data(as_text=True)
    assert "<html" in page and "Set 1000 contacts to inactive." in page
    # Running it again is harmless.
    run_bulk_action(action.id)
    assert len(audits(db, "contact.updated")) == 1000


def test_large_job_without_js_redirects_to_a_page_with_refresh(client, login_as, db):
    login_as("staff")
    insert_contacts(db, 1000)
    response = bulk_post(
        client, {"scope": "matching", "query": "", "action": "tag_add", "tag": "wave"}, htmx=False
    )
    assert response.status_code == 303
    action = last_action(db)
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "<html" in page
    assert "Working on 1000 contacts: 0 done." in page
    assert f'<a href="/contacts/bulk/{action.id}">Refresh</a>' in page
    run_worker()
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Tagged 1000 contacts with wave." in page
    tagged = db.session.execute(
        sa.text(
            "SELECT count(*) FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id "
            "WHERE t.name = 'wave'"
        )
    ).scalar_one()
    assert tagged == 1000


def test_a_failing_job_is_recorded_and_shown(client, login_as, make_user, db):
    user = login_as("staff")
    insert_contacts(db, 1000)
    bulk_post(client, {"scope": "matching", "query": "", "action": "delete"}, htmx=True)
    action = last_action(db)
    # The actor is deactivated before the worker gets to it: the job must not act for them.
    user.active = False
    db.session.commit()
    run_worker()
    action = last_action(db)
    assert action.status == "failed"
    assert "can no longer act" in action.error
    assert (
        db.session.execute(
            db.select(db.func.count(Contact.id)).where(Contact.deleted_at.is_not(None))
        ).scalar_one()
        == 0
    )
    admin = make_user("admin")
    with client.session_transaction() as session:
        session["_user_id"] = str(admin.id)
    body = client.htmx_get(f"/contacts/bulk/{action.id}").get_data(as_text=True)
    assert "The action stopped after 0 of 1000 contacts" in body
    assert "hx-trigger" not in body


def test_bulk_actions_are_private_to_their_actor(client, login_as, make_user, make_contact, db):
    login_as("staff")
    contact = make_contact("Ana")
    bulk_post(
        client, {"scope": "selected", "ids": [str(contact.id)], "action": "delete"}, htmx=True
    )
    action = last_action(db)
    login_as("staff")
    assert client.get(f"/contacts/bulk/{action.id}").status_code == 404
    assert client.htmx_get(f"/contacts/bulk/{action.id}").status_code == 404
    assert client.form(f"/contacts/bulk/{action.id}/undo", {}, htmx=True).status_code == 404
    assert fresh(db, contact.id).deleted_at is not None


# Undo


def delete_two(client, people, *, htmx=True):
    ids = [str(people["ana"].id), str(people["ben"].id)]
    return bulk_post(client, {"scope": "selected", "ids": ids, "action": "delete"}, htmx=htmx)


@pytest.mark.parametrize("htmx", [False, True])
def test_undo_within_30_seconds_restores_exactly_that_batch(client, login_as, people, db, htmx):
    login_as("staff")
    other_batch = bulk_post(
        client, {"scope": "selected", "ids": [str(people["cy"].id)], "action": "delete"}, htmx=True
    )
    assert other_batch.status_code == 200
    delete_two(client, people)
    action = last_action(db)
    assert client.get(f"/contacts/{people['ana'].id}").status_code == 404
    response = client.form(f"/contacts/bulk/{action.id}/undo", {}, htmx=htmx)
    if htmx:
        assert response.status_code == 200
        assert "2 contacts restored" in response.get_data(as_text=True)
        assert response.headers["HX-Trigger"] == "contacts-updated"
    else:
        assert response.status_code == 303
        assert response.headers["Location"] == f"/contacts/bulk/{action.id}"
        assert "Restored 2 contacts." in client.get(response.headers["Location"]).get_data(
            as_text=True
        )
    assert fresh(db, people["ana"].id).deleted_at is None
    assert fresh(db, people["ben"].id).deleted_by_action_id is None
    assert fresh(db, people["cy"].id).deleted_at is not None  # another action's delete
    assert last_action(db).status == "undone"
    restored = audits(db, "contact.restored")
    assert sorted(e.object_id for e in restored) == sorted([people["ana"].id, people["ben"].id])
    assert restored[0].changes["deleted_at"][1] is None
    # An undone action cannot be undone twice.
    assert client.form(f"/contacts/bulk/{action.id}/undo", {}, htmx=True).status_code == 409


@pytest.mark.parametrize("htmx", [False, True])
def test_undo_after_30_seconds_is_refused_and_points_to_the_trash(
    client, login_as, people, db, htmx
):
    login_as("staff")
    delete_two(client, people)
    action = last_action(db)
    action.finished_at = utcnow() - timedelta(seconds=31)
    db.session.commit()
    response = client.form(f"/contacts/bulk/{action.id}/undo", {}, htmx=htmx)
    assert response.status_code == 409
    body = response.get_data(as_text=True)
    assert ("<html" in body) is not htmx
    assert "Too late to undo here; restore them from the trash." in body
    assert 'href="/contacts/trash"' in body
    assert fresh(db, people["ana"].id).deleted_at is not None
    # The result no longer offers the button either.
    page = client.htmx_get(f"/contacts/bulk/{action.id}").get_data(as_text=True)
    assert "/undo" not in page


# One contact from its page


def test_delete_one_without_js_flashes_an_undo_form_on_the_list(client, login_as, make_contact, db):
    login_as("staff")
    contact = make_contact("Ana <b>")
    response = client.form(f"/contacts/{contact.id}/delete", {})
    assert response.status_code == 303
    assert response.headers["Location"] == "/contacts/"
    action = last_action(db)
    assert (action.action, action.total, action.status) == ("delete", 1, "done")
    page = client.get("/contacts/").get_data(as_text=True)
    assert "Ana &lt;b&gt; was moved to the trash." in page
    assert f'action="/contacts/bulk/{action.id}/undo"' in page
    assert f'name="next" value="/contacts/{contact.id}"' in page
    assert client.get(f"/contacts/{contact.id}").status_code == 404
    response = client.form(f"/contacts/bulk/{action.id}/undo", {"next": f"/contacts/{contact.id}"})
    assert response.status_code == 303
    assert response.headers["Location"] == f"/contacts/{contact.id}"
    assert client.get(f"/contacts/{contact.id}").status_code == 200


def test_delete_one_with_htmx_answers_the_result_with_undo(client, login_as, make_contact, db):
    login_as("staff")
    contact = make_contact("Ana")
    response = client.form(f"/contacts/{contact.id}/delete", {}, htmx=True)
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "Deleted 1 contact." in body
    assert f'hx-post="/contacts/bulk/{last_action(db).id}/undo"' in body
    assert response.headers["HX-Trigger"] == "contacts-updated"
    assert fresh(db, contact.id).deleted_at is not None


@pytest.mark.parametrize("htmx", [False, True])
def test_coach_cannot_delete_another_coachs_contact(
    client, login_as, make_user, make_contact, db, htmx
):
    other = make_user("coach")
    theirs = make_contact("Theirs", owner_id=other.id)
    login_as("coach")
    assert client.form(f"/contacts/{theirs.id}/delete", {}, htmx=htmx).status_code == 404
    assert fresh(db, theirs.id).deleted_at is None


# The trash


def trash_some(db, make_contact, owner_id=None, n=1, name="Gone"):
    base = utcnow()
    return [
        make_contact(f"{name} {i}", owner_id=owner_id, deleted_at=base - timedelta(minutes=i))
        for i in range(n)
    ]


@pytest.mark.parametrize("htmx", [False, True])
def test_trash_lists_what_the_user_may_see_newest_first(
    client, login_as, make_user, make_contact, db, htmx
):
    other = make_user("coach")
    coach = login_as("coach")
    mine = trash_some(db, make_contact, coach.id, n=2, name="Mine")
    trash_some(db, make_contact, other.id, name="Theirs")
    survivor = make_contact("Survivor", owner_id=coach.id)
    make_contact("Merged away", owner_id=coach.id, deleted_at=utcnow(), merged_into_id=survivor.id)
    make_contact("Alive", owner_id=coach.id)
    response = (client.htmx_get if htmx else client.get)("/contacts/trash")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert ("<html" in body) is not htmx
    assert re.findall(r"<td>(Mine \d|Theirs \d|Merged away|Alive|Survivor)</td>", body) == [
        "Mine 0",
        "Mine 1",
    ]
    assert f'id="trash-{mine[0].id}"' in body
    assert "Delete for good" not in body  # only admins purge


def test_trash_pages_with_load_more(client, login_as, make_contact, db):
    login_as("staff")
    trash_some(db, make_contact, n=53)
    body = client.get("/contacts/trash").get_data(as_text=True)
    assert len(re.findall(r'id="trash-\d+"', body)) == 50
    assert 'id="trash-more"' in body
    more = re.search(r'hx-get="([^"]+)"', body.split('id="trash-more"')[1]).group(1)
    more = more.replace("&amp;", "&")
    rest = client.htmx_get(more).get_data(as_text=True)
    assert re.findall(r"<td>(Gone \d+)</td>", rest) == ["Gone 50", "Gone 51", "Gone 52"]
    assert "trash-more" not in rest
    assert client.get("/contacts/trash?after=nonsense").status_code == 400


@pytest.mark.parametrize("htmx", [False, True])
def test_restore_from_the_trash(client, login_as, make_contact, db, htmx):
    staff = login_as("staff")
    [contact] = trash_some(db, make_contact)
    response = client.form(f"/contacts/{contact.id}/restore", {}, htmx=htmx)
    if htmx:
        assert response.status_code == 200
        assert response.get_data(as_text=True) == ""  # the row goes away
    else:
        assert response.status_code == 303
        assert response.headers["Location"] == "/contacts/trash"
    assert fresh(db, contact.id).deleted_at is None
    [entry] = audits(db, "contact.restored", contact.id)
    assert entry.actor_id == staff.id
    assert client.get(f"/contacts/{contact.id}").status_code == 200


@pytest.mark.parametrize("htmx", [False, True])
def test_coach_cannot_restore_or_purge_another_coachs_contact(
    client, login_as, make_user, make_contact, db, htmx
):
    other = make_user("coach")
    [theirs] = trash_some(db, make_contact, other.id)
    login_as("coach")
    assert client.form(f"/contacts/{theirs.id}/restore", {}, htmx=htmx).status_code == 404
    assert client.form(f"/contacts/{theirs.id}/purge", {"confirmed": "1"}).status_code == 403
    assert fresh(db, theirs.id).deleted_at is not None


def test_only_admins_purge_and_only_from_the_trash(client, login_as, make_contact, db):
    [contact] = trash_some(db, make_contact)
    alive = make_contact("Alive")
    login_as("staff")
    assert client.form(f"/contacts/{contact.id}/purge", {"confirmed": "1"}).status_code == 403
    login_as("admin")
    assert client.form(f"/contacts/{alive.id}/purge", {"confirmed": "1"}).status_code == 404
    assert fresh(db, contact.id) is not None


def test_purge_without_js_asks_for_confirmation_first(client, login_as, make_contact, db):
    admin = login_as("admin")
    [contact] = trash_some(db, make_contact)
    db.session.add(Note(contact_id=contact.id, body="private"))
    db.session.commit()
    assert 'hx-confirm="Delete Gone 0 for good?' in client.get("/contacts/trash").get_data(
        as_text=True
    )
    response = client.form(f"/contacts/{contact.id}/purge", {})
    assert response.status_code == 200
    assert "Delete <strong>Gone 0</strong> for good?" in response.get_data(as_text=True)
    assert fresh(db, contact.id) is not None
    response = client.form(f"/contacts/{contact.id}/purge", {"confirmed": "1"})
    assert response.status_code == 303
    assert response.headers["Location"] == "/contacts/trash"
    contact_id = contact.id
    assert fresh(db, contact_id) is None
    assert db.session.execute(db.select(db.func.count(Note.id))).scalar_one() == 0
    [entry] = audits(db, "contact.purged", contact_id)
    assert entry.actor_id == admin.id
    assert entry.changes["name"] == ["Gone 0", None]


def test_purge_with_htmx_removes_the_row(client, login_as, make_contact, db):
    login_as("admin")
    [contact] = trash_some(db, make_contact)
    response = client.form(f"/contacts/{contact.id}/purge", {"confirmed": "1"}, htmx=True)
    assert response.status_code == 200
    assert response.get_data(as_text=True) == ""
    assert fresh(db, contact.id) is None


def test_trash_escapes_names(client, login_as, make_contact, db):
    login_as("admin")
    trash_some(db, make_contact, name="<script>alert(1)</script>")
    body = client.get("/contacts/trash").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt; 0" in body
