"""The security features end to end, on real gateway processes: not an open proxy, request limits,
the failed-authentication throttle, SSRF after DNS, and credentials kept out of saved flows and logs."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time

import httpx
import pytest
from mitmproxy import io

from addons.auth.credentials import ForwardToken, encode_forward_token
from addons.proxy.redaction import REDACTED
from tests.harness import BIN, PROJECT, PROVIDER_KEYS, GatewayProcess, clean_env, free_port

OPENAI = "/v1/forward?u=https://api.openai.com/v1/chat/completions"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def post(gw, path=OPENAI, headers=None, body=CHAT):
    with httpx.Client(base_url=gw.url, trust_env=False, timeout=15) as client:
        return client.post(path, json=body, headers=headers or {})


def bearer(value):
    return {"authorization": f"Bearer {value}"}


def unknown_key():
    return "tg_sk_" + secrets.token_urlsafe(32)


def error_of(response):
    return response.status_code, response.json()["error"]["code"]


def raw(gw, data: bytes) -> tuple[int, str]:
    """Send raw bytes; the gateway's status and error code (it answers and closes the connection)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head and b"Traceback" not in answer
    fields = dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:])
    assert fields[b"x-lava-request-id"] == fields[b"x-tollgate-request-id"]  # every answer, refusals included
    assert fields[b"x-lava-request-id"].startswith(b"req_")
    return int(head.split()[1]), json.loads(body)["error"]["code"]


def start(tmp, mock, unreachable=(), **kwargs) -> GatewayProcess:
    """A gateway whose openai, anthropic and gemini are the mock; `unreachable` providers point at a closed port."""
    upstreams = {p: mock.url for p in ("openai", "anthropic", "gemini")}
    upstreams |= dict.fromkeys(unreachable, "http://127.0.0.1:9")
    gw = GatewayProcess(tmp, f"sqlite:///{tmp}/ledger.db", upstreams, **kwargs)
    gw.fund()
    gw.start()
    return gw


@pytest.fixture(scope="module")
def lean(mock, tmp_path_factory):
    """tollgate-proxy with small limits, a short throttle, and a resolver that answers private addresses."""
    gw = start(tmp_path_factory.mktemp("secure"), mock, args=(
        "-s", str(PROJECT / "tests" / "fake_dns.py"),
        "--set", "tollgate_max_request_body=64k", "--set", "tollgate_max_header_bytes=16k",
        "--set", "tollgate_auth_fail_limit=3", "--set", "tollgate_auth_fail_window_s=2",
    ))
    yield gw
    gw.stop()


def test_listening_beyond_loopback_needs_proxyauth(tmp_path, mock):
    env = clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db")
    argv = [str(BIN / "tollgate-proxy"), "--listen-host", "0.0.0.0", "--listen-port", str(free_port()),
            "--set", f"confdir={tmp_path}/conf"]
    refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "refusing to run an open proxy: regular on 0.0.0.0" in refused.stderr and "--proxyauth" in refused.stderr
    gw = start(tmp_path, mock, args=("--listen-host", "0.0.0.0", "--proxyauth", "user:pass"))
    try:
        with httpx.Client(trust_env=False) as client:
            assert client.get(f"{gw.url}/healthz").status_code == 407
            auth = {"proxy-authorization": "Basic dXNlcjpwYXNz"}  # user:pass
            assert client.get(f"{gw.url}/healthz", headers=auth).json() == {"status": "ok"}
    finally:
        gw.stop()


def test_oversized_body_is_413_before_it_is_read(lean, mock):
    before = (len(mock.requests), len(lean.ledger.requests()))
    head = f"POST {OPENAI} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {lean.admin_key}\r\n"
    assert raw(lean, f"{head}Content-Length: 1000000000\r\n\r\n".encode()) == (413, "request_too_large")
    chunked = f"{head}Transfer-Encoding: chunked\r\n\r\n11000\r\n".encode() + b"x" * 0x11000 + b"\r\n"
    assert raw(lean, chunked) == (413, "request_too_large")
    assert (len(mock.requests), len(lean.ledger.requests())) == before  # nothing forwarded, no ledger row
    padded = {**CHAT, "messages": [{"role": "user", "content": "x" * 60_000}]}
    assert post(lean, headers=bearer(lean.admin_key), body=padded).status_code == 200  # under the limit


