"""Azure OpenAI through the gateway: the official `AzureOpenAI` client, as an unmodified app (HTTPS_PROXY to
`{resource}.openai.azure.com`) and through the forward endpoint; the provider sees the operator's key in
`api-key` and nothing of Tollgate's; deployments are priced as the model gateway.yaml maps them to, else as
the model the response names; a resource the operator did not list is refused before anything is sent.

One gateway for the module (SQLite), its Azure upstream the mock provider, which speaks OpenAI's wire format
at `/openai/deployments/{name}/...`. Expected costs come straight from genai-prices."""

from __future__ import annotations

import re
import ssl
from decimal import Decimal

import genai_prices
import httpx
import openai
import pytest

from addons.auth.credentials import ForwardToken, encode_forward_token
from addons.core.catalog import load_catalog, parse_providers
from pricing.money import to_nanos
from tests.harness import OPENAI_CHAT, OPENAI_EMBEDDINGS, GatewayProcess
from tests.mock_provider import FULL_TEXT

AZURE_KEY = "azure-operator-key-0123456789abcdef"
EU_KEY = "azure-eu-resource-key-0123456789abcdef"  # eures has a key of its own (AZURE_OPENAI_API_KEY_EU)
API_VERSION = "2024-10-21"
DEPLOYMENTS = {"prod-4o": "gpt-4o", "embed-small": "text-embedding-3-small"}


@pytest.fixture(scope="module")
def azure_gateway(mock, tmp_path_factory):
    gw = GatewayProcess(tmp_path_factory.mktemp("azure"), f"sqlite:///{tmp_path_factory.mktemp('azure-db')}/l.db",
                        {"azure": mock.url}, providers={"azure": {
                            "resources": {"myres": None, "eures": "AZURE_OPENAI_API_KEY_EU",
                                          "keyless": "AZURE_OPENAI_API_KEY_UNSET"},
                            "deployments": DEPLOYMENTS}})
    gw.env["AZURE_OPENAI_API_KEY"] = AZURE_KEY
    gw.env["AZURE_OPENAI_API_KEY_EU"] = EU_KEY
    gw.fund("10")
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def client(azure_gateway, mock, monkeypatch):
    """An app calling its Azure resource, with its Tollgate key where Azure's key goes, through HTTPS_PROXY."""
    monkeypatch.setenv("HTTPS_PROXY", azure_gateway.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(azure_gateway.ca))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    mock.reset()
    return openai.AzureOpenAI(azure_endpoint="https://myres.openai.azure.com", api_key=azure_gateway.admin_key,
                              api_version=API_VERSION, max_retries=0)


def expected_cost(model: str, usage) -> str:
    calc = genai_prices.calc_price(genai_prices.Usage(input_tokens=usage.input_tokens,
                                                      cache_read_tokens=usage.cache_read_tokens,
                                                      output_tokens=usage.output_tokens), model, provider_id="azure")
    return str((Decimal(to_nanos(calc.total_price)) / 10**9).quantize(Decimal("0.000000001")))


def assert_metered(gw, request_id, model, usage, *, endpoint, streamed):
    row = gw.request_row(request_id)
    assert (row["provider"], row["model"], row["endpoint"], row["status"], row["streamed"]) == (
        "azure", model, endpoint, 200, streamed)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
        usage.input_tokens, usage.cache_read_tokens, usage.output_tokens)
    assert row["usage_source"] == "reported" and row["price_source"] == "catalog"
    assert Decimal(row["provider_cost"]) == Decimal(expected_cost(model, usage)) > 0


def assert_azure_saw_only_its_key(mock, admin_key):
    seen = mock.last.headers
    assert seen["api-key"] == AZURE_KEY
    raw = " ".join(f"{k}: {v}" for k, v in seen.items_raw())
    assert admin_key not in raw and "tg_sk_" not in raw and "authorization" not in raw.lower()


