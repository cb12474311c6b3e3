"""Tollgate credentials: secret keys, Lava-style forward tokens, signed tokens, and where callers put them.

A caller puts its Tollgate credential wherever its SDK puts the provider key, so every
provider-style key header is read, and every one of them is stripped before forwarding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from dataclasses import asdict, dataclass

from addons.errors import BadRequest, Unauthorized
from addons.signed_tokens import SIGNED_PREFIX, UNSAFE_TEXT

SECRET_PREFIX = "tg_sk_"
# Header names SDKs put a provider key in: OpenAI & co, Anthropic, Gemini, Azure, ElevenLabs.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key", "xi-api-key")
GATEWAY_HEADER_PREFIXES = ("x-lava-", "x-tollgate-")
_CREDENTIAL_FIELDS = {name.encode(): name for name in CREDENTIAL_HEADERS}  # raw lower-case name -> name
_GATEWAY_PREFIXES = tuple(prefix.encode() for prefix in GATEWAY_HEADER_PREFIXES)
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
_TOKEN_FIELDS = {"secret_key", "customer_id", "meter_slug", "provider_key", "disable_billing"}


def new_secret_key() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """Secret keys carry 256 random bits, so a plain SHA-256 is a safe at-rest form."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[: len(SECRET_PREFIX) + 4] + "…"


@dataclass(frozen=True, slots=True)
class ForwardToken:
    secret_key: str
    customer_id: str | None = None
    meter_slug: str | None = None
    provider_key: str | None = None
    disable_billing: bool = False


def encode_forward_token(token: ForwardToken) -> str:
    fields = {name: value for name, value in asdict(token).items() if value}
    return base64.b64encode(json.dumps(fields, separators=(",", ":")).encode()).decode()


def decode_forward_token(value: str) -> ForwardToken:
    """Decode base64(JSON); standard and URL-safe alphabets, padding optional."""
    text = value.strip().translate(_URLSAFE_TO_STANDARD)
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        data = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise BadRequest(
            "invalid_forward_token",
            "credential is neither a Tollgate secret key nor a base64 JSON forward token",
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("secret_key"), str) or not data["secret_key"]:
        raise BadRequest("invalid_forward_token", "forward token must be a JSON object with a secret_key")
    if set(data) - _TOKEN_FIELDS:  # not named: a mistyped field may hold a secret
        raise BadRequest(
            "invalid_forward_token", f"forward token fields must be among {', '.join(sorted(_TOKEN_FIELDS))}"
        )
    for name in ("secret_key", "customer_id", "meter_slug", "provider_key"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise BadRequest("invalid_forward_token", f"forward token field {name} must be a string")
        if data.get(name) and UNSAFE_TEXT.search(data[name]):
            raise BadRequest("invalid_forward_token", f"forward token field {name} holds a control character")
    if not isinstance(data.get("disable_billing", False), bool):
        raise BadRequest("invalid_forward_token", "forward token field disable_billing must be a boolean")
    return ForwardToken(
        secret_key=data["secret_key"],
        customer_id=data.get("customer_id") or None,
        meter_slug=data.get("meter_slug") or None,
        provider_key=data.get("provider_key") or None,
        disable_billing=data.get("disable_billing", False),
    )


@dataclass(frozen=True, slots=True)
class CallerCredential:
    """Exactly one of: a secret key (plain, or inside a forward token), or a signed token."""

    secret_key: str | None = None
    token: ForwardToken | None = None
    signed_token: str | None = None


def _header_value(name: str, value: str) -> str:
    if name == "authorization":
        scheme, _, rest = value.partition(" ")
        return rest.strip() if scheme.lower() == "bearer" else value.strip()
    return value.strip()


def _credential_headers(headers) -> dict[str, str]:
    """The credential headers present, in one pass over the raw fields (a lookup by name scans them all,
    once per name). Names compare as mitmproxy's Headers compare them (bytes, ASCII case folded), and a
    repeated header's values are joined with ", ", as Headers[name] does."""
    found: dict[str, list[str]] = {}
    for raw_name, raw_value in headers.fields:
        name = _CREDENTIAL_FIELDS.get(raw_name.lower())
        if name is not None:
            found.setdefault(name, []).append(raw_value.decode("utf-8", "surrogateescape"))
    return {name: ", ".join(values) for name, values in found.items()}


def read_credential(headers, query_key: str | None) -> CallerCredential:
    """Find the caller's Tollgate credential; a secret key wins over anything else present."""
    present = _credential_headers(headers)
    candidates = [_header_value(name, present[name]) for name in CREDENTIAL_HEADERS if present.get(name)]
    if query_key:
        candidates.append(query_key.strip())
    candidates = [c for c in candidates if c]
    if not candidates:
        raise Unauthorized("missing_credential", "no Tollgate secret key or forward token was sent")
    for candidate in candidates:
        if candidate.startswith(SECRET_PREFIX):
            if not candidate.isascii():  # e.g. invalid UTF-8, decoded to surrogate escapes: unhashable
                raise Unauthorized("invalid_credential", "unknown Tollgate secret key")
            return CallerCredential(secret_key=candidate)
        if candidate.startswith(SIGNED_PREFIX):
            return CallerCredential(signed_token=candidate)
    token = decode_forward_token(candidates[0])
    return CallerCredential(secret_key=token.secret_key, token=token)


def query_key(request) -> str | None:
    """The request's `key` query parameter (where Gemini's SDK puts a key); the query is parsed only when the
    path could hold one, as parsing costs more than this look."""
    return request.query.get("key") if "key" in request.path else None


def strip_gateway_credentials(headers) -> None:
    """Remove every credential and gateway header so nothing of Tollgate's reaches a provider."""
    kept = tuple((raw_name, raw_value) for raw_name, raw_value in headers.fields
                 if not _is_gateway_header(raw_name.lower()))
    if len(kept) != len(headers.fields):
        headers.fields = kept


def _is_gateway_header(name: bytes) -> bool:
    return name in _CREDENTIAL_FIELDS or name.startswith(_GATEWAY_PREFIXES)
