"""crm.integrations.calendly against the Calendly fake: OAuth, paginated events, webhooks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests

from crm.integrations import calendly, metrics, policy

REDIRECT = "https://crm.example.com/calendly/callback"


def test_not_configured_names_what_is_missing(app, monkeypatch):
    monkeypatch.setitem(app.config, "CALENDLY_CLIENT_ID", None)
    monkeypatch.setitem(app.config, "CALENDLY_CLIENT_SECRET", None)
    assert calendly.missing_settings() == ["CALENDLY_CLIENT_ID", "CALENDLY_CLIENT_SECRET"]
    with pytest.raises(policy.PermanentError, match="CALENDLY_CLIENT_ID"):
        calendly.exchange_code("code", REDIRECT)


def test_code_exchange_then_single_use_refresh(calendly_fake):
    tokens = calendly.exchange_code(calendly_fake.authorization_code(REDIRECT), REDIRECT)
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 7200
    assert tokens["owner"] == calendly_fake.user_uri
    me = calendly.api_get(tokens["access_token"], "/users/me")["resource"]
    assert me["uri"] == calendly_fake.user_uri
    (exchange,) = calendly_fake.calls("oauth_token")
    assert exchange.path == "/auth/oauth/token"  # on the auth base, not the API base
    assert exchange.headers["Authorization"].startswith("Basic ")

    rotated = calendly.refresh(tokens["refresh_token"])
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert calendly.api_get(rotated["access_token"], "/users/me")["resource"]["uri"]

    with pytest.raises(policy.PermanentError) as caught:
        calendly.refresh(tokens["refresh_token"])  # already used
    assert (caught.value.status, caught.value.code) == (400, "invalid_grant")
    assert calendly.refresh(rotated["refresh_token"])["access_token"]


def test_an_authorization_code_works_once(calendly_fake):
    code = calendly_fake.authorization_code(REDIRECT)
    calendly.exchange_code(code, REDIRECT)
    with pytest.raises(policy.PermanentError) as caught:
        calendly.exchange_code(code, REDIRECT)
    assert caught.value.code == "invalid_grant"


def test_a_code_for_another_redirect_uri_is_refused(calendly_fake):
    code = calendly_fake.authorization_code(REDIRECT)
    with pytest.raises(policy.PermanentError) as caught:
        calendly.exchange_code(code, "https://evil.example.com/callback")
    assert caught.value.code == "invalid_grant"


def test_wrong_client_secret_is_refused(app, calendly_fake, monkeypatch):
    monkeypatch.setitem(app.config, "CALENDLY_CLIENT_SECRET", "nope")
    with pytest.raises(policy.PermanentError) as caught:
        calendly.exchange_code(calendly_fake.authorization_code(REDIRECT), REDIRECT)
    assert (caught.value.status, caught.value.code) == (401, "invalid_client")


def test_an_expired_access_token_is_refused_until_refreshed(calendly_fake):
    tokens = calendly_fake.issue_token()
    calendly_fake.expire_access_tokens()
    with pytest.raises(policy.PermanentError) as caught:
        calendly.api_get(tokens["access_token"], "/users/me")
    assert (caught.value.status, caught.value.code) == (401, "Unauthenticated")
    fresh = calendly.refresh(tokens["refresh_token"])
    assert calendly.api_get(fresh["access_token"], "/users/me")["resource"]


def test_the_authorize_page_redirects_back_with_a_code(calendly_fake):
    query = {
        "client_id": calendly_fake.client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "state": "s1",
    }
    url = f"{calendly_fake.auth_base}/oauth/authorize"
    with requests.get(url, params=query, allow_redirects=False, timeout=5) as response:
        assert response.status_code == 302
        location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?code=") and location.endswith("&state=s1")
    code = location.split("code=")[1].split("&")[0]
    assert calendly.exchange_code(code, REDIRECT)["access_token"]


def test_scheduled_events_are_paginated(calendly_fake):
    token = calendly_fake.issue_token()["access_token"]
    start = datetime.now(UTC) + timedelta(days=1)
    booked = [
        calendly_fake.add_scheduled_event(start_time=start + timedelta(hours=h))["uri"]
        for h in (4, 0, 3, 1, 2)
    ]
    page = calendly.api_get(
        token,
        "/scheduled_events",
        {"user": calendly_fake.user_uri, "count": 2, "sort": "start_time:asc"},
    )
    seen = [e["uri"] for e in page["collection"]]
    pages = 1
    while page["pagination"]["next_page"]:
        assert page["pagination"]["next_page_token"]
        page = calendly.api_get(token, page["pagination"]["next_page"])
        seen += [e["uri"] for e in page["collection"]]
        pages += 1
    assert pages == 3
    assert sorted(seen) == sorted(booked) and len(seen) == 5
    starts = [calendly.api_get(token, uri)["resource"]["start_time"] for uri in seen]
    assert starts == sorted(starts)
    assert page["pagination"]["previous_page_token"]


def test_scheduled_events_need_a_user_or_organization(calendly_fake):
    token = calendly_fake.issue_token()["access_token"]
    with pytest.raises(policy.PermanentError) as caught:
        calendly.api_get(token, "/scheduled_events")
    assert (caught.value.status, caught.value.code) == (400, "Invalid Argument")


def test_invitees_and_cancellation(calendly_fake):
    token = calendly_fake.issue_token()["access_token"]
    event = calendly_fake.add_scheduled_event(invitees=[("ana@example.com", "Ana Silva")])
    uuid = event["uri"].rsplit("/", 1)[1]
    invitees = calendly.api_get(token, f"/scheduled_events/{uuid}/invitees")["collection"]
    assert [i["email"] for i in invitees] == ["ana@example.com"]
    assert invitees[0]["event"] == event["uri"]

    cancelled = calendly.api_post(
        token, f"/scheduled_events/{uuid}/cancellation", {"reason": "Coach is ill"}
    )
    assert cancelled["resource"]["reason"] == "Coach is ill"
    assert cancelled["resource"]["canceler_type"] == "host"
    assert calendly.api_get(token, event["uri"])["resource"]["status"] == "canceled"
    with pytest.raises(policy.PermanentError) as caught:
        calendly.api_post(token, f"/scheduled_events/{uuid}/cancellation")
    assert caught.value.status == 403


def test_event_types_and_available_times(calendly_fake):
    token = calendly_fake.issue_token()["access_token"]
    types = calendly.api_get(token, "/event_types", {"user": calendly_fake.user_uri})
    event_type = types["collection"][0]
    assert event_type["duration"] == 30
    start = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0)
    times = calendly.api_get(
        token,
        "/event_type_available_times",
        {
            "event_type": event_type["uri"],
            "start_time": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end_time": (start + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )["collection"]
    assert len(times) == 4 and all(t["status"] == "available" for t in times)
    with pytest.raises(policy.PermanentError) as caught:
        calendly.api_get(
            token,
            "/event_type_available_times",
            {
                "event_type": event_type["uri"],
                "start_time": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "end_time": (start + timedelta(days=8)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        )
    assert caught.value.status == 400


def test_webhook_subscriptions(calendly_fake):
    token = calendly_fake.issue_token()["access_token"]
    me = calendly.api_get(token, "/users/me")["resource"]
    body = {
        "url": "https://crm.example.com/webhooks/calendly",
        "events": ["invitee.created", "invitee.canceled"],
        "organization": me["current_organization"],
        "user": me["uri"],
        "scope": "user",
        "signing_key": "key-1",
    }
    created = calendly.api_post(token, "/webhook_subscriptions", body)["resource"]
    assert created["callback_url"] == body["url"] and created["state"] == "active"
    assert "signing_key" not in created
    assert calendly_fake.subscription_signing_key(body["url"]) == "key-1"
    with pytest.raises(policy.PermanentError) as caught:
        calendly.api_post(token, "/webhook_subscriptions", body)
    assert (caught.value.status, caught.value.code) == (409, "Already Exists")

    listed = calendly.api_get(
        token,
        "/webhook_subscriptions",
        {"organization": me["current_organization"], "scope": "user"},
    )["collection"]
    assert [s["uri"] for s in listed] == [created["uri"]]
    calendly.api_delete(token, created["uri"])
    assert calendly_fake.subscriptions == {}


def test_the_token_goes_only_to_the_configured_api(calendly_fake):
    token = calendly_fake.issue_token()["access_token"]
    with pytest.raises(ValueError, match="not a Calendly API URL"):
        calendly.api_get(token, "https://evil.example.com/users/me")
    assert calendly_fake.calls() == []


def test_a_server_error_is_transient_and_keeps_the_reset_time(calendly_fake):
    token = calendly_fake.issue_token()["access_token"]
    calendly_fake.fail_next(1, 429, retry_after=30)
    with pytest.raises(policy.TransientError) as caught:
        calendly.api_get(token, "/users/me")
    assert caught.value.status == 429 and caught.value.retry_after == 30
    calendly_fake.fail_next(1, 500)
    with pytest.raises(policy.TransientError):
        calendly.api_get(token, "/users/me")


def test_health_without_a_connected_account_checks_that_calendly_answers(calendly_fake):
    calendly.check_health()
    (call,) = calendly_fake.calls()
    assert call.path == "/api/users/me" and "Authorization" not in call.headers
    assert metrics.summary("calendly")["last_success_at"] is not None

    calendly_fake.fail_next(1, 503)
    with pytest.raises(policy.TransientError):
        calendly.check_health()


def test_health_with_a_token_checks_it(calendly_fake):
    calendly.check_health(calendly_fake.issue_token()["access_token"])
    with pytest.raises(policy.PermanentError):
        calendly.check_health("revoked-token")
