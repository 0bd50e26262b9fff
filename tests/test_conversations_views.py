"""The inbox and the thread through HTTP, the real worker and the Twilio fake: filters,
coach scoping, polling, sending, refusals, the WhatsApp window, retry and send later."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from rq import SimpleWorker

from crm.conversations import services
from crm.conversations.models import Conversation, Message, MessageTemplate, OptOut
from crm.database import utcnow
from crm.redis_client import get_redis
from jobs import get_queue

SMS_FROM = "+15005550006"
WHATSAPP_FROM = "+14155238886"
POLL_RE = re.compile(r'id="inbox-poll" hx-get="([^"]+)"')
THREAD_POLL_RE = re.compile(r'id="conversation-messages"[^>]* hx-get="([^"]+)"')


def run_worker(*queues: str) -> None:
    names = queues or ("webhooks", "messaging")
    SimpleWorker([get_queue(n) for n in names], connection=get_redis()).work(burst=True)


def text(response) -> str:
    return response.get_data(as_text=True).strip()


def words(page: str) -> str:
    """The page as a person reads it: tags dropped, whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", "", page).split())


def unescape(url: str) -> str:
    return url.replace("&amp;", "&")


def inbound(client, twilio_fake, phone, body, *, whatsapp=False, **kwargs):
    """A message from `phone` as Twilio delivers it, processed by the worker."""
    sender = WHATSAPP_FROM if whatsapp else SMS_FROM
    webhook = twilio_fake.inbound_message(phone, sender, body, whatsapp=whatsapp, **kwargs)
    assert webhook.send(client).status_code == 200
    run_worker("webhooks")


def fresh(db, obj):
    db.session.expire_all()
    return db.session.get(type(obj), obj.id)


def thread_of(db, contact, channel="sms") -> Conversation:
    db.session.expire_all()
    return db.session.scalars(
        sa.select(Conversation).where(
            Conversation.contact_id == contact.id, Conversation.channel == channel
        )
    ).one()


def messages_of(db, conversation) -> list[Message]:
    db.session.expire_all()
    query = sa.select(Message).where(Message.conversation_id == conversation.id)
    return list(db.session.scalars(query.order_by(Message.id)))


def rows_of(page: str) -> list[str]:
    """The contact names of the inbox rows, top to bottom."""
    return re.findall(r'<strong class="inbox-name">([^<]+)</strong>', page)


@pytest.fixture
def ana(make_contact):
    return make_contact("Ana Silva", phone="+14155550101")


@pytest.fixture
def sms(db, twilio_fake, ana) -> Conversation:
    conversation = services.open_conversation(ana, "sms")
    db.session.commit()
    return conversation


def conversation_for(db, contact, channel="sms", *, at=None, **fields) -> Conversation:
    conversation = services.open_conversation(contact, channel)
    for name, value in fields.items():
        setattr(conversation, name, value)
    if at is not None:
        conversation.last_activity_at = at
    db.session.commit()
    return conversation


# --- the inbox ----------------------------------------------------------------------


def test_the_inbox_lists_threads_latest_first_with_what_a_row_needs(
    client, db, login_as, make_user, make_contact, twilio_fake
):
    login_as("staff")
    coach = make_user("coach", name="Carla Coach")
    ana = make_contact("Ana Silva", phone="+14155550101", owner_id=coach.id)
    ben = make_contact("Ben Ortiz", phone="+14155550102")
    inbound(client, twilio_fake, ana.phone, "Can we move Tuesday?")
    inbound(client, twilio_fake, ben.phone, "Hi there", whatsapp=True)
    inbound(client, twilio_fake, ben.phone, "Photo of my form", whatsapp=True)

    page = text(client.get("/conversations/"))
    assert rows_of(page) == ["Ben Ortiz", "Ana Silva"]
    ben_row = page[page.index("Ben Ortiz") : page.index("Ana Silva")]
    assert "WhatsApp" in ben_row and "Photo of my form" in ben_row
    assert "2 unread" in ben_row and "Unassigned" in ben_row
    ana_row = page[page.index("Ana Silva") :]
    assert "SMS" in ana_row and "Can we move Tuesday?" in ana_row
    assert "1 unread" in ana_row and "Carla Coach" in ana_row
    assert 'aria-current="page"' in page and ">Conversations</a>" in page


