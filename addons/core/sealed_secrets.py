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
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from addons.core.settings import PROJECT_ROOT

KEY_ENV = "TOLLGATE_SECRETS_KEY"
KEY_FILE = PROJECT_ROOT / "data" / "sealed-secrets.key"


class UnsealError(Exception):
    """A sealed secret this key cannot open (the key changed, or the value is not a sealed secret)."""


def _key_file() -> bytes:
    path = Path(KEY_FILE)
    if not path.exists():
        # written whole to a private temp file, then linked into place (fails if it exists meanwhile),
        # so a racing process never reads half a key and every process ends up with the same one
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(Fernet.generate_key() + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
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
