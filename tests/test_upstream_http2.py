"""HTTP/2 to a provider that speaks it, with a client that does not (the forward endpoint is HTTP/1.1)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MOCK_MODEL_PRICE
from tests.h2_provider import USAGE, H2Provider
from tests.harness import GatewayProcess, self_signed_cert

pytestmark = pytest.mark.e2e  # starts the gateway as a process

CHAT = "/v1/forward?u=https://api.openai.com/v1/chat/completions"


@pytest.fixture
def h2_gateway(request, tmp_path):
    http2 = getattr(request, "param", "true")  # tollgate_upstream_http2
    cert, key = self_signed_cert(tmp_path)
    provider = H2Provider(cert, key).start()
    gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/ledger.db",
                             {"openai": f"https://localhost:{provider.port}"}, prices=[MOCK_MODEL_PRICE],
                             args=["--set", f"tollgate_upstream_http2={http2}",
                                         "--set", f"ssl_verify_upstream_trusted_ca={cert}"])
    gateway.fund()
    gateway.start()
    yield gateway, provider
    gateway.stop()
    provider.stop()


def test_http1_clients_reach_an_h2_only_provider_and_are_metered(h2_gateway):
    gateway, provider = h2_gateway
    auth = {"authorization": f"Bearer {gateway.admin_key}"}
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=15) as client:
        plain = client.post(CHAT, headers=auth, json={"model": "gpt-4o-mini", "messages": []})
        streamed = client.post(CHAT, headers=auth, json={"model": "gpt-4o-mini", "stream": True, "messages": []})
    assert plain.status_code == streamed.status_code == 200
    assert plain.json()["usage"] == USAGE
    assert streamed.text.endswith("data: [DONE]\n\n") and '"usage"' not in streamed.text  # as the client asked
    assert provider.connections == ["h2"]  # one client connection, one provider connection, HTTP/2
    for response in (plain, streamed):
        row = gateway.request_row(response.headers["x-lava-request-id"])
        assert (row["input_tokens"], row["output_tokens"], row["usage_source"]) == (11, 7, "reported")


@pytest.mark.parametrize("h2_gateway", ["false"], indirect=True)
def test_without_the_option_the_client_protocol_is_mirrored(h2_gateway):
    """The default: an HTTP/1.1 client gets HTTP/1.1 upstream, which an h2-only server cannot serve."""
    gateway, provider = h2_gateway
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=15) as client:
        response = client.post(CHAT, headers={"authorization": f"Bearer {gateway.admin_key}"},
                               json={"model": "gpt-4o-mini", "messages": []})
    assert response.status_code == 502 and provider.connections == [None]  # no ALPN offered