def test_oversized_head_is_431(lean):
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 20_000
    assert raw(lean, head + b"\r\n\r\n") == (431, "request_headers_too_large")
    assert raw(lean, head) == (431, "request_headers_too_large")  # never ends: refused all the same


def test_private_upstream_address_is_refused_without_connecting(lean, mock):
    before = len(mock.requests)
    response = post(lean, "/v1/forward?u=https://api.mistral.ai/v1/chat/completions", bearer(lean.admin_key))
    assert error_of(response) == (502, "upstream_address_refused")
    assert "10.255.0.1" not in response.text and len(mock.requests) == before
    row = lean.request_row(response.headers["x-tollgate-request-id"])
    assert row["provider"] == "mistral" and "refused the upstream address" in row["error"]
    assert post(lean, headers=bearer(lean.admin_key)).status_code == 200  # configured upstreams are trusted


def test_failed_auths_from_one_address_get_429_until_the_window_passes(lean):
    time.sleep(2.1)  # earlier failures have left the 2 s window
    assert post(lean, headers=bearer(lean.admin_key)).status_code == 200
    for _ in range(3):
        assert error_of(post(lean, headers=bearer(unknown_key()))) == (401, "invalid_credential")
    throttled = post(lean, headers=bearer(unknown_key()))
    assert error_of(throttled) == (429, "too_many_failed_auths")
    assert 1 <= int(throttled.headers["retry-after"]) <= 2 and throttled.headers["x-lava-request-id"]
    assert post(lean, headers=bearer(lean.admin_key)).status_code == 200  # a key that worked still works
    time.sleep(int(throttled.headers["retry-after"]) + 0.1)
    assert error_of(post(lean, headers=bearer(unknown_key()))) == (401, "invalid_credential")


def test_credentials_stay_out_of_saved_flows_logs_and_the_ledger(tmp_path, mock):
    flows = tmp_path / "flows.out"
    gw = start(tmp_path, mock, unreachable=["mistral"], launcher="mitmdump",
               args=("-w", str(flows), "--set", "flow_detail=2"))
    broke = gw.cli_json("keys", "create", "--name", "broke", "--account", "broke-co")["secret_key"]
    byok = "sk-byok-of-the-caller-0123456789"
    token = encode_forward_token(ForwardToken(secret_key=gw.admin_key, provider_key=byok))
    unknown, seen = unknown_key(), len(mock.requests)
    gemini = "/v1/forward?u=https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
    mistral = "/v1/forward?u=https://api.mistral.ai/v1/chat/completions"
    anthropic = {"model": "claude-3-5-haiku-latest", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    try:
        assert post(gw, headers=bearer(gw.admin_key)).status_code == 200
        assert post(gw, "/v1/forward?u=https://api.anthropic.com/v1/messages", {"x-api-key": gw.admin_key},
                    anthropic).status_code == 200
        contents = {"contents": [{"parts": [{"text": "hi"}]}]}
        assert post(gw, f"{gemini}&key={gw.admin_key}", body=contents).status_code == 200
        assert post(gw, headers=bearer(token)).status_code == 200  # bring your own provider key
        assert post(gw, headers=bearer(unknown)).status_code == 401
        assert post(gw, headers=bearer(broke)).status_code == 402
        assert post(gw, mistral, bearer(gw.admin_key)).status_code == 502  # the error path
        ledger = json.dumps(gw.ledger.requests())
    finally:
        gw.stop()
    sent = {v for r in mock.requests[seen:] for v in r.headers.values()}
    assert {f"Bearer {PROVIDER_KEYS['OPENAI_API_KEY']}", PROVIDER_KEYS["ANTHROPIC_API_KEY"], f"Bearer {byok}"} <= sent
    with flows.open("rb") as f:
        saved = list(io.FlowReader(f).stream())
    assert len(saved) == 7
    secret_values = {gw.admin_key, broke, unknown, byok, token, *PROVIDER_KEYS.values()}
    for where, data in (("saved flows", flows.read_bytes()), ("log", gw.log.read_bytes()), ("ledger", ledger.encode())):
        leaked = [s for s in secret_values if s.encode() in data]
        assert not leaked, f"{where} holds {leaked}"
    assert all(REDACTED in f.request.headers.get("authorization", f.request.headers.get("x-api-key", REDACTED))
               for f in saved)
