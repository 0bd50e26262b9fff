"""Configuration from the environment, with embedded defaults.

Every setting a deployment changes is an environment variable (see .env.example).
Nothing secret has a default in code: SECRET_KEY is generated into instance/ on first run.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import load_dotenv

ROOT = Path(__file__).resolve().parent.parent

QUEUES = ("webhooks", "messaging", "default", "sync")


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _int(name: str, default: int) -> int:
    value = _env(name)
    return int(value) if value is not None else default


def _float(name: str, default: float) -> float:
    value = _env(name)
    return float(value) if value is not None else default


def _rate(name: str, default: float, *, burst: int | None = 1) -> tuple[float, int]:
    """(rate, burst) for a requests-per-second setting; burst None: one second's worth."""
    rate = _float(name, default)
    if rate <= 0:
        raise ValueError(f"{name} must be positive")
    return rate, burst if burst is not None else max(1, int(rate))


def _csv_raw(name: str) -> list[str]:
    """Comma-separated values, case kept (secrets: several during a rotation)."""
    return [part.strip() for part in (_env(name) or "").split(",") if part.strip()]


def _csv(name: str) -> list[str]:
    return [part.strip().lower() for part in (_env(name) or "").split(",") if part.strip()]


def load_secret_key(instance_path: Path) -> str:
    """Return SECRET_KEY from the environment, or from instance/secret_key (created once)."""
    from_env = _env("SECRET_KEY")
    if from_env:
        return from_env
    instance_path.mkdir(parents=True, exist_ok=True)
    key_file = instance_path / "secret_key"
    try:
        # O_EXCL: several gunicorn workers starting at once must agree on one key.
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return key_file.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return key_file.read_text().strip()


def database_url(instance_path: Path) -> str:
    url = _env("DATABASE_URL")
    if url:
        # Heroku-style URLs name the old driver; Rapport ships psycopg 3.
        if url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url[len("postgres://") :]
        elif url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        return url
    instance_path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{instance_path / 'rapport.db'}"


