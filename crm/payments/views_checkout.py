"""Placeholder: a helper fills this module."""

from crm.payments.views import bp  # noqa: F401
