#!/usr/bin/env python3
"""Tollgate overhead benchmark: one interleaved run against one local mock provider.

Targets (all in front of the same MockProvider from tests/mock_provider.py):
  upstream            the mock directly (the limit)
  mitmdump            stock mitmdump, no addon, reverse mode (buffers bodies)
  mitmdump-stream     the same with --set stream_large_bodies=1
  tollgate-sqlite-fwd / -proxy   Tollgate (tollgate-proxy) on SQLite, forward endpoint / HTTPS_PROXY (CONNECT + TLS)
  tollgate-sqlite-rewrite        --rewrite: the same chat request through /v1/rewrite/openai/ to the Anthropic
                                 mock (translated both ways, every stream event re-encoded), for issue 15's TTFB
  tollgate-pg-fwd / -proxy       Tollgate on PostgreSQL + Redis, the same two ways in
  tollgate-sqlite-script-fwd     Tollgate as a script under stock mitmdump (what the lean launcher saves)
  tollgate-sqlite-w1-fwd / -w2-fwd   --workers 1 and 2 through the supervisor, SQLite + Redis, on both CPUs
  litellm             LiteLLM proxy (bench/.venv-litellm), uvicorn, --num_workers 1
  portkey             Portkey gateway (bench/portkey, node)

Load generator and mock are pinned to CPU 0, every gateway to CPU 1. Counts and times are bounded:
every phase stops at its request count or its time cap, whichever comes first, and the whole run
stops starting phases after --max-minutes. Only 127.0.0.1 is ever contacted.

Run:  .venv/bin/python bench/run_bench.py            (see bench/README.md)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
sys.path.insert(0, str(PROJECT))
from tests.harness import clean_env, free_port  # noqa: E402  the tests' own: no proxies, keys or TOLLGATE_*

WORK = BENCH / "work"
LOGS = WORK / "logs"
VENV_BIN = Path(sys.executable).parent
LITELLM_VENV = BENCH / ".venv-litellm"
PORTKEY_DIR = BENCH / "portkey"
PORTKEY_ENTRY = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"

PG_ADMIN = "dbname=test user=postgres host=127.0.0.1 port=5432"
PG_DB = "tollgate_bench"
CLIENT_CPU, GATEWAY_CPU = 0, 1
ALL_CPUS = f"{CLIENT_CPU},{GATEWAY_CPU}"
# --limits: a second key on each Tollgate target with every limit set, none of them reached (issue 13's budget)
LIMITS_TOO = False
# --rewrite: an OpenAI-format target on each Tollgate through the rewrite endpoint to Anthropic (issue 15's TTFB)
REWRITE_TOO = False
REWRITE_MODEL = "claude-3-5-haiku-latest"
LIMITED_KEY = ("--spend-limit", "1000000", "--period", "month", "--request-limit", "1000000000", "--period", "month",
               "--rpm", "1000000000", "--tpm", "2000000000", "--allow-provider", "openai", "--allow-model", "gpt-*")
REDIS_DBS = {"tollgate-pg": 9, "tollgate-sqlite-w1": 10, "tollgate-sqlite-w2": 11}
MODEL = "gpt-4o-mini"  # genai-prices knows it, so Tollgate prices every request for real
UPSTREAM_KEY = "sk-real-openai-0123456789"
PROVIDER_KEYS = {"OPENAI_API_KEY": UPSTREAM_KEY, "ANTHROPIC_API_KEY": "sk-ant-bench-0123456789"}
LITELLM_MASTER_KEY = "sk-bench-litellm-master-0123456789"
SIGNING_KEY = "bench-signing-key-0123456789abcdef0123456789"
NONSTREAM_MARK, STREAM_MARK = b"Hello from the mock.", b"[DONE]"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# /proc: CPU and RSS of a process tree
# ------------------------------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()  # fields from #3 (state) on


def tree(pid: int) -> list[int]:
    """pid and all its live descendants."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st:
                children[int(st[1])].append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of the processes, to the nanosecond: each one's CPU-time clock (every thread's, exited ones
    included), read as clock_getcpuclockid(2) makes it; /proc's utime + stime (10 ms ticks, which in a phase of a
    few hundred requests move a request's CPU by tens of microseconds) where that clock cannot be read."""
    total = 0.0
    for p in pids:
        try:
            total += time.clock_gettime((~p << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
        except OSError:
            st = _stat(p)
            if st:
                total += (int(st[11]) + int(st[12])) / TICK  # utime + stime
    return total


def tree_cpu(pid: int) -> float:
    return cpu_seconds(tree(pid))


def tree_rss_mb(pid: int) -> float:
    total = 0
    for p in tree(pid):
        st = _stat(p)
        if st:
            total += int(st[21]) * PAGE
    return total / 2**20


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


# ------------------------------------------------------------------------------------------------
# Processes we start (and only those are ever signalled, by pid / by the session we created)
# ------------------------------------------------------------------------------------------------

STARTED: list[subprocess.Popen] = []
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def watch_signals() -> None:
    """A stop signal is logged with a snapshot of the machine's processes (on a shared machine someone
    else's clean-up may hit this process), then raises KeyboardInterrupt: the run reports what it has."""
    def handler(signum, frame):
        who = f"received {signal.Signals(signum).name}"
        log(who)
        try:
            ps = subprocess.run(["ps", "-eo", "pid,ppid,pgid,sid,etime,args"], capture_output=True, text=True,
                                timeout=10).stdout
            (LOGS / "interrupt.txt").write_text(f"{who} at {time.strftime('%H:%M:%S')}\n\n{ps}")
        except Exception:  # noqa: BLE001
            pass
        raise KeyboardInterrupt

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)


def spawn(name: str, argv: list[str], env: dict, cpu: int | str, cwd: Path | None = None) -> subprocess.Popen:
    logf = (LOGS / f"{name}.log").open("wb")
    proc = subprocess.Popen(["taskset", "-c", str(cpu), *argv], env=env, cwd=cwd, stdout=logf,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    STARTED.append(proc)
    return proc


def stop_all() -> None:
    for proc in reversed(STARTED):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the session start_new_session gave this child
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 15
    for proc in reversed(STARTED):
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(proc: subprocess.Popen, name: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {tail(name)}")
        try:
            if check():
                return
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"{name} not ready after {timeout:.0f}s ({last!r}): {tail(name)}")


def tail(name: str, n: int = 1500) -> str:
    try:
        return (LOGS / f"{name}.log").read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------
# Targets
# ------------------------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    label: str
    port: int
    path: str
    headers: dict[str, str]
    proc_pid: int | None  # process whose tree's CPU/RSS counts (None: the mock directly)
    process_label: str = ""
    tunnel_host: str | None = None  # HTTPS_PROXY: CONNECT to this host:443 through the proxy, then TLS
    ssl_ctx: ssl.SSLContext | None = None
    pg_db: str | None = None  # also account PostgreSQL backend CPU of this database
    redis: bool = False  # also account the CPU of the machine's redis-server (127.0.0.1:6379), its hold store
    dead: str | None = None
    startup_s: float | None = None
    rss_idle: float | None = None
    rss_after: float | None = None
    rss_peak: float = 0.0
    idle_cpu_pct: float | None = None
    note: str = ""
    model: str = MODEL

    def host_header(self) -> str:
        return self.tunnel_host or f"127.0.0.1:{self.port}"

    def request_bytes(self, stream: bool) -> bytes:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
                "max_tokens": 32}
        if stream:
            body["stream"] = True
        data = json.dumps(body, separators=(",", ":")).encode()
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {self.host_header()}", "Content-Type: application/json",
                 "Accept: */*", "User-Agent: tollgate-bench/1", f"Content-Length: {len(data)}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


class Unavailable(Exception):
    pass


def start_mock(chunk_delay: float) -> tuple[subprocess.Popen, int]:
    logf = (LOGS / "mock.log").open("wb")
    proc = subprocess.Popen(["taskset", "-c", str(CLIENT_CPU), sys.executable, str(BENCH / "mock_server.py"),
                             "--chunk-delay", str(chunk_delay)],
                            stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.PIPE, start_new_session=True)
    STARTED.append(proc)
    port = int(proc.stdout.readline().strip() or 0)
    if not port:
        raise RuntimeError(f"mock failed: {(LOGS / 'mock.log').read_text()}")
    return proc, port


def start_mitmdump(name: str, mock_port: int, stream_bodies: bool) -> Target:
    port = free_port()
    confdir = WORK / "mitmproxy-confdir"
    argv = [str(VENV_BIN / "mitmdump"), "-q", "--mode", f"reverse:http://127.0.0.1:{mock_port}@{port}",
            "--listen-host", "127.0.0.1", "--set", f"confdir={confdir}"]
    if stream_bodies:
        argv += ["--set", "stream_large_bodies=1"]
    t0 = time.monotonic()
    proc = spawn(name, argv, clean_env(), GATEWAY_CPU, cwd=WORK)
    wait_ready(proc, name, lambda: socket.create_connection(("127.0.0.1", port), 0.3).close() or True, 30)
    label = "stock mitmdump, reverse" + (", stream_large_bodies=1" if stream_bodies else "")
    return Target(name, label, port, "/v1/chat/completions", {"Authorization": f"Bearer {UPSTREAM_KEY}"},
                  proc.pid, "mitmdump", startup_s=time.monotonic() - t0)


def fresh_pg_database() -> str:
    import psycopg2
    conn = psycopg2.connect(PG_ADMIN, connect_timeout=3)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {PG_DB}")
    conn.close()
    return f"postgresql://postgres@127.0.0.1:5432/{PG_DB}"


def drop_pg_database() -> None:
    try:
        import psycopg2
        conn = psycopg2.connect(PG_ADMIN, connect_timeout=3)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        conn.close()
    except Exception as e:  # noqa: BLE001
        log(f"could not drop {PG_DB}: {e}")


def pg_backend_pids(db: str) -> list[int]:
    import psycopg2
    conn = psycopg2.connect(PG_ADMIN, connect_timeout=3)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (db,))
            return [r[0] for r in cur.fetchall()]
    finally:
        conn.close()