def embedded_redis_socket(instance_path: Path) -> Path:
    """Where the embedded Redis listens: instance/redis.sock, or a short path in /tmp."""
    sock = instance_path / "redis.sock"
    if len(str(sock)) <= 100:  # unix socket paths are limited to ~107 bytes
        return sock
    digest = hashlib.sha256(str(instance_path).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"rapport-{digest}" / "redis.sock"


def redis_url(instance_path: Path) -> str:
    return _env("REDIS_URL") or f"unix://{embedded_redis_socket(instance_path)}"


def load_env_file() -> None:
    """Read .env beside app.py when present; the real environment wins."""
    load_dotenv(ROOT / ".env", override=False)


def from_environment(instance_path: Path) -> dict:
    """Build the Flask config mapping from the process environment."""
    public_base_url = (_env("PUBLIC_BASE_URL") or "").rstrip("/") or None
    https = bool(public_base_url and urlsplit(public_base_url).scheme == "https")
    google_metadata = _env(
        "GOOGLE_METADATA_URL", "https://accounts.google.com/.well-known/openid-configuration"
    )
    return {
        "SECRET_KEY": load_secret_key(instance_path),
        "SQLALCHEMY_DATABASE_URI": database_url(instance_path),
        "REDIS_URL": redis_url(instance_path),
        "REDIS_EMBEDDED": _env("REDIS_URL") is None,
        "PUBLIC_BASE_URL": public_base_url,
        "PROXY_COUNT": _int("PROXY_COUNT", 0),
        "GOOGLE_CLIENT_ID": _env("GOOGLE_CLIENT_ID"),
        "GOOGLE_CLIENT_SECRET": _env("GOOGLE_CLIENT_SECRET"),
        "GOOGLE_ALLOWED_DOMAINS": _csv("GOOGLE_ALLOWED_DOMAINS"),
        "GOOGLE_METADATA_URL": google_metadata,
        "CONTACTS_LIST_CACHE_SECONDS": _int("CONTACTS_LIST_CACHE_SECONDS", 300),
        "SIGNED_IN_USER_CACHE_SECONDS": _int("SIGNED_IN_USER_CACHE_SECONDS", 60),
        "DEFAULT_PHONE_REGION": (_env("DEFAULT_PHONE_REGION", "US") or "US").upper(),
        "LOGIN_MAX_FAILURES_PER_ACCOUNT": _int("LOGIN_MAX_FAILURES_PER_ACCOUNT", 5),
        "LOGIN_MAX_FAILURES_PER_IP": _int("LOGIN_MAX_FAILURES_PER_IP", 20),
        "LOGIN_FAILURE_WINDOW_SECONDS": _int("LOGIN_FAILURE_WINDOW_SECONDS", 900),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": https,
        "REMEMBER_COOKIE_SECURE": https,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "PREFERRED_URL_SCHEME": "https" if https else "http",
        "MAX_CONTENT_LENGTH": _int("MAX_CONTENT_LENGTH", 16 * 1024 * 1024),
        "WTF_CSRF_TIME_LIMIT": _int("CSRF_TIME_LIMIT_SECONDS", 8 * 3600),
        # No pool_pre_ping: crm.extensions tests only connections that sat idle.
        "SQLALCHEMY_ENGINE_OPTIONS": {},
        **integrations(),
    }


def integrations() -> dict:
    """Provider credentials, API base URLs (tests point these at local fakes) and policies."""
    return {
        "TWILIO_ACCOUNT_SID": _env("TWILIO_ACCOUNT_SID"),
        "TWILIO_AUTH_TOKEN": _env("TWILIO_AUTH_TOKEN"),
        "TWILIO_API_BASE": _env("TWILIO_API_BASE", "https://api.twilio.com"),
        "TWILIO_SMS_FROM": _env("TWILIO_SMS_FROM"),
        "TWILIO_WHATSAPP_FROM": _env("TWILIO_WHATSAPP_FROM"),
        "TWILIO_MESSAGING_SERVICE_SID": _env("TWILIO_MESSAGING_SERVICE_SID"),
        "TWILIO_DEMO": _env("TWILIO_DEMO") == "1",  # `flask serve` runs a local Twilio fake
        "RATE_LIMITS": {
            # Requests a second to Twilio's REST API from the whole account.
            "twilio": _rate("TWILIO_API_RATE", 100.0, burst=None),
            # Per sender: one SMS segment a second per long code, with a burst of one so
            # that no 1-second window holds more than the rate; 80 WhatsApp messages a
            # second, a second's worth at once (as policy.LIMITS).
            "twilio:sms": _rate("TWILIO_SMS_RATE", 1.0),
            "twilio:whatsapp": _rate("TWILIO_WHATSAPP_RATE", 80.0, burst=None),
        },
        "MESSAGING_HELP_REPLY": _env(
            "MESSAGING_HELP_REPLY",
            "Reply STOP to stop receiving messages from us, START to receive them again.",
        ),
        "MESSAGING_LEASE_SECONDS": _float("MESSAGING_LEASE_SECONDS", 120.0),
        "MESSAGING_RETRY_INTERVALS": [float(v) for v in _csv_raw("MESSAGING_RETRY_INTERVALS")]
        or None,
        "MESSAGING_SWEEP_INTERVAL_SECONDS": _int("MESSAGING_SWEEP_INTERVAL_SECONDS", 60),
        "MESSAGING_BATCH_SIZE": _int("MESSAGING_BATCH_SIZE", 50),
        "STRIPE_SECRET_KEY": _env("STRIPE_SECRET_KEY"),
        "STRIPE_WEBHOOK_SECRETS": _csv_raw("STRIPE_WEBHOOK_SECRET"),
        "STRIPE_API_BASE": _env("STRIPE_API_BASE", "https://api.stripe.com"),
        # The platform's share of a booking paid to a coach's Connect account, in percent.
        "STRIPE_PLATFORM_FEE_PERCENT": _float("STRIPE_PLATFORM_FEE_PERCENT", 10.0),
        # Currency of services and products that do not name one.
        "PAYMENTS_CURRENCY": (_env("PAYMENTS_CURRENCY", "usd") or "usd").lower(),
        "CALENDLY_CLIENT_ID": _env("CALENDLY_CLIENT_ID"),
        "CALENDLY_CLIENT_SECRET": _env("CALENDLY_CLIENT_SECRET"),
        "CALENDLY_WEBHOOK_SIGNING_KEY": _env("CALENDLY_WEBHOOK_SIGNING_KEY"),
        "CALENDLY_API_BASE": _env("CALENDLY_API_BASE", "https://api.calendly.com"),
        "CALENDLY_AUTH_BASE": _env("CALENDLY_AUTH_BASE", "https://auth.calendly.com"),
        "CALCOM_WEBHOOK_SECRET": _env("CALCOM_WEBHOOK_SECRET"),
        # Fernet key for provider tokens at rest; without it one is derived from SECRET_KEY.
        "TOKEN_ENCRYPTION_KEY": _env("TOKEN_ENCRYPTION_KEY"),
        "CALENDLY_AVAILABILITY_TTL_SECONDS": _int("CALENDLY_AVAILABILITY_TTL_SECONDS", 300),
        # Refresh a Calendly access token this long before it expires.
        "CALENDLY_REFRESH_MARGIN_SECONDS": _int("CALENDLY_REFRESH_MARGIN_SECONDS", 300),
        # No client messages between these local times ("HH:MM-HH:MM"; empty: none).
        "BOOKING_QUIET_HOURS": _env("BOOKING_QUIET_HOURS", "21:00-08:00"),
        "BOOKINGS_SWEEP_INTERVAL_SECONDS": _int("BOOKINGS_SWEEP_INTERVAL_SECONDS", 300),
        "SMTP_HOST": _env("SMTP_HOST"),
        "SMTP_PORT": _int("SMTP_PORT", 587),
        "SMTP_USERNAME": _env("SMTP_USERNAME"),
        "SMTP_PASSWORD": _env("SMTP_PASSWORD"),
        "SMTP_FROM": _env("SMTP_FROM"),
        "SMTP_STARTTLS": _env("SMTP_STARTTLS", "1") != "0",
        "CRM_SYNC_URL": (_env("CRM_SYNC_URL") or "").rstrip("/") or None,
        "CRM_SYNC_TOKEN": _env("CRM_SYNC_TOKEN"),
        "CRM_SYNC_DELAY_SECONDS": _float("CRM_SYNC_DELAY_SECONDS", 5.0),
        "CRM_SYNC_RETRY_INTERVALS": [float(v) for v in _csv_raw("CRM_SYNC_RETRY_INTERVALS")]
        or None,
        "TWILIO_WEBHOOK_SHARED_KEY": _env("TWILIO_WEBHOOK_SHARED_KEY"),
        "WEBHOOK_MAX_BYTES": _int("WEBHOOK_MAX_BYTES", 256 * 1024),
        "WEBHOOK_MAX_RETRIES": _int("WEBHOOK_MAX_RETRIES", 5),
        "WEBHOOKS_SWEEP_INTERVAL_SECONDS": _int("WEBHOOKS_SWEEP_INTERVAL_SECONDS", 60),
        "WEBHOOK_RETRY_INTERVALS": [float(v) for v in _csv_raw("WEBHOOK_RETRY_INTERVALS")] or None,
        "INTEGRATION_TIMEOUT_SECONDS": _float("INTEGRATION_TIMEOUT_SECONDS", 10.0),
        "CIRCUIT_FAILURE_THRESHOLD": _int("CIRCUIT_FAILURE_THRESHOLD", 5),
        "CIRCUIT_RESET_SECONDS": _int("CIRCUIT_RESET_SECONDS", 60),
        "HEALTH_PROBE_INTERVAL_SECONDS": _int("HEALTH_PROBE_INTERVAL_SECONDS", 300),
    }
