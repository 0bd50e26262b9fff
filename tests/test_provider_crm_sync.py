"""crm.integrations.crm_sync_api against the HubSpot-compatible CRM fake."""

from __future__ import annotations

import pytest
import requests

from crm.integrations import crm_sync_api, policy
from tests.fakes.server import serve


def _contact(email: str, **properties) -> dict:
    return {"idProperty": "email", "id": email, "properties": {"email": email, **properties}}


def test_not_configured_names_what_is_missing(app, monkeypatch):
    monkeypatch.setitem(app.config, "CRM_SYNC_URL", None)
    monkeypatch.setitem(app.config, "CRM_SYNC_TOKEN", None)
    assert crm_sync_api.missing_settings() == ["CRM_SYNC_URL", "CRM_SYNC_TOKEN"]
    with pytest.raises(policy.PermanentError, match="not configured"):
        crm_sync_api.batch_upsert([_contact("ana@example.com")])


def test_batch_upsert_is_idempotent_by_email(crm_fake):
    assert crm_sync_api.missing_settings() == []
    first = crm_sync_api.batch_upsert(
        [_contact("ana@example.com", firstname="Ana"), _contact("bo@example.com")]
    )
    assert [r["new"] for r in first] == [True, True]
    again = crm_sync_api.batch_upsert([_contact("Ana@Example.com", firstname="Ana Maria")])
    assert again[0]["new"] is False
    assert again[0]["id"] == first[0]["id"]
    assert crm_fake.contact(email="ana@example.com")["properties"]["firstname"] == "Ana Maria"
    assert crm_fake.stored_emails() == ["Ana@Example.com", "bo@example.com"]
    (call, _) = crm_fake.calls("batch_upsert")
    assert call.headers["Authorization"] == f"Bearer {crm_fake.token}"
    assert crm_fake.upserted()[1] == [_contact("Ana@Example.com", firstname="Ana Maria")]


def test_upsert_by_phone(crm_fake):
    (result,) = crm_sync_api.batch_upsert(
        [{"idProperty": "phone", "id": "+14155550123", "properties": {"firstname": "Cy"}}]
    )
    assert crm_fake.contact(phone="+14155550123")["id"] == result["id"]


def test_more_than_a_hundred_are_refused_before_any_request(crm_fake):
    inputs = [_contact(f"c{n}@example.com") for n in range(101)]
    with pytest.raises(ValueError, match="at most 100"):
        crm_sync_api.batch_upsert(inputs)
    with pytest.raises(ValueError, match="at most 100"):
        crm_sync_api.batch_archive(str(n) for n in range(101))
    assert crm_fake.calls() == []
    assert len(crm_sync_api.batch_upsert(inputs[:100])) == 100


def test_the_fake_refuses_oversized_and_duplicate_batches(crm_fake):
    url = f"{crm_fake.url}/crm/v3/objects/contacts/batch/upsert"
    headers = {"Authorization": f"Bearer {crm_fake.token}"}
    too_many = {"inputs": [_contact(f"c{n}@example.com") for n in range(101)]}
    with requests.post(url, json=too_many, headers=headers, timeout=5) as response:
        assert response.status_code == 400
        assert response.json()["category"] == "VALIDATION_ERROR"
    duplicates = {"inputs": [_contact("a@example.com"), _contact("A@example.com")]}
    with requests.post(url, json=duplicates, headers=headers, timeout=5) as response:
        assert response.status_code == 400
        assert "Duplicate" in response.json()["message"]


def test_empty_batches_make_no_request(crm_fake):
    assert crm_sync_api.batch_upsert([]) == []
    crm_sync_api.batch_archive([])
    assert crm_fake.calls() == []


def test_batch_archive(crm_fake):
    results = crm_sync_api.batch_upsert([_contact("ana@example.com"), _contact("bo@example.com")])
    crm_sync_api.batch_archive([results[0]["id"], "999999"])
    assert crm_fake.contact(email="ana@example.com")["archived"] is True
    assert crm_fake.stored_emails() == ["bo@example.com"]
    # Archived, then pushed again: a new record.
    (back,) = crm_sync_api.batch_upsert([_contact("ana@example.com")])
    assert back["new"] is True and back["id"] != results[0]["id"]


def test_rate_limited_answer_is_transient_with_retry_after(crm_fake):
    crm_fake.fail_next(1, 429, retry_after=7)
    with pytest.raises(policy.TransientError) as caught:
        crm_sync_api.batch_upsert([_contact("ana@example.com")])
    assert (caught.value.status, caught.value.retry_after) == (429, 7)
    assert crm_sync_api.batch_upsert([_contact("ana@example.com")])[0]["new"] is True


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, policy.TransientError), (502, policy.TransientError), (400, policy.PermanentError)],
)
def test_injected_failures_are_classified(crm_fake, status, error):
    crm_fake.fail_next(1, status)
    with pytest.raises(error) as caught:
        crm_sync_api.batch_upsert([_contact("ana@example.com")])
    assert caught.value.status == status


def test_wrong_token_is_permanent(app, crm_fake, monkeypatch):
    monkeypatch.setitem(app.config, "CRM_SYNC_TOKEN", "pat-wrong")
    with pytest.raises(policy.PermanentError) as caught:
        crm_sync_api.check_health()
    assert caught.value.status == 401


def test_health_lists_one_contact(crm_fake):
    crm_sync_api.check_health()
    (call,) = crm_fake.calls()
    assert (call.endpoint, call.query["limit"]) == ("contacts_list", "1")


def test_unreachable_crm_is_transient(app, crm_fake, monkeypatch):
    with serve(lambda environ, start_response: []) as url:
        pass  # the port is free again: nothing listens there now
    monkeypatch.setitem(app.config, "CRM_SYNC_URL", url)
    with pytest.raises(policy.TransientError):
        crm_sync_api.check_health()
