"""A Twilio REST fake (Messages, Accounts) that twilio-python talks to unchanged.

It also builds what Twilio POSTs back to the app: signed status callbacks for the messages
it accepted and signed inbound-message webhooks (reference sections 1.2 and 1.3).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Sequence
from email.utils import formatdate

from twilio.request_validator import RequestValidator
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from tests.fakes.server import Fake, WebhookRequest, json_response, token

API = "/2010-04-01"
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
TERMINAL_ERRORS = {"failed": 30008, "undelivered": 30003}
# Carriers report delivery receipts only for these channels and statuses.
DLR_STATUSES = {"delivered", "undelivered"}

MESSAGES_PATH = "/webhooks/twilio/messages"
STATUS_PATH = "/webhooks/twilio/status"


def _now_rfc2822() -> str:
    return formatdate(usegmt=False).replace("-0000", "+0000")


def _error_body(status: int, code: int, message: str) -> dict:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


class TwilioFake(Fake):
    """Messages create/fetch/list and account fetch, Basic auth with AccountSid:AuthToken."""

    rules = Map(
        [
            Rule(f"{API}/Accounts/<account_sid>.json", endpoint="account_fetch", methods=["GET"]),
            Rule(
                f"{API}/Accounts/<account_sid>/Messages.json",
                endpoint="messages_create",
                methods=["POST"],
            ),
            Rule(
                f"{API}/Accounts/<account_sid>/Messages.json",
                endpoint="messages_list",
                methods=["GET"],
            ),
            Rule(
                f"{API}/Accounts/<account_sid>/Messages/<sid>.json",
                endpoint="message_fetch",
                methods=["GET"],
            ),
        ]
    )

    def __init__(self) -> None:
        self.account_sid = "AC" + hashlib.md5(b"rapport-twilio-fake").hexdigest()
        self.auth_token = hashlib.md5(b"rapport-twilio-fake-token").hexdigest()
        # Where the app under test receives webhooks; the fixture points it at the app.
        self.public_base_url: Callable[[], str] = lambda: "http://localhost"
        super().__init__()

    def reset_state(self) -> None:
        self.messages: dict[str, dict] = {}
        self._callback_urls: dict[str, str] = {}
        # (wall-clock time, sender) of every message accepted: rate-limit tests read it.
        self.accepted: list[tuple[float, str]] = []

    def config(self) -> dict:
        return {
            "TWILIO_ACCOUNT_SID": self.account_sid,
            "TWILIO_AUTH_TOKEN": self.auth_token,
            "TWILIO_API_BASE": self.url,
            # Twilio's magic test sender and its WhatsApp sandbox number (section 1.6).
            "TWILIO_SMS_FROM": "+15005550006",
            "TWILIO_WHATSAPP_FROM": "+14155238886",
            "TWILIO_MESSAGING_SERVICE_SID": None,
            # Tests send many messages from one number; rate-limit tests set their own.
            "RATE_LIMITS": {"twilio:sms": (1000.0, 1000), "twilio:whatsapp": (1000.0, 1000)},
        }

    # --- wire format ----------------------------------------------------------------

    def error(self, status: int, **details) -> Response:
        code = details.get("code") or {429: 20429, 401: 20003, 404: 20404}.get(status, status)
        message = details.get("message") or {
            21211: "The 'To' number is not a valid phone number.",
            21610: "Attempt to send to unsubscribed recipient",
            20429: "Too Many Requests",
        }.get(code, "Internal Server Error" if status >= 500 else "Bad Request")
        headers = {"Retry-After": str(details["retry_after"])} if "retry_after" in details else None
        return json_response(_error_body(status, code, message), status, headers)

    def authenticate(self, request: Request, endpoint: str) -> Response | None:
        auth = request.authorization
        if (
            auth is None
            or auth.type != "basic"
            or auth.username != self.account_sid
            or auth.password != self.auth_token
        ):
            return json_response(_error_body(401, 20003, "Authenticate"), 401)
        return None

    def not_found(self, request, exc) -> Response:
        message = f"The requested resource {request.path} was not found"
        return json_response(_error_body(404, 20404, message), 404)

    def _check_account(self, request: Request, account_sid: str) -> Response | None:
        if account_sid != self.account_sid:
            return self.not_found(request, None)
        return None

    def _uri(self, sid: str) -> str:
        return f"{API}/Accounts/{self.account_sid}/Messages/{sid}.json"

    # --- endpoints ------------------------------------------------------------------

    def account_fetch(self, request: Request, account_sid: str) -> Response:
        if missing := self._check_account(request, account_sid):
            return missing
        created = _now_rfc2822()
        return json_response(
            {
                "sid": self.account_sid,
                "owner_account_sid": self.account_sid,
                "friendly_name": "Rapport test account",
                "status": "active",
                "type": "Full",
                "date_created": created,
                "date_updated": created,
                "uri": f"{API}/Accounts/{self.account_sid}.json",
                "subresource_uris": {
                    "messages": f"{API}/Accounts/{self.account_sid}/Messages.json"
                },
            }
        )

    def messages_create(self, request: Request, account_sid: str) -> Response:
        if missing := self._check_account(request, account_sid):
            return missing
        form = request.form
        to = form.get("To", "")
        from_ = form.get("From")
        service = form.get("MessagingServiceSid")
        media = form.getlist("MediaUrl")
        if not to:
            return json_response(_error_body(400, 21604, "A 'To' phone number is required."), 400)
        if not E164.match(to.removeprefix("whatsapp:")):
            return self.error(400, code=21211, message=f"The 'To' number {to} is not valid.")
        if not from_ and not service:
            return json_response(_error_body(400, 21603, "A 'From' phone number is required."), 400)
        if not form.get("Body") and not media and not form.get("ContentSid"):
            return json_response(_error_body(400, 21602, "Message body is required."), 400)
        sid = ("MM" if media else "SM") + token(16)
        created = _now_rfc2822()
        message = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": form.get("Body", ""),
            "date_created": created,
            "date_sent": None,
            "date_updated": created,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": service,
            "num_media": str(len(media)),
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            # No callback is sent for this first status (reference section 1.3).
            "status": "accepted" if service else "queued",
            "subresource_uris": {"media": self._uri(sid).replace(".json", "/Media.json")},
            "to": to,
            "uri": self._uri(sid),
        }
        self.messages[sid] = message
        self.accepted.append((time.time(), from_ or service))
        if form.get("StatusCallback"):
            self._callback_urls[sid] = form["StatusCallback"]
        return json_response(message, 201)

    def message_fetch(self, request: Request, account_sid: str, sid: str) -> Response:
        if missing := self._check_account(request, account_sid):
            return missing
        if sid not in self.messages:
            return self.not_found(request, None)
        return json_response(self.messages[sid])

    def messages_list(self, request: Request, account_sid: str) -> Response:
        if missing := self._check_account(request, account_sid):
            return missing
        page_size = int(request.args.get("PageSize", 50))
        items = [
            m
            for m in reversed(self.messages.values())
            if request.args.get("To") in (None, m["to"])
            and request.args.get("From") in (None, m["from"])
        ][:page_size]
        uri = f"{API}/Accounts/{self.account_sid}/Messages.json?PageSize={page_size}&Page=0"
        return json_response(
            {
                "messages": items,
                "first_page_uri": uri,
                "next_page_uri": None,
                "previous_page_uri": None,
                "page": 0,
                "page_size": page_size,
                "start": 0,
                "end": max(0, len(items) - 1),
                "uri": uri,
            }
        )

    # --- webhooks back to the app ---------------------------------------------------

    def sign(self, url: str, params: dict) -> dict[str, str]:
        """Headers Twilio sends with a form POST to `url`, signed with the auth token."""
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        return {
            "X-Twilio-Signature": signature,
            "I-Twilio-Idempotency-Token": token(16),
            "User-Agent": "TwilioProxy/1.1",
            "Content-Type": "application/x-www-form-urlencoded",
        }

    def status_callback_requests(
        self, sid: str, statuses: Iterable[str], *, error_code: int | None = None
    ) -> list[WebhookRequest]:
        """The signed callbacks Twilio would POST as message `sid` moves through `statuses`.

        The stored message takes each status, so a later fetch sees the last one.
        """
        with self.lock:
            message = self.messages[sid]
            url = self._callback_urls.get(sid)
            if url is None:
                raise ValueError(f"message {sid} was created without a StatusCallback")
            deliveries = []
            for status in statuses:
                params = {
                    "MessageSid": sid,
                    "SmsSid": sid,
                    "MessageStatus": status,
                    "SmsStatus": status,
                    "AccountSid": self.account_sid,
                    "To": message["to"],
                    "ApiVersion": "2010-04-01",
                }
                if message["from"]:
                    params["From"] = message["from"]
                if message["messaging_service_sid"]:
                    params["MessagingServiceSid"] = message["messaging_service_sid"]
                message["status"] = status
                message["date_updated"] = _now_rfc2822()
                if status in TERMINAL_ERRORS:
                    code = error_code or TERMINAL_ERRORS[status]
                    params["ErrorCode"] = str(code)
                    message["error_code"] = code
                if status in DLR_STATUSES and not message["to"].startswith("whatsapp:"):
                    params["RawDlrDoneDate"] = "2601011200"
                if status == "sent":
                    message["date_sent"] = message["date_updated"]
                deliveries.append(WebhookRequest(url, params, self.sign(url, params)))
            return deliveries

    def deliver_status(
        self,
        sid: str,
        status: str,
        *,
        send: Callable[[WebhookRequest], object] | None = None,
        error_code: int | None = None,
    ):
        """Emit one signed status callback for `sid` through `send` (default: over HTTP)."""
        return self.advance(sid, [status], send=send, error_code=error_code)[0]

    def advance(
        self,
        sid: str,
        statuses: Sequence[str],
        *,
        send: Callable[[WebhookRequest], object] | None = None,
        error_code: int | None = None,
    ) -> list:
        """Emit the callbacks for `statuses` in order through `send` (default: over HTTP)."""
        send = send or WebhookRequest.send_http
        return [
            send(r) for r in self.status_callback_requests(sid, statuses, error_code=error_code)
        ]

    def deliver_status_http(
        self, sid: str, statuses: Sequence[str], *, error_code: int | None = None
    ) -> list[int]:
        """POST the callbacks to the StatusCallback URL (a real server); return status codes."""
        return self.advance(sid, statuses, error_code=error_code)

    def inbound_message(
        self,
        from_: str,
        to: str,
        body: str = "",
        *,
        media: Sequence[str | tuple[str, str]] = (),
        whatsapp: bool = False,
        messaging_service_sid: str | None = None,
        profile_name: str | None = None,
        url: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> WebhookRequest:
        """A signed inbound SMS/MMS/WhatsApp webhook as Twilio POSTs it (section 1.2).

        `media` holds URLs or (URL, content type) pairs; `extra` adds or overrides fields.
        """
        if whatsapp:
            from_ = from_ if from_.startswith("whatsapp:") else f"whatsapp:{from_}"
            to = to if to.startswith("whatsapp:") else f"whatsapp:{to}"
        sid = ("MM" if media and not whatsapp else "SM") + token(16)
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "SmsMessageSid": sid,
            "AccountSid": self.account_sid,
            "From": from_,
            "To": to,
            "Body": body,
            "NumMedia": str(len(media)),
            "NumSegments": "1",
            "SmsStatus": "received",
            "ApiVersion": "2010-04-01",
        }
        for n, item in enumerate(media):
            media_url, content_type = item if isinstance(item, tuple) else (item, "image/jpeg")
            params[f"MediaUrl{n}"] = media_url
            params[f"MediaContentType{n}"] = content_type
        if messaging_service_sid:
            params["MessagingServiceSid"] = messaging_service_sid
        if whatsapp:
            params["WaId"] = from_.removeprefix("whatsapp:").lstrip("+")
            params["ProfileName"] = profile_name or "WhatsApp User"
            params["MessageType"] = "image" if media else "text"
        else:
            params.update(
                {"FromCountry": "US", "FromState": "", "FromCity": "", "FromZip": ""}
                | {"ToCountry": "US", "ToState": "", "ToCity": "", "ToZip": ""}
            )
        params.update(extra or {})
        url = url or self.public_base_url().rstrip("/") + MESSAGES_PATH
        return WebhookRequest(url, params, self.sign(url, params))

    def status_callback_url(self) -> str:
        """The app's status callback URL as the fixture's app would build it."""
        return self.public_base_url().rstrip("/") + STATUS_PATH
