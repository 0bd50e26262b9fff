"""Webhooks: every signed delivery stored raw, once per provider event id.

Revision ID: 0003_webhooks
Revises: 0002_contacts
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_webhooks"
down_revision = "0002_contacts"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=100), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "provider IN ('twilio', 'stripe', 'calendly', 'calcom')",
            name=op.f("ck_webhook_events_provider"),
        ),
        sa.CheckConstraint(
            "status IN ('received', 'processing', 'processed', 'ignored', 'failed', 'dead')",
            name=op.f("ck_webhook_events_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint(
            "provider", "event_id", name="uq_webhook_events_provider_event_id"
        ),
    )
    op.create_index(
        "ix_webhook_events_status_received_at", "webhook_events", ["status", "received_at"]
    )
    op.create_index(
        "ix_webhook_events_provider_received_at", "webhook_events", ["provider", "received_at"]
    )


def downgrade():
    op.drop_index("ix_webhook_events_provider_received_at", table_name="webhook_events")
    op.drop_index("ix_webhook_events_status_received_at", table_name="webhook_events")
    op.drop_table("webhook_events")
