"""Sign-in in a real browser: headless Chromium, the strict CSP and htmx 2 together.

The app is served by a werkzeug server in a thread, so the test cannot use the
rolled-back `db` fixture (its connection must not cross threads): the user it signs in
as is committed here and deleted afterwards.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import sqlalchemy as sa

from crm.extensions import db
from crm.users.models import User
from crm.users.services import create_user

pytestmark = pytest.mark.browser

EMAIL = "browser.staff@example.com"
NAME = "Bea Browser"
PASSWORD = "a browser password"
SCREENSHOT = Path("/tmp/rapport-dashboard.png")


@pytest.fixture
def staff_user(app):
    """A committed staff user with a password; deleted with its audit rows afterwards."""
    with app.app_context():
        user = create_user(EMAIL, name=NAME, role="staff", password=PASSWORD, actor=None)
        db.session.commit()
        user_id = user.id
        db.session.remove()
    yield user_id
    with app.app_context():
        db.session.execute(
            sa.text(
                "DELETE FROM audit_log"
                " WHERE actor_id = :id OR (object_type = 'user' AND object_id = :id)"
            ),
            {"id": user_id},
        )
        db.session.execute(sa.delete(User).where(User.id == user_id))
        db.session.commit()
        db.session.remove()


def sign_in(page, password):
    page.goto("/login")
    page.get_by_label("Email").fill(EMAIL)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_sign_in_shows_dashboard_without_console_errors(
    page, console_errors, staff_user, live_server
):
    sign_in(page, PASSWORD)

    page.wait_for_url(f"{live_server}/")
    heading = page.get_by_role("heading", level=1)
    assert heading.inner_text() == f"Welcome, {NAME}"
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link", name="Contacts").is_visible()
    assert page.evaluate("typeof window.htmx") == "object", "htmx did not load"
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # A boosted link: htmx fetches and swaps the page under the CSP.
    with page.expect_request(lambda r: r.url.endswith("/contacts/")) as boosted:
        nav.get_by_role("link", name="Contacts").click()
    assert boosted.value.headers.get("hx-request") == "true"
    page.wait_for_url(f"{live_server}/contacts/")
    assert page.get_by_role("heading", level=1).inner_text() == "Contacts"
    assert page.locator("#contacts-table").is_visible()

    assert console_errors == []


def test_wrong_password_rerenders_the_form(page, console_errors, staff_user):
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        sign_in(page, "not the password")

    assert answer.value.status == 401
    assert "do not match an account" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Email").input_value() == EMAIL
    # Chromium logs the 401 itself; anything else (CSP, scripts) is a real error.
    assert [e for e in console_errors if "status of 401" not in e] == []


@pytest.fixture
def browser_contacts(app, staff_user):
    """Three committed contacts; removed afterwards with what the test did to them."""
    from crm.contacts.models import BulkAction, Contact, Tag

    names = ("Browser Alpha", "Browser Beta", "Browser Gamma")
    with app.app_context():
        contacts = [Contact(name=name) for name in names]
        contacts[0].phone = "+14155550123"
        db.session.add_all(contacts)
        db.session.commit()
        ids = [c.id for c in contacts]
        db.session.remove()
    yield ids
    with app.app_context():
        db.session.execute(sa.delete(Contact).where(Contact.id.in_(ids)))
        db.session.execute(sa.delete(Tag).where(Tag.name.in_(["browser-vip", "browser-solo"])))
        db.session.execute(sa.delete(BulkAction).where(BulkAction.actor_id == staff_user))
        db.session.commit()
        db.session.remove()


def test_search_inline_edit_and_bulk_tag_in_the_browser(
    page, console_errors, browser_contacts, live_server
):
    from playwright.sync_api import expect

    alpha, beta, gamma = browser_contacts
    sign_in(page, PASSWORD)
    page.wait_for_url(f"{live_server}/")
    page.goto("/contacts/")

    # Active search: typing filters the rows and puts the query in the address bar.
    page.get_by_label("Search").fill("555 0123")
    rows = page.locator("#contact-rows tr[id^=contact-]")
    expect(rows).to_have_count(1)
    assert "Browser Alpha" in rows.first.inner_text()
    # Only the search: the form's empty fields stay out of the address bar.
    assert parse_qsl(urlsplit(page.url).query) == [("q", "555 0123")]

    # Inline edit: the row turns into a form and back, without leaving the page.
    page.locator(f"#contact-{alpha}").get_by_role("link", name="Edit", exact=True).click()
    name_input = page.locator(f"#contact-{alpha}.editing input[name=name]")
    name_input.fill("Browser Alpha Renamed")
    page.locator(f"#contact-{alpha}").get_by_role("button", name="Save").click()
    page.locator(f"#contact-{alpha}").get_by_role(
        "link", name="Browser Alpha Renamed", exact=True
    ).wait_for()

    # Bulk tag: select two rows, add a tag; the list reloads with the tag on both.
    page.get_by_label("Search").fill("Browser")
    expect(rows).to_have_count(3)
    page.get_by_label("Select Browser Beta").check()
    page.get_by_label("Select Browser Gamma").check()
    page.get_by_label("Bulk action").select_option("tag_add")
    page.locator("#bulk-form").get_by_label("Tag", exact=True).fill("browser-vip")
    page.get_by_role("button", name="Apply to contacts").click()
    page.locator("#bulk-status").get_by_text("browser-vip").first.wait_for()
    page.locator(f"#contact-{beta} .tag", has_text="browser-vip").wait_for()
    page.locator(f"#contact-{gamma} .tag", has_text="browser-vip").wait_for()
    assert page.locator(f"#contact-{alpha} .tag", has_text="browser-vip").count() == 0

    # The row's tag editor opens in its cell and adds a tag there.
    page.get_by_label("Edit the tags of Browser Alpha Renamed").click()
    page.get_by_label("Add a tag to Browser Alpha Renamed").fill("browser-solo")
    page.locator(f"#tags-{alpha}").get_by_role("button", name="Add").click()
    page.locator(f"#contact-{alpha} .tag", has_text="browser-solo").wait_for()
    assert page.locator(f"#contact-{beta} .tag", has_text="browser-solo").count() == 0
    assert console_errors == []
