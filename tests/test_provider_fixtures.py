"""Each catalog provider's recorded wire format (tests/fixtures/providers/<id>.yaml) through the Gateway addon
in-process, whole and streamed: the usage the ledger records, its cost against an independent computation
(genai_prices.calc_price with the provider's pricing_id, else the fixture's own override price), and the
provider seeing its own credential style with the Tollgate key gone.

A fixture is the provider's answer to a chat request as its API sends it: the JSON body and the SSE stream,
usage block included, with the provider's quirks (x_groq, Perplexity's citations, DeepSeek's cache counts,
OpenRouter's cost and keep-alive comments, Moonshot's usage inside the choice, ...). Its `usage` is what the
ledger must record, in Tollgate's terms: input includes cached tokens, output includes reasoning tokens.
"""

from __future__ import annotations

import asyncio
import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import urlsplit

import genai_prices
import pytest
import yaml
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tutils

from addons.core.catalog import Provider, load_catalog
from addons.ledger.models import RequestRow, database
from addons.proxy.gateway_addon import Gateway
from tests.inprocess_gateway import api_flow, run, secret_key

FIXTURES = Path(__file__).parent / "fixtures" / "providers"
SHIPPED_OVERRIDES = Path(__file__).parents[1] / "pricing" / "overrides.yaml"
SPECS = {path.stem: yaml.safe_load(path.read_text()) for path in sorted(FIXTURES.glob("*.yaml"))}
TEXT = ("Hello", "! How", " can I help", " you today?")  # every fixture answers with these pieces
# Providers of the other sections of providers.yaml, whose wire formats have test modules of their own (their
# own mocks, their SDKs as clients)
OTHER_SECTIONS = frozenset({"azure", "vertex",  # tests/test_azure.py, tests/test_vertex.py
                            "bedrock",  # tests/test_bedrock.py
                            "elevenlabs", "voyage", "jina", "fal", "fal-queue", "replicate"})  # tests/test_media_*.py
USAGE_FIELDS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")


def provider_key(provider: Provider) -> str:
    return f"pk-{provider.id}-real-key"


@pytest.fixture(scope="module")
def gateway_in_process(tmp_path_factory):
    """One Gateway for the module, on a throwaway SQLite ledger, with every provider's key in its environment
    and the fixtures' override prices in its settings (as an operator would price an unpriced model)."""
    tmp = tmp_path_factory.mktemp("provider-fixtures")
    prices = [{"provider": pid, "model": spec["model"], **spec["price"]} for pid, spec in SPECS.items() if "price" in spec]
    (tmp / "gateway.yaml").write_text(yaml.safe_dump({"prices": prices}))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TOLLGATE_DATABASE_URL", f"sqlite:///{tmp}/ledger.db")
        env.setenv("TOLLGATE_CONFIG", str(tmp / "gateway.yaml"))
        env.setenv("TOLLGATE_JOURNAL_DIR", str(tmp / "journal"))
        for provider in load_catalog().providers:
            env.setenv(provider.credential_env, provider_key(provider))
        gateway = Gateway()
        with taddons.context(Proxyserver(), gateway) as tctx:
            tctx.configure(gateway)
            gateway.tollgate_key = secret_key(balance=10**12)
            yield gateway
            gateway.done()
    database.close()
    database.initialize(None)


