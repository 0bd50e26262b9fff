"""The main navigation, by role. Sections that later releases add show as coming soon."""

from __future__ import annotations

from flask import current_app, g, request, url_for
from flask_login import current_user

EVERYONE = ("admin", "staff", "coach")
STAFF = ("admin", "staff")

SECTIONS = (
    ("Contacts", "contacts.index", EVERYONE),
    ("Conversations", "conversations.index", EVERYONE),
    ("Bookings", "bookings.index", EVERYONE),
    ("Payments", "payments.index", STAFF),
    ("Integrations", "integrations.index", STAFF),
    ("Admin", "admin.users", ("admin",)),
)
# Blueprints whose pages sit under a section that another blueprint's endpoint opens.
SECTION_OF = {
    "webhooks_admin": "admin",
    "crm_sync": "admin",
    "campaigns": "conversations",
    "message_templates": "conversations",
}


def inject_navigation() -> dict:
    # A callable: fragments (most htmx responses) do not show the navigation, so they do
    # not build its links.
    return {"navigation": navigation}


def navigation() -> list[dict]:
    """The signed-in user's sections, the current one marked active."""
    # Error pages for a broken database must render without loading the user.
    if g.get("degraded") or not current_user.is_authenticated:
        return []
    current_bp = request.blueprints[0] if request.blueprints else None
    current_bp = SECTION_OF.get(current_bp, current_bp)
    items = []
    for label, endpoint, roles in SECTIONS:
        if current_user.role not in roles:
            continue
        built = endpoint in current_app.view_functions
        items.append(
            {
                "label": label,
                "url": url_for(endpoint) if built else None,
                "active": built and endpoint.split(".")[0] == current_bp,
            }
        )
    return items
