"""Stripe Connect webhooks: `account.updated` tracks what a coach's account may do."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from crm.extensions import db
from crm.integrations import stripe as stripe_api
from crm.payments.connect import apply_account
from crm.payments.models import ConnectAccount
from crm.payments.services import is_newer
from crm.webhooks.handlers import PermanentHandlerError, register
from crm.webhooks.models import WebhookEvent

log = logging.getLogger(__name__)


@register("stripe", "account.updated")
def account_updated(event: WebhookEvent, payload) -> None:
    """Apply a coach account's charges, payouts, details and requirements, never going back.

    An event older than the newest applied is dropped. One from the same second as the
    newest may be either side of it, so the account is read from Stripe instead.
    """
    envelope = payload.get("data") if isinstance(payload, dict) else None
    data = envelope.get("object") if isinstance(envelope, dict) else None
    if not isinstance(data, dict) or not data.get("id"):
        raise PermanentHandlerError("account.updated without an account object")
    account = db.session.scalars(
        sa.select(ConnectAccount).where(ConnectAccount.account_id == data["id"])
    ).first()
    if account is None:
        log.info(
            "account.updated %s: account %s is not a coach's; ignored",
            payload.get("id"),
            data["id"],
        )
        return
    created = payload.get("created")
    created = created if isinstance(created, int) else None
    tie = created is not None and created == account.last_event_created
    if not is_newer(account, created):
        log.info(
            "account.updated %s for %s is older than the state applied; ignored",
            payload.get("id"),
            account.account_id,
        )
        return
    snapshot = stripe_api.retrieve_account(account.account_id) if tie else data
    if apply_account(account, snapshot):
        log.info(
            "connect account %s (coach %s): charges %s, payouts %s, %d due",
            account.account_id,
            account.coach_id,
            account.charges_enabled,
            account.payouts_enabled,
            len(account.requirements),
        )
    db.session.flush()
