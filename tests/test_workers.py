"""The lean launcher (tollgate-proxy) and the multi-core supervisor (python -m addons.runtime.workers).

Which worker served a connection is read from /proc: the server side of each TCP connection is a
socket inode, and /proc/<pid>/fd says which process holds it.
"""

from __future__ import annotations

import http.client
import importlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from addons.runtime.launcher import LISTEN_BACKLOG, _uvloop_works
from tests.conftest import MOCK_MODEL_PRICE
from tests.harness import BIN, PROJECT, GatewayProcess

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from /proc (Linux)")

CHAT = {"model": "mock-1", "messages": [{"role": "user", "content": "hi"}]}
FORWARD = "/v1/forward?u=https://api.openai.com/v1/chat/completions"


# -- /proc -------------------------------------------------------------------------------------

def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry))
    return found


def socket_owners(pids) -> dict[int, int]:
    """socket inode -> pid holding it."""
    owners = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owners[int(link[8:-1])] = pid
    return owners


def tcp_sockets():
    """(local port, remote port, state, inode) of every TCP socket; state 0A is LISTEN, 01 ESTABLISHED."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            fields = line.split()
            yield int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16), fields[3], int(fields[9])


def listeners(port: int, pids) -> list[int]:
    """The pids holding a listening socket on `port` (one entry per socket)."""
    owners = socket_owners(pids)
    return sorted(owners[inode] for lport, _, state, inode in tcp_sockets()
                  if lport == port and state == "0A" and inode in owners)


def served_by(port: int, client_ports: list[int], pids) -> dict[int, int]:
    """client port -> pid holding the server side of that connection."""
    owners = socket_owners(pids)
    wanted = set(client_ports)
    return {rport: owners[inode] for lport, rport, state, inode in tcp_sockets()
            if lport == port and state == "01" and rport in wanted and inode in owners}


# -- gateway -------------------------------------------------------------------------------------

class Lean(GatewayProcess):
    """The gateway as ./run_proxy.sh runs it: tollgate-proxy, or the supervisor with --workers."""

    def proxy_args(self) -> list[str]:
        return ["--listen-host", "127.0.0.1", "--listen-port", str(self.port), "--set", f"confdir={self.confdir}",
                "--set", "tollgate_cache_ttl_ms=200", "--no-admin"]  # the admin process: tests/test_admin_process.py

    def launch(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(command, env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     cwd=self.tmp, start_new_session=True)

    def wait_for(self, what, timeout: float = 30.0, message: str = "") -> float:
        start = time.monotonic()
        while not what():
            if self.proc.poll() is not None:
                raise AssertionError(f"exited ({self.proc.returncode}): {self.log.read_text()}")
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{message} not within {timeout} s: {self.log.read_text()}")
            time.sleep(0.1)
        return time.monotonic() - start

    def post(self) -> tuple[http.client.HTTPConnection, str]:
        """A chat completion on a fresh connection, left open (keep-alive) so its worker can be looked up."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        conn.request("POST", FORWARD, body=json.dumps(CHAT),
                     headers={"authorization": f"Bearer {self.admin_key}", "content-type": "application/json"})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        return conn, response.getheader("x-tollgate-request-id")

    def ledger_ids(self) -> set[str]:
        return {r["id"] for r in self.ledger.requests(limit=500)}

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


WORKERS_REDIS = "redis://127.0.0.1:6379/12"  # several workers share their holds through Redis


@pytest.fixture
def bare(tmp_path, mock):
    """A gateway not started yet, on an empty SQLite ledger, with Redis for shared holds."""
    gw = Lean(tmp_path, f"sqlite:///{tmp_path}/ledger.db", {"openai": mock.url}, prices=[MOCK_MODEL_PRICE],
              redis_url=WORKERS_REDIS)
    yield gw
    gw.kill()


@pytest.fixture
def lean(bare):
    """... with the admin key and a funded wallet, as after `./run_proxy.sh` and `tollgate wallet topup`."""
    bare.fund("100")
    return bare


def test_lean_launcher_serves_end_to_end_without_per_flow_output(lean):
    lean.launch([str(BIN / "tollgate-proxy"), *lean.proxy_args()])
    lean.wait_for(lambda: "listening at" in lean.log.read_text() and lean.ca.exists(), message="listening")
    startup = lean.log.read_text()
    uvloop_usable = importlib.util.find_spec("uvloop") is not None and _uvloop_works(importlib.import_module("uvloop"))
    assert ("uvloop event loop" if uvloop_usable else "asyncio event loop") in startup

    # A listen backlog for bursts of new clients, not asyncio's 100 (ss shows a listener's backlog as Send-Q).
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    listener = subprocess.run(["ss", "-Hltn", f"sport = :{lean.port}"], capture_output=True, text=True).stdout.split()
    assert int(listener[2]) == min(LISTEN_BACKLOG, somaxconn) > 100, listener

    ids = []
    for _ in range(3):
        conn, request_id = lean.post()
        conn.close()
        ids.append(request_id)
    row = lean.request_row(ids[-1])
    assert (row["provider"], row["model"], row["status"], row["input_tokens"], row["output_tokens"]) == (
        "openai", "mock-1", 200, 17, 9)

    lean.proc.send_signal(signal.SIGTERM)
    assert lean.proc.wait(30) == 0
    assert set(ids) <= lean.ledger_ids()
    log = lean.log.read_text()
    assert log.startswith(startup)
    for per_flow in ("client connect", "server connect", "POST", "chat/completions", "200 OK"):
        assert per_flow not in log, log


