"""Coach payouts with Stripe Connect Express: onboarding, the account's state, destinations.

A coach gets one Express account (created once, keyed by their id), then as many
one-time onboarding links as it takes. Whether the account may take charges and receive
payouts comes from Stripe: on the coach's return, and from `account.updated` events
(crm/payments/handlers_connect.py). Booking checkouts use `destination_for` to send the
money to a ready coach, minus the platform fee. Services flush, never commit.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from crm.audit.services import record_change
from crm.extensions import db
from crm.integrations import policy
from crm.integrations import stripe as stripe_api
from crm.payments.models import ConnectAccount
from crm.payments.services import PaymentError, external_url
from crm.users.models import User

log = logging.getLogger(__name__)


def account_for(coach: User | int | None) -> ConnectAccount | None:
    """The coach's Connect account, or None before onboarding started."""
    if coach is None:
        return None
    coach_id = coach if isinstance(coach, int) else coach.id
    return db.session.scalars(
        sa.select(ConnectAccount).where(ConnectAccount.coach_id == coach_id)
    ).first()


def destination_for(coach: User | None) -> str | None:
    """The coach's account id when it may take charges, else None (the platform keeps it)."""
    account = account_for(coach)
    if account is None or not account.charges_enabled:
        return None
    return account.account_id


def _call(action):
    """Run a Stripe call; a refusal or an outage becomes a PaymentError to show."""
    try:
        return action()
    except policy.PermanentError as exc:
        raise PaymentError(f"Stripe refused: {exc}") from exc
    except policy.TransientError as exc:
        raise PaymentError(f"Stripe is not answering; try again in a moment. ({exc})") from exc


def _require_configured() -> None:
    missing = stripe_api.missing_settings()
    if missing:
        raise PaymentError(f"Payments are off: {', '.join(missing)} is not set.")


def apply_account(account: ConnectAccount, data: dict) -> bool:
    """Copy Stripe's account state onto `account`; return whether anything changed."""
    requirements = data.get("requirements") or {}
    values = {
        "charges_enabled": bool(data.get("charges_enabled")),
        "payouts_enabled": bool(data.get("payouts_enabled")),
        "details_submitted": bool(data.get("details_submitted")),
        "requirements": list(requirements.get("currently_due") or []),
    }
    changed = {k: v for k, v in values.items() if getattr(account, k) != v}
    for key, value in changed.items():
        setattr(account, key, value)
    return bool(changed)


def start_onboarding(coach: User, *, actor: User | None) -> str:
    """Create the coach's Express account once, then a fresh onboarding link; return its URL."""
    _require_configured()
    if coach.role != "coach":
        raise PaymentError("Only coaches are paid out.")
    refresh_url = external_url("payments.connect_refresh", user_id=coach.id)
    return_url = external_url("payments.connect_return", user_id=coach.id)
    account = account_for(coach)
    if account is None:
        created = _call(
            lambda: stripe_api.create_account(
                idempotency_key=f"rapport-connect-{coach.id}",
                type="express",
                email=coach.email,
                capabilities={
                    "card_payments": {"requested": True},
                    "transfers": {"requested": True},
                },
                metadata={"coach_id": str(coach.id)},
            )
        )
        account = ConnectAccount(coach_id=coach.id, account_id=created["id"], requirements=[])
        apply_account(account, created)
        db.session.add(account)
        db.session.flush()
        record_change(
            "connect_account.created",
            "user",
            coach.id,
            {"account_id": [None, account.account_id]},
            actor=actor,
        )
        log.info("connect account %s created for coach %s", account.account_id, coach.id)
    link = _call(
        lambda: stripe_api.create_account_link(
            account=account.account_id,
            type="account_onboarding",
            refresh_url=refresh_url,
            return_url=return_url,
        )
    )
    return link["url"]


def refresh_account(account: ConnectAccount) -> bool:
    """Read the account from Stripe and apply what it may do; return whether it changed."""
    _require_configured()
    data = _call(lambda: stripe_api.retrieve_account(account.account_id))
    changed = apply_account(account, data)
    db.session.flush()
    return changed
