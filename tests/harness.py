"""Runs the real gateway (tollgate-proxy, or mitmdump with addons/gateway.py) as a subprocess against a ledger and
the mock provider, and drives the `tollgate` CLI the way an operator would."""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest
import redis
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pricing.usage import TokenUsage
from tests.ledger_reads import Ledger

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Real-looking provider keys the gateway injects; tests assert the mock saw exactly these.
PROVIDER_KEYS = {
    "OPENAI_API_KEY": "sk-real-openai-0123456789",
    "ANTHROPIC_API_KEY": "sk-ant-real-0123456789",
    "GEMINI_API_KEY": "AIza-real-gemini-0123456789",
    "COHERE_API_KEY": "co-real-0123456789",
    "GROQ_API_KEY": "gsk-real-0123456789",
    "MISTRAL_API_KEY": "mistral-real-0123456789",
}


# The usage the mock provider reports per API family (tests/mock_provider.py), which the ledger must record.
OPENAI_CHAT = TokenUsage(input_tokens=17, cache_read_tokens=4, output_tokens=9, reasoning_tokens=3)
OPENAI_RESPONSES = TokenUsage(input_tokens=19, cache_read_tokens=6, output_tokens=11, reasoning_tokens=5)
OPENAI_EMBEDDINGS = TokenUsage(input_tokens=8)
ANTHROPIC = TokenUsage(input_tokens=23 + 7 + 5, cache_read_tokens=5, cache_write_tokens=7, output_tokens=13)
GEMINI = TokenUsage(input_tokens=29, cache_read_tokens=8, output_tokens=15 + 6, reasoning_tokens=6)


PG_ADMIN = "dbname=test user=postgres host=127.0.0.1 port=5432"


def fresh_postgres_database(name: str) -> str:
    """An empty database on the local server; in CI a missing server fails the test, elsewhere skips it.

    The name carries this test run's process id, so two runs on one server never drop each other's.
    """
    name = f"{name}_{os.getpid()}"
    try:
        conn = psycopg2.connect(PG_ADMIN, connect_timeout=3)
    except psycopg2.OperationalError as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {e}")
        pytest.skip(f"PostgreSQL not reachable: {e}")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


@contextlib.contextmanager
def gateways_by_backend(tmp_path_factory, name: str, make: Callable[[Path, str], GatewayProcess]):
    """A module's gateways by ledger backend: get("sqlite" | "postgresql") makes one with make(tmp, database_url),
    funds and starts it the first time it is asked for; all are stopped at the end."""
    running: dict[str, GatewayProcess] = {}

    def get(backend: str) -> GatewayProcess:
        if backend not in running:
            tmp = tmp_path_factory.mktemp(f"{name}-{backend}")
            url = f"sqlite:///{tmp}/ledger.db" if backend == "sqlite" else fresh_postgres_database(f"tollgate_{name}")
            gateway = make(tmp, url)
            gateway.fund("100")
            gateway.start()
            running[backend] = gateway
        return running[backend]

    try:
        yield get
    finally:
        for gateway in running.values():
            gateway.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.upper().endswith("_PROXY") and not k.endswith("_API_KEY") and not k.startswith("TOLLGATE_")
           and k != "PROMETHEUS_MULTIPROC_DIR"}  # each gateway makes its own metrics directory
    env.update(extra)
    return env


_forkserver: tuple[subprocess.Popen, str] | None = None


