"""Email through SMTP (smtplib), for coaches' notifications; off unless SMTP_HOST is set.

Settings: SMTP_HOST, SMTP_PORT, SMTP_USERNAME, SMTP_PASSWORD, SMTP_FROM, SMTP_STARTTLS.
Each send is one policy call ("smtp"): a timeout, the breaker and metrics like any provider.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid

from flask import current_app

from crm.integrations import policy


def configured() -> bool:
    """True when an SMTP server is set, so email is sent at all."""
    return bool(current_app.config.get("SMTP_HOST"))


def sender() -> str:
    config = current_app.config
    return config.get("SMTP_FROM") or config.get("SMTP_USERNAME") or "rapport@localhost"


def _message(to: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender()
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain=sender().rpartition("@")[2] or None)
    message.set_content(body)
    return message


def _deliver(message: EmailMessage) -> None:
    config = current_app.config
    try:
        with smtplib.SMTP(
            config["SMTP_HOST"], int(config.get("SMTP_PORT") or 587), timeout=policy.timeout()
        ) as smtp:
            if config.get("SMTP_STARTTLS", True):
                smtp.starttls(context=ssl.create_default_context())
            if config.get("SMTP_USERNAME"):
                smtp.login(config["SMTP_USERNAME"], config.get("SMTP_PASSWORD") or "")
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        raise policy.PermanentError(f"the server refused {message['To']}", "smtp") from exc
    except smtplib.SMTPResponseException as exc:
        # 4xx: try again later; 5xx (bad credentials, refused sender...): it will not pass.
        error = policy.TransientError if exc.smtp_code < 500 else policy.PermanentError
        raise error(_text(exc.smtp_error), "smtp", code=exc.smtp_code) from exc


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def send_email(to: str, subject: str, body: str) -> None:
    """Send a plain-text email; raise policy.TransientError / PermanentError on failure."""
    if not configured():
        raise policy.PermanentError("SMTP is not configured (SMTP_HOST)", "smtp")
    message = _message(to, subject, body)
    policy.call("smtp", lambda: _deliver(message), operation="send_email")