def start_tollgate(kind: str, mock_port: int, launcher: str = "lean", workers: int = 0,
                   baseline: Path | None = None, more_env: dict[str, str] | None = None) -> tuple[Target, Target]:
    """kind: sqlite | pg (PostgreSQL + Redis). launcher: lean (`tollgate-proxy`, what run_proxy.sh runs) or
    script (`mitmdump -s addons/gateway.py`, the reference for the lean launcher's gain). workers > 0: run
    through the worker supervisor (`python -m addons.runtime.workers --workers N`, as `run_proxy.sh --workers N`),
    with Redis, on both CPUs. baseline: another checkout (an earlier commit, with its own .venv) run the same
    way, for an A/B in one interleaved run. more_env: set for the gateway and its CLI calls (the other bench
    scripts' PYTHONPATH: another source tree, a sitecustomize)."""
    import yaml
    name = ("baseline" if baseline else "tollgate") + f"-{kind}" + ("-script" if launcher == "script" else "") + (
        f"-w{workers}" if workers else "")
    venv_bin = baseline / ".venv" / "bin" if baseline else VENV_BIN
    tmp = WORK / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    url = f"sqlite:///{tmp}/ledger.db" if kind == "sqlite" else fresh_pg_database()
    config = tmp / "tollgate.yaml"
    config.write_text(yaml.safe_dump({
        "providers": {"openai": {"upstream": f"http://127.0.0.1:{mock_port}"},
                      "anthropic": {"upstream": f"http://127.0.0.1:{mock_port}"}},
        "prices": [],
        "billing": {"token_signing_key": SIGNING_KEY},
    }))
    extra = {}
    if kind == "pg" or workers:
        extra["TOLLGATE_REDIS_URL"] = fresh_redis_db(REDIS_DBS[name])
    env = clean_env(TOLLGATE_DATABASE_URL=url, TOLLGATE_CONFIG=str(config), **PROVIDER_KEYS, **extra,
                    **(more_env or {}))

    def cli(*args):
        r = subprocess.run([str(venv_bin / "tollgate"), *args], env=env, capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"tollgate {' '.join(args)} failed: {r.stderr[-800:]}")
        return r.stdout

    key = json.loads(cli("init", "--json"))["secret_key"]
    cli("wallet", "topup", "100000")
    limited = json.loads(cli("keys", "create", "--name", "limited", *LIMITED_KEY, "--json"))["secret_key"] \
        if LIMITS_TOO and not baseline else None
    port, admin_port = free_port(), free_port()
    confdir = tmp / "mitmproxy"
    # each Tollgate's admin process (the REST API, started by default) on a port of its own: on the default 8082 all
    # but the first would fail to bind and be restarted over and over, in the measured process tree
    common = ["-q", "--listen-host", "127.0.0.1", "--listen-port", str(port), "--set", f"confdir={confdir}",
              "--set", f"tollgate_admin_port={admin_port}"]
    if workers:
        argv = [str(venv_bin / "python"), "-m", "addons.runtime.workers", "--workers", str(workers), "--", *common]
    elif launcher == "script":
        argv = [str(venv_bin / "mitmdump"), "-s", str((baseline or PROJECT) / "addons" / "gateway.py"), *common]
    else:
        argv = [str(venv_bin / "tollgate-proxy"), *common]
    t0 = time.monotonic()
    proc = spawn(name, argv, env, ALL_CPUS if workers else GATEWAY_CPU, cwd=(baseline or PROJECT) if workers else tmp)
    ca = confdir / "mitmproxy-ca-cert.pem"

    def ready():
        log_text = tail(name, 100000)
        if "error in script" in log_text or "Addon error" in log_text:
            raise Unavailable(f"the gateway addon failed to load: {log_text[-800:]}")
        return (ca.exists() and http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
                and http_get(f"http://127.0.0.1:{admin_port}/openapi.json")[0] == 200)  # idle RSS counts it too

    wait_ready(proc, name, ready, 60)
    startup = time.monotonic() - t0
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["http/1.1"])
    auth = {"Authorization": f"Bearer {key}"}
    db_label = "SQLite" if kind == "sqlite" else "PostgreSQL + Redis"
    how = (f", --workers {workers} (+ Redis), both CPUs" if workers else
           ", mitmdump -s addons/gateway.py" if launcher == "script" else "") + (f", baseline {baseline.name}"
                                                                                 if baseline else "")
    pg = PG_DB if kind == "pg" else None
    held_in_redis = "TOLLGATE_REDIS_URL" in extra
    fwd = Target(f"{name}-fwd", f"Tollgate ({db_label}{how}), forward endpoint", port,
                 "/v1/forward?u=https://api.openai.com/v1/chat/completions", auth, proc.pid, name,
                 pg_db=pg, redis=held_in_redis, startup_s=startup)
    prx = Target(f"{name}-proxy", f"Tollgate ({db_label}{how}), HTTPS_PROXY", port, "/v1/chat/completions", auth,
                 proc.pid, name, tunnel_host="api.openai.com", ssl_ctx=ctx, pg_db=pg, redis=held_in_redis,
                 startup_s=startup)
    more = []
    if limited is not None:
        more.append(Target(f"{name}-fwd-limited", f"Tollgate ({db_label}{how}), forward endpoint, key with every limit",
                           port, fwd.path, {"Authorization": f"Bearer {limited}"}, proc.pid, name, pg_db=pg,
                           redis=held_in_redis, startup_s=startup))
    if REWRITE_TOO and not baseline:
        more.append(Target(f"{name}-rewrite", f"Tollgate ({db_label}{how}), rewrite endpoint, OpenAI format to "
                                              "Anthropic", port, "/v1/rewrite/openai/https://api.anthropic.com/v1/messages",
                           auth, proc.pid, name, pg_db=pg, redis=held_in_redis, startup_s=startup,
                           model=REWRITE_MODEL))
    return fwd, prx, *more


def redis_server_pids() -> list[int]:
    """The machine's redis-server on port 6379 (the hold store of the Tollgate targets that use Redis)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        if b"redis-server" in cmdline and b":6379" in cmdline:
            found.append(int(entry))
    return found


def fresh_redis_db(db: int) -> str:
    """An emptied Redis database of its own for one Tollgate target (the tests use 7, 8 and 12 to 14)."""
    import redis
    url = f"redis://127.0.0.1:6379/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


def start_litellm(mock_port: int) -> Target:
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        raise Unavailable(f"LiteLLM is not installed ({exe} missing); install: see bench/README.md")
    cfg = WORK / "litellm.yaml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "model_list": [{"model_name": MODEL, "litellm_params": {
            "model": f"openai/{MODEL}", "api_base": f"http://127.0.0.1:{mock_port}/v1", "api_key": UPSTREAM_KEY}}],
        "litellm_settings": {"drop_params": True},
        # LiteLLM refuses to start without one; callers authenticate with it, as Tollgate's callers do with theirs
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
    }, indent=1))
    port = free_port()
    env = clean_env(
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # never fetch the cost map from the internet
        LITELLM_LOG="ERROR",  # quiet like mitmdump -q (no per-request access log)
        # Safety net: anything LiteLLM tries to fetch from elsewhere goes to a dead local port.
        HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", ALL_PROXY="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
    )
    t0 = time.monotonic()
    proc = spawn("litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                             "--num_workers", "1"], env, GATEWAY_CPU, cwd=WORK)
    wait_ready(proc, "litellm", lambda: http_get(f"http://127.0.0.1:{port}/health/liveliness")[0] == 200, 180)
    return Target("litellm", "LiteLLM proxy (uvicorn, 1 worker)", port, "/v1/chat/completions",
                  {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"}, proc.pid, "litellm",
                  startup_s=time.monotonic() - t0)


def start_portkey(mock_port: int) -> Target:
    node = shutil.which("node")
    if not node:
        raise Unavailable("node is not installed")
    if not PORTKEY_ENTRY.exists():
        raise Unavailable(f"Portkey gateway is not installed ({PORTKEY_ENTRY} missing); see bench/README.md")
    port = free_port()
    env = clean_env(NODE_ENV="production")  # no HTTP(S)_PROXY: Portkey would send upstream calls through it
    t0 = time.monotonic()
    proc = spawn("portkey", [node, str(PORTKEY_ENTRY), f"--port={port}", "--headless"], env, GATEWAY_CPU,
                 cwd=PORTKEY_DIR)
    wait_ready(proc, "portkey", lambda: socket.create_connection(("127.0.0.1", port), 0.3).close() or True, 60)
    return Target("portkey", "Portkey gateway (node)", port, "/v1/chat/completions",
                  {"Authorization": f"Bearer {UPSTREAM_KEY}", "x-portkey-provider": "openai",
                   "x-portkey-custom-host": f"http://127.0.0.1:{mock_port}/v1"},
                  proc.pid, "node", startup_s=time.monotonic() - t0)


# ------------------------------------------------------------------------------------------------
# Load generator: a minimal HTTP/1.1 keep-alive client on asyncio (cheap enough not to be the limit)
# ------------------------------------------------------------------------------------------------

class BadResponse(Exception):
    pass


async def open_conn(t: Target):
    reader, writer = await asyncio.open_connection("127.0.0.1", t.port, limit=1 << 20)
    if t.tunnel_host:
        writer.write(f"CONNECT {t.tunnel_host}:443 HTTP/1.1\r\nHost: {t.tunnel_host}:443\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200" not in head.split(b"\r\n", 1)[0]:
            raise BadResponse(f"CONNECT refused: {head[:200]!r}")
        await writer.start_tls(t.ssl_ctx, server_hostname=t.tunnel_host)
    return reader, writer


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bool]:
    """(status, lower-cased headers, connection closes after this response: HTTP/1.0, `connection: close`,
    or a body without framing, which runs to EOF)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if ":" in line)}
    framed = "chunked" in headers.get("transfer-encoding", "").lower() or "content-length" in headers
    close = head[0].startswith("HTTP/1.0") or headers.get("connection", "").lower() == "close" or not framed
    return int(head[0][9:12]), headers, close


