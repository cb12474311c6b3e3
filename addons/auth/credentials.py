"""Tollgate credentials: secret keys, Lava-style forward tokens, signed tokens, and where callers put them.

A caller puts its Tollgate credential wherever its SDK puts the provider key, so every
provider-style key header is read, and every one of them is stripped before forwarding.

An app that was never changed for Tollgate sends its own provider key (`sk-...`) there instead.
Anything that is neither a secret key, a signed token nor a forward token (base64 of a JSON object:
"eyJ..." without dots) is taken for such a provider key; auth.authentication decides what it may do.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import asdict, dataclass

from addons.auth.signed_tokens import UNSAFE_TEXT
from addons.core.errors import BadRequest, Unauthorized
from addons.core.secret_formats import SECRET_PREFIX, SIGNED_PREFIX, looks_like_forward_token

# Header names SDKs put a provider key in: OpenAI & co, Anthropic, Gemini, Azure, ElevenLabs.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key", "xi-api-key")
GATEWAY_HEADER_PREFIXES = ("x-lava-", "x-tollgate-")
_CREDENTIAL_FIELDS = {name.encode(): name for name in CREDENTIAL_HEADERS}  # raw lower-case name -> name
_GATEWAY_PREFIXES = tuple(prefix.encode() for prefix in GATEWAY_HEADER_PREFIXES)
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
_TOKEN_FIELDS = {"secret_key", "customer_id", "meter_slug", "provider_key", "disable_billing"}
# What a provider key can be made of: printable ASCII, no spaces (it goes back into a header as it came).
_PROVIDER_KEY = re.compile(r"[\x21-\x7e]+")


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
    """Exactly one of: a secret key (plain, or inside a forward token), a signed token, or a provider key
    the app sent in place of a Tollgate credential."""

    secret_key: str | None = None
    token: ForwardToken | None = None
    signed_token: str | None = None
    provider_key: str | None = None


def _header_value(name: str, value: str) -> str:
    if name == "authorization":
        scheme, _, rest = value.partition(" ")
        # fal's clients send "Key <key>", Replicate's older ones "Token <key>"
        return rest.strip() if scheme.lower() in ("bearer", "key", "token") else value.strip()
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
    """Find the caller's credential; a secret key or signed token wins over anything else present, else the
    first one found is a forward token if it is base64 JSON, a provider key otherwise."""
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
    if looks_like_forward_token(candidates[0]):
        token = decode_forward_token(candidates[0])
        return CallerCredential(secret_key=token.secret_key, token=token)
    if not _PROVIDER_KEY.fullmatch(candidates[0]):
        raise Unauthorized("invalid_credential", "credential is neither a Tollgate credential nor a provider key")
    return CallerCredential(provider_key=candidates[0])


# mitmproxy modes (ProxyMode.type_name) in which an app reaches the gateway without having been pointed at it.
CAPTURE_MODES = frozenset({"transparent", "wireguard", "local"})


def is_captured(mode) -> bool:
    """Whether the client was captured (transparent, WireGuard, local) rather than configured to use the
    gateway (HTTPS_PROXY, the forward endpoint, reverse mode): a captured app's provider key is expected,
    and refused under its own code."""
    return mode.type_name in CAPTURE_MODES


def query_key(request) -> str | None:
    """The request's `key` query parameter (where Gemini's SDK puts a key); the query is parsed only when the
    path could hold one, as parsing costs more than this look."""
    return request.query.get("key") if "key" in request.path else None


def forwarded_headers(headers, replacing: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """Remove every credential and gateway header so nothing of Tollgate's reaches a provider, and set the
    `replacing` fields (lower-case names) in place of any of those names: one pass over the raw fields, where
    setting each header on its own walks and rebuilds them once per header."""
    names = {name for name, _ in replacing}
    kept = tuple((raw_name, raw_value) for raw_name, raw_value in headers.fields
                 if not ((name := raw_name.lower()) in names or _is_gateway_header(name)))
    if replacing or len(kept) != len(headers.fields):
        headers.fields = kept + replacing


def _is_gateway_header(name: bytes) -> bool:
    return name in _CREDENTIAL_FIELDS or name.startswith(_GATEWAY_PREFIXES)
