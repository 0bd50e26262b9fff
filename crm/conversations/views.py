"""Conversations pages: the inbox and the thread view (blueprint `conversations`)."""

from __future__ import annotations

from flask import Blueprint

# Registrations: webhook handlers and the contact sources (timeline, merge).
from crm.conversations import handlers, timeline  # noqa: F401

bp = Blueprint("conversations", __name__, url_prefix="/conversations")


@bp.get("/<int:conversation_id>")
def show(conversation_id: int):
    """One thread: its messages, their delivery ticks and the composer."""
    raise NotImplementedError
