"""My sessions in a real browser: a coach sees their upcoming session with its client and
meeting link, switches to Past, opens a session's details and marks it completed in place.

As in tests/test_browser_conversations.py the app is served from a thread, so the test
cannot use the rolled-back `db` fixture: what it needs is committed here and deleted after.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from crm.audit.models import AuditEntry
from crm.bookings import services
from crm.bookings.models import Booking
from crm.contacts.models import Contact, Note
from crm.conversations.models import Message
from crm.conversations.services import open_conversation
from crm.database import utcnow
from crm.extensions import db
from crm.users.models import User
from crm.users.services import create_user

pytestmark = pytest.mark.browser

EMAIL = "browser.sessions@example.com"
OTHER_EMAIL = "browser.sessions.other@example.com"
PASSWORD = "a sessions password"
MEETING = "https://zoom.example.com/j/4242"
SCREENSHOT = Path("/tmp/rapport-sessions.png")


@pytest.fixture
def sessions(app):
    """A coach with an upcoming and a past session, another coach with one; removed after."""
    start = utcnow().replace(second=0, microsecond=0)
    with app.app_context():
        coach = create_user(EMAIL, name="Cora Coach", role="coach", password=PASSWORD, actor=None)
        other = create_user(OTHER_EMAIL, name="Otto Coach", role="coach", actor=None)
        ana = Contact(name="Ana Browser", phone="+14155550188", owner_id=coach.id)
        zed = Contact(name="Zed Elsewhere", owner_id=other.id)
        db.session.add_all([ana, zed])
        db.session.flush()
        upcoming = services.create_booking(
            ana,
            coach=coach,
            start_at=start + timedelta(days=1),
            end_at=start + timedelta(days=1, hours=1),
            actor=None,
            meeting_url=MEETING,
        )
        past = services.create_booking(
            ana,
            coach=coach,
            start_at=start - timedelta(days=3),
            end_at=start - timedelta(days=3) + timedelta(hours=1),
            actor=None,
        )
        theirs = services.create_booking(
            zed,
            coach=other,
            start_at=start + timedelta(days=1, hours=3),
            end_at=start + timedelta(days=1, hours=4),
            actor=None,
        )
        conversation = open_conversation(ana, "sms")
        db.session.flush()
        db.session.add(
            Message(
                conversation_id=conversation.id,
                contact_id=ana.id,
                direction="inbound",
                channel="sms",
                body="Thanks for the session!",
                status="received",
            )
        )
        db.session.add(Note(contact_id=ana.id, author_id=coach.id, body="Working on sleep"))
        db.session.commit()
        ids = {
            "users": [coach.id, other.id],
            "contacts": [ana.id, zed.id],
            "upcoming": upcoming.id,
            "past": past.id,
            "theirs": theirs.id,
        }
        db.session.remove()
    yield ids
    with app.app_context():
        # Bookings, their history, steps and notes, and the messages go with the contacts.
        db.session.execute(sa.delete(Contact).where(Contact.id.in_(ids["contacts"])))
        db.session.execute(
            sa.delete(AuditEntry).where(
                sa.or_(
                    AuditEntry.actor_id.in_(ids["users"]),
                    sa.and_(
                        AuditEntry.object_type == "user", AuditEntry.object_id.in_(ids["users"])
                    ),
                )
            )
        )
        db.session.execute(sa.delete(User).where(User.id.in_(ids["users"])))
        db.session.commit()
        db.session.remove()


def test_a_coach_marks_a_past_session_completed_in_my_sessions(
    app, page, console_errors, live_server, sessions
):
    from playwright.sync_api import expect

    page.goto("/login")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{live_server}/")

    page.goto("/bookings/mine")
    upcoming = page.locator(f"#booking-{sessions['upcoming']}")
    expect(upcoming).to_contain_text("Ana Browser")
    expect(upcoming.get_by_role("link", name="Open meeting link")).to_have_attribute(
        "href", MEETING
    )
    expect(page.locator(f"#booking-{sessions['past']}")).to_have_count(0)
    expect(page.locator(f"#booking-{sessions['theirs']}")).to_have_count(0)
    expect(page.locator("#sessions")).not_to_contain_text("Zed Elsewhere")
    # The page is the same document from here on: a marker set now survives.
    page.evaluate("document.body.dataset.marker = 'no-reload'")

    page.get_by_role("navigation", name="Sessions").get_by_role("link", name="Past").click()
    page.wait_for_url(f"{live_server}/bookings/mine?tab=past")
    past = page.locator(f"#booking-{sessions['past']}")
    expect(past).to_contain_text("Ana Browser")
    expect(past.locator(".session-status")).to_have_text("Scheduled")
    expect(page.locator(f"#booking-{sessions['upcoming']}")).to_have_count(0)

    past.locator("summary").click()
    expect(past.get_by_text("Thanks for the session!")).to_be_visible()
    expect(past.get_by_text("Working on sleep")).to_be_visible()
    past.get_by_role("button", name="Mark completed").click()

    expect(past.locator(".session-status")).to_have_text("Completed")
    expect(past.get_by_role("button", name="Mark completed")).to_have_count(0)
    expect(past.get_by_role("button", name="No-show")).to_be_visible()
    assert page.evaluate("document.body.dataset.marker") == "no-reload"
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    with app.app_context():
        assert db.session.get(Booking, sessions["past"]).status == "completed"
        db.session.remove()

    # The session's page tells the same story in its history.
    past.get_by_role("link", name="Open the session").click()
    page.wait_for_url(f"{live_server}/bookings/{sessions['past']}")
    expect(page.locator("#session-header")).to_contain_text("Completed")
    expect(page.locator("#session-history")).to_contain_text("Session completed")
    page.screenshot(path="/tmp/rapport-session.png", full_page=True)
    assert console_errors == []