def request_of(provider: Provider, spec: dict, streamed: bool) -> tuple[str, dict]:
    """The path and body the provider's own SDK sends for one chat turn."""
    model, messages = spec["model"], [{"role": "user", "content": "Hi"}]
    if provider.api_family == "anthropic":
        return "/v1/messages", {"model": model, "max_tokens": 1024, "messages": messages, "stream": streamed}
    if provider.api_family == "gemini":
        verb = "streamGenerateContent?alt=sse" if streamed else "generateContent"
        return f"/v1beta/models/{model}:{verb}", {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    if provider.api_family == "cohere":
        return "/v2/chat", {"model": model, "messages": messages, "stream": streamed}
    base_path = urlsplit(provider.base_url).path.rstrip("/")
    return f"{base_path}/chat/completions", {"model": model, "messages": messages, "stream": streamed}


def credential(provider: Provider, key: str) -> str:
    return f"{provider.auth_scheme} {key}" if provider.auth_scheme else key


def answer(gateway: Gateway, flow: http.HTTPFlow, spec: dict, streamed: bool) -> bytes:
    """Feed the fixture back as the provider's response; returns what the client received."""
    if not streamed:
        flow.response = tutils.tresp(headers=http.Headers(content_type="application/json"),
                                     content=spec["json"].encode())
    else:
        flow.response = tutils.tresp(headers=http.Headers(content_type="text/event-stream"), content=b"")
    raw = spec["sse"].encode()
    if spec.get("sse_newline") == "crlf":
        raw = raw.replace(b"\n", b"\r\n")

    async def respond() -> bytes:  # hooks run on mitmproxy's event loop
        gateway.responseheaders(flow)
        sent = [flow.response.content]
        if streamed:
            tap, size = flow.response.stream, 61  # chunks that split events, lines and UTF-8 anywhere
            sent = [piece for at in range(0, len(raw), size) for piece in tap(raw[at:at + size])] + list(tap(b""))
        gateway.response(flow)
        return b"".join(sent)

    return asyncio.run(respond())


def shipped_override(pid: str, model: str) -> dict:
    for entry in yaml.safe_load(SHIPPED_OVERRIDES.read_text())["models"]:
        if entry["provider"] == pid and entry["model"].lower() == model.lower():
            return entry
    raise LookupError(f"{pid}/{model} has neither a pricing_id, a fixture price nor a shipped override")


def expected_cost_nanos(provider: Provider, spec: dict) -> int:
    """The provider cost computed straight from genai-prices or the override's rates, not Tollgate's pricing."""
    u = spec["usage"]
    if provider.pricing_id is not None:
        usage = genai_prices.Usage(input_tokens=u["input_tokens"], cache_read_tokens=u["cache_read_tokens"],
                                   cache_write_tokens=u["cache_write_tokens"], output_tokens=u["output_tokens"],
                                   output_reasoning_tokens=u["reasoning_tokens"])
        usd = genai_prices.calc_price(usage, spec["model"], provider_id=provider.pricing_id).total_price
    else:
        price = spec.get("price") or shipped_override(provider.id, spec["model"])
        rate = {k: Decimal(str(v)) for k, v in price.items() if k.endswith("_mtok")}
        uncached = u["input_tokens"] - u["cache_read_tokens"] - u["cache_write_tokens"]
        usd = (uncached * rate["input_mtok"] + u["cache_read_tokens"] * rate.get("cache_read_mtok", rate["input_mtok"])
               + u["cache_write_tokens"] * rate.get("cache_write_mtok", rate["input_mtok"])
               + u["output_tokens"] * rate["output_mtok"]) / Decimal(10**6)
    return int((usd * 10**9).to_integral_value(rounding=ROUND_HALF_UP))


def test_every_catalog_provider_has_a_fixture():
    ids = {p.id for p in load_catalog().providers}
    assert ids - set(SPECS) <= OTHER_SECTIONS, f"providers without a wire-format fixture: {sorted(ids - set(SPECS))}"
    assert set(SPECS) <= ids, f"fixtures of providers not in the catalog: {sorted(set(SPECS) - ids)}"


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("pid", sorted(SPECS))
def test_provider_answer_is_metered_priced_and_keyed(gateway_in_process, pid, streamed):
    gateway, spec = gateway_in_process, SPECS[pid]
    provider = gateway.catalog.by_id(pid)
    path, body = request_of(provider, spec, streamed)
    tollgate_key = gateway.tollgate_key
    flow = run(gateway, api_flow([(provider.auth_header, credential(provider, tollgate_key))],
                                 content=json.dumps(body).encode(), host=provider.hosts[0], path=path))
    assert flow.response is None, flow.response and flow.response.content

    # the provider sees its own credential, where and how it wants it, and nothing of Tollgate's
    upstream = flow.request
    assert (upstream.scheme, upstream.host, upstream.port) == provider.origin and upstream.path == path
    assert upstream.headers[provider.auth_header] == credential(provider, provider_key(provider))
    assert tollgate_key not in bytes(upstream.headers).decode() and tollgate_key not in upstream.url
    if streamed and provider.api_family == "openai":  # asked for the usage the client did not ask for
        assert json.loads(upstream.content)["stream_options"] == {"include_usage": True}

    received = answer(gateway, flow, spec, streamed)
    assert all(json.dumps(piece).encode() in received for piece in TEXT) if streamed else received == spec["json"].encode()
    if streamed and provider.api_family == "openai":
        assert b'"usage":null' not in received  # what include_usage added is taken out again

    assert gateway.writer.flush(timeout=10)
    row = RequestRow.get_by_id(flow.response.headers["x-tollgate-request-id"])
    assert (row.provider, row.status, row.streamed, row.usage_source) == (pid, 200, streamed, "reported")
    assert {name: getattr(row, name) for name in USAGE_FIELDS} == spec["usage"]
    assert row.price_source == ("catalog" if provider.pricing_id else "override")
    assert row.provider_cost_nanos == expected_cost_nanos(provider, spec) > 0


@pytest.mark.parametrize("pid, host", [(p.id, h) for p in load_catalog().providers
                                       if len(p.hosts) > 1 and p.id in SPECS for h in p.hosts])
def test_each_host_of_a_provider_is_reached_at_that_host(gateway_in_process, pid, host):
    """A regional or legacy host (api.moonshot.cn, dashscope.aliyuncs.com, api.cohere.ai) is not redirected to
    base_url's host: keys of one region do not work in the other."""
    gateway = gateway_in_process
    provider = gateway.catalog.by_id(pid)
    path, body = request_of(provider, SPECS[pid], streamed=False)
    flow = run(gateway, api_flow([(provider.auth_header, credential(provider, gateway.tollgate_key))],
                                 content=json.dumps(body).encode(), host=host, path=path))
    assert flow.response is None
    assert (flow.request.scheme, flow.request.host, flow.request.port) == ("https", host, 443)
    gateway.error(flow)  # the exchange ends here; its row is written as an error
