"""What every provider fake shares: a loopback server, request recording and failure knobs.

A fake is a WSGI app (a `Fake` subclass) with a werkzeug URL map; `serve(fake)` runs it on a
free port of 127.0.0.1 in a thread. Production code reaches it only through the base URL
settings the fixtures put in `app.config`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response


class _QuietHandler(WSGIRequestHandler):
    """Keep the access log out of test output; errors still reach the `werkzeug` logger."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@contextmanager
def serve(app: Callable) -> Iterator[str]:
    """Run `app` on a free loopback port in a thread; yield its base URL, then shut it down."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-server", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class Recorded:
    """One request as the fake received it."""

    endpoint: str | None
    method: str
    path: str
    query: MultiDict
    headers: dict[str, str]
    body: bytes
    form: MultiDict = field(default_factory=MultiDict)
    json: Any = None


class WebhookRequest(NamedTuple):
    """A signed delivery a provider would POST: where, which fields or bytes, which headers."""

    url: str
    data: Any  # form fields (dict) for Twilio, raw bytes for JSON providers
    headers: dict[str, str]

    @property
    def path(self) -> str:
        """Path and query of `url`, for the Flask test client."""
        parts = urlsplit(self.url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def send(self, client) -> Any:
        """POST it with a Flask test client, keeping the signed URL's path and query."""
        return client.post(self.path, data=self.data, headers=self.headers)

    def send_http(self, timeout: float = 5.0) -> int:
        """POST it over HTTP to `url` (a real server); return the status code."""
        import requests

        with requests.post(self.url, data=self.data, headers=self.headers, timeout=timeout) as r:
            return r.status_code


@dataclass
class _Knob:
    endpoint: str | None
    remaining: int
    status: int | None = None
    delay: float = 0.0
    details: dict = field(default_factory=dict)


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(
        json.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def token(n: int = 16) -> str:
    """Random lowercase hex, the shape most provider ids use after their prefix."""
    return secrets.token_hex(n)


def now() -> int:
    return int(time.time())


class Fake:
    """Base WSGI app: routes to `self.<endpoint>(request, **args)`, records, fails on demand."""

    rules: Map = Map()

    def __init__(self) -> None:
        self.url = ""
        self.lock = threading.RLock()
        self.requests: list[Recorded] = []
        self._knobs: list[_Knob] = []
        self.reset()

    # --- knobs ----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget recorded requests, pending failures and stored state."""
        with self.lock:
            self.requests = []
            self._knobs = []
            self.reset_state()

    def reset_state(self) -> None:
        """Subclasses clear their stored objects here."""

    def fail_next(
        self, n: int = 1, status: int = 500, *, endpoint: str | None = None, **details
    ) -> None:
        """Answer the next `n` requests (to `endpoint`, or any) with `status` in the wire format."""
        with self.lock:
            self._knobs.append(_Knob(endpoint, n, status=status, details=details))

    def delay_next(self, seconds: float, n: int = 1, *, endpoint: str | None = None) -> None:
        """Hold the next `n` requests (to `endpoint`, or any) for `seconds` before answering."""
        with self.lock:
            self._knobs.append(_Knob(endpoint, n, delay=seconds))

    def calls(self, endpoint: str | None = None) -> list[Recorded]:
        """Recorded requests, all or to one endpoint, oldest first."""
        with self.lock:
            return [r for r in self.requests if endpoint is None or r.endpoint == endpoint]

    # --- wire format hooks ------------------------------------------------------------

    def error(self, status: int, **details) -> Response:
        """The provider's error body for an injected failure."""
        return json_response({"error": details.get("message", "injected failure")}, status)

    def authenticate(self, request: Request, endpoint: str) -> Response | None:
        """None when the credentials are good, else the provider's 401."""
        return None

    # --- WSGI -----------------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        adapter = self.rules.bind_to_environ(environ)
        try:
            endpoint, args = adapter.match()
        except (NotFound, MethodNotAllowed) as exc:
            endpoint, args = None, {}
            failure: Response | None = self.not_found(request, exc)
        else:
            failure = None
        self._record(request, endpoint)
        knob = self._take_knob(endpoint) if endpoint else None
        if knob and knob.delay:
            time.sleep(knob.delay)
        if failure is None and knob and knob.status:
            failure = self.error(knob.status, **knob.details)
        if failure is None:
            failure = self.authenticate(request, endpoint)
        if failure is not None:
            return failure(environ, start_response)
        with self.lock:
            response = self.handle(request, endpoint, args)
        return response(environ, start_response)

    def handle(self, request: Request, endpoint: str, args: dict) -> Response:
        """Run the endpoint (holding the lock); past the knobs and the credentials check."""
        return getattr(self, endpoint)(request, **args)

    def not_found(self, request: Request, exc: HTTPException) -> Response:
        return json_response({"error": exc.name}, exc.code or 404)

    def _record(self, request: Request, endpoint: str | None) -> None:
        body = request.get_data(cache=True)
        form = MultiDict()
        payload = None
        if request.mimetype == "application/x-www-form-urlencoded":
            form = MultiDict(request.form)
        elif request.mimetype == "application/json" and body:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
        recorded = Recorded(
            endpoint=endpoint,
            method=request.method,
            path=request.path,
            query=MultiDict(request.args),
            headers=dict(request.headers),
            body=body,
            form=form,
            json=payload,
        )
        with self.lock:
            self.requests.append(recorded)

    def _take_knob(self, endpoint: str) -> _Knob | None:
        with self.lock:
            for knob in self._knobs:
                if knob.endpoint in (None, endpoint) and knob.remaining > 0:
                    knob.remaining -= 1
                    if knob.remaining == 0:
                        self._knobs.remove(knob)
                    return knob
        return None
