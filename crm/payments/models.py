"""Payments: Checkout payments for bookings and packages, refunds, coaches' Connect accounts,
session packages with their credits, and subscriptions with their dunning state."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from crm.bookings.models import Booking
from crm.contacts.models import Contact
from crm.database import Timestamps, UTCDateTime
from crm.extensions import db
from crm.users.models import User

# pending: a Checkout Session is open; paid; failed: the payment was declined (the session
# may still be paid); expired: the session ended unpaid; refunded / partially_refunded;
# disputed: the client's bank opened a dispute.
PAYMENT_STATUSES = (
    "pending",
    "paid",
    "failed",
    "expired",
    "refunded",
    "partially_refunded",
    "disputed",
)
PAYMENT_KINDS = ("booking", "package", "subscription")
PRODUCT_KINDS = ("package", "subscription")
SUBSCRIPTION_STATUSES = (
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "unpaid",
    "canceled",
    "paused",
)


class Product(Timestamps, db.Model):
    """What a client buys besides a single session: a pack of sessions or a monthly plan."""

    __tablename__ = "products"
    __table_args__ = (
        CheckConstraint("kind IN ('package', 'subscription')", name="kind"),
        CheckConstraint("price_minor >= 0", name="price_not_negative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="package")
    # Sessions a package holds, or a subscription grants each period.
    sessions: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    price_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    service_id: Mapped[int | None] = mapped_column(ForeignKey("services.id", ondelete="SET NULL"))
    active: Mapped[bool] = mapped_column(nullable=False, default=True)


class Payment(Timestamps, db.Model):
    """One Checkout Session and what became of its money."""

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'paid', 'failed', 'expired', 'refunded', "
            "'partially_refunded', 'disputed')",
            name="status",
        ),
        CheckConstraint("kind IN ('booking', 'package', 'subscription')", name="kind"),
        Index("ix_payments_contact_created", "contact_id", "created_at"),
        Index("ix_payments_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="booking")
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False
    )
    booking_id: Mapped[int | None] = mapped_column(
        ForeignKey("bookings.id", ondelete="SET NULL"), index=True
    )
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id", ondelete="SET NULL"))
    coach_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(24), nullable=False, default="pending")
    amount_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    amount_refunded_minor: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    platform_fee_minor: Mapped[int | None] = mapped_column(BigInteger)
    destination_account: Mapped[str | None] = mapped_column(String(64))
    checkout_session_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    checkout_url: Mapped[str | None] = mapped_column(Text)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    charge_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    subscription_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="SET NULL")
    )
    invoice_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    dispute_id: Mapped[str | None] = mapped_column(String(255))
    dispute_reason: Mapped[str | None] = mapped_column(String(100))
    # Stripe's `created` of the newest event applied, so an older one never undoes it.
    last_event_created: Mapped[int | None] = mapped_column(BigInteger)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    contact: Mapped[Contact] = relationship(lazy="joined")
    booking: Mapped[Booking | None] = relationship(lazy="joined")
    product: Mapped[Product | None] = relationship(lazy="joined")
    refunds: Mapped[list[Refund]] = relationship(
        back_populates="payment", lazy="selectin", order_by="Refund.id"
    )

    @property
    def refundable_minor(self) -> int:
        return max(0, self.amount_minor - self.amount_refunded_minor)


class Refund(Timestamps, db.Model):
    """Money given back on a payment, asked for in Rapport or at Stripe."""

    __tablename__ = "refunds"

    id: Mapped[int] = mapped_column(primary_key=True)
    payment_id: Mapped[int] = mapped_column(
        ForeignKey("payments.id", ondelete="CASCADE"), nullable=False, index=True
    )
    stripe_refund_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    # pending until the charge.refunded webhook confirms it; succeeded, failed, canceled.
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    payment: Mapped[Payment] = relationship(back_populates="refunds")
    created_by: Mapped[User | None] = relationship(lazy="joined")


class ConnectAccount(Timestamps, db.Model):
    """A coach's Stripe Connect Express account and what it may do."""

    __tablename__ = "connect_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    coach_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), unique=True, nullable=False
    )
    account_id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    charges_enabled: Mapped[bool] = mapped_column(nullable=False, default=False)
    payouts_enabled: Mapped[bool] = mapped_column(nullable=False, default=False)
    details_submitted: Mapped[bool] = mapped_column(nullable=False, default=False)
    requirements: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    last_event_created: Mapped[int | None] = mapped_column(BigInteger)

    coach: Mapped[User] = relationship(lazy="joined")

    @property
    def ready(self) -> bool:
        return self.charges_enabled and self.payouts_enabled


class Subscription(Timestamps, db.Model):
    """A client's monthly plan at Stripe, and where its dunning stands."""

    __tablename__ = "subscriptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False, index=True
    )
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id", ondelete="SET NULL"))
    stripe_subscription_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(24), nullable=False, default="incomplete")
    current_period_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_at_period_end: Mapped[bool] = mapped_column(nullable=False, default=False)
    # Dunning: the failed invoice, how many attempts so far, when Stripe tries again.
    failed_invoice_id: Mapped[str | None] = mapped_column(String(255))
    attempt_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_payment_attempt: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dunning_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_event_created: Mapped[int | None] = mapped_column(BigInteger)

    contact: Mapped[Contact] = relationship(lazy="joined")
    product: Mapped[Product | None] = relationship(lazy="joined")


class PackageCredit(Timestamps, db.Model):
    """Sessions a client has paid for ahead: from a package, or a subscription's period."""

    __tablename__ = "package_credits"
    __table_args__ = (CheckConstraint("sessions_used <= sessions_total", name="not_overdrawn"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False, index=True
    )
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id", ondelete="SET NULL"))
    # The payment (package) or invoice payment (subscription period) that bought it.
    payment_id: Mapped[int | None] = mapped_column(
        ForeignKey("payments.id", ondelete="SET NULL"), unique=True
    )
    subscription_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="SET NULL")
    )
    sessions_total: Mapped[int] = mapped_column(Integer, nullable=False)
    sessions_used: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    product: Mapped[Product | None] = relationship(lazy="joined")

    @property
    def remaining(self) -> int:
        return self.sessions_total - self.sessions_used


class CreditUse(db.Model):
    """A completed session paid with a credit; one per booking."""

    __tablename__ = "credit_uses"
    __table_args__ = (UniqueConstraint("booking_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    credit_id: Mapped[int] = mapped_column(
        ForeignKey("package_credits.id", ondelete="CASCADE"), nullable=False, index=True
    )
    booking_id: Mapped[int] = mapped_column(
        ForeignKey("bookings.id", ondelete="CASCADE"), nullable=False
    )
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False, index=True
    )
    used_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class PaymentEvent(db.Model):
    """What happened to a payment or subscription, for its history and the contact's timeline."""

    __tablename__ = "payment_events"
    __table_args__ = (Index("ix_payment_events_contact_at", "contact_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False
    )
    payment_id: Mapped[int | None] = mapped_column(
        ForeignKey("payments.id", ondelete="CASCADE"), index=True
    )
    subscription_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="CASCADE"), index=True
    )
    # checkout_created, paid, failed, expired, refund_requested, refunded, disputed,
    # link_sent, subscription_started, renewal_paid, renewal_failed, subscription_canceled...
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    detail: Mapped[str | None] = mapped_column(Text)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    payment: Mapped[Payment | None] = relationship(lazy="joined")
    actor: Mapped[User | None] = relationship(lazy="joined")
