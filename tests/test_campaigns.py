"""Campaigns through the real worker and the Twilio fake: one message per eligible contact of a
contacts filter, the skipped ones with their reasons, scheduling in each contact's timezone,
quiet hours, cancelling, live progress, and a worker killed part-way losing nothing."""

from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from rq import SimpleWorker
from rq.registry import ScheduledJobRegistry

from crm.audit.models import AuditEntry
from crm.contacts.models import Contact, Tag
from crm.conversations import campaigns
from crm.conversations import views_campaigns as campaign_views
from crm.conversations.models import (
    Campaign,
    CampaignRecipient,
    Conversation,
    Message,
    MessageTemplate,
    OptOut,
)
from crm.database import utcnow
from crm.extensions import db as _db
from crm.redis_client import get_redis
from crm.users.models import User
from jobs import get_queue
from jobs.campaigns import RUN_OPTIONS, resume_campaigns, run_campaign
from jobs.messaging import send_message, sweep_messages

ROOT = Path(__file__).resolve().parent.parent
CONTENT_SID = "HX" + "0123456789abcdef" * 2


def run_worker(*queues: str) -> None:
    names = queues or ("messaging",)
    SimpleWorker([get_queue(n) for n in names], connection=get_redis()).work(burst=True)


def reload(db, obj):
    db.session.expire_all()
    return db.session.get(type(obj), obj.id)


def campaign_messages(db, campaign) -> list[Message]:
    db.session.expire_all()
    query = sa.select(Message).where(Message.campaign_id == campaign.id).order_by(Message.id)
    return db.session.scalars(query).all()


def recipients(db, campaign) -> list[CampaignRecipient]:
    db.session.expire_all()
    query = sa.select(CampaignRecipient).where(CampaignRecipient.campaign_id == campaign.id)
    return db.session.scalars(query.order_by(CampaignRecipient.id)).all()


def quiet(db) -> None:
    """End the test session's read transaction before a request writes.

    Under the rolled-back `db` fixture every session shares one connection: a request's
    work nests inside a transaction the test left open, and a job's rollback in the test
    session would take that work with it.
    """
    db.session.commit()


def deliver(client, twilio_fake, messages, statuses=("sent", "delivered")) -> None:
    sids = [m.sid for m in messages]
    quiet(client.application.extensions["sqlalchemy"])
    for sid in sids:
        for webhook in twilio_fake.status_callback_requests(sid, list(statuses)):
            assert webhook.send(client).status_code == 200
    run_worker("webhooks")


@pytest.fixture
def fast_sms(app, monkeypatch):
    """Many SMS from one sender in a test: the 1/s long-code limit would take seconds."""
    monkeypatch.setitem(app.config["RATE_LIMITS"], "twilio:sms", (1000.0, 1000))


@pytest.fixture
def template(db):
    template = MessageTemplate(name="Spring", body="Hi {{first_name}}, spring sessions are open.")
    db.session.add(template)
    db.session.commit()
    return template


@pytest.fixture
def staff(make_user):
    return make_user("staff")


@pytest.fixture
def audience(db, make_contact):
    """Six contacts tagged vip (three sendable, one of each skip reason) and one outsider."""
    vip = Tag(name="vip")
    db.session.add(vip)
    people = {
        "ana": make_contact("Ana Silva", phone="+14155550101", tags=[vip]),
        "ben": make_contact("Ben Okafor", phone="+14155550102", tags=[vip]),
        "cy": make_contact("Cy Tran", phone="+14155550103", tags=[vip]),
        "olga": make_contact("Olga Out", phone="+14155550104", tags=[vip]),
        "nora": make_contact("Nora Nophone", phone=None, tags=[vip]),
        "ivan": make_contact("Ivan Invalid", phone="+1415555", tags=[vip]),
        "otto": make_contact("Otto Other", phone="+14155550109"),
    }
    db.session.add(OptOut(contact_id=people["olga"].id, channel="sms", source="replied STOP"))
    db.session.commit()
    return SimpleNamespace(**people)


def create(db, template, actor, filter_query="tag=vip", **options) -> Campaign:
    campaign = campaigns.create_campaign(
        name=options.pop("name", "Spring"),
        channel=options.pop("channel", "sms"),
        template=template,
        filter_query=filter_query,
        actor=actor,
        **options,
    )
    db.session.commit()
    return campaign


