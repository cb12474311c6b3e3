"""`POST /v1/rewrite/{format}/{target URL}`: what the Gateway needs to translate a request and its answer.

The target URL names a catalog provider (its `api_family` picks the provider format). An SDK pointed at
the rewrite URL as its base URL glues its own path onto it (the OpenAI SDK `/chat/completions`, Anthropic's
`/v1/messages`, google-genai's `/v1beta/models/{model}:generateContent`), so the path is read as the
provider's endpoint followed by the client's: the first provider endpoint in it (`/chat/completions`,
`/v1/messages`, `models/{model}:...`, `model/{model}/converse`) ends the provider part; where it has none,
the client's own suffix is cut off and the provider family's endpoint put in its place. Lava's SDK sends
the target URL alone, which reads the same way.

The request is translated client -> hub -> provider here, before the usage reader and the cashier see it,
so holds, limits, metering and billing work on the provider's request as for a native one. The answer is
translated back: a whole body in `translate_response`, a stream by `RewriteStream`, which feeds the
provider's bytes to the usage reader's tap first and translates them after (metering reads the provider's
own bytes).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from addons.core.errors import BadRequest
from addons.rewrite.formats import CLIENT_FORMATS, PROVIDER_FAMILIES
from addons.rewrite.hub import UNTRANSLATABLE, Untranslatable

log = logging.getLogger(__name__)

REWRITE_PREFIX = "/v1/rewrite/"
SIGV4_SERVICE = "bedrock"  # what boto3's bedrock-runtime client signs for, as the bedrock client format
_TARGET = re.compile(r"^(https?):/{1,2}", re.IGNORECASE)  # a proxy or client may have merged the "//"

# Where the provider's endpoint ends in a target path, by provider family.
_PROVIDER_ENDPOINT = {
    "openai": re.compile(r"/chat/completions(?=/|$)"),
    "anthropic": re.compile(r"/v1/messages(?=/|$)"),
    "gemini": re.compile(r"/models/[^/:]+(?::[A-Za-z]+)?(?=/|$)"),
    "bedrock": re.compile(r"/model/[^/]+/converse(?:-stream)?(?=/|$)"),
}
# The path an SDK of each client format adds to its base URL.
_CLIENT_SUFFIX = {
    "openai": re.compile(r"/chat/completions$"),
    "anthropic": re.compile(r"(?:/v1)?/messages$"),
    "google": re.compile(r"(?:/v1[a-z0-9]*)?/models/[^/]+?:(?:streamGenerateContent|generateContent)$"),
    "bedrock": re.compile(r"/model/[^/]+/converse(?:-stream)?$"),
}
_GOOGLE_METHOD = re.compile(r"models/([^/]+?):(streamGenerateContent|generateContent)(?:$|[/?])")
_BEDROCK_METHOD = re.compile(r"model/([^/]+)/(converse-stream|converse)")
_VERSIONED = re.compile(r"/v\d+(?:alpha\d*|beta\d*)?$")
# Providers whose chat completions take the output limit as max_completion_tokens (OpenAI's reasoning models refuse
# max_tokens); the rest of the OpenAI family keeps max_tokens, which every compatible API reads.
MAX_COMPLETION_TOKENS = frozenset({"openai"})
# Headers a provider family requires that a client of another format does not send.
PROVIDER_HEADERS = {"anthropic": {"anthropic-version": "2023-06-01"}}
_SUFFIX_TAIL = {"gemini": re.compile(r"/models/[^/]*$"), "bedrock": re.compile(r"/model/(?:[^/]+/[^/]*)?$")}


@dataclass(slots=True)
class RewriteRequest:
    """What parsing the rewrite path found: the client's format, the provider URL, the client's own route."""

    client_format: str
    client: ModuleType
    target: str  # the provider URL up to its endpoint (no query): what parse_forward_target checks
    client_path: str  # what the client's SDK added (e.g. /v1beta/models/m:streamGenerateContent), or ""
    query: list[tuple[str, str]]


@dataclass(slots=True)
class Rewrite:
    """A rewritten request in flight: the two format modules and what the answer's translation needs."""

    client_format: str
    client: ModuleType
    provider: ModuleType
    stream: bool
    model: str | None  # the provider model the request names
    signed_request: Any = None  # a bedrock client's request as it signed it (SigV4), for the gateway to check
    encoder: type | None = None  # the client's stream encoder, where it is not its format's StreamFromHub


