"""The schema comes only from migrations: they must match the models exactly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from crm.database import include_name
from crm.extensions import db as _db
from crm.health.checks import check_migrations


def test_models_match_the_migrations(app, db):
    with _db.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_name": include_name}
        )
        assert compare_metadata(context, _db.metadata) == []


def test_database_is_at_head(app, db):
    assert check_migrations()["ok"] is True