def campaign_form(template, **fields) -> dict:
    return {
        "name": "Spring",
        "channel": "sms",
        "template_id": str(template.id),
        "send": "now",
        "send_at": "",
        "quiet_start": "",
        "quiet_end": "",
        "filter_query": "tag=vip",
        **fields,
    }


# --- the whole loop -------------------------------------------------------------------


def test_a_campaign_sends_one_message_per_eligible_contact_and_says_whom_it_skipped(
    client, db, login_as, twilio_fake, audience, template, fast_sms
):
    login_as("staff")
    page = client.get("/campaigns/new?tag=vip").get_data(as_text=True)
    assert "3 of 6 contacts will get it by SMS" in page
    assert '<strong>1</strong> opted out of SMS <span class="muted">(Olga Out)</span>' in page
    assert '<strong>1</strong> no phone number <span class="muted">(Nora Nophone)</span>' in page
    assert '<strong>1</strong> invalid phone number <span class="muted">(Ivan Invalid)</span>' in (
        page
    )
    assert 'name="filter_query" value="tag=vip"' in page
    assert "To:</strong> Contacts tagged vip" in page

    response = client.form("/campaigns/", campaign_form(template))
    assert response.status_code == 303
    campaign = db.session.scalars(sa.select(Campaign)).one()
    assert response.headers["Location"] == f"/campaigns/{campaign.id}"
    assert campaign.status == "scheduled" and campaign.filter_query == "tag=vip"

    run_worker()  # the run job, then the three sends it enqueued
    sent = sorted(twilio_fake.messages.values(), key=lambda m: m["to"])
    assert [(m["to"], m["body"]) for m in sent] == [
        ("+14155550101", "Hi Ana, spring sessions are open."),
        ("+14155550102", "Hi Ben, spring sessions are open."),
        ("+14155550103", "Hi Cy, spring sessions are open."),
    ]
    messages = campaign_messages(db, campaign)
    assert sorted(m.sid for m in messages) == sorted(m["sid"] for m in sent)
    rows = {r.contact_id: r for r in recipients(db, campaign)}
    assert len(rows) == 6 and audience.otto.id not in rows
    assert rows[audience.olga.id].skip_reason == "opted out of SMS"
    assert rows[audience.nora.id].skip_reason == "no phone number"
    assert rows[audience.ivan.id].skip_reason == "invalid phone number"
    assert {rows[c.id].message_id for c in (audience.ana, audience.ben, audience.cy)} == {
        m.id for m in messages
    }
    campaign = reload(db, campaign)
    assert (campaign.status, campaign.recipient_count) == ("running", 6)
    assert campaign.started_at is not None

    show = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert '<strong data-count="queued">3</strong>' in show  # Twilio has them, queued
    assert '<strong data-count="skipped">3</strong>' in show
    for reason in ("opted out of SMS", "no phone number", "invalid phone number"):
        assert f"<td>{reason}</td>" in show

    deliver(client, twilio_fake, messages)
    progress = client.htmx_get(f"/campaigns/{campaign.id}/progress").get_data(as_text=True)
    assert '<strong data-count="delivered">3</strong>' in progress
    assert "Done" in progress and "hx-trigger" not in progress
    assert reload(db, campaign).status == "done"


def test_the_preview_count_matches_what_the_campaign_does(
    db, twilio_fake, audience, template, staff, fast_sms
):
    preview = campaigns.preview_recipients(channel="sms", filter_query="tag=vip", actor=staff)
    assert (preview.total, preview.sendable) == (6, 3)
    assert preview.skipped == {
        "opted out of SMS": 1,
        "no phone number": 1,
        "invalid phone number": 1,
    }
    campaign = create(db, template, staff)
    run_worker()
    counts = campaigns.campaign_counts(campaign)
    assert counts["total"] == preview.total
    assert counts["total"] - counts["skipped"] == preview.sendable == len(twilio_fake.messages)
    skipped = [r.skip_reason for r in recipients(db, campaign) if r.skip_reason]
    assert sorted(skipped) == sorted(preview.skipped)

    whatsapp = campaigns.preview_recipients(channel="whatsapp", filter_query="tag=vip", actor=staff)
    assert (whatsapp.sendable, whatsapp.skipped["opted out of WhatsApp"]) == (4, 0)


