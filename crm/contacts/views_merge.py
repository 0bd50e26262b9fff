"""Duplicates: the scan over existing contacts, merge with preview, and undo."""

from __future__ import annotations

from crm.contacts.views import bp  # noqa: F401
