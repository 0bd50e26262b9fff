"""CRM sync against the HubSpot-compatible fake, through HTTP and the real RQ worker:
coalescing, batching, retries, errors on the contact page, archiving, and "Resync all"."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from rq import SimpleWorker
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from crm.contacts.models import Contact
from crm.crm_sync import services
from crm.crm_sync.models import CrmSyncRun, CrmSyncState
from crm.database import utcnow
from crm.redis_client import get_redis
from jobs import get_queue


@pytest.fixture(autouse=True)
def sync_now(app, monkeypatch):
    """Flush as soon as a change commits and retry at once, so a burst worker sees it all."""
    monkeypatch.setitem(app.config, "CRM_SYNC_DELAY_SECONDS", 0)
    monkeypatch.setitem(app.config, "CRM_SYNC_RETRY_INTERVALS", [0])


def run_worker() -> None:
    SimpleWorker([get_queue("sync")], connection=get_redis()).work(burst=True)


def state_of(db, contact_id: int) -> CrmSyncState | None:
    db.session.expire_all()
    return db.session.execute(
        sa.select(CrmSyncState).where(CrmSyncState.contact_id == contact_id)
    ).scalar_one_or_none()


def contact_form(name: str, email: str = "", **fields) -> dict:
    return {"name": name, "email": email, "phone": "", "status": "active", **fields}


def synced_contact(make_contact, db, name="Ana Lima", email="ana@example.com", **fields):
    contact = make_contact(name, email=email, **fields)
    run_worker()
    assert state_of(db, contact.id).crm_id
    return contact


# Coalescing and batching


def test_three_edits_within_the_window_make_one_push_of_the_last_state(
    app, client, db, login_as, crm_fake, redis, monkeypatch
):
    monkeypatch.setitem(app.config, "CRM_SYNC_DELAY_SECONDS", 5)
    login_as("staff")
    response = client.form("/contacts/", contact_form("Ana", "ana@example.com"))
    assert response.status_code == 303
    contact_id = int(response.headers["Location"].rstrip("/").rsplit("/", 1)[-1])
    for name in ("Ana Lima", "Ana Maria Lima"):
        response = client.form(f"/contacts/{contact_id}", contact_form(name, "ana@example.com"))
        assert response.status_code == 303

    queue = get_queue("sync")
    scheduled = ScheduledJobRegistry(queue=queue)
    (job_id,) = scheduled.get_job_ids()
    due = scheduled.get_scheduled_time(job_id)
    assert timedelta(seconds=3) < due - utcnow() <= timedelta(seconds=5)
    assert queue.count == 0
    page = client.get(f"/contacts/{contact_id}").get_data(as_text=True)
    assert "pending" in page and "Not synced yet" not in page

    # The window ends: the scheduler would enqueue the job now.
    job = Job.fetch(job_id, connection=redis)
    scheduled.remove(job)
    queue.enqueue_job(job)
    run_worker()

    assert crm_fake.upserted() == [
        [
            {
                "idProperty": "email",
                "id": "ana@example.com",
                "properties": {
                    "email": "ana@example.com",
                    "phone": "",
                    "firstname": "Ana",
                    "lastname": "Maria Lima",
                },
            }
        ]
    ]
    state = state_of(db, contact_id)
    assert state.crm_id == crm_fake.contact(email="ana@example.com")["id"]
    assert state.synced_at is not None and state.last_error is None
    page = client.get(f"/contacts/{contact_id}").get_data(as_text=True)
    assert "Synced" in page and f"CRM id {state.crm_id}" in page and "pending" not in page


def test_250_contacts_go_in_three_calls_of_at_most_100(db, crm_fake):
    db.session.add_all(Contact(name=f"C {n}", email=f"c{n}@example.com") for n in range(250))
    db.session.commit()
    run_worker()

    sizes = [len(inputs) for inputs in crm_fake.upserted()]
    assert sorted(sizes) == [50, 100, 100]
    assert len(crm_fake.stored_emails()) == 250
    db.session.expire_all()
    states = list(db.session.execute(sa.select(CrmSyncState)).scalars())
    assert len(states) == 250
    assert all(s.crm_id and s.synced_at and not s.last_error for s in states)
    assert get_redis().scard(services.PENDING_KEY) == 0


def test_pushing_an_unchanged_contact_makes_no_call(client, db, login_as, make_contact, crm_fake):
    contact = synced_contact(make_contact, db)
    login_as("staff")
    # Same name and email, another owner-less save: nothing the CRM holds changed.
    client.form(f"/contacts/{contact.id}", contact_form("Ana Lima", "ana@example.com"))
    run_worker()
    assert len(crm_fake.calls("batch_upsert")) == 1


def test_phone_is_the_id_when_there_is_no_email(db, make_contact, crm_fake):
    contact = make_contact("Cy", phone="+14155552671")
    run_worker()
    (inputs,) = crm_fake.upserted()
    assert inputs[0]["idProperty"] == "phone" and inputs[0]["id"] == "+14155552671"
    assert state_of(db, contact.id).crm_id == crm_fake.contact(phone="+14155552671")["id"]


def test_contacts_sharing_an_email_go_in_separate_calls(db, crm_fake):
    db.session.add_all(
        [Contact(name="Ana", email="a@example.com"), Contact(name="Ann", email="a@example.com")]
    )
    db.session.commit()
    run_worker()
    assert [len(inputs) for inputs in crm_fake.upserted()] == [1, 1]
    db.session.expire_all()
    ids = {s.crm_id for s in db.session.execute(sa.select(CrmSyncState)).scalars()}
    assert len(ids) == 1  # one CRM record for both, as the CRM keys on the email


# Failures


@pytest.mark.parametrize("status", [500, 429])
def test_a_transient_error_is_retried_until_synced(
    client, db, login_as, make_contact, crm_fake, status
):
    crm_fake.fail_next(1, status, endpoint="batch_upsert")
    contact = make_contact("Ana", email="ana@example.com")
    run_worker()

    assert len(crm_fake.calls("batch_upsert")) == 2
    state = state_of(db, contact.id)
    assert state.crm_id == crm_fake.contact(email="ana@example.com")["id"]
    assert state.last_error is None and state.error_at is None
    login_as("staff")
    page = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
    assert "Synced" in page and "unavailable" not in page


def test_an_outage_waits_with_backoff_and_shows_on_the_contact(
    app, client, db, login_as, make_contact, crm_fake, monkeypatch
):
    monkeypatch.setitem(app.config, "CRM_SYNC_RETRY_INTERVALS", [30])
    crm_fake.fail_next(1, 503, endpoint="batch_upsert")
    contact = make_contact("Ana", email="ana@example.com")
    run_worker()

    scheduled = ScheduledJobRegistry(queue=get_queue("sync"))
    (job_id,) = scheduled.get_job_ids()
    assert (
        timedelta(seconds=20)
        < scheduled.get_scheduled_time(job_id) - utcnow()
        < timedelta(seconds=40)
    )
    assert get_redis().smembers(services.PENDING_KEY) == {str(contact.id).encode()}
    login_as("staff")
    page = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
    assert "CRM unavailable, will retry" in page and "pending" in page


def test_a_permanent_error_shows_on_the_contact_page(client, db, login_as, make_contact, crm_fake):
    crm_fake.fail_next(1, 400, endpoint="batch_upsert", message="Property values were not valid")
    contact = make_contact("Ana", email="ana@example.com")
    run_worker()

    assert len(crm_fake.calls("batch_upsert")) == 1  # not retried
    assert get_redis().scard(services.PENDING_KEY) == 0
    state = state_of(db, contact.id)
    assert state.crm_id is None
    assert "Property values were not valid" in state.last_error
    login_as("staff")
    page = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
    assert "The CRM refused it: Property values were not valid (HTTP 400)" in page


def test_a_refused_batch_is_halved_to_find_the_bad_contact(db, crm_fake):
    contacts = [Contact(name=f"C {n}", email=f"c{n}@example.com") for n in range(4)]
    db.session.add_all(contacts)
    db.session.commit()
    # The whole batch, its first half and that half's first contact are refused.
    crm_fake.fail_next(3, 400, endpoint="batch_upsert")
    run_worker()

    assert [len(c.json["inputs"]) for c in crm_fake.calls("batch_upsert")] == [4, 2, 1, 1, 2]
    first, *others = sorted(contacts, key=lambda c: c.id)
    assert "refused" in state_of(db, first.id).last_error
    for contact in others:
        state = state_of(db, contact.id)
        assert state.crm_id and state.last_error is None


def test_a_contact_without_email_or_phone_is_reported(client, db, login_as, make_contact, crm_fake):
    contact = make_contact("Nobody")
    run_worker()
    assert crm_fake.calls() == []
    assert "needs an email or phone" in state_of(db, contact.id).last_error
    login_as("staff")
    page = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
    assert "Not synced: needs an email or phone." in page


# Deletes


def test_a_soft_delete_archives_and_a_restore_brings_it_back(
    client, db, login_as, make_contact, crm_fake
):
    contact = synced_contact(make_contact, db)
    first_id = state_of(db, contact.id).crm_id
    login_as("staff")
    assert client.form(f"/contacts/{contact.id}/delete").status_code == 303
    run_worker()

    assert crm_fake.contact(email="ana@example.com")["archived"] is True
    assert [c.json["inputs"] for c in crm_fake.calls("batch_archive")] == [[{"id": first_id}]]
    state = state_of(db, contact.id)
    assert state.archived_at is not None and state.last_error is None

    assert client.form(f"/contacts/{contact.id}/restore").status_code == 303
    run_worker()
    record = crm_fake.contact(email="ana@example.com")
    assert record["archived"] is False
    state = state_of(db, contact.id)
    assert state.crm_id == record["id"] != first_id
    assert state.archived_at is None
    assert len(crm_fake.calls("batch_archive")) == 1  # the archived record is not touched


def test_a_contact_purged_before_its_push_is_still_archived(
    client, db, login_as, make_contact, crm_fake
):
    contact = synced_contact(make_contact, db)
    crm_id = state_of(db, contact.id).crm_id
    login_as("admin")
    client.form(f"/contacts/{contact.id}/delete")
    response = client.form(f"/contacts/{contact.id}/purge", {"confirmed": "1"})
    assert response.status_code == 303
    run_worker()

    assert crm_fake.contact(email="ana@example.com")["archived"] is True
    assert [c.json["inputs"] for c in crm_fake.calls("batch_archive")] == [[{"id": crm_id}]]
    db.session.expire_all()
    assert db.session.execute(sa.select(CrmSyncState)).scalars().all() == []


def test_a_new_email_replaces_the_old_record(client, db, login_as, make_contact, crm_fake):
    contact = synced_contact(make_contact, db)
    old_id = state_of(db, contact.id).crm_id
    login_as("staff")
    client.form(f"/contacts/{contact.id}", contact_form("Ana Lima", "ana.lima@example.com"))
    run_worker()

    assert crm_fake.contact(email="ana@example.com")["archived"] is True
    assert state_of(db, contact.id).crm_id == crm_fake.contact(email="ana.lima@example.com")["id"]
    assert crm_fake.stored_emails() == ["ana.lima@example.com"]
    assert old_id != state_of(db, contact.id).crm_id


# Not configured


def test_nothing_is_queued_when_not_configured(app, client, db, login_as, redis, monkeypatch):
    monkeypatch.setitem(app.config, "CRM_SYNC_URL", None)
    monkeypatch.setitem(app.config, "CRM_SYNC_TOKEN", None)
    login_as("staff")
    response = client.form("/contacts/", contact_form("Ana", "ana@example.com"))
    contact_id = int(response.headers["Location"].rstrip("/").rsplit("/", 1)[-1])
    client.form(f"/contacts/{contact_id}", contact_form("Ana Lima", "ana@example.com"))
    page = client.get(f"/contacts/{contact_id}").get_data(as_text=True)
    client.form(f"/contacts/{contact_id}/delete")

    queue = get_queue("sync")
    assert queue.count == 0
    assert ScheduledJobRegistry(queue=queue).count == 0
    assert redis.keys("rapport:crm_sync:*") == []
    assert [k for k in redis.keys("rq:*") if b"sync" in k] == []
    assert "Not connected" in page
    db.session.expire_all()
    assert db.session.execute(sa.select(CrmSyncState)).scalars().all() == []


# Resync all


def _live_contacts(db, n: int) -> list[int]:
    contacts = [Contact(name=f"R {i}", email=f"r{i}@example.com") for i in range(n)]
    db.session.add_all(contacts)
    db.session.commit()
    return sorted(c.id for c in contacts)


@pytest.mark.parametrize("htmx", [False, True])
def test_resync_all_runs_as_a_job_with_progress(client, db, login_as, crm_fake, htmx):
    ids = _live_contacts(db, 150)
    run_worker()  # their own pushes, out of the way
    before = len(crm_fake.calls("batch_upsert"))
    login_as("admin")

    response = client.form("/admin/crm-sync/resync", htmx=htmx)
    if htmx:
        assert response.status_code == 200
        fragment = response.get_data(as_text=True)
        assert "<html" not in fragment and 'id="crm-sync-run"' in fragment
        assert "Resyncing 150 contacts: 0 done" in fragment and 'hx-trigger="every 1s"' in fragment
    else:
        assert response.status_code == 303
        assert response.headers["Location"].endswith("/admin/crm-sync/")
        page = client.get("/admin/crm-sync/").get_data(as_text=True)
        assert "Resync started." in page and "Resyncing 150 contacts" in page

    # While it waits for a worker: the fragment polls, a plain page shows the same.
    fragment = client.htmx_get("/admin/crm-sync/")
    assert "HX-Request" in fragment.headers["Vary"]
    assert 'hx-trigger="every 1s"' in fragment.get_data(as_text=True)
    assert "<h1>CRM sync</h1>" in client.get("/admin/crm-sync/").get_data(as_text=True)
    again = client.form("/admin/crm-sync/resync", htmx=htmx, follow_redirects=True)
    assert "A resync is already running" in again.get_data(as_text=True)

    run_worker()

    pushed = crm_fake.upserted()[before:]
    assert [len(inputs) for inputs in pushed] == [100, 50]  # forced, though unchanged
    assert [item["id"] for inputs in pushed for item in inputs] == [
        f"r{i}@example.com" for i in range(150)
    ]
    db.session.expire_all()
    (run,) = db.session.execute(sa.select(CrmSyncRun)).scalars()
    assert (run.total, run.done, run.failed, run.last_contact_id) == (150, 150, 0, ids[-1])
    assert run.finished_at is not None and run.running is None and run.error is None
    done = client.htmx_get("/admin/crm-sync/").get_data(as_text=True)
    assert "hx-trigger" not in done and "150 of 150 contacts synced" in done
    assert "Resync all contacts" in done
    page = client.get("/admin/crm-sync/").get_data(as_text=True)
    assert "150 of 150 contacts synced" in page and "hx-trigger" not in page


def test_resync_rides_out_an_outage(client, db, login_as, crm_fake):
    _live_contacts(db, 3)
    run_worker()
    login_as("admin")
    crm_fake.fail_next(1, 503, endpoint="batch_upsert")
    client.form("/admin/crm-sync/resync")
    run_worker()
    db.session.expire_all()
    (run,) = db.session.execute(sa.select(CrmSyncRun)).scalars()
    assert (run.done, run.failed, run.error) == (3, 0, None)
    assert run.finished_at is not None


def test_resync_is_refused_when_not_configured(app, client, db, login_as, monkeypatch):
    monkeypatch.setitem(app.config, "CRM_SYNC_URL", None)
    login_as("admin")
    page = client.get("/admin/crm-sync/").get_data(as_text=True)
    assert "not configured: CRM_SYNC_URL" in page and "Resync all contacts" not in page
    response = client.form("/admin/crm-sync/resync", follow_redirects=True)
    assert "CRM sync is not configured" in response.get_data(as_text=True)
    assert get_queue("sync").count == 0
    db.session.expire_all()
    assert db.session.execute(sa.select(CrmSyncRun)).scalars().all() == []


@pytest.mark.parametrize("role", ["coach", "staff"])
def test_only_admins_open_the_resync_page(client, login_as, crm_fake, role):
    login_as(role)
    assert client.get("/admin/crm-sync/").status_code == 403
    assert client.htmx_get("/admin/crm-sync/").status_code == 403
    assert client.form("/admin/crm-sync/resync").status_code == 403
    assert get_queue("sync").count == 0


def test_signed_out_users_are_sent_to_sign_in(client, db):
    response = client.get("/admin/crm-sync/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
