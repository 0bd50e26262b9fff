"""Placeholder: a helper fills this module."""