@pytest.mark.parametrize("htmx", [False, True])
def test_inbox_filters_and_search(client, db, login_as, make_contact, twilio_fake, htmx):
    me = login_as("staff")
    mine = make_contact("Mine Open", phone="+14155550111")
    loose = make_contact("Loose End", phone="+14155550112")
    done = make_contact("Done Deal", phone="+14155550113")
    chat = make_contact("Chat Person", phone="+14155550114")
    inbound(client, twilio_fake, mine.phone, "About the invoice")
    inbound(client, twilio_fake, loose.phone, "Hello")
    inbound(client, twilio_fake, done.phone, "Thanks, all good: invoice paid")
    inbound(client, twilio_fake, chat.phone, "Ola", whatsapp=True)
    assigned, closed, read = (thread_of(db, c) for c in (mine, done, loose))
    assigned.assignee_id = me.id
    closed.status = "closed"
    read.unread_count = 0
    db.session.commit()

    def names(query):
        if htmx:
            response = client.htmx_get(f"/conversations/?{query}")
            body = text(response)
            assert "<html" not in body and body.startswith('<div id="inbox-list"')
            assert response.headers["HX-Push-Url"] == "/conversations/" + (
                f"?{query}" if query else ""
            )
        else:
            body = text(client.get(f"/conversations/?{query}"))
            assert "<html" in body
        return sorted(rows_of(body))

    assert names("") == ["Chat Person", "Loose End", "Mine Open"]  # open by default
    assert names("mine=1") == ["Mine Open"]
    assert names("unassigned=1") == ["Chat Person", "Loose End"]
    assert names("mine=1&unassigned=1") == ["Chat Person", "Loose End", "Mine Open"]
    assert names("status=closed") == ["Done Deal"]
    assert names("status=all") == ["Chat Person", "Done Deal", "Loose End", "Mine Open"]
    assert names("channel=whatsapp") == ["Chat Person"]
    assert names("unread=1") == ["Chat Person", "Mine Open"]
    assert names("q=INVOICE") == ["Mine Open"]
    assert names("q=invoice&status=all") == ["Done Deal", "Mine Open"]
    assert names("q=100%25") == []  # LIKE wildcards are searched for literally
    if not htmx:
        page = text(client.get("/conversations/?q=nothing+here"))
        assert "No conversations match." in page


def test_inbox_pages_by_keyset_and_load_more_keeps_the_longer_list_polled(
    client, db, login_as, make_contact, twilio_fake
):
    login_as("staff")
    start = utcnow() - timedelta(days=1)
    for n in range(55):
        contact = make_contact(f"Client {n:02d}", phone=f"+1415555{n:04d}")
        # Two share a time: the id breaks the tie across the page boundary.
        at = start + timedelta(minutes=n if n != 5 else 4)
        conversation_for(db, contact, at=at)

    page = text(client.get("/conversations/"))
    first = rows_of(page)
    assert len(first) == 50 and first[0] == "Client 54" and first[-1] == "Client 05"
    next_url = unescape(re.search(r'<li id="inbox-more"[^>]*>\s*<a href="([^"]+)"', page)[1])

    more = client.htmx_get(next_url)
    body = text(more)
    assert rows_of(body) == ["Client 04", "Client 03", "Client 02", "Client 01", "Client 00"]
    assert 'id="inbox-more"' not in body
    # The poller now re-renders all 55 rows when something changes.
    oob = re.search(r'<div id="inbox-poll" hx-swap-oob="true" hx-get="([^"]+)"', body)
    assert "shown=55" in oob[1]
    contact = make_contact("Newcomer", phone="+14155559999")
    conversation_for(db, contact)
    refreshed = text(client.htmx_get(unescape(oob[1])))
    assert len(rows_of(refreshed)) == 55 and rows_of(refreshed)[0] == "Newcomer"
    assert rows_of(refreshed)[-1] == "Client 01" and 'id="inbox-more"' in refreshed

    # Without JavaScript the link is a page of its own.
    plain = text(client.get(next_url))
    assert "<html" in plain and "Back to the latest" in plain and "Client 00" in plain
    assert 'id="inbox-poll"' not in plain
    assert client.get("/conversations/?after=nonsense").status_code == 400


def test_polling_the_inbox_costs_a_204_until_a_message_arrives(
    client, db, login_as, make_contact, twilio_fake
):
    login_as("staff")
    ana = make_contact("Ana Silva", phone="+14155550101")
    inbound(client, twilio_fake, ana.phone, "First")
    page = text(client.get("/conversations/"))
    poll_url = unescape(POLL_RE.search(page)[1])

    unchanged = client.htmx_get(poll_url)
    assert unchanged.status_code == 204 and unchanged.get_data() == b""
    assert "HX-Request" in unchanged.headers["Vary"]
    # Without htmx the same URL is the page, never an empty answer.
    assert client.get(poll_url).status_code == 200

    inbound(client, twilio_fake, ana.phone, "Second, are you there?")
    changed = client.htmx_get(poll_url)
    assert changed.status_code == 200
    body = text(changed)
    assert body.startswith('<div id="inbox-list"') and "Second, are you there?" in body
    assert "2 unread" in body and "HX-Push-Url" not in changed.headers
    # The fresh block carries the new version: the next poll is quiet again.
    assert client.htmx_get(unescape(POLL_RE.search(body)[1])).status_code == 204

    # Reading the thread changes the row (no more unread badge): the poll sees it.
    client.get(f"/conversations/{thread_of(db, ana).id}")
    after_read = client.htmx_get(unescape(POLL_RE.search(body)[1]))
    assert after_read.status_code == 200 and "unread" not in text(after_read).split("</ol>")[0]


