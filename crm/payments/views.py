"""Payments pages (blueprint `payments`, /payments).

One blueprint, several modules, imported at the bottom so their routes land on `bp`:
`views_checkout` (paying for a booking, payment links, success and cancel pages, refunds),
`views_connect` (coaches' Stripe Connect onboarding), `views_index` (the payments page
with its filters and monthly totals), `views_packages` (packages, subscriptions, dunning).
Webhook handlers register from `handlers_*` modules, timeline sources from `timeline`.
"""

from __future__ import annotations

from flask import Blueprint

from crm.payments.money import format_money

bp = Blueprint("payments", __name__, url_prefix="/payments")


@bp.app_template_filter("money")
def money(amount_minor: int | None, currency: str | None) -> str:
    """`{{ payment.amount_minor | money(payment.currency) }}` → `$12.50`."""
    return format_money(amount_minor, currency)


from crm.payments import (  # noqa: E402, F401
    handlers_billing,
    handlers_checkout,
    handlers_connect,
    timeline,
    views_checkout,
    views_connect,
    views_index,
    views_packages,
)
