"""Write the audit log. Every service that changes data calls record_change."""

from __future__ import annotations

from typing import Any

from crm.audit.models import AuditEntry
from crm.extensions import db
from crm.users.models import User


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def diff(obj: Any, fields: dict[str, Any]) -> dict[str, list[Any]]:
    """Return {field: [old, new]} for the fields whose new value differs from obj's."""
    return {
        name: [_jsonable(getattr(obj, name)), _jsonable(new)]
        for name, new in fields.items()
        if getattr(obj, name) != new
    }


def record_change(
    action: str,
    object_type: str,
    object_id: int | None,
    changes: dict[str, Any] | None = None,
    *,
    actor: User | None,
) -> AuditEntry:
    """Add an audit entry to the session (flushed, not committed)."""
    entry = AuditEntry(
        actor_id=actor.id if actor is not None else None,
        action=action,
        object_type=object_type,
        object_id=object_id,
        changes=changes or {},
    )
    db.session.add(entry)
    db.session.flush()
    return entry
