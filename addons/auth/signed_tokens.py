"""Signed forward tokens: HMAC-SHA256 claims that name a merchant key by id, never by secret.

    tgt_<base64url(compact JSON claims)>.<base64url(HMAC-SHA256(signing_key, "tgt_" + claims_b64))>

A leaked token reveals neither the merchant secret nor the signing key, and any change to it
breaks the signature. The signature is checked on the exact text (before any JSON parsing), so
non-canonical base64 cannot smuggle a second spelling of a valid token past the check.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from addons.core.errors import BadRequest, Forbidden, Unauthorized
from addons.core.files import create_once
from addons.core.secret_formats import SIGNED_PREFIX
from pricing.money import format_usd, parse_usd

MIN_KEY_CHARS = 32
# A token's strings end up in a header (a provider key), database text columns and hashes: no
# CR/LF to split a header, no NUL (PostgreSQL refuses it), no lone surrogate (not UTF-8).
UNSAFE_TEXT = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_STRINGS = {"cus": "customer_id", "met": "meter_slug", "pk": "provider_key"}
_FIELDS = {"v", "jti", "kid", "iat", "exp", "dis", "prov", "mod", "cap", *_STRINGS}


@dataclass(frozen=True, slots=True)
class SignedClaims:
    token_id: str
    key_id: str
    issued_at: int
    expires_at: int | None = None
    customer_id: str | None = None
    meter_slug: str | None = None
    provider_key: str | None = None
    disable_billing: bool = False
    allow_providers: tuple[str, ...] = ()
    allow_models: tuple[str, ...] = ()
    spend_cap_nanos: int | None = None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _sign(signing_key: bytes, claims_b64: str) -> str:
    return _b64(hmac.new(signing_key, (SIGNED_PREFIX + claims_b64).encode(), hashlib.sha256).digest())


def issue_signed_token(signing_key: bytes, *, key_id: str, customer_id=None, meter_slug=None, provider_key=None,
                       disable_billing=False, expires_in: int | None = None, allow_providers=(), allow_models=(),
                       spend_cap_nanos: int | None = None, now: float | None = None) -> str:
    if not key_id:
        raise ValueError("key_id is required")
    if expires_in is not None and expires_in <= 0:
        raise ValueError("expires_in must be a positive number of seconds")
    if spend_cap_nanos is not None and spend_cap_nanos <= 0:
        raise ValueError("spend cap must be positive")
    iat = int(time.time() if now is None else now)
    claims = {"v": 1, "jti": secrets.token_hex(16), "kid": key_id, "iat": iat,
              "exp": iat + expires_in if expires_in is not None else None,
              "cus": customer_id or None, "met": meter_slug or None, "pk": provider_key or None,
              "dis": True if disable_billing else None, "prov": list(allow_providers) or None,
              "mod": list(allow_models) or None,
              "cap": format_usd(spend_cap_nanos) if spend_cap_nanos is not None else None}
    body = _b64(json.dumps({k: v for k, v in claims.items() if v is not None}, separators=(",", ":")).encode())
    return f"{SIGNED_PREFIX}{body}.{_sign(signing_key, body)}"


def _invalid(message: str) -> BadRequest:
    return BadRequest("invalid_signed_token", message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_list(data: dict, name: str) -> tuple[str, ...]:
    value = data.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise _invalid(f"signed token claim {name} must be a list of strings")
    return tuple(value)


def verify_signed_token(token: str, signing_key: bytes, *, now: float | None = None) -> SignedClaims:
    text = token if isinstance(token, str) else ""
    body, dot, sig = text.removeprefix(SIGNED_PREFIX).partition(".")
    if not (text.startswith(SIGNED_PREFIX) and dot and _B64URL.fullmatch(body) and _B64URL.fullmatch(sig)):
        raise _invalid("signed token must be tgt_<claims>.<signature> in unpadded base64url")
    if not hmac.compare_digest(_sign(signing_key, body), sig):
        raise Unauthorized("token_signature_invalid", "signed token signature does not verify")
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise _invalid("signed token claims are not base64url JSON") from None
    if not isinstance(data, dict):
        raise _invalid("signed token claims must be a JSON object")
    if set(data) - _FIELDS:
        raise _invalid(f"signed token claims must be among {', '.join(sorted(_FIELDS))}")
    if data.get("v") != 1 or not _is_int(data["v"]):
        raise _invalid("unsupported signed token version")
    for name in ("jti", "kid", *(n for n in _STRINGS if n in data)):
        if not isinstance(data.get(name), str) or not data[name] or UNSAFE_TEXT.search(data[name]):
            raise _invalid(f"signed token claim {name} must be a non-empty string without control characters")
    if not _is_int(data.get("iat")) or not _is_int(data.get("exp", 0)):
        raise _invalid("signed token claims iat and exp must be integers")
    if data.get("dis", True) is not True:
        raise _invalid("signed token claim dis must be true when present")
    cap = data.get("cap")
    if "cap" in data:
        try:
            cap = parse_usd(cap if isinstance(cap, str) else "")
        except ValueError:
            raise _invalid("signed token claim cap must be a positive decimal USD string") from None
    claims = SignedClaims(
        token_id=data["jti"], key_id=data["kid"], issued_at=data["iat"], expires_at=data.get("exp"),
        **{field: data.get(name) for name, field in _STRINGS.items()}, disable_billing="dis" in data,
        allow_providers=_str_list(data, "prov"), allow_models=_str_list(data, "mod"), spend_cap_nanos=cap)
    if claims.expires_at is not None and (time.time() if now is None else now) >= claims.expires_at:
        raise Unauthorized("token_expired", "signed token has expired")
    return claims


@functools.lru_cache(maxsize=4096)  # a key's or token's lists and the request's model: read on each of its requests
def out_of_scope(allow_providers: tuple[str, ...], allow_models: tuple[str, ...], provider_id: str,
                 model: str | None) -> str | None:
    """What an allow-list refuses of this request ("provider X" or "model Y"), or None. Empty lists allow
    everything; a model pattern ending in * is a prefix. Signed tokens and keys share it."""
    if allow_providers and provider_id not in allow_providers:
        return f"provider {provider_id}"
    if allow_models and not (model is not None and (model in allow_models or model.startswith(
            tuple(allowed[:-1] for allowed in allow_models if allowed.endswith("*"))))):
        return f"model {model or '(none)'}"
    return None


def check_scope(claims: SignedClaims, provider_id: str, model: str | None) -> None:
    if refused := out_of_scope(claims.allow_providers, claims.allow_models, provider_id, model):
        raise Forbidden("token_scope", f"this token does not allow {refused}")


def load_signing_key(configured: str | None, path: Path) -> bytes:
    """Configured key wins; else the key file, created once (0600) by whichever process is first
    (core.files.create_once: a racing process never reads a half-written key)."""
    if configured:
        if len(configured) < MIN_KEY_CHARS:
            raise ValueError(f"token signing key must be at least {MIN_KEY_CHARS} characters")
        return configured.encode()
    path = Path(path)
    create_once(path, (secrets.token_hex(32) + "\n").encode())
    key = path.read_text().strip()
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(f"token signing key file {path} holds fewer than {MIN_KEY_CHARS} characters")
    return key.encode()