def test_the_preview_takes_a_few_aggregate_queries_however_many_contacts(db, staff):
    rows = [
        {"name": f"Client {n:04d}", "phone": None if n % 10 == 0 else f"+1415555{n:04d}"}
        for n in range(2000)
    ]
    rows[5]["phone"] = "+1415555"  # not a real number
    db.session.execute(sa.insert(Contact), rows)
    db.session.commit()
    statements = []

    def count(conn, cursor, statement, *args):
        if "FROM contacts" in statement:
            statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", count)
    try:
        preview = campaigns.preview_recipients(channel="sms", filter_query="", actor=staff)
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", count)
    assert preview.total == 2000
    assert preview.skipped == {
        "opted out of SMS": 0,
        "no phone number": 200,
        "invalid phone number": 1,
    }
    assert preview.examples["invalid phone number"] == ["Client 0005"]
    # The counts, the phone numbers, and one example query per reason found.
    assert len(statements) == 4, statements


def test_running_a_campaign_again_adds_no_recipient_and_no_message(
    db, twilio_fake, audience, template, staff, fast_sms
):
    campaign = create(db, template, staff)
    assert run_campaign(campaign.id, batch_size=2) == 6
    assert run_campaign(campaign.id, batch_size=2) == 0
    run_worker()  # the run job create_campaign enqueued finds nothing left to do
    assert len(recipients(db, campaign)) == 6
    assert len(campaign_messages(db, campaign)) == 3
    assert len(twilio_fake.messages) == 3
    assert reload(db, campaign).recipient_count == 6


def test_a_whatsapp_campaign_needs_an_approved_template_and_sends_it(
    db, twilio_fake, audience, template, staff
):
    with pytest.raises(campaigns.CampaignError) as refused:
        create(db, template, staff, channel="whatsapp")
    assert "needs an approved WhatsApp template" in refused.value.errors["template"]
    approved = MessageTemplate(name="Spring WA", body="Hi {{first_name}}!", content_sid=CONTENT_SID)
    db.session.add(approved)
    db.session.commit()
    campaign = create(db, approved, staff, channel="whatsapp")
    run_worker()
    assert sorted(m["to"] for m in twilio_fake.messages.values()) == [
        "whatsapp:+14155550101",
        "whatsapp:+14155550102",
        "whatsapp:+14155550103",
        "whatsapp:+14155550104",  # opted out of SMS, not of WhatsApp
    ]
    creates = twilio_fake.calls("messages_create")
    assert {r.form["ContentSid"] for r in creates} == {CONTENT_SID}
    assert {r.form["ContentVariables"] for r in creates} >= {'{"1": "Ana"}'}
    assert all(m.content_sid == CONTENT_SID for m in campaign_messages(db, campaign))


# --- scheduling -----------------------------------------------------------------------


def test_a_scheduled_campaign_goes_at_the_same_wall_clock_time_in_each_timezone(
    db, twilio_fake, make_contact, make_user, template, staff
):
    coach = make_user("coach", timezone="Asia/Tokyo")
    group = Tag(name="tz")
    db.session.add(group)
    people = {
        "America/New_York": make_contact(
            "Nia York", phone="+14155550201", timezone="America/New_York", tags=[group]
        ),
        "Europe/Berlin": make_contact(
            "Lou Don", phone="+14155550202", timezone="Europe/Berlin", tags=[group]
        ),
        "Asia/Tokyo": make_contact(
            "Toki Coached", phone="+14155550203", owner_id=coach.id, tags=[group]
        ),
        "UTC": make_contact("Uma Nowhere", phone="+14155550204", tags=[group]),
    }
    local = (utcnow() + timedelta(days=3)).replace(
        tzinfo=None, hour=9, minute=30, second=0, microsecond=0
    )
    campaign = create(db, template, staff, filter_query="tag=tz", send_at_local=local)
    run_campaign(campaign.id)
    by_contact = {m.contact_id: m for m in campaign_messages(db, campaign)}
    registry = ScheduledJobRegistry(queue=get_queue("messaging"))
    scheduled = {
        job_id: registry.get_scheduled_time(job_id).replace(tzinfo=UTC)
        for job_id in registry.get_job_ids()
    }
    for zone, contact in people.items():
        message = by_contact[contact.id]
        expected = local.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)
        assert (message.status, message.send_at) == ("scheduled", expected), zone
        assert expected in scheduled.values()  # its send job waits for then
    assert len({m.send_at for m in by_contact.values()}) == 4
    run_worker()
    assert twilio_fake.messages == {}  # nothing is due yet


