"""A HubSpot-compatible CRM fake: batch upsert and archive of contacts, Bearer auth.

Contacts are kept by their id property (email, lower-cased, or phone), so repeating an
upsert updates the same record. Every call is recorded to assert batching and coalescing.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import uuid
from datetime import UTC, datetime

from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from tests.fakes.server import Fake, json_response

BATCH_LIMIT = 100
ID_PROPERTIES = ("email", "phone")
CONTACTS = "/crm/v3/objects/contacts"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _key(id_property: str, value: str) -> tuple[str, str]:
    value = value.strip()
    return id_property, value.lower() if id_property == "email" else value


def _error(status: int, category: str, message: str, headers=None, **extra) -> Response:
    body = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
        **extra,
    }
    return json_response(body, status, headers)


class CrmFake(Fake):
    """`/crm/v3/objects/contacts`: list (health), batch upsert (≤ 100), batch archive."""

    rules = Map(
        [
            Rule(CONTACTS, endpoint="contacts_list", methods=["GET"]),
            Rule(f"{CONTACTS}/batch/upsert", endpoint="batch_upsert", methods=["POST"]),
            Rule(f"{CONTACTS}/batch/archive", endpoint="batch_archive", methods=["POST"]),
        ]
    )

    def __init__(self) -> None:
        self.token = "pat-rapport-" + hashlib.sha256(b"crm-fake").hexdigest()[:24]
        super().__init__()

    def reset_state(self) -> None:
        self.contacts: dict[str, dict] = {}  # crm id -> {"properties", "archived", ...}
        self._index: dict[tuple[str, str], str] = {}
        self._ids = itertools.count(501)

    def config(self) -> dict:
        return {"CRM_SYNC_URL": self.url, "CRM_SYNC_TOKEN": self.token}

    # --- wire format ----------------------------------------------------------------

    def error(self, status: int, **details) -> Response:
        headers = {}
        if "retry_after" in details:
            headers["Retry-After"] = str(details["retry_after"])
        if status == 429:
            return _error(
                429,
                "RATE_LIMITS",
                details.get("message") or "You have reached your secondly limit.",
                headers,
                errorType="RATE_LIMIT",
                policyName="SECONDLY",
            )
        if status >= 500:
            return _error(
                status, "INTERNAL_ERROR", details.get("message") or "internal error", headers
            )
        return _error(
            status, "VALIDATION_ERROR", details.get("message") or "Invalid input", headers
        )

    def authenticate(self, request: Request, endpoint: str) -> Response | None:
        auth = request.authorization
        if auth is None or auth.type != "bearer" or auth.token != self.token:
            return _error(
                401,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
            )
        return None

    def not_found(self, request, exc) -> Response:
        return _error(404, "OBJECT_NOT_FOUND", f"Unknown path {request.path}")

    # --- queries for tests ----------------------------------------------------------

    def contact(self, *, email: str | None = None, phone: str | None = None) -> dict | None:
        """The stored contact (id, properties, archived) found by email or phone."""
        key = _key("email", email) if email else _key("phone", phone or "")
        with self.lock:
            crm_id = self._index.get(key)
            return copy.deepcopy(self.contacts[crm_id]) if crm_id else None

    def upserted(self) -> list[list[dict]]:
        """The `inputs` of every upsert call, oldest first."""
        return [r.json["inputs"] for r in self.calls("batch_upsert") if r.json]

    # --- endpoints ------------------------------------------------------------------

    def _inputs(self, request: Request) -> list | Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            return _error(400, "VALIDATION_ERROR", 'Invalid input JSON: expected {"inputs": []}')
        inputs = body["inputs"]
        if len(inputs) > BATCH_LIMIT:
            return _error(
                400,
                "VALIDATION_ERROR",
                f"inputs: size must be between 0 and {BATCH_LIMIT}; got {len(inputs)}",
            )
        return inputs

    def batch_upsert(self, request: Request) -> Response:
        inputs = self._inputs(request)
        if isinstance(inputs, Response):
            return inputs
        keys = []
        for item in inputs:
            id_property = item.get("idProperty")
            if id_property not in ID_PROPERTIES or not str(item.get("id") or "").strip():
                return _error(
                    400,
                    "VALIDATION_ERROR",
                    f"idProperty must be one of {list(ID_PROPERTIES)} and id must be set",
                )
            keys.append(_key(id_property, str(item["id"])))
        duplicates = sorted({k[1] for k in keys if keys.count(k) > 1})
        if duplicates:
            return _error(
                400, "VALIDATION_ERROR", f"Duplicate IDs found in batch input: {duplicates}"
            )
        started = _stamp()
        results = [
            self._upsert(key, item.get("properties") or {})
            for key, item in zip(keys, inputs, strict=True)
        ]
        return json_response(
            {
                "status": "COMPLETE",
                "results": results,
                "startedAt": started,
                "completedAt": _stamp(),
            }
        )

    def _upsert(self, key: tuple[str, str], properties: dict) -> dict:
        stamp = _stamp()
        crm_id = self._index.get(key)
        new = crm_id is None or self.contacts[crm_id]["archived"]
        if new:
            crm_id = str(next(self._ids))
            self.contacts[crm_id] = {
                "id": crm_id,
                "properties": {"hs_object_id": crm_id, "createdate": stamp},
                "createdAt": stamp,
                "archived": False,
            }
        contact = self.contacts[crm_id]
        contact["properties"].update(properties)
        contact["properties"]["lastmodifieddate"] = stamp
        contact["updatedAt"] = stamp
        self._index[key] = crm_id
        for name in ID_PROPERTIES:
            if contact["properties"].get(name):
                self._index[_key(name, str(contact["properties"][name]))] = crm_id
        return {
            "id": crm_id,
            "properties": dict(contact["properties"]),
            "createdAt": contact["createdAt"],
            "updatedAt": stamp,
            "archived": False,
            "new": new,
        }

    def batch_archive(self, request: Request) -> Response:
        inputs = self._inputs(request)
        if isinstance(inputs, Response):
            return inputs
        for item in inputs:
            contact = self.contacts.get(str(item.get("id")))
            if contact:  # unknown ids are ignored, as HubSpot does
                contact["archived"] = True
                contact["archivedAt"] = _stamp()
        return Response(status=204)

    def contacts_list(self, request: Request) -> Response:
        try:
            limit = max(1, min(100, int(request.args.get("limit", 10))))
            after = int(request.args.get("after", 0))
        except ValueError:
            return _error(400, "VALIDATION_ERROR", "limit and after must be integers")
        live = [c for c in self.contacts.values() if not c["archived"]]
        page = live[after : after + limit]
        body: dict = {"results": [self._public(c) for c in page]}
        if after + limit < len(live):
            next_after = str(after + limit)
            body["paging"] = {
                "next": {
                    "after": next_after,
                    "link": f"{self.url}{CONTACTS}?limit={limit}&after={next_after}",
                }
            }
        return json_response(body)

    @staticmethod
    def _public(contact: dict) -> dict:
        return {
            "id": contact["id"],
            "properties": dict(contact["properties"]),
            "createdAt": contact["createdAt"],
            "updatedAt": contact["updatedAt"],
            "archived": contact["archived"],
        }

    def stored_emails(self) -> list[str]:
        """Emails of the contacts not archived, sorted."""
        with self.lock:
            return sorted(
                c["properties"]["email"]
                for c in self.contacts.values()
                if not c["archived"] and c["properties"].get("email")
            )
