#!/usr/bin/env python3
"""Tollgate under many open streams, and its memory over a long mixed load. Run by hand, not in CI.

Two measurements, each against its own mock provider (bench/mock_server.py, CPU 0) and its own
Tollgate instance (`tollgate-proxy` on SQLite, CPU 1), both started by run_bench.py's own functions:

  streams   N (1,000) streamed chat completions through the forward endpoint, all open at once: each
            stream is 9 SSE events from the mock, --chunk-delay apart (8 s at 1 s), ramped up over
            --ramp seconds. Reports completion ([DONE] + full content), time to first byte, the
            gateway's RSS before / at peak (sampled every 100 ms) / after, RSS per open stream, whether
            the gateway passed events on as they came (no buffering), and the ledger rows they made.
  soak      --clients closed-loop clients for --soak-minutes after a --warmup: ~68% non-streamed,
            ~27% streamed, and bad requests (a wrong Tollgate key -> 401, never forwarded or recorded;
            the mock's mock-error-500 / mock-error-429 models -> forwarded and recorded), sampling the
            gateway's RSS every 5 s. Reports requests by kind, errors by status, RSS first (after the
            warm-up) / min / max / last, whether it stayed within 10% of the first, the ledger row
            count against the requests the client saw forwarded, and `tollgate audit`.

Run:  .venv/bin/python bench/streams_and_memory.py [--only streams|soak] [--quick]   (see bench/README.md)
Writes the summary to stdout and bench/streams_and_memory.md; logs and raw samples to
bench/work/streams_and_memory/. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run_bench as rb  # noqa: E402  (its module level only defines things)

BASE_WORK = rb.WORK / "streams_and_memory"
CONTENT = "Hello from the mock."  # tests/mock_provider.FULL_TEXT: what the streamed deltas add up to
WRONG_KEY = "tg_sk_wrong_0123456789abcdef0123456789abcdef"
log = rb.log


# ------------------------------------------------------------------------------------------------
# Set-up: one mock + one Tollgate (SQLite) per measurement, each in its own work dir
# ------------------------------------------------------------------------------------------------

@dataclass
class Instance:
    mock_pid: int
    mock_port: int
    target: rb.Target  # the forward endpoint
    pid: int  # the gateway process (tollgate-proxy, CPU 1)
    dir: Path
    env: dict

    @property
    def db(self) -> Path:
        return self.dir / "ledger.db"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([str(rb.VENV_BIN / "tollgate"), *args], env=self.env, capture_output=True, text=True,
                           timeout=120)
        if check and r.returncode:
            raise RuntimeError(f"tollgate {' '.join(args)} failed ({r.returncode}): {r.stderr[-800:]}")
        return r


def raise_fd_limit(need: int) -> str:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it: the mock and the gateway too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    soft2, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft2 < need:
        log(f"WARNING: open files limited to {soft2} (hard limit {hard}), {need} wanted")
    return f"RLIMIT_NOFILE soft {soft} -> {soft2} (hard {hard}), inherited by the mock and the gateway"


def start_instance(name: str, chunk_delay: float) -> Instance:
    rb.WORK = BASE_WORK / name  # run_bench's functions read these globals at call time
    rb.LOGS = rb.WORK / "logs"
    rb.LOGS.mkdir(parents=True, exist_ok=True)
    mock, mock_port = rb.start_mock(chunk_delay)
    log(f"[{name}] mock on 127.0.0.1:{mock_port} (pid {mock.pid}, CPU {rb.CLIENT_CPU}, chunk delay {chunk_delay}s)")
    fwd, _ = rb.start_tollgate("sqlite", mock_port)
    d = rb.WORK / "tollgate-sqlite"
    env = rb.clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{d}/ledger.db", TOLLGATE_CONFIG=str(d / "tollgate.yaml"),
                       **rb.PROVIDER_KEYS)
    log(f"[{name}] Tollgate on 127.0.0.1:{fwd.port} (pid {fwd.proc_pid}, CPU {rb.GATEWAY_CPU}), "
        f"up in {fwd.startup_s:.1f}s")
    return Instance(mock.pid, mock_port, fwd, fwd.proc_pid, d, env)


def stop_instance() -> None:
    rb.stop_all()
    rb.STARTED.clear()


def ledger_counts(inst: Instance) -> collections.Counter:
    """Rows of the request table by (status, streamed), read straight from the SQLite file."""
    conn = sqlite3.connect(f"file:{inst.db}?mode=ro", uri=True, timeout=10)
    try:
        return collections.Counter({(s, bool(st)): n for s, st, n in conn.execute(
            "SELECT status, streamed, COUNT(*) FROM request GROUP BY status, streamed")})
    finally:
        conn.close()


def max_rowid(inst: Instance) -> int:
    conn = sqlite3.connect(f"file:{inst.db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM request").fetchone()[0]
    finally:
        conn.close()


def ledger_times(inst: Instance, after_rowid: int) -> tuple[list[float], list[float]]:
    """ttfb and latency (s) the gateway recorded for rows written after `after_rowid`: from its request
    hook to the upstream's response headers, and to the end of the response."""
    conn = sqlite3.connect(f"file:{inst.db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT ttfb_ms, latency_ms FROM request WHERE rowid > ?", (after_rowid,)).fetchall()
    finally:
        conn.close()
    return [t / 1000 for t, _ in rows if t is not None], [lat / 1000 for _, lat in rows if lat is not None]


