"""Coach payouts with Stripe Connect Express: onboarding through the Stripe fake, signed
`account.updated` events processed by a real worker (in or out of order), and who may see
and start a coach's onboarding."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import sqlalchemy as sa
from rq import SimpleWorker

from crm.payments.connect import destination_for
from crm.payments.models import ConnectAccount
from crm.redis_client import get_redis
from crm.webhooks.models import WebhookEvent
from jobs import get_queue
from tests.fakes.stripe import fixture, signature_header


def connect_url(coach) -> str:
    return f"/payments/coaches/{coach.id}/connect"


def run_worker() -> None:
    SimpleWorker([get_queue("webhooks")], connection=get_redis()).work(burst=True)


def account_row(db, coach) -> ConnectAccount | None:
    db.session.expire_all()
    return db.session.scalars(
        sa.select(ConnectAccount).where(ConnectAccount.coach_id == coach.id)
    ).first()


def deliver(client, stripe_fake, account: dict, *, created: int | None = None) -> None:
    """POST a signed `account.updated` for `account` (created at `created`), then process it."""
    if created is None:
        body, headers = stripe_fake.event("account.updated", account)
    else:
        event = fixture("event")
        event.update(
            {
                "id": f"evt_test_{created}_{account['charges_enabled']:d}",
                "created": created,
                "type": "account.updated",
                "livemode": False,
                "data": {"object": copy.deepcopy(account)},
            }
        )
        payload = json.dumps(event)
        body = payload.encode()
        headers = {
            "Stripe-Signature": signature_header(payload, stripe_fake.webhook_secret),
            "Content-Type": "application/json",
        }
    answer = client.post("/webhooks/stripe", data=body, headers=headers)
    assert answer.status_code == 200
    run_worker()


def onboard(client, stripe_fake, db, coach) -> ConnectAccount:
    """Start onboarding as the signed-in user; return the coach's new account row."""
    answer = client.form(connect_url(coach))
    assert answer.status_code == 303
    return account_row(db, coach)


# --- onboarding ------------------------------------------------------------------------


def test_a_coach_starts_onboarding_once_and_is_sent_to_stripe(client, db, login_as, stripe_fake):
    coach = login_as("coach")
    page = client.get(connect_url(coach))
    assert page.status_code == 200
    assert 'data-state="not_started"' in page.get_data(as_text=True)
    assert "Set up payouts with Stripe" in page.get_data(as_text=True)

    first = client.form(connect_url(coach))
    assert first.status_code == 303
    account = account_row(db, coach)
    assert account is not None and account.account_id.startswith("acct_")
    assert first.headers["Location"].startswith(
        f"https://connect.stripe.com/setup/e/{account.account_id}/"
    )
    assert not account.charges_enabled and not account.payouts_enabled
    assert destination_for(coach) is None

    (create,) = stripe_fake.calls("accounts_create")
    assert create.headers["Idempotency-Key"] == f"rapport-connect-{coach.id}"
    assert create.form["type"] == "express"
    assert create.form["email"] == coach.email
    assert create.form["capabilities[card_payments][requested]"] == "true"
    assert create.form["capabilities[transfers][requested]"] == "true"
    assert create.form["metadata[coach_id]"] == str(coach.id)
    (link,) = stripe_fake.calls("account_links_create")
    assert link.form["account"] == account.account_id
    assert link.form["type"] == "account_onboarding"
    assert link.form["refresh_url"] == f"http://localhost{connect_url(coach)}/refresh"
    assert link.form["return_url"] == f"http://localhost{connect_url(coach)}/return"

    # Resuming makes a new link for the same account.
    again = client.form(connect_url(coach))
    assert again.status_code == 303 and again.headers["Location"] != first.headers["Location"]
    assert len(stripe_fake.calls("accounts_create")) == 1
    assert len(stripe_fake.calls("account_links_create")) == 2
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ConnectAccount)) == 1
    page = client.get(connect_url(coach)).get_data(as_text=True)
    assert 'data-state="incomplete"' in page and account.account_id in page
    assert "Continue onboarding at Stripe" in page


def test_links_use_the_public_base_url_when_set(
    client, db, login_as, stripe_fake, app, monkeypatch
):
    monkeypatch.setitem(app.config, "PUBLIC_BASE_URL", "https://crm.example.test/")
    coach = login_as("coach")
    onboard(client, stripe_fake, db, coach)
    (link,) = stripe_fake.calls("account_links_create")
    assert link.form["refresh_url"] == (
        f"https://crm.example.test/payments/coaches/{coach.id}/connect/refresh"
    )
    assert link.form["return_url"] == (
        f"https://crm.example.test/payments/coaches/{coach.id}/connect/return"
    )


def test_htmx_onboarding_navigates_with_hx_redirect(client, db, login_as, stripe_fake):
    coach = login_as("coach")
    answer = client.form(connect_url(coach), htmx=True)
    assert answer.status_code == 200
    assert answer.headers["HX-Redirect"].startswith("https://connect.stripe.com/setup/e/acct_")
    assert account_row(db, coach) is not None


