"""The admin process beside the gateway: `/v1/*` on the gateway's own listener is passed to it (the forward
endpoint is not), it answers on its own listener too, it is restarted when it dies and stopped with the
gateway, `--no-admin` turns it off, and neither listener opens beyond loopback unasked."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.harness import BIN, GatewayProcess, clean_env, free_port
from tests.test_workers import children

pytestmark = pytest.mark.e2e


def admin_pids(gateway_pid: int) -> set[int]:
    """The gateway's children (and its workers' children) running `addons.admin`."""
    found = set()
    for pid in children(gateway_pid) | {c for w in children(gateway_pid) for c in children(w)}:
        try:
            if b"addons.admin" in open(f"/proc/{pid}/cmdline", "rb").read():
                found.add(pid)
        except OSError:
            pass
    return found


def wait_for(condition, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_the_api_answers_on_the_gateways_listener_and_on_its_own(gateway):
    key = {"authorization": f"Bearer {gateway.admin_key}"}
    through_gateway = httpx.post(f"{gateway.url}/v1/plans", headers=key, json={})
    direct = httpx.post(f"{gateway.admin_url}/v1/plans", headers=key, json={})
    assert through_gateway.status_code == direct.status_code == 501
    assert through_gateway.json() == direct.json() and through_gateway.json()["error"]["code"] == "not_supported"
    assert httpx.get(f"{gateway.url}/v1/plans").json()["error"]["code"] == "missing_secret_key"
    assert httpx.get(f"{gateway.admin_url}/openapi.json").json()["openapi"].startswith("3.")


def test_the_forward_endpoint_is_not_passed_on(gateway):
    answer = httpx.post(f"{gateway.url}/v1/forward", headers={"authorization": f"Bearer {gateway.admin_key}"})
    assert answer.json()["error"]["code"] == "invalid_forward_url"  # the gateway's own refusal


@pytest.fixture
def own_gateway(tmp_path, mock):
    made = []

    def start(**kwargs) -> GatewayProcess:
        (tmp_path / str(len(made))).mkdir()
        gw = GatewayProcess(tmp_path / str(len(made)), f"sqlite:///{tmp_path}/ledger.db",
                            {"openai": mock.url}, **kwargs)
        made.append(gw)
        gw.fund()
        gw.start()
        return gw

    yield start
    for gw in made:
        gw.stop()


def test_a_dead_admin_process_is_a_json_503_then_restarted(own_gateway):
    gw = own_gateway(admin=True)
    key = {"authorization": f"Bearer {gw.admin_key}"}
    (first,) = admin_pids(gw.proc.pid)
    os.kill(first, signal.SIGKILL)
    down = wait_for(lambda: (a := httpx.get(f"{gw.url}/v1/plans", headers=key)).status_code == 503 and a)
    assert down.json()["error"]["code"] == "admin_unavailable"
    wait_for(lambda: httpx.get(f"{gw.url}/v1/plans", headers=key).status_code == 501)
    assert admin_pids(gw.proc.pid) and first not in admin_pids(gw.proc.pid)
    gw.stop()  # the admin process stops with the gateway
    wait_for(lambda: not [p for p in _all_admin_processes() if f"--port {gw.admin_port} " in _cmdline(p)])


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _all_admin_processes() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and "addons.admin" in _cmdline(int(p))]


def test_no_admin_turns_the_api_off(own_gateway):
    gw = own_gateway(admin=None, args=("--no-admin",))
    answer = httpx.get(f"{gw.url}/v1/plans", headers={"authorization": f"Bearer {gw.admin_key}"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "admin_off"
    assert not admin_pids(gw.proc.pid)


def test_failed_authentications_through_the_gateway_count_in_its_throttle(own_gateway):
    gw = own_gateway(admin=True, options={"tollgate_auth_fail_limit": 3, "tollgate_auth_fail_window_s": 60})
    good = {"authorization": f"Bearer {gw.admin_key}"}
    assert httpx.get(f"{gw.url}/v1/models", headers=good).status_code == 200
    codes = [httpx.get(f"{gw.url}/v1/models", headers={"authorization": f"Bearer tg_sk_wrong{i}"}).status_code
             for i in range(4)]
    assert codes == [401, 401, 401, 429]
    assert httpx.get(f"{gw.url}/v1/models", headers=good).status_code == 200  # a key seen to succeed still works


def test_an_admin_listener_beyond_loopback_is_refused_in_one_line(tmp_path):
    env = clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db")
    result = subprocess.run([str(BIN / "tollgate-proxy"), "--listen-host", "127.0.0.1", "--listen-port",
                             str(free_port()), "--admin-host", "0.0.0.0", "--set", f"confdir={tmp_path}/conf"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78  # EX_CONFIG: wrong settings
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tollgate-proxy: refusing to run an open admin listener")
    assert "tollgate_allow_open_admin=true" in lines[0]


def test_the_admin_server_refuses_an_open_address_by_itself(tmp_path):
    result = subprocess.run([sys.executable, "-m", "addons.admin", "--host", "0.0.0.0", "--port", str(free_port()),
                             "--database-url", f"sqlite:///{tmp_path}/l.db"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "refusing to run an open admin listener" in result.stderr


def test_under_workers_one_admin_process_serves_the_api_through_every_worker(tmp_path, mock):
    """Worker 1 runs the admin process; API requests reaching either worker are passed to it."""
    from tests.test_workers import served_by

    gw = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/ledger.db", {"openai": mock.url}, admin=None,
                        redis_url="redis://127.0.0.1:6379/12")
    gw.fund()
    command = [sys.executable, "-m", "addons.runtime.workers", "--workers", "2", "--", "--listen-host", "127.0.0.1",
               "--listen-port", str(gw.port), "--set", f"confdir={gw.confdir}", "--admin-port", str(gw.admin_port)]
    gw.proc = subprocess.Popen(command, env=gw.env, stdout=gw.log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp_path,
                               start_new_session=True)
    try:
        wait_for(lambda: gw.log.read_text().count(") is listening") == 2 and "Tollgate admin API" in gw.log.read_text(),
                 60)
        workers = children(gw.proc.pid)
        assert len(admin_pids(gw.proc.pid)) == 1
        conns, statuses = [], []
        for _ in range(16):  # connections of their own, which the kernel spreads over the workers
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            conn.request("GET", "/v1/models", headers={"authorization": f"Bearer {gw.admin_key}"})
            statuses.append(conn.getresponse().status)
            conns.append(conn)
        ports = [conn.sock.getsockname()[1] for conn in conns]
        assert set(statuses) == {200}
        assert set(served_by(gw.port, ports, workers).values()) == workers  # both workers passed API calls on
        for conn in conns:
            conn.close()
    finally:
        os.killpg(gw.proc.pid, signal.SIGTERM)
        gw.proc.wait(30)


RACE = """
import json, sys, time, httpx
url, key, idem, body, start = sys.argv[1:6]
time.sleep(max(0.0, float(start) - time.time()))
answer = httpx.post(url, json=json.loads(body), headers={"authorization": f"Bearer {key}", "idempotency-key": idem},
                    timeout=30)
