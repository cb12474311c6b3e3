import re

import pytest
from genai_prices.data import providers as genai_providers

from addons.core.catalog import Timeouts, load_catalog, parse_providers

GENAI = {p.id: p for p in genai_providers}
REQUIRED_IDS = set(
    "openai anthropic gemini mistral groq deepseek xai together fireworks cerebras openrouter perplexity"
    " deepinfra cohere sambanova nebius novita hyperbolic moonshot zai huggingface baseten"
    # the rest of the `providers` map of Lava's Node SDK (elevenlabs: the media section)
    " kluster inference vercel parasail embercloud targon gmicloud chutes".split()
)


def entry(**changes):
    base = {
        "id": "acme",
        "name": "Acme AI",
        "hosts": ["api.acme.test"],
        "base_url": "https://api.acme.test/v1",
        "auth": {"header": "authorization", "scheme": "Bearer"},
        "credential_env": "ACME_API_KEY",
        "api_family": "openai",
        "pricing_id": None,
    }
    return {k: v for k, v in {**base, **changes}.items() if v is not ...}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def doc(*entries):
    return {"providers": list(entries)}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"provider": []}, "'providers' list"),
        (doc(entry(credential_env=...)), r"provider 'acme': missing field\(s\) credential_env"),
        (doc(entry(hsots=["x.test"])), r"provider 'acme': unknown field\(s\) hsots"),
        (doc(entry(id="Acme!")), r"provider #1: id 'Acme!'"),
        (doc(entry(api_family="soap")), "provider 'acme': api_family 'soap' is not one of"),
        (doc(entry(auth={"header": "x-api-key", "query": "key"})), "provider 'acme': auth must have either"),
        (doc(entry(auth={"scheme": "Bearer"})), "provider 'acme': auth must have either"),
        (doc(entry(auth={"header": "bad header"})), r"auth\.header 'bad header' is not a header name"),
        (doc(entry(hosts=["api.acme.test/v1"])), "'api.acme.test/v1' is not a hostname"),
        (doc(entry(base_url="https://other.test/v1")), "base_url host 'other.test' is not one of its hosts"),
        (doc(entry(upstream="http://127.0.0.1:9999/v1")), r"upstream .* must be scheme://host\[:port\] with no path"),
        (doc(entry(upstream="ftp://mirror.test")), "upstream 'ftp://mirror.test' must be an absolute http"),
        (doc(entry(upstream="http://127.0.0.1:99999")), "upstream .* is not a valid URL"),
        (doc(entry(upstream="http://mock.test?x=1")), "upstream .* must not carry"),
        (doc(entry(credential_env="acme-key")), "credential_env 'acme-key'"),
        (doc(entry(), entry(hosts=["api2.acme.test"], base_url="https://api2.acme.test")), "'acme': duplicate id"),
        (doc(entry(), entry(id="copycat", hosts=["API.acme.test"])), "'copycat': host 'api.acme.test' is already"),
        (doc(entry(timeouts=[30])), "'acme': timeouts must be a mapping of connect, first_byte, idle, total"),
        (doc(entry(timeouts={"idel": 30})), r"'acme': timeouts: unknown phase\(s\) idel"),
        (doc(entry(timeouts={"idle": 0})), r"'acme': timeouts\.idle must be a positive number of seconds or null"),
        (doc(entry(timeouts={"total": "60"})), r"timeouts\.total must be a positive number"),
        (doc(entry(timeouts={"connect": True})), r"timeouts\.connect must be a positive number"),
    ],
)
def test_parse_errors_name_provider_and_field(data, message):
    with pytest.raises(ValueError, match=message):
        parse_providers(data)


@pytest.mark.parametrize(
    "changes, origin",
    [
        ({}, ("https", "api.acme.test", 443)),
        ({"base_url": "http://api.acme.test/v1"}, ("http", "api.acme.test", 80)),
        ({"upstream": "http://127.0.0.1:9999"}, ("http", "127.0.0.1", 9999)),
        ({"upstream": "https://EU.acme.test/"}, ("https", "eu.acme.test", 443)),
        ({"upstream": "http://[::1]:8080"}, ("http", "::1", 8080)),
    ],
)
def test_origin_is_upstream_else_base_url_with_default_port(changes, origin):
    [provider] = parse_providers(doc(entry(**changes)))
    assert provider.origin == origin


def test_provider_timeouts_override_the_gateways_phase_by_phase():
    [provider] = parse_providers(doc(entry(timeouts={"idle": None, "first_byte": 900})))
    assert provider.timeouts == (("first_byte", 900.0), ("idle", None))
    assert Timeouts(10, 600, 300, 1800).updated(provider.timeouts) == Timeouts(10, 900, None, 1800)
    assert load_catalog(overrides={"openai": {"timeouts": {"total": 5}}}).by_id("openai").timeouts == (("total", 5.0),)


