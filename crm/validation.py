"""Checks of typed input shared by every domain's forms."""

from __future__ import annotations

import re

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def is_email(value: str) -> bool:
    """A plausible address: something@domain.tld, no spaces."""
    return bool(_EMAIL_RE.match(value))
