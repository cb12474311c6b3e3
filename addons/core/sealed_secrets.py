"""Secrets Tollgate must read back to use, such as a webhook's signing secret, kept encrypted at rest.

Tollgate's own keys are stored hashed: it only ever compares them. A webhook signing secret is a
secret Tollgate shares with the receiver and signs with (HMAC), as Stripe does, so it must stay
readable. The ledger keeps it sealed (Fernet: AES-128-CBC with HMAC-SHA256, authenticated) under a
key that is not in the ledger: env TOLLGATE_SECRETS_KEY (a Fernet key; the same one on every host
sharing a PostgreSQL ledger), else data/sealed-secrets.key, created once (0600) by whichever process is
first. A copy of the database alone reveals no secret. Losing the key loses the sealed secrets:
their webhooks must be created again.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from addons.core.files import create_once
from addons.core.settings import PROJECT_ROOT

KEY_ENV = "TOLLGATE_SECRETS_KEY"
KEY_FILE = PROJECT_ROOT / "data" / "sealed-secrets.key"


class UnsealError(Exception):
    """A sealed secret this key cannot open (the key changed, or the value is not a sealed secret)."""


def _key_file() -> bytes:
    path = Path(KEY_FILE)
    create_once(path, Fernet.generate_key() + b"\n")  # every process ends up with the first one's key
    return path.read_bytes().strip()


def _fernet() -> Fernet:
    key = os.environ.get(KEY_ENV, "").strip().encode() or _key_file()
    try:
        return Fernet(key)
    except ValueError:
        raise ValueError(f"the secrets key ({KEY_ENV} or {KEY_FILE}) is not a Fernet key "
                         "(32 bytes, url-safe base64)") from None


def seal(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def unseal(sealed: str) -> str:
    try:
        return _fernet().decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise UnsealError(f"a sealed secret cannot be opened with this key ({KEY_ENV} or {KEY_FILE} changed?)") \
            from None
