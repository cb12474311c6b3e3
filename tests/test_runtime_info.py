"""What the running gateway tells the CLI (addons/proxy/runtime_info.py): its real address for `tollgate ca
--exports`, the provider keys it has for `tollgate providers`; and what the CLI says without one."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time

import pytest

from addons.cli.main import _proxy_url
from tests.harness import PROJECT, PROVIDER_KEYS, GatewayProcess, clean_env, tollgate_cli


@pytest.fixture
def gateway(tmp_path, mock):
    gw = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/ledger.db", {"openai": mock.url})
    gw.env["TOLLGATE_CA_BUNDLE"] = str(tmp_path / "ca-bundle.pem")
    gw.cli("init")
    gw.start()
    wait_for(tmp_path / "gateway.json")  # written in the `running` hook, just after "listening at"
    yield gw
    gw.stop()


def wait_for(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was never written"
        time.sleep(0.05)


def exports(result) -> dict[str, str]:
    return dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines())


def test_the_running_gateway_reports_its_address_confdir_and_keys(gateway):
    path = gateway.tmp / "gateway.json"
    state = json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert state["pid"] == gateway.proc.pid and state["confdir"] == str(gateway.confdir)
    assert state["listeners"] == [{"mode": "regular", "type": "regular", "listen_addrs": [["127.0.0.1", gateway.port]]}]
    ids = {"OPENAI_API_KEY": "openai", "ANTHROPIC_API_KEY": "anthropic", "GEMINI_API_KEY": "gemini",
           "COHERE_API_KEY": "cohere", "GROQ_API_KEY": "groq", "MISTRAL_API_KEY": "mistral"}
    assert state["provider_keys"] == sorted(ids[name] for name in PROVIDER_KEYS)
    assert not any(value in path.read_text() for value in PROVIDER_KEYS.values())

    result = gateway.cli("ca", "--exports")  # no --port, no --confdir: both from the running gateway
    assert exports(result) == {
        "SSL_CERT_FILE": str(gateway.tmp / "ca-bundle.pem"), "REQUESTS_CA_BUNDLE": str(gateway.tmp / "ca-bundle.pem"),
        "NODE_EXTRA_CA_CERTS": str(gateway.ca), "HTTPS_PROXY": f"http://127.0.0.1:{gateway.port}"}
    assert result.stderr == ""
    assert exports(gateway.cli("ca", "--exports", "--port", "9191"))["HTTPS_PROXY"] == "http://127.0.0.1:9191"


def test_providers_reports_the_gateways_keys_not_the_shells(gateway):
    shell = {k: v for k, v in gateway.env.items() if k != "OPENAI_API_KEY"} | {"DEEPSEEK_API_KEY": "sk-only-here"}
    tollgate = tollgate_cli(shell)
    rows = {r["id"]: r for r in tollgate.json("providers")}
    assert rows["openai"]["configured"] is True and rows["deepseek"]["configured"] is False
    assert {r["source"] for r in rows.values()} == {"running gateway"}
    table = tollgate("providers").stdout
    assert "gateway has key" in table and f"pid {gateway.proc.pid}" in table


def test_a_stopped_gateway_removes_its_file_and_the_cli_says_so(gateway):
    gateway.stop()
    assert not (gateway.tmp / "gateway.json").exists()
    rows = {r["id"]: r for r in gateway.cli_json("providers")}
    assert rows["openai"]["source"] == "this shell's environment" and rows["openai"]["configured"] is True
    assert "No running gateway found" in gateway.cli("providers").stdout
    result = gateway.cli("ca", "--exports", "--confdir", str(gateway.confdir))
    assert exports(result)["HTTPS_PROXY"] == "http://127.0.0.1:8080"
    assert "no running gateway found" in result.stderr and "--port" in result.stderr


def test_a_killed_gateways_file_is_ignored(gateway):
    gateway.proc.send_signal(signal.SIGKILL)
    gateway.proc.wait(10)
    assert (gateway.tmp / "gateway.json").exists()
    assert gateway.cli_json("providers")[0]["source"] == "this shell's environment"


def test_workers_report_their_supervisor(tmp_path, mock, private_redis):
    """With --workers the file names the supervisor (the process to stop), whichever worker wrote it."""
    gw = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/ledger.db", {"openai": mock.url}, redis_url=private_redis.url)
    gw.env["TOLLGATE_CA_BUNDLE"] = str(tmp_path / "ca-bundle.pem")
    gw.cli("init")
    proc = subprocess.Popen([sys.executable, "-m", "addons.runtime.workers", "--workers", "2", "--",
                             "--listen-host", "127.0.0.1", "--listen-port", str(gw.port), "--set", f"confdir={gw.confdir}"],
                            env=gw.env, cwd=PROJECT, stdout=(tmp_path / "workers.log").open("wb"),
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while b"worker 2 (pid" not in (tmp_path / "workers.log").read_bytes():
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "workers.log").read_text()
            time.sleep(0.2)
        wait_for(tmp_path / "gateway.json")
        assert json.loads((tmp_path / "gateway.json").read_text())["pid"] == proc.pid
        assert exports(gw.cli("ca", "--exports"))["HTTPS_PROXY"] == f"http://127.0.0.1:{gw.port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert not (tmp_path / "gateway.json").exists()


@pytest.mark.e2e
def test_without_a_gateway_the_cli_names_the_default_and_the_missing_ca(tmp_path):
    tollgate = tollgate_cli(clean_env(TOLLGATE_RUNTIME_FILE=str(tmp_path / "none.json"),
                                      TOLLGATE_CA_BUNDLE=str(tmp_path / "bundle.pem")))
    result = tollgate("ca", "--exports", "--confdir", str(tmp_path / "conf"), check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert "mitmproxy's CA does not exist yet" in result.stderr and "Traceback" not in result.stderr
    assert tollgate.json("ca", "--confdir", str(tmp_path / "conf"))["exists"] is False


def listening(*listeners, proxyauth=False) -> dict:
    return {"pid": 1, "proxyauth": proxyauth,
            "listeners": [{"mode": mode, "type": mode.partition(":")[0].partition("@")[0], "listen_addrs": addrs}
                          for mode, addrs in listeners]}


@pytest.mark.parametrize("running, url, note", [
    (listening(("regular", [["127.0.0.1", 8089]])), "http://127.0.0.1:8089", None),
    (listening(("regular", [["::", 8089], ["0.0.0.0", 8089]])), "http://127.0.0.1:8089", None),
    (listening(("regular", [["::", 8089]])), "http://[::1]:8089", None),
    (listening(("transparent", [["127.0.0.1", 8089]]), ("regular@9090", [["127.0.0.1", 9090]])),
     "http://127.0.0.1:9090", None),
    (listening(("transparent", [["127.0.0.1", 8089]])), "http://127.0.0.1:8080", "has no HTTP proxy listener"),
    (listening(("regular", [["127.0.0.1", 8089]]), proxyauth=True), "http://127.0.0.1:8089", "proxy credentials"),
])
def test_https_proxy_is_the_running_gateways_proxy_listener(running, url, note):
    got, said = _proxy_url(None, running)
    assert got == url and (note in said if note else said is None)
