"""Every model, imported in one place for Alembic and the shell."""

from crm.audit.models import AuditEntry
from crm.contacts.models import Contact, Note, Tag, contact_tags
from crm.users.models import User

__all__ = ["AuditEntry", "Contact", "Note", "Tag", "User", "contact_tags"]
