#!/usr/bin/env python3
"""Issue 5's fault soak: mixed load through one Tollgate while its dependencies and itself fail. Run by hand.

One gateway (`tollgate-proxy`, forward endpoint) with its PostgreSQL ledger on a private PostgreSQL server and
its holds on a private redis-server (tests/harness.py's PrivatePostgres / PrivateRedis, so the shared servers on
5432 / 6379 are never touched), in front of the mock provider (bench/mock_server.py). For --minutes (10),
--clients paced closed-loop clients send a mix of requests, some of them faulty by design:

  non-streamed, streamed        the normal traffic
  client hang-up                a stream the client closes after its first event
  mock-cut stream               a stream the provider cuts (2 events, then the connection closes)
  mock-error-500 / -429         provider errors, answered and recorded
  wrong key                     401: never forwarded, never recorded

and, at seeded random times (--seed), one after the other, the process faults:

  postgres   PostgreSQL stopped (immediate) for 10-30 s, then started: the gateway serves on
             (tollgate_ledger_outage=serve), journals usage and writes it when the database returns
  redis      redis-server killed for 2-5 s and restarted empty: holds fall back to the process
  sigkill    the gateway killed with SIGKILL and restarted: it replays its journal
  sigterm    the gateway stopped with SIGTERM (graceful drain) and restarted

After a final graceful stop it checks the ledger against what the clients saw (by request id): every response
received completely (a 200 with its whole body / [DONE], or a provider error) is there once, with its status;
no row has an id the clients never saw; nothing refused before forwarding is there; ids seen but missing may
only be requests in flight at a SIGKILL; `tollgate audit` is ok; the wallet moved by exactly the sum of
`charged`. The gateway's RSS is sampled every --sample-every s in each process lifetime (a restart resets it).

Run:  .venv/bin/python bench/fault_soak.py [--quick] [--minutes M] [--seed S]   (see bench/README.md)
Writes the summary to stdout and bench/fault_soak.md; logs, every request and every sample under
bench/work/fault_soak/. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run_bench as rb  # noqa: E402  (their module level only defines things)
import streams_and_memory as sm  # noqa: E402

from tests.harness import GatewayProcess, PrivatePostgres, PrivateRedis  # noqa: E402

WORK = rb.WORK / "fault_soak"
CHAT = "/v1/forward?u=https://api.openai.com/v1/chat/completions"
# the mock's fault models are no genai-prices model: price them like gpt-4o-mini, so cut streams (estimated) cost
PRICES = [{"provider": "openai", "model": "gpt-4o-mini-mock-*", "input_mtok": "0.15", "output_mtok": "0.60"}]
AFTER_FORWARD_CODES = {"upstream_unreachable", "upstream_timeout", "proxy_error"}  # the gateway records these
KILL_GRACE = 0.5  # a cut or hang-up the client saw end this shortly before a SIGKILL may not be recorded yet
DEAD_LETTERS = rb.PROJECT / "data" / "ledger-rejected.jsonl"
log = rb.log


# ------------------------------------------------------------------------------------------------
# The request mix
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    name: str
    weight: int
    stream: bool
    model: str
    expect: str  # the outcome it should have: ok | provider error | hung up | cut | refused
    status: int
    wrong_key: bool = False
    hang_up: bool = False


KINDS = [
    Kind("non-streamed", 54, False, rb.MODEL, "ok", 200),
    Kind("streamed", 26, True, rb.MODEL, "ok", 200),
    Kind("client hang-up", 5, True, rb.MODEL, "hung up", 200, hang_up=True),
    Kind("mock-cut stream", 4, True, "gpt-4o-mini-mock-cut", "cut", 200),
    Kind("mock-error-500", 4, False, "gpt-4o-mini-mock-error-500", "provider error", 500),
    Kind("mock-error-429 stream", 4, True, "gpt-4o-mini-mock-error-429", "provider error", 429),
    Kind("wrong key (401)", 3, False, rb.MODEL, "refused", 401, wrong_key=True),
]
COMPLETE = ("ok", "provider error")  # the client received the whole response


@dataclass
class Attempt:
    """One request as the client saw it; times are seconds since the run started."""

    kind: str
    t_sent: float
    t_end: float | None = None
    status: int | None = None
    rid: str | None = None
    forwarded: bool = False  # the mock answered it (its x-mock-seq header came through)
    code: str | None = None  # the gateway's own error code, when it answered itself
    outcome: str = "no answer"  # ok | provider error | refused | cut | hung up | no answer | unexpected
    detail: str = ""

    @property
    def should_be_in_ledger(self) -> bool:
        return bool(self.rid) and (self.forwarded or self.code in AFTER_FORWARD_CODES)


# ------------------------------------------------------------------------------------------------
# Client: paced keep-alive connections; each request keeps what it saw even when cut short
# ------------------------------------------------------------------------------------------------

def judge(kind: Kind, a: Attempt, body: bytes) -> None:
    """The outcome of a response read to its end."""
    if a.status == 200:
        if kind.stream:
            _, content, done = sm.sse_check(body)
            good = done and content == sm.CONTENT
        else:
            good = sm.CONTENT.encode() in body
        a.outcome, a.detail = ("ok", "") if good else ("unexpected", f"200 with a bad body: {body[:160]!r}")
    elif a.forwarded:
        a.outcome = "provider error"
    else:
        try:
            a.code = json.loads(body)["error"]["code"]
            a.outcome = "refused"
        except (ValueError, KeyError, TypeError):
            a.outcome, a.detail = "unexpected", f"{a.status}: {body[:160]!r}"


class Load:
    def __init__(self, port: int, key: str, clients: int, rate: float, seed: int, t0: float):
        target = rb.Target("tollgate", "Tollgate, forward endpoint", port, CHAT, {"Authorization": f"Bearer {key}"},
                           None)
        self.port, self.clients, self.rate, self.t0 = port, clients, rate, t0
        self.rng = random.Random(seed)
        self.requests = {k.name: sm.request_bytes(target, stream=k.stream, model=k.model,
                                                  auth=sm.WRONG_KEY if k.wrong_key else None) for k in KINDS}
        self.attempts: list[Attempt] = []
        self.refused_connects = 0
        self.stop_at = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def pick(self) -> Kind:
        return self.rng.choices(KINDS, weights=[k.weight for k in KINDS])[0]

    async def run(self, seconds: float) -> None:
        self.stop_at = self.now() + seconds
        await asyncio.gather(*(self.client(i) for i in range(self.clients)))

    async def client(self, idx: int) -> None:
        period = self.clients / self.rate
        nxt = self.now() + idx * period / self.clients
        conn = None
        while self.now() < self.stop_at:
            await asyncio.sleep(max(0.0, nxt - self.now()))
            nxt = max(nxt + period, self.now())  # after a stall, no burst to catch up
            if conn is None:
                try:
                    conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20), 5)
                except (OSError, asyncio.TimeoutError):
                    self.refused_connects += 1  # the gateway is restarting: not a request
                    continue
            kind = self.pick()
            a = Attempt(kind.name, self.now())
            self.attempts.append(a)
            keep = await self.one(conn, kind, a)
            a.t_end = self.now()
            if not keep:
                conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    async def one(self, conn, kind: Kind, a: Attempt) -> bool:
        """Send one request and read what comes back into `a`; returns whether the connection is reusable."""
        reader, writer = conn
        body = b""
        try:
            async with asyncio.timeout(30):
                writer.write(self.requests[kind.name])
                a.status, headers, close = await rb.read_head(reader)
                a.rid, a.forwarded = headers.get("x-tollgate-request-id"), "x-mock-seq" in headers
                async for piece in rb.body_pieces(reader, headers):
                    body += piece
                    if kind.hang_up and a.status == 200 and b"data:" in body:
                        a.outcome = "hung up"
                        return False
            judge(kind, a, body)
            return not close
        except Exception as e:  # noqa: BLE001  a cut, a reset, a timeout: what was seen stays in `a`
            a.outcome = "cut" if a.status is not None else "no answer"
            a.detail = f"{type(e).__name__} after {len(body)} body bytes" if a.status is not None else type(e).__name__
            return False


# ------------------------------------------------------------------------------------------------
# The gateway across its lifetimes (one process each), with RSS sampled per lifetime
# ------------------------------------------------------------------------------------------------

@dataclass
class Lifetime:
    n: int
    pid: int
    started: float
    log: Path
    clock: str = ""
    sampler: sm.Sampler | None = None
    ended: float | None = None
    ended_by: str = "running"
    exit_code: int | None = None
    replayed: int = 0
    samples: list[dict] = field(default_factory=list)


def pin(pid: int, cpu: int) -> None:
    """Every thread of the process (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:
            pass


class Gateway:
    """One tollgate-proxy on a fixed port and journal directory, restarted as the faults demand."""

    def __init__(self, process: GatewayProcess, clock, sample_every: float, progress):
        self.process, self.clock, self.sample_every, self.progress = process, clock, sample_every, progress
        self.lifetimes: list[Lifetime] = []

    @property
    def current(self) -> Lifetime:
        return self.lifetimes[-1]

    def start(self) -> Lifetime:
        n = len(self.lifetimes) + 1
        self.process.log = WORK / f"gateway-{n}.log"
        self.process.start()
        pid = self.process.proc.pid
        pin(pid, rb.GATEWAY_CPU)
        text = self.process.log.read_text(errors="replace")
        replayed = re.search(r"replaying (\d+) journaled usage records", text)
        life = Lifetime(n, pid, self.clock(), self.process.log, time.strftime("%H:%M:%S"),
                        replayed=int(replayed[1]) if replayed else 0)
        life.sampler = sm.Sampler(pid, self.sample_every, lambda: {"requests": self.progress(), "at": self.clock()})
        life.sampler.start()
        self.lifetimes.append(life)
        return life

    def _signal(self, signum: int) -> Lifetime:
        """Stop sampling (a dying process is no steady state), then signal it."""
        life = self.current
        life.samples = life.sampler.stop()
        life.ended = self.clock()
        self.process.proc.send_signal(signum)
        return life

    def kill(self) -> float:
        """SIGKILL; returns its time."""
        life = self._signal(signal.SIGKILL)
        life.ended_by, life.exit_code = "SIGKILL", self.process.proc.wait(10)
        return life.ended

    def terminate(self, how: str, timeout: float = 60) -> Lifetime:
        """SIGTERM and wait for the graceful drain and flush (SIGKILL only if it never exits)."""
        life = self._signal(signal.SIGTERM)
        try:
            life.exit_code = self.process.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.proc.kill()
            life.exit_code = self.process.proc.wait(10)
            how += f" (did not exit within {timeout:.0f} s: SIGKILLed)"
        life.ended_by = how
        return life


# ------------------------------------------------------------------------------------------------
# Faults: a seeded plan, run one after the other by a thread
# ------------------------------------------------------------------------------------------------

@dataclass
class Fault:
    name: str  # postgres | redis | sigkill | sigterm
    at: float  # planned start, s since the run started
    length: float  # how long the dependency stays down (postgres, redis) or the pause before a restart (sigkill)
    started: float | None = None
    recovered: float | None = None
    clock: str = ""  # wall-clock time it started, to line up with the gateway's logs
    what: str = ""


ESTIMATED_EXTRA = {"postgres": 3.0, "redis": 1.0, "sigkill": 5.0, "sigterm": 6.0}  # restarts, pg_ctl start


def plan_faults(rng: random.Random, counts: dict[str, int], start: float, end: float) -> list[Fault]:
    """The faults in random order at random, non-overlapping times between start and end."""
    lengths = {"postgres": lambda: rng.uniform(10, 30), "redis": lambda: rng.uniform(2, 5),
               "sigkill": lambda: rng.uniform(0.5, 2), "sigterm": lambda: 0.0}
    faults = [Fault(name, 0.0, lengths[name]()) for name, n in counts.items() for _ in range(n)]
    rng.shuffle(faults)
    busy = sum(f.length + ESTIMATED_EXTRA[f.name] for f in faults)
    slack = end - start - busy
    if slack < 5 * len(faults):
        raise SystemExit(f"{len(faults)} faults (~{busy:.0f} s) do not fit in {end - start:.0f} s: "
                         "fewer faults, or more minutes")
    gaps = sorted(rng.uniform(0, slack) for _ in faults)
    at = start
    for i, f in enumerate(faults):
        f.at = at + gaps[i] - (gaps[i - 1] if i else 0.0)
        at = f.at + f.length + ESTIMATED_EXTRA[f.name]
    return faults


class Injector(threading.Thread):
    def __init__(self, faults: list[Fault], gateway: Gateway, pg: PrivatePostgres, redis: PrivateRedis, clock):
        super().__init__(daemon=True, name="faults")
        self.faults, self.gateway, self.pg, self.redis, self.clock = faults, gateway, pg, redis, clock
        self.stop_ev = threading.Event()
        self.error: str | None = None

    def say(self, f: Fault, text: str) -> None:
        log(f"[{self.clock():6.1f}s {time.strftime('%H:%M:%S')}] {f.name}: {text}")

    def run(self) -> None:
        try:
            for f in self.faults:
                if self.stop_ev.wait(max(0.0, f.at - self.clock())):
                    return
                f.started, f.clock = self.clock(), time.strftime("%H:%M:%S")
                getattr(self, f"inject_{f.name}")(f)
                f.recovered = self.clock()
                self.say(f, f"recovered after {f.recovered - f.started:.1f} s")
                self.stop_ev.wait(3.0)  # let the gateway settle before the next one
        except Exception:  # noqa: BLE001  reported as a failure of the run
            self.error = traceback.format_exc()
            log(f"fault injection failed:\n{self.error}")

    def inject_postgres(self, f: Fault) -> None:
        self.say(f, f"stopping PostgreSQL (immediate) for {f.length:.1f} s")
        self.pg.stop()
        time.sleep(f.length)
        self.pg.start()
        f.what = f"PostgreSQL stopped (pg_ctl -m immediate) for {self.clock() - f.started:.1f} s, then started"

    def inject_redis(self, f: Fault) -> None:
        self.say(f, f"killing redis-server for {f.length:.1f} s")
        self.redis.stop()
        time.sleep(f.length)
        self.redis.start()
        f.what = f"redis-server killed, restarted empty after {self.clock() - f.started:.1f} s"

    def inject_sigkill(self, f: Fault) -> None:
        old = self.gateway.current
        self.say(f, f"SIGKILL to gateway pid {old.pid}")
        f.started = self.gateway.kill()
        time.sleep(f.length)
        new = self.gateway.start()
        f.what = (f"gateway pid {old.pid} SIGKILLed; pid {new.pid} listening {new.started - f.started:.1f} s later, "
                  f"re-submitted the {new.replayed} records of its journal (the ledger skips ids it has)")

    def inject_sigterm(self, f: Fault) -> None:
        old = self.gateway.current
        self.say(f, f"SIGTERM to gateway pid {old.pid}")
        self.gateway.terminate("SIGTERM")
        drained = self.clock() - f.started
        new = self.gateway.start()
        f.what = (f"gateway pid {old.pid} SIGTERMed, exited with {old.exit_code} after {drained:.1f} s; "
                  f"pid {new.pid} listening {new.started - f.started:.1f} s after the signal, "
                  f"re-submitted {new.replayed} journaled records")


# ------------------------------------------------------------------------------------------------
# Accounting
# ------------------------------------------------------------------------------------------------

def in_flight_at_kill(a: Attempt, kills: list[float]) -> bool:
    """Sent before a SIGKILL and not complete before it (from the gateway's side: KILL_GRACE)."""
    end = a.t_end if a.t_end is not None else float("inf")
    return a.outcome not in COMPLETE and any(a.t_sent < t <= end + KILL_GRACE for t in kills)


def account(attempts: list[Attempt], rows: dict[str, dict], kills: list[float]) -> dict:
    """What the ledger holds against what the clients saw, by request id."""
    seen = {a.rid: a for a in attempts if a.rid}
    complete = [a for a in attempts if a.outcome in COMPLETE and a.should_be_in_ledger]
    missing = [a for a in attempts if a.should_be_in_ledger and a.rid not in rows]
    missing_at_kill = [a for a in missing if in_flight_at_kill(a, kills)]
    return {
        "complete": len(complete),
        "complete_in_ledger": sum(1 for a in complete if a.rid in rows),
        "wrong_status": [(a.rid, a.kind, a.status, rows[a.rid]["status"]) for a in complete
                         if a.rid in rows and rows[a.rid]["status"] != a.status],
        "missing_complete": [a for a in complete if a.rid not in rows],
        "missing_at_kill": missing_at_kill,
        "missing_other": [a for a in missing if not in_flight_at_kill(a, kills)],
        "unseen_rows": [rows[r] for r in rows if r not in seen],
        "refused_recorded": [a for a in attempts if a.rid and not a.should_be_in_ledger and a.rid in rows],
        "in_flight_at_kill": sum(1 for a in attempts if in_flight_at_kill(a, kills)),
        "in_flight_at_kill_with_id": sum(1 for a in attempts if a.rid and in_flight_at_kill(a, kills)),
        "ids_given_twice": sum(1 for a in attempts if a.rid) - len(seen),
    }


def rows_by_outcome(attempts: list[Attempt], rows: dict[str, dict]) -> dict[str, collections.Counter]:
    """For each kind/outcome: the ledger rows' (status, usage_source, error) as they came out."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for a in attempts:
        if a.rid in rows:
            r = rows[a.rid]
            err = (r.get("error") or "")[:60]
            row = f"{r['status']} {r['usage_source']}" + (f" error={err!r}" if err else "")
            out[f"{a.kind} / {a.outcome}"][row] += 1
    return out


def log_timeline(life: Lifetime) -> tuple[list[str], collections.Counter]:
    """The gateway's own timestamped lines, consecutive repeats folded; and the untimestamped ones (tracebacks
    printed by the event loop) counted by their first and last line."""
    events: list[list] = []  # [first time, last time, message, count]
    stray: collections.Counter = collections.Counter()
    block: list[str] = []

    def end_block():
        if block:
            head = re.sub(r"0x[0-9a-f]+", "0x…", block[0])
            stray[f"{head} … {block[-1].strip()}" if len(block) > 1 else head] += 1
            block.clear()

    for line in life.log.read_text(errors="replace").splitlines():
        m = re.match(r"\[(\d\d:\d\d:\d\d)\.\d+\] (.*)", line)
        if m is None:
            if line.startswith("Exception in ") or (line.startswith("Traceback")
                                                    and not (block and block[-1].startswith("handle:"))):
                end_block()
            block.append(line)
            continue
        end_block()
        msg = re.sub(r"\b\d+ records", "N records", m[2])
        if events and events[-1][2] == msg:
            events[-1][1], events[-1][3] = m[1], events[-1][3] + 1
        else:
            events.append([m[1], m[1], msg, 1])
    end_block()
    lines = [a + (f"–{b}" if b != a else "") + f" {msg}" + (f" (× {n})" if n > 1 else "") for a, b, msg, n in events]
    return lines, stray


def label(a: Attempt) -> str:
    """The outcome and what came with it, e.g. `refused 503 shutting_down`, `no answer (IncompleteReadError)`."""
    text = a.outcome + (f" {a.status}" if a.status else "") + (f" {a.code}" if a.code else "")
    return text + (f" ({a.detail.split(' after')[0]})" if a.outcome in ("cut", "no answer") else "")


def fault_windows(faults: list[Fault], attempts: list[Attempt]) -> list[dict]:
    """What the clients saw, besides their kinds' expected outcomes, from each fault's start to 2 s after recovery."""
    kinds = {k.name: k for k in KINDS}
    out = []
    for f in faults:
        if f.started is None:
            continue
        end = (f.recovered or f.started) + 2.0
        inside = [a for a in attempts if f.started <= (a.t_end or a.t_sent) <= end]
        odd = collections.Counter(f"{a.kind}: {label(a)}" for a in inside if a.outcome != kinds[a.kind].expect)
        lost = [f"{a.kind} sent {(a.t_sent - f.started) * 1000:+.0f} ms, closed {(a.t_end - f.started) * 1000:+.0f} ms"
                for a in inside if a.outcome == "no answer"]
        out.append({"fault": f.name, "from": f.started, "to": end, "requests": len(inside), "other": dict(odd),
                    "no_answer": lost})
    return out


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def fault_counts(args) -> dict[str, int]:
    per5 = max(1, round(args.minutes / 5))
    return {"postgres": args.pg_outages if args.pg_outages is not None else per5,
            "redis": args.redis_kills if args.redis_kills is not None else per5,
            "sigkill": args.kills if args.kills is not None else per5,
            "sigterm": args.terms if args.terms is not None else max(1, round(args.minutes / 10))}


def set_up(args, mock_port: int) -> tuple[PrivatePostgres, PrivateRedis, GatewayProcess]:
    pg, redis = PrivatePostgres(), PrivateRedis()
    gw_dir = WORK / "gateway"
    gw_dir.mkdir(parents=True)
    process = GatewayProcess(gw_dir, pg.url, {"openai": f"http://127.0.0.1:{mock_port}"}, prices=PRICES,
                             redis_url=redis.url)
    process.admin_key = process.cli_json("init")["secret_key"]
    process.cli("wallet", "topup", "1000")
    log(f"private PostgreSQL on :{pg.port} ({pg.root}), private redis-server on :{redis.port}, "
        f"gateway on :{process.port}, work dir {WORK}")
    return pg, redis, process


def run(args) -> dict:
    rb.WORK, rb.LOGS = WORK, WORK / "logs"  # run_bench's functions read these globals at call time
    rb.LOGS.mkdir(parents=True, exist_ok=True)
    mock, mock_port = rb.start_mock(args.chunk_delay)
    pg, redis, process = set_up(args, mock_port)
    total = args.minutes * 60
    rng = random.Random(args.seed)
    faults = plan_faults(rng, fault_counts(args), args.warmup, total - args.tail)
    dead_before = DEAD_LETTERS.read_text().count("\n") if DEAD_LETTERS.exists() else 0
    try:
        opening = Decimal(process.cli_json("wallet")["balance"])
        t0 = time.monotonic()
        clock = lambda: time.monotonic() - t0  # noqa: E731
        load = Load(process.port, process.admin_key, args.clients, args.rate, args.seed, t0)
        gateway = Gateway(process, clock, args.sample_every, lambda: len(load.attempts))
        gateway.start()
        injector = Injector(faults, gateway, pg, redis, clock)
        log(f"{args.minutes:g} min, {args.clients} clients at {args.rate:g} req/s in all; faults planned at "
            + ", ".join(f"{f.at:.0f}s {f.name}" for f in faults))
        foreign = sm.Foreign()
        before = sm.machine_note()
        injector.start()
        progress = threading.Thread(target=report_progress, args=(load, gateway, clock, injector.stop_ev), daemon=True)
        progress.start()
        interrupted = False
        try:
            asyncio.run(load.run(total))
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted: stopping the faults, then accounting for what ran")
        injector.stop_ev.set()
        injector.join(120)
        wall = clock()
        final = gateway.terminate("final SIGTERM")
        log(f"final graceful stop: exit code {final.exit_code}")
        rows = {r["id"]: r for r in process.cli_json("requests", "--limit", str(len(load.attempts) + 10_000))}
        closing = Decimal(process.cli_json("wallet")["balance"])
        audit = sm.audit(process)
        journal_left = [str(p.relative_to(process.tmp)) for p in (process.tmp / "journal").rglob("*.jsonl")]
    finally:
        if process.proc and process.proc.poll() is None:
            process.stop()
        redis.stop()
        pg.remove()
        rb.stop_all()
    dead_after = DEAD_LETTERS.read_text().count("\n") if DEAD_LETTERS.exists() else 0
    kills = [f.started for f in faults if f.name == "sigkill" and f.started is not None]
    charged = sum((Decimal(r["charged"]) for r in rows.values()), Decimal(0))
    return {
        "args": vars(args), "wall": wall, "interrupted": interrupted, "injector_error": injector.error,
        "machine_before": before, "machine_after": sm.machine_note(), "other_pct": foreign.pct(),
        "faults": faults, "lifetimes": gateway.lifetimes, "attempts": load.attempts,
        "refused_connects": load.refused_connects, "rows": rows, "opening": opening, "closing": closing,
        "charged": charged, "audit": audit, "journal_left": journal_left, "dead_letters": dead_after - dead_before,
        "accounting": account(load.attempts, rows, kills), "windows": fault_windows(faults, load.attempts),
    }


def report_progress(load: Load, gateway: Gateway, clock, stop: threading.Event) -> None:
    while not stop.wait(30):
        life = gateway.current
        s = life.sampler.samples[-1] if life.sampler and life.sampler.samples else {}
        log(f"[{clock():6.1f}s] {len(load.attempts)} requests; gateway #{life.n} pid {life.pid} RSS "
            f"{s.get('rss', 0):.1f} MB")


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def rss_figures(life: Lifetime, warmup: float) -> dict | None:
    """first / min / max / last of the samples after the lifetime's warm-up."""
    rss = [s["rss"] for s in life.samples if s["t"] >= warmup and s["rss"] > 0]
    if not rss:
        return None
    first = rss[0]
    return {"n": len(rss), "first": first, "min": min(rss), "max": max(rss), "last": rss[-1],
            "flat": max(rss) <= first * 1.10 and min(rss) >= first * 0.90}


