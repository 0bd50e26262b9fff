"""Amounts in minor units: reading, writing and formatting them per currency, including
zero-decimal (JPY, KRW) and three-decimal (BHD, KWD) currencies."""

from __future__ import annotations

from decimal import Decimal

import pytest

from crm.payments.money import decimals, format_money, to_major, to_minor


@pytest.mark.parametrize(
    ("currency", "places"),
    [("usd", 2), ("EUR", 2), ("jpy", 0), ("KRW", 0), ("bhd", 3), ("KWD", 3), ("", 2)],
)
def test_decimals_per_currency(currency, places):
    assert decimals(currency) == places


@pytest.mark.parametrize(
    ("minor", "currency", "shown"),
    [
        (1250, "usd", "$12.50"),
        (1250, "USD", "$12.50"),
        (0, "usd", "$0.00"),
        (5, "usd", "$0.05"),
        (-1250, "usd", "-$12.50"),
        (123_456_789_012, "usd", "$1,234,567,890.12"),
        (1999, "eur", "€19.99"),
        (1200, "jpy", "¥1,200"),
        (0, "jpy", "¥0"),
        (-500, "jpy", "-¥500"),
        (50_000, "krw", "50,000 KRW"),
        (1500, "bhd", "1.500 BHD"),
        (1_234_567, "kwd", "1,234.567 KWD"),
        (-1, "kwd", "-0.001 KWD"),
        (990, "chf", "9.90 CHF"),
    ],
)
def test_format_money(minor, currency, shown):
    assert format_money(minor, currency) == shown


@pytest.mark.parametrize(("minor", "currency"), [(None, "usd"), (1250, None), (1250, "")])
def test_format_money_without_an_amount_or_currency_is_a_dash(minor, currency):
    assert format_money(minor, currency) == "—"


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("12.50", "usd", 1250),
        ("12.5", "usd", 1250),
        ("12", "usd", 1200),
        (" 0.05 ", "usd", 5),
        ("0", "usd", 0),
        ("-3.10", "usd", -310),
        ("1,234.56", "usd", 123_456),
        ("12345678901.23", "usd", 1_234_567_890_123),
        (Decimal("9.99"), "eur", 999),
        (7, "usd", 700),
        ("1200", "jpy", 1200),
        ("1200.0", "JPY", 1200),
        ("50000", "krw", 50_000),
        ("1.5", "bhd", 1500),
        ("1.234", "kwd", 1234),
        ("-0.001", "kwd", -1),
    ],
)
def test_to_minor(amount, currency, minor):
    assert to_minor(amount, currency) == minor


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        ("12.345", "usd", "USD amounts have at most 2 decimals"),
        ("12.5", "jpy", "JPY amounts have no decimals"),
        ("100.1", "krw", "KRW amounts have no decimals"),
        ("1.2345", "bhd", "BHD amounts have at most 3 decimals"),
        ("abc", "usd", "is not an amount"),
        ("", "usd", "is not an amount"),
        ("NaN", "usd", "is not an amount"),
        ("Infinity", "usd", "is not an amount"),
    ],
)
def test_to_minor_rejects(amount, currency, message):
    with pytest.raises(ValueError, match=message):
        to_minor(amount, currency)


@pytest.mark.parametrize(
    ("minor", "currency", "major"),
    [
        (1250, "usd", Decimal("12.50")),
        (0, "usd", Decimal("0.00")),
        (-310, "usd", Decimal("-3.10")),
        (123_456_789_012, "usd", Decimal("1234567890.12")),
        (1200, "jpy", Decimal("1200")),
        (50_000, "krw", Decimal("50000")),
        (1500, "bhd", Decimal("1.500")),
        (1_234_567, "kwd", Decimal("1234.567")),
    ],
)
def test_to_major(minor, currency, major):
    result = to_major(minor, currency)
    assert result == major
    assert str(result) == str(major)  # exactly as many places as the currency has


@pytest.mark.parametrize("currency", ["usd", "jpy", "krw", "bhd", "kwd"])
@pytest.mark.parametrize("minor", [0, 1, 99, 1000, 123_456_789, -42])
def test_minor_to_major_and_back(minor, currency):
    assert to_minor(to_major(minor, currency), currency) == minor


def test_the_money_template_filter(app):
    with app.app_context():
        template = app.jinja_env.from_string("{{ a|money('jpy') }} {{ b|money('usd') }}")
        assert template.render(a=1200, b=1250) == "¥1,200 $12.50"
