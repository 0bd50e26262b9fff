"""Every model, imported in one place for Alembic and the shell."""

from crm.audit.models import AuditEntry
from crm.contacts.models import (
    BulkAction,
    Contact,
    ContactImport,
    ContactImportRow,
    ContactMerge,
    Note,
    SavedView,
    Tag,
    contact_tags,
)
from crm.users.models import User

__all__ = [
    "AuditEntry",
    "BulkAction",
    "Contact",
    "ContactImport",
    "ContactImportRow",
    "ContactMerge",
    "Note",
    "SavedView",
    "Tag",
    "User",
    "contact_tags",
]