def untranslatable(error: Untranslatable) -> BadRequest:
    return BadRequest(UNTRANSLATABLE, f"cannot translate {error.field}: {error.why}", details={"param": error.field})


def parse_rewrite_path(path: str) -> RewriteRequest:
    """`/v1/rewrite/{format}/{target URL}[{client path}][?query]`, the target not URL-encoded."""
    rest, _, query = path[len(REWRITE_PREFIX):].partition("?")
    client_format, _, target = rest.partition("/")
    client = CLIENT_FORMATS.get(client_format)
    if client is None:
        raise BadRequest("unknown_format", f"rewrite format must be one of {', '.join(sorted(CLIENT_FORMATS))}")
    target = unquote(target) if "%3A%2F%2F" in target[:12].upper() else target  # an encoded target works too
    m = _TARGET.match(target)
    if m is None:
        raise BadRequest("invalid_rewrite_url", "the rewrite path must end with an absolute https URL of a "
                                                "catalog provider: /v1/rewrite/{format}/https://...")
    target = f"{m[1].lower()}://{target[m.end():]}"
    params = parse_qsl(query.replace("?", "&"), keep_blank_values=True)  # google-genai glues "?alt=sse" on
    return RewriteRequest(client_format, client, target, "", params)


def split_target(req: RewriteRequest, api_family: str) -> tuple[str, str]:
    """(provider path, client path) of the target URL's path, for a provider of `api_family`."""
    scheme, _, rest = req.target.partition("://")
    slash = rest.find("/")
    path = rest[slash:] if slash >= 0 else ""
    if (found := _PROVIDER_ENDPOINT[api_family].search(path)) is not None:
        return path[: found.end()], path[found.end():]
    client_suffix = _CLIENT_SUFFIX[req.client_format].search(path)
    prefix, client_path = (path[: client_suffix.start()], path[client_suffix.start():]) if client_suffix else (
        path.rstrip("/"), "")
    prefix = prefix.rstrip("/")
    version = "" if _VERSIONED.search(prefix) else {"openai": "/v1", "gemini": "/v1beta"}.get(api_family, "")
    default = {"openai": "/chat/completions", "anthropic": "/v1/messages", "gemini": "/models/",
               "bedrock": "/model/"}[api_family]
    if api_family == "anthropic":
        prefix = prefix.removesuffix("/v1")
    return prefix + version + default, client_path


