"""A Calendly API v2 fake (one coach's account) with its OAuth token endpoint.

One server answers both bases: the API under `/api` (CALENDLY_API_BASE) and OAuth under
`/auth` (CALENDLY_AUTH_BASE), so a call sent to the wrong base fails as it would for real.
Shapes follow the Calendly OpenAPI (`calendly-openapi.yaml`) and reference sections 3.1-3.5.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
import time
import uuid as uuidlib
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from werkzeug.routing import Map, Rule, Submount
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from tests.fakes.server import Fake, json_response

EVENTS = {"invitee.created", "invitee.canceled", "routing_form_submission.created"}
_STATUS_TITLES = {
    400: "Invalid Argument",
    401: "Unauthenticated",
    403: "Permission Denied",
    404: "Resource Not Found",
    409: "Already Exists",
    429: "Too Many Requests",
}
_INVALID_GRANT = (
    "The provided authorization grant is invalid, expired, revoked, does not match the "
    "redirection URI used in the authorization request, or was issued to another client."
)


def iso(moment: datetime) -> str:
    """Calendly's timestamp format: UTC with microseconds and a `Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _uuid() -> str:
    return uuidlib.uuid4().hex[:16].upper()


def _invalid(parameter: str, message: str) -> Response:
    return _error(
        400, "The supplied parameters are invalid.", [{"parameter": parameter, "message": message}]
    )


def _error(status: int, message: str, details: list | None = None, headers=None) -> Response:
    body = {"title": _STATUS_TITLES.get(status, "Internal Server Error"), "message": message}
    if details:
        body["details"] = details
    return json_response(body, status, headers)