def faults_md(d: dict) -> list[str]:
    out = ["## Faults injected\n", "Besides the faulty requests mixed into the load (below), in seeded random order "
           "and at seeded random times, one after the other:\n",
           "| # | planned (s) | started (s) | clock | recovered (s) | fault | what happened |",
           "|---:|---:|---:|---|---:|---|---|"]
    for i, f in enumerate(d["faults"], 1):
        started = f"{f.started:.1f}" if f.started is not None else "not run"
        recovered = f"{f.recovered:.1f}" if f.recovered is not None else "—"
        out.append(f"| {i} | {f.at:.1f} | {started} | {f.clock or '—'} | {recovered} | {f.name} | {f.what or '—'} |")
    if d["injector_error"]:
        out.append(f"\n**Fault injection failed:**\n\n```\n{d['injector_error'][-2000:]}\n```")
    out.append(f"\nConnection attempts refused while the gateway was restarting (not requests): "
               f"{d['refused_connects']:,}. Every request, with its send time, kind, outcome and id: "
               f"`bench/work/fault_soak/requests.jsonl`.\n")
    return out


def kinds_md(d: dict) -> list[str]:
    attempts, rows = d["attempts"], d["rows"]
    out = ["## Requests by kind\n", "| kind | sent | as expected | other outcomes | ids seen | in the ledger |",
           "|---|---:|---:|---|---:|---:|"]
    for k in KINDS:
        mine = [a for a in attempts if a.kind == k.name]
        other = collections.Counter(label(a) for a in mine if a.outcome != k.expect)
        expect = k.expect if k.expect == "refused" else f"{k.expect}, {k.status}"
        out.append(f"| {k.name} (expect {expect}) | {len(mine):,} | "
                   f"{sum(1 for a in mine if a.outcome == k.expect):,} | "
                   f"{', '.join(f'{n}: {c:,}' for n, c in other.most_common()) or '—'} | "
                   f"{sum(1 for a in mine if a.rid):,} | {sum(1 for a in mine if a.rid in rows):,} |")
    out.append(f"\n{len(attempts):,} requests in all. Ledger rows as they came out, by kind and client outcome "
               f"(status, usage source, error):\n")
    for key, c in sorted(rows_by_outcome(attempts, rows).items()):
        out.append(f"- {key}: " + ", ".join(f"`{n}` × {v:,}" for n, v in c.most_common()))
    return out + [""]


