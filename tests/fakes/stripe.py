"""A stateful Stripe API fake that stripe-python 16 talks to unchanged, and a signed-event maker.

Object shapes start from stripe-mock's fixtures (`stripe_fixtures.json`: the resources this
fake serves, taken from stripe/stripe-mock `embedded/openapi/fixtures3.json`, MIT licence)
with the fields a request sets filled in. Requests are form-encoded with bracket notation;
`Idempotency-Key` replays the first answer for the same parameters (reference section 2.2).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import stripe as stripe_sdk
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from tests.fakes.server import Fake, json_response, now, token

FIXTURES = json.loads((Path(__file__).with_name("stripe_fixtures.json")).read_text())["resources"]
API_VERSION = stripe_sdk.api_version

_DEFAULT_ERROR_TYPES = {402: "card_error", 429: "invalid_request_error"}


def fixture(kind: str) -> dict:
    """A deep copy of stripe-mock's fixture for object type `kind`."""
    return copy.deepcopy(FIXTURES[kind])


def decode_form(pairs: Iterable[tuple[str, str]]) -> dict:
    """Decode `a[b][0][c]=v` bracket notation into nested dicts and lists."""
    root: dict = {}
    for key, value in pairs:
        name, _, rest = key.partition("[")
        path = [name] + (re.findall(r"([^\[\]]*)\]", "[" + rest) if rest else [])
        node = root
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if part == "":  # `expand[]=a`: append
                part = str(len(node))
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    items = {k: _listify(v) for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def _fingerprint(endpoint: str, args: dict, params: dict) -> str:
    raw = json.dumps([endpoint, args, params], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()


def _stripe_id(prefix: str) -> str:
    return f"{prefix}_{token(12)}"


class StripeFake(Fake):
    """Checkout Sessions, refunds, Connect accounts and links, balance and events."""

    rules = Map(
        [
            Rule("/v1/checkout/sessions", endpoint="sessions_create", methods=["POST"]),
            Rule("/v1/checkout/sessions", endpoint="sessions_list", methods=["GET"]),
            Rule("/v1/checkout/sessions/<id>", endpoint="sessions_retrieve", methods=["GET"]),
            Rule("/v1/checkout/sessions/<id>/expire", endpoint="sessions_expire", methods=["POST"]),
            Rule("/v1/refunds", endpoint="refunds_create", methods=["POST"]),
            Rule("/v1/refunds/<id>", endpoint="refunds_retrieve", methods=["GET"]),
            Rule("/v1/accounts", endpoint="accounts_create", methods=["POST"]),
            Rule("/v1/accounts/<id>", endpoint="accounts_retrieve", methods=["GET"]),
            Rule("/v1/account_links", endpoint="account_links_create", methods=["POST"]),
            Rule("/v1/balance", endpoint="balance_retrieve", methods=["GET"]),
            Rule("/v1/events/<id>", endpoint="events_retrieve", methods=["GET"]),
            Rule("/v1/subscriptions/<id>", endpoint="subscriptions_retrieve", methods=["GET"]),
            Rule("/v1/invoices/<id>", endpoint="invoices_retrieve", methods=["GET"]),
            Rule(
                "/v1/billing_portal/sessions",
                endpoint="billing_portal_sessions_create",
                methods=["POST"],
            ),
            Rule("/v1/payment_intents/<id>", endpoint="payment_intents_retrieve", methods=["GET"]),
            Rule("/v1/charges/<id>", endpoint="charges_retrieve", methods=["GET"]),
            Rule("/v1/refunds", endpoint="refunds_list", methods=["GET"]),
        ]
    )

    def __init__(self) -> None:
        self.secret_key = "sk_test_rapport_" + hashlib.sha256(b"stripe-fake").hexdigest()[:24]
        self.webhook_secret = "whsec_rapport_" + hashlib.sha256(b"stripe-whsec").hexdigest()[:32]
        super().__init__()

    def reset_state(self) -> None:
        self.objects: dict[str, dict] = {}
        self._idempotent: dict[str, tuple[str, int, str]] = {}
        # What a subscription-mode session was created with (its recurring price and
        # `subscription_data`), for `complete_session` to build the subscription from.
        self.session_params: dict[str, dict] = {}

    def config(self) -> dict:
        return {
            "STRIPE_SECRET_KEY": self.secret_key,
            "STRIPE_API_BASE": self.url,
            "STRIPE_WEBHOOK_SECRETS": [self.webhook_secret],
        }

    # --- wire format ----------------------------------------------------------------

    def error(self, status: int, **details) -> Response:
        kind = details.get("type") or _DEFAULT_ERROR_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        code = details.get("code") or ("rate_limit" if status == 429 else None)
        body: dict[str, Any] = {"type": kind, "message": details.get("message") or f"{kind}"}
        if code:
            body["code"] = code
            body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if details.get("param"):
            body["param"] = details["param"]
        return self._respond({"error": body}, status)

    def _respond(self, data: Any, status: int = 200, headers: dict | None = None) -> Response:
        return json_response(
            data,
            status,
            {"Request-Id": f"req_{token(7)}", "Stripe-Version": API_VERSION, **(headers or {})},
        )

    def _missing(self, kind: str, id: str, param: str = "id") -> Response:
        return self.error(
            404 if param == "id" else 400,
            code="resource_missing",
            param=param,
            message=f"No such {kind}: '{id}'",
        )

    def authenticate(self, request: Request, endpoint: str) -> Response | None:
        auth = request.authorization
        key = None
        if auth and auth.type == "bearer":
            key = auth.token
        elif auth and auth.type == "basic":
            key = auth.username
        if not key:
            return self.error(
                401,
                message="You did not provide an API key. Provide it in the Authorization header.",
            )
        if key != self.secret_key:
            return self.error(401, message=f"Invalid API Key provided: {key[:8]}****")
        return None

    def not_found(self, request, exc) -> Response:
        return self.error(
            404, message=f"Unrecognized request URL ({request.method}: {request.path})."
        )

    def handle(self, request: Request, endpoint: str, args: dict) -> Response:
        key = request.headers.get("Idempotency-Key")
        if request.method != "POST" or not key:
            return super().handle(request, endpoint, args)
        fingerprint = _fingerprint(endpoint, args, self._params(request))
        if saved := self._idempotent.get(key):
            if saved[0] != fingerprint:
                return self.error(
                    400,
                    type="idempotency_error",
                    message=(
                        "Keys for idempotent requests can only be used with the same parameters "
                        f"they were first used with. Try using a key other than '{key}' if you "
                        "meant to execute a different request."
                    ),
                )
            return self._respond(saved[2], saved[1], {"Idempotent-Replayed": "true"})
        response = super().handle(request, endpoint, args)
        # Stripe saves a key's result once an endpoint has begun executing; a request
        # refused at validation (or, here, by an injected failure or a bad API key, which
        # never reach this point) saves nothing, so a retry with the key may succeed.
        if response.status_code < 400:
            self._idempotent[key] = (fingerprint, response.status_code, json.loads(response.data))
        return response

    # --- helpers --------------------------------------------------------------------

    @staticmethod
    def _params(request: Request) -> dict:
        return decode_form(request.form.items(multi=True))

    def _list(self, kind: str, url: str, request: Request, match=None) -> Response:
        limit = int(request.args.get("limit", 10))
        items = [
            o
            for o in reversed(self.objects.values())
            if o.get("object") == kind and (match is None or match(o))
        ]
        start = 0
        if after := request.args.get("starting_after"):
            ids = [o["id"] for o in items]
            start = ids.index(after) + 1 if after in ids else len(items)
        page = items[start : start + limit]
        return self._respond(
            {"object": "list", "data": page, "has_more": start + limit < len(items), "url": url}
        )

    def _store(self, obj: dict) -> dict:
        self.objects[obj["id"]] = obj
        return obj

    # --- Checkout Sessions ----------------------------------------------------------

    def sessions_create(self, request: Request) -> Response:
        params = self._params(request)
        if not params.get("mode"):
            return self.error(
                400, code="parameter_missing", param="mode", message="Missing required param: mode."
            )
        session = fixture("checkout.session")
        session_id = "cs_test_" + token(28)
        created = now()
        line_items = params.get("line_items") or []
        subtotal = 0
        currency = params.get("currency")
        for item in line_items:
            price = item.get("price_data") or {}
            subtotal += int(price.get("unit_amount", 0)) * int(item.get("quantity", 1))
            currency = currency or price.get("currency")
        session.update(
            {
                "id": session_id,
                "created": created,
                "expires_at": int(params.get("expires_at") or created + 24 * 3600),
                "mode": params["mode"],
                "status": "open",
                "payment_status": "unpaid",
                "amount_subtotal": subtotal if line_items else None,
                "amount_total": subtotal if line_items else None,
                "currency": currency,
                "client_reference_id": params.get("client_reference_id"),
                "customer": params.get("customer"),
                "customer_email": params.get("customer_email"),
                "customer_details": None,
                "metadata": params.get("metadata") or {},
                "success_url": params.get("success_url"),
                "cancel_url": params.get("cancel_url"),
                "payment_intent": None,
                "payment_method_types": params.get("payment_method_types") or ["card"],
                "url": f"https://checkout.stripe.com/c/pay/{session_id}",
                "livemode": False,
                "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
                "shipping_cost": None,
            }
        )
        if params["mode"] == "subscription":
            if not line_items or not all(
                (item.get("price_data") or {}).get("recurring") for item in line_items
            ):
                return self.error(
                    400,
                    param="line_items",
                    message="You must provide at least one recurring price in `subscription` "
                    "mode when using prices.",
                )
            self.session_params[session_id] = params
        return self._respond(self._store(session))

    def sessions_retrieve(self, request: Request, id: str) -> Response:
        if self.objects.get(id, {}).get("object") != "checkout.session":
            return self._missing("checkout.session", id)
        return self._respond(self.objects[id])

    def sessions_expire(self, request: Request, id: str) -> Response:
        session = self.objects.get(id)
        if not session or session.get("object") != "checkout.session":
            return self._missing("checkout.session", id)
        if session["status"] != "open":
            return self.error(
                400,
                message='Only Checkout Sessions with a status in ["open"] can be expired.',
            )
        session.update({"status": "expired", "url": None})
        return self._respond(session)

    def sessions_list(self, request: Request) -> Response:
        wanted = request.args.get("payment_intent")
        return self._list(
            "checkout.session",
            "/v1/checkout/sessions",
            request,
            match=lambda s: wanted in (None, s.get("payment_intent")),
        )

    def complete_session(
        self, session_id: str, *, email: str = "ana@example.com", name: str = "Ana Silva"
    ) -> dict:
        """Pay an open session as a customer would: it gets a PaymentIntent and a charge.

        A subscription-mode session gets a customer, an active subscription and its first,
        paid invoice instead (`session.subscription`, `session.invoice`).
        """
        with self.lock:
            session = self.objects[session_id]
            if session.get("mode") == "subscription":
                return self._complete_subscription_session(session, email=email, name=name)
            amount = session.get("amount_total") or 0
            currency = session.get("currency") or "usd"
            intent = fixture("payment_intent")
            charge = fixture("charge")
            intent.update(
                {
                    "id": _stripe_id("pi"),
                    "amount": amount,
                    "amount_received": amount,
                    "currency": currency,
                    "status": "succeeded",
                    "created": now(),
                    "latest_charge": None,
                    "last_payment_error": None,
                    "client_secret": None,
                    "metadata": {},
                }
            )
            charge.update(
                {
                    "id": _stripe_id("ch"),
                    "amount": amount,
                    "amount_captured": amount,
                    "captured": True,
                    "paid": True,
                    "status": "succeeded",
                    "currency": currency,
                    "payment_intent": intent["id"],
                    "created": now(),
                    "refunded": False,
                    "amount_refunded": 0,
                }
            )
            intent["latest_charge"] = charge["id"]
            self._store(intent)
            self._store(charge)
            details = fixture("checkout.session")["customer_details"]
            details.update({"email": email, "name": name})
            session.update(
                {
                    "status": "complete",
                    "payment_status": "paid",
                    "url": None,
                    "payment_intent": intent["id"],
                    "customer_details": details,
                }
            )
            return copy.deepcopy(session)

    # --- refunds --------------------------------------------------------------------

    def refunds_create(self, request: Request) -> Response:
        params = self._params(request)
        charge = None
        if intent_id := params.get("payment_intent"):
            intent = self.objects.get(intent_id)
            if not intent or intent.get("object") != "payment_intent":
                return self._missing("payment_intent", intent_id, "payment_intent")
            charge = self.objects.get(intent.get("latest_charge") or "")
        elif charge_id := params.get("charge"):
            charge = self.objects.get(charge_id)
            if not charge or charge.get("object") != "charge":
                return self._missing("charge", charge_id, "charge")
        else:
            return self.error(
                400,
                code="parameter_missing",
                param="payment_intent",
                message="One of the following params should be provided for "
                "this request: payment_intent or charge.",
            )
        if charge is None:
            return self.error(
                400,
                code="charge_not_refundable",
                message="This PaymentIntent does not have a successful charge to refund.",
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        amount = int(params.get("amount") or remaining)
        if amount > remaining or remaining == 0:
            code = "charge_already_refunded" if remaining == 0 else "amount_too_large"
            return self.error(
                400,
                code=code,
                param="amount",
                message=f"Refund amount ({amount}) is greater than the "
                f"unrefunded amount on charge ({remaining}).",
            )
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        refund = fixture("refund")
        refund.update(
            {
                "id": _stripe_id("re"),
                "amount": amount,
                "charge": charge["id"],
                "payment_intent": charge.get("payment_intent"),
                "currency": charge["currency"],
                "created": now(),
                "metadata": params.get("metadata") or {},
                "reason": params.get("reason"),
                "status": "succeeded",
            }
        )
        return self._respond(self._store(refund))

    def refunds_retrieve(self, request: Request, id: str) -> Response:
        if self.objects.get(id, {}).get("object") != "refund":
            return self._missing("refund", id)
        return self._respond(self.objects[id])

    def refunds_list(self, request: Request) -> Response:
        intent, charge = request.args.get("payment_intent"), request.args.get("charge")
        return self._list(
            "refund",
            "/v1/refunds",
            request,
            match=lambda r: (
                intent in (None, r.get("payment_intent")) and charge in (None, r.get("charge"))
            ),
        )

    # --- PaymentIntents, charges and disputes ---------------------------------------

    def payment_intents_retrieve(self, request: Request, id: str) -> Response:
        if self.objects.get(id, {}).get("object") != "payment_intent":
            return self._missing("payment_intent", id)
        return self._respond(self.objects[id])

    def charges_retrieve(self, request: Request, id: str) -> Response:
        if self.objects.get(id, {}).get("object") != "charge":
            return self._missing("charge", id)
        return self._respond(self.objects[id])

    def fail_session_payment(
        self, session_id: str, *, message: str = "Your card was declined."
    ) -> dict:
        """A declined attempt on an open session: a PaymentIntent back at requires_payment_method.

        Its metadata is the session's, as `payment_intent_data[metadata]` would set it.
        """
        with self.lock:
            session = self.objects[session_id]
            intent = fixture("payment_intent")
            intent.update(
                {
                    "id": _stripe_id("pi"),
                    "amount": session.get("amount_total") or 0,
                    "amount_received": 0,
                    "currency": session.get("currency") or "usd",
                    "status": "requires_payment_method",
                    "created": now(),
                    "latest_charge": None,
                    "client_secret": None,
                    "metadata": copy.deepcopy(session.get("metadata") or {}),
                    "last_payment_error": {
                        "type": "card_error",
                        "code": "card_declined",
                        "decline_code": "generic_decline",
                        "message": message,
                    },
                }
            )
            return copy.deepcopy(self._store(intent))

    def dispute_charge(self, charge_id: str, *, reason: str = "fraudulent") -> dict:
        """The client's bank disputes a charge: a `dispute` object (needs_response)."""
        with self.lock:
            charge = self.objects[charge_id]
            charge["disputed"] = True
            dispute = {
                "id": _stripe_id("dp"),
                "object": "dispute",
                "amount": charge["amount"],
                "currency": charge["currency"],
                "charge": charge["id"],
                "payment_intent": charge.get("payment_intent"),
                "reason": reason,
                "status": "needs_response",
                "created": now(),
                "livemode": False,
                "metadata": {},
            }
            return copy.deepcopy(self._store(dispute))

    # --- subscriptions, invoices and the billing portal ------------------------------

    def _complete_subscription_session(self, session: dict, *, email: str, name: str) -> dict:
        params = self.session_params.get(session["id"], {})
        created = now()
        customer = {
            "id": _stripe_id("cus"),
            "object": "customer",
            "email": email,
            "name": name,
            "created": created,
            "livemode": False,
            "metadata": {},
        }
        self._store(customer)
        item = (params.get("line_items") or [{}])[0]
        price_data = item.get("price_data") or {}
        recurring = price_data.get("recurring") or {}
        currency = session.get("currency") or price_data.get("currency") or "usd"
        subscription_id = _stripe_id("sub")
        period_end = created + 30 * 24 * 3600
        subscription = {
            "id": subscription_id,
            "object": "subscription",
            "customer": customer["id"],
            "status": "active",
            "created": created,
            "start_date": created,
            "currency": currency,
            "cancel_at_period_end": False,
            "cancel_at": None,
            "canceled_at": None,
            "ended_at": None,
            "collection_method": "charge_automatically",
            "latest_invoice": None,
            "livemode": False,
            "metadata": dict((params.get("subscription_data") or {}).get("metadata") or {}),
            # Since API 2025-03-31 the period lives on the items, not the subscription.
            "items": {
                "object": "list",
                "has_more": False,
                "url": f"/v1/subscription_items?subscription={subscription_id}",
                "data": [
                    {
                        "id": _stripe_id("si"),
                        "object": "subscription_item",
                        "created": created,
                        "quantity": int(item.get("quantity", 1)),
                        "subscription": subscription_id,
                        "current_period_start": created,
                        "current_period_end": period_end,
                        "price": {
                            "id": _stripe_id("price"),
                            "object": "price",
                            "type": "recurring",
                            "currency": currency,
                            "unit_amount": int(price_data.get("unit_amount", 0)),
                            "recurring": {
                                "interval": recurring.get("interval", "month"),
                                "interval_count": int(recurring.get("interval_count", 1)),
                            },
                        },
                    }
                ],
            },
        }
        self._store(subscription)
        invoice = self._subscription_invoice(
            subscription, billing_reason="subscription_create", paid=True
        )
        details = fixture("checkout.session")["customer_details"]
        details.update({"email": email, "name": name})
        session.update(
            {
                "status": "complete",
                "payment_status": "paid",
                "url": None,
                "customer": customer["id"],
                "customer_details": details,
                "subscription": subscription_id,
                "invoice": invoice["id"],
            }
        )
        return copy.deepcopy(session)

    def _subscription_invoice(self, subscription: dict, *, billing_reason: str, paid: bool) -> dict:
        item = subscription["items"]["data"][0]
        amount = item["price"]["unit_amount"] * item["quantity"]
        start, end = item["current_period_start"], item["current_period_end"]
        created = now()
        invoice = {
            "id": _stripe_id("in"),
            "object": "invoice",
            "customer": subscription["customer"],
            "status": "paid" if paid else "open",
            "billing_reason": billing_reason,
            "collection_method": "charge_automatically",
            "currency": subscription["currency"],
            "amount_due": amount,
            "amount_paid": amount if paid else 0,
            "amount_remaining": 0 if paid else amount,
            "attempt_count": 1,
            "attempted": True,
            "next_payment_attempt": None if paid else created + 3 * 24 * 3600,
            "created": created,
            "period_start": start,
            "period_end": end,
            "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_test/{token(12)}",
            "livemode": False,
            "metadata": {},
            "status_transitions": {"paid_at": created if paid else None},
            "parent": {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {
                    "subscription": subscription["id"],
                    "metadata": copy.deepcopy(subscription["metadata"]),
                },
            },
            "lines": {
                "object": "list",
                "has_more": False,
                "data": [
                    {
                        "id": _stripe_id("il"),
                        "object": "line_item",
                        "amount": amount,
                        "currency": subscription["currency"],
                        "quantity": item["quantity"],
                        "period": {"start": start, "end": end},
                    }
                ],
            },
        }
        subscription["latest_invoice"] = invoice["id"]
        return self._store(invoice)

    def _next_period(self, subscription: dict) -> None:
        item = subscription["items"]["data"][0]
        item["current_period_start"] = item["current_period_end"]
        item["current_period_end"] = item["current_period_start"] + 30 * 24 * 3600

    def renew_subscription(
        self, subscription_id: str, *, paid: bool = True, next_payment_attempt: int | None = None
    ) -> dict:
        """Bill the next period: a paid invoice, or an open one (attempt 1 failed, past_due)."""
        with self.lock:
            subscription = self.objects[subscription_id]
            self._next_period(subscription)
            invoice = self._subscription_invoice(
                subscription, billing_reason="subscription_cycle", paid=paid
            )
            if not paid:
                subscription["status"] = "past_due"
                if next_payment_attempt is not None:
                    invoice["next_payment_attempt"] = next_payment_attempt
            return copy.deepcopy(invoice)

    def retry_invoice(
        self, invoice_id: str, *, paid: bool, next_payment_attempt: int | None = None
    ) -> dict:
        """Stripe's next automatic attempt on an open invoice: paid, or failed once more."""
        with self.lock:
            invoice = self.objects[invoice_id]
            subscription = self.objects[invoice["parent"]["subscription_details"]["subscription"]]
            invoice["attempt_count"] += 1
            if paid:
                invoice.update(
                    {
                        "status": "paid",
                        "amount_paid": invoice["amount_due"],
                        "amount_remaining": 0,
                        "next_payment_attempt": None,
                        "status_transitions": {"paid_at": now()},
                    }
                )
                subscription["status"] = "active"
            else:
                invoice["next_payment_attempt"] = next_payment_attempt
            return copy.deepcopy(invoice)

    def update_subscription(self, subscription_id: str, **fields) -> dict:
        """Change a subscription as the Dashboard or the billing portal would."""
        with self.lock:
            subscription = self.objects[subscription_id]
            subscription.update(fields)
            return copy.deepcopy(subscription)

    def cancel_subscription(self, subscription_id: str) -> dict:
        """End a subscription now (`customer.subscription.deleted` carries this)."""
        with self.lock:
            subscription = self.objects[subscription_id]
            subscription.update({"status": "canceled", "canceled_at": now(), "ended_at": now()})
            return copy.deepcopy(subscription)

    def subscriptions_retrieve(self, request: Request, id: str) -> Response:
        if self.objects.get(id, {}).get("object") != "subscription":
            return self._missing("subscription", id)
        return self._respond(self.objects[id])

    def invoices_retrieve(self, request: Request, id: str) -> Response:
        if self.objects.get(id, {}).get("object") != "invoice":
            return self._missing("invoice", id)
        return self._respond(self.objects[id])

    def billing_portal_sessions_create(self, request: Request) -> Response:
        params = self._params(request)
        customer = params.get("customer")
        if not customer:
            return self.error(
                400,
                code="parameter_missing",
                param="customer",
                message="Missing required param: customer.",
            )
        if self.objects.get(customer, {}).get("object") != "customer":
            return self._missing("customer", customer, "customer")
        created = now()
        portal = {
            "id": _stripe_id("bps"),
            "object": "billing_portal.session",
            "configuration": "bpc_rapport_test",
            "created": created,
            "customer": customer,
            "flow": None,
            "livemode": False,
            "locale": None,
            "on_behalf_of": None,
            "return_url": params.get("return_url"),
            "url": f"https://billing.stripe.com/p/session/test_{token(16)}",
        }
        return self._respond(self._store(portal))

    # --- Connect --------------------------------------------------------------------

    def accounts_create(self, request: Request) -> Response:
        params = self._params(request)
        account = fixture("account")
        account_id = "acct_" + token(8).upper()
        account.update(
            {
                "id": account_id,
                "type": params.get("type", "express"),
                "country": params.get("country", "US"),
                "email": params.get("email"),
                "created": now(),
                "charges_enabled": False,
                "payouts_enabled": False,
                "details_submitted": False,
                "metadata": params.get("metadata") or {},
            }
        )
        account["external_accounts"]["url"] = f"/v1/accounts/{account_id}/external_accounts"
        if capabilities := params.get("capabilities"):
            account["capabilities"] = {name: "inactive" for name in capabilities}
        return self._respond(self._store(account))

    def accounts_retrieve(self, request: Request, id: str) -> Response:
        if self.objects.get(id, {}).get("object") != "account":
            return self._missing("account", id)
        return self._respond(self.objects[id])

    def complete_onboarding(self, account_id: str) -> dict:
        """Finish Express onboarding: charges and payouts enabled, nothing currently due."""
        with self.lock:
            account = self.objects[account_id]
            account.update(
                {"charges_enabled": True, "payouts_enabled": True, "details_submitted": True}
            )
            account["capabilities"] = {name: "active" for name in account["capabilities"]}
            account["requirements"].update(
                {"currently_due": [], "eventually_due": [], "past_due": [], "disabled_reason": None}
            )
            return copy.deepcopy(account)

    def account_links_create(self, request: Request) -> Response:
        params = self._params(request)
        for name in ("account", "type"):
            if not params.get(name):
                return self.error(
                    400,
                    code="parameter_missing",
                    param=name,
                    message=f"Missing required param: {name}.",
                )
        if self.objects.get(params["account"], {}).get("object") != "account":
            return self._missing("account", params["account"], "account")
        link = fixture("account_link")
        created = now()
        link.update(
            {
                "created": created,
                "expires_at": created + 300,
                "url": f"https://connect.stripe.com/setup/e/{params['account']}/{token(8)}",
            }
        )
        return self._respond(link)

    # --- balance and events ---------------------------------------------------------

    def balance_retrieve(self, request: Request) -> Response:
        return self._respond(fixture("balance"))

    def events_retrieve(self, request: Request, id: str) -> Response:
        if self.objects.get(id, {}).get("object") != "event":
            return self._missing("event", id)
        return self._respond(self.objects[id])

    # --- signed events --------------------------------------------------------------

    def event(
        self,
        type: str,
        data_object: dict,
        *,
        secret: str | Sequence[str] | None = None,
        timestamp: int | None = None,
        previous_attributes: dict | None = None,
        event_id: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """An `event` wrapping `data_object`, as bytes, and its `Stripe-Signature` headers.

        Several secrets give one `v1` per secret (a rotation); `timestamp` backdates it.
        The event is kept, so `GET /v1/events/{id}` finds it.
        """
        event = fixture("event")
        event.update(
            {
                "id": event_id or _stripe_id("evt"),
                "api_version": API_VERSION,
                "created": now(),
                "type": type,
                "livemode": False,
                "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None},
                "data": {"object": copy.deepcopy(data_object)},
            }
        )
        if previous_attributes is not None:
            event["data"]["previous_attributes"] = previous_attributes
        with self.lock:
            self._store(event)
        payload = json.dumps(event)
        return payload.encode(), {
            "Stripe-Signature": signature_header(
                payload, secret or self.webhook_secret, timestamp=timestamp
            ),
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }


def signature_header(
    payload: str | bytes, secrets: str | Sequence[str], *, timestamp: int | None = None
) -> str:
    """`t=…,v1=…[,v1=…]`: one `v1` per secret, all over the same timestamp."""
    if isinstance(payload, bytes):
        payload = payload.decode()
    if isinstance(secrets, str):
        secrets = [secrets]
    timestamp = int(time.time()) if timestamp is None else timestamp
    parts = [
        stripe_sdk.WebhookSignature.generate_signature_header(payload, s, timestamp=timestamp)
        for s in secrets
    ]
    signatures = [p.split(",", 1)[1] for p in parts]
    return ",".join([f"t={timestamp}", *signatures])