class CalendlyFake(Fake):
    """users/me, event types, scheduled events, invitees, cancellation, available times,
    webhook subscriptions; OAuth with single-use refresh tokens."""

    rules = Map(
        [
            Submount(
                "/api",
                [
                    Rule("/users/me", endpoint="users_me", methods=["GET"]),
                    Rule("/event_types", endpoint="event_types", methods=["GET"]),
                    Rule("/scheduled_events", endpoint="scheduled_events", methods=["GET"]),
                    Rule("/scheduled_events/<uuid>", endpoint="scheduled_event", methods=["GET"]),
                    Rule("/scheduled_events/<uuid>/invitees", endpoint="invitees", methods=["GET"]),
                    Rule(
                        "/scheduled_events/<uuid>/cancellation",
                        endpoint="cancellation",
                        methods=["POST"],
                    ),
                    Rule(
                        "/event_type_available_times",
                        endpoint="available_times",
                        methods=["GET"],
                    ),
                    Rule(
                        "/webhook_subscriptions",
                        endpoint="subscriptions_create",
                        methods=["POST"],
                    ),
                    Rule("/webhook_subscriptions", endpoint="subscriptions_list", methods=["GET"]),
                    Rule(
                        "/webhook_subscriptions/<uuid>",
                        endpoint="subscriptions_delete",
                        methods=["DELETE"],
                    ),
                ],
            ),
            Submount(
                "/auth",
                [
                    Rule("/oauth/authorize", endpoint="oauth_authorize", methods=["GET"]),
                    Rule("/oauth/token", endpoint="oauth_token", methods=["POST"]),
                ],
            ),
        ]
    )

    user_uuid = "RAPPORTCOACH0001"
    org_uuid = "RAPPORTORG000001"
    user_name = "Casey Coach"
    user_email = "coach@example.com"

    def __init__(self) -> None:
        self.client_id = "calendly-client-" + hashlib.sha256(b"id").hexdigest()[:12]
        self.client_secret = "calendly-secret-" + hashlib.sha256(b"secret").hexdigest()[:24]
        self.signing_key = "calendly-signing-" + hashlib.sha256(b"key").hexdigest()[:24]
        self.access_token_ttl = 7200
        super().__init__()

    def reset_state(self) -> None:
        self.access_token_ttl = 7200
        self.access_tokens: dict[str, float] = {}  # token -> expires at (epoch seconds)
        self.refresh_tokens: dict[str, bool] = {}  # token -> already used
        self.codes: dict[str, dict] = {}
        self.events: dict[str, dict] = {}
        self.subscriptions: dict[str, dict] = {}
        self.available_slots: list[datetime] | None = None
        self._page_tokens: dict[str, int] = {}
        self.kinds = [
            {
                "uuid": "RAPPORTTYPE00030",
                "name": "30 Minute Meeting",
                "slug": "30min",
                "duration": 30,
            },
            {
                "uuid": "RAPPORTTYPE00015",
                "name": "Discovery Call",
                "slug": "discovery",
                "duration": 15,
            },
        ]

    def config(self) -> dict:
        return {
            "CALENDLY_CLIENT_ID": self.client_id,
            "CALENDLY_CLIENT_SECRET": self.client_secret,
            "CALENDLY_WEBHOOK_SIGNING_KEY": self.signing_key,
            "CALENDLY_API_BASE": self.api_base,
            "CALENDLY_AUTH_BASE": self.auth_base,
        }

    @property
    def api_base(self) -> str:
        return f"{self.url}/api"

    @property
    def auth_base(self) -> str:
        return f"{self.url}/auth"

    @property
    def user_uri(self) -> str:
        return f"{self.api_base}/users/{self.user_uuid}"

    @property
    def organization_uri(self) -> str:
        return f"{self.api_base}/organizations/{self.org_uuid}"

    # --- wire format ----------------------------------------------------------------

    def handle(self, request: Request, endpoint: str, args: dict) -> Response:
        response = super().handle(request, endpoint, args)
        if endpoint.startswith("oauth_"):
            return response
        # Every API answer carries the per-user limit headers (reference section 3.5).
        response.headers.update(
            {"X-RateLimit-Limit": "500", "X-RateLimit-Remaining": "499", "X-RateLimit-Reset": "60"}
        )
        return response

    def error(self, status: int, **details) -> Response:
        headers = None
        if status == 429:
            reset = str(details.get("retry_after", 60))
            headers = {
                "X-RateLimit-Limit": "500",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": reset,
            }
        default = "The server encountered an unexpected condition that prevented it from "
        default += "fulfilling the request."
        message = details.get("message") or ("Too many requests" if status == 429 else default)
        return _error(status, message, headers=headers)

    def not_found(self, request, exc) -> Response:
        return _error(404, "The server could not find the requested resource.")

    def authenticate(self, request: Request, endpoint: str) -> Response | None:
        if endpoint.startswith("oauth_"):
            return None  # the token endpoint checks client credentials itself
        auth = request.authorization
        if auth is None or auth.type != "bearer" or auth.token not in self.access_tokens:
            return _error(401, "The access token is invalid")
        if self.access_tokens[auth.token] <= time.time():
            return _error(401, "The access token is expired")
        return None

    # --- OAuth ----------------------------------------------------------------------

    def authorization_code(self, redirect_uri: str) -> str:
        """A code as Calendly hands it back after the user approves (valid 10 minutes)."""
        code = secrets.token_urlsafe(24)
        with self.lock:
            self.codes[code] = {
                "redirect_uri": redirect_uri,
                "used": False,
                "expires_at": time.time() + 600,
            }
        return code

    def issue_token(self) -> dict:
        """A fresh token pair, as a completed OAuth exchange would give."""
        with self.lock:
            access = secrets.token_urlsafe(32)
            refresh = secrets.token_urlsafe(32)
            self.access_tokens[access] = time.time() + self.access_token_ttl
            self.refresh_tokens[refresh] = False
            return {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": self.access_token_ttl,
                "refresh_token": refresh,
                "scope": "default",
                "created_at": int(time.time()),
                "owner": self.user_uri,
                "organization": self.organization_uri,
            }

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far expired (a refresh is then needed)."""
        with self.lock:
            for access in self.access_tokens:
                self.access_tokens[access] = 0.0

    def oauth_authorize(self, request: Request) -> Response:
        if request.args.get("client_id") != self.client_id:
            return json_response({"error": "invalid_client"}, 400)
        if request.args.get("response_type") != "code":
            return json_response({"error": "unsupported_response_type"}, 400)
        redirect_uri = request.args.get("redirect_uri", "")
        query = {"code": self.authorization_code(redirect_uri)}
        if "state" in request.args:
            query["state"] = request.args["state"]
        separator = "&" if "?" in redirect_uri else "?"
        return redirect(f"{redirect_uri}{separator}{urlencode(query)}", 302)

    def oauth_token(self, request: Request) -> Response:
        auth = request.authorization
        if auth is not None and auth.type == "basic":
            client_id, client_secret = auth.username, auth.password
        else:
            client_id = request.form.get("client_id")
            client_secret = request.form.get("client_secret")
        if client_id != self.client_id or client_secret != self.client_secret:
            return json_response(
                {
                    "error": "invalid_client",
                    "error_description": "Client authentication failed due to unknown client, no "
                    "client authentication included, or unsupported authentication method.",
                },
                401,
            )
        grant = request.form.get("grant_type")
        if grant == "authorization_code":
            code = self.codes.get(request.form.get("code", ""))
            if (
                code is None
                or code["used"]
                or code["expires_at"] < time.time()
                or code["redirect_uri"] != request.form.get("redirect_uri")
            ):
                return json_response(
                    {"error": "invalid_grant", "error_description": _INVALID_GRANT}, 400
                )
            code["used"] = True
        elif grant == "refresh_token":
            refresh = request.form.get("refresh_token", "")
            if self.refresh_tokens.get(refresh, True):  # unknown or already used
                return json_response(
                    {"error": "invalid_grant", "error_description": _INVALID_GRANT}, 400
                )
            self.refresh_tokens[refresh] = True
        else:
            return json_response({"error": "unsupported_grant_type"}, 400)
        return json_response(self.issue_token())

    # --- data the tests set up ------------------------------------------------------

    def add_scheduled_event(
        self,
        *,
        start_time: datetime | None = None,
        event_type: int = 0,
        invitees: list[tuple[str, str]] = (("ana@example.com", "Ana Silva"),),
        status: str = "active",
    ) -> dict:
        """Book an event (default: tomorrow) with `invitees` as (email, name); return it."""
        kind = self.kinds[event_type]
        start = (start_time or datetime.now(UTC) + timedelta(days=1)).astimezone(UTC)
        created = datetime.now(UTC)
        event = {
            "uuid": _uuid(),
            "type": kind,
            "status": status,
            "start": start,
            "end": start + timedelta(minutes=kind["duration"]),
            "created": created,
            "updated": created,
            "cancellation": None,
            "invitees": [],
        }
        for email, name in invitees:
            first, _, last = name.partition(" ")
            event["invitees"].append(
                {
                    "uuid": _uuid(),
                    "email": email,
                    "name": name,
                    "first_name": first,
                    "last_name": last or None,
                    "status": status,
                    "created": created,
                }
            )
        with self.lock:
            self.events[event["uuid"]] = event
            return self._render_event(event)

    def invitee_payload(self, event_uuid: str, email: str | None = None) -> dict:
        """The webhook `payload` (an Invitee with its `scheduled_event`) for one invitee."""
        with self.lock:
            event = self.events[event_uuid]
            invitee = next(i for i in event["invitees"] if email in (None, i["email"]))
            payload = self._render_invitee(event, invitee)
            payload["scheduled_event"] = self._render_event(event)
            return payload

    def webhook(
        self,
        event: str,
        payload: dict,
        *,
        key: str | None = None,
        timestamp: int | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A webhook body and its headers, signed `t=…,v1=hex(HMAC-SHA256(key, "t.body"))`."""
        body = json.dumps(
            {
                "event": event,
                "created_at": iso(datetime.now(UTC)),
                "created_by": self.user_uri,
                "payload": payload,
            }
        ).encode()
        return body, {
            "Calendly-Webhook-Signature": signature_header(
                body, key or self.signing_key, timestamp=timestamp
            ),
            "Content-Type": "application/json",
            "User-Agent": "Calendly",
        }

    # --- rendering ------------------------------------------------------------------

    def _event_uri(self, event: dict) -> str:
        return f"{self.api_base}/scheduled_events/{event['uuid']}"

    def _render_event(self, event: dict) -> dict:
        active = sum(1 for i in event["invitees"] if i["status"] == "active")
        rendered = {
            "uri": self._event_uri(event),
            "name": event["type"]["name"],
            "status": event["status"],
            "start_time": iso(event["start"]),
            "end_time": iso(event["end"]),
            "event_type": f"{self.api_base}/event_types/{event['type']['uuid']}",
            "location": {
                "type": "google_conference",
                "status": "pushed",
                "join_url": f"https://meet.google.com/{event['uuid'].lower()}",
            },
            "invitees_counter": {"total": len(event["invitees"]), "active": active, "limit": 1},
            "created_at": iso(event["created"]),
            "updated_at": iso(event["updated"]),
            "event_memberships": [
                {"user": self.user_uri, "user_email": self.user_email, "user_name": self.user_name}
            ],
            "event_guests": [],
            "calendar_event": None,
        }
        if event["cancellation"]:
            rendered["cancellation"] = copy.deepcopy(event["cancellation"])
        return rendered

    def _render_invitee(self, event: dict, invitee: dict) -> dict:
        uri = f"{self._event_uri(event)}/invitees/{invitee['uuid']}"
        rendered = {
            "uri": uri,
            "email": invitee["email"],
            "name": invitee["name"],
            "first_name": invitee["first_name"],
            "last_name": invitee["last_name"],
            "status": invitee["status"],
            "event": self._event_uri(event),
            "timezone": "UTC",
            "created_at": iso(invitee["created"]),
            "updated_at": iso(event["updated"]),
            "cancel_url": f"https://calendly.com/cancellations/{invitee['uuid']}",
            "reschedule_url": f"https://calendly.com/reschedulings/{invitee['uuid']}",
            "rescheduled": False,
            "old_invitee": None,
            "new_invitee": None,
            "questions_and_answers": [],
            "tracking": {
                k: None
                for k in (
                    "utm_campaign",
                    "utm_source",
                    "utm_medium",
                    "utm_content",
                    "utm_term",
                    "salesforce_uuid",
                )
            },
            "text_reminder_number": None,
            "routing_form_submission": None,
            "payment": None,
            "no_show": None,
            "reconfirmation": None,
            "canceled": invitee["status"] == "canceled",
        }
        if event["cancellation"]:
            rendered["cancellation"] = copy.deepcopy(event["cancellation"])
        return rendered

    def _render_event_type(self, kind: dict) -> dict:
        return {
            "uri": f"{self.api_base}/event_types/{kind['uuid']}",
            "name": kind["name"],
            "active": True,
            "slug": kind["slug"],
            "scheduling_url": f"https://calendly.com/casey-coach/{kind['slug']}",
            "duration": kind["duration"],
            "kind": "solo",
            "pooling_type": None,
            "type": "StandardEventType",
            "color": "#0069ff",
            "created_at": "2024-01-02T03:04:05.678123Z",
            "updated_at": "2024-01-02T03:04:05.678123Z",
            "internal_note": None,
            "description_plain": None,
            "description_html": None,
            "profile": {"type": "User", "name": self.user_name, "owner": self.user_uri},
            "secret": False,
            "booking_method": "instant",
            "custom_questions": [],
            "deleted_at": None,
            "admin_managed": False,
        }

    def _render_subscription(self, sub: dict) -> dict:
        return {k: v for k, v in sub.items() if k not in ("uuid", "signing_key")}

    def _page(self, request: Request, path: str, items: list) -> Response:
        """One page of `items` with Calendly's `pagination` block (count, page tokens)."""
        try:
            count = int(request.args.get("count", 20))
        except ValueError:
            count = 0
        if not 1 <= count <= 100:
            return _invalid("count", "must be between 1 and 100")
        page_token = request.args.get("page_token")
        if page_token is not None and page_token not in self._page_tokens:
            return _invalid("page_token", "is invalid")
        offset = self._page_tokens.get(page_token, 0) if page_token else 0
        page = items[offset : offset + count]

        def link(start: int) -> tuple[str, str]:
            page_token = secrets.token_urlsafe(18)
            self._page_tokens[page_token] = start
            query = [(k, v) for k, v in request.args.items(multi=True) if k != "page_token"]
            return (
                page_token,
                f"{self.api_base}{path}?{urlencode(query + [('page_token', page_token)])}",
            )

        next_token = next_page = previous_token = previous_page = None
        if offset + count < len(items):
            next_token, next_page = link(offset + count)
        if offset > 0:
            previous_token, previous_page = link(max(0, offset - count))
        return json_response(
            {
                "collection": page,
                "pagination": {
                    "count": len(page),
                    "next_page": next_page,
                    "previous_page": previous_page,
                    "next_page_token": next_token,
                    "previous_page_token": previous_token,
                },
            }
        )

    def _scope_error(self, request: Request) -> Response | None:
        user = request.args.get("user")
        organization = request.args.get("organization")
        if not user and not organization:
            return _invalid("user", "user or organization is required")
        if user not in (None, self.user_uri) or organization not in (None, self.organization_uri):
            return _error(403, "You do not have permission to access this resource.")
        return None

    # --- API endpoints --------------------------------------------------------------

    def users_me(self, request: Request) -> Response:
        return json_response(
            {
                "resource": {
                    "uri": self.user_uri,
                    "name": self.user_name,
                    "slug": "casey-coach",
                    "email": self.user_email,
                    "scheduling_url": "https://calendly.com/casey-coach",
                    "timezone": "UTC",
                    "avatar_url": None,
                    "created_at": "2024-01-02T03:04:05.678123Z",
                    "updated_at": "2024-01-02T03:04:05.678123Z",
                    "current_organization": self.organization_uri,
                }
            }
        )

    def event_types(self, request: Request) -> Response:
        if failure := self._scope_error(request):
            return failure
        items = [self._render_event_type(kind) for kind in self.kinds]
        return self._page(request, "/event_types", items)

    def scheduled_events(self, request: Request) -> Response:
        if failure := self._scope_error(request):
            return failure
        args = request.args
        try:
            low = parse_iso(args["min_start_time"]) if "min_start_time" in args else None
            high = parse_iso(args["max_start_time"]) if "max_start_time" in args else None
        except ValueError:
            return _invalid("min_start_time", "invalid time")
        events = [
            e
            for e in self.events.values()
            if args.get("status") in (None, e["status"])
            and (low is None or e["start"] >= low)
            and (high is None or e["start"] <= high)
            and (
                "invitee_email" not in args
                or any(i["email"] == args["invitee_email"] for i in e["invitees"])
            )
        ]
        events.sort(key=lambda e: e["start"], reverse=args.get("sort") == "start_time:desc")
        return self._page(request, "/scheduled_events", [self._render_event(e) for e in events])

    def scheduled_event(self, request: Request, uuid: str) -> Response:
        if uuid not in self.events:
            return self.not_found(request, None)
        return json_response({"resource": self._render_event(self.events[uuid])})

    def invitees(self, request: Request, uuid: str) -> Response:
        event = self.events.get(uuid)
        if event is None:
            return self.not_found(request, None)
        items = [
            self._render_invitee(event, i)
            for i in event["invitees"]
            if request.args.get("status") in (None, i["status"])
            and request.args.get("email") in (None, i["email"])
        ]
        return self._page(request, f"/scheduled_events/{uuid}/invitees", items)

    def cancellation(self, request: Request, uuid: str) -> Response:
        event = self.events.get(uuid)
        if event is None:
            return self.not_found(request, None)
        if event["status"] == "canceled":
            return _error(403, "Event is already canceled")
        if event["start"] <= datetime.now(UTC):
            return _error(403, "Event in the past")
        reason = (request.get_json(silent=True) or {}).get("reason") or ""
        if len(reason) > 10000:
            return _invalid("reason", "is too long")
        now = datetime.now(UTC)
        event["cancellation"] = {
            "canceled_by": self.user_name,
            "reason": reason,
            "canceler_type": "host",
            "created_at": iso(now),
        }
        event["status"] = "canceled"
        event["updated"] = now
        for invitee in event["invitees"]:
            invitee["status"] = "canceled"
        return json_response({"resource": copy.deepcopy(event["cancellation"])}, 201)

    def available_times(self, request: Request) -> Response:
        args = request.args
        kind = next(
            (
                k
                for k in self.kinds
                if args.get("event_type") == f"{self.api_base}/event_types/{k['uuid']}"
            ),
            None,
        )
        if kind is None:
            return _invalid("event_type", "is invalid")
        try:
            start, end = parse_iso(args["start_time"]), parse_iso(args["end_time"])
        except (KeyError, ValueError):
            return _invalid("start_time", "is required")
        if start < datetime.now(UTC):
            return _invalid("start_time", "must be in the future")
        if end <= start or end - start > timedelta(days=7):
            return _invalid("end_time", "date range can be no greater than 1 week (7 days)")
        if self.available_slots is not None:
            slots = [s for s in self.available_slots if start <= s <= end]
        else:
            slots = []
            day = start.replace(hour=0, minute=0, second=0, microsecond=0)
            while day <= end:
                slots += [
                    day.replace(hour=h) for h in (15, 20) if start <= day.replace(hour=h) <= end
                ]
                day += timedelta(days=1)
        booked = {e["start"] for e in self.events.values() if e["status"] == "active"}
        collection = [
            {
                "status": "available",
                "invitees_remaining": 1,
                "start_time": iso(slot),
                "scheduling_url": f"https://calendly.com/casey-coach/{kind['slug']}/"
                f"{slot.strftime('%Y-%m-%dT%H:%M:%SZ')}?month={slot:%Y-%m}&date={slot:%Y-%m-%d}",
            }
            for slot in sorted(slots)
            if slot not in booked
        ]
        return json_response({"collection": collection})

    def subscriptions_create(self, request: Request) -> Response:
        body = request.get_json(silent=True) or {}
        details = [
            {"parameter": name, "message": "is required"}
            for name in ("url", "events", "organization", "scope")
            if not body.get(name)
        ]
        if body.get("scope") == "user" and not body.get("user"):
            details.append({"parameter": "user", "message": "is required for user scope"})
        unknown = set(body.get("events") or []) - EVENTS
        if unknown:
            details.append({"parameter": "events", "message": f"unknown: {sorted(unknown)}"})
        if details:
            return _error(400, "The supplied parameters are invalid.", details)
        if body["organization"] != self.organization_uri:
            return _error(403, "You do not have permission to access this resource.")
        if any(s["callback_url"] == body["url"] for s in self.subscriptions.values()):
            return _error(409, "Hook with this url already exists")
        sub_uuid = str(uuidlib.uuid4())
        stamp = iso(datetime.now(UTC))
        self.subscriptions[sub_uuid] = {
            "uuid": sub_uuid,
            "uri": f"{self.api_base}/webhook_subscriptions/{sub_uuid}",
            "callback_url": body["url"],
            "created_at": stamp,
            "updated_at": stamp,
            "retry_started_at": None,
            "state": "active",
            "events": list(body["events"]),
            "scope": body["scope"],
            "organization": body["organization"],
            "user": body.get("user"),
            "creator": self.user_uri,
            "signing_key": body.get("signing_key"),
        }
        return json_response(
            {"resource": self._render_subscription(self.subscriptions[sub_uuid])}, 201
        )

    def subscriptions_list(self, request: Request) -> Response:
        if not request.args.get("organization") or not request.args.get("scope"):
            return _invalid("organization", "is required")
        items = [
            self._render_subscription(s)
            for s in self.subscriptions.values()
            if s["organization"] == request.args["organization"]
            and s["scope"] == request.args["scope"]
            and request.args.get("user") in (None, s["user"])
        ]
        return self._page(request, "/webhook_subscriptions", items)

    def subscriptions_delete(self, request: Request, uuid: str) -> Response:
        if self.subscriptions.pop(uuid, None) is None:
            return self.not_found(request, None)
        return Response(status=204)

    def subscription_signing_key(self, callback_url: str) -> str | None:
        """The signing key a subscription for `callback_url` was created with."""
        with self.lock:
            for sub in self.subscriptions.values():
                if sub["callback_url"] == callback_url:
                    return sub["signing_key"]
        return None


def signature_header(body: bytes, key: str, *, timestamp: int | None = None) -> str:
    """`t=…,v1=…` over `f"{t}.{body}"`, HMAC-SHA256 hex (reference section 3.1)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