def test_quiet_hours_hold_a_send_until_they_end(db, twilio_fake, make_contact, template, staff):
    now = utcnow()
    start, end = now.hour, (now.hour + 2) % 24
    group = Tag(name="quiet")
    db.session.add(group)
    quiet = make_contact("Quinn Asleep", phone="+14155550301", timezone="UTC", tags=[group])
    awake = make_contact("Ada Awake", phone="+14155550302", timezone="Etc/GMT-6", tags=[group])
    campaign = create(
        db, template, staff, filter_query="tag=quiet", quiet_start=start, quiet_end=end
    )
    run_campaign(campaign.id)
    by_contact = {m.contact_id: m for m in campaign_messages(db, campaign)}
    ends = now.replace(hour=end, minute=0, second=0, microsecond=0)
    if ends <= now:
        ends += timedelta(days=1)
    assert (by_contact[quiet.id].status, by_contact[quiet.id].send_at) == ("scheduled", ends)
    assert (by_contact[awake.id].status, by_contact[awake.id].send_at) == ("queued", None)


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("2026-03-02 22:30", "2026-03-03 08:00"),  # quiet 21-8 wraps midnight
        ("2026-03-02 03:15", "2026-03-02 08:00"),
        ("2026-03-02 08:00", "2026-03-02 08:00"),  # the end hour is not quiet
        ("2026-03-02 20:59", "2026-03-02 20:59"),
    ],
)
def test_quiet_hours_may_wrap_midnight(local, expected):
    zone = ZoneInfo("America/Chicago")
    at = datetime.fromisoformat(local).replace(tzinfo=zone).astimezone(UTC)
    shifted = campaigns.after_quiet_hours(at, zone, 21, 8)
    assert shifted.astimezone(zone).strftime("%Y-%m-%d %H:%M") == expected


def test_daytime_quiet_hours(db):
    zone = ZoneInfo("Europe/Lisbon")
    at = datetime(2026, 7, 1, 12, 10, tzinfo=zone).astimezone(UTC)
    assert campaigns.after_quiet_hours(at, zone, 12, 14) == datetime(2026, 7, 1, 13, tzinfo=UTC)


# --- cancel -----------------------------------------------------------------------------


@pytest.mark.parametrize("htmx", [False, True])
def test_cancel_stops_every_message_not_sent_yet(
    client, db, login_as, twilio_fake, audience, template, fast_sms, htmx
):
    user = login_as("staff", name="Sam Staff")
    campaign = create(db, template, user)
    run_campaign(campaign.id)
    campaign_id = campaign.id
    first, *rest = campaign_messages(db, campaign)
    send_message(first.id)  # one went before the cancel; it commits
    response = client.form(f"/campaigns/{campaign_id}/cancel", htmx=htmx)
    assert response.status_code == 303
    target = "progress" if htmx else ""
    assert response.headers["Location"] == f"/campaigns/{campaign.id}" + (
        f"/{target}" if htmx else ""
    )
    run_worker()  # the send jobs of the cancelled messages find nothing to send
    assert [m["to"] for m in twilio_fake.messages.values()] == [audience.ana.phone]
    messages = campaign_messages(db, campaign)
    assert messages[0].sid is not None
    assert [(m.status, m.error_reason) for m in messages[1:]] == [
        ("canceled", "Cancelled with the campaign by Sam Staff.")
    ] * 2
    campaign = reload(db, campaign)
    assert campaign.status == "canceled" and campaign.canceled_at is not None
    progress = client.htmx_get(f"/campaigns/{campaign.id}/progress").get_data(as_text=True)
    assert '<strong data-count="canceled">2</strong>' in progress
    assert "Cancelled" in progress and "hx-trigger" not in progress
    if not htmx:
        page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
        assert "Cancelled “Spring”: 2 unsent messages will not go." in page
    again = client.form(f"/campaigns/{campaign.id}/cancel")
    assert again.status_code == 303
    assert "This campaign has finished" in client.get(again.headers["Location"]).get_data(
        as_text=True
    )