print(json.dumps([answer.status_code, answer.json()]))
"""


def _race(urls: list[str], key: str, idem: str, body: dict) -> list[tuple[int, dict]]:
    """The same call from one process per URL, all released at the same instant."""
    start = str(time.time() + 1.5)
    procs = [subprocess.Popen([sys.executable, "-c", RACE, url, key, idem, json.dumps(body), start],
                              stdout=subprocess.PIPE, text=True) for url in urls]
    return [tuple(json.loads(proc.communicate(timeout=60)[0])) for proc in procs]


def test_idempotent_topups_and_reported_requests_racing_on_two_admin_processes_count_once(gateway, tmp_path):
    """Two instances' admin processes on one ledger (the gateway's, and a second started on the same database),
    each sent the same top-up and the same reported request at once by several processes: one credit, one
    charge, every caller the same answer."""
    second_port = free_port()
    second = subprocess.Popen([sys.executable, "-m", "addons.admin", "--port", str(second_port), "--database-url",
                               gateway.database_url], env=gateway.env, stdout=(tmp_path / "admin.log").open("wb"),
                              stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{second_port}/openapi.json"), 30)
        key = {"authorization": f"Bearer {gateway.admin_key}"}
        run = os.urandom(4).hex()
        customer = httpx.post(f"{gateway.url}/v1/customers", headers=key, json={"reference_id": run}).json()
        customer_id = customer["customer_id"]
        httpx.post(f"{gateway.url}/v1/meters", headers=key, json={
            "name": f"race {run}", "meter_slug": f"race-{run}", "rate_type": "fixed", "tier_type": "requests",
            "tiers": [{"start": "0", "rate": "0.25"}]}).raise_for_status()
        bases = [gateway.url, gateway.admin_url, f"http://127.0.0.1:{second_port}"] * 2

        topups = _race([f"{base}/v1/customers/{customer_id}/topups" for base in bases], gateway.admin_key,
                       f"topup-{run}", {"amount": "7.50"})
        assert {status for status, _ in topups} == {200} and len({json.dumps(a) for _, a in topups}) == 1
        assert gateway.ledger.balance(customer_id) == "7.50"  # one credit

        reports = _race([f"{base}/v1/requests" for base in bases], gateway.admin_key, f"report-{run}",
                        {"request_id": f"race-{run}", "customer_id": customer_id, "meter_slug": f"race-{run}"})
        assert {status for status, _ in reports} == {201} and len({json.dumps(a) for _, a in reports}) == 1
        assert gateway.ledger.balance(customer_id) == "7.25"  # one charge of the meter's $0.25
        assert gateway.ledger.audit_ok()
    finally:
        second.terminate()
        second.wait(20)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
