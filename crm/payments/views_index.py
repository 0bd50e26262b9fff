"""The payments page (staff): every payment with filters and pages, monthly totals with a
small server-rendered bar chart, and each coach's payout state.

Filters travel in the URL; dates are read in the viewer's timezone, as are the months of
the totals. A month's total is what was paid in it minus what was refunded in it, per
currency: amounts in different currencies are never added together.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from flask import current_app, request, url_for
from flask_login import current_user

from crm.auth.access import STAFF_ROLES, roles_required
from crm.bookings.services import coaches
from crm.contacts.models import Contact
from crm.database import escape_like, utcnow
from crm.extensions import db
from crm.htmx import render
from crm.integrations.health import missing_settings
from crm.payments.models import ConnectAccount, Payment, Refund
from crm.payments.money import format_money
from crm.payments.services import stripe_configured
from crm.payments.views import bp
from crm.users.models import User

PAGE_SIZE = 50
MONTHS = 12
STATUS_LABELS = {
    "pending": "Pending",
    "paid": "Paid",
    "failed": "Failed",
    "expired": "Expired",
    "refunded": "Refunded",
    "partially_refunded": "Partly refunded",
    "disputed": "Disputed",
}
KIND_LABELS = {"booking": "Session", "package": "Package", "subscription": "Subscription"}


# --- time in the viewer's zone --------------------------------------------------------


def viewer_zone() -> ZoneInfo:
    try:
        return ZoneInfo(current_user.timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC moment `day` starts in `tz`."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def parse_date(value: str | None) -> date | None:
    try:
        return date.fromisoformat((value or "").strip())
    except ValueError:
        return None


def month_starts(today: date, count: int = MONTHS) -> list[date]:
    """The first days of the `count` months ending with `today`'s, oldest first."""
    year, month = today.year, today.month
    starts = []
    for _ in range(count):
        starts.append(date(year, month, 1))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return starts[::-1]


# --- the list -------------------------------------------------------------------------


@dataclass
class ListState:
    """The list's filters and page, as they travel in the URL."""

    status: str = ""
    kind: str = ""
    coach: str = ""  # "", "none" or a coach's id
    start: str = ""
    end: str = ""
    q: str = ""
    page: int = 1

    @classmethod
    def from_args(cls, args) -> ListState:
        def pick(name: str) -> str:
            return (args.get(name) or "").strip()

        coach = pick("coach")
        page = pick("page")
        return cls(
            status=pick("status") if pick("status") in STATUS_LABELS else "",
            kind=pick("kind") if pick("kind") in KIND_LABELS else "",
            coach=coach if coach == "none" or coach.isdigit() else "",
            start=pick("from") if parse_date(args.get("from")) else "",
            end=pick("to") if parse_date(args.get("to")) else "",
            q=pick("q")[:200],
            page=max(1, int(page)) if page.isdigit() else 1,
        )

    def to_args(self, **changes) -> list[tuple[str, str]]:
        values = {f.name: getattr(self, f.name) for f in fields(self)} | changes
        names = {"start": "from", "end": "to"}
        return [
            (names.get(name, name), str(value))
            for name, value in values.items()
            if value and not (name == "page" and value == 1)
        ]

    def url(self, **changes) -> str:
        query = urlencode(self.to_args(**changes))
        return url_for("payments.index") + (f"?{query}" if query else "")

    @property
    def filtered(self) -> bool:
        return any((self.status, self.kind, self.coach, self.start, self.end, self.q))


def list_query(state: ListState, tz: ZoneInfo):
    """The payments matching the filters, newest first."""
    query = sa.select(Payment)
    if state.status:
        query = query.where(Payment.status == state.status)
    if state.kind:
        query = query.where(Payment.kind == state.kind)
    if state.coach == "none":
        query = query.where(Payment.coach_id.is_(None))
    elif state.coach:
        query = query.where(Payment.coach_id == int(state.coach))
    if start := parse_date(state.start):
        query = query.where(Payment.created_at >= local_midnight(start, tz))
    if end := parse_date(state.end):
        query = query.where(Payment.created_at < local_midnight(end + timedelta(days=1), tz))
    if state.q:
        pattern = f"%{escape_like(state.q.lower())}%"
        names = sa.select(Contact.id).where(sa.func.lower(Contact.name).like(pattern, escape="\\"))
        query = query.where(Payment.contact_id.in_(names))
    return query.order_by(Payment.created_at.desc(), Payment.id.desc())


def page_numbers(page: int, pages: int, around: int = 2) -> list[int | None]:
    """Page links to show: the first, the last and a few around `page`; None is a gap."""
    shown = sorted({1, pages, *range(max(1, page - around), min(pages, page + around) + 1)})
    numbers: list[int | None] = []
    for n in shown:
        if numbers and n - numbers[-1] > 1:
            numbers.append(None)
        numbers.append(n)
    return numbers


# --- monthly totals -------------------------------------------------------------------


def _month_of(moment: datetime, tz: ZoneInfo) -> date:
    local = moment.astimezone(tz)
    return date(local.year, local.month, 1)


