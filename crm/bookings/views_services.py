"""Services with their workflow steps (staff), and each user's notifications."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import sqlalchemy as sa
from flask import abort, flash, request, url_for
from flask_login import current_user, login_required

from crm.auth.access import STAFF_ROLES, roles_required
from crm.bookings import workflows
from crm.bookings.models import STEP_DEFAULTS, STEPS, Notification, Service
from crm.bookings.notifications import forget_unread, unread_count
from crm.bookings.services import coaches
from crm.bookings.views import bp
from crm.conversations.models import MessageTemplate
from crm.database import utcnow
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.users.models import User

SERVICES = "bookings/services.html"
SERVICE = "bookings/service.html"
NOTIFICATIONS = "bookings/notifications.html"

UNITS = {"minutes": 1, "hours": 60, "days": 24 * 60}
MAX_OFFSET = 60 * 24 * 60  # 60 days
# ISO 4217 currencies without minor units; every other currency has cents.
ZERO_DECIMAL = frozenset({"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF"})
ZERO_DECIMAL |= {"UGX", "VND", "VUV", "XAF", "XOF", "XPF"}
DIRECTION = {"created": "after booking", "start": "before the session", "end": "after the session"}


def minor_exponent(currency: str | None) -> int:
    return 0 if (currency or "").upper() in ZERO_DECIMAL else 2


def format_price(service: Service) -> str:
    """`50.00 EUR`, or an empty string when the service has no price."""
    if service.price_minor is None:
        return ""
    exponent = minor_exponent(service.currency)
    amount = Decimal(service.price_minor).scaleb(-exponent)
    return f"{amount:.{exponent}f} {service.currency or ''}".strip()


def split_offset(minutes: int) -> tuple[int, str]:
    """An offset in minutes as (amount, unit), in the largest unit that divides it."""
    minutes = abs(minutes)
    for unit in ("days", "hours"):
        if minutes and minutes % UNITS[unit] == 0:
            return minutes // UNITS[unit], unit
    return minutes, "minutes"


@dataclass
class ServiceForm:
    """Typed values (as strings), cleaned values and per-field errors."""

    raw: dict
    clean: dict = field(default_factory=dict)
    steps: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)


def _initial(service: Service | None) -> dict:
    settings = workflows.step_settings(service)
    raw = {
        "name": service.name if service else "",
        "duration_minutes": str(service.duration_minutes) if service else "60",
        "price": format_price(service).split(" ")[0] if service else "",
        "currency": (service.currency or "") if service else "",
        "coach_id": str(service.coach_id or "") if service else "",
        "active": service.active if service else True,
    }
    for step, setting in settings.items():
        amount, unit = split_offset(setting.offset)
        raw[f"{step}-enabled"] = setting.enabled
        raw[f"{step}-amount"] = str(amount)
        raw[f"{step}-unit"] = unit
        raw[f"{step}-template"] = str(setting.template_id or "")
    return raw


def _read(data) -> ServiceForm:
    raw = {key: (data.get(key) or "").strip() for key in ("name", "duration_minutes", "price")}
    raw["currency"] = (data.get("currency") or "").strip().upper()
    raw["coach_id"] = (data.get("coach_id") or "").strip()
    raw["active"] = bool(data.get("active"))
    for step in STEPS:
        raw[f"{step}-enabled"] = bool(data.get(f"{step}-enabled"))
        raw[f"{step}-amount"] = (data.get(f"{step}-amount") or "").strip()
        raw[f"{step}-unit"] = data.get(f"{step}-unit") or "minutes"
        raw[f"{step}-template"] = (data.get(f"{step}-template") or "").strip()
    form = ServiceForm(raw)
    clean, errors = form.clean, form.errors

    if not raw["name"]:
        errors["name"] = "Enter a name."
    elif len(raw["name"]) > 200:
        errors["name"] = "Keep the name under 200 characters."
    clean["name"] = raw["name"]

    duration = raw["duration_minutes"]
    if not duration.isdigit() or not 5 <= int(duration) <= 24 * 60:
        errors["duration_minutes"] = "Enter a duration from 5 to 1,440 minutes."
    clean["duration_minutes"] = int(duration) if duration.isdigit() else None

    clean["price_minor"], clean["currency"] = None, raw["currency"] or None
    if raw["price"]:
        exponent = minor_exponent(raw["currency"])
        try:
            price = Decimal(raw["price"].replace(",", ""))
        except InvalidOperation:
            price = None
        if price is None or not price.is_finite() or price < 0:
            errors["price"] = "Enter a price such as 50 or 49.90."
        elif price != price.quantize(Decimal(1).scaleb(-exponent)):
            errors["price"] = f"{raw['currency'] or 'This currency'} has {exponent} decimals."
        else:
            clean["price_minor"] = int(price.scaleb(exponent))
        if not (len(raw["currency"]) == 3 and raw["currency"].isalpha()):
            errors["currency"] = "Enter the currency's three-letter code, such as EUR."

    clean["coach_id"] = None
    if raw["coach_id"]:
        coach = db.session.get(User, int(raw["coach_id"])) if raw["coach_id"].isdigit() else None
        if coach is None or coach.role != "coach" or not coach.active:
            errors["coach_id"] = "Choose an active coach."
        else:
            clean["coach_id"] = coach.id
    clean["active"] = raw["active"]

    for step in STEPS:
        amount, unit = raw[f"{step}-amount"], raw[f"{step}-unit"]
        offset = None
        if unit not in UNITS or not amount.isdigit() or int(amount) * UNITS[unit] > MAX_OFFSET:
            errors[f"{step}-amount"] = "Enter a whole number, up to 60 days."
        else:
            offset = int(amount) * UNITS[unit]
            if STEP_DEFAULTS[step]["anchor"] == "start":
                offset = -offset  # reminders go before the session
        template_id = None
        if raw[f"{step}-template"]:
            chosen = raw[f"{step}-template"]
            template = db.session.get(MessageTemplate, int(chosen)) if chosen.isdigit() else None
            if template is None:
                errors[f"{step}-template"] = "Choose one of the message templates."
            else:
                template_id = template.id
        form.steps[step] = {
            "enabled": raw[f"{step}-enabled"],
            "offset": offset,
            "template_id": template_id,
        }
    return form


def _service_page(service: Service | None, form: ServiceForm | None = None, *, status=200):
    templates = db.session.scalars(sa.select(MessageTemplate).order_by(MessageTemplate.name))
    return render(
        SERVICE,
        "service_form",
        status=status,
        service=service,
        raw=form.raw if form else _initial(service),
        errors=form.errors if form else {},
        coaches=coaches(),
        templates=templates.all(),
        steps=[(step, STEP_DEFAULTS[step]) for step in STEPS],
        directions=DIRECTION,
        units=UNITS,
    )


@bp.get("/services")
@roles_required(*STAFF_ROLES)
def services():
    """List the services: duration, price, coach and which workflow steps are on."""
    rows = db.session.scalars(
        sa.select(Service).order_by(Service.active.desc(), Service.name, Service.id)
    ).all()
    return render(
        SERVICES,
        "service_table",
        services=rows,
        settings={s.id: workflows.step_settings(s) for s in rows},
        steps=[(step, STEP_DEFAULTS[step]) for step in STEPS],
        format_price=format_price,
    )


@bp.route("/services/new", methods=["GET", "POST"])
@roles_required(*STAFF_ROLES)
def service_new():
    """The form for a new service, and saving it."""
    if request.method == "GET":
        return _service_page(None)
    form = _read(request.form)
    if form.errors:
        return _service_page(None, form, status=422)
    service = workflows.save_service(None, form.clean, form.steps, actor=current_user)
    db.session.commit()
    flash(f"Saved the service “{service.name}”.", "success")
    return redirect_303(url_for("bookings.services"))


@bp.route("/services/<int:service_id>", methods=["GET", "POST"])
@roles_required(*STAFF_ROLES)
def service(service_id: int):
    """A service's settings and its steps; saving moves its upcoming reminders."""
    service = db.get_or_404(Service, service_id)
    if request.method == "GET":
        return _service_page(service)
    form = _read(request.form)
    if form.errors:
        return _service_page(service, form, status=422)
    workflows.save_service(service, form.clean, form.steps, actor=current_user)
    db.session.commit()
    flash(f"Saved the service “{service.name}”.", "success")
    return redirect_303(url_for("bookings.services"))


