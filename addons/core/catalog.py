"""The provider catalog: which hosts Tollgate intercepts, and what each one needs.

Providers are data (config/providers.yaml), so adding an OpenAI-compatible provider is a YAML
edit. Parsing is pure and strict: a typo in the catalog must stop the gateway at start-up,
not misroute a request or leak a key to the wrong host later.

A provider's hosts are exact names, or for per-account hosts (Azure's `{resource}.openai.azure.com`)
`*.suffix` patterns whose star is exactly one DNS label. Exact hosts are one dict lookup; a pattern
costs one more (the host's first label split off, its suffix looked up), so matching stays O(1).
A request goes to the host the client named when that is one of the provider's own (`origin_for`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from urllib.parse import urlsplit

import yaml

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "config" / "providers.yaml"
API_FAMILIES = frozenset({"openai", "anthropic", "gemini", "cohere", "bedrock", "elevenlabs", "voyage", "jina", "fal",
                          "replicate"})
DEFAULT_PORTS = {"https": 443, "http": 80}

_REQUIRED = ("id", "name", "base_url", "auth", "credential_env", "api_family", "pricing_id")
_FIELDS = frozenset(_REQUIRED) | {"hosts", "host_patterns", "resources", "deployments", "credential_type",
                                  "service_account_file", "upstream", "timeouts"}
CREDENTIAL_TYPES = ("api_key", "google_service_account")
_ID = re.compile(r"[a-z0-9][a-z0-9-]*")
_LABEL_RE = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"  # one DNS label, lower-cased
_LABEL = re.compile(_LABEL_RE)
_HOST = re.compile(rf"(?=.{{1,253}}$){_LABEL_RE}(?:\.{_LABEL_RE})+")
_PLACEHOLDER = re.compile(r"\{[a-z_]+\}")  # base_url's stand-in for a pattern's label: {resource}
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
    origin: Origin  # what Tollgate connects to: upstream if set, else base_url's (see origin_for)
    timeouts: tuple[tuple[str, float | None], ...] = ()  # phases set for this provider, over the gateway's
    # Suffixes of `*.suffix` host patterns: any one label before the suffix is this provider's host
    # (Azure OpenAI's per-account `{resource}.openai.azure.com`).
    host_suffixes: tuple[str, ...] = ()
    resources: frozenset[str] = frozenset()  # the labels a pattern may stand for with the operator's key
    # label -> the environment variable holding that resource's own key (Azure: one key per resource); a
    # resource not named here uses credential_env
    resource_keys: tuple[tuple[str, str], ...] = ()
    deployments: tuple[tuple[str, str], ...] = ()  # deployment name -> the model it serves, for pricing
    credential_type: str = "api_key"  # or google_service_account: credential_env names a key file
    service_account_file: str | None = None  # the operator's key file, over credential_env's
    # auth {sigv4: SERVICE}: AWS Signature V4 both ways (addons/auth/sigv4_callers.py verifies the caller's,
    # addons/proxy/bedrock.py signs for the provider); the service name signed for, e.g. "bedrock"
    sigv4_service: str | None = None

    @property
    def host_names(self) -> tuple[str, ...]:
        """Hosts, then host patterns, as the catalog writes them (for people to read)."""
        return self.hosts + tuple(f"*.{suffix}" for suffix in self.host_suffixes)

    def credential_configured(self, environ: Mapping[str, str]) -> bool:
        """Whether the operator gave the gateway a credential for this provider (never which)."""
        return bool(self.service_account_file or environ.get(self.credential_env)
                    or any(environ.get(env) for _, env in self.resource_keys))

    def credential_env_for(self, host: str) -> str:
        """The environment variable the operator's key for `host` is read from: its resource's own, else
        credential_env."""
        if not self.resource_keys:
            return self.credential_env
        label = pattern_label(host.lower().rstrip("."), self.host_suffixes)
        return dict(self.resource_keys).get(label, self.credential_env)  # as model_of_deployment reads deployments

    def origin_for(self, host: str | None) -> Origin:
        """Where a request the client sent to `host` goes: the configured upstream, else that host itself
        when it is one of the provider's own (a region's or an account's host), else base_url's origin."""
        if self.upstream is None and host and self.owns(host):
            return self.origin[0], host.lower().rstrip("."), DEFAULT_PORTS[self.origin[0]]
        return self.origin

    def owns(self, host: str) -> bool:
        """Whether `host` is one of the provider's hosts, or a host one of its patterns matches."""
        host = host.lower().rstrip(".")
        return host in self.hosts or pattern_label(host, self.host_suffixes) is not None

    def model_of_deployment(self, deployment: str | None) -> str | None:
        """The model the operator says a deployment serves (`deployments`), else None."""
        return dict(self.deployments).get(deployment) if deployment and self.deployments else None


