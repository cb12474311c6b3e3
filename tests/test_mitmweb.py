"""The gateway under mitmweb (./run_proxy.sh --web), read the way its UI reads it: through mitmweb's own API.

No browser: the test polls what the UI polls (/flows, the /updates websocket, File > Save's
/flows/dump, "Copy as cURL"'s export command, the command bar's cut, save.har, the request's
content views) while requests wait on a provider that has not answered yet, the time a real
generation takes, and asserts that no provider key and no Tollgate credential ever shows up.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest
import tornado.websocket

from addons.auth.credentials import ForwardToken, encode_forward_token
from addons.proxy.mitmproxy_internals import check_version
from addons.proxy.web_redaction import masked_option
from tests.conftest import MOCK_MODEL_PRICE
from tests.harness import PROJECT, PROVIDER_KEYS, GatewayProcess, clean_env, free_port
from tests.mock_provider import MockProvider

FORWARD = "/v1/forward?u="
HANG = "mock-hang"  # the mock sends nothing until released: a provider still generating
UPSTREAM_PROXY_PASSWORD = "upstream-proxy-secret-0123"  # an option's password, for the Options view


@pytest.fixture(scope="module")
def provider():
    with MockProvider() as mock:
        yield mock


@pytest.fixture(scope="module")
def web(provider, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mitmweb")
    gw = GatewayProcess(tmp, f"sqlite:///{tmp}/ledger.db", {p: provider.url for p in ("openai", "anthropic", "gemini")},
                        prices=[MOCK_MODEL_PRICE, {**MOCK_MODEL_PRICE, "provider": "anthropic"},
                                {**MOCK_MODEL_PRICE, "provider": "gemini"}], launcher="mitmweb",
                        options={"upstream_auth": f"proxyuser:{UPSTREAM_PROXY_PASSWORD}"})
    gw.fund()
    gw.cli("meters", "create", "chat", "--rate-type", "fixed", "--unit", "tokens_1m", "--tier", "0:3.00")
    gw.cli("customers", "create", "cus_42", "--balance", "10")
    gw.token = encode_forward_token(ForwardToken(gw.admin_key, customer_id="cus_42", meter_slug="chat"))
    gw.start()
    token = parse_qs(urlsplit(gw.web_url).query)["token"][0]
    gw.api = httpx.Client(base_url=f"http://127.0.0.1:{gw.web_port}", headers={"authorization": f"Bearer {token}"},
                          trust_env=False, timeout=10)
    xsrf = secrets.token_hex(16)  # the UI echoes its XSRF cookie in a header on every POST (commands)
    gw.api.cookies.set("_mitmproxy_xsrf", xsrf)
    gw.api.headers["x-xsrftoken"] = xsrf
    gw.ws_url = f"ws://127.0.0.1:{gw.web_port}/updates?token={token}"
    yield gw
    gw.api.close()
    gw.stop()


class Updates(threading.Thread):
    """The UI's live feed: every message mitmweb pushes on its /updates websocket."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.messages, self.connected = url, [], threading.Event()

    def run(self) -> None:
        asyncio.run(self._read())

    async def _read(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.conn = await tornado.websocket.websocket_connect(self.url)
        self.connected.set()
        while (message := await self.conn.read_message()) is not None:
            self.messages.append(message)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.conn.close)
        self.join(5)


def command(web, name: str, *arguments: str) -> bytes:
    """A command as the UI's command bar and menus run it; the raw answer."""
    answer = web.api.post(f"/commands/{name}", json={"arguments": list(arguments)})
    assert answer.status_code == 200 and "value" in answer.json(), answer.text
    return answer.content


def in_flight_at_provider(flows: list[dict], provider) -> list[dict]:
    """Flows the gateway has already sent on to the provider (its key is on them), still without an answer."""
    return [f for f in flows if f["request"]["port"] == provider.port and "response" not in f and not f.get("error")]


