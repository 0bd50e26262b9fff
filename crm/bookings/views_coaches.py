"""Placeholder: a helper fills this module."""

from crm.bookings.views import bp  # noqa: F401