def cli_request_count(inst: Instance) -> int:
    return json.loads(inst.cli("usage", "--json").stdout)["totals"]["requests"]


def settle_ledger(inst: Instance, want: int | None = None, quiet: float = 3.0, cap: float = 60.0) -> int:
    """Wait until the row count stops moving (the writer is a background thread); returns it."""
    end = time.monotonic() + cap
    last, since = -1, time.monotonic()
    while time.monotonic() < end:
        n = sum(ledger_counts(inst).values())
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet or (want is not None and n >= want and time.monotonic() - since >= 1):
            break
        time.sleep(0.25)
    return last


def audit(inst: Instance) -> dict:
    r = inst.cli("audit", "--json", check=False)
    try:
        data = json.loads(r.stdout)
    except ValueError:
        data = {"ok": False, "error": (r.stdout + r.stderr)[-500:]}
    data["returncode"] = r.returncode
    return data


def log_problems(name: str) -> list[str]:
    """Lines of the gateway's log that look like trouble (it runs with -q: normally there are none)."""
    text = rb.tail(name, 10**8)
    return [ln for ln in text.splitlines()
            if any(w in ln for w in ("Traceback", "Error", "error", "exception", "Exception", "WARNING", "warn"))]


# ------------------------------------------------------------------------------------------------
# /proc samplers
# ------------------------------------------------------------------------------------------------

def rss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * rb.PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total / 2**20


def hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def thread_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


class Sampler(threading.Thread):
    """Samples the gateway's RSS every `interval` s (and whatever `extra()` returns) into self.samples."""

    def __init__(self, pid: int, interval: float, extra=None):
        super().__init__(daemon=True)
        self.pids = rb.tree(pid)
        self.pid, self.interval, self.extra = pid, interval, extra
        self.samples: list[dict] = []
        self.stop_ev = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        nxt = time.monotonic()
        while not self.stop_ev.is_set():
            s = {"t": time.monotonic() - self.t0, "rss": rss_mb(self.pids)}
            if self.extra:
                s.update(self.extra())
            self.samples.append(s)
            nxt += self.interval
            self.stop_ev.wait(max(0.0, nxt - time.monotonic()))

    def stop(self) -> list[dict]:
        self.stop_ev.set()
        self.join(5)
        return self.samples


class Foreign:
    """CPU used by everything on the machine but this process tree, over a window (% of one CPU)."""

    def __init__(self):
        self.b0, self.o0, self.t0 = rb.system_busy(), rb.our_cpu(False), time.monotonic()

    def pct(self) -> float:
        foreign = (rb.system_busy() - self.b0) - (rb.our_cpu(False) - self.o0)
        return max(0.0, foreign) / max(1e-9, time.monotonic() - self.t0) * 100


def machine_note() -> str:
    load = os.getloadavg()
    others = []
    try:
        ps = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True,
                            timeout=10).stdout.splitlines()[1:]
        mine = set(rb.tree(os.getpid()))
        for line in ps:
            parts = line.split(None, 4)
            if len(parts) == 5 and int(parts[0]) not in mine and float(parts[2]) >= 5.0:
                others.append(f"{parts[4][:110]} ({parts[2]}% CPU since start, up {parts[3]})")
    except Exception:  # noqa: BLE001
        pass
    note = f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    if others:
        note += "; other busy processes: " + "; ".join(others[:4])
    return note


# ------------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 client (asyncio streams) that also keeps headers and per-chunk times
# ------------------------------------------------------------------------------------------------

