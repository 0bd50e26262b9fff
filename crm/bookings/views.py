"""Bookings pages (blueprint `bookings`, /bookings).

One blueprint, several modules: this one holds the blueprint and shared filters;
`views_staff` the staff's list, manual bookings, the week calendar and utilization;
`views_sessions` the coach's "My sessions" and a session's
page; `views_coaches` coaches' profiles and their Calendly connection; `views_services`
services with their workflow steps and notifications. They are imported at the bottom so
their routes land on `bp`.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Blueprint
from flask_login import current_user

bp = Blueprint("bookings", __name__, url_prefix="/bookings")


@bp.app_template_filter("local")
def local(value: datetime | None, fmt: str = "%a %d %b %Y, %H:%M", zone: str | None = None) -> str:
    """A UTC datetime in the reader's timezone (or `zone`)."""
    if value is None:
        return ""
    name = zone or (current_user.timezone if current_user.is_authenticated else None) or "UTC"
    try:
        tz = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    return value.astimezone(tz).strftime(fmt)


# Registrations (webhook handlers, timeline sources) and the other modules' routes.
from crm.bookings import (  # noqa: E402, F401
    calcom,
    calendly,
    timeline,
    views_coaches,
    views_services,
    views_sessions,
    views_staff,
)
