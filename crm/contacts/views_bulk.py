"""Bulk actions over selected or matching contacts, undo and the trash."""

from __future__ import annotations

from crm.contacts.views import bp  # noqa: F401
