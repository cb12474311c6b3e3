"""The provider catalog: which hosts Tollgate intercepts, and what each one needs.

Providers are data (config/providers.yaml), so adding an OpenAI-compatible provider is a YAML
edit. Parsing is pure and strict: a typo in the catalog must stop the gateway at start-up,
not misroute a request or leak a key to the wrong host later.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from urllib.parse import urlsplit

import yaml

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "config" / "providers.yaml"
API_FAMILIES = frozenset({"openai", "anthropic", "gemini", "cohere", "elevenlabs", "voyage", "jina", "fal", "replicate"})
DEFAULT_PORTS = {"https": 443, "http": 80}

_REQUIRED = ("id", "name", "hosts", "base_url", "auth", "credential_env", "api_family", "pricing_id")
_FIELDS = frozenset(_REQUIRED) | {"upstream", "timeouts"}
_ID = re.compile(r"[a-z0-9][a-z0-9-]*")
_HOST = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+")
_HEADER = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")  # an RFC 9110 token, lower-cased
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_ENV = re.compile(r"[A-Z_][A-Z0-9_]*")

Origin = tuple[str, str, int]  # (scheme, host, port)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds one exchange with a provider may take, per phase; None is no limit.

    connect     opening the TCP connection to the provider
    first_byte  from forwarding the request (connecting included) to the provider's response headers
    idle        between two chunks of a streamed response (from its headers on)
    total       from forwarding the request to the end of the response
    """

    connect: float | None = None
    first_byte: float | None = None
    idle: float | None = None
    total: float | None = None

    def updated(self, changes: tuple[tuple[str, float | None], ...]) -> Timeouts:
        return replace(self, **dict(changes))


TIMEOUT_PHASES = tuple(f.name for f in fields(Timeouts))