def test_a_coach_sees_only_their_clients_and_their_assignments(
    client, db, login_as, make_user, make_contact, twilio_fake
):
    coach = login_as("coach", name="Carla Coach")
    other = make_user("coach", name="Otto Other")
    own = make_contact("Own Client", phone="+14155550121", owner_id=coach.id)
    theirs = make_contact("Their Client", phone="+14155550122", owner_id=other.id)
    handed = make_contact("Handed Over", phone="+14155550123", owner_id=other.id)
    nobody = make_contact("Nobody's", phone="+14155550124")
    for contact in (own, theirs, handed, nobody):
        inbound(client, twilio_fake, contact.phone, f"Hello from {contact.name}")
    thread_of(db, handed).assignee_id = coach.id
    db.session.commit()

    page = text(client.get("/conversations/"))
    assert sorted(rows_of(page)) == ["Handed Over", "Own Client"]
    assert "Their Client" not in text(client.get("/conversations/?q=Hello&status=all"))
    assert client.get(f"/conversations/{thread_of(db, own).id}").status_code == 200
    assert client.get(f"/conversations/{thread_of(db, handed).id}").status_code == 200

    # Another coach's thread is a 404 on every URL it has.
    hidden = thread_of(db, theirs)
    [message] = messages_of(db, hidden)
    base = f"/conversations/{hidden.id}"
    assert client.get(base).status_code == 404
    assert client.htmx_get(f"{base}?part=messages&v=0.0").status_code == 404
    assert client.htmx_get(f"{base}?part=composer").status_code == 404
    for url, data in [
        (f"{base}/messages", {"body": "Sneaky"}),
        (f"{base}/counter", {"body": "Sneaky"}),
        (f"{base}/assign", {"assignee_id": str(coach.id)}),
        (f"{base}/close", {}),
        (f"{base}/reopen", {}),
        (f"{base}/messages/{message.id}/retry", {}),
        (f"{base}/messages/{message.id}/cancel", {}),
    ]:
        for htmx in (False, True):
            assert client.form(url, data, htmx=htmx).status_code == 404, url
    start = client.form("/conversations/start", {"contact_id": theirs.id, "channel": "sms"})
    assert start.status_code == 404
    assert len(messages_of(db, hidden)) == 1 and fresh(db, hidden).status == "open"
    assert fresh(db, hidden).assignee_id == other.id
    # A contact in the trash takes its threads out of everyone's sight.
    own.deleted_at = utcnow()
    db.session.commit()
    assert client.get(f"/conversations/{thread_of(db, own).id}").status_code == 404


# --- the thread ---------------------------------------------------------------------


def test_opening_a_thread_marks_it_read_and_shows_every_message_kind(
    client, db, login_as, make_contact, twilio_fake
):
    login_as("staff", timezone="America/New_York")
    ana = make_contact("Ana Silva", phone="+14155550101")
    inbound(
        client,
        twilio_fake,
        ana.phone,
        "Here are the photos",
        media=[("https://media.example/one.jpg", "image/jpeg"), "https://media.example/a.pdf"],
    )
    conversation = thread_of(db, ana)
    conversation.assignee_id = None
    db.session.commit()
    # The PDF was given without a type: the fake calls every medium image/jpeg.
    [received] = messages_of(db, conversation)
    received.media = [
        {"url": "https://media.example/one.jpg", "content_type": "image/jpeg"},
        {"url": "https://media.example/a.pdf", "content_type": "application/pdf"},
    ]
    assert conversation.unread_count == 1
    sent = services.queue_message(conversation, body="Got them, thanks", actor=None)
    db.session.commit()
    run_worker("messaging")
    sent = fresh(db, sent)
    for webhook in twilio_fake.status_callback_requests(sent.sid, ["sent", "delivered", "read"]):
        assert webhook.send(client).status_code == 200
    run_worker("webhooks")

    page = text(client.get(f"/conversations/{conversation.id}"))
    assert fresh(db, conversation).unread_count == 0
    assert page.index("Here are the photos") < page.index("Got them, thanks")
    assert '<img src="https://media.example/one.jpg"' in page
    assert 'href="https://media.example/a.pdf"' in page and "(application/pdf)" in page
    assert '<img src="https://media.example/a.pdf"' not in page
    tick = re.search(rf'<div class="tick tick-read" id="tick-{sent.id}">(.*?)</div>', page, re.S)
    assert "✓✓" in tick[1] and "Read" in tick[1]
    assert "Rapport (automatic)" in page
    local = received.created_at.astimezone(ZoneInfo("America/New_York"))
    assert local.strftime("%Y-%m-%d %H:%M") in page
    assert "Ana Silva" in page and 'href="/contacts/' in page