def test_a_campaign_cancelled_before_its_run_prepares_nothing(
    db, twilio_fake, audience, template, staff
):
    campaign = create(db, template, staff)
    assert campaigns.cancel_campaign(campaign, actor=staff) == 0
    db.session.commit()
    run_worker()
    assert recipients(db, campaign) == [] and twilio_fake.messages == {}


# --- pages --------------------------------------------------------------------------------


def test_the_progress_fragment_polls_while_the_campaign_runs_and_stops_when_done(
    client, db, login_as, twilio_fake, audience, template, fast_sms
):
    login_as("staff")
    client.form("/campaigns/", campaign_form(template))
    campaign = db.session.scalars(sa.select(Campaign)).one()
    url = f"/campaigns/{campaign.id}/progress"

    fragment = client.htmx_get(url)
    body = fragment.get_data(as_text=True)
    assert body.lstrip().startswith('<section id="campaign-progress"') and "<html" not in body
    assert 'hx-trigger="every 2s"' in body and "Waiting for a worker" in body
    assert "HX-Request" in fragment.headers["Vary"]
    assert fragment.headers["HX-Trigger"] == "recipients-updated"  # no counts seen yet
    page = client.get(url).get_data(as_text=True)
    assert "<html" in page and 'hx-trigger="every 2s"' in page
    assert 'id="campaign-recipients"' in page
    # Polling with the counts it shows: the table is not told to refresh.
    poll = html.unescape(re.search(r'hx-get="([^"]+)" hx-trigger="every 2s"', body).group(1))
    assert "HX-Trigger" not in client.htmx_get(poll).headers

    run_worker()
    running = client.htmx_get(poll)
    assert running.headers["HX-Trigger"] == "recipients-updated"
    body = running.get_data(as_text=True)
    assert "Sending" in body and 'hx-trigger="every 2s"' in body
    assert '<strong data-count="queued">3</strong>' in body

    deliver(client, twilio_fake, campaign_messages(db, campaign), ["sent"])
    done = client.htmx_get(url).get_data(as_text=True)
    assert "Done" in done and "hx-trigger" not in done
    assert '<strong data-count="sent">3</strong>' in done
    campaign = reload(db, campaign)
    assert campaign.status == "done" and campaign.finished_at is not None


@pytest.mark.parametrize("htmx", [False, True])
def test_creating_a_campaign_refuses_what_cannot_be_sent(
    client, db, login_as, twilio_fake, audience, template, htmx
):
    login_as("staff")
    response = client.form(
        "/campaigns/",
        campaign_form(
            template, name=" ", template_id="", quiet_start="22", send="later", send_at="not a date"
        ),
        htmx=htmx,
    )
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert ("<html" in body) is not htmx
    assert "Give the campaign a name." in body
    assert "Choose the message template to send." in body
    assert "Give quiet hours both a start and an end, or neither." in body
    assert "Give the date and time to send at." in body
    assert "3 of 6 contacts" in body  # the count is still there
    assert db.session.scalars(sa.select(Campaign)).all() == []
    same_hours = client.form(
        "/campaigns/", campaign_form(template, quiet_start="8", quiet_end="8"), htmx=htmx
    )
    assert "Quiet hours must start and end at different hours." in same_hours.get_data(as_text=True)


def test_a_campaign_needs_twilio(client, db, login_as, audience, template, monkeypatch, app):
    monkeypatch.setitem(app.config, "TWILIO_ACCOUNT_SID", None)
    login_as("staff")
    response = client.form("/campaigns/", campaign_form(template))
    assert response.status_code == 422
    assert "Twilio is not configured (TWILIO_ACCOUNT_SID" in response.get_data(as_text=True)


def test_a_send_time_past_everywhere_is_refused(db, twilio_fake, audience, template, staff):
    past = (utcnow() - timedelta(days=1)).replace(tzinfo=None)
    with pytest.raises(campaigns.CampaignError) as refused:
        create(db, template, staff, send_at_local=past)
    assert refused.value.errors == {"send_at": "That time has already passed in every timezone."}


