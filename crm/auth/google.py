"""Google sign-in through Authlib's OIDC client (state, nonce and ID token checks)."""

from __future__ import annotations

from flask import Flask, current_app

from crm.auth.services import GoogleIdentity
from crm.extensions import oauth


def is_configured(app: Flask | None = None) -> bool:
    cfg = (app or current_app).config
    return bool(cfg.get("GOOGLE_CLIENT_ID") and cfg.get("GOOGLE_CLIENT_SECRET"))


def register(app: Flask) -> None:
    # Authlib reads GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET and GOOGLE_SERVER_METADATA_URL
    # from the app's config, so the metadata URL can point at a local provider in tests.
    app.config.setdefault("GOOGLE_SERVER_METADATA_URL", app.config["GOOGLE_METADATA_URL"])
    if "google" not in oauth._registry:
        oauth.register("google", client_kwargs={"scope": "openid email profile"})


def client():
    return oauth.create_client("google")


def identity_from_token(token: dict) -> GoogleIdentity:
    """Read the identity from the ID token claims Authlib has already validated."""
    claims = token.get("userinfo") or {}
    if not claims.get("sub") or not claims.get("email"):
        raise ValueError("the ID token has no sub or email claim")
    return GoogleIdentity(
        sub=str(claims["sub"]),
        email=str(claims["email"]).lower(),
        email_verified=claims.get("email_verified") is True,
        name=str(claims.get("name") or ""),
        hosted_domain=claims.get("hd"),
    )