def test_ticks_for_every_outbound_status(client, db, login_as, sms):
    login_as("staff")
    statuses = {
        "queued": "⏱ Queued",
        "sent": "✓ Sent",
        "delivered": "✓✓ Delivered",
        "failed": "✗ Failed: The phone number is not valid.",
        "undelivered": "✗ Not delivered: The phone is unreachable",
        "canceled": "⊘ Canceled: Not sent: the contact opted out",
    }
    reasons = {
        "failed": (21211, "The phone number is not valid."),
        "undelivered": (30003, services.ERROR_REASONS[30003]),
        "canceled": (None, "Not sent: the contact opted out (replied STOP)."),
    }
    for status in statuses:
        code, reason = reasons.get(status, (None, None))
        db.session.add(
            Message(
                conversation_id=sms.id,
                contact_id=sms.contact_id,
                direction="outbound",
                channel="sms",
                body=f"A {status} message",
                status=status,
                error_code=code,
                error_reason=reason,
            )
        )
    db.session.commit()
    page = text(client.get(f"/conversations/{sms.id}"))
    for status, words in statuses.items():
        block = re.search(rf'<div class="tick tick-{status}"[^>]*>(.*?)</div>', page, re.S)[1]
        flat = re.sub(r"<[^>]+>", "", block)
        flat = " ".join(flat.split())
        assert flat.startswith(words), (status, flat)
        assert ("Retry" in flat) == (status in ("failed", "undelivered", "canceled"))


def test_a_long_thread_shows_the_last_hundred_and_pages_back(client, db, login_as, sms):
    login_as("staff")
    db.session.add_all(
        Message(
            conversation_id=sms.id,
            contact_id=sms.contact_id,
            direction="inbound",
            channel="sms",
            body=f"Note number {n:03d}.",
            status="received",
        )
        for n in range(105)
    )
    db.session.commit()
    page = text(client.get(f"/conversations/{sms.id}"))
    shown = re.findall(r"Note number (\d+)\.", page)
    assert shown[0] == "005" and shown[-1] == "104" and len(shown) == 100
    earlier = unescape(re.search(r'<a href="([^"]+)">Earlier messages</a>', page)[1])
    older = text(client.get(earlier))
    assert re.findall(r"Note number (\d+)\.", older) == [f"{n:03d}" for n in range(5)]
    assert "Newest messages" in older and "Earlier messages" not in older
    # Older pages stay still: only the newest refresh themselves.
    assert THREAD_POLL_RE.search(older) is None


def test_polling_a_thread_is_204_until_a_tick_changes(client, db, login_as, twilio_fake, sms):
    login_as("staff")
    message = services.queue_message(sms, body="Are we on for 3pm?", actor=None)
    db.session.commit()
    run_worker("messaging")
    page = text(client.get(f"/conversations/{sms.id}"))
    poll_url = unescape(THREAD_POLL_RE.search(page)[1])
    assert "every 5s" in page

    assert client.htmx_get(poll_url).status_code == 204
    assert client.htmx_get(poll_url).status_code == 204
    webhook = twilio_fake.status_callback_requests(fresh(db, message).sid, ["delivered"])[0]
    assert webhook.send(client).status_code == 200
    run_worker("webhooks")

    changed = client.htmx_get(poll_url)
    body = text(changed)
    assert changed.status_code == 200 and body.startswith('<section id="conversation-messages"')
    assert '✓✓</span> <span class="tick-label">Delivered' in body
    assert client.htmx_get(unescape(THREAD_POLL_RE.search(body)[1])).status_code == 204
    # A new inbound message changes the thread too, and is read as it shows.
    inbound(client, twilio_fake, "+14155550101", "Yes, see you then")
    reply = client.htmx_get(unescape(THREAD_POLL_RE.search(body)[1]))
    assert "Yes, see you then" in text(reply)
    assert fresh(db, sms).unread_count == 0
    # Without htmx the poll URL is the whole page.
    assert "<html" in text(client.get(poll_url))


@pytest.mark.parametrize("htmx", [False, True])
def test_sending_from_the_composer_reaches_twilio_through_the_worker(
    client, db, login_as, twilio_fake, sms, htmx
):
    staff = login_as("staff", name="Sam Staff")
    response = client.form(
        f"/conversations/{sms.id}/messages", {"body": "  See you Tuesday!  "}, htmx=htmx
    )
    [message] = messages_of(db, sms)
    assert message.status == "queued" and message.sender_id == staff.id
    assert message.body == "See you Tuesday!"
    if htmx:
        assert response.status_code == 200
        body = text(response)
        assert body.startswith('<section id="composer"') and "See you Tuesday" not in body
        assert response.headers["HX-Trigger"] == "messages-updated"
    else:
        assert response.status_code == 303
        assert response.headers["Location"] == f"/conversations/{sms.id}#message-{message.id}"
        page = text(client.get(response.headers["Location"]))
        assert "Message queued." in page and "See you Tuesday!" in page and "⏱" in page

    run_worker("messaging")
    [accepted] = twilio_fake.messages.values()
    assert accepted["to"] == "+14155550101" and accepted["body"] == "See you Tuesday!"
    assert accepted["from"] == SMS_FROM
    assert fresh(db, message).sid == accepted["sid"]
    page = text(client.get(f"/conversations/{sms.id}"))
    assert "Sam Staff" in page


