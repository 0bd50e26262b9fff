"""A tiny SMTP server on a loopback port, speaking enough SMTP for smtplib (no TLS, no AUTH).

`SmtpFake` records each accepted message (envelope and parsed email); `refuse_next(code)`
makes the next RCPT answer with that code. Tests point SMTP_HOST/SMTP_PORT at it with
SMTP_STARTTLS off.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        return self.message.get_content()


class _Handler(socketserver.StreamRequestHandler):
    timeout = 10

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        fake: SmtpFake = self.server.fake  # type: ignore[attr-defined]
        sender, recipients = "", []
        self.reply("220 fake-smtp ready")
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\r\n")
            verb, _, argument = line.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 fake-smtp")
            elif verb == "MAIL":
                sender, recipients = _address(argument), []
                self.reply("250 OK")
            elif verb == "RCPT":
                refused = fake.take_refusal()
                if refused:
                    self.reply(f"{refused} Recipient refused")
                else:
                    recipients.append(_address(argument))
                    self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while True:
                    data = self.rfile.readline()
                    if data in (b".\r\n", b".\n", b""):
                        break
                    lines.append(data[1:] if data.startswith(b"..") else data)
                message = message_from_bytes(b"".join(lines), policy=policy.default)
                with fake.lock:
                    fake.received.append(Received(sender, recipients, message))
                self.reply("250 OK queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 Bye")
                return
            else:
                self.reply("502 Command not implemented")


def _address(argument: str) -> str:
    _, _, value = argument.partition(":")
    return value.strip().split(" ")[0].strip("<>")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class SmtpFake:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self._refusals: list[int] = []
        self.host, self.port = "127.0.0.1", 0

    def reset(self) -> None:
        with self.lock:
            self.received = []
            self._refusals = []

    def refuse_next(self, code: int = 550) -> None:
        with self.lock:
            self._refusals.append(code)

    def take_refusal(self) -> int | None:
        with self.lock:
            return self._refusals.pop(0) if self._refusals else None

    def config(self) -> dict:
        return {
            "SMTP_HOST": self.host,
            "SMTP_PORT": self.port,
            "SMTP_USERNAME": None,
            "SMTP_PASSWORD": None,
            "SMTP_FROM": "rapport@example.com",
            "SMTP_STARTTLS": False,
        }


@contextmanager
def serve_smtp() -> Iterator[SmtpFake]:
    """Run an SmtpFake on a free loopback port in a thread; stop it afterwards."""
    fake = SmtpFake()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = fake  # type: ignore[attr-defined]
    fake.port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-smtp", daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
