"""Bookings: coach profiles, Calendly connections, services and workflow steps, bookings,
their history, session notes, workflow step runs, notifications; contacts.preferred_channel.

Revision ID: 0006_bookings
Revises: 0005_conversations

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0006_bookings"
down_revision = "0005_conversations"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "calendly_connections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("coach_id", sa.Integer(), nullable=False),
        sa.Column("user_uri", sa.String(length=500), nullable=True),
        sa.Column("organization_uri", sa.String(length=500), nullable=True),
        sa.Column("access_token", sa.Text(), nullable=True),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("subscription_uri", sa.String(length=500), nullable=True),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('connected', 'needs_reconnect', 'disconnected')",
            name=op.f("ck_calendly_connections_state"),
        ),
        sa.ForeignKeyConstraint(
            ["coach_id"],
            ["users.id"],
            name=op.f("fk_calendly_connections_coach_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendly_connections")),
        sa.UniqueConstraint("coach_id", name=op.f("uq_calendly_connections_coach_id")),
    )
    op.create_table(
        "coach_profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=True),
        sa.Column("calendly_user_uri", sa.String(length=500), nullable=True),
        sa.Column("calcom_username", sa.String(length=200), nullable=True),
        sa.Column("meeting_link", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_coach_profiles_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coach_profiles")),
        sa.UniqueConstraint("calcom_username", name=op.f("uq_coach_profiles_calcom_username")),
        sa.UniqueConstraint("calendly_user_uri", name=op.f("uq_coach_profiles_calendly_user_uri")),
        sa.UniqueConstraint("user_id", name=op.f("uq_coach_profiles_user_id")),
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("url", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_notifications_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    op.create_index(
        "ix_notifications_user_created", "notifications", ["user_id", "created_at"], unique=False
    )

    op.create_table(
        "services",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("price_minor", sa.Integer(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("coach_id", sa.Integer(), nullable=True),
        sa.Column("calendly_event_type_uri", sa.String(length=500), nullable=True),
        sa.Column("calendly_scheduling_url", sa.String(length=500), nullable=True),
        sa.Column("calcom_event_type_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["coach_id"], ["users.id"], name=op.f("fk_services_coach_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_services")),
        sa.UniqueConstraint("calcom_event_type_id", name=op.f("uq_services_calcom_event_type_id")),
        sa.UniqueConstraint(
            "calendly_event_type_uri", name=op.f("uq_services_calendly_event_type_uri")
        ),
    )
    op.create_table(
        "workflow_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=32), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("offset_minutes", sa.Integer(), nullable=True),
        sa.Column("template_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["services.id"],
            name=op.f("fk_workflow_steps_service_id_services"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["message_templates.id"],
            name=op.f("fk_workflow_steps_template_id_message_templates"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_steps")),
        sa.UniqueConstraint("service_id", "step", name=op.f("uq_workflow_steps_service_id")),
    )
    op.create_table(
        "bookings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("coach_id", sa.Integer(), nullable=True),
        sa.Column("service_id", sa.Integer(), nullable=True),
        sa.Column("title", sa.String(length=300), nullable=True),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column("location", sa.Text(), nullable=True),
        sa.Column("meeting_url", sa.String(length=1000), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("external_id", sa.String(length=500), nullable=True),
        sa.Column("external_event_id", sa.String(length=500), nullable=True),
        sa.Column("external_host", sa.String(length=320), nullable=True),
        sa.Column("cancel_url", sa.String(length=1000), nullable=True),
        sa.Column("reschedule_url", sa.String(length=1000), nullable=True),
        sa.Column("questions", sa.JSON(), nullable=False),
        sa.Column("cancellation_reason", sa.Text(), nullable=True),
        sa.Column("canceled_by", sa.String(length=200), nullable=True),
        sa.Column("canceled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("payment_status", sa.String(length=24), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "source IN ('calendly', 'calcom', 'manual')", name=op.f("ck_bookings_source")
        ),
        sa.CheckConstraint(
            "status IN ('scheduled', 'rescheduled', 'canceled', 'completed', 'no_show')",
            name=op.f("ck_bookings_status"),
        ),
        sa.CheckConstraint("end_at > start_at", name=op.f("ck_bookings_ends_after_start")),
        sa.ForeignKeyConstraint(
            ["coach_id"], ["users.id"], name=op.f("fk_bookings_coach_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_bookings_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_bookings_created_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["service_id"],
            ["services.id"],
            name=op.f("fk_bookings_service_id_services"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bookings")),
        sa.UniqueConstraint("source", "external_id", name=op.f("uq_bookings_source")),
    )
    op.create_index("ix_bookings_coach_start", "bookings", ["coach_id", "start_at"], unique=False)
    op.create_index(
        "ix_bookings_contact_start", "bookings", ["contact_id", "start_at"], unique=False
    )
    op.create_index("ix_bookings_start", "bookings", ["start_at"], unique=False)

    op.create_table(
        "booking_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("booking_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["actor_id"],
            ["users.id"],
            name=op.f("fk_booking_events_actor_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["booking_id"],
            ["bookings.id"],
            name=op.f("fk_booking_events_booking_id_bookings"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_booking_events_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_booking_events")),
    )
    op.create_index(
        op.f("ix_booking_events_booking_id"), "booking_events", ["booking_id"], unique=False
    )
    op.create_index(
        "ix_booking_events_contact_at", "booking_events", ["contact_id", "at"], unique=False
    )

    op.create_table(
        "session_notes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("booking_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["author_id"],
            ["users.id"],
            name=op.f("fk_session_notes_author_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["booking_id"],
            ["bookings.id"],
            name=op.f("fk_session_notes_booking_id_bookings"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_session_notes_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_notes")),
    )
    op.create_index(
        op.f("ix_session_notes_booking_id"), "session_notes", ["booking_id"], unique=False
    )
    op.create_index(
        "ix_session_notes_contact_created",
        "session_notes",
        ["contact_id", "created_at"],
        unique=False,
    )

    op.create_table(
        "booking_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("booking_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=32), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('scheduled', 'sent', 'skipped', 'failed', 'canceled')",
            name=op.f("ck_booking_steps_status"),
        ),
        sa.ForeignKeyConstraint(
            ["booking_id"],
            ["bookings.id"],
            name=op.f("fk_booking_steps_booking_id_bookings"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_booking_steps_message_id_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_booking_steps")),
        sa.UniqueConstraint(
            "booking_id", "step", "due_at", name=op.f("uq_booking_steps_booking_id")
        ),
    )
    op.create_index(
        "ix_booking_steps_status_due", "booking_steps", ["status", "due_at"], unique=False
    )

    op.add_column("contacts", sa.Column("preferred_channel", sa.String(length=16), nullable=True))


def downgrade():
    op.drop_column("contacts", "preferred_channel")

    op.drop_index("ix_booking_steps_status_due", table_name="booking_steps")

    op.drop_table("booking_steps")
    op.drop_index("ix_session_notes_contact_created", table_name="session_notes")
    op.drop_index(op.f("ix_session_notes_booking_id"), table_name="session_notes")

    op.drop_table("session_notes")
    op.drop_index("ix_booking_events_contact_at", table_name="booking_events")
    op.drop_index(op.f("ix_booking_events_booking_id"), table_name="booking_events")

    op.drop_table("booking_events")
    op.drop_index("ix_bookings_start", table_name="bookings")
    op.drop_index("ix_bookings_contact_start", table_name="bookings")
    op.drop_index("ix_bookings_coach_start", table_name="bookings")

    op.drop_table("bookings")
    op.drop_table("workflow_steps")
    op.drop_table("services")
    op.drop_index("ix_notifications_user_created", table_name="notifications")

    op.drop_table("notifications")
    op.drop_table("coach_profiles")
    op.drop_table("calendly_connections")
