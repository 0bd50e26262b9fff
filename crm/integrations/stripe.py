"""Stripe: Checkout Sessions, refunds and Connect accounts through stripe-python.

This module is `crm.integrations.stripe`; its `import stripe` still loads the SDK, since
imports are absolute. Each call builds its own StripeClient for STRIPE_API_BASE and
STRIPE_SECRET_KEY and changes nothing in the `stripe` module, so apps and tests with other
keys or bases never see each other's settings. Every request goes through
`policy.call("stripe", ...)`; the SDK's own retries are off, retrying is the job's decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import requests
import stripe
from flask import current_app

from crm.integrations import policy

SETTINGS = ("STRIPE_SECRET_KEY",)


def missing_settings() -> list[str]:
    """Return the settings Stripe still needs; empty when it can be used."""
    return [name for name in SETTINGS if not current_app.config.get(name)]


@contextmanager
def client() -> Iterator[stripe.StripeClient]:
    """A StripeClient for the configured key and base URL; its connection closes on exit."""
    missing = missing_settings()
    if missing:
        raise policy.PermanentError(f"not configured: {', '.join(missing)} missing", "stripe")
    config = current_app.config
    with requests.Session() as session:
        yield stripe.StripeClient(
            config["STRIPE_SECRET_KEY"],
            base_addresses={"api": config["STRIPE_API_BASE"].rstrip("/")},
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=policy.timeout(), session=session),
        )


def _call(operation: str, request: Callable[[stripe.StripeClient], Any]) -> dict:
    with client() as stripe_client:
        result = policy.call("stripe", lambda: request(stripe_client), operation=operation)
    return result.to_dict()


def _options(idempotency_key: str | None) -> dict:
    return {"idempotency_key": idempotency_key} if idempotency_key else {}


def check_health() -> None:
    """Retrieve the balance: the cheapest authenticated request Stripe answers."""
    _call("health", lambda c: c.v1.balance.retrieve())


def create_checkout_session(*, idempotency_key: str, **params) -> dict:
    """Create a Checkout Session; the same key and parameters give back the same session."""
    return _call(
        "create_checkout_session",
        lambda c: c.v1.checkout.sessions.create(params, _options(idempotency_key)),
    )


def retrieve_checkout_session(session_id: str) -> dict:
    """Retrieve a Checkout Session by id."""
    return _call("retrieve_checkout_session", lambda c: c.v1.checkout.sessions.retrieve(session_id))


def expire_checkout_session(session_id: str) -> dict:
    """Expire an open Checkout Session so it can no longer be paid."""
    return _call("expire_checkout_session", lambda c: c.v1.checkout.sessions.expire(session_id))


def create_refund(*, idempotency_key: str, **params) -> dict:
    """Refund a payment (`payment_intent=` or `charge=`, optional `amount=`)."""
    return _call("create_refund", lambda c: c.v1.refunds.create(params, _options(idempotency_key)))


def create_account(*, idempotency_key: str, **params) -> dict:
    """Create a Connect account (e.g. `type="express"`) for a coach."""
    return _call(
        "create_account", lambda c: c.v1.accounts.create(params, _options(idempotency_key))
    )


def retrieve_account(account_id: str) -> dict:
    """Retrieve a Connect account: its onboarding state and capabilities."""
    return _call("retrieve_account", lambda c: c.v1.accounts.retrieve(account_id))


def create_account_link(**params) -> dict:
    """Create a one-time onboarding link (`account=`, `type=`, `refresh_url=`, `return_url=`)."""
    return _call("create_account_link", lambda c: c.v1.account_links.create(params))


def retrieve_payment_intent(payment_intent_id: str) -> dict:
    """Retrieve a PaymentIntent: its status and `latest_charge`."""
    return _call(
        "retrieve_payment_intent", lambda c: c.v1.payment_intents.retrieve(payment_intent_id)
    )


def retrieve_charge(charge_id: str) -> dict:
    """Retrieve a charge: `amount_refunded` (cumulative), `refunded`, `disputed`."""
    return _call("retrieve_charge", lambda c: c.v1.charges.retrieve(charge_id))


def list_checkout_sessions(**params) -> list[dict]:
    """Checkout Sessions matching `params` (e.g. `payment_intent=`), first page."""
    return _call("list_checkout_sessions", lambda c: c.v1.checkout.sessions.list(params))["data"]


def list_refunds(**params) -> list[dict]:
    """Refunds matching `params` (`payment_intent=` or `charge=`, `limit=`), first page."""
    return _call("list_refunds", lambda c: c.v1.refunds.list(params))["data"]


def retrieve_subscription(subscription_id: str) -> dict:
    """Retrieve a subscription: its status, items (with their current period) and metadata."""
    return _call("retrieve_subscription", lambda c: c.v1.subscriptions.retrieve(subscription_id))


def retrieve_invoice(invoice_id: str) -> dict:
    """Retrieve an invoice: status, attempt_count and next_payment_attempt."""
    return _call("retrieve_invoice", lambda c: c.v1.invoices.retrieve(invoice_id))


def create_billing_portal_session(*, idempotency_key: str | None = None, **params) -> dict:
    """Open the customer portal (`customer=`, `return_url=`); its `url` is short-lived."""
    return _call(
        "create_billing_portal_session",
        lambda c: c.v1.billing_portal.sessions.create(params, _options(idempotency_key)),
    )