@pytest.mark.parametrize("htmx", [False, True])
def test_an_empty_message_is_refused_in_place(client, db, login_as, twilio_fake, sms, htmx):
    login_as("staff")
    response = client.form(f"/conversations/{sms.id}/messages", {"body": "   "}, htmx=htmx)
    assert response.status_code == 422
    assert "Write a message first." in text(response)
    assert ("<html" in text(response)) is not htmx
    assert messages_of(db, sms) == []


@pytest.mark.parametrize("htmx", [False, True])
def test_opted_out_disables_the_composer_and_refuses_the_send(
    client, db, login_as, twilio_fake, sms, ana, htmx
):
    login_as("staff")
    db.session.add(OptOut(contact_id=ana.id, channel="sms", source="replied STOP"))
    db.session.commit()
    page = text(client.get(f"/conversations/{sms.id}"))
    assert "Ana Silva opted out of SMS (replied STOP" in page
    assert re.search(r'<fieldset class="composer-fields" disabled>', page)

    response = client.form(
        f"/conversations/{sms.id}/messages", {"body": "Are you still there?"}, htmx=htmx
    )
    assert response.status_code == 422
    body = text(response)
    assert 'role="alert" id="composer-error">Ana Silva opted out of SMS' in body
    assert ">Are you still there?</textarea>" in body  # nothing typed is lost
    assert messages_of(db, sms) == []


@pytest.mark.parametrize("htmx", [False, True])
def test_without_twilio_the_thread_shows_a_banner_and_refuses(
    client, db, login_as, make_contact, monkeypatch, app, htmx
):
    for key in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        monkeypatch.setitem(app.config, key, None)
    monkeypatch.setitem(app.config, "TWILIO_SMS_FROM", "+15005550006")
    login_as("staff")
    contact = make_contact("Ana Silva", phone="+14155550101")
    conversation = conversation_for(db, contact)
    page = text(client.get(f"/conversations/{conversation.id}"))
    assert "Twilio is not configured: messages cannot be sent." in page
    assert "TWILIO_ACCOUNT_SID" in page
    assert '<fieldset class="composer-fields" disabled>' in page

    response = client.form(
        f"/conversations/{conversation.id}/messages", {"body": "Hello?"}, htmx=htmx
    )
    assert response.status_code == 422
    assert "Twilio is not configured" in text(response)
    assert messages_of(db, conversation) == []


@pytest.mark.parametrize("htmx", [False, True])
def test_whatsapp_outside_the_window_takes_approved_templates_only(
    client, db, login_as, twilio_fake, ana, htmx
):
    login_as("staff")
    approved = MessageTemplate(
        name="Check-in", body="Hi {{first_name}}, shall we talk?", content_sid="HX" + "a" * 32
    )
    plain = MessageTemplate(name="Plain note", body="Hello {{first_name}}")
    db.session.add_all([approved, plain])
    conversation = conversation_for(
        db, ana, "whatsapp", last_inbound_at=utcnow() - timedelta(hours=25)
    )
    page = text(client.get(f"/conversations/{conversation.id}"))
    assert "WhatsApp: Window closed — templates only" in page
    composer = page[page.index('<section id="composer"') :]
    assert re.search(r'<textarea id="composer-body"[^>]* disabled', composer)
    assert "Check-in" in composer and "Plain note" not in composer
    assert '<fieldset class="composer-fields" >' in composer

    refused = client.form(
        f"/conversations/{conversation.id}/messages", {"body": "Free text"}, htmx=htmx
    )
    assert refused.status_code == 422
    assert "Outside WhatsApp&#39;s 24-hour window" in text(refused)
    not_approved = client.form(
        f"/conversations/{conversation.id}/messages", {"template_id": plain.id}, htmx=htmx
    )
    assert not_approved.status_code == 422

    sent = client.form(
        f"/conversations/{conversation.id}/messages", {"template_id": approved.id}, htmx=htmx
    )
    assert sent.status_code == (200 if htmx else 303)
    [message] = messages_of(db, conversation)
    assert message.content_sid == approved.content_sid
    assert message.body == "Hi Ana, shall we talk?"
    run_worker("messaging")
    [request] = twilio_fake.calls("messages_create")
    assert request.form["ContentSid"] == approved.content_sid
    assert request.form["To"] == "whatsapp:+14155550101"
    assert '"1": "Ana"' in request.form["ContentVariables"].replace('":"', '": "')


