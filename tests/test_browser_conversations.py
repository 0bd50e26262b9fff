"""A thread in a real browser: send a message, the worker hands it to the Twilio fake, the
fake posts the `delivered` callback over HTTP, and the tick changes without a reload.

As in tests/test_browser.py the app is served from a thread, so the test cannot use the
rolled-back `db` fixture: what it needs is committed here and deleted afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from rq import SimpleWorker

from crm.audit.models import AuditEntry
from crm.contacts.models import Contact
from crm.conversations import services
from crm.conversations.models import Message
from crm.extensions import db
from crm.redis_client import get_redis
from crm.users.models import User
from crm.users.services import create_user
from crm.webhooks.models import WebhookEvent
from jobs import get_queue

pytestmark = pytest.mark.browser

EMAIL = "browser.messaging@example.com"
PASSWORD = "a messaging password"
SCREENSHOT = Path("/tmp/rapport-conversation.png")


@pytest.fixture
def thread(app, twilio_fake, live_server, monkeypatch):
    """A signed-in-able staff user and an SMS thread, committed; removed afterwards.

    Callbacks are signed for, and sent to, the live server's URL.
    """
    monkeypatch.setitem(app.config, "PUBLIC_BASE_URL", live_server)
    with app.app_context():
        first_event = db.session.scalar(sa.select(sa.func.max(WebhookEvent.id))) or 0
        user = create_user(EMAIL, name="Mia Messenger", role="staff", password=PASSWORD, actor=None)
        contact = Contact(name="Browser Recipient", phone="+14155550177")
        db.session.add(contact)
        db.session.flush()
        conversation = services.open_conversation(contact, "sms")
        db.session.commit()
        ids = {"user": user.id, "contact": contact.id, "conversation": conversation.id}
        db.session.remove()
    yield ids
    with app.app_context():
        # Messages, status events and the thread go with the contact (ON DELETE CASCADE).
        db.session.execute(sa.delete(Contact).where(Contact.id == ids["contact"]))
        db.session.execute(sa.delete(WebhookEvent).where(WebhookEvent.id > first_event))
        db.session.execute(
            sa.delete(AuditEntry).where(
                sa.or_(
                    AuditEntry.actor_id == ids["user"],
                    sa.and_(AuditEntry.object_type == "user", AuditEntry.object_id == ids["user"]),
                )
            )
        )
        db.session.execute(sa.delete(User).where(User.id == ids["user"]))
        db.session.commit()
        db.session.remove()


def run_worker(app, *queues: str) -> None:
    with app.app_context():
        worker = SimpleWorker([get_queue(q) for q in queues], connection=get_redis())
        worker.work(burst=True)
        db.session.remove()


def test_a_sent_message_ticks_to_delivered_without_a_reload(
    app, page, console_errors, live_server, thread, twilio_fake
):
    from playwright.sync_api import expect

    page.goto("/login")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server}/")

    # From the contact page: its Message block opens the SMS thread.
    page.goto(f"/contacts/{thread['contact']}")
    page.wait_for_load_state("networkidle")  # its lazy panels have loaded
    page.locator("#message").get_by_role("button", name="SMS").click()
    page.wait_for_url(f"{live_server}/conversations/{thread['conversation']}")
    # The URL changes as htmx swaps the boosted page in; typing waits until htmx has wired
    # the composer's keyup trigger, or the keystrokes reach a textarea nothing listens to.
    page.wait_for_load_state("networkidle")
    composer = page.get_by_label("Message", exact=True)
    composer.evaluate(
        "(box) => new Promise((done) => { const wired = () => "
        "(box['htmx-internal-data']?.listenerInfos || []).length ? done() "
        ": setTimeout(wired, 20); wired(); })"
    )
    composer.press_sequentially("See you at 10 tomorrow")
    # The counter follows the typing (a request after a short pause).
    expect(page.locator("#composer-counter")).to_contain_text("22 characters · 1 SMS segment")
    page.get_by_role("button", name="Send").click()

    messages = page.locator("#conversation-messages")
    expect(messages).to_contain_text("See you at 10 tomorrow")
    expect(messages.locator(".tick-queued")).to_contain_text("Queued")
    expect(page.get_by_label("Message", exact=True)).to_have_value("")
    # The page is the same document: a marker set now survives until the end.
    page.evaluate("document.body.dataset.marker = 'no-reload'")

    run_worker(app, "messaging")
    with app.app_context():
        message = db.session.scalars(
            sa.select(Message).where(Message.conversation_id == thread["conversation"])
        ).one()
        sid, message_id = message.sid, message.id
        db.session.remove()
    assert sid is not None and twilio_fake.messages[sid]["body"] == "See you at 10 tomorrow"

    assert twilio_fake.deliver_status_http(sid, ["sent", "delivered"]) == [200, 200]
    run_worker(app, "webhooks")

    tick = page.locator(f"#tick-{message_id}")
    expect(tick).to_have_class("tick tick-delivered", timeout=8000)
    expect(tick).to_contain_text("✓✓ Delivered")
    assert page.evaluate("document.body.dataset.marker") == "no-reload"
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # The inbox refreshes itself the same way when the contact replies.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Conversations").click()
    page.wait_for_url(f"{live_server}/conversations/")
    row = page.locator(f"#conversation-{thread['conversation']}")
    expect(row).to_contain_text("See you at 10 tomorrow")
    page.evaluate("document.body.dataset.marker = 'inbox'")
    reply = twilio_fake.inbound_message("+14155550177", "+15005550006", "Perfect, thanks!")
    assert reply.send_http() == 200
    run_worker(app, "webhooks")
    expect(row).to_contain_text("Perfect, thanks!", timeout=8000)
    expect(row.locator(".unread-badge")).to_have_text("1 unread")
    assert page.evaluate("document.body.dataset.marker") == "inbox"
    page.screenshot(path="/tmp/rapport-inbox.png", full_page=True)
    assert console_errors == []
