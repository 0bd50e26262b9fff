"""Liveness, readiness, the integrations page, and clear 503 pages when a backend is down."""

from __future__ import annotations

import pytest

from crm import create_app
from tests.conftest import Client, dispose_engines


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_reports_each_check(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok" and body["failed"] == []
    assert set(body["checks"]) == {"database", "migrations", "redis", "queues"}
    assert all(check["ok"] for check in body["checks"].values())
    assert set(body["checks"]["queues"]["queues"]) == {"webhooks", "messaging", "default", "sync"}
    assert body["checks"]["queues"]["queues"]["default"] == {
        "waiting": 0,
        "running": 0,
        "failed": 0,
    }


def test_a_pooled_connection_the_server_dropped_while_idle_is_replaced(app, monkeypatch):
    """Connections in steady use are not pinged; one that sat idle is tested first, so
    a server that closed it meanwhile (restart, idle timeout) costs no failed request."""
    import sqlalchemy as sa

    from crm import extensions
    from crm.extensions import db as _db

    with app.app_context():
        engine = _db.engine
        if engine.dialect.name != "postgresql":
            pytest.skip("SQLite is a file: no server to drop a connection")
        engine.dispose()  # one pooled connection from here on
        client = app.test_client()
        assert client.get("/readyz").status_code == 200
        with engine.connect() as connection:
            dropped = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        outside = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
        with outside.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_terminate_backend({int(dropped)})")
        outside.dispose()
        monkeypatch.setattr(extensions, "PING_AFTER_IDLE_SECONDS", 0.0)
        response = client.get("/readyz")
        assert response.status_code == 200, response.get_json()
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != dropped


def test_readyz_counts_waiting_jobs_and_needs_no_worker(client, redis):
    from jobs import get_queue
    from tests import job_functions

    get_queue("sync").enqueue(job_functions.write_marker, "k", "v")
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["checks"]["queues"]["queues"]["sync"]["waiting"] == 1


@pytest.fixture(scope="module")
def broken_app(tmp_path_factory, database_url, redis_url):
    """Factory for an app whose database or Redis cannot be reached."""
    made = []

    def make(database: bool, redis: bool):
        missing_dir = tmp_path_factory.mktemp("gone") / "no" / "such" / "dir"
        app = create_app(
            {
                "TESTING": True,
                "SQLALCHEMY_DATABASE_URI": (
                    database_url if database else f"sqlite:///{missing_dir}/x.db"
                ),
                "REDIS_URL": redis_url if redis else "redis://127.0.0.1:1/0",
            }
        )
        app.test_client_class = Client
        made.append(app)
        return app

    yield make
    for app in made:
        dispose_engines(app)


def test_readyz_names_what_failed(broken_app):
    app = broken_app(database=False, redis=False)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "fail"
    assert body["failed"] == ["database", "migrations", "queues", "redis"]
    assert "unreachable" in body["checks"]["database"]["error"]
    assert "unreachable" in body["checks"]["redis"]["error"]


def test_database_down_gives_a_clear_503_page(broken_app):
    client = broken_app(database=False, redis=True).test_client()
    response = client.form("/login", {"email": "a@example.com", "password": "whatever"})
    assert response.status_code == 503
    body = response.get_data(as_text=True)
    assert "Database unavailable" in body
    assert "Traceback" not in body


def test_redis_down_gives_a_clear_503_page(broken_app):
    client = broken_app(database=True, redis=False).test_client()
    response = client.form("/login", {"email": "a@example.com", "password": "whatever"})
    assert response.status_code == 503
    assert "Redis unavailable" in response.get_data(as_text=True)


def test_integrations_page_shows_backends_and_queues(client, login_as):
    login_as("staff")
    page = client.get("/integrations/").get_data(as_text=True)
    for card in (
        "card-database",
        "card-migrations",
        "card-redis",
        "card-scheduler",
        "card-workers",
    ):
        assert f'id="{card}"' in page
    for queue in ("webhooks", "messaging", "default", "sync"):
        assert f"<td>{queue}</td>" in page
    fragment = client.htmx_get("/integrations/")
    body = fragment.get_data(as_text=True)
    assert "<html" not in body
    assert 'id="health-cards"' in body and 'hx-trigger="every 10s"' in body


def test_unknown_page_is_a_404_page(client, login_as):
    login_as("staff")
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert "Not found" in response.get_data(as_text=True)


def test_security_headers_and_cookie_flags(client):
    response = client.get("/login")
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # PUBLIC_BASE_URL is not https here


def test_session_cookie_is_secure_behind_https(monkeypatch, database_url, redis_url):
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://crm.example.com/")
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "REDIS_URL": redis_url})
    assert app.config["PUBLIC_BASE_URL"] == "https://crm.example.com"
    cookie = app.test_client().get("/login").headers["Set-Cookie"]
    assert "Secure" in cookie
    dispose_engines(app)


def test_vendored_htmx_and_no_cdn(client):
    page = client.get("/login").get_data(as_text=True)
    assert '<script src="/static/htmx-2.0.11.min.js"' in page
    assert "//cdn" not in page and "https://" not in page
    with client.get("/static/htmx-2.0.11.min.js") as script:
        assert script.status_code == 200
        assert b"htmx" in script.get_data()


def test_unexpected_error_is_a_plain_500_page(broken_app):
    app = broken_app(database=True, redis=True)
    app.config["PROPAGATE_EXCEPTIONS"] = False

    def boom():
        raise RuntimeError("secret internals")

    app.add_url_rule("/boom", "boom", boom)
    response = app.test_client().get("/boom")
    assert response.status_code == 500
    body = response.get_data(as_text=True)
    assert "Something went wrong" in body
    assert "secret internals" not in body and "Traceback" not in body
