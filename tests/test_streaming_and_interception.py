"""Streams pass through as they arrive; cut streams are still recorded; non-AI TLS is left alone."""

from __future__ import annotations

import socket
import ssl
import threading

import httpx
import pytest

from tests.harness import self_signed_cert

pytestmark = pytest.mark.launchers  # streaming and interception are where the launchers can differ

CHAT = "/v1/forward?u=https://api.openai.com/v1/chat/completions"


def stream_body(model):
    return {"model": model, "stream": True, "messages": [{"role": "user", "content": "hello there"}]}


def test_first_chunk_reaches_client_before_upstream_finishes(gateway, mock):
    mock.release_stream.clear()
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=15) as client:
        with client.stream("POST", CHAT, json=stream_body("mock-slow"),
                           headers={"authorization": f"Bearer {gateway.admin_key}"}) as response:
            chunks, received = response.iter_raw(), b""
            while b"Hello" not in received:
                received += next(chunks)
            assert mock.last.finished_at is None, "the client got data only after the provider had finished"
            mock.release_stream.set()
            rest = b"".join(chunks)
    assert b"[DONE]" in rest, (mock.last.response_body[-300:], received + rest)
    row = gateway.request_row(response.headers["x-lava-request-id"])
    assert row["streamed"] is True and row["usage_source"] == "reported"


def test_stream_cut_by_provider_is_recorded_with_estimated_usage(gateway):
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=15) as client:
        with client.stream("POST", CHAT, json=stream_body("mock-cut"),
                           headers={"authorization": f"Bearer {gateway.admin_key}"}) as response:
            request_id = response.headers["x-lava-request-id"]
            try:
                for _ in response.iter_raw():
                    pass
            except httpx.HTTPError:
                pass  # the cut reaches the client as a broken stream
    row = gateway.request_row(request_id)
    assert row["usage_source"] == "estimated"
    # "Hello" + " from" streamed before the cut: 10 chars -> 3 tokens; prompt "hello there" -> 3 tokens
    assert (row["input_tokens"], row["output_tokens"]) == (3, 3)
    assert row["charged"] == row["provider_cost"] == "0.000009"  # 3 x $1/M + 3 x $2/M


def test_non_catalog_host_is_tunnelled_without_decryption(gateway, tmp_path):
    """The client verifies the origin's own certificate through the proxy: no mitmproxy CA involved."""
    cert, key = self_signed_cert(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1024)
            tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\norigin")

    threading.Thread(target=serve, daemon=True).start()
    client_ctx = ssl.create_default_context(cafile=str(cert))  # trusts ONLY the origin's certificate
    with httpx.Client(proxy=gateway.url, verify=client_ctx, trust_env=False, timeout=10) as client:
        response = client.get(f"https://localhost:{port}/")
    listener.close()
    assert response.text == "origin"


def test_usage_the_gateway_asked_for_is_invisible_to_the_client(gateway, mock):
    """The client sees the stream it asked for: no usage chunk, no usage fields, the terminator intact."""
    with httpx.Client(base_url=gateway.url, trust_env=False, timeout=15) as client:
        response = client.post(CHAT, json=stream_body("gpt-4o-mini"),
                               headers={"authorization": f"Bearer {gateway.admin_key}"})
    upstream = mock.last
    assert upstream.json["stream_options"] == {"include_usage": True}
    assert b'"usage"' in upstream.response_body and b'"usage"' not in response.content
    events = [e for e in response.content.split(b"\n\n") if e]
    assert len(events) == len([e for e in upstream.response_body.split(b"\n\n") if e]) - 1
    assert response.content.endswith(b"data: [DONE]\n\n")
    assert gateway.request_row(response.headers["x-lava-request-id"])["usage_source"] == "reported"