def pattern_label(host: str, suffixes: Iterable[str]) -> str | None:
    """The label a `*.suffix` pattern's star stands for in `host` (lower-case, no trailing dot), else None."""
    label, _, suffix = host.partition(".")
    return label if suffix in suffixes and _LABEL.fullmatch(label) else None


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
    if keys == {"sigv4"}:  # the service name goes to Provider.sigv4_service
        if not isinstance(auth["sigv4"], str) or not _ID.fullmatch(auth["sigv4"]):
            raise ValueError(f"{where}.sigv4 must be an AWS service name such as bedrock")
        return None, None, None
    raise ValueError(f"{where} must have either header (and optionally scheme), query or sigv4, got {sorted(keys)}")


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
    hosts = entry.get("hosts", [])
    patterns = entry.get("host_patterns", [])
    if not isinstance(hosts, list) or not isinstance(patterns, list) or not (hosts or patterns):
        raise ValueError(f"{where}: hosts must be a non-empty list of hostnames (or host_patterns a list of *.suffix)")
    for host in hosts:
        if not isinstance(host, str) or not _HOST.fullmatch(host.lower()):
            raise ValueError(f"{where}: hosts entry {host!r} is not a hostname")
    hosts = tuple(h.lower() for h in hosts)
    if len(set(hosts)) != len(hosts):
        raise ValueError(f"{where}: hosts lists a hostname twice")
    suffixes = tuple(_parse_pattern(where, pattern) for pattern in patterns)
    if len(set(suffixes)) != len(suffixes):
        raise ValueError(f"{where}: host_patterns lists a pattern twice")
    resources = entry.get("resources", [])
    resource_keys: dict[str, str] = {}
    if isinstance(resources, Mapping):  # label -> the environment variable of its own key, or null
        for label, env in resources.items():
            if env is None:
                continue
            if not isinstance(env, str) or not _ENV.fullmatch(env):
                raise ValueError(f"{where}: resources.{label} must name an environment variable like "
                                 "AZURE_OPENAI_API_KEY_EU (the resource's own key), or be null (credential_env)")
            resource_keys[label] = env
        resources = list(resources)
    if not isinstance(resources, list) or not all(isinstance(r, str) and _LABEL.fullmatch(r) for r in resources):
        raise ValueError(f"{where}: resources must be a list of host labels (the names a host pattern's * stands "
                         "for), or map each to the environment variable of its own key")
    if resources and not suffixes:
        raise ValueError(f"{where}: resources needs host_patterns")

    base_url = _parse_url(f"{where}: base_url", entry["base_url"], origin_only=False)
    base_host = _origin(base_url)[1]
    label, _, suffix = base_host.partition(".")
    if base_host not in hosts and not (suffix in suffixes and _PLACEHOLDER.fullmatch(label)):
        raise ValueError(f"{where}: base_url host {base_host!r} is not one of its hosts (or {{name}}.<pattern suffix>)")
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
    deployments = entry.get("deployments") or {}
    if not isinstance(deployments, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in deployments.items()):
        raise ValueError(f"{where}: deployments must map deployment names to model names")
    credential_type = entry.get("credential_type", "api_key")
    if credential_type not in CREDENTIAL_TYPES:
        raise ValueError(f"{where}: credential_type {credential_type!r} is not one of {', '.join(CREDENTIAL_TYPES)}")
    sa_file = entry.get("service_account_file")
    if sa_file is not None and (credential_type != "google_service_account" or not isinstance(sa_file, str) or not sa_file):
        raise ValueError(f"{where}: service_account_file must be a path, and only with credential_type "
                         "google_service_account")

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
        host_suffixes=suffixes,
        resources=frozenset(resources),
        resource_keys=tuple(sorted(resource_keys.items())),
        deployments=tuple(sorted(deployments.items())),
        credential_type=credential_type,
        service_account_file=sa_file,
        sigv4_service=entry["auth"].get("sigv4"),
    )


def _parse_pattern(where: str, pattern: object) -> str:
    """`*.suffix`: one leading wildcard label, then a hostname of at least two labels; returns the suffix."""
    if not isinstance(pattern, str) or not pattern.startswith("*.") or not _HOST.fullmatch(pattern[2:].lower()):
        raise ValueError(f"{where}: host_patterns entry {pattern!r} must be *. and a hostname, e.g. *.openai.azure.com")
    return pattern[2:].lower()