def request_bytes(t: rb.Target, *, stream: bool, model: str = rb.MODEL, auth: str | None = None) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
            "max_tokens": 32}
    if stream:
        body["stream"] = True
    data = json.dumps(body, separators=(",", ":")).encode()
    headers = dict(t.headers)
    if auth is not None:
        headers["Authorization"] = f"Bearer {auth}"
    lines = [f"POST {t.path} HTTP/1.1", f"Host: {t.host_header()}", "Content-Type: application/json",
             "Accept: */*", "User-Agent: tollgate-bench-soak/1", f"Content-Length: {len(data)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    t_head: float  # perf_counter times
    chunk_times: list[float] = field(default_factory=list)


async def read_response(reader: asyncio.StreamReader) -> Response:
    status, headers, close = await rb.read_head(reader)
    t_head = time.perf_counter()
    parts, times = [], []
    async for piece in rb.body_pieces(reader, headers):
        parts.append(piece)
        times.append(time.perf_counter())
    return Response(status, headers, b"".join(parts), not close, t_head, times)


def sse_check(body: bytes) -> tuple[int, str, bool]:
    """(events, concatenated delta content, saw [DONE])."""
    events, content, done = 0, [], False
    for block in body.split(b"\n\n"):
        for line in block.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            events += 1
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                continue
            try:
                for choice in json.loads(payload).get("choices") or ():
                    content.append((choice.get("delta") or {}).get("content") or "")
            except ValueError:
                pass
    return events, "".join(content), done


def pct(values, q):
    return rb.pct(list(values), q)


def ms(v):
    return "—" if v is None else f"{v * 1000:.1f} ms"


# ------------------------------------------------------------------------------------------------
# 1. N concurrent open streams
# ------------------------------------------------------------------------------------------------

@dataclass
class StreamResult:
    ok: bool = False
    why: str = ""
    t_conn_start: float = 0.0
    t_connected: float = 0.0
    t_sent: float = 0.0
    t_first: float | None = None
    t_end: float | None = None
    chunks: int = 0
    events: int = 0


async def one_stream(t: rb.Target, req: bytes, res: StreamResult, timeout: float) -> None:
    writer = None
    try:
        async with asyncio.timeout(timeout):
            res.t_conn_start = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", t.port, limit=1 << 20)
            res.t_connected = time.perf_counter()
            writer.write(req)
            res.t_sent = time.perf_counter()
            r = await read_response(reader)
        res.t_end = time.perf_counter()
        res.chunks = len(r.chunk_times)
        res.t_first = r.chunk_times[0] if r.chunk_times else None
        res.events, content, done = sse_check(r.body)
        if r.status != 200:
            res.why = f"HTTP {r.status}: {r.body[:200]!r}"
        elif not done:
            res.why = "no [DONE]"
        elif content != CONTENT:
            res.why = f"content {content!r}"
        else:
            res.ok = True
    except Exception as e:  # noqa: BLE001
        res.t_end = time.perf_counter()
        res.why = f"{type(e).__name__}: {e}"[:200]
    finally:
        if writer is not None:
            writer.close()


def tcp_ext() -> dict[str, int]:
    """System-wide TCP counters (/proc/net/netstat): a full listen queue shows as ListenOverflows."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    out = {}
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            out = dict(zip(names.split()[1:], map(int, values.split()[1:])))
    return {k: out.get(k, 0) for k in ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop")}


def listen_backlog(port: int) -> int | None:
    """The accept-queue length a listener asked for (`ss -ltn`: Send-Q of a LISTEN socket)."""
    try:
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
        return int(out.split()[2])
    except Exception:  # noqa: BLE001
        return None


def stream_round(inst: Instance, args, rnd: int) -> dict:
    n = args.streams
    base_rows = settle_ledger(inst)
    base_counts = ledger_counts(inst)
    base_rowid = max_rowid(inst)
    time.sleep(1.0)
    rss_before = rb.tree_rss_mb(inst.pid)
    fds_before = fd_count(inst.pid)
    cpu0 = rb.tree_cpu(inst.pid)
    net0 = tcp_ext()
    foreign = Foreign()
    results: list[StreamResult] = []
    open_now = {"n": 0}
    pids = rb.tree(inst.pid)
    sampler = Sampler(inst.pid, 0.1, lambda: {"open": open_now["n"], "fds": fd_count(inst.pid),
                                              "cpu": rb.cpu_seconds(pids)})
    stream_len = 8 * args.stream_chunk_delay
    log(f"[streams] round {rnd}: opening {n} streams over {args.ramp:.1f}s, each ~{stream_len:.1f}s long ...")

    async def go():
        async def counter():  # streams sent and not finished, from the client's side
            while True:
                open_now["n"] = sum(1 for r in results if r.t_sent and r.t_end is None)
                await asyncio.sleep(0.1)
        c = asyncio.create_task(counter())
        try:
            return await run_streams(inst.target, n, args.ramp, stream_len * 3 + 60, results)
        finally:
            c.cancel()

    sampler.start()
    t_start = asyncio.run(go())
    t_done = time.perf_counter()
    time.sleep(0.5)
    samples = sampler.stop()
    cpu = rb.tree_cpu(inst.pid) - cpu0
    other_pct = foreign.pct()
    net = {k: v - net0[k] for k, v in tcp_ext().items()}
    hwm = hwm_mb(inst.pid)

    ok = [r for r in results if r.ok]
    bad = [r for r in results if not r.ok]
    why = collections.Counter(r.why[:8] if r.why.startswith("HTTP") else r.why.split(":")[0] for r in bad)
    ttfb = [r.t_first - r.t_sent for r in results if r.t_first]
    dur = [r.t_end - r.t_sent for r in ok]
    spread = [r.t_end - r.t_first for r in ok if r.t_first]  # first event to end of stream, at the client
    connect = [r.t_connected - r.t_conn_start for r in results if r.t_connected]
    first_end = min((r.t_end for r in ok), default=None)
    first_before_any_end = sum(1 for r in results if r.t_first and first_end and r.t_first < first_end)
    ev = sorted([(r.t_sent, 1) for r in results if r.t_sent] + [(r.t_end, -1) for r in results if r.t_sent])
    cur = peak_open = 0
    for _, d in ev:  # the most streams in flight at one time (request sent, response not yet complete)
        cur += d
        peak_open = max(peak_open, cur)
    peak = max(samples, key=lambda s: s["rss"]) if samples else {"rss": 0.0, "open": 0}
    rss_full = [s["rss"] for s in samples if s.get("open", 0) >= n * 0.99]

    rows = settle_ledger(inst, want=base_rows + n)
    new = ledger_counts(inst) - base_counts
    gw_ttfb, gw_lat = ledger_times(inst, base_rowid)
    ramp = [s for s in samples if s["t"] <= args.ramp + 0.5]
    ramp_cpu = ((ramp[-1]["cpu"] - ramp[0]["cpu"]) / (ramp[-1]["t"] - ramp[0]["t"]) * 100
                if len(ramp) >= 2 and ramp[-1]["t"] > ramp[0]["t"] else None)
    time.sleep(5.0)
    rss_after = rb.tree_rss_mb(inst.pid)
    no_buffer = bool(ttfb) and pct(ttfb, 99) < stream_len / 4 and bool(spread) and min(spread) > stream_len * 0.75
    return {
        "round": rnd, "n": n, "ok": len(ok), "failed": dict(why), "sample_failures": [r.why for r in bad[:5]],
        "wall": t_done - t_start, "stream_len": stream_len, "ramp": args.ramp, "chunk_delay": args.stream_chunk_delay,
        "ttfb_p50": pct(ttfb, 50), "ttfb_p99": pct(ttfb, 99), "ttfb_max": max(ttfb, default=None),
        "connect_p50": pct(connect, 50), "connect_p99": pct(connect, 99), "connect_max": max(connect, default=None),
        "connect_over_500ms": sum(1 for c in connect if c > 0.5),
        "dur_p50": pct(dur, 50), "dur_max": max(dur, default=None),
        "spread_min": min(spread, default=None), "spread_p50": pct(spread, 50),
        "first_before_any_end": first_before_any_end, "peak_open": peak_open,
        "gw_ttfb_p50": pct(gw_ttfb, 50), "gw_ttfb_p99": pct(gw_ttfb, 99), "gw_lat_p50": pct(gw_lat, 50),
        "ramp_cpu_pct": ramp_cpu,
        "rss_before": rss_before, "rss_peak": peak["rss"], "rss_peak_open": peak.get("open"),
        "rss_full_median": pct(rss_full, 50) if rss_full else None, "rss_hwm": hwm, "rss_after": rss_after,
        "per_stream_kb": (peak["rss"] - rss_before) * 1024 / n,
        "fds_before": fds_before, "fds_peak": max((s.get("fds") or 0 for s in samples), default=0),
        "fds_after": fd_count(inst.pid), "cpu": cpu, "other_pct": other_pct, "net": net,
        "ledger_before": base_rows, "ledger_after": rows, "ledger_new": rows - base_rows,
        "ledger_new_by_status": {f"{s}{' streamed' if st else ''}": c for (s, st), c in new.items()},
        "ledger_ok": rows - base_rows == n and new.get((200, True), 0) == n, "no_buffer": no_buffer,
        "samples": samples,
    }


def measure_streams(args) -> tuple[str, dict]:
    inst = start_instance("streams", args.stream_chunk_delay)
    try:
        backlog = listen_backlog(inst.target.port)
        warm_up(inst.target)
        rounds = [stream_round(inst, args, i + 1) for i in range(args.stream_rounds)]
        cli_rows = cli_request_count(inst)
        ledger_live = sum(ledger_counts(inst).values())
        problems = log_problems("tollgate-sqlite")
        stop_instance()
        after_stop = sum(ledger_counts(inst).values())  # after the gateway's graceful stop
    except BaseException:
        stop_instance()
        raise
    for r in rounds:
        (BASE_WORK / "streams" / f"samples-round{r['round']}.json").write_text(json.dumps(r.pop("samples")))
    data = {"rounds": rounds, "backlog": backlog, "ledger_cli": cli_rows, "ledger_live": ledger_live,
            "ledger_after_stop": after_stop, "log_problems": problems[:20],
            "ledger_ok": all(r["ledger_ok"] for r in rounds) and cli_rows == ledger_live == after_stop}
    return streams_md(data), data


def warm_up(t: rb.Target) -> None:
    w = asyncio.run(rb.load(t, False, 4, 40, 60))
    s = asyncio.run(rb.load(t, True, 4, 8, 60))
    if w.ok == 0 or s.ok == 0:
        raise RuntimeError(f"warm-up failed: {w.sample_error or s.sample_error}")


async def run_streams(t: rb.Target, n: int, ramp: float, timeout: float, ref: list) -> float:
    """Start n streams over `ramp` s (a batch every 50 ms); results land in `ref` (which the open-stream
    counter reads as it fills). Returns the start time."""
    req = request_bytes(t, stream=True)
    ref.extend(StreamResult() for _ in range(n))
    tasks = []
    start = time.perf_counter()
    steps = max(1, int(ramp / 0.05))
    batch = max(1, -(-n // steps))
    for i in range(n):
        tasks.append(asyncio.create_task(one_stream(t, req, ref[i], timeout)))
        if (i + 1) % batch == 0 and i + 1 < n:
            await asyncio.sleep(max(0.0, start + (i + 1) // batch * 0.05 - time.perf_counter()))
    await asyncio.gather(*tasks)
    return start


def yes(b: bool) -> str:
    return "PASS" if b else "FAIL"


def streams_md(data: dict) -> str:
    rounds = data["rounds"]
    d = rounds[0]
    n = d["n"]
    out = [f"## {n:,} concurrent open streams\n"]
    out.append(f"{n:,} streamed chat completions (`gpt-4o-mini`, `\"stream\": true`) through the forward endpoint, "
               f"each on its own new connection, started over {d['ramp']:.1f} s; the mock sends 9 SSE events "
               f"{d['chunk_delay'] * 1000:.0f} ms apart (streams of {d['stream_len']:.1f} s; the client gets 8, Tollgate "
               f"keeps the usage event it asked for). {len(rounds)} round(s) on the same gateway, one after the "
               f"other, so a second round shows whether memory kept after the first is reused or leaked. The "
               f"gateway's listening socket has an accept queue of {data['backlog']} (`ss -ltn` Send-Q).\n")

    def col(r):
        return [
            f"**{r['ok']:,} / {n:,}**" + (f" — failures: {r['failed']}" if r["failed"] else ""),
            f"{r['peak_open']:,} in flight at the peak; {r['first_before_any_end']:,} had their first event "
            f"before any stream finished",
            f"p50 {ms(r['ttfb_p50'])}, p99 {ms(r['ttfb_p99'])}, max {ms(r['ttfb_max'])}",
            f"p50 {ms(r['connect_p50'])}, p99 {ms(r['connect_p99'])}, max {ms(r['connect_max'])}; "
            f"{r['connect_over_500ms']} took > 0.5 s; kernel ListenOverflows +{r['net']['ListenOverflows']} "
            f"(system-wide)",
            f"p50 {r['dur_p50']:.2f} s, max {r['dur_max']:.2f} s" if r["dur_p50"] else "—",
            f"min {r['spread_min']:.2f} s, p50 {r['spread_p50']:.2f} s" if r["spread_min"] is not None else "—",
            f"{yes(r['no_buffer'])} (TTFB p99 {ms(r['ttfb_p99'])} vs streams of {r['stream_len']:.1f} s; "
            f"events kept their spacing)",
            f"upstream headers after p50 {ms(r['gw_ttfb_p50'])}, p99 {ms(r['gw_ttfb_p99'])} (ledger `ttfb_ms`); "
            f"whole stream p50 {r['gw_lat_p50']:.2f} s" if r["gw_lat_p50"] is not None else "—",
            f"{r['ramp_cpu_pct']:.0f}% of its CPU" if r["ramp_cpu_pct"] is not None else "—",
            f"{r['rss_before']:.1f} MB",
            f"{r['rss_peak']:.1f} MB (first reached with {r['rss_peak_open']:,} of them still open)"
            + (f"; median {r['rss_full_median']:.1f} MB while all were open" if r["rss_full_median"] else "")
            + (f"; VmHWM {r['rss_hwm']:.1f} MB" if r["rss_hwm"] else ""),
            f"{r['per_stream_kb']:.0f} KB",
            f"{r['rss_after']:.1f} MB",
            f"{r['fds_before']} / {r['fds_peak']} / {r['fds_after']}",
            f"{r['cpu']:.1f} s ({r['cpu'] / n * 1000:.2f} ms per stream); other processes "
            f"{r['other_pct']:.0f}% of a CPU",
            f"{yes(r['ledger_ok'])}: {r['ledger_new']:,} new rows ({r['ledger_new_by_status']})",
        ]

    labels = ["completed OK ([DONE] + full content)", "open at once",
              "time to first byte (request sent → first event)", "connect (TCP to the gateway)",
              "stream duration at the client", "first event → end, at the client", "no body buffering",
              "as the gateway recorded it (from its request hook)", "gateway CPU during the ramp",
              "gateway RSS before (after a warm-up of 48 requests)", "gateway RSS peak (100 ms samples)",
              "gateway RSS per open stream ((peak − before) / streams)", "gateway RSS after (5 s after the last stream)",
              "gateway open fds before / peak / after", "gateway CPU", "ledger rows for the streams"]
    cols = [col(r) for r in rounds]
    out.append("| figure | " + " | ".join(f"round {r['round']}" for r in rounds) + " |")
    out.append("|---|" + "---|" * len(rounds))
    for i, label in enumerate(labels):
        out.append(f"| {label} | " + " | ".join(c[i] for c in cols) + " |")
    out.append(f"\nLedger in all: {yes(data['ledger_ok'])} — `tollgate usage --json` counts {data['ledger_cli']:,} "
               f"rows (48 warm-up + {len(rounds)} × {n:,}); {data['ledger_after_stop']:,} after the gateway stopped.\n")
    if data["log_problems"]:
        out.append("Gateway log lines that look like trouble:\n\n```\n" + "\n".join(data["log_problems"]) + "\n```\n")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# 2. RSS soak under mixed load
# ------------------------------------------------------------------------------------------------

KINDS = [  # kind, weight, stream, model, wrong key, expected status
    ("non-streamed", 68, False, rb.MODEL, False, 200),
    ("streamed", 27, True, rb.MODEL, False, 200),
    ("wrong key (401)", 2, False, rb.MODEL, True, 401),  # or 429 once the auth throttle steps in
    ("mock-error-500", 2, False, "gpt-4o-mini-mock-error-500", False, 500),
    ("mock-error-429", 1, True, "gpt-4o-mini-mock-error-429", False, 429),
]


@dataclass
class KindStats:
    sent: int = 0
    ok: int = 0
    forwarded: int = 0  # answered by the mock (x-mock-seq header), whatever the outcome
    statuses: collections.Counter = field(default_factory=collections.Counter)
    bad: collections.Counter = field(default_factory=collections.Counter)  # unexpected outcome -> count
    lat: list[float] = field(default_factory=list)
    sample_bad: str = ""


class SoakLoad:
    def __init__(self, t: rb.Target, clients: int, seed: int, rate: float):
        self.t, self.clients, self.rate = t, clients, rate
        self.rng = random.Random(seed)
        self.reqs = {k[0]: request_bytes(t, stream=k[2], model=k[3], auth=WRONG_KEY if k[4] else None) for k in KINDS}
        self.stats = {k[0]: KindStats() for k in KINDS}
        self.unknown = 0  # exceptions after the request was sent: forwarded or not, we cannot tell
        self.exceptions: collections.Counter = collections.Counter()
        self.done = 0
        self.stop_at = 0.0
        self.phase = "warm-up"

    def pick(self):
        x = self.rng.uniform(0, sum(k[1] for k in KINDS))
        for k in KINDS:
            x -= k[1]
            if x <= 0:
                return k
        return KINDS[0]

    async def client(self, idx: int):
        reader = writer = None
        period = self.clients / self.rate if self.rate else 0.0
        nxt = time.perf_counter() + (idx * period / self.clients if period else 0)
        while time.perf_counter() < self.stop_at:
            if period:
                await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
                nxt += period
            kind, _, stream, _, _, expect = self.pick()
            st = self.stats[kind]
            sent = False
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.t.port, limit=1 << 20), 10)
                t0 = time.perf_counter()
                async with asyncio.timeout(30):
                    writer.write(self.reqs[kind])
                    sent = True
                    st.sent += 1
                    r = await read_response(reader)
                st.lat.append(time.perf_counter() - t0)
                st.statuses[r.status] += 1
                if "x-mock-seq" in r.headers:
                    st.forwarded += 1
                # The failed-auth throttle (issue 5) answers a client address that keeps sending wrong keys
                # 429 too_many_failed_auths: from 127.0.0.1, after 20 of them in 60 s.
                good = r.status == expect or (expect == 401 and r.status == 429 and b"too_many_failed_auths" in r.body)
                if good and expect == 200:
                    if stream:
                        _, content, done = sse_check(r.body)
                        good = done and content == CONTENT
                    else:
                        good = CONTENT.encode() in r.body
                if good:
                    st.ok += 1
                else:
                    st.bad[f"HTTP {r.status}" + ("" if r.status != expect else " (bad body)")] += 1
                    st.sample_bad = st.sample_bad or f"HTTP {r.status}: {r.body[:300]!r}"
                if not r.keep_alive:
                    writer.close()
                    writer = None
            except Exception as e:  # noqa: BLE001
                what = f"{type(e).__name__}"
                self.exceptions[what] += 1
                if sent:
                    self.unknown += 1
                    st.bad[what] += 1
                    st.sample_bad = st.sample_bad or f"{what}: {e}"[:300]
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.2)
            self.done += 1
        if writer is not None:
            writer.close()

    async def run(self, seconds: float):
        self.stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(self.client(i) for i in range(self.clients)))


def measure_soak(args) -> tuple[str, dict]:
    inst = start_instance("soak", args.soak_chunk_delay)
    try:
        base_rows = settle_ledger(inst)
        rss_idle = rb.tree_rss_mb(inst.pid)
        load = SoakLoad(inst.target, args.clients, args.seed, args.rate)
        cpu_prev = {"cpu": rb.tree_cpu(inst.pid), "t": time.monotonic(), "done": 0}

        def extra():
            now, cpu = time.monotonic(), rb.tree_cpu(inst.pid)
            dt = max(1e-9, now - cpu_prev["t"])
            s = {"phase": load.phase, "done": load.done, "fds": fd_count(inst.pid), "threads": thread_count(inst.pid),
                 "cpu_pct": (cpu - cpu_prev["cpu"]) / dt * 100, "rps": (load.done - cpu_prev["done"]) / dt}
            cpu_prev.update(cpu=cpu, t=now, done=load.done)
            return s

        total = args.warmup + args.soak_minutes * 60
        log(f"[soak] {args.clients} clients, {args.warmup:.0f}s warm-up + {args.soak_minutes:g} min "
            f"({'unthrottled' if not args.rate else f'{args.rate:g} req/s'}), RSS every {args.sample_every:g}s ...")
        foreign = Foreign()
        cpu0 = rb.tree_cpu(inst.pid)
        sampler = Sampler(inst.pid, args.sample_every, extra)
        sampler.start()

        def mark_warm():
            time.sleep(args.warmup)
            load.phase = "soak"
            log(f"[soak] warm-up over after {load.done} requests: RSS {rb.tree_rss_mb(inst.pid):.1f} MB")

        def progress():
            while not sampler.stop_ev.wait(60):
                s = sampler.samples[-1] if sampler.samples else {}
                log(f"[soak] {s.get('t', 0):5.0f}s  {load.done} requests  RSS {s.get('rss', 0):.1f} MB  "
                    f"fds {s.get('fds')}  gateway CPU {s.get('cpu_pct', 0):.0f}%")

        threading.Thread(target=mark_warm, daemon=True).start()
        threading.Thread(target=progress, daemon=True).start()
        t0 = time.monotonic()
        interrupted = False
        try:
            asyncio.run(load.run(total))
        except KeyboardInterrupt:
            interrupted = True
            log("[soak] interrupted: reporting what ran")
        wall = time.monotonic() - t0
        time.sleep(0.2)
        samples = sampler.stop()
        cpu = rb.tree_cpu(inst.pid) - cpu0
        other_pct = foreign.pct()
        forwarded = sum(s.forwarded for s in load.stats.values())
        want = base_rows + forwarded
        rows = settle_ledger(inst, want=want, cap=120)
        counts = ledger_counts(inst)
        cli_rows = cli_request_count(inst)
        time.sleep(5)
        rss_idle_after = rb.tree_rss_mb(inst.pid)
        problems = log_problems("tollgate-sqlite")
        stop_instance()
        rows_after_stop = sum(ledger_counts(inst).values())
        aud = audit(inst)
    except BaseException:
        stop_instance()
        raise

    soak = [s for s in samples if s["phase"] == "soak"]
    rss = [s["rss"] for s in soak]
    first = rss[0] if rss else None
    flat = bool(rss) and max(rss) <= first * 1.10 and min(rss) >= first * 0.90
    slope = None
    if len(soak) >= 3:  # least squares, MB per minute
        xs, ys = [s["t"] / 60 for s in soak], rss
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        den = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None
    new_rows = rows - base_rows
    by_status = collections.Counter()
    for (status, _), c in counts.items():
        by_status[status] += c
    lo, hi = forwarded, forwarded + load.unknown
    ledger_ok = lo <= new_rows <= hi and rows_after_stop == rows and cli_rows == rows
    data = {
        "clients": args.clients, "rate": args.rate, "warmup": args.warmup, "minutes": args.soak_minutes,
        "chunk_delay": args.soak_chunk_delay, "wall": wall, "interrupted": interrupted,
        "kinds": {k: {"sent": s.sent, "ok": s.ok, "forwarded": s.forwarded, "statuses": dict(s.statuses),
                      "bad": dict(s.bad), "p50": pct(s.lat, 50), "p99": pct(s.lat, 99), "sample_bad": s.sample_bad}
                  for k, s in load.stats.items()},
        "exceptions": dict(load.exceptions), "unknown": load.unknown, "done": load.done,
        "rss_idle": rss_idle, "rss_first": first, "rss_min": min(rss, default=None), "rss_max": max(rss, default=None),
        "rss_last": rss[-1] if rss else None, "rss_idle_after": rss_idle_after, "flat": flat, "slope": slope,
        "fds": (min((s["fds"] or 0 for s in soak), default=None), max((s["fds"] or 0 for s in soak), default=None)),
        "threads": (min((s["threads"] or 0 for s in soak), default=None),
                    max((s["threads"] or 0 for s in soak), default=None)),
        "cpu": cpu, "other_pct": other_pct, "samples": soak,
        "ledger_before": base_rows, "ledger_rows": rows, "ledger_new": new_rows, "forwarded": forwarded,
        "ledger_by_status": {str(k): v for k, v in sorted(by_status.items(), key=lambda x: str(x[0]))},
        "ledger_cli": cli_rows, "ledger_after_stop": rows_after_stop, "ledger_ok": ledger_ok, "audit": aud,
        "log_problems": problems[:20],
    }
    (BASE_WORK / "soak" / "samples.json").write_text(json.dumps(samples))
    return soak_md(data), data


def soak_md(d: dict) -> str:
    out = [f"## RSS soak: {d['minutes']:g} min of mixed load\n"]
    pace = "closed loop, as fast as the gateway answers" if not d["rate"] else f"paced at {d['rate']:g} req/s in all"
    out.append(f"{d['clients']} clients on keep-alive connections to the forward endpoint ({pace}), "
               f"{d['warmup']:.0f} s of warm-up then {d['minutes']:g} min measured; wall {d['wall']:.0f} s"
               + (" (**interrupted**)" if d["interrupted"] else "") + f". Mock streams: 9 events "
               f"{d['chunk_delay'] * 1000:.0f} ms apart. Gateway CPU {d['cpu']:.0f} s "
               f"({d['cpu'] / d['wall'] * 100:.0f}% of its CPU); other processes on the machine used "
               f"{d['other_pct']:.0f}% of a CPU meanwhile.\n")
    out.append("| kind | sent | as expected | forwarded (mock answered) | statuses | unexpected | p50 | p99 |")
    out.append("|---|---:|---:|---:|---|---|---:|---:|")
    for k, s in d["kinds"].items():
        out.append(f"| {k} | {s['sent']:,} | {s['ok']:,} | {s['forwarded']:,} | "
                   f"{', '.join(f'{a}: {b:,}' for a, b in sorted(s['statuses'].items()))} | "
                   f"{', '.join(f'{a}: {b}' for a, b in s['bad'].items()) or '—'} | {ms(s['p50'])} | {ms(s['p99'])} |")
    tot = sum(s["sent"] for s in d["kinds"].values())
    out.append(f"\n{tot:,} requests sent in all; client-side exceptions: {d['exceptions'] or 'none'}.\n")
    bad_samples = [f"- {k}: `{s['sample_bad']}`" for k, s in d["kinds"].items() if s["sample_bad"]]
    if bad_samples:
        out.append("First unexpected answer per kind:\n\n" + "\n".join(bad_samples) + "\n")
    f = d["rss_first"]
    out.append("| memory (gateway process, RSS) | value |\n|---|---|")
    rows = [
        ("idle, before any load", f"{d['rss_idle']:.1f} MB"),
        (f"first sample after the {d['warmup']:.0f} s warm-up (the reference)", f"{f:.1f} MB" if f else "—"),
        ("min / max / last over the soak", f"{d['rss_min']:.1f} / {d['rss_max']:.1f} / {d['rss_last']:.1f} MB"
         + (f" ({(d['rss_min'] / f - 1) * 100:+.1f}% / {(d['rss_max'] / f - 1) * 100:+.1f}% / "
            f"{(d['rss_last'] / f - 1) * 100:+.1f}%)" if f else "")),
        ("trend (least squares over the soak)", f"{d['slope']:+.3f} MB/min" if d["slope"] is not None else "—"),
        ("flat within 10% of the reference", f"**{'yes' if d['flat'] else 'no'}**"),
        ("5 s after the load stopped", f"{d['rss_idle_after']:.1f} MB"),
        ("open fds / threads, min–max over the soak", f"{d['fds'][0]}–{d['fds'][1]} / {d['threads'][0]}–{d['threads'][1]}"),
    ]
    out += [f"| {a} | {b} |" for a, b in rows]
    # one row a minute
    out.append("\nRSS over time (one sample a minute; every 5 s in bench/work/streams_and_memory/soak/samples.json):\n")
    out.append("| t (s) | RSS MB | vs ref | requests so far | req/s (last 5 s) | gateway CPU | fds |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|")
    soak = d["samples"]
    if soak:
        t_ref = soak[0]["t"]
        picked, nxt = [], t_ref
        for s in soak:
            if s["t"] >= nxt:
                picked.append(s)
                nxt += 60
        if picked[-1] is not soak[-1]:
            picked.append(soak[-1])
        for s in picked:
            out.append(f"| {s['t']:.0f} | {s['rss']:.1f} | {(s['rss'] / f - 1) * 100:+.1f}% | {s['done']:,} | "
                       f"{s['rps']:.0f} | {s['cpu_pct']:.0f}% | {s['fds']} |")
    out.append("")
    out.append("| ledger | value |\n|---|---|")
    unk = f" (+ up to {d['unknown']} sent whose answer never came)" if d["unknown"] else ""
    out.append(f"| rows vs forwarded requests | **{yes(d['ledger_ok'])}**: {d['ledger_new']:,} new rows, "
               f"{d['forwarded']:,} requests the client saw forwarded{unk}; the 401s are not recorded |")
    out.append(f"| rows by status | {d['ledger_by_status']} (incl. {d['ledger_before']} from before) |")
    out.append(f"| `tollgate usage --json` total / after the gateway stopped | {d['ledger_cli']:,} / "
               f"{d['ledger_after_stop']:,} |")
    a = d["audit"]
    verdict = "ok: every balance equals the sum of its entries" if a.get("ok") else f"FAILED: {a}"
    out.append(f"| `tollgate audit --json` | {verdict} |")
    if d["log_problems"]:
        out.append("\nGateway log lines that look like trouble:\n\n```\n" + "\n".join(d["log_problems"]) + "\n```")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["streams", "soak"], help="run one measurement (default: both)")
    ap.add_argument("--streams", type=int, default=1000, help="concurrent streams")
    ap.add_argument("--stream-chunk-delay", type=float, default=1.0,
                    help="mock's delay between the 9 SSE events of a stream, s (8 delays: 8 s at 1.0)")
    ap.add_argument("--ramp", type=float, default=2.0, help="seconds over which the streams are started")
    ap.add_argument("--stream-rounds", type=int, default=2,
                    help="rounds of --streams streams on the same gateway (a 2nd shows reuse vs. leak)")
    ap.add_argument("--soak-minutes", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds of load before the RSS reference sample")
    ap.add_argument("--clients", type=int, default=12, help="concurrent clients in the soak")
    ap.add_argument("--rate", type=float, default=0.0, help="soak: total requests/s (0: unthrottled closed loop)")
    ap.add_argument("--soak-chunk-delay", type=float, default=0.01, help="mock's delay between SSE events in the soak")
    ap.add_argument("--sample-every", type=float, default=5.0, help="soak: RSS sample interval, s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke run: 100 streams, 1-minute soak, 10 s warm-up")
    ap.add_argument("--out", default=str(BENCH / "streams_and_memory.md"))
    args = ap.parse_args()
    if args.quick:
        args.streams, args.soak_minutes, args.warmup = 100, 1.0, 10.0
        args.stream_chunk_delay, args.ramp = 0.5, 0.5
    if (os.cpu_count() or 1) < 2:
        log("needs 2 CPUs (client + mock on 0, gateway on 1)")
        return 2
    os.sched_setaffinity(0, {rb.CLIENT_CPU})
    BASE_WORK.mkdir(parents=True, exist_ok=True)
    rb.LOGS = BASE_WORK / "logs"
    rb.LOGS.mkdir(parents=True, exist_ok=True)
    fd_note = raise_fd_limit(max(4096, 3 * args.streams + 1024))
    rb.watch_signals()
    t_start = time.monotonic()
    before = machine_note()
    sections, summary = [], {}
    rc = 0
    try:
        if args.only in (None, "streams"):
            md, d = measure_streams(args)
            sections.append(md)
            summary["streams"] = d
            print(md, flush=True)
        if args.only in (None, "soak"):
            md, d = measure_soak(args)
            sections.append(md)
            summary["soak"] = {k: v for k, v in d.items() if k != "samples"}
            print(md, flush=True)
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    except Exception:
        traceback.print_exc()
        rc = 1
    finally:
        rb.stop_all()
    if not sections:
        return rc or 1
    import mitmproxy.version
    cmd = " ".join([os.path.relpath(sys.executable, rb.PROJECT) if sys.executable.startswith(str(rb.PROJECT))
                    else sys.executable, os.path.relpath(__file__, rb.PROJECT), *sys.argv[1:]])
    head = ["# Tollgate: concurrent streams and memory over time\n",
            f"Run {time.strftime('%Y-%m-%d %H:%M %Z')} on this machine ({os.cpu_count()} cores), wall "
            f"{time.monotonic() - t_start:.0f} s. Client + mock provider (tests/mock_provider.py via "
            f"bench/mock_server.py) pinned to CPU {rb.CLIENT_CPU}, Tollgate (`tollgate-proxy`, SQLite ledger, "
            f"started as bench/run_bench.py does) pinned to CPU {rb.GATEWAY_CPU}. mitmproxy "
            f"{mitmproxy.version.VERSION}, Python {sys.version.split()[0]}. {fd_note}.\n",
            f"Command: `{cmd}`\n",
            f"Machine at the start: {before}. At the end: {machine_note()}.\n"]
    text = "\n".join(head + sections)
    Path(args.out).write_text(text)
    (BASE_WORK / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    log(f"wrote {args.out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