def test_htmx_get_renders_only_the_status_block(client, db, login_as, stripe_fake):
    coach = login_as("coach")
    answer = client.htmx_get(connect_url(coach))
    body = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert body.lstrip().startswith('<section id="payout-status"')
    assert "<html" not in body
    assert "HX-Request" in answer.headers["Vary"]


def test_stripe_down_shows_an_error_and_stores_nothing(client, db, login_as, stripe_fake):
    coach = login_as("coach")
    stripe_fake.fail_next(1, 503)
    answer = client.form(connect_url(coach))
    assert answer.status_code == 303 and answer.headers["Location"].endswith(connect_url(coach))
    page = client.get(connect_url(coach)).get_data(as_text=True)
    assert "Stripe is not answering" in page
    assert account_row(db, coach) is None

    stripe_fake.fail_next(1, 503)
    htmx = client.form(connect_url(coach), htmx=True)
    assert htmx.status_code == 200 and "HX-Redirect" not in htmx.headers
    assert "Stripe is not answering" in htmx.get_data(as_text=True)


def test_an_account_made_before_the_link_failed_is_kept(client, db, login_as, stripe_fake):
    coach = login_as("coach")
    stripe_fake.fail_next(1, 400, endpoint="account_links_create", message="Bad link")
    answer = client.form(connect_url(coach), follow_redirects=True)
    assert "Stripe refused" in answer.get_data(as_text=True)
    account = account_row(db, coach)
    assert account is not None

    again = client.form(connect_url(coach))
    assert again.status_code == 303 and account.account_id in again.headers["Location"]
    assert len(stripe_fake.calls("accounts_create")) == 1


def test_onboarding_to_enabled_through_a_signed_account_updated(client, db, login_as, stripe_fake):
    coach = login_as("coach")
    account = onboard(client, stripe_fake, db, coach)

    done = stripe_fake.complete_onboarding(account.account_id)
    deliver(client, stripe_fake, done)

    account = account_row(db, coach)
    assert account.charges_enabled and account.payouts_enabled and account.details_submitted
    assert account.requirements == []
    assert account.ready
    assert destination_for(coach) == account.account_id
    [event] = db.session.scalars(sa.select(WebhookEvent)).all()
    assert event.status == "processed"
    page = client.get(connect_url(coach)).get_data(as_text=True)
    assert 'data-state="ready"' in page
    assert "Set up payouts" not in page and "Continue onboarding" not in page


def test_an_older_account_updated_does_not_undo_a_newer_one(client, db, login_as, stripe_fake):
    coach = login_as("coach")
    account = onboard(client, stripe_fake, db, coach)
    before = copy.deepcopy(stripe_fake.objects[account.account_id])
    done = stripe_fake.complete_onboarding(account.account_id)

    deliver(client, stripe_fake, done, created=2_000_000_100)
    deliver(client, stripe_fake, before, created=2_000_000_000)

    account = account_row(db, coach)
    assert account.charges_enabled and account.payouts_enabled
    assert account.last_event_created == 2_000_000_100
    assert [e.status for e in db.session.scalars(sa.select(WebhookEvent))] == ["processed"] * 2
    # No read from Stripe was needed: the times told the order.
    assert stripe_fake.calls("accounts_retrieve") == []


def test_a_newer_event_applies_its_snapshot(client, db, login_as, stripe_fake):
    coach = login_as("coach")
    account = onboard(client, stripe_fake, db, coach)
    before = copy.deepcopy(stripe_fake.objects[account.account_id])
    done = stripe_fake.complete_onboarding(account.account_id)
    paused = {**copy.deepcopy(done), "payouts_enabled": False}
    paused["requirements"]["currently_due"] = ["external_account"]

    deliver(client, stripe_fake, before, created=2_000_000_000)
    assert not account_row(db, coach).charges_enabled
    deliver(client, stripe_fake, paused, created=2_000_000_100)

    account = account_row(db, coach)
    assert account.charges_enabled and not account.payouts_enabled
    assert account.requirements == ["external_account"]
    assert destination_for(coach) == account.account_id  # charges are what matters
    page = client.get(connect_url(coach)).get_data(as_text=True)
    assert 'data-state="charges_only"' in page and "external_account" in page


def test_events_from_the_same_second_read_the_account_from_stripe(
    client, db, login_as, stripe_fake
):
    coach = login_as("coach")
    account = onboard(client, stripe_fake, db, coach)
    before = copy.deepcopy(stripe_fake.objects[account.account_id])
    done = stripe_fake.complete_onboarding(account.account_id)

    deliver(client, stripe_fake, done, created=2_000_000_000)
    # Same second, delivered later, but a stale snapshot: Stripe's current state wins.
    deliver(client, stripe_fake, before, created=2_000_000_000)

    assert account_row(db, coach).ready
    assert len(stripe_fake.calls("accounts_retrieve")) == 1