@pytest.mark.parametrize("stream", [False, True])
def test_chat_on_a_mapped_deployment_is_priced_as_its_model(azure_gateway, client, mock, stream):
    args = dict(model="prod-4o", messages=[{"role": "user", "content": "hi"}])
    if stream:
        with client.chat.completions.with_streaming_response.create(stream=True, **args) as raw:
            chunks = list(raw.parse())
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == FULL_TEXT
        assert all(c.usage is None for c in chunks), "the usage the gateway asked for leaked to the client"
    else:
        raw = client.chat.completions.with_raw_response.create(**args)
        assert raw.parse().model == "prod-4o"  # Azure (and the mock) answer with the deployment's own name
    assert mock.last.path == "/openai/deployments/prod-4o/chat/completions"
    assert mock.last.params["api-version"] == API_VERSION
    assert_azure_saw_only_its_key(mock, azure_gateway.admin_key)
    assert_metered(azure_gateway, raw.headers["x-tollgate-request-id"], "gpt-4o", OPENAI_CHAT,
                   endpoint="chat.completions", streamed=stream)


def test_unmapped_deployment_is_priced_as_the_model_the_response_names(azure_gateway, client, mock):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user",
                                                                                          "content": "hi"}])
    assert mock.last.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert_metered(azure_gateway, raw.headers["x-tollgate-request-id"], "gpt-4o-mini", OPENAI_CHAT,
                   endpoint="chat.completions", streamed=False)


def test_embeddings_with_the_tollgate_key_as_a_bearer_token(azure_gateway, mock, monkeypatch):
    """An app that authenticates as with Entra ID sends `Authorization: Bearer`; the provider still gets api-key."""
    monkeypatch.setenv("HTTPS_PROXY", azure_gateway.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(azure_gateway.ca))
    mock.reset()
    client = openai.AzureOpenAI(azure_endpoint="https://myres.openai.azure.com", api_version=API_VERSION,
                                azure_ad_token=azure_gateway.admin_key, max_retries=0)
    raw = client.embeddings.with_raw_response.create(model="embed-small", input="hi")
    assert len(raw.parse().data[0].embedding) == 8
    assert_azure_saw_only_its_key(mock, azure_gateway.admin_key)
    assert_metered(azure_gateway, raw.headers["x-tollgate-request-id"], "text-embedding-3-small", OPENAI_EMBEDDINGS,
                   endpoint="embeddings", streamed=False)


def test_the_v1_api_names_the_deployment_in_the_body(azure_gateway, mock, monkeypatch):
    """Azure's OpenAI-style v1 API (`/openai/v1/...`, the plain OpenAI client): the deployment is the body's model."""
    monkeypatch.setenv("HTTPS_PROXY", azure_gateway.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(azure_gateway.ca))
    mock.reset()
    client = openai.OpenAI(base_url="https://myres.openai.azure.com/openai/v1/", api_key=azure_gateway.admin_key,
                           max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="prod-4o", messages=[{"role": "user", "content": "hi"}])
    assert mock.last.path == "/openai/v1/chat/completions"
    assert_azure_saw_only_its_key(mock, azure_gateway.admin_key)
    assert_metered(azure_gateway, raw.headers["x-tollgate-request-id"], "gpt-4o", OPENAI_CHAT,
                   endpoint="chat.completions", streamed=False)


@pytest.mark.parametrize("stream", [False, True])
def test_forward_endpoint(azure_gateway, mock, stream):
    mock.reset()
    client = openai.AzureOpenAI(
        base_url=f"{azure_gateway.url}/v1/forward?u=https://myres.openai.azure.com/openai/",
        api_key=azure_gateway.admin_key, api_version=API_VERSION, max_retries=0, http_client=httpx.Client(trust_env=False))
    args = dict(model="prod-4o", messages=[{"role": "user", "content": "hi"}])
    if stream:
        with client.chat.completions.with_streaming_response.create(stream=True, **args) as raw:
            assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == FULL_TEXT
    else:
        raw = client.chat.completions.with_raw_response.create(**args)
    assert (mock.last.path, mock.last.params["api-version"]) == ("/openai/deployments/prod-4o/chat/completions",
                                                                 API_VERSION)
    assert_azure_saw_only_its_key(mock, azure_gateway.admin_key)
    assert_metered(azure_gateway, raw.headers["x-tollgate-request-id"], "gpt-4o", OPENAI_CHAT,
                   endpoint="chat.completions", streamed=stream)