@pytest.mark.parametrize(
    "auth, parsed",
    [
        ({"header": "Authorization", "scheme": "Bearer"}, ("authorization", "Bearer", None)),
        ({"header": "x-api-key"}, ("x-api-key", None, None)),
        ({"query": "key"}, (None, None, "key")),
    ],
)
def test_auth_is_parsed(auth, parsed):
    [p] = parse_providers(doc(entry(auth=auth)))
    assert (p.auth_header, p.auth_scheme, p.auth_query) == parsed


def test_shipped_catalog_covers_required_providers_with_unique_hosts(catalog):
    ids = [p.id for p in catalog.providers]
    hosts = [h for p in catalog.providers for h in p.hosts]
    assert len(ids) >= 60 and REQUIRED_IDS <= set(ids)
    assert len(set(hosts)) == len(hosts)
    assert all(p.upstream is None and p.origin[0] == "https" for p in catalog.providers)


@pytest.mark.parametrize(
    "provider_id, family, auth_header, env",
    [
        ("gemini", "gemini", "x-goog-api-key", "GEMINI_API_KEY"),
        ("anthropic", "anthropic", "x-api-key", "ANTHROPIC_API_KEY"),
        ("cohere", "cohere", "authorization", "COHERE_API_KEY"),
        ("groq", "openai", "authorization", "GROQ_API_KEY"),
    ],
)
def test_shipped_families_and_auth(catalog, provider_id, family, auth_header, env):
    p = catalog.by_id(provider_id)
    assert (p.api_family, p.auth_header, p.credential_env) == (family, auth_header, env)


def test_priced_hosts_match_their_genai_prices_provider(catalog):
    for p in catalog.providers:
        if p.pricing_id is not None:
            pattern = GENAI[p.pricing_id].api_pattern
            assert all(re.match(pattern, f"https://{host}/") for host in p.hosts), p.id


@pytest.mark.parametrize(
    "host, provider_id",
    [
        ("api.openai.com", "openai"),
        ("API.OpenAI.COM", "openai"),
        ("api.openai.com.", "openai"),
        ("api.cohere.ai", "cohere"),
        ("generativelanguage.googleapis.com", "gemini"),
        ("openai.com", None),
        ("evil-api.openai.com", None),
    ],
)
def test_by_host_is_case_insensitive_and_exact(catalog, host, provider_id):
    found = catalog.by_host(host)
    assert (found.id if found else None) == provider_id


def test_override_replaces_upstream_and_origin():
    catalog = load_catalog(overrides={"openai": {"upstream": "http://127.0.0.1:9999"}})
    openai = catalog.by_id("openai")
    assert openai.upstream == "http://127.0.0.1:9999"
    assert openai.origin == ("http", "127.0.0.1", 9999)
    assert catalog.by_host("api.openai.com") is openai
    assert catalog.is_upstream_of("127.0.0.1", 9999) is openai
    assert catalog.is_upstream_of("127.0.0.1", 9998) is None
    assert catalog.by_id("anthropic").origin == ("https", "api.anthropic.com", 443)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"nope": {"upstream": "http://127.0.0.1:9999"}}, "unknown provider id 'nope'"),
        ({"openai": {"upstream": "http://127.0.0.1:9999/v1"}}, "provider 'openai': upstream"),
        ({"openai": {"id": "openai2"}}, "other than id"),
    ],
)
def test_bad_overrides_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_catalog(overrides=overrides)


def test_allow_hosts_patterns_match_catalog_hosts(catalog):
    patterns = catalog.allow_hosts_patterns()
    for host in (h for p in catalog.providers for h in p.hosts):
        for candidate in (f"{host}:443", f"{host.upper()}:443"):
            assert any(re.search(p, candidate, re.IGNORECASE) for p in patterns), candidate


@pytest.mark.parametrize(
    "candidate",
    [
        "evil-api.openai.com.attacker.net:443",
        "api.openai.com.attacker.net:443",
        "evil-api.openai.com:443",
        "api-openai.com:443",
        "apixopenai.com:443",
        "openrouter.ai.evil:443",
    ],
)
def test_allow_hosts_patterns_reject_look_alikes(catalog, candidate):
    assert not any(re.search(p, candidate, re.IGNORECASE) for p in catalog.allow_hosts_patterns())


@pytest.mark.parametrize(
    "changes, host, origin",
    [
        ({"hosts": ["api.acme.test", "api.acme.cn"]}, "api.acme.cn", ("https", "api.acme.cn", 443)),
        ({"hosts": ["api.acme.test", "api.acme.cn"]}, "API.ACME.CN.", ("https", "api.acme.cn", 443)),
        ({"hosts": ["api.acme.test", "api.acme.cn"]}, "evil.test", ("https", "api.acme.test", 443)),
        ({"hosts": ["api.acme.test", "api.acme.cn"]}, None, ("https", "api.acme.test", 443)),
        ({"hosts": ["api.acme.test", "api.acme.cn"], "upstream": "http://127.0.0.1:9"}, "api.acme.cn",
         ("http", "127.0.0.1", 9)),
    ],
)
def test_a_request_goes_to_the_host_it_named_unless_an_upstream_is_set(changes, host, origin):
    [provider] = parse_providers(doc(entry(**changes)))
    assert provider.origin_for(host) == origin