def test_changing_the_channel_recounts_the_preview(client, db, login_as, twilio_fake, audience):
    login_as("staff")
    url = "/campaigns/new?filter_query=tag%3Dvip&channel=whatsapp"
    fragment = client.htmx_get(url)
    body = fragment.get_data(as_text=True)
    assert body.lstrip().startswith('<section id="campaign-preview"')
    assert "4 of 6 contacts will get it by WhatsApp" in body
    assert "opted out" not in body
    page = client.get(url).get_data(as_text=True)  # the no-JavaScript link lands here
    assert "<html" in page and "4 of 6 contacts" in page
    assert 'value="whatsapp" checked' in page
    assert 'hx-get="/campaigns/new" hx-include="#campaign-filter-query"' in page


def test_the_campaigns_list_shows_status_and_counts(
    client, db, login_as, twilio_fake, audience, template, fast_sms, monkeypatch
):
    user = login_as("staff")
    older = create(db, template, user, name="Autumn")
    newer = create(db, template, user, name="Winter")
    run_worker()
    page = client.get("/campaigns/").get_data(as_text=True)
    assert page.index(">Winter<") < page.index(">Autumn<")
    row = page[page.index(f'id="campaign-{older.id}"') :]
    assert '<td data-count="total">6</td>' in row and '<td data-count="skipped">3</td>' in row
    assert "Sending" in row
    assert 'href="/message-templates/"' in page
    monkeypatch.setattr(campaign_views, "PAGE_SIZE", 1)
    first = client.get("/campaigns/").get_data(as_text=True)
    assert ">Winter<" in first and ">Autumn<" not in first
    more = client.htmx_get(f"/campaigns/?before={newer.id}").get_data(as_text=True)
    assert "<html" not in more and ">Autumn<" in more and ">Winter<" not in more


def test_the_recipients_table_pages_and_filters(
    client, db, login_as, twilio_fake, audience, template, monkeypatch
):
    user = login_as("staff")
    campaign = create(db, template, user)
    run_campaign(campaign.id)
    monkeypatch.setattr(campaign_views, "PAGE_SIZE", 2)
    url = f"/campaigns/{campaign.id}"
    page = client.get(url).get_data(as_text=True)
    assert "<html" in page and page.count('<tr id="recipient-') == 2
    fragment = client.htmx_get(f"{url}?outcome=skipped").get_data(as_text=True)
    assert fragment.lstrip().startswith('<section id="campaign-recipients"')
    assert "<html" not in fragment and "Olga Out" in fragment and "Ana Silva" not in fragment
    next_url = html.unescape(re.search(r'href="([^"]+)"[^>]*>Next page', fragment).group(1))
    assert "outcome=skipped" in next_url
    rest = client.htmx_get(next_url).get_data(as_text=True)
    assert "Ivan Invalid" in rest and "First page" in rest


def test_coaches_cannot_see_or_run_campaigns(client, db, login_as, twilio_fake, template, staff):
    campaign = create(db, template, staff, filter_query="")
    login_as("coach")
    for url in (
        "/campaigns/",
        "/campaigns/new",
        f"/campaigns/{campaign.id}",
        f"/campaigns/{campaign.id}/progress",
    ):
        assert client.get(url).status_code == 403
        assert client.htmx_get(url).status_code == 403
    assert client.form("/campaigns/", campaign_form(template)).status_code == 403
    assert client.form(f"/campaigns/{campaign.id}/cancel").status_code == 403
    assert reload(db, campaign).status == "scheduled"


def test_signed_out_users_are_sent_to_sign_in(client, db):
    assert "/login" in client.get("/campaigns/").headers["Location"]
    assert "/login" in client.htmx_get("/campaigns/").headers["HX-Redirect"]


# --- resuming -------------------------------------------------------------------------------


