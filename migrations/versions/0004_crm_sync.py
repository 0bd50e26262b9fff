"""CRM sync: what the external CRM holds per contact, and the admin's resync runs.

Revision ID: 0004_crm_sync
Revises: 0003_webhooks
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_crm_sync"
down_revision = "0003_webhooks"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "crm_sync_states",
        sa.Column("id", sa.Integer(), nullable=False),
        # SET NULL, not CASCADE: a purged contact's CRM id stays until its record is archived.
        sa.Column("contact_id", sa.Integer(), nullable=True),
        sa.Column("crm_id", sa.String(length=64), nullable=True),
        sa.Column("pushed_digest", sa.String(length=64), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("error_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_crm_sync_states_contact_id_contacts"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_sync_states")),
    )
    op.create_index("ix_crm_sync_states_contact_id", "crm_sync_states", ["contact_id"], unique=True)
    op.create_table(
        "crm_sync_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_by_id", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("last_contact_id", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        # TRUE while unfinished, NULL after: the unique constraint allows one run at a time.
        sa.Column("running", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["started_by_id"],
            ["users.id"],
            name=op.f("fk_crm_sync_runs_started_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_sync_runs")),
        sa.UniqueConstraint("running", name=op.f("uq_crm_sync_runs_running")),
    )


def downgrade():
    op.drop_table("crm_sync_runs")
    op.drop_index("ix_crm_sync_states_contact_id", table_name="crm_sync_states")
    op.drop_table("crm_sync_states")
