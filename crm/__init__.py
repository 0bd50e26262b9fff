"""Rapport: an open-source CRM for small coaching and services businesses."""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask


def create_app(test_config: dict | None = None) -> Flask:
    """Build the application: configuration, extensions, blueprints, CLI, errors."""
    from crm import config

    config.load_env_file()
    app = Flask(
        __name__,
        # instance/ holds the SQLite file, the generated secret key and the embedded Redis.
        instance_path=os.environ.get("INSTANCE_PATH")
        or str(Path(__file__).resolve().parent.parent / "instance"),
        template_folder="../templates",
        static_folder="../static",
    )
    app.config.from_mapping(config.from_environment(Path(app.instance_path)))
    if test_config:
        app.config.from_mapping(test_config)

    register_extensions(app)
    register_blueprints(app)
    register_cli(app)
    register_errorhandlers(app)
    register_security(app)
    return app


def register_extensions(app: Flask) -> None:
    from crm.extensions import csrf, db, htmx, login_manager, migrate, oauth

    db.init_app(app)
    migrate.init_app(
        app, db, directory=str(Path(app.root_path).parent / "migrations"), render_as_batch=True
    )
    login_manager.init_app(app)
    csrf.init_app(app)
    htmx.init_app(app)
    oauth.init_app(app)

    from crm.auth import google

    google.register(app)

    from crm.auth.views import configure_login_manager

    configure_login_manager(app)

    if app.config["PROXY_COUNT"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = app.config["PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)

    # Import every model so Alembic and relationships see the whole schema.
    import crm.models  # noqa: F401


def register_blueprints(app: Flask) -> None:
    from crm.admin.views import bp as admin_bp
    from crm.auth.views import bp as auth_bp
    from crm.bookings.views import bp as bookings_bp
    from crm.contacts.views import bp as contacts_bp
    from crm.conversations.views import bp as conversations_bp
    from crm.conversations.views_campaigns import bp as campaigns_bp
    from crm.conversations.views_templates import bp as message_templates_bp
    from crm.crm_sync.views import bp as crm_sync_bp
    from crm.dashboard.views import bp as dashboard_bp
    from crm.health.views import bp as health_bp
    from crm.integrations.views import bp as integrations_bp
    from crm.payments.views import bp as payments_bp
    from crm.webhooks.admin import bp as webhooks_admin_bp
    from crm.webhooks.views import bp as webhooks_bp

    for bp in (
        auth_bp,
        dashboard_bp,
        contacts_bp,
        conversations_bp,
        campaigns_bp,
        message_templates_bp,
        bookings_bp,
        payments_bp,
        integrations_bp,
        admin_bp,
        webhooks_admin_bp,
        crm_sync_bp,
        webhooks_bp,
        health_bp,
    ):
        app.register_blueprint(bp)

    from crm.extensions import csrf

    # Providers cannot send a CSRF token; each webhook is verified by its signature instead.
    csrf.exempt(webhooks_bp)

    from crm.navigation import inject_navigation

    app.context_processor(inject_navigation)


def register_cli(app: Flask) -> None:
    from crm.cli import seed_cli, serve_command, users_cli, worker_command

    app.cli.add_command(users_cli)
    app.cli.add_command(seed_cli)
    app.cli.add_command(worker_command)
    app.cli.add_command(serve_command)


def register_errorhandlers(app: Flask) -> None:
    from crm.errors import register

    register(app)


def register_security(app: Flask) -> None:
    from crm.security import SessionInterface, add_security_headers

    app.session_interface = SessionInterface()
    app.after_request(add_security_headers)