def test_resume_restarts_a_run_that_died_and_finishes_a_campaign_that_is_done(
    client, db, twilio_fake, audience, template, staff, fast_sms, app, monkeypatch
):
    monkeypatch.setitem(app.config, "MESSAGING_LEASE_SECONDS", 0.2)
    campaign = create(db, template, staff)
    get_queue("messaging").empty()  # as if the worker running it died at once
    assert resume_campaigns() == 0  # just created: its run may still be queued
    time.sleep(0.25)
    held = get_redis().lock(f"rapport:campaign-run:{campaign.id}", timeout=5)
    assert held.acquire(blocking=False)
    assert resume_campaigns() == 0  # a live run holds it
    held.release()
    assert resume_campaigns() == 1
    assert resume_campaigns() == 0  # once per lease, however often the sweep runs
    run_worker()  # the resumed run, then the sends
    assert len(recipients(db, campaign)) == 6 and len(twilio_fake.messages) == 3
    assert reload(db, campaign).status == "running"
    deliver(client, twilio_fake, campaign_messages(db, campaign), ["sent"])
    assert resume_campaigns() == 0
    assert reload(db, campaign).status == "done"  # nobody had to watch its progress page


# --- a worker killed part-way -----------------------------------------------------------
#
# Worker processes see only committed rows, so these tests commit their data in the app's
# context (not the rolled-back `db` fixture) and delete it afterwards.

KILL_TOTAL = 200


@pytest.fixture
def committed(app, redis, twilio_fake, monkeypatch):
    """An app context for committed rows; deletes what the test made."""
    # A dead job's lease (and a dead run's lock) expires quickly.
    monkeypatch.setitem(app.config, "MESSAGING_LEASE_SECONDS", 2.0)
    made = SimpleNamespace(users=[], contacts=[], templates=[], campaigns=[])
    with app.app_context():
        yield made
        _db.session.rollback()
        session = _db.session
        session.execute(sa.delete(Campaign).where(Campaign.id.in_(made.campaigns)))
        session.execute(sa.delete(Message).where(Message.contact_id.in_(made.contacts)))
        session.execute(sa.delete(Conversation).where(Conversation.contact_id.in_(made.contacts)))
        session.execute(sa.delete(Contact).where(Contact.id.in_(made.contacts)))
        session.execute(sa.delete(MessageTemplate).where(MessageTemplate.id.in_(made.templates)))
        session.execute(sa.delete(AuditEntry).where(AuditEntry.actor_id.in_(made.users)))
        session.execute(sa.delete(User).where(User.id.in_(made.users)))
        session.commit()


def big_campaign(made, total: int = KILL_TOTAL) -> int:
    """A coach's `total` clients, each with a distinct valid number; their campaign's id."""
    session = _db.session
    staff = User(email="campaigner@example.com", name="Campaigner", role="staff")
    coach = User(email="kill.coach@example.com", name="Kim Coach", role="coach")
    template = MessageTemplate(
        name="Kill test", body="Hi {{first_name}}, news from {{coach_name}}."
    )
    session.add_all([staff, coach, template])
    session.flush()
    made.users += [staff.id, coach.id]
    made.templates.append(template.id)
    contacts = [
        Contact(name=f"Client{n:03d} Test", phone=f"+1415555{1000 + n:04d}", owner_id=coach.id)
        for n in range(total)
    ]
    assert all(campaigns.phone_is_valid(c.phone) for c in contacts)
    session.add_all(contacts)
    session.flush()
    made.contacts += [c.id for c in contacts]
    campaign = campaigns.create_campaign(
        name="Everyone of Kim's",
        channel="sms",
        template=template,
        filter_query=f"owner={coach.id}",
        actor=staff,
    )
    session.flush()
    made.campaigns.append(campaign.id)
    campaign_id = campaign.id
    session.commit()  # enqueues its run
    return campaign_id


def worker_env(twilio_fake, database_url, redis_url) -> dict:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    env.update({k: v for k, v in twilio_fake.config().items() if isinstance(v, str)})
    env.update(
        PUBLIC_BASE_URL="http://localhost", TWILIO_SMS_RATE="1000", MESSAGING_LEASE_SECONDS="2"
    )
    return env


def start_workers(env, log: Path, n: int) -> list[subprocess.Popen]:
    """`n` worker processes, each in its own process group (SIGKILL to the group takes the
    forked work horse down too), all logging to `log`."""
    with log.open("ab") as out:
        return [
            subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "app", "worker", "messaging"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            for _ in range(n)
        ]