def test_the_same_event_delivered_twice_is_applied_once(client, db, login_as, stripe_fake):
    coach = login_as("coach")
    account = onboard(client, stripe_fake, db, coach)
    done = stripe_fake.complete_onboarding(account.account_id)
    body, headers = stripe_fake.event("account.updated", done)
    for _ in range(3):
        assert client.post("/webhooks/stripe", data=body, headers=headers).status_code == 200
    run_worker()
    assert account_row(db, coach).ready
    assert db.session.scalar(sa.select(sa.func.count()).select_from(WebhookEvent)) == 1


def test_an_unknown_account_is_ignored(client, db, login_as, stripe_fake, caplog):
    caplog.set_level(logging.INFO, logger="crm.payments.handlers_connect")
    stranger = fixture("account")
    stranger.update({"id": "acct_NOTOURS1", "charges_enabled": True})
    deliver(client, stripe_fake, stranger)
    [event] = db.session.scalars(sa.select(WebhookEvent)).all()
    assert event.status == "processed"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ConnectAccount)) == 0
    assert "acct_NOTOURS1 is not a coach's; ignored" in caplog.text


# --- the way back from Stripe ----------------------------------------------------------


def test_return_reads_the_account_and_shows_it_ready(client, db, login_as, stripe_fake):
    coach = login_as("coach")
    account = onboard(client, stripe_fake, db, coach)
    stripe_fake.complete_onboarding(account.account_id)

    back = client.get(f"{connect_url(coach)}/return")
    assert back.status_code == 302 and back.headers["Location"].endswith(connect_url(coach))
    assert account_row(db, coach).ready
    page = client.get(connect_url(coach)).get_data(as_text=True)
    assert "Payouts are set up" in page and 'data-state="ready"' in page


def test_return_before_finishing_says_so(client, db, login_as, stripe_fake):
    coach = login_as("coach")
    onboard(client, stripe_fake, db, coach)
    back = client.get(f"{connect_url(coach)}/return", follow_redirects=True)
    assert "Onboarding is not finished yet." in back.get_data(as_text=True)
    assert not account_row(db, coach).ready


def test_refresh_makes_a_new_link_for_the_same_account(client, db, login_as, stripe_fake):
    coach = login_as("coach")
    account = onboard(client, stripe_fake, db, coach)
    again = client.get(f"{connect_url(coach)}/refresh")
    assert again.status_code == 302
    assert again.headers["Location"].startswith(
        f"https://connect.stripe.com/setup/e/{account.account_id}/"
    )
    assert len(stripe_fake.calls("accounts_create")) == 1
    assert len(stripe_fake.calls("account_links_create")) == 2


# --- who may --------------------------------------------------------------------------


def test_another_coach_gets_404_and_nothing_reaches_stripe(
    client, db, login_as, make_user, stripe_fake
):
    other = make_user("coach")
    login_as("coach")
    for path in ("", "/return", "/refresh"):
        assert client.get(connect_url(other) + path).status_code == 404
    assert client.form(connect_url(other)).status_code == 404
    assert stripe_fake.calls() == []


@pytest.mark.parametrize("role", ["staff", "admin"])
def test_staff_see_and_start_a_coachs_onboarding(
    client, db, login_as, make_user, stripe_fake, role
):
    coach = make_user("coach")
    login_as(role)
    page = client.get(connect_url(coach)).get_data(as_text=True)
    assert f"Payouts for {coach.display_name}" in page
    assert client.form(connect_url(coach)).status_code == 303
    assert account_row(db, coach) is not None
    (create,) = stripe_fake.calls("accounts_create")
    assert create.form["email"] == coach.email


def test_only_coaches_have_a_payouts_page(client, db, login_as, make_user, stripe_fake):
    staff = login_as("staff")
    assert client.get(connect_url(staff)).status_code == 404
    assert client.get("/payments/coaches/999999/connect").status_code == 404


def test_signed_out_visitors_are_sent_to_sign_in(client, db, make_user):
    coach = make_user("coach")
    answer = client.get(connect_url(coach))
    assert answer.status_code == 302 and "/login" in answer.headers["Location"]


# --- not configured -------------------------------------------------------------------


def test_without_stripe_the_payouts_page_says_payments_are_off(
    client, db, login_as, app, monkeypatch
):
    monkeypatch.setitem(app.config, "STRIPE_SECRET_KEY", None)
    coach = login_as("coach")
    page = client.get(connect_url(coach)).get_data(as_text=True)
    assert "Payments are off." in page and "STRIPE_SECRET_KEY is not set" in page
    assert "Set up payouts with Stripe" not in page

    answer = client.form(connect_url(coach))
    assert answer.status_code == 303
    page = client.get(connect_url(coach)).get_data(as_text=True)
    assert "Payments are off: STRIPE_SECRET_KEY is not set." in page
    assert account_row(db, coach) is None
    assert destination_for(coach) is None