def monthly_totals(tz: ZoneInfo, today: date, *, months: int = MONTHS) -> list[dict]:
    """Per currency, each of the last `months` months: paid, refunded and net, minor units.

    Paid counts payments by when they were paid. Refunded counts confirmed refunds by
    when they were made; a refund Stripe reported on the payment with no refund row here
    (`amount_refunded_minor` beyond its rows) counts when the payment last changed.
    """
    starts = month_starts(today, months)
    since = local_midnight(starts[0], tz)
    sums: dict[str, dict[date, list[int]]] = {}

    def add(currency: str, moment: datetime, index: int, amount: int) -> None:
        month = _month_of(moment, tz)
        by_month = sums.setdefault(currency.lower(), {})
        by_month.setdefault(month, [0, 0])[index] += int(amount)

    paid = sa.select(Payment.currency, Payment.paid_at, Payment.amount_minor).where(
        Payment.paid_at.is_not(None), Payment.paid_at >= since
    )
    for currency, at, amount in db.session.execute(paid):
        add(currency, at, 0, amount)
    refunds = (
        sa.select(Payment.currency, Refund.created_at, Refund.amount_minor)
        .join(Payment, Payment.id == Refund.payment_id)
        .where(Refund.status == "succeeded", Refund.created_at >= since)
    )
    for currency, at, amount in db.session.execute(refunds):
        add(currency, at, 1, amount)
    covered = (
        sa.select(sa.func.coalesce(sa.func.sum(Refund.amount_minor), 0))
        .where(Refund.payment_id == Payment.id, Refund.status == "succeeded")
        .scalar_subquery()
    )
    unrecorded = sa.select(
        Payment.currency, Payment.updated_at, Payment.amount_refunded_minor - covered
    ).where(Payment.amount_refunded_minor > covered, Payment.updated_at >= since)
    for currency, at, amount in db.session.execute(unrecorded):
        add(currency, at, 1, amount)

    default = (current_app.config.get("PAYMENTS_CURRENCY") or "usd").lower()
    result = []
    for currency in sorted(sums, key=lambda c: (c != default, c)):
        rows = []
        for start in starts:
            paid_minor, refunded_minor = sums[currency].get(start, [0, 0])
            rows.append(
                {
                    "month": start,
                    "paid": paid_minor,
                    "refunded": refunded_minor,
                    "net": paid_minor - refunded_minor,
                }
            )
        result.append(
            {
                "currency": currency,
                "months": rows,
                "total": sum(r["net"] for r in rows),
                "chart": bar_chart(
                    [
                        (
                            r["month"].strftime("%b %Y"),
                            r["net"],
                            format_money(r["net"], currency),
                        )
                        for r in rows
                    ]
                ),
            }
        )
    return result


def bar_chart(
    bars: list[tuple[str, int, str]], width: int = 360, height: int = 90, pad: int = 4
) -> dict:
    """SVG geometry for a bar chart of (label, value, shown value); negatives hang below 0."""
    values = [value for _, value, _ in bars]
    top = max([0, *values])
    bottom = min([0, *values])
    span = (top - bottom) or 1
    inner = height - 2 * pad
    zero = pad + inner * top / span
    slot = width / max(1, len(bars))
    gap = min(4.0, slot / 4)
    rects = []
    for i, (label, value, shown) in enumerate(bars):
        size = inner * abs(value) / span
        rects.append(
            {
                "x": round(i * slot + gap / 2, 1),
                "y": round(zero - size if value >= 0 else zero, 1),
                "width": round(slot - gap, 1),
                "height": round(size, 1),
                "negative": value < 0,
                "label": label,
                "title": f"{label}: {shown}",
                "initial": label[:1],
                "center": round(i * slot + slot / 2, 1),
            }
        )
    return {"width": width, "height": height, "zero": round(zero, 1), "bars": rects}


# --- the page -------------------------------------------------------------------------


def _payouts() -> list[dict]:
    people = coaches()
    accounts = {
        a.coach_id: a
        for a in db.session.scalars(
            sa.select(ConnectAccount).where(ConnectAccount.coach_id.in_([c.id for c in people]))
        )
    }
    return [{"coach": c, "account": accounts.get(c.id)} for c in people]


def _context(state: ListState) -> dict:
    tz = viewer_zone()
    query = list_query(state, tz)
    total = db.session.scalar(sa.select(sa.func.count()).select_from(query.subquery()))
    pages = max(1, -(-total // PAGE_SIZE))
    state.page = min(state.page, pages)
    rows = list(
        db.session.scalars(query.offset((state.page - 1) * PAGE_SIZE).limit(PAGE_SIZE)).unique()
    )
    coach_ids = {p.coach_id for p in rows if p.coach_id}
    coach_names = {
        u.id: u.display_name
        for u in db.session.scalars(sa.select(User).where(User.id.in_(coach_ids)))
    }
    return {
        "payments": rows,
        "coach_names": coach_names,
        "total": total,
        "pages": pages,
        "page_numbers": page_numbers(state.page, pages),
        "state": state,
        "list_url": state.url(),
        "statuses": STATUS_LABELS,
        "kinds": KIND_LABELS,
        "coaches": coaches(),
        "zone_name": tz.key,
        "configured": stripe_configured(),
        "missing": missing_settings("stripe"),
    }


@bp.get("/")
@roles_required(*STAFF_ROLES)
def index():
    """List payments with filters and pages; monthly totals and coaches' payouts (staff).

    htmx asks for the rows alone after a filter change or a page link.
    """
    state = ListState.from_args(request.args)
    context = _context(state)
    fragment = bool(request.htmx) and not request.htmx.boosted
    if not fragment:
        tz = viewer_zone()
        context["totals"] = monthly_totals(tz, utcnow().astimezone(tz).date())
        context["payouts"] = _payouts()
    response = render("payments/index.html", "rows", **context)
    if fragment:
        response.headers["HX-Push-Url"] = context["list_url"]
    return response