def kill(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    for worker in workers:
        worker.wait(10)


def stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            kill([worker])


def wait_until(condition, timeout: float, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def count(statement) -> int:
    _db.session.rollback()  # a fresh snapshot: the workers commit meanwhile
    return _db.session.scalar(statement)


def prepared_count(campaign_id: int) -> int:
    return count(
        sa.select(sa.func.count())
        .select_from(CampaignRecipient)
        .where(CampaignRecipient.campaign_id == campaign_id)
    )


def finish_after_the_crash(campaign_id: int, env, log: Path) -> None:
    """Fresh workers, and the periodic sweep's two calls until every recipient has gone."""

    def finished() -> bool:
        unsent = count(
            sa.select(sa.func.count())
            .select_from(Message)
            .where(Message.campaign_id == campaign_id, Message.sid.is_(None))
        )
        if prepared_count(campaign_id) == KILL_TOTAL and unsent == 0:
            return True
        if get_queue("messaging").count == 0:
            # What is left is what the killed workers held. The sweep (every minute in
            # production) re-enqueues it once its lease, or the run's lock, has expired.
            sweep_messages()
            resume_campaigns()
        return False

    workers = start_workers(env, log, WORKERS)
    try:
        assert wait_until(finished, 180, interval=0.5), log.read_text()[-3000:]
    finally:
        stop(workers)


def assert_sent_once_each(campaign_id: int, twilio_fake) -> None:
    _db.session.rollback()
    rows = _db.session.scalars(
        sa.select(CampaignRecipient).where(CampaignRecipient.campaign_id == campaign_id)
    ).all()
    assert len(rows) == KILL_TOTAL and len({r.contact_id for r in rows}) == KILL_TOTAL
    assert all(r.message_id and not r.skip_reason for r in rows)
    sent = _db.session.execute(
        sa.select(Message.sid, Contact.phone)
        .join(Contact, Contact.id == Message.contact_id)
        .where(Message.campaign_id == campaign_id)
    ).all()
    assert len(sent) == KILL_TOTAL and all(sid for sid, _ in sent)
    # Twilio accepted exactly one message per recipient, and each row holds its SID.
    assert len(twilio_fake.accepted) == KILL_TOTAL
    assert len({m["to"] for m in twilio_fake.messages.values()}) == KILL_TOTAL
    assert {sid for sid, _ in sent} == set(twilio_fake.messages)
    assert all(twilio_fake.messages[sid]["to"] == phone for sid, phone in sent)


# Several workers, as in production; all of them are killed at once.
WORKERS = 3


def test_a_worker_killed_mid_campaign_loses_no_recipient_and_resends_none_twilio_accepted(
    committed, twilio_fake, database_url, redis_url, tmp_path
):
    campaign_id = big_campaign(committed)
    env = worker_env(twilio_fake, database_url, redis_url)
    log = tmp_path / "workers.log"
    workers = start_workers(env, log, WORKERS)
    try:
        # The run prepares all 200 in one batch; then the sends go, one job each.
        assert wait_until(lambda: len(twilio_fake.accepted) >= 60, 120), log.read_text()[-3000:]
    finally:
        kill(workers)
    at_kill = len(twilio_fake.accepted)
    assert 60 <= at_kill < KILL_TOTAL
    assert prepared_count(campaign_id) == KILL_TOTAL

    finish_after_the_crash(campaign_id, env, tmp_path / "after.log")
    assert_sent_once_each(campaign_id, twilio_fake)


def test_a_worker_killed_while_preparing_the_recipients_resumes_where_it_stopped(
    committed, twilio_fake, database_url, redis_url, tmp_path
):
    campaign_id = big_campaign(committed)
    # The same run in batches of ten, so that the kill lands between commits.
    queue = get_queue("messaging")
    queue.empty()
    queue.enqueue(run_campaign, campaign_id, 10, **RUN_OPTIONS)
    env = worker_env(twilio_fake, database_url, redis_url)
    log = tmp_path / "workers.log"
    workers = start_workers(env, log, WORKERS)
    try:
        assert wait_until(lambda: prepared_count(campaign_id) >= 30, 120), log.read_text()[-3000:]
    finally:
        kill(workers)
    at_kill = prepared_count(campaign_id)
    assert 30 <= at_kill < KILL_TOTAL  # the run died part-way

    finish_after_the_crash(campaign_id, env, tmp_path / "after.log")
    assert_sent_once_each(campaign_id, twilio_fake)
