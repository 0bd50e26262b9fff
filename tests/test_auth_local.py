"""Local password sign-in: the way into a fresh install without Google."""

from __future__ import annotations

import pytest

from crm.audit.models import AuditEntry

PASSWORD = "correct horse battery"


@pytest.fixture
def alice(make_user):
    return make_user("staff", email="alice@example.com", name="Alice", password=PASSWORD)


def sign_in(client, email, password, next_path=None):
    url = f"/login?next={next_path}" if next_path else "/login"
    return client.form(url, {"email": email, "password": password})


def test_sign_in_lands_on_dashboard_and_is_audited(client, alice, db):
    response = sign_in(client, "Alice@Example.com ", PASSWORD)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    page = client.get("/").get_data(as_text=True)
    assert "Welcome, Alice" in page
    assert alice.last_sign_in_at is not None
    entry = db.session.execute(
        db.select(AuditEntry).filter_by(action="user.signed_in", object_id=alice.id)
    ).scalar_one()
    assert entry.changes == {"method": [None, "password"]}


@pytest.mark.parametrize(
    ("email", "password"),
    [("alice@example.com", "wrong password!"), ("nobody@example.com", PASSWORD), ("", "")],
)
def test_bad_credentials_get_a_message_and_no_session(client, alice, email, password):
    response = sign_in(client, email, password)
    assert response.status_code in (400, 401)
    page = response.get_data(as_text=True)
    assert "do not match an account" in page or "Enter your email and password" in page
    assert client.get("/").status_code == 302  # still signed out


def test_deactivated_account_is_refused(client, alice, db):
    alice.active = False
    db.session.commit()
    response = sign_in(client, "alice@example.com", PASSWORD)
    assert response.status_code == 403
    assert "deactivated" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_failures_are_limited_per_account(client, alice, app):
    limit = app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT"]
    for _ in range(limit):
        assert sign_in(client, "alice@example.com", "not the password").status_code == 401
    # Even the right password is refused until the window passes.
    response = sign_in(client, "alice@example.com", PASSWORD)
    assert response.status_code == 429
    assert "Too many failed sign-in attempts for this account" in response.get_data(as_text=True)
    assert "Try again in 15 minutes" in response.get_data(as_text=True)


def test_failures_are_limited_per_address(client, alice, app, monkeypatch):
    monkeypatch.setitem(app.config, "LOGIN_MAX_FAILURES_PER_IP", 3)
    for n in range(3):
        sign_in(client, f"guess{n}@example.com", "whatever")
    response = sign_in(client, "alice@example.com", PASSWORD)
    assert response.status_code == 429
    assert "from your network" in response.get_data(as_text=True)
    # Another address is unaffected.
    other = client.form(
        "/login",
        {"email": "alice@example.com", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "10.9.9.9"},
    )
    assert other.status_code == 303


def test_success_resets_the_account_counter(client, alice, app):
    limit = app.config["LOGIN_MAX_FAILURES_PER_ACCOUNT"]
    for _ in range(limit - 1):
        sign_in(client, "alice@example.com", "nope nope")
    assert sign_in(client, "alice@example.com", PASSWORD).status_code == 303
    client.form("/logout")
    for _ in range(limit - 1):
        sign_in(client, "alice@example.com", "nope nope")
    assert sign_in(client, "alice@example.com", PASSWORD).status_code == 303


def test_missing_or_stale_csrf_token_is_refused(client, alice):
    response = client.post("/login", data={"email": "alice@example.com", "password": PASSWORD})
    assert response.status_code == 400
    assert "This form has expired" in response.get_data(as_text=True)
    response = client.post(
        "/login",
        data={"email": "alice@example.com", "password": PASSWORD, "csrf_token": "forged.token"},
    )
    assert response.status_code == 400
    assert client.get("/").status_code == 302


def test_tampered_session_cookie_gives_no_session(client, alice):
    assert sign_in(client, "alice@example.com", PASSWORD).status_code == 303
    cookie = client.get_cookie("session")
    client.set_cookie("session", cookie.value[:-4] + "AAAA")
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_a_rotated_secret_key_keeps_sessions_signed_with_a_fallback(
    client, alice, app, monkeypatch
):
    """Sessions survive SECRET_KEY rotation while the old key is a fallback, and end
    when it is dropped, even though the process keeps its cookie signer."""
    assert sign_in(client, "alice@example.com", PASSWORD).status_code == 303
    assert client.get("/").status_code == 200
    old = app.secret_key
    monkeypatch.setattr(app, "secret_key", "a-new-secret-key-" + "x" * 32)
    monkeypatch.setitem(app.config, "SECRET_KEY_FALLBACKS", [old])
    assert client.get("/").status_code == 200
    monkeypatch.setitem(app.config, "SECRET_KEY_FALLBACKS", [])
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


@pytest.mark.parametrize(
    "target",
    [
        "https://elsewhere.example/steal",
        "//elsewhere.example",
        "/\\elsewhere.example",
        "javascript:alert(1)",
    ],
)
def test_next_never_leaves_the_site(client, alice, target):
    response = sign_in(client, "alice@example.com", PASSWORD, next_path=target)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"


def test_next_returns_to_the_page_asked_for(client, alice):
    response = client.get("/contacts/?status=active")
    assert response.status_code == 302
    login_url = response.headers["Location"]
    assert login_url.startswith("/login?next=")
    response = client.form(login_url, {"email": "alice@example.com", "password": PASSWORD})
    assert response.headers["Location"] == "/contacts/?status=active"


def test_sign_out_ends_the_session(client, alice):
    sign_in(client, "alice@example.com", PASSWORD)
    assert client.get("/").status_code == 200
    assert client.get("/logout").status_code == 405  # GET cannot sign you out
    response = client.form("/logout")
    assert response.status_code == 303
    assert client.get("/").status_code == 302


def test_expired_session_on_htmx_request_redirects_the_page(client):
    response = client.htmx_get(
        "/contacts/", headers={"HX-Current-URL": "http://localhost/contacts/?status=active"}
    )
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/login?next=")
    assert "contacts" in response.headers["HX-Redirect"]
    assert response.get_data(as_text=True) == ""


def test_deactivation_ends_an_open_session(client, login_as, db):
    user = login_as("staff")
    assert client.get("/").status_code == 200
    user.active = False
    db.session.commit()
    assert client.get("/").status_code == 302