def test_whatsapp_outside_the_window_without_templates_says_so(
    client, db, login_as, twilio_fake, ana
):
    login_as("staff")
    db.session.add(MessageTemplate(name="Plain note", body="Hello {{first_name}}"))
    conversation = conversation_for(db, ana, "whatsapp")  # the contact never wrote
    page = text(client.get(f"/conversations/{conversation.id}"))
    assert "no approved template exists yet" in page
    assert '<fieldset class="composer-fields" disabled>' in page


def test_whatsapp_inside_the_window_shows_the_time_left(client, db, login_as, twilio_fake, ana):
    login_as("staff")
    conversation = conversation_for(
        db, ana, "whatsapp", last_inbound_at=utcnow() - timedelta(hours=20, minutes=47, seconds=30)
    )
    page = text(client.get(f"/conversations/{conversation.id}"))
    assert "WhatsApp: Window open, closes in 3 h 12 min" in page
    assert not re.search(r'<textarea id="composer-body"[^>]* disabled', page)
    response = client.form(f"/conversations/{conversation.id}/messages", {"body": "Hi!"})
    assert response.status_code == 303


@pytest.mark.parametrize("htmx", [False, True])
def test_the_counter_counts_characters_and_segments(client, db, login_as, twilio_fake, sms, htmx):
    login_as("staff")
    url = f"/conversations/{sms.id}/counter"
    response = client.form(url, {"body": "x" * 161}, htmx=htmx)
    assert response.status_code == 200
    body = text(response)
    assert "161 characters · 2 SMS segments (GSM-7)" in body
    if htmx:
        assert body.startswith('<div id="composer-counter"')
    else:
        assert "<html" in body and ">" + "x" * 161 + "</textarea>" in body
    emoji = text(client.form(url, {"body": "Olá 👋"}, htmx=True))
    assert "1 SMS segment (UCS-2)" in emoji
    page = text(client.get(f"/conversations/{sms.id}"))
    assert 'hx-trigger="keyup changed delay:300ms"' in page
    assert f'hx-post="/conversations/{sms.id}/counter"' in page


def test_the_counter_previews_a_template_for_the_contact(client, db, login_as, twilio_fake, sms):
    login_as("staff")
    template = MessageTemplate(name="Hello", body="Hi {{first_name}}, see you soon")
    db.session.add(template)
    db.session.commit()
    body = text(
        client.form(f"/conversations/{sms.id}/counter", {"template_id": template.id}, htmx=True)
    )
    assert "Hi Ana, see you soon" in body and "20 characters" in body


@pytest.mark.parametrize("htmx", [False, True])
def test_retry_sends_a_failed_message_again(client, db, login_as, twilio_fake, sms, htmx):
    login_as("staff")
    message = services.queue_message(sms, body="Your booking is confirmed", actor=None)
    db.session.commit()
    run_worker("messaging")
    sid = fresh(db, message).sid
    for webhook in twilio_fake.status_callback_requests(sid, ["undelivered"]):
        assert webhook.send(client).status_code == 200
    run_worker("webhooks")
    page = text(client.get(f"/conversations/{sms.id}"))
    assert "✗ Not delivered: The phone is unreachable" in words(page)
    retry_url = f"/conversations/{sms.id}/messages/{message.id}/retry"
    assert f'action="{retry_url}"' in page

    response = client.form(retry_url, htmx=htmx)
    if htmx:
        assert response.status_code == 200
        body = text(response)
        assert body.startswith('<section id="conversation-messages"')
        assert "sent again below" in body
    else:
        assert response.status_code == 303
        page = text(client.get(response.headers["Location"]))
        assert "The message was queued again." in page and f'action="{retry_url}"' not in page
    first, again = messages_of(db, sms)
    assert again.retry_of_id == first.id and again.status == "queued"
    run_worker("messaging")
    assert len(twilio_fake.messages) == 2
    assert fresh(db, again).sid not in (None, sid)
    # A second retry of the same message is refused, in words.
    refused = client.form(retry_url, htmx=htmx)
    assert refused.status_code == (422 if htmx else 303)
    if htmx:
        assert "already retried" in text(refused)
    assert len(messages_of(db, sms)) == 2