def _forkserver_socket() -> str:
    """The socket of tests/cli_forkserver.py, started once per test session (stopped when the session ends)."""
    global _forkserver
    if _forkserver is None or _forkserver[0].poll() is not None:
        path = os.path.join(tempfile.mkdtemp(prefix="tollgate-cli-"), "forkserver.sock")
        proc = subprocess.Popen([sys.executable, str(PROJECT / "tests" / "cli_forkserver.py"), path], env=clean_env(),
                                cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        if proc.stdout.readline() != b"ready\n":
            raise RuntimeError("tests/cli_forkserver.py did not start")
        atexit.register(proc.kill)
        _forkserver = (proc, path)
    return _forkserver[1]


def run_tollgate(args: list[str], env: dict[str, str], input: str | None = None, timeout: float = 60,
                 cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """`tollgate ARGS` as subprocess.run(..., capture_output=True, text=True) runs it, in a process of its own
    forked from one that has imported the CLI already (tests/cli_forkserver.py): the suite's thousands of runs
    skip half a second of imports each, and nothing else."""
    request = {"args": list(args), "env": env, "cwd": str(cwd or os.getcwd()), "input": input}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(_forkserver_socket())
            conn.sendall(json.dumps(request).encode() + b"\n")
            reply = b"".join(iter(lambda: conn.recv(1 << 16), b""))
        except TimeoutError:
            raise subprocess.TimeoutExpired(["tollgate", *args], timeout) from None
    done = json.loads(reply)
    return subprocess.CompletedProcess(["tollgate", *args], done["returncode"], done["stdout"], done["stderr"])


def tollgate_cli(env: dict[str, str]):
    """The `tollgate` command as a script runs it: run(*args) -> CompletedProcess, run.json(*args) -> data."""

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = run_tollgate(list(args), env)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    run.json = lambda *args: json.loads(run(*args, "--json").stdout)
    return run


class GatewayProcess:
    def __init__(self, tmp: Path, database_url: str, upstreams: dict[str, str], prices: list[dict] = (),
                 billing: dict | None = None, redis_url: str | None = None, launcher: str = "tollgate-proxy",
                 providers: dict[str, dict] | None = None, settings: dict | None = None,
                 options: dict[str, object] | None = None, args: tuple[str, ...] = (), admin: bool | None = False):
        """launcher: `tollgate-proxy` (what run_proxy.sh runs), `mitmdump` or `mitmweb` (the gateway as a -s
        script; mitmweb's UI on `web_port`, its address with the login token in `web_url`).
        providers: more fields per provider id (beside its upstream); settings: more top-level settings;
        options: more mitmproxy options (`--set name=value`); args: more command-line arguments, last.
        admin: run the admin process (the REST API) on a port of its own, `admin_url`; off otherwise, so the
        suite's many gateways do not each start one; None: as `args` say."""
        self.tmp = tmp
        self.launcher = launcher
        self.args = list(args)
        self.database_url = database_url
        self.port = free_port()
        self.web_port = free_port()
        self.confdir = tmp / "mitmproxy"
        self.config = tmp / "tollgate.yaml"
        overrides = {p: {"upstream": u} for p, u in upstreams.items()}
        for provider, fields in (providers or {}).items():
            overrides[provider] = {**overrides.get(provider, {}), **fields}
        self.config.write_text(yaml.safe_dump({
            "providers": overrides,
            "prices": list(prices),
            "billing": billing or {},
            "journal_dir": str(tmp / "journal"),
            **(settings or {}),
        }))
        self.env = clean_env(TOLLGATE_DATABASE_URL=database_url, TOLLGATE_CONFIG=str(self.config),
                             TOLLGATE_RUNTIME_FILE=str(tmp / "gateway.json"), **PROVIDER_KEYS)
        if redis_url:
            self.env["TOLLGATE_REDIS_URL"] = redis_url
        self.log = tmp / "gateway.log"
        self.admin = admin
        self.admin_port = free_port()
        admin_options = ({"tollgate_admin_port": self.admin_port} if admin else {} if admin is None
                         else {"tollgate_admin": "false"})
        self.options = {"tollgate_cache_ttl_ms": 200, **admin_options, **(options or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = run_tollgate(list(args), self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"tollgate {' '.join(args)} failed: {result.stderr}")
        return result

    def cli_json(self, *args: str):
        return json.loads(self.cli(*args, "--json").stdout)

    def fund(self, amount: str = "10") -> str:
        """`tollgate init` and a wallet top-up, as a first run does; the admin key, also as .admin_key."""
        self.admin_key = self.cli_json("init")["secret_key"]
        self.cli("wallet", "topup", amount)
        return self.admin_key

    def start(self) -> None:
        script = ["-s", str(PROJECT / "addons" / "gateway.py")]
        launch = {"tollgate-proxy": [str(BIN / "tollgate-proxy")], "mitmdump": [str(BIN / "mitmdump"), *script],
                  "mitmweb": [str(BIN / "mitmweb"), *script, "--set", f"web_port={self.web_port}",
                              "--set", "web_open_browser=false"]}[self.launcher]
        self.proc = subprocess.Popen(
            [*launch, "--listen-host", "127.0.0.1", "--listen-port", str(self.port), "--set", f"confdir={self.confdir}",
             *(arg for name, value in self.options.items() for arg in ("--set", f"{name}={value}")), *self.args],
            env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, cwd=self.tmp,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.launcher} exited: {self.log.read_text()}")
            log = self.log.read_text(errors="replace")
            if "error in script" in log or "Addon error" in log:
                self.stop()
                raise AssertionError(f"the gateway addon failed to load: {log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if self.ca.exists() and "listening at" in log and (
                        self.launcher != "mitmweb" or "Web server listening at" in log) and (
                        not self.admin or "Tollgate admin API" in log):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.launcher} did not start: {self.log.read_text()}")

    @property
    def admin_url(self) -> str:
        """The admin listener itself (the API, the dashboard, /metrics); the API is also under `url`/v1/."""
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def web_url(self) -> str:
        return self.log.read_text().split("Web server listening at ", 1)[1].split()[0]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    @property
    def ledger(self) -> Ledger:
        """The gateway's ledger, read in this process (tests/ledger_reads.py)."""
        return Ledger(self.database_url)

    def request_row(self, request_id: str, timeout: float = 10.0) -> dict:
        """The ledger row of a request, waiting for the background writer to commit it."""
        return self.ledger.request_row(request_id, timeout)


def self_signed_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate and key for `localhost`, valid for a day: a TLS server of the test's own."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class PaymentHook:
    """The operator's payment hook for auto top-up: a real local HTTP receiver that records what it is sent."""

    def __init__(self, secret: str):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.secret = secret
        self.calls: list[tuple[dict, bytes]] = []
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with hook._lock:
                    hook.calls.append((dict(self.headers), body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/topup"

    def calls_for(self, customer_id: str) -> list[tuple[dict, bytes]]:
        with self._lock:
            return [(h, b) for h, b in self.calls if json.loads(b).get("customer_id") == customer_id]

    def close(self) -> None:
        self._server.shutdown()


class PrivateRedis:
    """A redis-server of the test's own, to stop and start (the shared one serves other tests)."""

    def __init__(self):
        self.port = free_port()
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def shared_redis(db: int) -> redis.Redis:
    """A flushed database of the machine's Redis (127.0.0.1:6379), one number per test module that uses it;
    missing Redis fails in CI and skips elsewhere."""
    client = redis.Redis.from_url(f"redis://127.0.0.1:6379/{db}")
    try:
        client.ping()
    except redis.ConnectionError as e:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI: {e}")
        pytest.skip(f"Redis not reachable: {e}")
    client.flushdb()
    return client


@pytest.fixture
def private_redis():
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis()
    yield server
    server.stop()


class PrivatePostgres:
    """A PostgreSQL server of the tests' own, to stop and start under load (the shared one serves other tests).

    One cluster serves the whole session (initdb costs seconds); each test gets it running, with a fresh database.
    """

    def __init__(self):
        self.bindir = Path(subprocess.check_output(["pg_config", "--bindir"], text=True).strip())
        self.root = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
        self.port = free_port()
        self.database = "postgres"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:  # initdb refuses to run as root
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / tool), *args], check=True, capture_output=True, timeout=60)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def running(self) -> bool:
        status = subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "status"],
                                capture_output=True, timeout=60)
        return status.returncode == 0

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-w", "-l", str(self.root / "log"),
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-w", "-m", "immediate", "stop")

    def reset(self, database: str) -> None:
        """Running again (a test may have left it stopped), with `database` new and empty: what the next test sees."""
        if not self.running():
            self.start()
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                                connect_timeout=10)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            cur.execute(f"CREATE DATABASE {database}")
        conn.close()
        self.database = database

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def private_postgres_cluster():
    try:
        server = PrivatePostgres()
    except (OSError, subprocess.CalledProcessError) as e:
        if os.environ.get("CI"):
            pytest.fail(f"a private PostgreSQL server is required in CI: {e}")
        pytest.skip(f"cannot run a private PostgreSQL server: {e}")
    yield server
    server.remove()


@pytest.fixture
def private_postgres(private_postgres_cluster):
    """The session's private server, running, with an empty database of this test's own in its url."""
    private_postgres_cluster.reset("tollgate_private")
    return private_postgres_cluster
