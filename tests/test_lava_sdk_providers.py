"""Every URL of the `providers` map of Lava's Node SDK works against Tollgate's forward endpoint unchanged.

The SDK builds `${baseUrl}forward?u=<provider base>` (no trailing slash, `u` not encoded) and its callers
append the provider's own path (`${lava.providers.groq}/chat/completions`). tests/fixtures/lava_sdk_providers.json
is that map as @lavapayments/nodejs 11.2.0 builds it for baseUrl http://127.0.0.1:8080/v1/; one test holds the
copy to the installed SDK (tests/node, as tests/test_lava_sdk.py installs it), the others drive each URL
through the Gateway addon in-process: the catalog provider it lands on, the URL the provider is sent, its
credential in the provider's own style, and a request Tollgate meters.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from addons.core.catalog import load_catalog
from addons.ledger.models import RequestRow
from tests.inprocess_gateway import CHAT, api_flow, run, secret_key
from tests.test_lava_sdk import node_sdks  # noqa: F401 - the fixture that installs the SDK

MAP_FILE = Path(__file__).parent / "fixtures" / "lava_sdk_providers.json"
SDK_MAP: dict[str, str] = json.loads(MAP_FILE.read_text())
BASE = "http://127.0.0.1:8080/v1/"
CATALOG_IDS = {p.id for p in load_catalog().providers}

# SDK key -> (catalog provider id, the path its callers append, whether Tollgate reads its usage)
ROUTES = {
    "openai": ("openai", "/chat/completions", True),
    "anthropic": ("anthropic", "/messages", True),
    "mistral": ("mistral", "/chat/completions", True),
    "deepseek": ("deepseek", "/chat/completions", True),
    "xai": ("xai", "/chat/completions", True),
    "google": ("gemini", "/models/gemini-2.5-flash:generateContent", True),
    "googleOpenaiCompatible": ("gemini", "/chat/completions", True),
    "kluster": ("kluster", "/chat/completions", True),
    "inference": ("inference", "/chat/completions", True),
    "groq": ("groq", "/chat/completions", True),
    "novita": ("novita", "/chat/completions", True),
    "vercel": ("vercel", "/chat/completions", True),
    "together": ("together", "/chat/completions", True),
    "hyperbolic": ("hyperbolic", "/chat/completions", True),
    # TODO(lead, at merge): elevenlabs comes with the media providers' section of providers.yaml; its
    # case runs once that entry exists (text to speech is metered by the media work, not checked here).
    "elevenlabs": ("elevenlabs", "/text-to-speech/JBFqnCBsd6RMkjVDRZzb", False),
    "sambanova": ("sambanova", "/chat/completions", True),
    "deepinfra": ("deepinfra", "/chat/completions", True),
    "cohere": ("cohere", "/chat/completions", True),
    "parasail": ("parasail", "/chat/completions", True),
    "nebius": ("nebius", "/chat/completions", True),
    "fireworks": ("fireworks", "/chat/completions", True),
    "embercloud": ("embercloud", "/chat/completions", True),
    "cerebras": ("cerebras", "/chat/completions", True),
    "targon": ("targon", "/chat/completions", True),
    "gmicloud": ("gmicloud", "/chat/completions", True),
    "chutes": ("chutes", "/chat/completions", True),
    "baseten": ("baseten", "/chat/completions", True),
    "moonshot": ("moonshot", "/chat/completions", True),
}


def test_the_checked_in_map_is_every_entry_the_issue_names():
    assert set(SDK_MAP) == set(ROUTES)
    assert all(url.startswith(f"{BASE}forward?u=https://") and not url.endswith("/") for url in SDK_MAP.values())


@pytest.mark.e2e
def test_the_checked_in_map_is_the_installed_sdks(node_sdks):  # noqa: F811
    """Runs the installed SDK (skipped only outside CI when Node is missing, like tests/test_lava_sdk.py)."""
    script = ("import('@lavapayments/nodejs').then(m => console.log(JSON.stringify("
              f"new m.Lava('aks_test_tollgate', {{baseUrl: {json.dumps(BASE)}}}).providers)))")
    result = subprocess.run(["node", "--input-type=module", "-e", script], cwd=node_sdks, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "LAVA_SECRET_KEY": ""})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == SDK_MAP


@pytest.mark.parametrize("sdk_key", sorted(ROUTES))
def test_sdk_provider_url_routes_to_its_catalog_provider(gw, monkeypatch, sdk_key):
    provider_id, suffix, metered = ROUTES[sdk_key]
    if provider_id not in CATALOG_IDS:
        pytest.skip(f"TODO(lead, at merge): {provider_id} is not in this branch's catalog (the media section adds it)")
    provider = gw.catalog.by_id(provider_id)
    monkeypatch.setenv(provider.credential_env, "pk-real-provider-key")
    url = SDK_MAP[sdk_key] + suffix  # exactly what fetch(`${lava.providers[key]}${path}`) requests
    secret = secret_key()
    flow = api_flow([("authorization", f"Bearer {secret}")], host="127.0.0.1", port=8080, scheme="http",
                    path=url.removeprefix("http://127.0.0.1:8080"), content=CHAT)
    flow.client_conn.sockname = ("127.0.0.1", 8080)
    run(gw, flow)

    assert flow.response is None, flow.response.content
    assert flow.request.url == url.partition("?u=")[2]  # the provider's own URL, path and all
    assert gw.pending[flow.id].provider.id == provider_id
    scheme = f"{provider.auth_scheme} " if provider.auth_scheme else ""
    assert flow.request.headers[provider.auth_header] == scheme + "pk-real-provider-key"
    assert secret not in bytes(flow.request.headers).decode() and secret not in flow.request.url
    if metered:
        assert gw.pending[flow.id].reader.endpoint != "other"  # its usage is read, not left unmetered


@pytest.mark.parametrize("sdk_key, model", [("googleOpenaiCompatible", "gemini-2.5-flash"), ("cohere", "command-a-03-2025")])
def test_openai_compatible_paths_of_other_families_are_read_as_chat_completions(gw, monkeypatch, sdk_key, model):
    """Gemini's /v1beta/openai and Cohere's /compatibility/v1 answer in OpenAI's shape: their usage is read."""
    provider = gw.catalog.by_id(ROUTES[sdk_key][0])
    monkeypatch.setenv(provider.credential_env, "pk-real-provider-key")
    url = SDK_MAP[sdk_key] + "/chat/completions"
    flow = api_flow([("authorization", f"Bearer {secret_key()}")], host="127.0.0.1", port=8080, scheme="http",
                    path=url.removeprefix("http://127.0.0.1:8080"), content=CHAT.replace(b"gpt-4o-mini", model.encode()))
    flow.client_conn.sockname = ("127.0.0.1", 8080)
    run(gw, flow)
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1764979200, "model": model,
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 812, "completion_tokens": 64, "total_tokens": 876}}
    flow.response = tutils.tresp(headers=http.Headers(content_type="application/json"), content=json.dumps(answer).encode())

    async def respond():
        gw.responseheaders(flow)
        gw.response(flow)

    asyncio.run(respond())
    assert gw.writer.flush(timeout=10)
    row = RequestRow.get_by_id(flow.response.headers["x-tollgate-request-id"])
    assert (row.provider, row.input_tokens, row.output_tokens, row.usage_source) == (provider.id, 812, 64, "reported")
    assert row.price_source == "catalog" and row.provider_cost_nanos > 0
