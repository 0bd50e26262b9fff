"""Contacts search on PostgreSQL: a stored lower-cased search text, covered in id order.

`search_text` is name, email and phone joined and folded to lower case, computed by the
database on every write. A search tests it with one LIKE instead of folding each name
row by row, the trigram index is built on it, and `ix_contacts_search_live` walks live
contacts newest first with it in the index, so that scan never reads the table.

Adding the column rewrites `contacts` (about 35 s at a million rows on a 2-core machine),
holding its lock meanwhile. SQLite searches through FTS5 and has no such column.

Revision ID: 0008_contacts_search_text
Revises: 0007_payments

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0008_contacts_search_text"
down_revision = "0007_payments"
branch_labels = None
depends_on = None

OLD_EXPRESSION = "(name || ' ' || coalesce(email, '') || ' ' || coalesce(phone, ''))"


def _trgm_schema() -> str:
    return (
        op.get_bind()
        .exec_driver_sql(
            "SELECT n.nspname FROM pg_extension e"
            " JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
        )
        .scalar_one()
    )


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "ALTER TABLE contacts ADD COLUMN search_text text GENERATED ALWAYS AS "
        f"(lower{OLD_EXPRESSION}) STORED"
    )
    op.execute("SET LOCAL maintenance_work_mem = '256MB'")
    op.execute("DROP INDEX IF EXISTS ix_contacts_search_trgm")
    op.execute(
        "CREATE INDEX ix_contacts_search_trgm ON contacts "
        f'USING gin (search_text "{_trgm_schema()}".gin_trgm_ops)'
    )
    op.execute(
        "CREATE INDEX ix_contacts_search_live ON contacts (id) INCLUDE (search_text) "
        "WHERE deleted_at IS NULL"
    )


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS ix_contacts_search_live")
    op.execute("DROP INDEX IF EXISTS ix_contacts_search_trgm")
    op.execute(
        "CREATE INDEX ix_contacts_search_trgm ON contacts "
        f'USING gin ({OLD_EXPRESSION} "{_trgm_schema()}".gin_trgm_ops)'
    )
    op.execute("ALTER TABLE contacts DROP COLUMN search_text")
