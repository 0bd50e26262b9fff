"""Every model, imported in one place for Alembic and the shell."""

from crm.audit.models import AuditEntry
from crm.bookings.models import (
    Booking,
    BookingEvent,
    BookingStep,
    CalendlyConnection,
    CoachProfile,
    Notification,
    Service,
    SessionNote,
    WorkflowStep,
)
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
from crm.conversations.models import (
    Campaign,
    CampaignRecipient,
    ConsentEvent,
    Conversation,
    Message,
    MessageStatusEvent,
    MessageTemplate,
    OptOut,
)
from crm.crm_sync.models import CrmSyncRun, CrmSyncState
from crm.users.models import User
from crm.webhooks.models import WebhookEvent

__all__ = [
    "Booking",
    "BookingEvent",
    "BookingStep",
    "CalendlyConnection",
    "CoachProfile",
    "Notification",
    "Service",
    "SessionNote",
    "WorkflowStep",
    "AuditEntry",
    "BulkAction",
    "Campaign",
    "CampaignRecipient",
    "ConsentEvent",
    "Conversation",
    "Message",
    "MessageStatusEvent",
    "MessageTemplate",
    "OptOut",
    "Contact",
    "ContactImport",
    "ContactImportRow",
    "ContactMerge",
    "CrmSyncRun",
    "CrmSyncState",
    "Note",
    "SavedView",
    "Tag",
    "User",
    "WebhookEvent",
    "contact_tags",
]
