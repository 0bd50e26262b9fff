"""Tags: add and remove on a contact, suggestions, and the tags admin page."""

from __future__ import annotations

from crm.contacts.views import bp  # noqa: F401