AZURE_SUFFIXES = ["openai.azure.com", "cognitiveservices.azure.com", "services.ai.azure.com"]


@pytest.mark.parametrize("suffix", AZURE_SUFFIXES[1:])
def test_an_azure_ai_services_resource_is_reached_at_its_other_hosts(azure_gateway, mock, monkeypatch, suffix):
    """An Azure AI services (Foundry) resource answers the same API at {resource}.cognitiveservices.azure.com and
    {resource}.services.ai.azure.com: the same resource (myres), the same key, metered as on openai.azure.com."""
    monkeypatch.setenv("HTTPS_PROXY", azure_gateway.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(azure_gateway.ca))
    monkeypatch.delenv("NO_PROXY", raising=False)
    mock.reset()
    client = openai.AzureOpenAI(azure_endpoint=f"https://myres.{suffix}", api_key=azure_gateway.admin_key,
                                api_version=API_VERSION, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="prod-4o",
                                                           messages=[{"role": "user", "content": "hi"}])
    assert mock.last.path == "/openai/deployments/prod-4o/chat/completions"
    assert_azure_saw_only_its_key(mock, azure_gateway.admin_key)
    assert_metered(azure_gateway, raw.headers["x-tollgate-request-id"], "gpt-4o", OPENAI_CHAT,
                   endpoint="chat.completions", streamed=False)


@pytest.mark.parametrize("way", ["proxy", "forward"])
def test_foundrys_model_inference_api_names_the_model_in_the_body(azure_gateway, mock, way):
    """`/models/chat/completions` on {resource}.services.ai.azure.com (Azure AI model inference): no deployment in
    the path, the body's model is priced."""
    mock.reset()
    answer = chat_at(azure_gateway, "myres", way, suffix="services.ai.azure.com",
                     path="/models/chat/completions?api-version=2024-05-01-preview", model="gpt-4o-mini")
    assert answer.status_code == 200, answer.text
    assert mock.last.path == "/models/chat/completions" and mock.last.headers["api-key"] == AZURE_KEY
    assert_metered(azure_gateway, answer.headers["x-tollgate-request-id"], "gpt-4o-mini", OPENAI_CHAT,
                   endpoint="chat.completions", streamed=False)


def chat_at(gw, resource: str, way: str, suffix: str = "openai.azure.com",
            path: str = f"/openai/deployments/prod-4o/chat/completions?api-version={API_VERSION}",
            model: str | None = None) -> httpx.Response:
    """A chat request to `resource` (its deployment prod-4o) with the Tollgate key, through HTTPS_PROXY or forward."""
    headers = {"api-key": gw.admin_key}
    body = {"messages": [{"role": "user", "content": "hi"}], **({"model": model} if model else {})}
    target = f"https://{resource}.{suffix}{path}"
    if way == "proxy":
        with httpx.Client(proxy=gw.url, verify=ssl.create_default_context(cafile=str(gw.ca)), trust_env=False) as http:
            return http.post(target, headers=headers, json=body)
    return httpx.post(f"{gw.url}/v1/forward", params={"u": target}, headers=headers, json=body, trust_env=False)