@pytest.mark.parametrize("htmx", [False, True])
def test_send_later_in_my_timezone_then_cancel(client, db, login_as, twilio_fake, sms, htmx):
    login_as("staff", timezone="America/New_York")
    local = (utcnow() + timedelta(days=2)).astimezone(ZoneInfo("America/New_York"))
    local = local.replace(hour=9, minute=30, second=0, microsecond=0, tzinfo=None)
    response = client.form(
        f"/conversations/{sms.id}/messages",
        {"body": "Reminder: session tomorrow", "send_at": local.strftime("%Y-%m-%dT%H:%M")},
        htmx=htmx,
    )
    assert response.status_code == (200 if htmx else 303)
    [message] = messages_of(db, sms)
    expected = local.replace(tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)
    assert message.status == "scheduled" and message.send_at == expected
    page = text(client.get(f"/conversations/{sms.id}"))
    assert f"Scheduled for {local:%Y-%m-%d} 09:30" in words(page)
    cancel_url = f"/conversations/{sms.id}/messages/{message.id}/cancel"
    assert f'action="{cancel_url}"' in page

    cancelled = client.form(cancel_url, htmx=htmx)
    assert cancelled.status_code == (200 if htmx else 303)
    message = fresh(db, message)
    assert message.status == "canceled"
    body = text(cancelled) if htmx else text(client.get(f"/conversations/{sms.id}"))
    assert "⊘" in body and "Cancelled by" in body
    # Even once its time comes, the worker does not send it.
    message.send_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    from jobs.messaging import send_message

    get_queue("messaging").enqueue(send_message, message.id)
    run_worker("messaging")
    assert twilio_fake.messages == {}


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("2001-01-01T09:00", "Pick a time in the future (your clock: UTC)."),
        ("next tuesday", "Give the send time as a date and a time."),
    ],
)
def test_send_later_needs_a_future_time(client, db, login_as, twilio_fake, sms, value, error):
    login_as("staff")
    response = client.form(
        f"/conversations/{sms.id}/messages", {"body": "Later", "send_at": value}, htmx=True
    )
    assert response.status_code == 422
    body = text(response)
    assert error in body and ">Later</textarea>" in body and f'value="{value}"' in body
    assert messages_of(db, sms) == []


# --- assign, close, reopen, start ---------------------------------------------------


@pytest.mark.parametrize("htmx", [False, True])
def test_staff_assign_close_and_reopen(client, db, login_as, make_user, twilio_fake, sms, htmx):
    login_as("staff")
    coach = make_user("coach", name="Carla Coach")
    base = f"/conversations/{sms.id}"
    response = client.form(f"{base}/assign", {"assignee_id": coach.id}, htmx=htmx)
    assert fresh(db, sms).assignee_id == coach.id
    if htmx:
        body = text(response)
        assert response.status_code == 200 and body.startswith('<div id="conversation-header"')
        assert f'<option value="{coach.id}" selected>Carla Coach' in body
    else:
        assert response.status_code == 303 and response.headers["Location"] == base
        assert "Assigned to Carla Coach." in text(client.get(base))

    response = client.form(f"{base}/close", htmx=htmx)
    assert fresh(db, sms).status == "closed"
    if htmx:
        assert response.headers["HX-Trigger"] == "conversation-updated"
        assert "Reopen</button>" in text(response)
        composer = text(client.htmx_get(f"{base}?part=composer"))
        assert composer.startswith('<section id="composer"')
        assert "This conversation is closed. Reopen it to reply." in composer
    else:
        assert response.status_code == 303
    refused = client.form(f"{base}/messages", {"body": "Still there?"}, htmx=htmx)
    assert refused.status_code == 422 and messages_of(db, sms) == []

    response = client.form(f"{base}/reopen", htmx=htmx)
    assert response.status_code == (200 if htmx else 303)
    assert fresh(db, sms).status == "open"
    assert client.form(f"{base}/assign", {"assignee_id": ""}, htmx=htmx).status_code in (200, 303)
    assert fresh(db, sms).assignee_id is None
    assert client.form(f"{base}/assign", {"assignee_id": "999999"}, htmx=htmx).status_code == 400


@pytest.mark.parametrize("htmx", [False, True])
def test_reopen_refuses_while_another_thread_is_open(
    client, db, login_as, twilio_fake, sms, ana, htmx
):
    login_as("staff")
    sms.status = "closed"
    db.session.commit()
    newer = services.open_conversation(ana, "sms")
    db.session.commit()
    response = client.form(f"/conversations/{sms.id}/reopen", htmx=htmx)
    message = "Another SMS conversation with Ana Silva is open"
    if htmx:
        assert response.status_code == 422 and message in text(response)
    else:
        assert response.status_code == 303
        assert message in text(client.get(response.headers["Location"]))
    assert fresh(db, sms).status == "closed" and fresh(db, newer).status == "open"