# --- notifications ----------------------------------------------------------------------


@bp.app_context_processor
def _notification_count() -> dict:
    # A callable, so pages that do not show the count do not pay for the query.
    def unread_notifications() -> int:
        return unread_count(current_user) if current_user.is_authenticated else 0

    return {"unread_notifications": unread_notifications}


def _notifications_page(*, block: str = "notification_list"):
    rows = db.session.scalars(
        sa.select(Notification)
        .where(Notification.user_id == current_user.id)
        .order_by(Notification.created_at.desc(), Notification.id.desc())
        .limit(100)
    ).all()
    response = render(NOTIFICATIONS, block, notifications=rows, unread=unread_count(current_user))
    return response


def _own_notification(notification_id: int) -> Notification:
    notification = db.session.get(Notification, notification_id)
    if notification is None or notification.user_id != current_user.id:
        abort(404)
    return notification


@bp.get("/notifications")
@login_required
def notifications():
    """The signed-in user's notifications, newest first; the unread ones stand out."""
    return _notifications_page()


@bp.post("/notifications/<int:notification_id>/read")
@login_required
def notification_read(notification_id: int):
    """Mark one notification read."""
    notification = _own_notification(notification_id)
    if notification.read_at is None:
        notification.read_at = utcnow()
    db.session.commit()
    forget_unread(current_user.id)
    if request.htmx:
        response = render(NOTIFICATIONS, "notification", n=notification)
        response.headers["HX-Trigger"] = "notifications-updated"
        return response
    return redirect_303(url_for("bookings.notifications"))


@bp.post("/notifications/read")
@login_required
def notifications_read_all():
    """Mark all the user's notifications read."""
    db.session.execute(
        sa.update(Notification)
        .where(Notification.user_id == current_user.id, Notification.read_at.is_(None))
        .values(read_at=utcnow())
    )
    db.session.commit()
    forget_unread(current_user.id)
    if request.htmx:
        response = _notifications_page()
        response.headers["HX-Trigger"] = "notifications-updated"
        return response
    return redirect_303(url_for("bookings.notifications"))