def parse_timeouts(where: str, value: object) -> tuple[tuple[str, float | None], ...]:
    """The phases a mapping sets, in TIMEOUT_PHASES order: each a positive number of seconds, or null."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping of {', '.join(TIMEOUT_PHASES)} to seconds")
    if unknown := sorted(map(str, set(value) - set(TIMEOUT_PHASES))):
        raise ValueError(f"{where}: unknown phase(s) {', '.join(unknown)}; known: {', '.join(TIMEOUT_PHASES)}")
    for phase in TIMEOUT_PHASES:
        seconds = value.get(phase)
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not 0 < seconds < 10**6):
            raise ValueError(f"{where}.{phase} must be a positive number of seconds or null, not {seconds!r}")
    return tuple((phase, None if value[phase] is None else float(value[phase])) for phase in TIMEOUT_PHASES
                 if phase in value)


@dataclass(frozen=True, slots=True)
class Provider:
    id: str
    name: str
    hosts: tuple[str, ...]
    base_url: str
    credential_env: str
    api_family: str
    pricing_id: str | None
    upstream: str | None
    auth_header: str | None  # lower-case header name, or None for query auth
    auth_scheme: str | None  # e.g. "Bearer": the header value is "<scheme> <key>"
    auth_query: str | None  # query parameter name, or None for header auth
    origin: Origin  # what Tollgate actually connects to: upstream if set, else base_url's
    timeouts: tuple[tuple[str, float | None], ...] = ()  # phases set for this provider, over the gateway's


def _origin(url: str) -> Origin:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port or DEFAULT_PORTS[parts.scheme]


def _parse_url(where: str, value: object, *, origin_only: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ValueError(f"{where} {value!r} is not a valid URL: {e}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{where} {value!r} must be an absolute http(s):// URL")
    if parts.username is not None or parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError(f"{where} {value!r} must not carry user information, a query or a fragment")
    if origin_only and parts.path not in ("", "/"):
        raise ValueError(f"{where} {value!r} must be scheme://host[:port] with no path")
    return value.rstrip("/") if origin_only else value


def _parse_auth(where: str, auth: object) -> tuple[str | None, str | None, str | None]:
    if not isinstance(auth, Mapping):
        raise ValueError(f"{where} must be a mapping: {{header: ..., scheme: ...}} or {{query: ...}}")
    keys = set(auth)
    if keys in ({"header"}, {"header", "scheme"}):
        header, scheme = auth["header"], auth.get("scheme")
        if not isinstance(header, str) or not _HEADER.fullmatch(header.lower()):
            raise ValueError(f"{where}.header {header!r} is not a header name")
        if scheme is not None and (not isinstance(scheme, str) or not _SCHEME.fullmatch(scheme)):
            raise ValueError(f"{where}.scheme {scheme!r} is not an auth scheme such as Bearer")
        return header.lower(), scheme, None
    if keys == {"query"}:
        if not isinstance(auth["query"], str) or not auth["query"]:
            raise ValueError(f"{where}.query must be a non-empty parameter name")
        return None, None, auth["query"]
    raise ValueError(f"{where} must have either header (and optionally scheme) or query, got {sorted(keys)}")


def _parse_provider(index: int, entry: object) -> Provider:
    if not isinstance(entry, Mapping):
        raise ValueError(f"provider #{index + 1} must be a mapping")
    pid = entry.get("id")
    if not isinstance(pid, str) or not _ID.fullmatch(pid):
        raise ValueError(f"provider #{index + 1}: id {pid!r} must be a lower-case slug like 'openai'")
    where = f"provider {pid!r}"
    if missing := [f for f in _REQUIRED if f not in entry]:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    if unknown := sorted(set(entry) - _FIELDS):
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")

    name = entry["name"]
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: name must be a non-empty string")
    hosts = entry["hosts"]
    if not isinstance(hosts, list) or not hosts:
        raise ValueError(f"{where}: hosts must be a non-empty list of hostnames")
    for host in hosts:
        if not isinstance(host, str) or not _HOST.fullmatch(host.lower()):
            raise ValueError(f"{where}: hosts entry {host!r} is not a hostname")
    hosts = tuple(h.lower() for h in hosts)
    if len(set(hosts)) != len(hosts):
        raise ValueError(f"{where}: hosts lists a hostname twice")

    base_url = _parse_url(f"{where}: base_url", entry["base_url"], origin_only=False)
    if _origin(base_url)[1] not in hosts:
        raise ValueError(f"{where}: base_url host {_origin(base_url)[1]!r} is not one of its hosts")
    upstream = entry.get("upstream")
    if upstream is not None:
        upstream = _parse_url(f"{where}: upstream", upstream, origin_only=True)
    header, scheme, query = _parse_auth(f"{where}: auth", entry["auth"])
    timeouts = parse_timeouts(f"{where}: timeouts", entry["timeouts"]) if "timeouts" in entry else ()

    env = entry["credential_env"]
    if not isinstance(env, str) or not _ENV.fullmatch(env):
        raise ValueError(f"{where}: credential_env {env!r} must be an environment variable name like OPENAI_API_KEY")
    family = entry["api_family"]
    if family not in API_FAMILIES:
        raise ValueError(f"{where}: api_family {family!r} is not one of {', '.join(sorted(API_FAMILIES))}")
    pricing_id = entry["pricing_id"]
    if pricing_id is not None and (not isinstance(pricing_id, str) or not pricing_id):
        raise ValueError(f"{where}: pricing_id must be a genai-prices provider id or null")

    return Provider(
        id=pid,
        name=name,
        hosts=hosts,
        base_url=base_url,
        credential_env=env,
        api_family=family,
        pricing_id=pricing_id,
        upstream=upstream,
        auth_header=header,
        auth_scheme=scheme,
        auth_query=query,
        origin=_origin(upstream or base_url),
        timeouts=timeouts,
    )


def parse_providers(data: object) -> list[Provider]:
    """Validate a loaded providers.yaml document; raise ValueError naming the provider and field."""
    if not isinstance(data, Mapping) or not isinstance(data.get("providers"), list):
        raise ValueError("the catalog must be a mapping with a 'providers' list")
    if unknown := sorted(set(data) - {"providers"}):
        raise ValueError(f"the catalog has unknown top-level key(s) {', '.join(map(str, unknown))}")
    providers = [_parse_provider(i, entry) for i, entry in enumerate(data["providers"])]
    seen_ids: set[str] = set()
    seen_hosts: dict[str, str] = {}
    for p in providers:
        if p.id in seen_ids:
            raise ValueError(f"provider {p.id!r}: duplicate id")
        seen_ids.add(p.id)
        for host in p.hosts:
            if host in seen_hosts:
                raise ValueError(f"provider {p.id!r}: host {host!r} is already claimed by {seen_hosts[host]!r}")
            seen_hosts[host] = p.id
    return providers


class Catalog:
    """Lookups the proxy runs per request, so each is a single dict access."""

    __slots__ = ("providers", "origin_hosts", "_by_id", "_by_host", "_by_upstream")

    def __init__(self, providers: Iterable[Provider]) -> None:
        self.providers: tuple[Provider, ...] = tuple(providers)
        self._by_id = {p.id: p for p in self.providers}
        self._by_host = {host: p for p in self.providers for host in p.hosts}
        self.origin_hosts = frozenset(p.origin[1] for p in self.providers)  # what Tollgate connects to
        self._by_upstream: dict[tuple[str, int], Provider] = {}
        for p in self.providers:
            if p.upstream:
                # Several providers may share one test double; the first in catalog order answers.
                self._by_upstream.setdefault(p.origin[1:], p)

    def by_id(self, provider_id: str) -> Provider | None:
        return self._by_id.get(provider_id)

    def by_host(self, host: str) -> Provider | None:
        return self._by_host.get(host.lower().rstrip("."))

    def is_upstream_of(self, host: str, port: int) -> Provider | None:
        """The provider whose configured upstream is host:port (forward URLs may name either)."""
        return self._by_upstream.get((host.lower().rstrip("."), port))

    def allow_hosts_patterns(self) -> list[str]:
        """Regexes for mitmproxy's allow_hosts: exact host, any port, nothing before or after."""
        return [rf"^{re.escape(host)}:\d+$" for host in sorted(self._by_host)]


def load_catalog(path: Path | None = None, overrides: Mapping[str, Mapping] | None = None) -> Catalog:
    """Read providers.yaml and apply per-deployment field overrides before validating."""
    path = path or DEFAULT_PATH
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read provider catalog {path}: {e}") from None
    if overrides:
        entries = data.get("providers") if isinstance(data, Mapping) else None
        if not isinstance(entries, list):
            raise ValueError(f"{path}: the catalog must be a mapping with a 'providers' list")
        known = {e.get("id"): i for i, e in enumerate(entries) if isinstance(e, Mapping)}
        for pid, changes in overrides.items():
            if pid not in known:
                raise ValueError(f"provider override for unknown provider id {pid!r}")
            if not isinstance(changes, Mapping) or "id" in changes:
                raise ValueError(f"provider override for {pid!r} must map field names (other than id) to values")
            entries[known[pid]] = {**entries[known[pid]], **changes}
    try:
        return Catalog(parse_providers(data))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