@pytest.mark.parametrize("way", ["proxy", "forward"])
def test_each_resource_is_sent_its_own_key_where_the_operator_gave_it_one(azure_gateway, mock, way):
    """gateway.yaml maps resources to the variables of their keys (null: AZURE_OPENAI_API_KEY), under every Azure
    suffix; a listed resource whose variable is not set is a 503 naming the variable and the host, and nothing
    is sent."""
    for suffix in AZURE_SUFFIXES:
        for resource, key in (("eures", EU_KEY), ("myres", AZURE_KEY)):
            mock.reset()
            answer = chat_at(azure_gateway, resource, way, suffix=suffix)
            assert answer.status_code == 200, answer.text
            assert mock.last.headers["api-key"] == key, (resource, suffix)
    mock.reset()
    answer = chat_at(azure_gateway, "keyless", way)
    error = answer.json()["error"]
    assert (answer.status_code, error["code"]) == (503, "provider_key_missing")
    assert error["message"] == ("no Azure OpenAI key is configured for keyless.openai.azure.com "
                                "(AZURE_OPENAI_API_KEY_UNSET is not set)")
    assert mock.requests == [] and AZURE_KEY not in answer.text and EU_KEY not in answer.text


@pytest.mark.parametrize("suffix", AZURE_SUFFIXES)
@pytest.mark.parametrize("way", ["proxy", "forward"])
def test_a_resource_the_operator_did_not_list_is_refused_before_anything_is_sent(azure_gateway, mock, way, suffix):
    mock.reset()
    answer = chat_at(azure_gateway, "attacker", way, suffix=suffix)
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "resource_not_allowed"
    assert azure_gateway.admin_key not in answer.text and AZURE_KEY not in answer.text
    assert mock.requests == []


def test_a_caller_with_its_own_azure_key_may_reach_any_resource(azure_gateway, mock):
    """Bring your own key (a forward token's provider_key): the key is the caller's, so is the resource."""
    mock.reset()
    token = encode_forward_token(ForwardToken(secret_key=azure_gateway.admin_key, provider_key="callers-own-azure-key"))
    u = f"https://elsewhere.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions?api-version={API_VERSION}"
    answer = httpx.post(f"{azure_gateway.url}/v1/forward", params={"u": u}, headers={"api-key": token},
                        json={"messages": [{"role": "user", "content": "hi"}]}, trust_env=False)
    assert answer.status_code == 200, answer.text
    assert mock.last.headers["api-key"] == "callers-own-azure-key"
    row = azure_gateway.request_row(answer.headers["x-tollgate-request-id"])
    assert (row["provider"], row["model"], row["byok"]) == ("azure", "gpt-4o-mini", True)


def test_a_host_outside_the_pattern_is_no_provider(azure_gateway):
    """One label only: a deeper name, or the suffix glued to another domain, is not Azure's (forward refuses it)."""
    for u in ("https://a.b.openai.azure.com/openai/v1/chat/completions",
              "https://myres.openai.azure.com.attacker.net/openai/v1/chat/completions",
              "https://openai.azure.com/openai/v1/chat/completions"):
        answer = httpx.post(f"{azure_gateway.url}/v1/forward", params={"u": u},
                            headers={"api-key": azure_gateway.admin_key}, json={}, trust_env=False)
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, "invalid_forward_url"), u


# -- the catalog's host patterns, in-process -------------------------------------------------------------------


def pattern_entry(**changes):
    return {"id": "acme", "name": "Acme", "host_patterns": ["*.acme.test"], "base_url": "https://{account}.acme.test/v1",
            "auth": {"header": "api-key"}, "credential_env": "ACME_KEY", "api_family": "openai", "pricing_id": None,
            **changes}


@pytest.mark.parametrize("changes, message", [
    ({"host_patterns": ["acme.test"]}, r"host_patterns entry 'acme.test' must be \*\. and a hostname"),
    ({"host_patterns": ["*.*.acme.test"]}, "must be"),
    ({"host_patterns": ["*.test"]}, "must be"),
    ({"host_patterns": ["x*.acme.test"]}, "must be"),
    ({"host_patterns": []}, "hosts must be a non-empty list"),
    ({"base_url": "https://{account}.other.test/v1"}, "base_url host"),
    ({"base_url": "https://*.acme.test/v1"}, "not a valid URL|base_url host"),
    ({"resources": ["My_Res"]}, "resources must be a list of host labels"),
    ({"resources": {"My_Res": "ACME_KEY_EU"}}, "resources must be a list of host labels"),
    ({"resources": {"eu": "acme-key"}}, "resources.eu must name an environment variable"),
    ({"resources": {"eu": 3}}, "resources.eu must name an environment variable"),
    ({"deployments": {"d": 4}}, "deployments must map"),
    ({"credential_type": "password"}, "credential_type 'password'"),
])
def test_bad_patterns_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        parse_providers({"providers": [pattern_entry(**changes)]})


