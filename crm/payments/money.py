"""Amounts in a currency's minor unit, read and written as people do.

Stripe counts every amount in the currency's smallest unit: cents for USD, but yen for JPY
(a zero-decimal currency) and fils for BHD (three decimals). These lists follow Stripe's
currency documentation.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())
SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cad": "CA$", "aud": "A$"}


def decimals(currency: str) -> int:
    """How many digits follow the decimal point in `currency`."""
    code = (currency or "").lower()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def to_minor(amount: str | Decimal | int | float, currency: str) -> int:
    """`"12.50"` USD → 1250; `"1200"` JPY → 1200. ValueError when it is not an amount."""
    try:
        value = Decimal(str(amount).strip().replace(",", ""))
    except InvalidOperation as exc:
        raise ValueError(f"{amount!r} is not an amount") from exc
    if not value.is_finite():
        raise ValueError(f"{amount!r} is not an amount")
    scaled = value.scaleb(decimals(currency))
    if scaled != scaled.to_integral_value():
        places = decimals(currency)
        raise ValueError(
            f"{currency.upper()} amounts have no decimals"
            if places == 0
            else f"{currency.upper()} amounts have at most {places} decimals"
        )
    return int(scaled.to_integral_value(rounding=ROUND_HALF_UP))


def to_major(amount_minor: int, currency: str) -> Decimal:
    """1250 USD → Decimal("12.50")."""
    places = decimals(currency)
    return Decimal(amount_minor).scaleb(-places).quantize(Decimal(1).scaleb(-places))


def format_money(amount_minor: int | None, currency: str | None) -> str:
    """1250 USD → `$12.50`; 1200 JPY → `¥1,200`; 1500 BHD → `1.500 BHD`."""
    if amount_minor is None or not currency:
        return "—"
    major = to_major(amount_minor, currency)
    sign = "-" if major < 0 else ""
    text = f"{abs(major):,.{decimals(currency)}f}"
    symbol = SYMBOLS.get(currency.lower())
    if symbol:
        return f"{sign}{symbol}{text}"
    return f"{sign}{text} {currency.upper()}"