def test_lean_launcher_refuses_what_it_does_not_do(bare):
    refusals = {
        "runs the gateway itself": ["-s", str(PROJECT / "addons" / "gateway.py")],  # would meter twice
        "unknown option(s): anticache": ["--set", "anticache=true"],  # a dropped addon's option
        "unrecognized arguments: -w": ["-w", "flows.out"],  # no flow storage
    }
    runs = {says: subprocess.Popen([str(BIN / "tollgate-proxy"), *bare.proxy_args(), *args], env=bare.env,
                                   cwd=bare.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for says, args in refusals.items()}
    for says, run in runs.items():
        output = run.communicate(timeout=60)[0]
        assert run.returncode != 0 and says in output, output


def test_workers_share_the_port_restart_and_stop_cleanly(lean):
    metrics = lean.tmp / "metrics"
    lean.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    lean.launch([sys.executable, "-m", "addons.runtime.workers", "--workers", "2", "--", *lean.proxy_args()])
    supervisor = lean.proc.pid

    def two_listening() -> bool:
        workers = children(supervisor)
        return len(workers) == 2 and listeners(lean.port, workers) == sorted(workers)

    lean.wait_for(two_listening, message="two workers listening")
    workers = children(supervisor)
    lean.wait_for(lambda: all(f"(pid {pid}) is listening" in lean.log.read_text() for pid in workers),
                  message="the supervisor seeing both listen")

    # both serve: 40 fresh connections, each looked up while it is still open
    conns, ids = [], []
    for _ in range(40):
        conn, request_id = lean.post()
        conns.append(conn)
        ids.append(request_id)
    owners = served_by(lean.port, [c.sock.getsockname()[1] for c in conns], workers)
    for conn in conns:
        conn.close()
    assert len(owners) == 40 and set(owners.values()) == workers
    lean.wait_for(lambda: set(ids) <= lean.ledger_ids(), message="the first 40 rows")

    # a killed worker: the port keeps serving, and the supervisor starts a new one
    victim = min(workers)
    lean.wait_for(lambda: (metrics / f"counter_{victim}.db").exists(), message="its counts flushed (each second)")
    os.kill(victim, signal.SIGKILL)
    # (its fd table empties a moment before the kernel closes its listener: look at the kernel's socket list)
    lean.wait_for(lambda: sum(p == lean.port and st == "0A" for p, _, st, _ in tcp_sockets()) == 1,
                  message="the killed worker's listener closed")
    for _ in range(10):
        conn, request_id = lean.post()
        conn.close()
        ids.append(request_id)
    restarted_in = lean.wait_for(lambda: victim not in children(supervisor) and two_listening(), timeout=20,
                                 message="a replacement worker")
    assert restarted_in < 15
    assert "killed by signal 9; restarting" in lean.log.read_text()
    # its counts stay in the instance's metrics, its gauges (what it held) leave them
    assert (metrics / f"counter_{victim}.db").exists() and not list(metrics.glob(f"gauge_*_{victim}.db"))
    assert list(metrics.glob("gauge_livesum_*.db"))  # the others' are there
    workers = children(supervisor)

    # SIGTERM to the supervisor: every worker flushes its ledger writer and stops
    for _ in range(20):
        conn, request_id = lean.post()
        conn.close()
        ids.append(request_id)
    lean.proc.send_signal(signal.SIGTERM)
    assert lean.proc.wait(60) == 0, lean.log.read_text()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert set(ids) <= lean.ledger_ids()
    assert len(ids) == 70


def test_workers_that_cannot_start_make_the_supervisor_give_up(bare):
    with socket.socket() as taken:  # a listener without SO_REUSEPORT: no worker can join the port
        taken.bind(("127.0.0.1", bare.port))
        taken.listen()
        bare.launch([sys.executable, "-m", "addons.runtime.workers", "--workers", "2", "--max-start-failures", "2", "--",
                     *bare.proxy_args()])
        assert bare.proc.wait(30) == 1
    log = bare.log.read_text()
    assert "2 failed starts in a row, giving up" in log
    assert "worker 2 started" not in log  # the others wait for the first one to listen


def test_a_worker_with_wrong_settings_makes_the_supervisor_give_up_at_once(bare):
    """Wrong settings fail every start the same way: the supervisor says so once and exits with the worker's
    status 78 (EX_CONFIG, which a service manager can be told not to restart), without retrying."""
    bare.launch([sys.executable, "-m", "addons.runtime.workers", "--workers", "2", "--", *bare.proxy_args(),
                 "--set", "tollgate_redis_url=http://127.0.0.1:6379"])
    assert bare.proc.wait(30) == 78
    log = bare.log.read_text()
    assert log.count("tollgate_redis_url: a Redis URL starts with redis://, rediss:// or unix://") == 1, log
    assert "worker 1 exited with status 78 before listening; its settings are wrong" in log
    assert "restarting" not in log and "worker 2 started" not in log


def test_several_workers_need_redis_and_auto_falls_back_to_one(bare):
    del bare.env["TOLLGATE_REDIS_URL"]
    refused = subprocess.run([sys.executable, "-m", "addons.runtime.workers", "--workers", "2", "--", *bare.proxy_args()],
                             env=bare.env, capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "needs Redis" in refused.stderr
    bare.launch([sys.executable, "-m", "addons.runtime.workers", "--workers", "auto", "--", *bare.proxy_args()])
    bare.wait_for(lambda: "listening at" in bare.log.read_text(), message="the gateway listening")
    assert children(bare.proc.pid) == set()  # the supervisor became the one gateway process