def parse_providers(data: object) -> list[Provider]:
    """Validate a loaded providers.yaml document; raise ValueError naming the provider and field."""
    if not isinstance(data, Mapping) or not isinstance(data.get("providers"), list):
        raise ValueError("the catalog must be a mapping with a 'providers' list")
    if unknown := sorted(set(data) - {"providers"}):
        raise ValueError(f"the catalog has unknown top-level key(s) {', '.join(map(str, unknown))}")
    providers = [_parse_provider(i, entry) for i, entry in enumerate(data["providers"])]
    seen_ids: set[str] = set()
    seen_hosts: dict[str, str] = {}
    seen_suffixes: dict[str, str] = {}
    for p in providers:
        if p.id in seen_ids:
            raise ValueError(f"provider {p.id!r}: duplicate id")
        seen_ids.add(p.id)
        for host in p.hosts:
            if host in seen_hosts:
                raise ValueError(f"provider {p.id!r}: host {host!r} is already claimed by {seen_hosts[host]!r}")
            seen_hosts[host] = p.id
        for suffix in p.host_suffixes:
            if suffix in seen_suffixes:
                raise ValueError(f"provider {p.id!r}: host pattern '*.{suffix}' is already claimed by "
                                 f"{seen_suffixes[suffix]!r}")
            seen_suffixes[suffix] = p.id
    for host, pid in seen_hosts.items():  # an exact host under another provider's pattern: which one meant?
        if (owner := seen_suffixes.get(host.partition(".")[2])) is not None and owner != pid:
            raise ValueError(f"provider {pid!r}: host {host!r} falls under {owner!r}'s host pattern")
    return providers


class Catalog:
    """Lookups the proxy runs per request, so each is a single dict access."""

    __slots__ = ("providers", "origin_hosts", "_by_id", "_by_host", "_by_suffix", "_by_upstream")

    def __init__(self, providers: Iterable[Provider]) -> None:
        self.providers: tuple[Provider, ...] = tuple(providers)
        self._by_id = {p.id: p for p in self.providers}
        self._by_host = {host: p for p in self.providers for host in p.hosts}
        self._by_suffix = {suffix: p for p in self.providers for suffix in p.host_suffixes}
        self.origin_hosts = frozenset(p.origin[1] for p in self.providers)  # what Tollgate connects to
        self._by_upstream: dict[tuple[str, int], Provider] = {}
        for p in self.providers:
            if p.upstream:
                # Several providers may share one test double; the first in catalog order answers.
                self._by_upstream.setdefault(p.origin[1:], p)

    def by_id(self, provider_id: str) -> Provider | None:
        return self._by_id.get(provider_id)

    def by_host(self, host: str) -> Provider | None:
        """The provider of an exact host (one dict lookup), else of the `*.suffix` pattern it matches (one more)."""
        host = host.lower().rstrip(".")
        provider = self._by_host.get(host)
        if provider is None and self._by_suffix:
            label, _, suffix = host.partition(".")
            provider = self._by_suffix.get(suffix)
            if provider is not None and not _LABEL.fullmatch(label):
                return None
        return provider

    def is_origin_host(self, host: str) -> bool:
        """Whether Tollgate connects to `host` for some provider: an upstream, a base_url's, or a provider host."""
        return host in self.origin_hosts or self.by_host(host) is not None

    def is_upstream_of(self, host: str, port: int) -> Provider | None:
        """The provider whose configured upstream is host:port (forward URLs may name either)."""
        return self._by_upstream.get((host.lower().rstrip("."), port))

    def allow_hosts_patterns(self) -> list[str]:
        """Regexes for mitmproxy's allow_hosts: exact host (or one label and a pattern's suffix), any port,
        nothing before or after."""
        exact = [rf"^{re.escape(host)}:\d+$" for host in sorted(self._by_host)]
        return exact + [rf"^{_LABEL_RE}\.{re.escape(suffix)}:\d+$" for suffix in sorted(self._by_suffix)]

    def allow_hosts_option(self) -> list[str]:
        """allow_hosts_patterns as mitmproxy's allow_hosts takes them best: one alternation. mitmproxy searches
        every pattern of the option for every name of every new tunnelled connection (its address, SNI, Host), a
        few times per connection: 142 patterns cost 0.12 ms a look, one pattern of them all 6 us."""
        return ["|".join(f"(?:{pattern})" for pattern in self.allow_hosts_patterns())]


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
