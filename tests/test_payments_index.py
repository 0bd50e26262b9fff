"""The payments page: filters in the URL (dates in the viewer's zone), pages, htmx rows,
monthly totals per currency with refunds subtracted, and what shows when Stripe is off."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from crm.database import utcnow
from crm.payments.models import ConnectAccount, Payment, Refund
from crm.payments.views_index import bar_chart, month_starts, monthly_totals, page_numbers

ROW = re.compile(r'<tr id="payment-(\d+)"')


@pytest.fixture
def make_payment(db, make_contact):
    def make(contact=None, *, amount: int = 1000, currency: str = "usd", **fields):
        fields.setdefault("status", "pending")
        payment = Payment(
            contact_id=(contact or make_contact()).id,
            amount_minor=amount,
            currency=currency,
            **fields,
        )
        db.session.add(payment)
        db.session.commit()
        return payment

    return make


def paid(make_payment, contact=None, *, at: datetime, **fields):
    fields.setdefault("status", "paid")
    return make_payment(contact, paid_at=at, created_at=at, **fields)


def listed(response) -> list[int]:
    return [int(n) for n in ROW.findall(response.get_data(as_text=True))]


def totals_row(body: str, currency: str, month: date) -> str:
    match = re.search(
        rf'<tr id="totals-{currency}-{month:%Y-%m}">(.*?)</tr>', body, flags=re.DOTALL
    )
    assert match, f"no {currency} row for {month:%Y-%m}"
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", match.group(1))).strip()


def local_month(moment: datetime, zone: str) -> date:
    local = moment.astimezone(ZoneInfo(zone))
    return date(local.year, local.month, 1)


# --- who may --------------------------------------------------------------------------


def test_coaches_may_not_see_the_payments_page(client, db, login_as):
    login_as("coach")
    assert client.get("/payments/").status_code == 403


def test_signed_out_visitors_are_sent_to_sign_in(client, db):
    answer = client.get("/payments/")
    assert answer.status_code == 302 and "/login" in answer.headers["Location"]


# --- the list -------------------------------------------------------------------------


def test_the_list_shows_amounts_contact_booking_and_status(
    client, db, login_as, make_payment, make_booking, make_contact, make_user
):
    login_as("staff")
    coach = make_user("coach", name="Carla Coach")
    ana = make_contact("Ana Silva")
    booking = make_booking(ana, coach)
    usd = make_payment(ana, amount=1250, booking_id=booking.id, coach_id=coach.id)
    yen = make_payment(make_contact("Kenji Sato"), amount=1200, currency="jpy", status="paid")
    bhd = make_payment(
        make_contact("Huda"),
        amount=1500,
        currency="bhd",
        status="partially_refunded",
        amount_refunded_minor=500,
    )

    page = client.get("/payments/")
    body = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "<html" in body and 'id="payment-totals"' in body
    assert sorted(listed(page)) == sorted([usd.id, yen.id, bhd.id])
    assert "$12.50" in body and "¥1,200" in body and "1.500 BHD" in body and "0.500 BHD" in body
    assert "Ana Silva" in body and f"/contacts/{ana.id}" in body
    assert f"/bookings/{booking.id}" in body and "Carla Coach" in body
    assert "Partly refunded" in body and "Pending" in body
    assert "3 payments" in body


def test_filters_by_status_kind_coach_and_client_name(
    client, db, login_as, make_payment, make_contact, make_user
):
    login_as("admin")
    coach = make_user("coach")
    ana = make_contact("Ana Silva")
    bruno = make_contact("Bruno Díaz")
    a1 = make_payment(ana, status="paid", kind="booking", coach_id=coach.id)
    a2 = make_payment(ana, status="pending", kind="package")
    b1 = make_payment(bruno, status="paid", kind="subscription")

    assert sorted(listed(client.get("/payments/?status=paid"))) == sorted([a1.id, b1.id])
    assert listed(client.get("/payments/?kind=package")) == [a2.id]
    assert listed(client.get(f"/payments/?coach={coach.id}")) == [a1.id]
    assert sorted(listed(client.get("/payments/?coach=none"))) == sorted([a2.id, b1.id])
    assert sorted(listed(client.get("/payments/?q=silva"))) == sorted([a1.id, a2.id])
    assert listed(client.get("/payments/?q=ANA&status=paid")) == [a1.id]
    assert listed(client.get("/payments/?q=100%25")) == []
    # Nonsense values are dropped, not errors.
    assert len(listed(client.get("/payments/?status=bogus&kind=x&coach=abc&page=zz"))) == 3
    page = client.get("/payments/?q=nobody").get_data(as_text=True)
    assert "No payments match." in page
    # The form shows the filters it applied.
    page = client.get(f"/payments/?status=paid&kind=package&coach={coach.id}").get_data(
        as_text=True
    )
    assert '<option value="paid" selected>' in page and '<option value="package" selected>' in page
    assert f'<option value="{coach.id}" selected>' in page


def test_dates_are_read_in_the_viewers_timezone(client, db, login_as, make_payment):
    login_as("staff", timezone="America/New_York")
    # 03:00 UTC on 1 March is still 28 February in New York.
    late = make_payment(created_at=datetime(2025, 3, 1, 3, 0, tzinfo=UTC))
    early = make_payment(created_at=datetime(2025, 3, 1, 6, 0, tzinfo=UTC))

    assert listed(client.get("/payments/?from=2025-03-01")) == [early.id]
    assert listed(client.get("/payments/?to=2025-02-28")) == [late.id]
    assert listed(client.get("/payments/?from=2025-02-28&to=2025-02-28")) == [late.id]
    assert listed(client.get("/payments/?from=2025-03-01&to=2025-03-01")) == [early.id]
    body = client.get("/payments/?from=2025-03-01").get_data(as_text=True)
    assert "America/New_York" in body and 'value="2025-03-01"' in body


def test_htmx_gets_only_the_rows_with_the_url_to_push(client, db, login_as, make_payment):
    login_as("staff")
    one = make_payment(status="paid")
    make_payment(status="pending")
    answer = client.htmx_get("/payments/?status=paid&q=")
    body = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert body.lstrip().startswith('<div id="payment-rows">')
    assert "<html" not in body and "payment-totals" not in body
    assert listed(answer) == [one.id]
    assert answer.headers["HX-Push-Url"] == "/payments/?status=paid"
    assert "HX-Request" in answer.headers["Vary"]
    plain = client.get("/payments/?status=paid")
    assert "HX-Request" in plain.headers["Vary"] and listed(plain) == [one.id]


def test_pages_by_number_keep_the_filters(client, db, login_as, make_payment, make_contact):
    login_as("staff")
    ana = make_contact("Ana")
    start = datetime(2025, 1, 1, tzinfo=UTC)
    made = [
        make_payment(ana, status="paid", created_at=start + timedelta(hours=i)) for i in range(55)
    ]
    make_payment(status="pending")

    first = client.get("/payments/?status=paid")
    body = first.get_data(as_text=True)
    assert listed(first) == [p.id for p in reversed(made)][:50]
    assert "55 payments" in body
    assert 'href="/payments/?status=paid&amp;page=2"' in body
    second = client.htmx_get("/payments/?status=paid&page=2")
    assert listed(second) == [p.id for p in reversed(made)][50:]
    assert second.headers["HX-Push-Url"] == "/payments/?status=paid&page=2"
    assert 'href="/payments/?status=paid"' in second.get_data(as_text=True)  # page 1
    # Past the end: the last page.
    assert listed(client.get("/payments/?status=paid&page=9")) == listed(second)


def test_page_numbers_show_the_ends_and_the_neighbourhood():
    assert page_numbers(1, 1) == [1]
    assert page_numbers(1, 4) == [1, 2, 3, 4]
    assert page_numbers(10, 20) == [1, None, 8, 9, 10, 11, 12, None, 20]
    assert page_numbers(20, 20) == [1, None, 18, 19, 20]


# --- monthly totals -------------------------------------------------------------------


def test_totals_subtract_refunds_per_currency_incl_jpy(
    client, db, login_as, make_payment, make_contact
):
    zone = "Asia/Tokyo"
    login_as("staff", timezone=zone)
    now = utcnow() - timedelta(minutes=1)
    earlier = now - timedelta(days=40)

    usd = paid(make_payment, amount=5000, at=now, status="partially_refunded")
    db.session.add(Refund(payment_id=usd.id, amount_minor=2000, status="succeeded", created_at=now))
    db.session.add(Refund(payment_id=usd.id, amount_minor=700, status="pending", created_at=now))
    usd.amount_refunded_minor = 2000
    paid(make_payment, amount=1250, at=earlier)
    paid(make_payment, amount=1200, currency="jpy", at=now)
    # Refunded at Stripe with no refund row here: still subtracted.
    paid(
        make_payment,
        amount=3000,
        currency="jpy",
        at=now,
        status="refunded",
        amount_refunded_minor=3000,
    )
    paid(make_payment, amount=1500, currency="bhd", at=now)
    make_payment(amount=99_999, status="pending")  # never paid: not counted
    make_payment(amount=88_888, status="failed")
    db.session.commit()

    body = client.get("/payments/").get_data(as_text=True)
    this_month, last_month = local_month(now, zone), local_month(earlier, zone)
    assert totals_row(body, "usd", this_month) == (f"{this_month:%b %Y} $50.00 $20.00 $30.00")
    assert totals_row(body, "usd", last_month) == f"{last_month:%b %Y} $12.50 $0.00 $12.50"
    assert totals_row(body, "jpy", this_month) == f"{this_month:%b %Y} ¥4,200 ¥3,000 ¥1,200"
    assert totals_row(body, "bhd", this_month) == (
        f"{this_month:%b %Y} 1.500 BHD 0.000 BHD 1.500 BHD"
    )
    # The practice's currency first, then the others by code; each its own chart.
    assert body.index('id="totals-usd"') < body.index('id="totals-bhd"')
    assert body.index('id="totals-bhd"') < body.index('id="totals-jpy"')
    card = body[body.index('id="totals-usd"') : body.index('id="totals-bhd"')]
    assert "$42.50" in card  # 12 months: 30.00 + 12.50
    assert card.count("<rect ") == 12
    assert f"<title>{this_month:%b %Y}: $30.00</title>" in card
    assert "Asia/Tokyo" in body


def test_months_follow_the_viewers_timezone_and_refunds_their_own_month(db, make_payment):
    tokyo = ZoneInfo("Asia/Tokyo")
    # 16:00 UTC on 28 February is 01:00 on 1 March in Tokyo.
    payment = paid(make_payment, amount=10_000, at=datetime(2025, 2, 28, 16, 0, tzinfo=UTC))
    db.session.add(
        Refund(
            payment_id=payment.id,
            amount_minor=4000,
            status="succeeded",
            created_at=datetime(2025, 4, 2, 0, 0, tzinfo=UTC),
        )
    )
    payment.amount_refunded_minor = 4000
    paid(make_payment, amount=500, at=datetime(2024, 3, 31, 12, 0, tzinfo=UTC))  # too old
    db.session.commit()

    [usd] = monthly_totals(tokyo, date(2025, 4, 15))
    months = {m["month"]: m for m in usd["months"]}
    assert list(months) == month_starts(date(2025, 4, 15))
    assert list(months)[0] == date(2024, 5, 1) and list(months)[-1] == date(2025, 4, 1)
    assert months[date(2025, 3, 1)] == {
        "month": date(2025, 3, 1),
        "paid": 10_000,
        "refunded": 0,
        "net": 10_000,
    }
    assert months[date(2025, 2, 1)]["paid"] == 0
    assert months[date(2025, 4, 1)]["net"] == -4000
    assert usd["total"] == 6000
    bars = usd["chart"]["bars"]
    assert bars[-1]["negative"] and not bars[-2]["negative"]
    # Read in UTC, the same payment falls in February.
    [utc] = monthly_totals(ZoneInfo("UTC"), date(2025, 4, 15))
    assert {m["month"]: m["paid"] for m in utc["months"]}[date(2025, 2, 1)] == 10_000


def test_bar_chart_scales_positive_and_negative_bars():
    chart = bar_chart([("Jan", 100, "$1.00"), ("Feb", -50, "-$0.50"), ("Mar", 0, "$0.00")])
    first, second, third = chart["bars"]
    assert chart["zero"] == pytest.approx(4 + 82 * 100 / 150, abs=0.1)
    assert first["height"] == pytest.approx(82 * 100 / 150, abs=0.1)
    assert first["y"] + first["height"] == pytest.approx(chart["zero"], abs=0.2)
    assert second["negative"] and second["y"] == chart["zero"]
    assert third["height"] == 0
    assert first["title"] == "Jan: $1.00"
    empty = bar_chart([("Jan", 0, "$0.00")])
    assert empty["bars"][0]["height"] == 0


def test_no_money_yet_says_so(client, db, login_as):
    login_as("staff")
    body = client.get("/payments/").get_data(as_text=True)
    assert "No money received in the last 12 months." in body
    assert "No payments yet." in body


# --- coaches' payouts ---------------------------------------------------------------------


def test_the_page_links_each_coachs_payouts(client, db, login_as, make_user):
    login_as("staff")
    ready = make_user("coach", name="Ready Coach")
    waiting = make_user("coach", name="Waiting Coach")
    db.session.add(
        ConnectAccount(
            coach_id=ready.id,
            account_id="acct_READY1",
            charges_enabled=True,
            payouts_enabled=True,
            details_submitted=True,
            requirements=[],
        )
    )
    db.session.commit()
    body = client.get("/payments/").get_data(as_text=True)
    section = body[body.index('id="coach-payouts"') :]
    ready_row = section[section.index(f'id="payout-{ready.id}"') :].split("</tr>")[0]
    waiting_row = section[section.index(f'id="payout-{waiting.id}"') :].split("</tr>")[0]
    assert "Ready" in ready_row and f"/payments/coaches/{ready.id}/connect" in ready_row
    assert "Not set up" in waiting_row
    assert f"/payments/coaches/{waiting.id}/connect" in waiting_row


# --- not configured -------------------------------------------------------------------


def test_without_stripe_the_page_says_payments_are_off_and_why(
    client, db, login_as, app, monkeypatch, make_payment
):
    monkeypatch.setitem(app.config, "STRIPE_SECRET_KEY", None)
    login_as("staff")
    old = make_payment(status="paid")
    answer = client.get("/payments/")
    body = answer.get_data(as_text=True)
    assert "Payments are off." in body and "STRIPE_SECRET_KEY is not set" in body
    assert listed(answer) == [old.id]  # earlier records stay visible


def test_with_stripe_there_is_no_note(client, db, login_as, stripe_fake):
    login_as("staff")
    assert "Payments are off" not in client.get("/payments/").get_data(as_text=True)


def test_the_health_card_names_the_missing_stripe_setting(client, db, login_as, app, monkeypatch):
    monkeypatch.setitem(app.config, "STRIPE_SECRET_KEY", None)
    login_as("staff")
    body = client.get("/integrations/").get_data(as_text=True)
    card = body[body.index('id="card-stripe"') :].split("</article>")[0]
    assert "Not configured" in card
    assert "STRIPE_SECRET_KEY is not set" in card