def test_a_resources_own_key_is_read_from_its_variable_and_counts_as_configured():
    provider, = parse_providers({"providers": [pattern_entry(resources={"us": None, "eu": "ACME_KEY_EU"})]})
    assert provider.resources == {"us", "eu"}
    assert [provider.credential_env_for(host) for host in ("eu.acme.test", "EU.acme.test.", "us.acme.test")] == [
        "ACME_KEY_EU", "ACME_KEY_EU", "ACME_KEY"]
    assert provider.credential_configured({"ACME_KEY_EU": "k"}) and provider.credential_configured({"ACME_KEY": "k"})
    assert not provider.credential_configured({"OTHER": "k"})


def test_a_host_under_another_providers_pattern_is_refused():
    other = {**pattern_entry(id="other", host_patterns=..., base_url="https://api.acme.test/v1"), "hosts": ["api.acme.test"]}
    del other["host_patterns"]
    with pytest.raises(ValueError, match="falls under 'acme'"):
        parse_providers({"providers": [pattern_entry(), other]})


@pytest.mark.parametrize("host, found", [
    ("myres.openai.azure.com", True), ("MyRes.OpenAI.Azure.com.", True), ("x-1.openai.azure.com", True),
    ("a.b.openai.azure.com", False), ("openai.azure.com", False), ("-x.openai.azure.com", False),
    ("myres.openai.azure.com.evil.net", False), ("myresopenai.azure.com", False), ("my_res.openai.azure.com", False),
    ("myres.cognitiveservices.azure.com", True), ("myres.services.ai.azure.com", True),
    ("cognitiveservices.azure.com", False), ("a.myres.services.ai.azure.com", False), ("services.ai.azure.com", False),
    ("myres.ai.azure.com", False), ("myres.azure.com", False),
])
def test_by_host_matches_one_label_before_the_suffix(host, found):
    catalog = load_catalog()
    provider = catalog.by_host(host)
    assert (provider is not None and provider.id == "azure") == found
    allowed = any(re.search(p, f"{host.rstrip('.')}:443", re.IGNORECASE) for p in catalog.allow_hosts_patterns())
    assert allowed == found
    if found:
        assert provider.origin_for(host) == ("https", host.lower().rstrip("."), 443)


def test_per_host_origin_unless_an_upstream_is_set():
    catalog = load_catalog(overrides={"vertex": {"upstream": "http://127.0.0.1:9"}})
    assert catalog.by_id("vertex").origin_for("europe-west4-aiplatform.googleapis.com") == ("http", "127.0.0.1", 9)
    vertex = load_catalog().by_host("europe-west4-aiplatform.googleapis.com")
    assert vertex.origin_for("europe-west4-aiplatform.googleapis.com") == (
        "https", "europe-west4-aiplatform.googleapis.com", 443)


def test_the_clouds_are_priced_by_the_genai_prices_provider_their_hosts_belong_to():
    from genai_prices.data import providers as genai_providers

    patterns = {p.id: p.api_pattern for p in genai_providers}
    catalog = load_catalog()
    azure = catalog.by_id("azure")
    assert all(re.match(patterns[azure.pricing_id], f"https://myres.{suffix}/") for suffix in azure.host_suffixes)
    vertex = catalog.by_id("vertex")
    assert vertex.pricing_id == "google" and len(vertex.hosts) > 20
    assert all(re.match(patterns["google"], f"https://{host}/") for host in vertex.hosts)
