"""Provider tokens at rest: Fernet (AES-128-CBC with HMAC-SHA256) over the token text.

The key is TOKEN_ENCRYPTION_KEY (a urlsafe-base64 Fernet key, `Fernet.generate_key()`).
When it is unset, a key is derived from SECRET_KEY with HKDF-SHA256 (no salt, info
`rapport token encryption v1`): the derived key is independent of the session-signing
key yet stable across restarts. Changing SECRET_KEY then makes stored tokens unreadable:
`decrypt` raises TokenError and the coach reconnects. Set TOKEN_ENCRYPTION_KEY to keep
tokens when rotating SECRET_KEY.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app

HKDF_INFO = b"rapport token encryption v1"


class TokenError(Exception):
    """A stored token that this key cannot read (a changed key, a damaged value)."""


def _derive(secret: str) -> bytes:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(
        secret.encode()
    )
    return base64.urlsafe_b64encode(key)


def _fernet() -> Fernet:
    configured = current_app.config.get("TOKEN_ENCRYPTION_KEY")
    if configured:
        return Fernet(configured.encode() if isinstance(configured, str) else configured)
    return Fernet(_derive(current_app.config["SECRET_KEY"]))


def encrypt(text: str) -> str:
    """Encrypt a token for storage."""
    return _fernet().encrypt(text.encode()).decode("ascii")


def decrypt(token: str) -> str:
    """Read a stored token; TokenError when this key did not encrypt it."""
    try:
        return _fernet().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, ValueError) as exc:
        raise TokenError("the stored token cannot be decrypted with the current key") from exc
