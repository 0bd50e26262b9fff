"""Google sign-in, end to end against the local OIDC provider (oidc-provider-mock)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from crm.audit.models import AuditEntry
from crm.users.models import User


def start(client, path="/login/google"):
    """Ask the app to start Google sign-in; return the provider's authorize URL."""
    response = client.get(path)
    assert response.status_code == 302
    return response.headers["Location"]


def authorize(location, sub):
    """Sign in at the provider as `sub`; return the callback URL it sends the browser to."""
    response = httpx.post(location, data={"sub": sub})
    assert response.status_code == 302
    callback = response.headers["location"]
    assert callback.startswith("http://localhost/login/google/callback?")
    return callback


def sign_in(client, sub, path="/login/google"):
    return client.get(authorize(start(client, path), sub))


def with_query(url, **params):
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    return urlunsplit(parts._replace(query=urlencode({**query, **params})))


def assert_signed_out(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def user_by_email(db, email):
    return db.session.execute(db.select(User).filter_by(email=email)).scalar_one_or_none()


def audit_actions(db, user):
    query = db.select(AuditEntry).filter_by(object_type="user", object_id=user.id)
    entries = db.session.execute(query.order_by(AuditEntry.id)).scalars()
    return [(entry.action, entry.changes) for entry in entries]


def test_redirect_to_google_carries_state_nonce_and_domain_hint(client, oidc_server):
    location = start(client)
    assert location.startswith(f"{oidc_server}/oauth2/authorize?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"][0] and query["nonce"][0]
    assert query["client_id"] == ["test-client"]
    assert query["redirect_uri"] == ["http://localhost/login/google/callback"]
    assert "openid" in query["scope"][0].split()
    assert query["hd"] == ["example.com"]  # a hint only; the hd claim decides


def test_allowed_domain_user_is_created_as_staff(client, db, google_user):
    sub = google_user(
        "g-dana", email="Dana@Example.com", email_verified=True, name="Dana", hd="example.com"
    )
    response = sign_in(client, sub)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    assert "Welcome, Dana" in client.get("/").get_data(as_text=True)

    dana = user_by_email(db, "dana@example.com")
    assert dana.role == "staff"
    assert dana.active
    assert dana.google_sub == "g-dana"
    assert dana.has_password is False
    assert dana.last_sign_in_at is not None
    assert audit_actions(db, dana) == [
        (
            "user.created",
            {
                "email": [None, "dana@example.com"],
                "name": [None, "Dana"],
                "role": [None, "staff"],
                "source": [None, "google"],
            },
        ),
        ("user.signed_in", {"method": [None, "google"]}),
    ]


def test_invited_user_is_linked_then_found_by_sub(client, db, make_user, google_user):
    carol = make_user("coach", email="carol@partner.org", name="Carol")
    sub = google_user("g-carol", email="carol@partner.org", email_verified=True, name="C. Jones")
    response = sign_in(client, sub)
    assert response.status_code == 303
    assert "Welcome, Carol" in client.get("/").get_data(as_text=True)
    db.session.refresh(carol)
    assert carol.google_sub == "g-carol"
    assert carol.role == "coach"  # an invited user keeps the role the admin gave

    client.form("/logout")
    # Google accounts can change their address; the sub still names the same person.
    google_user(sub, email="carol.jones@partner.org", email_verified=True, name="C. Jones")
    response = sign_in(client, sub)
    assert response.status_code == 303
    assert "Welcome, Carol" in client.get("/").get_data(as_text=True)
    assert user_by_email(db, "carol.jones@partner.org") is None
    sign_ins = [action for action, _ in audit_actions(db, carol) if action == "user.signed_in"]
    assert len(sign_ins) == 2


def test_email_linked_to_another_google_account_is_refused(client, make_user, google_user):
    make_user("staff", email="erin@example.com", google_sub="g-erin-old")
    sub = google_user("g-erin-new", email="erin@example.com", email_verified=True, hd="example.com")
    response = sign_in(client, sub)
    assert response.status_code == 403
    assert "Another Google account is already linked" in response.get_data(as_text=True)
    assert_signed_out(client)


@pytest.mark.parametrize("claims", [{"email_verified": False}, {}])
def test_unverified_email_is_refused(client, db, make_user, google_user, claims):
    make_user("staff", email="frank@example.com")
    sub = google_user("g-frank", email="frank@example.com", hd="example.com", **claims)
    response = sign_in(client, sub)
    assert response.status_code == 403
    assert "email address is not verified" in response.get_data(as_text=True)
    assert_signed_out(client)
    assert user_by_email(db, "frank@example.com").google_sub is None


@pytest.mark.parametrize(
    ("claims", "shown"),
    [
        ({"email": "gina@other.com", "hd": "other.com"}, "from other.com"),
        ({"email": "gina@gmail.com"}, "from a personal Google account"),
    ],
)
def test_other_domains_are_refused(client, db, google_user, claims, shown):
    sub = google_user("g-gina", email_verified=True, name="Gina", **claims)
    response = sign_in(client, sub)
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    assert f"Google accounts {shown} are not allowed here" in page
    assert "ask an admin to invite you" in page
    assert_signed_out(client)
    assert user_by_email(db, claims["email"]) is None


def test_unknown_user_is_refused_when_invite_only(client, app, db, google_user, monkeypatch):
    monkeypatch.setitem(app.config, "GOOGLE_ALLOWED_DOMAINS", [])
    location = start(client)
    assert "hd" not in parse_qs(urlsplit(location).query)
    sub = google_user("g-hal", email="hal@example.com", email_verified=True, hd="example.com")
    response = client.get(authorize(location, sub))
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    assert "There is no Rapport account for hal@example.com" in page
    assert "Ask an admin to invite you" in page
    assert_signed_out(client)
    assert user_by_email(db, "hal@example.com") is None


def test_tampered_state_is_refused(client, make_user, google_user):
    make_user("staff", email="ivy@example.com")
    sub = google_user("g-ivy", email="ivy@example.com", email_verified=True, hd="example.com")
    callback = authorize(start(client), sub)
    response = client.get(with_query(callback, state="forged-state"))
    assert response.status_code == 400
    assert "expired or was already used" in response.get_data(as_text=True)
    assert_signed_out(client)


def test_replayed_callback_is_refused(client, app, make_user, google_user):
    make_user("staff", email="jo@example.com", name="Jo")
    sub = google_user("g-jo", email="jo@example.com", email_verified=True, hd="example.com")
    callback = authorize(start(client), sub)
    assert client.get(callback).status_code == 303

    again = client.get(callback)
    assert again.status_code == 400
    assert "expired or was already used" in again.get_data(as_text=True)

    # The same link in another browser gives nobody a session.
    other = app.test_client()
    response = other.get(callback)
    assert response.status_code == 400
    assert "expired or was already used" in response.get_data(as_text=True)
    assert_signed_out(other)


@pytest.mark.parametrize("linked", [True, False])
def test_deactivated_user_is_refused(client, db, make_user, google_user, linked):
    kim = make_user("staff", email="kim@example.com", active=False)
    if linked:
        kim.google_sub = "g-kim"
        db.session.commit()
    sub = google_user("g-kim", email="kim@example.com", email_verified=True, hd="example.com")
    response = sign_in(client, sub)
    assert response.status_code == 403
    assert "This account has been deactivated" in response.get_data(as_text=True)
    assert_signed_out(client)
    db.session.refresh(kim)
    assert kim.google_sub == ("g-kim" if linked else None)


def test_cancelling_at_google_is_refused(client):
    response = httpx.post(start(client), data={"action": "deny"})
    assert response.status_code == 302
    callback = response.headers["location"]
    assert "error=access_denied" in callback
    response = client.get(callback)
    assert response.status_code == 400
    assert "Google sign-in was cancelled." in response.get_data(as_text=True)
    assert_signed_out(client)


@pytest.mark.parametrize(
    ("next_path", "landing"),
    [
        ("/contacts/", "/contacts/"),
        ("/contacts/?status=active", "/contacts/?status=active"),
        ("https://elsewhere.example/steal", "/"),
        ("//elsewhere.example", "/"),
    ],
)
def test_next_survives_the_round_trip(client, make_user, google_user, next_path, landing):
    make_user("staff", email="lee@example.com")
    sub = google_user("g-lee", email="lee@example.com", email_verified=True, hd="example.com")
    response = sign_in(client, sub, f"/login/google?{urlencode({'next': next_path})}")
    assert response.status_code == 303
    assert response.headers["Location"] == landing
    assert client.get(landing).status_code == 200
