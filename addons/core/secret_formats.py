"""What Tollgate's own secrets look like: minted, hashed for the ledger, shown, and told apart from a
provider's key. Below both the ledger (which stores keys hashed) and authentication (which reads them).
"""

from __future__ import annotations

import hashlib
import secrets

SECRET_PREFIX = "tg_sk_"
SIGNED_PREFIX = "tgt_"
FORWARD_TOKEN_PREFIX = "eyJ"  # base64 of '{"': every forward token is a JSON object


def new_secret_key() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """Secret keys carry 256 random bits, so a plain SHA-256 is a safe at-rest form."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[: len(SECRET_PREFIX) + 4] + "…"


def provider_key_prefix(key: str) -> str:
    """"sk-pr…": enough to tell keys apart in a list, never enough to matter (a quarter at most)."""
    return key[: min(5, len(key) // 4)] + "…"


def looks_like_forward_token(value: str) -> bool:
    """Base64 of a JSON object; a JWT (some providers' keys) starts the same but has dots, base64 never."""
    return value.startswith(FORWARD_TOKEN_PREFIX) and "." not in value


def looks_like_tollgate_credential(value: str) -> bool:
    return value.startswith((SECRET_PREFIX, SIGNED_PREFIX)) or looks_like_forward_token(value)