def accounting_md(d: dict) -> list[str]:
    acc, rows = d["accounting"], d["rows"]
    balance_ok = d["closing"] == d["opening"] - d["charged"]
    missing_k = acc["missing_at_kill"]
    missing_k_kinds = ", ".join(sorted({f"{a.kind} / {a.outcome}" for a in missing_k})) or "—"
    audit = "ok" if d["audit"].get("ok") else json.dumps(d["audit"])[:400]
    checks = [
        ("every complete response in the ledger once, with its status",
         not acc["missing_complete"] and not acc["wrong_status"] and not acc["ids_given_twice"],
         f"{acc['complete_in_ledger']:,} of {acc['complete']:,} complete forwarded responses (200 with the whole "
         f"body / [DONE], or a provider error); {len(acc['wrong_status'])} with another status; "
         f"{acc['ids_given_twice']} ids given to two requests (ids are the table's primary key)"),
        ("no row the clients never saw", not acc["unseen_rows"], f"{len(acc['unseen_rows'])} unseen ids among "
         f"{len(rows):,} rows"),
        ("nothing refused before forwarding recorded (401s, 503 shutting_down)", not acc["refused_recorded"],
         f"{len(acc['refused_recorded'])} recorded"),
        ("ids seen but missing: only requests in flight at a SIGKILL", not acc["missing_other"],
         f"{len(missing_k)} missing, in flight at a SIGKILL ({missing_k_kinds}); "
         f"{len(acc['missing_other'])} missing otherwise. In flight at a SIGKILL in all: {acc['in_flight_at_kill']} "
         f"({acc['in_flight_at_kill_with_id']} had their id)"),
        ("`tollgate audit`", bool(d["audit"].get("ok")), audit),
        ("wallet = opening − Σ charged", balance_ok,
         f"{d['opening']} − {d['charged']} = {d['opening'] - d['charged']}; wallet {d['closing']}"),
        ("journal empty after the final stop", not d["journal_left"], ", ".join(d["journal_left"]) or "empty"),
        ("no record dead-lettered", d["dead_letters"] == 0, f"{d['dead_letters']} new lines in {DEAD_LETTERS.name}"),
    ]
    out = ["## Ledger accounting (after the final graceful stop)\n", "| check | result | figures |", "|---|---|---|"]
    out += [f"| {name} | {verdict(ok)} | {fig} |" for name, ok, fig in checks]
    details = []
    for what, items in (("complete but missing", acc["missing_complete"]), ("missing otherwise", acc["missing_other"]),
                        ("refused but recorded", acc["refused_recorded"])):
        details += [f"- {what}: `{a.rid}` {a.kind} sent {a.t_sent:.2f}s ended {a.t_end:.2f}s {a.outcome} "
                    f"{a.status} {a.code or ''} {a.detail}" for a in items[:20]]
    details += [f"- other status in the ledger: `{r}` {k}: client {c}, ledger {s}"
                for r, k, c, s in acc["wrong_status"][:20]]
    details += [f"- unseen row: `{r['id']}` created {r['created_at']} status {r['status']} error {r.get('error')!r}"
                for r in acc["unseen_rows"][:20]]
    if details:
        out += ["", "Ids behind the failures (at most 20 each):", "", *details]
    d["checks_ok"] = all(ok for _, ok, _ in checks)
    return out + [""]


