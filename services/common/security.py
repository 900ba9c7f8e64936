"""API keys and webhook secrets: generated once, only a hash of the key is stored."""

from __future__ import annotations

import base64
import hashlib
import secrets

API_KEY_PREFIX = "cct_"


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(api_key: str) -> str:
    # Keys are 256-bit random, so a plain SHA-256 is enough (no password-style stretching).
    return hashlib.sha256(api_key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


def new_webhook_secret() -> str:
    """Standard Webhooks format: ``whsec_`` + base64 of a random 24-byte key."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