@pytest.mark.e2e
def test_no_credential_shows_in_mitmweb_while_requests_are_in_flight(web, provider, tmp_path):
    credentials = [*PROVIDER_KEYS.values(), web.admin_key, web.token, UPSTREAM_PROXY_PASSWORD]
    updates = Updates(web.ws_url)
    updates.start()
    assert updates.connected.wait(10)
    provider.release_stream.clear()
    answers: dict[str, object] = {}

    def openai_stream():  # the official SDK, streaming, with a customer's forward token
        client = openai.OpenAI(api_key=web.token, base_url=f"{web.url}{FORWARD}https://api.openai.com/v1/",
                               http_client=httpx.Client(trust_env=False), max_retries=0)
        stream = client.chat.completions.create(model=HANG, stream=True, messages=[{"role": "user", "content": "hi"}])
        answers["openai"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    def anthropic_call():  # the key in x-api-key
        answers["anthropic"] = httpx.post(
            f"{web.url}{FORWARD}https://api.anthropic.com/v1/messages", headers={"x-api-key": web.admin_key},
            json={"model": HANG, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
            trust_env=False, timeout=30).status_code

    def gemini_call():  # the key as ?key=; the gateway sends Gemini's key in x-goog-api-key
        url = (f"{web.url}{FORWARD}https://generativelanguage.googleapis.com/v1beta/models/{HANG}:generateContent"
               f"&key={web.admin_key}")
        answers["gemini"] = httpx.post(url, json={"contents": [{"parts": [{"text": "hi"}]}]}, trust_env=False,
                                       timeout=30).status_code

    threads = [threading.Thread(target=fn) for fn in (openai_stream, anthropic_call, gemini_call)]
    for thread in threads:
        thread.start()
    seen: list[tuple[str, bytes]] = []
    in_flight_polls = 0
    try:
        deadline = time.monotonic() + 8  # within the mock's own 10 s hang limit
        while time.monotonic() < deadline and in_flight_polls < 5:
            listing = web.api.get("/flows")
            seen.append(("/flows", listing.content))
            flows = listing.json()
            waiting = in_flight_at_provider(flows, provider)
            seen.append(("/flows/dump", web.api.get("/flows/dump").content))
            seen.append(("/options", web.api.get("/options").content))
            cut = "request.header[authorization],request.header[x-api-key],request.header[x-goog-api-key],request.url"
            seen.append(("cut", command(web, "cut", "@all", cut)))
            har = tmp_path / f"flows-{len(seen)}.har"
            command(web, "save.har", "@all", str(har))
            seen.append(("save.har", har.read_bytes() if har.exists() else b""))
            for flow in flows:
                for fmt in ("curl", "httpie", "raw_request"):
                    seen.append((f"export {fmt}", command(web, "export", fmt, f"@{flow['id']}")))
                for view in ("auto", "query"):
                    seen.append((f"content view {view}",
                                 web.api.get(f"/flows/{flow['id']}/request/content/{view}.json").content))
            if len(waiting) == 3:
                in_flight_polls += 1
            time.sleep(0.05)
    finally:
        provider.release_stream.set()
        for thread in threads:
            thread.join(20)
        time.sleep(0.3)
        updates.close()
    seen += [("/updates", m.encode() if isinstance(m, str) else m) for m in updates.messages]
    assert in_flight_polls >= 1, "the three requests were never seen waiting on the provider"
    assert answers == {"openai": "Hello from the mock.", "anthropic": 200, "gemini": 200}
    leaks = [(where, s) for where, data in seen for s in credentials if s.encode() in data]
    assert not leaks, f"mitmweb showed credentials in {sorted({w for w, _ in leaks})}"
    shown = [f for f in web.api.get("/flows").json() if f["request"]["port"] == provider.port]
    headers = {name.lower(): value for f in shown for name, value in f["request"]["headers"]}
    assert headers["authorization"] == "Bearer [redacted]" and headers["x-api-key"] == "[redacted]"
    assert headers["x-goog-api-key"] == "[redacted]"
    assert web.api.get("/options").json()["upstream_auth"]["value"] == "proxyuser:[redacted]"


@pytest.mark.e2e
def test_metered_and_refused_flows_carry_what_an_operator_looks_for(web, provider):
    provider.release_stream.set()
    client = openai.OpenAI(api_key=web.token, base_url=f"{web.url}{FORWARD}https://api.openai.com/v1/",
                           http_client=httpx.Client(trust_env=False), max_retries=0)
    answer = client.chat.completions.with_raw_response.create(model="mock-chat",
                                                              messages=[{"role": "user", "content": "hi"}])
    metered_id = answer.headers["x-tollgate-request-id"]
    refused = httpx.post(f"{web.url}{FORWARD}https://api.openai.com/v1/chat/completions",
                         headers={"authorization": "Bearer tg_sk_" + "x" * 43}, json={"model": "m"}, trust_env=False)
    assert refused.status_code == 401
    refused_id = refused.headers["x-tollgate-request-id"]
    deadline = time.monotonic() + 10
    while True:
        comments = {f["comment"]: f for f in web.api.get("/flows").json() if f["comment"]}
        metered = next((c for c in comments if f"request={metered_id}" in c), None)
        rejected = next((c for c in comments if f"request={refused_id}" in c), None)
        if (metered and rejected) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert metered, comments
    row = web.request_row(metered_id)
    key = web.cli_json("keys", "list")[0]
    deadline = time.monotonic() + 10  # the fee is the ledger's, known once it commits the request
    while f"fee=${row['fee']}" not in metered.split() and time.monotonic() < deadline:
        time.sleep(0.1)
        metered = next(f["comment"] for f in web.api.get("/flows").json() if f"request={metered_id}" in f["comment"])
        row = web.request_row(metered_id)
    assert row["fee"] != "0.00"
    for word in ("openai", "model=mock-chat", "in=17", "out=9", f"cost=${row['provider_cost']}", f"fee=${row['fee']}",
                 f"key={key['name']}", f"key_id={key['id']}", "customer=cus_42", "meter=chat", f"request={metered_id}"):
        assert word in metered.split(), (word, metered)
    assert any(w.startswith("latency=") and w.endswith("ms") for w in metered.split())
    assert next(f for f in web.api.get("/flows").json() if f["comment"] == metered)["marked"] == "💰"
    assert rejected.startswith("refused 401 invalid_credential: "), rejected
    assert comments[rejected]["marked"] == "⛔"
    assert json.loads(refused.content)["error"]["message"] in rejected


@pytest.mark.parametrize("name, value, shown", [
    ("proxyauth", "bob:s3cret", "bob:[redacted]"),
    ("proxyauth", "@/etc/tollgate.htpasswd", "@/etc/tollgate.htpasswd"),
    ("proxyauth", "ldaps:ldap.example:636:cn=admin:s3cret:dc=example", "[redacted]"),
    ("tollgate_database_url", "postgresql://tollgate:s3cret@db:5432/ledger",
     "postgresql://tollgate:[redacted]@db:5432/ledger"),
    ("tollgate_redis_url", "redis://:s3cret@cache:6379/0", "redis://:[redacted]@cache:6379/0"),
    ("tollgate_database_url", "sqlite:///data/tollgate.db", "sqlite:///data/tollgate.db"),
    ("web_password", "s3cret", "[redacted]"),
    ("listen_host", "127.0.0.1", "127.0.0.1"),
])
def test_the_options_view_shows_no_password(name, value, shown):
    assert masked_option(name, value) == shown


@pytest.mark.parametrize("version", ["11.1.3", "13.0.0", "12.4.0"])
def test_an_unknown_mitmproxy_version_is_refused_rather_than_shown_keys(version):
    with pytest.raises(RuntimeError, match=f"mitmproxy {version} is not supported"):
        check_version(version)
    check_version("12.3.1")


@pytest.mark.e2e
@pytest.mark.parametrize("own", [(), ("--set", "web_open_browser=false")], ids=["default", "user's own"])
def test_run_proxy_web_prints_one_tokenised_address_and_takes_the_users_browser_setting(tmp_path, own):
    port, web_port = free_port(), free_port()
    log = tmp_path / "web.log"
    env = clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db",
                    TOLLGATE_RUNTIME_FILE=str(tmp_path / "gateway.json"))
    proc = subprocess.Popen([str(PROJECT / "run_proxy.sh"), "--web", "--listen-port", str(port), "--set",
                             f"web_port={web_port}", "--set", f"confdir={tmp_path}/conf", *own],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Web server listening at" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(0.5)  # anything printed after it
        lines = [line for line in log.read_text().splitlines() if "?token=" in line]
        assert len(lines) == 1, log.read_text()
        address = lines[0].rsplit(" ", 1)[1]
        assert address.startswith(f"http://127.0.0.1:{web_port}/?token=")
        page = httpx.get(address, trust_env=False)  # the address alone logs the user in
        assert page.status_code == 200
        flows = httpx.get(f"http://127.0.0.1:{web_port}/flows", cookies=page.cookies, trust_env=False)
        assert flows.status_code == 200 and flows.json() == []
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@pytest.mark.e2e
def test_run_proxy_web_refuses_a_mode_this_host_cannot_run_in_one_line(tmp_path):
    """mitmweb only logs the gateway script's refusal and starts anyway; run_proxy.sh checks first."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        udp_port = taken.getsockname()[1]
        env = clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db",
                        TOLLGATE_RUNTIME_FILE=str(tmp_path / "gateway.json"))
        run = subprocess.run([str(PROJECT / "run_proxy.sh"), "--web", "--listen-port", str(free_port()),
                              "--mode", f"wireguard@127.0.0.1:{udp_port}", "--set", f"confdir={tmp_path}/conf",
                              "--set", f"web_port={free_port()}"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    refusal = [line for line in run.stderr.splitlines() if line.startswith("mitmweb: ")]
    assert len(refusal) == 1 and f"wireguard@127.0.0.1:{udp_port}" in refusal[0], run.stderr
    assert "Traceback" not in run.stderr and "Web server listening" not in run.stdout + run.stderr