def memory_md(d: dict) -> list[str]:
    warm = d["args"]["warmup"]
    out = ["## Gateway memory per process lifetime\n",
           f"RSS every {d['args']['sample_every']:g} s; the first {warm:g} s of each lifetime are its warm-up and are "
           f"left out. All samples: `bench/work/fault_soak/samples.json`.\n",
           "| lifetime | pid | from – to (s) | started at | ended by | replayed at start | samples | first | min | max "
           "| last | max vs first | within ±10% of first |",
           "|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    longest = max(d["lifetimes"], key=lambda x: (x.ended or d["wall"]) - x.started)
    for life in d["lifetimes"]:
        r = rss_figures(life, warm)
        span = f"{life.started:.0f} – {life.ended:.0f}" if life.ended is not None else f"{life.started:.0f} –"
        ended = life.ended_by + (f" (exit {life.exit_code})" if life.exit_code is not None else "")
        figs = (f"{r['n']} | {r['first']:.1f} | {r['min']:.1f} | {r['max']:.1f} | {r['last']:.1f} | "
                f"{(r['max'] / r['first'] - 1) * 100:+.1f}% | {'yes' if r['flat'] else 'no'}"
                if r else "0 | — | — | — | — | — | —")
        name = f"{life.n}{' (longest)' if life is longest else ''}"
        out.append(f"| {name} | {life.pid} | {span} | {life.clock} | {ended} | {life.replayed} | {figs} |")
    r = rss_figures(longest, warm)
    d["memory_ok"] = bool(r and r["flat"])
    out.append(f"\nLongest lifetime (#{longest.n}, {((longest.ended or d['wall']) - longest.started):.0f} s): "
               + (f"{verdict(r['flat'])}, RSS {r['first']:.1f} MB first, {r['min']:.1f}–{r['max']:.1f} MB, "
                  f"{r['last']:.1f} MB last." if r else "no sample after its warm-up."))
    return out + [""]


def windows_md(d: dict) -> list[str]:
    out = ["## What the clients saw during each fault\n",
           "Requests that ended between a fault's start and 2 s after its recovery, and those of them whose outcome "
           "was not their kind's usual one:\n",
           "| fault | window (s) | requests | other outcomes |", "|---|---|---:|---|"]
    for w in d["windows"]:
        other = ", ".join(f"{k}: {v}" for k, v in sorted(w["other"].items(), key=lambda x: -x[1])) or "—"
        out.append(f"| {w['fault']} | {w['from']:.1f} – {w['to']:.1f} | {w['requests']:,} | {other} |")
    lost = [f"- {w['fault']} at {w['from']:.1f} s: " + "; ".join(w["no_answer"][:12])
            + (f"; … {len(w['no_answer']) - 12} more" if len(w["no_answer"]) > 12 else "")
            for w in d["windows"] if w["no_answer"]]
    if lost:
        out += ["", "Requests that got no response at all (times relative to the fault's start). At a SIGKILL that is "
                "the kill; at a SIGTERM, `tollgate_drain_seconds` says requests on open connections get 503 "
                "shutting_down while the drain lasts, so a request sent on an open connection that got none was "
                "dropped when the connections closed:", "", *lost]
    return out + [""]


def logs_md(d: dict) -> list[str]:
    out = ["## Gateway logs\n", "Each lifetime's own log lines (consecutive repeats folded, `N records` for counts), "
           "and the tracebacks the event loop printed; full logs in `bench/work/fault_soak/gateway-N.log`.\n"]
    for life in d["lifetimes"]:
        lines, stray = log_timeline(life)
        out += [f"Lifetime {life.n} (pid {life.pid}):\n", "```", *lines, "```"]
        out += [f"- printed × {n}: `{text[:300]}`" for text, n in stray.most_common(8)]
        out.append("")
    return out


def report(d: dict) -> str:
    import mitmproxy.version
    a = d["args"]
    python = sys.executable
    cmd = " ".join([os.path.relpath(python, rb.PROJECT) if python.startswith(str(rb.PROJECT)) else python,
                    os.path.relpath(__file__, rb.PROJECT), *sys.argv[1:]])
    setup = (f"One `tollgate-proxy` (forward endpoint, CPU {rb.GATEWAY_CPU}) with its ledger on a private PostgreSQL "
             f"server and its holds on a private redis-server (tests/harness.py), in front of the mock provider "
             f"(CPU {rb.CLIENT_CPU}, streams of 9 events {a['chunk_delay'] * 1000:.0f} ms apart); {a['clients']} "
             f"keep-alive clients paced to {a['rate']:g} req/s in all (CPU {rb.CLIENT_CPU}). "
             f"mitmproxy {mitmproxy.version.VERSION}, Python {sys.version.split()[0]}.")
    head = ["# Tollgate fault soak (issue 5)\n",
            f"Run {time.strftime('%Y-%m-%d %H:%M %Z')}, wall {d['wall']:.0f} s"
            + (" (**interrupted**)" if d["interrupted"] else "") + f", seed {a['seed']}. {setup} "
            f"Other processes used {d['other_pct']:.0f}% of a CPU meanwhile.\n",
            f"Command: `{cmd}`\n", f"Machine at the start: {d['machine_before']}. At the end: {d['machine_after']}.\n"]
    body = faults_md(d) + kinds_md(d) + accounting_md(d) + memory_md(d) + windows_md(d) + logs_md(d)
    ok = d["checks_ok"] and d["memory_ok"] and not d["injector_error"]
    head.append(f"**Result: {'every check passed' if ok else 'SOME CHECKS FAILED (see below)'}.**\n")
    return "\n".join(head + body)


def save_raw(d: dict) -> None:
    with (WORK / "requests.jsonl").open("w") as out:
        for a in d["attempts"]:
            out.write(json.dumps(asdict(a)) + "\n")
    (WORK / "samples.json").write_text(json.dumps({life.n: life.samples for life in d["lifetimes"]}))
    (WORK / "faults.json").write_text(json.dumps([asdict(f) for f in d["faults"]], indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    ap.add_argument("--quick", action="store_true", help="a 2-minute smoke run (one fault of each kind)")
    ap.add_argument("--seed", type=int, default=1, help="seeds the request mix and the faults' order, times, lengths")
    ap.add_argument("--clients", type=int, default=10, help="concurrent keep-alive clients")
    ap.add_argument("--rate", type=float, default=50.0, help="requests per second, all clients together")
    ap.add_argument("--warmup", type=float, default=30.0,
                    help="seconds at the start of each gateway lifetime left out of its RSS figures; "
                         "no fault before the first one ends")
    ap.add_argument("--tail", type=float, default=30.0, help="seconds of load after the last planned fault")
    ap.add_argument("--sample-every", type=float, default=5.0, help="RSS sample interval, s")
    ap.add_argument("--chunk-delay", type=float, default=0.01, help="mock's delay between SSE events, s")
    for name, what in (("kills", "SIGKILLs"), ("terms", "SIGTERMs"), ("pg-outages", "PostgreSQL outages"),
                       ("redis-kills", "Redis kills")):
        ap.add_argument(f"--{name}", type=int, help=f"{what} (default: scaled to --minutes, at least 1)")
    ap.add_argument("--out", default=str(BENCH / "fault_soak.md"))
    args = ap.parse_args()
    if args.quick:
        args.minutes, args.warmup, args.tail = 2.0, 10.0, 10.0
    if (os.cpu_count() or 1) < 2:
        log("needs 2 CPUs (clients + mock on 0, gateway on 1)")
        return 2
    os.sched_setaffinity(0, {rb.CLIENT_CPU})
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    rb.watch_signals()
    try:
        d = run(args)
    except KeyboardInterrupt:
        log("interrupted before anything could be accounted")
        return 130
    save_raw(d)
    text = report(d)
    print(text)
    Path(args.out).write_text(text)
    log(f"wrote {args.out}")
    return 0 if d["checks_ok"] and d["memory_ok"] and not d["injector_error"] else 1


if __name__ == "__main__":
    sys.exit(main())
