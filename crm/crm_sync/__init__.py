"""CRM sync: contacts pushed to an external HubSpot-compatible CRM, state per contact.

Importing the package registers the session listeners that notice contact writes.
"""

from crm.crm_sync import tracking  # noqa: F401
