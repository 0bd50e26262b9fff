"""The Twilio fake as a stand-in for Twilio: what `make run` talks to without credentials.

    python -m tests.fakes.demo --port 0 --config-out /tmp/twilio.json
    python tests/fakes/demo.py ...          # as `flask serve` runs it: no pytest needed

Every message the app sends with a StatusCallback then gets, over HTTP and signed as Twilio
signs them, the callbacks `sent` (after about 1 s), `delivered` (2 s) and, on WhatsApp, `read`
(4 s); about 5 s after the last one the recipient answers "Thanks, got it!" through the
inbound-message webhook. `--pace 0.1` makes all of it ten times faster (tests).

Only messages the app sends get an answer, at most one per thread at a time, and never a
message the app sends right after an answer (an auto-responder would otherwise ping-pong
with the fake). The answer is never a consent or help keyword.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file: import the fakes without tests/fakes/__init__.py, whose fixtures need
    # pytest (not installed by `make run`). The file's own folder leaves sys.path, or its
    # twilio.py would hide the twilio SDK.
    import types

    _ROOT = Path(__file__).resolve().parents[2]
    sys.path[0] = str(_ROOT)
    for _name in ("tests", "tests.fakes"):
        if _name not in sys.modules:
            _package = types.ModuleType(_name)
            _package.__path__ = [str(_ROOT.joinpath(*_name.split(".")))]
            sys.modules[_name] = _package

import argparse  # noqa: E402 - after the path setup above
import heapq  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import requests  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402
from werkzeug.wrappers import Request, Response  # noqa: E402

from tests.fakes.server import WebhookRequest, _QuietHandler  # noqa: E402
from tests.fakes.twilio import MESSAGES_PATH, STATUS_PATH, TwilioFake  # noqa: E402

log = logging.getLogger("twilio-demo")

REPLY = "Thanks, got it!"
# Seconds after Twilio accepts a message (times --pace).
SENT_AFTER = 1.0
DELIVERED_AFTER = 2.0
READ_AFTER = 4.0  # WhatsApp only: SMS has no read receipts
REPLY_AFTER = 5.0  # after the last status callback
# A message the app sends this soon after the fake's answer looks automatic: no answer.
QUIET_AFTER_REPLY = 10.0
# Settings the app needs to talk to the fake (the environment variables of the same name).
SETTINGS = (
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_API_BASE",
    "TWILIO_SMS_FROM",
    "TWILIO_WHATSAPP_FROM",
)


class DemoTwilio(TwilioFake):
    """TwilioFake that plays the carrier and the recipient for every message it accepts."""

    def __init__(self, *, pace: float = 1.0, reply: str = REPLY, posters: int = 4) -> None:
        if pace <= 0:
            raise ValueError("pace must be positive")
        super().__init__()
        self.pace = pace
        self.reply = reply
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        # Posts go out from a few threads: a slow answer from the app delays no other.
        self._posters = ThreadPoolExecutor(posters, thread_name_prefix="twilio-demo-post")
        self._clock = threading.Thread(target=self._run, name="twilio-demo", daemon=True)
        self._clock.start()

    def reset_state(self) -> None:
        super().reset_state()
        # Per thread (recipient, our side): when an answer is due, and when the last went.
        self._reply_due: dict[tuple[str, str], float] = {}
        self._replied_at: dict[tuple[str, str], float] = {}
        # Every delivery posted to the app: (kind, sid, status or body, HTTP status or error).
        self.posted: list[tuple[str, str, str, int | str]] = []

    def settings(self) -> dict[str, str]:
        """What the app's environment needs to send through this fake."""
        config = self.config()
        return {name: config[name] for name in SETTINGS}

    # --- the REST API, plus the carrier's and the recipient's side -----------------------

    def messages_create(self, request: Request, account_sid: str) -> Response:
        response = super().messages_create(request, account_sid)
        if response.status_code == 201 and request.form.get("StatusCallback"):
            self._play(json.loads(response.get_data())["sid"])
        return response

    def _play(self, sid: str) -> None:
        """Schedule the status callbacks of message `sid`, then the recipient's answer."""
        message = self.messages[sid]
        whatsapp = message["to"].startswith("whatsapp:")
        steps = [(SENT_AFTER, "sent"), (DELIVERED_AFTER, "delivered")]
        if whatsapp:
            steps.append((READ_AFTER, "read"))
        now = time.monotonic()
        for after, status in steps:
            self._schedule(now + after * self.pace, lambda s=status: self._callback(sid, s))
        log.info("%s to %s accepted as %s", "WhatsApp" if whatsapp else "SMS", message["to"], sid)
        thread = _thread(message)
        replied = self._replied_at.get(thread)
        if replied is not None and now - replied < QUIET_AFTER_REPLY * self.pace:
            return  # an automatic answer to our answer: the conversation stops here
        if thread in self._reply_due:
            return  # one answer covers everything sent before it
        due = now + (steps[-1][0] + REPLY_AFTER) * self.pace
        self._reply_due[thread] = due
        self._schedule(due, lambda: self._answer(sid))

    def _callback(self, sid: str, status: str) -> None:
        [delivery] = self.status_callback_requests(sid, [status])
        self._post("status", sid, status, delivery)

    def _answer(self, sid: str) -> None:
        with self.lock:
            message = self.messages[sid]
            thread = _thread(message)
            self._reply_due.pop(thread, None)
            self._replied_at[thread] = time.monotonic()
            whatsapp = message["to"].startswith("whatsapp:")
            ours = (
                message["from"]
                or self.config()["TWILIO_WHATSAPP_FROM" if whatsapp else "TWILIO_SMS_FROM"]
            )
            delivery = self.inbound_message(
                message["to"],
                ours,
                self.reply,
                whatsapp=whatsapp,
                messaging_service_sid=message["messaging_service_sid"],
                url=self._app_base(sid) + MESSAGES_PATH,
            )
        self._post("inbound", delivery.data["MessageSid"], self.reply, delivery)

    def _app_base(self, sid: str) -> str:
        """The app's public base URL: its StatusCallback URL without the callback path."""
        callback = self._callback_urls.get(sid, "")
        if callback.endswith(STATUS_PATH):
            return callback.removesuffix(STATUS_PATH)
        return self.public_base_url().rstrip("/")

    def _post(self, kind: str, sid: str, what: str, delivery: WebhookRequest) -> None:
        try:
            outcome: int | str = delivery.send_http(timeout=10)
        except requests.RequestException as exc:
            outcome = type(exc).__name__
        with self.lock:
            self.posted.append((kind, sid, what, outcome))
        if outcome != 200:
            log.warning("%s %s (%s) to %s: %s", kind, what, sid, delivery.url, outcome)
        elif kind == "inbound":
            log.info("%s answered %r", delivery.data["From"], what)

    # --- a clock: one thread for every pending delivery ---------------------------------

    def _schedule(self, due: float, action: Callable[[], None]) -> None:
        with self._wake:
            heapq.heappush(self._due, (due, next(self._order), action))
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                if self._closed:
                    return
                _, _, action = heapq.heappop(self._due)
            self._posters.submit(self._safely, action)

    @staticmethod
    def _safely(action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:  # a thread of the fake: report it and keep going
            log.exception("a scheduled delivery failed")

    def close(self) -> None:
        """Stop the clock and drop what is still due."""
        with self._wake:
            self._closed = True
            self._due.clear()
            self._wake.notify()
        self._posters.shutdown(wait=False, cancel_futures=True)


def _thread(message: dict) -> tuple[str, str]:
    return message["to"], message["from"] or message["messaging_service_sid"] or ""


def write_settings(path: Path, settings: dict[str, str]) -> None:
    """Write the settings as JSON, all at once: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(settings, fh)
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument(
        "--config-out", type=Path, help="write the app's TWILIO_* settings here as JSON"
    )
    parser.add_argument("--pace", type=float, default=1.0, help="time factor (0.1: 10x faster)")
    parser.add_argument(
        "--public-base-url",
        help="the app's base URL, when a StatusCallback URL does not tell (inbound answers)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="Twilio demo: %(message)s", stream=sys.stdout)

    fake = DemoTwilio(pace=args.pace)
    if args.public_base_url:
        fake.public_base_url = lambda: args.public_base_url
    server = make_server("127.0.0.1", args.port, fake, threaded=True, request_handler=_QuietHandler)
    fake.url = f"http://127.0.0.1:{server.server_port}"
    # SIGTERM (the supervisor stopping, or dying) ends the loop below through `finally`.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        if args.config_out:
            write_settings(args.config_out, fake.settings())
        log.info("a local Twilio fake on %s", fake.url)
        sys.stdout.flush()
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        fake.close()
        server.server_close()
        if args.config_out:
            args.config_out.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