@pytest.mark.parametrize("htmx", [False, True])
def test_a_coach_may_take_or_leave_a_thread_only(
    client, db, login_as, make_user, make_contact, twilio_fake, htmx
):
    coach = login_as("coach", name="Carla Coach")
    other = make_user("coach", name="Otto Other")
    staff = make_user("staff", name="Sam Staff")
    contact = make_contact("Own Client", phone="+14155550121", owner_id=coach.id)
    conversation = conversation_for(db, contact, assignee_id=None)
    base = f"/conversations/{conversation.id}"
    page = text(client.get(base))
    header = page[page.index('id="conversation-header"') : page.index('id="conversation-messages"')]
    assert "Carla Coach (me)" in header and "Otto Other" not in header and "Sam Staff" not in header

    refused = client.form(f"{base}/assign", {"assignee_id": other.id}, htmx=htmx)
    assert fresh(db, conversation).assignee_id is None
    if htmx:
        assert refused.status_code == 422
        assert "A coach can only take a conversation or leave it." in text(refused)
    else:
        assert "A coach can only take" in text(client.get(refused.headers["Location"]))
    client.form(f"{base}/assign", {"assignee_id": coach.id}, htmx=htmx)
    assert fresh(db, conversation).assignee_id == coach.id
    client.form(f"{base}/assign", {"assignee_id": ""}, htmx=htmx)
    assert fresh(db, conversation).assignee_id is None

    # Someone else's assignment on the coach's client stays put.
    conversation.assignee_id = staff.id
    db.session.commit()
    client.form(f"{base}/assign", {"assignee_id": ""}, htmx=htmx)
    assert fresh(db, conversation).assignee_id == staff.id


@pytest.mark.parametrize("htmx", [False, True])
def test_a_coach_leaving_a_thread_they_cannot_otherwise_see(
    client, db, login_as, make_user, make_contact, twilio_fake, htmx
):
    coach = login_as("coach")
    other = make_user("coach")
    contact = make_contact("Their Client", phone="+14155550122", owner_id=other.id)
    conversation = conversation_for(db, contact, assignee_id=coach.id)
    response = client.form(
        f"/conversations/{conversation.id}/assign", {"assignee_id": ""}, htmx=htmx
    )
    assert fresh(db, conversation).assignee_id is None
    if htmx:
        assert response.headers["HX-Redirect"] == "/conversations/"
    else:
        assert response.headers["Location"] == "/conversations/"
    assert "no longer in your inbox" in text(client.get("/conversations/"))


def test_the_contact_page_starts_or_opens_a_thread(
    client, db, login_as, make_user, make_contact, twilio_fake
):
    coach = login_as("coach")
    contact = make_contact("Own Client", phone="+14155550121", owner_id=coach.id)
    page = text(client.get(f"/contacts/{contact.id}"))
    section = page[page.index('<section id="message"') :]
    assert 'action="/conversations/start"' in section
    assert 'name="channel" value="sms"' in section and 'name="channel" value="whatsapp"' in section

    response = client.form("/conversations/start", {"contact_id": contact.id, "channel": "sms"})
    conversation = thread_of(db, contact)
    assert response.status_code == 303
    assert response.headers["Location"] == f"/conversations/{conversation.id}"
    assert conversation.assignee_id == coach.id and conversation.sender == SMS_FROM
    again = client.form("/conversations/start", {"contact_id": contact.id, "channel": "sms"})
    assert again.headers["Location"] == f"/conversations/{conversation.id}"
    whatsapp = client.form(
        "/conversations/start", {"contact_id": contact.id, "channel": "whatsapp"}, htmx=True
    )
    assert whatsapp.status_code == 303
    assert thread_of(db, contact, "whatsapp").sender == WHATSAPP_FROM
    bad = client.form("/conversations/start", {"contact_id": contact.id, "channel": "fax"})
    assert bad.status_code == 400

    # A message sent there links back from the contact's timeline.
    client.form(f"/conversations/{conversation.id}/messages", {"body": "Hello from the page"})
    page = text(client.get(f"/contacts/{contact.id}"))
    assert f'<a href="/conversations/{conversation.id}">SMS sent · queued</a>' in page

    no_phone = make_contact("No Phone", owner_id=coach.id)
    assert '<section id="message"' not in text(client.get(f"/contacts/{no_phone.id}"))


def test_signed_out_polls_are_sent_to_sign_in(client, db, twilio_fake, sms):
    response = client.htmx_get("/conversations/?v=0.0")
    assert response.status_code == 401 and response.headers["HX-Redirect"].startswith("/login")
    assert client.get(f"/conversations/{sms.id}").status_code == 302


def test_send_times_are_read_on_the_users_clock():
    from crm.conversations.inbox import parse_send_at

    future = datetime.now(UTC) + timedelta(days=30)
    local = future.astimezone(ZoneInfo("Asia/Tokyo")).replace(tzinfo=None, second=0, microsecond=0)
    at = parse_send_at(local.strftime("%Y-%m-%dT%H:%M"), "Asia/Tokyo")
    assert at == local.replace(tzinfo=ZoneInfo("Asia/Tokyo")).astimezone(UTC)
    assert parse_send_at("", "UTC") is None
