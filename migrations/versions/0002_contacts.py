"""Contacts: search indexes, saved views, bulk actions, imports, merges, trash.

The search index is not in the models: SQLite gets an FTS5 trigram table kept by
triggers, PostgreSQL a pg_trgm GIN index. Both answer infix searches of 3+ characters.
A later SQLite batch migration that recreates `contacts` drops the triggers and must
create them again.

Revision ID: 0002_contacts
Revises: 0001_foundation
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_contacts"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

# Keep in step with crm/contacts/search.py, which queries the same expression.
PG_SEARCH_EXPRESSION = "(name || ' ' || coalesce(email, '') || ' ' || coalesce(phone, ''))"

SQLITE_SEARCH = [
    """CREATE VIRTUAL TABLE contacts_fts USING fts5(
        name, email, phone, content='contacts', content_rowid='id', tokenize='trigram')""",
    """CREATE TRIGGER contacts_fts_insert AFTER INSERT ON contacts BEGIN
        INSERT INTO contacts_fts(rowid, name, email, phone)
        VALUES (new.id, new.name, new.email, new.phone);
    END""",
    """CREATE TRIGGER contacts_fts_delete AFTER DELETE ON contacts BEGIN
        INSERT INTO contacts_fts(contacts_fts, rowid, name, email, phone)
        VALUES ('delete', old.id, old.name, old.email, old.phone);
    END""",
    """CREATE TRIGGER contacts_fts_update AFTER UPDATE OF name, email, phone ON contacts BEGIN
        INSERT INTO contacts_fts(contacts_fts, rowid, name, email, phone)
        VALUES ('delete', old.id, old.name, old.email, old.phone);
        INSERT INTO contacts_fts(rowid, name, email, phone)
        VALUES (new.id, new.name, new.email, new.phone);
    END""",
    "INSERT INTO contacts_fts(contacts_fts) VALUES ('rebuild')",
]


def upgrade():
    op.create_table(
        "saved_views",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_saved_views_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saved_views")),
        sa.UniqueConstraint("user_id", "name", name="uq_saved_views_user_id_name"),
    )
    op.create_table(
        "bulk_actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("scope", sa.String(length=10), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_bulk_actions_actor_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bulk_actions")),
    )
    op.create_index(
        "ix_bulk_actions_actor_id_created_at", "bulk_actions", ["actor_id", "created_at"]
    )
    op.create_table(
        "contact_imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("encoding", sa.String(length=20), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("mapping", sa.JSON(), nullable=False),
        sa.Column("on_match", sa.String(length=10), nullable=False),
        sa.Column("region", sa.String(length=2), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("total_rows", sa.Integer(), nullable=False),
        sa.Column("processed_rows", sa.Integer(), nullable=False),
        sa.Column("created_count", sa.Integer(), nullable=False),
        sa.Column("updated_count", sa.Integer(), nullable=False),
        sa.Column("skipped_count", sa.Integer(), nullable=False),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reverted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_contact_imports_actor_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_imports")),
    )
    op.create_index(
        "ix_contact_imports_actor_id_created_at", "contact_imports", ["actor_id", "created_at"]
    )

    with op.batch_alter_table("contacts") as batch_op:
        batch_op.add_column(sa.Column("deleted_by_action_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("merged_into_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            op.f("fk_contacts_deleted_by_action_id_bulk_actions"),
            "bulk_actions",
            ["deleted_by_action_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_foreign_key(
            op.f("fk_contacts_merged_into_id_contacts"),
            "contacts",
            ["merged_into_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.drop_index("ix_contacts_name_id")
        batch_op.create_index(
            "ix_contacts_live_name",
            ["name", "id", "email", "phone"],
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        )
        batch_op.create_index("ix_contacts_last_contact_at_id", ["last_contact_at", "id"])
        batch_op.create_index("ix_contacts_created_at_id", ["created_at", "id"])
        batch_op.create_index(
            "ix_contacts_deleted_at",
            ["deleted_at"],
            sqlite_where=sa.text("deleted_at IS NOT NULL"),
            postgresql_where=sa.text("deleted_at IS NOT NULL"),
        )
    # Emails are compared ignoring case; storing them lower-case lets a plain index do it.
    op.execute("UPDATE contacts SET email = lower(email) WHERE email <> lower(email)")

    op.create_table(
        "contact_import_rows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.Integer(), nullable=False),
        sa.Column("row_number", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=10), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["contacts.id"], name=op.f("fk_contact_import_rows_contact_id_contacts"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["import_id"], ["contact_imports.id"], name=op.f("fk_contact_import_rows_import_id_contact_imports"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_import_rows")),
    )
    op.create_index(
        "ix_contact_import_rows_import_id_row_number", "contact_import_rows", ["import_id", "row_number"]
    )
    op.create_index("ix_contact_import_rows_contact_id", "contact_import_rows", ["contact_id"])
    op.create_table(
        "contact_merges",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("survivor_id", sa.Integer(), nullable=False),
        sa.Column("merged_id", sa.Integer(), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("survivor_before", sa.JSON(), nullable=False),
        sa.Column("merged_tag_ids", sa.JSON(), nullable=False),
        sa.Column("moved", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["users.id"], name=op.f("fk_contact_merges_actor_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["merged_id"], ["contacts.id"], name=op.f("fk_contact_merges_merged_id_contacts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["survivor_id"], ["contacts.id"], name=op.f("fk_contact_merges_survivor_id_contacts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_merges")),
    )
    op.create_index("ix_contact_merges_survivor_id", "contact_merges", ["survivor_id"])
    op.create_index("ix_contact_merges_merged_id", "contact_merges", ["merged_id"])

    # After the batch above: recreating `contacts` would drop these triggers.
    if op.get_bind().dialect.name == "postgresql":
        # One pg_trgm per database: put it in `public`, not in whatever schema is first on
        # the search path, and name its operator class by the schema it really lives in.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")
        schema = op.get_bind().exec_driver_sql(
            "SELECT n.nspname FROM pg_extension e"
            " JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
        ).scalar_one()
        op.execute(
            "CREATE INDEX ix_contacts_search_trgm ON contacts "
            f'USING gin ({PG_SEARCH_EXPRESSION} "{schema}".gin_trgm_ops)'
        )
    else:
        for statement in SQLITE_SEARCH:
            op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_contacts_search_trgm")
    else:
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS contacts_fts_{name}")
        op.execute("DROP TABLE IF EXISTS contacts_fts")
    op.drop_index("ix_contact_merges_merged_id", table_name="contact_merges")
    op.drop_index("ix_contact_merges_survivor_id", table_name="contact_merges")
    op.drop_table("contact_merges")
    op.drop_index("ix_contact_import_rows_contact_id", table_name="contact_import_rows")
    op.drop_index("ix_contact_import_rows_import_id_row_number", table_name="contact_import_rows")
    op.drop_table("contact_import_rows")
    with op.batch_alter_table("contacts") as batch_op:
        batch_op.drop_index("ix_contacts_deleted_at")
        batch_op.drop_index("ix_contacts_created_at_id")
        batch_op.drop_index("ix_contacts_last_contact_at_id")
        batch_op.drop_index("ix_contacts_live_name")
        batch_op.create_index("ix_contacts_name_id", ["name", "id"])
        batch_op.drop_constraint(op.f("fk_contacts_merged_into_id_contacts"), type_="foreignkey")
        batch_op.drop_constraint(
            op.f("fk_contacts_deleted_by_action_id_bulk_actions"), type_="foreignkey"
        )
        batch_op.drop_column("merged_into_id")
        batch_op.drop_column("deleted_by_action_id")
    op.drop_index("ix_contact_imports_actor_id_created_at", table_name="contact_imports")
    op.drop_table("contact_imports")
    op.drop_index("ix_bulk_actions_actor_id_created_at", table_name="bulk_actions")
    op.drop_table("bulk_actions")
    op.drop_table("saved_views")