def origin_of(url: str) -> str:
    """scheme://host[:port] of a URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def client_route(client_format: str, client_path: str, provider_path: str) -> tuple[str | None, bool | None]:
    """The model and stream flag a google or bedrock client put in its URL (the provider path stands in for a
    client that added none, as Lava's SDK does)."""
    for path in (client_path, provider_path):
        if client_format == "google" and (m := _GOOGLE_METHOD.search(path)):
            return unquote(m[1]), m[2] == "streamGenerateContent"
        if client_format == "bedrock" and (m := _BEDROCK_METHOD.search(path)):
            return unquote(m[1]), m[2] == "converse-stream"
    return None, None


def provider_model_in_url(api_family: str, provider_path: str) -> str | None:
    if api_family == "gemini" and (m := re.search(r"/models/([^/:]+)", provider_path)):
        return unquote(m[1])
    if api_family == "bedrock" and (m := re.search(r"/model/([^/]+)/", provider_path)):
        return unquote(m[1])
    return None


def translate_request(req: RewriteRequest, api_family: str, raw_body: bytes,
                      provider_id: str = "") -> tuple[str, bytes, Rewrite]:
    """The provider path (and query) and body for a rewrite request; raises BadRequest (untranslatable)."""
    provider = PROVIDER_FAMILIES.get(api_family)
    if provider is None:
        raise BadRequest("untranslatable", f"the target's provider speaks {api_family!r}, which the rewrite endpoint "
                                           f"does not translate (it translates {', '.join(sorted(PROVIDER_FAMILIES))})")
    provider_path, client_path = split_target(req, api_family)
    try:
        body = json.loads(raw_body or b"{}")
    except ValueError:
        raise BadRequest("invalid_json", "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("invalid_json", "the request body must be a JSON object")
    model, stream = client_route(req.client_format, client_path, provider_path)
    try:
        hub = req.client.request_to_hub(body)
        if model is not None and not hub.get("model"):
            hub["model"] = model
        if stream is not None:
            hub["stream"] = stream
        if not hub.get("model") and not provider_model_in_url(api_family, provider_path):
            raise Untranslatable("model", "no model is named (in the body or the URL)")
        suffix, provider_body = provider.request_from_hub(hub, provider_model_in_url(api_family, provider_path))
    except Untranslatable as e:
        raise untranslatable(e) from None
    if provider_id in MAX_COMPLETION_TOKENS and "max_tokens" in provider_body:
        provider_body["max_completion_tokens"] = provider_body.pop("max_tokens")
    if suffix:
        tail = _SUFFIX_TAIL[api_family].search(provider_path)
        base = provider_path[: tail.start()] if tail else provider_path.rstrip("/")
        provider_path = f"{base}/{suffix}"
    rewrite = Rewrite(req.client_format, req.client, provider, bool(hub.get("stream")),
                      hub.get("model") or provider_model_in_url(api_family, provider_path))
    if req.client_format == "google" and ("alt", "sse") not in req.query:
        rewrite.encoder = req.client.ArrayStreamFromHub  # a Google client that did not ask for SSE
    return provider_path, json.dumps(provider_body).encode(), rewrite


def translate_response(rewrite: Rewrite, status: int, body: bytes) -> bytes:
    """A whole answer in the client's format: an error in its error shape, a result translated via the hub."""
    if status >= 400:
        message = rewrite.provider.error_to_hub(status, body)
        return rewrite.client.error_from_hub(status, message)
    hub = rewrite.provider.response_to_hub(json.loads(body))
    hub.setdefault("model", rewrite.model)
    answer = rewrite.client.response_from_hub(hub)
    return answer if isinstance(answer, bytes) else json.dumps(answer).encode()


class RewriteStream:
    """The stream callable of a rewritten answer: the usage reader's tap sees the provider's bytes first
    (metering is unchanged), then they are translated event by event, nothing held back but a partial event."""

    __slots__ = ("tap", "decoder", "encoder", "broken")

    def __init__(self, tap: Callable[[bytes], Iterable[bytes]], rewrite: Rewrite) -> None:
        self.tap = tap
        self.decoder = rewrite.provider.StreamToHub(rewrite.model)
        self.encoder = (rewrite.encoder or rewrite.client.StreamFromHub)(rewrite.model)
        self.broken = False

    def __call__(self, data: bytes) -> tuple[bytes, ...]:
        self.tap(data)
        if self.broken:
            return ()
        try:
            if data:
                out = b"".join(self.encoder.feed(c) for c in self.decoder.feed(data))
            else:
                out = b"".join(self.encoder.feed(c) for c in self.decoder.close()) + self.encoder.close()
        except Exception:  # a translator bug must not take the metering down with it
            log.exception("tollgate: a rewritten stream could not be translated; it ends with an error event")
            self.broken = True
            return self._error_event()
        return (out,) if out else ()

    def _error_event(self) -> tuple[bytes, ...]:
        """The client's own error event, so its SDK raises instead of seeing a stream that merely stops."""
        error = {"error": {"type": UNTRANSLATABLE, "code": 502,
                           "message": "the provider's stream could not be translated into the client's format"}}
        try:
            return (self.encoder.feed(error),)
        except Exception:
            return ()