async def body_pieces(reader: asyncio.StreamReader, headers: dict[str, str]):
    """The body as it arrives (chunks, or the whole Content-Length, or up to EOF); IncompleteReadError when
    cut short. The bench scripts time what they need (first byte, each chunk) around it."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return
            yield (await reader.readexactly(size + 2))[:-2]
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        yield await reader.read()


async def read_response(reader: asyncio.StreamReader, t_sent: float):
    """(status, ttfb, body, keep_alive). ttfb = first body bytes available."""
    status, headers, close = await read_head(reader)
    ttfb, parts = None, []
    async for piece in body_pieces(reader, headers):
        if ttfb is None:
            ttfb = time.perf_counter() - t_sent
        parts.append(piece)
    return status, ttfb, b"".join(parts), not close


@dataclass
class PhaseResult:
    lat: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    ok: int = 0
    errors: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0  # gateway process tree
    pg_cpu: float = 0.0
    redis_cpu: float = 0.0  # the machine's redis-server, for targets that hold in it
    client_cpu: float = 0.0  # load generator + mock (CPU 0) while requests were timed
    capped: bool = False
    planned: int = 0
    sample_error: str = ""
    body_size: int = 0
    window: float = 0.0  # wall time of the phase including settling
    foreign: float = 0.0  # CPU seconds used by anything else on the machine during the phase
    noisy_used: int = 0  # phases kept although other processes were busy (no quiet one came)
    discarded: int = 0  # noisy phases set aside and measured again

    @property
    def foreign_pct(self) -> float:
        return self.foreign / self.window * 100 if self.window else 0.0

    def merge(self, o: "PhaseResult") -> None:
        self.lat += o.lat
        self.ttfb += o.ttfb
        for f in ("ok", "errors", "elapsed", "cpu", "pg_cpu", "redis_cpu", "client_cpu", "planned", "window",
                  "foreign"):
            setattr(self, f, getattr(self, f) + getattr(o, f))
        self.capped |= o.capped
        self.sample_error = self.sample_error or o.sample_error
        self.body_size = self.body_size or o.body_size


async def load(t: Target, stream: bool, conc: int, n: int, cap: float, timeout: float = 30.0,
               mock_pid: int | None = None) -> PhaseResult:
    req = t.request_bytes(stream)
    mark = STREAM_MARK if stream else NONSTREAM_MARK
    res = PhaseResult(planned=n)
    conns = await asyncio.gather(*(open_conn(t) for _ in range(conc)))
    remaining = n
    client0 = time.process_time() + (tree_cpu(mock_pid) if mock_pid else 0.0)
    start = time.perf_counter()
    deadline = start + cap

    async def worker(conn):
        nonlocal remaining
        reader, writer = conn
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    writer.write(req)
                    status, ttfb, body, keep = await read_response(reader, t0)
                t1 = time.perf_counter()
                if status == 200 and mark in body:
                    res.ok += 1
                    res.lat.append(t1 - t0)
                    res.ttfb.append(ttfb)
                    res.body_size = res.body_size or len(body)
                else:
                    res.errors += 1
                    res.sample_error = res.sample_error or f"HTTP {status}: {body[:300]!r}"
            except Exception as e:  # noqa: BLE001
                res.errors += 1
                res.sample_error = res.sample_error or f"{type(e).__name__}: {e}"[:300]
                keep = False
            if not keep:
                writer.close()
                try:
                    reader, writer = await asyncio.wait_for(open_conn(t), 10)
                except Exception as e:  # noqa: BLE001
                    res.sample_error = res.sample_error or f"reconnect: {type(e).__name__}: {e}"[:300]
                    await asyncio.sleep(0.5)
                    if time.perf_counter() >= deadline:
                        return
                    continue
        writer.close()

    await asyncio.gather(*(worker(c) for c in conns))
    res.elapsed = time.perf_counter() - start
    res.client_cpu = time.process_time() + (tree_cpu(mock_pid) if mock_pid else 0.0) - client0
    res.capped = remaining > 0
    return res


def settle(pid: int | None, quiet_ms_per_100ms: float = 1.5, cap: float = 2.0) -> None:
    """Wait until the gateway stops doing trailing work (ledger writes) so it is billed to this phase."""
    if pid is None:
        time.sleep(0.05)
        return
    end = time.monotonic() + cap
    prev = tree_cpu(pid)
    while time.monotonic() < end:
        time.sleep(0.1)
        cur = tree_cpu(pid)
        if (cur - prev) * 1000 <= quiet_ms_per_100ms:
            return
        prev = cur


def system_busy() -> float:
    """CPU seconds spent in user and system mode by everything on the machine (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system = (int(x) for x in fields[1:4])
    return (user + nice + system) / TICK


def our_cpu(pg: bool) -> float:
    """CPU seconds of this process, everything it started, and (if used) the benchmark database's backends."""
    total = cpu_seconds(tree(os.getpid()))
    if pg:
        try:
            total += cpu_seconds(pg_backend_pids(PG_DB))
        except Exception:  # noqa: BLE001
            pass
    return total


def wait_quiet(max_wait: float, noise_pct: float, pg: bool) -> tuple[float, float]:
    """Wait (at most max_wait s) until other processes use at most noise_pct % of a CPU over 1 s.
    Returns (seconds waited, last foreign %)."""
    start = time.monotonic()
    foreign_pct = 0.0
    while True:
        b0, o0, t0 = system_busy(), our_cpu(pg), time.monotonic()
        time.sleep(1.0)
        foreign = (system_busy() - b0) - (our_cpu(pg) - o0)
        foreign_pct = max(0.0, foreign) / (time.monotonic() - t0) * 100
        if foreign_pct <= noise_pct or time.monotonic() - start >= max_wait:
            return time.monotonic() - start, foreign_pct


def measured_phase(t: Target, mock_pid: int, stream: bool, conc: int, n: int, cap: float) -> PhaseResult:
    pid = t.proc_pid
    pids = tree(pid) if pid else []
    pg = pg_backend_pids(t.pg_db) if t.pg_db else []
    redis = redis_server_pids() if t.redis else []
    w0, b0 = time.monotonic(), system_busy()
    c0, pg0, r0 = cpu_seconds(pids), cpu_seconds(pg), cpu_seconds(redis)
    m0, s0 = tree_cpu(mock_pid), time.process_time()
    res = asyncio.run(load(t, stream, conc, n, cap, mock_pid=mock_pid))
    s1 = time.process_time()
    settle(pid)
    pids = tree(pid) if pid else []
    res.cpu = cpu_seconds(pids) - c0
    res.pg_cpu = cpu_seconds(pg) - pg0 if pg else 0.0
    res.redis_cpu = cpu_seconds(redis) - r0 if redis else 0.0
    client_all = (tree_cpu(mock_pid) - m0) + (s1 - s0)  # with connection set-up, for the machine's balance
    res.window = time.monotonic() - w0
    res.foreign = max(0.0, system_busy() - b0 - res.cpu - res.pg_cpu - res.redis_cpu - client_all)
    if pid:
        rss = tree_rss_mb(pid)
        t.rss_peak = max(t.rss_peak, rss)
        if not alive(pid):
            t.dead = f"process exited during the run: {tail(t.process_label)}"
    return res


def limits_pairs(targets: list[Target], mock_pid: int, pairs: int, n: int, noise_pct: float,
                 cap: float) -> dict[str, list[tuple[PhaseResult, PhaseResult]]]:
    """--limits: for each Tollgate with a limited key, `pairs` adjacent pairs of non-streamed phases at 32 clients,
    (plain key, limited key), each pair's order the other way from the last. Issue 13's budgets are differences of
    tens of microseconds: the rounds' phases are short and minutes apart, and their differences swing by a tenth
    of a millisecond; phases of `n` requests back to back do not. A pair during which other processes used more
    than `noise_pct` of a CPU is measured again (at most `pairs` times more)."""
    by_name = {t.name: t for t in targets}
    out: dict[str, list[tuple[PhaseResult, PhaseResult]]] = {}
    for plain in targets:
        limited = by_name.get(f"{plain.name}-limited")
        if limited is None or plain.dead or limited.dead:
            continue
        kept = out[plain.name] = []
        for attempt in range(2 * pairs):
            if len(kept) == pairs:
                break
            order = (plain, limited) if attempt % 2 == 0 else (limited, plain)
            measured = {t.name: measured_phase(t, mock_pid, False, 32, n, cap) for t in order}
            pair = (measured[plain.name], measured[limited.name])
            quiet = all(x.foreign_pct <= noise_pct and x.ok == n for x in pair)
            log(f"limits pair {attempt + 1} {plain.name:<22} " + "  ".join(
                f"{x.cpu / x.ok * 1000 if x.ok else 0:.3f}" for x in pair) + " ms/req (plain, limited)"
                + ("" if quiet else "  (noisy or short: measured again)"))
            if quiet:
                kept.append(pair)
    return out


# ------------------------------------------------------------------------------------------------
# Statistics and report
# ------------------------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def ms(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v * 1000:.{digits}f}"


def fmt(v, digits=1, suffix="") -> str:
    return "—" if v is None else f"{v:.{digits}f}{suffix}"


def signed_ms(v: float | None) -> str:
    return "—" if v is None else f"{v * 1000:+.2f}"


CELLS = [("ns", 1), ("ns", 32), ("st", 1), ("st", 32)]


def cpu_cell(t: Target, x: PhaseResult | None) -> str:
    """Gateway CPU ms per completed request, plus its PostgreSQL backends' and Redis's where it has them."""
    if not (x and x.ok and t.proc_pid):
        return "—"
    more = ([f"+{x.pg_cpu / x.ok * 1000:.2f} PG"] if t.pg_db else []) + (
        [f"+{x.redis_cpu / x.ok * 1000:.2f} Redis"] if t.redis else [])
    return f"{x.cpu / x.ok * 1000:.2f}" + (f" ({', '.join(more)})" if more else "")


def rate_cell(x: PhaseResult | None) -> str:
    """Completed requests per second, * when the phase hit its time cap."""
    return f"{x.ok / x.elapsed:.0f}" + ("*" if x.capped else "") if x and x.elapsed else "—"


def targets_check(targets: list[Target], r, up_ns1: float | None, up_ttfb1: float | None) -> list[str]:
    """Issue 4's targets, as ratios within this run, for one Tollgate worker (SQLite, forward endpoint)."""
    by = {t.name: t for t in targets}

    def rps(name):
        x = r(by[name], "ns", 32) if name in by else None
        return x.ok / x.elapsed if x and x.elapsed else None

    def added(name):
        x = r(by[name], "ns", 1) if name in by else None
        return pct(x.lat, 50) - up_ns1 if x and up_ns1 is not None else None

    def ttfb_over(name):
        x = r(by[name], "st", 1) if name in by else None
        return pct(x.ttfb, 50) - up_ttfb1 if x and up_ttfb1 is not None else None

    def verdict(ok):
        return "—" if ok is None else ("met" if ok else "NOT met")

    tg, md, pk = rps("tollgate-sqlite-fwd"), rps("mitmdump"), rps("portkey")
    w1, w2 = rps("tollgate-sqlite-w1-fwd"), rps("tollgate-sqlite-w2-fwd")
    ttfb, lat_tg, lat_pk = ttfb_over("tollgate-sqlite-fwd"), added("tollgate-sqlite-fwd"), added("portkey")
    rows = [
        ("req/s @32 ≥ stock mitmdump (no addon)", f"{tg:.0f} vs {md:.0f} ({tg / md:.2f}x)" if tg and md else "—",
         verdict(tg >= md if tg and md else None)),
        ("req/s @32 > Portkey", f"{tg:.0f} vs {pk:.0f} ({tg / pk:.2f}x)" if tg and pk else "—",
         verdict(tg > pk if tg and pk else None)),
        ("stream TTFB overhead p50 @1 ≤ 2 ms", signed_ms(ttfb), verdict(ttfb <= 0.002 if ttfb is not None else None)),
        ("added p50 latency @1 ≤ Portkey's", f"{signed_ms(lat_tg)} vs {signed_ms(lat_pk)}"
         if lat_tg is not None and lat_pk is not None else "—",
         verdict(lat_tg <= lat_pk if lat_tg is not None and lat_pk is not None else None)),
        ("--workers 2 ≥ 1.7x --workers 1 (req/s @32, both on both CPUs, client included)",
         f"{w2:.0f} vs {w1:.0f} ({w2 / w1:.2f}x)" if w1 and w2 else "—", verdict(w2 >= 1.7 * w1 if w1 and w2 else None)),
    ]
    out = ["\n## Targets (issue 4), one Tollgate worker on SQLite through the forward endpoint\n",
           "| target | this run | |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return out


def fastest_fifth(per_request: list[float]) -> float:
    """The mean of the fastest fifth (at least one): work on the machine besides the gateway only ever slows a
    phase, so the fastest phases are the nearest to what the gateway itself costs (limits_cost.py reads its
    blocks with it too)."""
    fastest = sorted(per_request)[:max(len(per_request) // 5, 1)]
    return sum(fastest) / len(fastest)


def _spread(values: list[float], digits: int, suffix: str, of: str = "rounds") -> str:
    """The median of per-round figures, with their range: `1.52x (1.41x..1.60x, 6 rounds)`."""
    if not values:
        return "—"
    median = statistics.median(values)
    return (f"{median:.{digits}f}{suffix} ({min(values):.{digits}f}{suffix}..{max(values):.{digits}f}{suffix}, "
            f"{len(values)} {of})")


def speed_targets(targets: list[Target], phases: dict, up_phases: dict,
                  paired: dict[str, list[tuple[PhaseResult, PhaseResult]]] | None = None) -> list[str]:
    """Issue 16's targets with the spread of each across rounds: a figure per round, from the i-th phase of each
    target in a cell (phases are interleaved round by round), as the median and range of those rounds; the limits'
    figures from `paired` (limits_pairs) where it has them, one per pair."""
    names = {t.name for t in targets}

    def per_round(a: str, b: str, cell: tuple[str, int], of) -> list[float]:
        if a not in names or b not in names:
            return []
        pairs = zip(phases.get((a, *cell), []), phases.get((b, *cell), []), strict=False)
        return [of(x, y) for x, y in pairs if x.ok and y.ok and x.elapsed and y.elapsed]

    def rps_ratio(x, y):
        return (x.ok / x.elapsed) / (y.ok / y.elapsed)

    def over_upstream(name, cell, which):
        ups = up_phases.get(cell, [])
        return [pct(getattr(x, which), 50) - pct(getattr(u, which), 50)
                for x, u in zip(phases.get((name, *cell), []), ups, strict=False) if getattr(x, which) and getattr(u, which)]

    def ratio_row(label, a, b, cell, target):
        values = per_round(a, b, cell, rps_ratio)
        met = None if not values else statistics.median(values) >= target
        return label, _spread(values, 2, "x"), met

    def latency_row(label, a, b, cell, which):
        mine, theirs = over_upstream(a, cell, which), over_upstream(b, cell, which)
        diffs = [(x - y) * 1000 for x, y in zip(mine, theirs, strict=False)]
        met = None if not diffs else statistics.median(diffs) <= 0
        return label, _spread(diffs, 2, " ms") + " (Tollgate's added p50 less theirs)", met

    def limits_row(label, name, budget_ms):
        def cpu(x, y):
            return (x.cpu / x.ok - y.cpu / y.ok) * 1000

        def redis_cpu(x, y):
            return (x.redis_cpu / x.ok - y.redis_cpu / y.ok) * 1000

        if pairs := (paired or {}).get(name):
            values, redis = [cpu(lim, plain) for plain, lim in pairs], [redis_cpu(lim, plain) for plain, lim in pairs]
            of = f"back-to-back pairs of {pairs[0][0].ok} requests"
            figure = (fastest_fifth([lim.cpu / lim.ok for _, lim in pairs])
                      - fastest_fifth([plain.cpu / plain.ok for plain, _ in pairs])) * 1000
            shown = f"{figure:.3f} ms by the fastest fifth of each key's phases; the pairs' differences " + _spread(
                values, 3, " ms", of)
        else:
            values = per_round(f"{name}-limited", name, ("ns", 32), cpu)
            redis, of = per_round(f"{name}-limited", name, ("ns", 32), redis_cpu), "rounds"
            figure = statistics.median(values) if values else None
            shown = _spread(values, 3, " ms", of)
        met = None if figure is None else figure <= budget_ms
        if values and any(redis):  # the gateway's figure is the target; what Redis itself did is said beside it
            return label, f"{shown}; Redis's own CPU {_spread(redis, 3, ' ms', of)}", met
        return label, shown, met

    rows = [
        ratio_row("forward endpoint (SQLite) ≥ 1.5x Portkey, req/s @32", "tollgate-sqlite-fwd", "portkey", ("ns", 32), 1.5),
        ratio_row("forward endpoint (SQLite) ≥ 1.5x stock mitmdump, req/s @32", "tollgate-sqlite-fwd", "mitmdump",
                  ("ns", 32), 1.5),
        latency_row("added p50 @1 below Portkey's", "tollgate-sqlite-fwd", "portkey", ("ns", 1), "lat"),
        ratio_row("PostgreSQL + Redis within 10 % of SQLite, req/s @32", "tollgate-pg-fwd", "tollgate-sqlite-fwd",
                  ("ns", 32), 0.9),
        ratio_row("HTTPS_PROXY within 15 % of the forward endpoint, req/s @32", "tollgate-sqlite-proxy",
                  "tollgate-sqlite-fwd", ("ns", 32), 0.85),
        latency_row("stream TTFB overhead @1 at or below stock mitmdump's streaming", "tollgate-sqlite-fwd",
                    "mitmdump-stream", ("st", 1), "ttfb"),
        limits_row("a key with every limit costs ≤ 0.02 ms of CPU per request (SQLite, in process; --limits)",
                   "tollgate-sqlite-fwd", 0.02),
        limits_row("... ≤ 0.1 ms with Redis (PostgreSQL + Redis; --limits)", "tollgate-pg-fwd", 0.1),
    ]
    out = ["\n## Targets (issue 16): ratios within this run, with their spread across rounds\n",
           "| target | median (range, rounds) | |", "|---|---|---|"]
    out += [f"| {label} | {value} | {'—' if met is None else 'met' if met else 'NOT met'} |" for label, value, met in rows]
    return out


def report(targets: list[Target], results: dict, unavailable: list[tuple[str, str]], args, meta: dict,
           phases: dict | None = None, paired: dict | None = None) -> str:
    def r(t, w, c) -> PhaseResult | None:
        return results.get((t.name, w, c))

    def other(x: PhaseResult | None) -> str:
        return f"{x.foreign_pct:.0f}%" if x else "—"

    base = targets[0]  # upstream
    up_ns1 = pct(r(base, "ns", 1).lat, 50) if r(base, "ns", 1) else None
    up_ttfb = {c: (pct(r(base, "st", c).ttfb, 50) if r(base, "st", c) else None) for c in (1, 32)}
    out = []
    out.append("# Tollgate gateway overhead benchmark\n")
    out.append(f"Run {meta['date']} on this machine ({os.cpu_count()} cores): load generator + mock provider pinned "
               f"to CPU {CLIENT_CPU}, every gateway pinned to CPU {GATEWAY_CPU}. One interleaved run: each cell's requests "
               f"are split into {args.reps} phases measured in round-robin rounds, every target in each round, the "
               f"target order rotated per round, so drift hits every target alike. Wall time {meta['wall']:.0f} s.\n")
    out.append(f"Command: `{meta['command']}`\n")
    out.append(f"Versions: {meta['versions']}\n")
    out.append("Workload: OpenAI `POST /v1/chat/completions` (`model: {m}`) to the MockProvider of tests/mock_provider.py; "
               "HTTP/1.1 keep-alive connections opened before timing. Non-streamed answer: {b} bytes of JSON. "
               "Streamed answer: SSE, 8 events ({d:.0f} ms between events; Tollgate asks upstream for usage, so "
               "through Tollgate the mock sends 9 events and the client still gets 8).\n".format(
                   m=MODEL, b=meta.get("ns_body", "?"), d=args.chunk_delay * 1000))
    allres = list(results.values())
    window = sum(x.window for x in allres)
    foreign = sum(x.foreign for x in allres)
    filled = [k for k, x in results.items() if x.noisy_used]
    out.append(f"Other activity on the machine (anything but the gateways, their PostgreSQL backends, the mock "
               f"and the load generator; /proc/stat) is measured during every phase. A phase during which it "
               f"passed {args.noise_pct:.0f}% of one CPU was set aside and measured again in a later round "
               f"({sum(x.discarded + x.noisy_used for x in allres)} such phases; {meta['rounds']} rounds in all; "
               f"{meta['quiet']}). In the phases kept, other activity averaged "
               f"{foreign / window * 100 if window else 0:.1f}% of one CPU. "
               + ("Cells that still include noisy phases (no quiet one came in time): " + ", ".join(
                   f"{k[0]} {'streamed' if k[1] == 'st' else 'non-streamed'}@{k[2]} ({results[k].noisy_used} of "
                   f"{args.reps}, other load {results[k].foreign_pct:.0f}%)" for k in sorted(filled)) + "."
                  if filled else "Every cell is made of quiet phases only.") + "\n")
    out.append(f"Requests per target per cell (over all repetitions; fewer if the time cap of {args.phase_cap:.0f} s "
               f"per target per cell hit, marked *): non-streamed {args.requests} at 1 and at 32 clients; "
               f"streamed {args.stream_requests_c1} at 1 client, {args.stream_requests_c32} at 32 clients.\n")

    out.append("\n## Non-streamed requests\n")
    out.append("| target | p50 @1 (ms) | p99 @1 (ms) | p50 overhead @1 (ms) | p50 @32 (ms) | p99 @32 (ms) | req/s @32 "
               "| gateway CPU ms/req @32 | CPU0 (client+mock) busy @32 | other load @1 / @32 | errors |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in targets:
        a, b = r(t, "ns", 1), r(t, "ns", 32)
        if not a and not b:
            continue
        p50_1 = pct(a.lat, 50) if a else None
        over = None if (p50_1 is None or up_ns1 is None or t is base) else p50_1 - up_ns1
        cpu, rps = cpu_cell(t, b), rate_cell(b)
        busy = f"{b.client_cpu / b.elapsed * 100:.0f}%" if b and b.elapsed else "—"
        errs = (a.errors if a else 0) + (b.errors if b else 0)
        cap1 = "*" if a and a.capped else ""
        out.append(f"| {t.label} | {ms(p50_1)}{cap1} | {ms(pct(a.lat, 99)) if a else '—'} | {signed_ms(over)} | "
                   f"{ms(pct(b.lat, 50)) if b else '—'} | {ms(pct(b.lat, 99)) if b else '—'} | {rps} | {cpu} | "
                   f"{busy} | {other(a)} / {other(b)} | {errs} |")

    out.append("\n## Streamed requests (SSE)\n")
    out.append("TTFB = time from sending the request to the first body bytes; overhead = TTFB p50 minus the "
               "upstream's own TTFB p50 at the same concurrency. A gateway that buffers the body shows the whole "
               "stream's duration as its TTFB.\n")
    out.append("| target | TTFB p50 @1 (ms) | TTFB overhead @1 (ms) | TTFB p99 @1 (ms) | stream total p50 @1 (ms) | "
               "TTFB p50 @32 (ms) | TTFB overhead @32 (ms) | total p50 @32 (ms) | total p99 @32 (ms) | streams/s @32 | "
               "gateway CPU ms/stream @32 | other load @1 / @32 | errors |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in targets:
        a, b = r(t, "st", 1), r(t, "st", 32)
        if not a and not b:
            continue
        t1 = pct(a.ttfb, 50) if a else None
        t32 = pct(b.ttfb, 50) if b else None
        o1 = None if (t is base or t1 is None or up_ttfb[1] is None) else t1 - up_ttfb[1]
        o32 = None if (t is base or t32 is None or up_ttfb[32] is None) else t32 - up_ttfb[32]
        cpu, rps = cpu_cell(t, b), rate_cell(b)
        errs = (a.errors if a else 0) + (b.errors if b else 0)
        out.append(f"| {t.label} | {ms(t1)}{'*' if a and a.capped else ''} | {signed_ms(o1)} | "
                   f"{ms(pct(a.ttfb, 99)) if a else '—'} | {ms(pct(a.lat, 50)) if a else '—'} | {ms(t32)} | "
                   f"{signed_ms(o32)} | {ms(pct(b.lat, 50)) if b else '—'} | {ms(pct(b.lat, 99)) if b else '—'} | "
                   f"{rps} | {cpu} | {other(a)} / {other(b)} | {errs} |")

    out.extend(targets_check(targets, r, up_ns1, up_ttfb[1]))
    if phases:
        out.extend(speed_targets(targets, phases, {cell: phases.get(("upstream", *cell), []) for cell in CELLS},
                                 paired))

    out.append("\n## Gateway process: memory and CPU\n")
    out.append("RSS of the gateway's process tree: idle = started (its admin process answering), before any request; "
               "after = when the whole run ended; peak = largest seen after any phase. Idle CPU = over a quiet window before the run. "
               "CPU ms/req @1 is higher than @32: at 1 client every request pays the event-loop wake-ups alone.\n")
    out.append("| gateway process | RSS idle (MB) | RSS after load (MB) | RSS peak (MB) | idle CPU | startup (s) | "
               "CPU ms/req non-streamed @1 | CPU ms/req non-streamed @32 |")
    out.append("|---|---|---|---|---|---|---|---|")
    seen = set()
    for t in targets:
        if not t.proc_pid or t.process_label in seen:
            continue
        seen.add(t.process_label)
        group = [x for x in targets if x.process_label == t.process_label]

        def cpu_req(w, c):
            ok = sum(r(x, w, c).ok for x in group if r(x, w, c))
            cpu = sum(r(x, w, c).cpu for x in group if r(x, w, c))
            return f"{cpu / ok * 1000:.2f}" if ok else "—"

        name = t.process_label + (" (both ways in)" if len(group) > 1 else "")
        out.append(f"| {name} | {fmt(t.rss_idle)} | {fmt(t.rss_after)} | {fmt(t.rss_peak or None)} | "
                   f"{fmt(t.idle_cpu_pct, 2, '%')} | {fmt(t.startup_s)} | {cpu_req('ns', 1)} | {cpu_req('ns', 32)} |")

    notes = []
    for t in targets:
        for (w, c) in CELLS:
            x = r(t, w, c)
            if x and x.sample_error:
                notes.append(f"- {t.label}, {'streamed' if w == 'st' else 'non-streamed'} @{c}: {x.errors} errors, "
                             f"first: `{x.sample_error}`")
        if t.dead:
            notes.append(f"- {t.label}: {t.dead}")
    if unavailable:
        out.append("\n## Not measured\n")
        for name, why in unavailable:
            out.append(f"- **{name}**: {why}")
    if notes:
        out.append("\n## Errors during the run\n")
        out.extend(notes)
    out.append("\n## How to read this\n")
    out.append("- Latency is per request at the client, keep-alive connections; p99 at 1 client over "
               f"{args.requests} requests is the 20th-slowest.\n"
               "- `gateway CPU ms/req` = (CPU time of the gateway process tree, to the ns, before/after each phase, "
               "including trailing background work such as ledger writes) / completed requests. For Tollgate on "
               "PostgreSQL, `+x PG` is the CPU of the PostgreSQL server backends serving its database (not pinned), "
               "and `+y Redis` that of the redis-server holding its holds (127.0.0.1:6379, not pinned; counted "
               "for the phases of the targets that use it, not as other load).\n"
               "- `CPU0 busy` is the load generator plus the mock: near 100% means the client side, not the "
               "gateway, bounded req/s for that row (always the case for the upstream-direct row).\n"
               "- `other load` is the CPU used by everything else on the machine during those phases, in % of one "
               "CPU (from /proc/stat minus the benchmark's own processes): other people's test runs on this shared "
               "2-core machine. Figures from cells with high other load are inflated (latency, CPU per request).\n"
               "- All gateways run with their defaults and quiet logging (`mitmdump -q`, `LITELLM_LOG=ERROR`, "
               "Portkey `--headless` with `NODE_ENV=production`). Tollgate authenticates, prices every request "
               "with genai-prices, and writes every request to its ledger in a background writer; the others "
               "only forward (LiteLLM without a database, Portkey without a config).\n")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------
# Profile
# ------------------------------------------------------------------------------------------------

# Leaf frames of threads that are waiting, not working: in blocking mode py-spy's idle detection does not
# see these threads (blocked in C in a futex) as idle on this machine, so they are dropped here.
IDLE_LEAVES = (
    ("_worker", "concurrent/futures/thread.py"),  # thread-pool worker in work_queue.get()
    ("LedgerWriter._next_batch", "addons/ledger/writer.py"),  # writer waiting for records, or lingering
    ("Journal._sync_loop", "addons/ledger/journal.py"),  # fsync thread between rounds, or in fsync()
    ("Condition.wait", "threading.py"), ("Event.wait", "threading.py"), ("Thread.join", "threading.py"),
    ("Queue.get", "queue.py"), ("EpollSelector.select", "selectors.py"), ("select", "selectors.py"),
)


def is_idle_leaf(fn: str, file: str) -> bool:
    return any(fn == f and file.endswith(suffix) for f, suffix in IDLE_LEAVES)


FRAME_RE = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def categorize(path: str) -> str:
    p = path.replace("\\", "/")
    if p.startswith(f"{PROJECT}/addons/"):
        return "tollgate addons/" + p[len(f"{PROJECT}/addons/"):].split("/")[0].removesuffix(".py")
    if p.startswith(f"{PROJECT}/pricing/"):
        return "tollgate pricing"
    for key, cat in (("mitmproxy/addonmanager.py", "mitmproxy addon dispatch (hooks)"),
                     ("mitmproxy/utils/typecheck.py", "mitmproxy option/hook type checks"),
                     ("mitmproxy/coretypes/", "mitmproxy multidict/serializable"),
                     ("mitmproxy/proxy/server.py", "mitmproxy proxy: connection handlers"),
                     ("mitmproxy/proxy/layers/http", "mitmproxy proxy: HTTP layer"),
                     ("mitmproxy/proxy/layers/tls", "mitmproxy proxy: TLS layer"),
                     ("mitmproxy/proxy/", "mitmproxy proxy: server/layers/events"),
                     ("mitmproxy/addons/", "mitmproxy built-in addons"),
                     ("mitmproxy/net/http", "mitmproxy http parsing/assembly"),
                     ("mitmproxy/http.py", "mitmproxy http model"),
                     ("mitmproxy/", "mitmproxy other"),
                     ("genai_prices", "genai-prices"), ("peewee", "peewee"), ("sqlite3", "sqlite3"),
                     ("psycopg2", "psycopg2"), ("asyncio/", "asyncio"), ("/ssl.py", "ssl"),
                     ("OpenSSL", "pyOpenSSL"), ("cryptography", "cryptography"), ("/json/", "json"),
                     ("/logging/", "logging"), ("concurrent/futures", "thread pool"), ("threading.py", "threading"),
                     ("/h11/", "h11"), ("/h2/", "h2"), ("/hpack/", "h2"), ("/hyperframe/", "h2"),
                     ("/decimal", "decimal"), ("/re/", "re"), ("/email/", "email"), ("/urllib/", "urllib"),
                     ("/yaml/", "yaml"), ("/typing", "typing"), ("/enum", "enum"), ("/dataclasses", "dataclasses")):
        if key in p:
            return cat
    if "site-packages/" in p:
        return p.split("site-packages/", 1)[1].split("/")[0]
    return Path(p).name or p


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        st = raw[raw.rfind(")") + 2:].split()
        out[int(tid)] = (int(st[11]) + int(st[12])) / TICK
    return out


def summarize_profile(raw: Path, meta: dict, thread_cpu_delta: dict[int, float] | None = None) -> str:
    self_fn, total_fn = collections.Counter(), collections.Counter()
    callers: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    self_cat, total_cat, threads = collections.Counter(), collections.Counter(), collections.Counter()
    tid_names: dict[int, str] = {}
    total = idle = 0
    tollgate_incl = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else "?"
        if thread != "?":
            frames = frames[1:]
            m = re.match(r"^thread \((\d+)\):?\s*(.*)$", thread)
            if m:
                tid_names[int(m.group(1))] = m.group(2) or m.group(1)
        parsed = []
        for f in frames:
            m = FRAME_RE.match(f)
            fn, file = (m.group("fn"), m.group("file")) if m else (f, "?")
            short = file.split("site-packages/", 1)[-1].replace(str(PROJECT) + "/", "")
            short = re.sub(r"^/root/\.pyenv/versions/[^/]+/lib/python3\.\d+/", "", short)
            parsed.append((f"{fn} ({short})", categorize(file)))
        if not parsed:
            continue
        m = FRAME_RE.match(frames[-1])
        if m and is_idle_leaf(m.group("fn"), m.group("file")):
            idle += n
            continue
        total += n
        threads[re.sub(r"^(thread|process)\s*\((0x[0-9a-f]+|\d+)\):?\s*", "", thread) or thread] += n
        self_fn[parsed[-1][0]] += n
        # the nearest caller outside the leaf's own module says who pays for a hot helper
        leaf_file = parsed[-1][0].rsplit(" (", 1)[-1]
        caller = next((f for f, _ in reversed(parsed[:-1]) if not f.endswith(" (" + leaf_file)), "(none)")
        callers[parsed[-1][0]][caller] += n
        self_cat[parsed[-1][1]] += n
        for fname in {p[0] for p in parsed}:
            total_fn[fname] += n
        for cat in {p[1] for p in parsed}:
            total_cat[cat] += n
        if any(c.startswith("tollgate") for _, c in parsed):
            tollgate_incl += n

    def share(n):
        return f"{n / total * 100:.1f}%" if total else "—"

    out = ["# Where Tollgate's CPU goes under load\n",
           f"{meta.get('pyspy_version') or 'py-spy'} `record --format raw --threads -r {meta['rate']}` on the Tollgate "
           f"(SQLite) gateway process ({meta['mode']}, `--full-filenames`), {meta['duration']} s of {meta['workload']}. "
           f"Idle threads are not sampled, so "
           f"shares are of on-CPU time ({idle} samples of threads waiting in a known blocking call, e.g. "
           f"thread-pool workers and the ledger writer in `queue.get`, were dropped as idle: py-spy's own idle "
           f"detection misses them here). {total} samples used; {meta['spy']}. Load phase: {meta['load']}; "
           f"{meta['cpu']}.\n",
           f"Stacks that pass through Tollgate's own code (addons/, pricing/): **{share(tollgate_incl)}** of samples; "
           f"the rest is mitmproxy, asyncio, TLS and the interpreter's own machinery.\n",
           "Samples are wall-clock ticks of threads found running. Dropping the known waits as idle also drops "
           "the little Python work those frames do themselves; the measured per-thread CPU below is the check "
           "on the sampled thread shares.\n",
           "\n## By thread\n", "| thread | samples | share |", "|---|---|---|"]
    out += [f"| {k} | {v} | {share(v)} |" for k, v in threads.most_common(10)]
    if thread_cpu_delta:
        busy = sum(thread_cpu_delta.values())
        out += ["\nMeasured, not sampled: CPU time of each thread of the process over the profiled load phase "
                "(`/proc/<pid>/task/<tid>/stat`; thread names from py-spy, `(no Python frames)` for native "
                "threads py-spy never saw running Python):\n",
                "| thread | CPU s | share of the process's CPU |", "|---|---|---|"]
        for tid, sec in sorted(thread_cpu_delta.items(), key=lambda kv: -kv[1]):
            if sec > 0:
                out.append(f"| {tid_names.get(tid, '(no Python frames)')} ({tid}) | {sec:.2f} | "
                           f"{sec / busy * 100:.1f}% |")
    out += ["\n## By component (self time: the frame on top of the stack)\n", "| component | self | inclusive |",
            "|---|---|---|"]
    out += [f"| {k} | {share(v)} | {share(total_cat[k])} |" for k, v in self_cat.most_common(25)]
    out += ["\n## Top functions by self time\n", "| function | self | inclusive |", "|---|---|---|"]
    out += [f"| `{k}` | {share(v)} | {share(total_fn[k])} |" for k, v in self_fn.most_common(30)]
    out += ["\n## Who calls the hottest functions\n",
            "The nearest caller outside the hot function's own file, for the top functions by self time.\n",
            "| function (self) | callers (share of all samples) |", "|---|---|"]
    for k, v in self_fn.most_common(12):
        top = ", ".join(f"`{c}` {share(m)}" for c, m in callers[k].most_common(3))
        out.append(f"| `{k}` {share(v)} | {top} |")
    tg = [(k, v) for k, v in total_fn.most_common() if " (addons/" in k or " (pricing/" in k]
    out += ["\n## Tollgate functions by inclusive time\n", "| function | inclusive | self |", "|---|---|---|"]
    out += [f"| `{k}` | {share(v)} | {share(self_fn[k])} |" for k, v in tg[:30]]
    return "\n".join(out) + "\n"


def run_profile(t: Target, mock_pid: int, args) -> str:
    pyspy = VENV_BIN / "py-spy"
    if not pyspy.exists():
        raise Unavailable(f"py-spy is not installed ({pyspy}); `.venv/bin/pip install py-spy`")
    raw = WORK / "profile.raw.txt"
    raw.unlink(missing_ok=True)
    duration = args.profile_seconds
    version = subprocess.run([str(pyspy), "--version"], capture_output=True, text=True).stdout.strip()
    waited, _ = wait_quiet(60.0, args.noise_pct, False)
    # --nonblocking: in blocking mode py-spy's idle detection let waiting threads (thread-pool workers,
    # the ledger writer's queue wait) through as if they were on CPU, half the samples; --full-filenames
    # so frames can be told apart by package.
    # py-spy itself may run on either CPU: pinned to the client's CPU it fell seconds behind.
    mode = ["--nonblocking"] if args.profile_mode == "nonblocking" else []
    spy = subprocess.Popen(["taskset", "-c", f"{CLIENT_CPU},{GATEWAY_CPU}", str(pyspy), "record",
                            "--pid", str(t.proc_pid), "--format", "raw", "--threads", *mode,
                            "--full-filenames", "-r", str(args.profile_rate), "--duration", str(duration),
                            "-o", str(raw)],
                           stdout=(LOGS / "py-spy.log").open("wb"), stderr=subprocess.STDOUT)
    STARTED.append(spy)
    time.sleep(1.0)  # let it attach
    tc0 = thread_cpu(t.proc_pid)
    res = measured_phase(t, mock_pid, False, 32, args.profile_requests, max(1.0, duration - 2.0))
    tc1 = thread_cpu(t.proc_pid)
    delta = {tid: tc1[tid] - tc0.get(tid, 0.0) for tid in tc1}
    try:
        spy.wait(duration + 30)
    except subprocess.TimeoutExpired:
        spy.send_signal(signal.SIGINT)
        spy.wait(10)
    if not raw.exists() or not raw.stat().st_size:
        raise Unavailable(f"py-spy produced no profile: {(LOGS / 'py-spy.log').read_text(errors='replace')[-800:]}")
    spy_log = (LOGS / "py-spy.log").read_text(errors="replace").replace("\r", "\n")
    counts = re.search(r"Samples: (\d+) Errors: (\d+)", spy_log)
    behind = re.findall(r"([\d.]+)s behind in sampling", spy_log)
    meta = {"rate": args.profile_rate, "duration": duration, "pyspy_version": version,
            "mode": "`--nonblocking`" if args.profile_mode == "nonblocking" else
                    "blocking: the process is paused for each sample, so stacks are consistent and req/s is lower",
            "spy": (f"py-spy reported {counts.group(1)} samples and {counts.group(2)} errors" if counts else "")
                   + (f", and fell up to {max(map(float, behind))} s behind" if behind else ""),
            "cpu": f"gateway process at {res.cpu / res.elapsed * 100:.0f}% of one CPU, "
                   f"{res.cpu / max(res.ok, 1) * 1000:.2f} ms CPU per request" if res.elapsed else "",
            "workload": f"non-streamed requests through the forward endpoint at 32 clients ({t.label})",
            "load": f"{res.ok} requests ok, {res.errors} errors, {res.ok / res.elapsed:.0f} req/s under the profiler, "
                    f"other processes on the machine (py-spy included) at {res.foreign_pct:.0f}% of a CPU (waited {waited:.0f} s for "
                    f"quiet first)"}
    return summarize_profile(raw, meta, delta)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------

def versions() -> str:
    out = []
    try:
        import mitmproxy.version
        out.append(f"mitmproxy {mitmproxy.version.VERSION}")
    except Exception:  # noqa: BLE001
        pass
    out.append(f"Python {sys.version.split()[0]}")
    lp = LITELLM_VENV / "bin" / "python"
    if lp.exists():
        r = subprocess.run([str(lp), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                           capture_output=True, text=True)
        if r.returncode == 0:
            out.append(f"LiteLLM {r.stdout.strip()}")
    pj = PORTKEY_ENTRY.parent.parent / "package.json"
    if pj.exists():
        out.append(f"@portkey-ai/gateway {json.loads(pj.read_text())['version']}")
        hn = PORTKEY_DIR / "node_modules" / "@hono" / "node-server" / "package.json"
        if hn.exists():
            out.append(f"@hono/node-server {json.loads(hn.read_text())['version']} (pinned, see bench/README.md)")
    node = shutil.which("node")
    if node:
        out.append(f"node {subprocess.run([node, '--version'], capture_output=True, text=True).stdout.strip()}")
    return ", ".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=6000, help="non-streamed requests per target per concurrency")
    ap.add_argument("--stream-requests-c1", type=int, default=300, help="streamed requests per target at 1 client")
    ap.add_argument("--stream-requests-c32", type=int, default=800, help="streamed requests per target at 32 clients")
    ap.add_argument("--reps", type=int, default=6, help="round-robin repetitions the counts are split over")
    ap.add_argument("--noise-pct", type=float, default=10.0,
                    help="set aside (and measure again later) a phase during which other processes used more "
                         "than this %% of a CPU")
    ap.add_argument("--extra-reps", type=int, default=4,
                    help="extra rounds in which phases set aside as noisy are measured again")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="seconds to wait at most, before the run, for other processes to go quiet")
    ap.add_argument("--phase-cap", type=float, default=30.0, help="seconds per target per cell (all reps)")
    ap.add_argument("--chunk-delay", type=float, default=0.010, help="mock's delay between SSE events (s)")
    ap.add_argument("--max-minutes", type=float, default=25.0, help="stop starting phases after this")
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny counts")
    ap.add_argument("--only", default="", help="comma-separated target names to keep (upstream is always kept)")
    ap.add_argument("--skip", default="", help="comma-separated groups to skip: mitmdump,tollgate-sqlite,"
                                                "tollgate-pg,tollgate-script,tollgate-workers,litellm,portkey")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-seconds", type=int, default=20)
    ap.add_argument("--profile-rate", type=int, default=100)
    ap.add_argument("--profile-mode", choices=["nonblocking", "blocking"], default="blocking",
                    help="py-spy sampling mode (nonblocking drops many samples as errors on this machine)")
    ap.add_argument("--profile-only", action="store_true",
                    help="start only the mock and the Tollgate profiled and write only the profile")
    ap.add_argument("--profile-requests", type=int, default=20000)
    ap.add_argument("--profile-target", choices=["sqlite", "pg"], default="sqlite",
                    help="profile Tollgate on SQLite or on PostgreSQL + Redis (the forward endpoint)")
    ap.add_argument("--profile-launcher", choices=["lean", "script"], default="lean",
                    help="profile Tollgate (SQLite) under tollgate-proxy (lean) or as mitmdump -s addons/gateway.py")
    ap.add_argument("--baseline", default="",
                    help="a checkout of an earlier commit with its own .venv: its Tollgate (SQLite) runs as the "
                         "baseline-sqlite-* targets, interleaved with this tree's, for an A/B in one run")
    ap.add_argument("--limits", action="store_true",
                    help="also load each Tollgate target through a key with every limit set (the -fwd-limited rows)")
    ap.add_argument("--limits-pairs", type=int, default=20,
                    help="with --limits: back-to-back pairs of phases (plain key, limited key) for issue 13's budgets")
    ap.add_argument("--limits-requests", type=int, default=1000, help="with --limits: requests per phase of a pair")
    ap.add_argument("--rewrite", action="store_true",
                    help="also load each Tollgate through /v1/rewrite/openai/ to the Anthropic mock (the -rewrite rows)")
    ap.add_argument("--out", default=str(BENCH / "results.md"))
    ap.add_argument("--profile-out", default=str(BENCH / "profile.md"))
    args = ap.parse_args()
    global LIMITS_TOO, REWRITE_TOO
    LIMITS_TOO, REWRITE_TOO = args.limits, args.rewrite
    if args.quick:
        args.requests, args.stream_requests_c1, args.stream_requests_c32 = 64, 8, 64
        args.reps, args.phase_cap, args.profile_seconds = 2, 10.0, 5
        args.quiet_wait, args.extra_reps = 5.0, 1
        args.limits_pairs, args.limits_requests = 2, 200
    if os.cpu_count() < 2:
        log("needs 2 CPUs (client on 0, gateway on 1)")
        return 2
    os.sched_setaffinity(0, {CLIENT_CPU})
    WORK.mkdir(exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if not args.baseline:
        skip.add("baseline")
    if args.profile_only:  # the mock and the Tollgate profiled, nothing else
        profiled = "tollgate-pg" if args.profile_target == "pg" else (
            "tollgate-script" if args.profile_launcher == "script" else "tollgate-sqlite")
        skip |= {"mitmdump", "tollgate-sqlite", "tollgate-pg", "tollgate-script", "tollgate-workers", "litellm",
                 "portkey"} - {profiled}
        args.reps = args.extra_reps = 0
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    t_start = time.monotonic()
    hard_deadline = t_start + args.max_minutes * 60
    unavailable: list[tuple[str, str]] = []
    targets: list[Target] = []
    watch_signals()
    pg_used = False
    try:
        mock, mock_port = start_mock(args.chunk_delay)
        log(f"mock provider on 127.0.0.1:{mock_port} (pid {mock.pid}, CPU {CLIENT_CPU})")
        targets.append(Target("upstream", "upstream directly (the limit)", mock_port, "/v1/chat/completions",
                              {"Authorization": f"Bearer {UPSTREAM_KEY}"}, None, "mock"))
        starters = [
            ("mitmdump", "stock mitmdump (reverse)", lambda: [start_mitmdump("mitmdump", mock_port, False),
                                                              start_mitmdump("mitmdump-stream", mock_port, True)]),
            ("tollgate-sqlite", "Tollgate (SQLite)", lambda: list(start_tollgate("sqlite", mock_port))),
            ("tollgate-pg", "Tollgate (PostgreSQL + Redis)", lambda: list(start_tollgate("pg", mock_port))),
            ("tollgate-script", "Tollgate (SQLite) under mitmdump -s",
             lambda: [start_tollgate("sqlite", mock_port, launcher="script")[0]]),
            ("tollgate-workers", "Tollgate --workers 1 and 2 (SQLite + Redis)",
             lambda: [start_tollgate("sqlite", mock_port, workers=1)[0], start_tollgate("sqlite", mock_port, workers=2)[0]]),
            ("baseline", "Tollgate (SQLite) from the --baseline checkout",
             lambda: list(start_tollgate("sqlite", mock_port, baseline=Path(args.baseline)))),
            ("litellm", "LiteLLM proxy", lambda: [start_litellm(mock_port)]),
            ("portkey", "Portkey gateway", lambda: [start_portkey(mock_port)]),
        ]
        for group, label, fn in starters:
            if group in skip:
                unavailable.append((label, "skipped (--skip)"))
                continue
            log(f"starting {label} ...")
            try:
                pg_used |= group == "tollgate-pg"
                got = fn()
                for t in got:
                    t.rss_idle = tree_rss_mb(t.proc_pid)
                targets += got
                log(f"  up in {got[0].startup_s:.1f}s: " + ", ".join(f"{t.name} :{t.port}" for t in got))
            except Exception as e:  # noqa: BLE001 - say so, and go on with the others
                why = f"{type(e).__name__}: {e}"
                log(f"  NOT AVAILABLE: {label}: {why}")
                unavailable.append((label, why[:1500]))
        if only:
            targets = [t for t in targets if t.name == "upstream" or t.name in only]

        # idle CPU over a quiet window, all gateways at once
        procs = {t.process_label: t.proc_pid for t in targets if t.proc_pid}
        c0 = {k: tree_cpu(p) for k, p in procs.items()}
        time.sleep(3.0)
        idle = {k: (tree_cpu(p) - c0[k]) / 3.0 * 100 for k, p in procs.items()}
        for t in targets:
            if t.proc_pid:
                t.idle_cpu_pct = idle[t.process_label]

        log("warm-up ...")
        for t in targets:
            try:
                for stream, n in ((False, 40), (True, 4)):
                    w = asyncio.run(load(t, stream, 4, n, 60))
                    if w.ok == 0:
                        raise RuntimeError(w.sample_error or "no successful response")
            except Exception as e:  # noqa: BLE001
                t.dead = f"warm-up failed: {type(e).__name__}: {e}"[:1500]
                log(f"  {t.name}: {t.dead}")
                unavailable.append((t.label, t.dead))
        targets = [t for t in targets if not t.dead or t.name == "upstream"]

        plan = {("ns", 1): args.requests, ("ns", 32): args.requests,
                ("st", 1): args.stream_requests_c1, ("st", 32): args.stream_requests_c32}
        results: dict[tuple[str, str, int], PhaseResult] = {}
        # Phases during which other processes used the machine (other people's test runs on a shared box) are
        # set aside and the phase is measured again in a later round, still interleaved with every other
        # target; a cell that never gets enough quiet phases is filled with its quietest noisy ones (and says so).
        quiet: dict[tuple[str, str, int], list[PhaseResult]] = collections.defaultdict(list)
        noisy: dict[tuple[str, str, int], list[PhaseResult]] = collections.defaultdict(list)
        stopped_early = False
        log(f"waiting up to {args.quiet_wait:.0f}s for other processes to use <= {args.noise_pct:.0f}% of a CPU ...")
        waited, last = wait_quiet(args.quiet_wait, args.noise_pct, pg_used)
        meta_quiet = f"waited {waited:.0f} s for a quiet machine before starting (other load then {last:.0f}% of a CPU)"
        log("  " + meta_quiet)
        rounds = 0
        interrupted = False
        paired: dict[str, list[tuple[PhaseResult, PhaseResult]]] = {}
        try:
            for rnd in range(args.reps + args.extra_reps):
                todo = [(w, c, t) for (w, c) in CELLS for t in targets
                        if not t.dead and len(quiet[(t.name, w, c)]) < args.reps]
                if not todo or stopped_early:
                    break
                rounds += 1
                shift = rnd % len(targets)
                order = {t.name: i for i, t in enumerate(targets[shift:] + targets[:shift])}
                todo.sort(key=lambda x: (CELLS.index((x[0], x[1])), order[x[2].name]))
                for w, c, t in todo:
                    if time.monotonic() > hard_deadline:
                        stopped_early = True
                        break
                    n = math.ceil(plan[(w, c)] / args.reps)
                    try:
                        res = measured_phase(t, mock.pid, w == "st", c, n, args.phase_cap / args.reps)
                    except Exception as e:  # noqa: BLE001
                        res = PhaseResult(planned=n, errors=n, sample_error=f"{type(e).__name__}: {e}"[:300])
                    is_quiet = res.foreign_pct <= args.noise_pct
                    (quiet if is_quiet else noisy)[(t.name, w, c)].append(res)
                    log(f"round {rnd + 1} {w}@{c:<2} {t.name:<22} ok={res.ok:<5} err={res.errors:<3} "
                        f"{res.ok / res.elapsed if res.elapsed else 0:7.0f} req/s  p50={ms(pct(res.lat, 50))} ms  "
                        f"cpu={res.cpu / res.ok * 1000 if res.ok else 0:.2f} ms/req  other={res.foreign_pct:.0f}%"
                        + ("" if is_quiet else "  (noisy: set aside, measured again later)"))
            if LIMITS_TOO and not stopped_early and args.limits_pairs:
                paired = limits_pairs(targets, mock.pid, args.limits_pairs, args.limits_requests, args.noise_pct,
                                      args.phase_cap)
        except KeyboardInterrupt:  # report what was measured so far, then stop
            interrupted = True
            log("interrupted: reporting the phases measured so far")
        kept: dict[tuple[str, str, int], list[PhaseResult]] = {}  # each cell's phases, round by round
        for key in set(quiet) | set(noisy):
            phases = quiet[key][:args.reps]
            fill = sorted(noisy[key], key=lambda x: x.foreign_pct)[:args.reps - len(phases)]
            kept[key] = phases + fill
            cell = PhaseResult()
            for x in phases + fill:
                cell.merge(x)
            cell.noisy_used = len(fill)
            cell.discarded = len(noisy[key]) - len(fill)
            results[key] = cell
        for t in targets:
            if t.proc_pid and alive(t.proc_pid):
                t.rss_after = tree_rss_mb(t.proc_pid)
        meta = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "wall": time.monotonic() - t_start,
                "command": " ".join([os.path.relpath(sys.executable, PROJECT) if sys.executable.startswith(str(PROJECT))
                                     else sys.executable, os.path.relpath(__file__, PROJECT), *sys.argv[1:]]),
                "versions": versions(), "quiet": meta_quiet, "rounds": rounds}
        up = results.get(("upstream", "ns", 1))
        meta["ns_body"] = up.body_size if up else "?"
        if stopped_early:
            unavailable.append(("remaining phases", f"--max-minutes {args.max_minutes} reached"))
        if interrupted:
            unavailable.append(("remaining phases", "the run was interrupted (SIGINT/SIGTERM); figures are partial"))
            args.no_profile = True
        text = report(targets, results, unavailable, args, meta, kept, paired) if not args.profile_only else ""
        print(text)
        if not args.profile_only:
            Path(args.out).write_text(text)
            log(f"wrote {args.out}")
            (WORK / "results.json").write_text(json.dumps(
                {f"{k[0]} {k[1]}@{k[2]}": {"ok": v.ok, "errors": v.errors, "elapsed": v.elapsed, "cpu": v.cpu,
                                           "pg_cpu": v.pg_cpu, "redis_cpu": v.redis_cpu, "client_cpu": v.client_cpu,
                                           "p50": pct(v.lat, 50), "p99": pct(v.lat, 99), "ttfb_p50": pct(v.ttfb, 50),
                                           "window": v.window, "foreign": v.foreign, "noisy_used": v.noisy_used,
                                           "discarded": v.discarded}
                 for k, v in results.items()}, indent=1))

        if not args.no_profile:
            wanted = ("tollgate-pg-fwd" if args.profile_target == "pg" else
                      "tollgate-sqlite-script-fwd" if args.profile_launcher == "script" else "tollgate-sqlite-fwd")
            tg = next((t for t in targets if t.name == wanted and not t.dead), None)
            try:
                if tg is None:
                    raise Unavailable(f"{wanted} is not running")
                log(f"profiling {tg.name} with py-spy for {args.profile_seconds}s ...")
                prof = run_profile(tg, mock.pid, args)
                Path(args.profile_out).write_text(prof)
                print(prof)
                log(f"wrote {args.profile_out}")
            except Exception as e:  # noqa: BLE001
                log(f"PROFILE FAILED: {type(e).__name__}: {e}")
                print(f"\nProfile not taken: {type(e).__name__}: {e}\n")
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        stop_all()
        if pg_used:
            drop_pg_database()


if __name__ == "__main__":
    sys.exit(main())
