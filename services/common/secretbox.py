"""Encryption at rest for the secrets the service must read back (webhook signing secrets).

Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) through ``MultiFernet``: the first
key of ``Settings.secret_keys`` encrypts, every key decrypts, and ``rotate`` re-encrypts a
token under the first key, so the key itself can be changed without losing a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from services.common.config import Settings

KEY_FILE_NAME = "secret.key"


class SecretKeyError(RuntimeError):
    """No key can decrypt a stored secret (the keys in settings changed without a rotation)."""


def _key_file(settings: Settings) -> bytes:
    """The machine-local key of an embedded install, made once with owner-only mode."""
    path: Path = settings.var_dir / KEY_FILE_NAME
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        draft = path.with_name(f".{KEY_FILE_NAME}.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key())
        try:
            os.link(draft, path)  # atomic and exclusive: processes starting at once agree
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_bytes().strip()


def secret_box(settings: Settings) -> MultiFernet:
    keys = [k.get_secret_value().encode() for k in settings.secret_keys] or [_key_file(settings)]
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError as exc:  # a malformed key: say which setting, never print it
        raise SecretKeyError(f"COVIDCT_SECRET_KEYS holds an invalid Fernet key: {exc}") from None


def encrypt(settings: Settings, secret: str) -> str:
    return secret_box(settings).encrypt(secret.encode()).decode()


def decrypt(settings: Settings, token: str) -> str:
    try:
        return secret_box(settings).decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretKeyError(
            "no key in COVIDCT_SECRET_KEYS decrypts a stored secret; keep the old key "
            "listed until `covidct tenants reencrypt-secrets` has run"
        ) from None


def reencrypt(settings: Settings, token: str) -> str:
    """``token`` encrypted under the first key (unchanged secret)."""
    try:
        return secret_box(settings).rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretKeyError("no configured key decrypts a stored secret") from None


def derived_key(settings: Settings, purpose: str) -> bytes:
    """A key for ``purpose`` (e.g. a tenant's pseudonyms) derived from the first secret key,
    so one setting protects everything; HMAC-SHA256, never the key itself."""
    keys = [k.get_secret_value().encode() for k in settings.secret_keys] or [_key_file(settings)]
    return hmac.new(keys[0], purpose.encode(), hashlib.sha256).digest()
