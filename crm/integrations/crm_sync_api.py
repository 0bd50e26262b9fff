"""The external CRM (a HubSpot-compatible REST API at CRM_SYNC_URL): batch upsert and archive.

Contacts are upserted by a unique property (`email` or `phone`), so pushing the same
contact twice updates one record. Every request goes through `policy.call("crm_sync", ...)`.
"""

from __future__ import annotations

from collections.abc import Iterable

import requests
from flask import current_app

from crm.integrations import policy

SETTINGS = ("CRM_SYNC_URL", "CRM_SYNC_TOKEN")
BATCH_LIMIT = 100  # the API refuses larger batches
CONTACTS = "/crm/v3/objects/contacts"


def missing_settings() -> list[str]:
    """Return the settings CRM sync still needs; empty when it can be used."""
    return [name for name in SETTINGS if not current_app.config.get(name)]


def _call(operation: str, method: str, path: str, **kwargs) -> requests.Response:
    missing = missing_settings()
    if missing:
        raise policy.PermanentError(f"not configured: {', '.join(missing)} missing", "crm_sync")
    config = current_app.config
    url = config["CRM_SYNC_URL"].rstrip("/") + path
    headers = {"Authorization": f"Bearer {config['CRM_SYNC_TOKEN']}"}

    def request() -> requests.Response:
        response = requests.request(
            method, url, headers=headers, timeout=policy.timeout(), **kwargs
        )
        response.raise_for_status()
        return response

    return policy.call("crm_sync", request, operation=operation)


def _check_size(items: list) -> None:
    if len(items) > BATCH_LIMIT:
        raise ValueError(f"at most {BATCH_LIMIT} contacts per batch, got {len(items)}")


def check_health() -> None:
    """List one contact: the cheapest authenticated request the CRM answers."""
    _call("health", "GET", CONTACTS, params={"limit": 1})


def batch_upsert(inputs: list[dict]) -> list[dict]:
    """Create or update up to 100 contacts; return the CRM's results (id, properties, new).

    Each input is `{"idProperty": "email" | "phone", "id": value, "properties": {...}}`.
    """
    _check_size(inputs)
    if not inputs:
        return []
    response = _call("batch_upsert", "POST", f"{CONTACTS}/batch/upsert", json={"inputs": inputs})
    return response.json()["results"]


def batch_archive(ids: Iterable[str | int]) -> None:
    """Archive (delete) up to 100 contacts by their CRM ids."""
    inputs = [{"id": str(crm_id)} for crm_id in ids]
    _check_size(inputs)
    if inputs:
        _call("batch_archive", "POST", f"{CONTACTS}/batch/archive", json={"inputs": inputs})
