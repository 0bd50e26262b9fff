"""CSV import: upload, column mapping, dry run, run, result and revert."""

from __future__ import annotations

from crm.contacts.views import bp  # noqa: F401
