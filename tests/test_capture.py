"""System-wide capture end to end: apps that know nothing of the gateway are metered.

Each scenario runs in a network namespace of its own (created here, deleted after): the gateway,
the mock provider and the captured app talk over that namespace's loopback, the iptables rules
`tollgate capture` installs live in that namespace's firewall, and nothing reaches the host's
network or changes its firewall. The app runs under a dedicated system user with a clean
environment (no proxy variables), in a private mount namespace whose /etc/hosts points
api.openai.com at 127.0.0.2 (where nothing listens: only the redirect gets it to the gateway).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from addons.host import capture, capture_modes
from pricing.cost import price
from pricing.money import format_usd
from pricing.usage import TokenUsage
from tests.harness import BIN, PROJECT, GatewayProcess, PrivateRedis, clean_env
from tests.mock_provider import MockProvider

pytestmark = pytest.mark.e2e  # starts the gateway, network namespaces and WireGuard as processes

OPENAI_CHAT = TokenUsage(input_tokens=17, cache_read_tokens=4, output_tokens=9, reasoning_tokens=3)
PROVIDER_IP = "127.0.0.2"  # what api.openai.com resolves to inside the app's namespace
OTHER_IP = "127.0.0.3"  # a non-catalog HTTPS site, example.test
IP = shutil.which("ip") or "ip"  # by path: some tests run commands with a PATH that lacks it
CHAT_BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})

SDK_APP = """
import json, os, sys
import openai
client = openai.OpenAI(api_key=os.environ["OPENAI_API_KEY"])
messages = [{"role": "user", "content": "hi"}]
raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
answer = raw.parse().choices[0].message.content
print(json.dumps({"request_id": raw.headers["x-tollgate-request-id"], "content": answer}))
"""


def machine_refuses(*tools: str) -> str | None:
    """Why this machine cannot run a capture scenario needing `tools`, or None."""
    if not sys.platform.startswith("linux"):
        return "system-wide capture is tested on Linux (iptables, network namespaces)"
    if os.geteuid() != 0:
        return "needs root: the tests create network namespaces, a system user and firewall rules"
    for tool in ("ip", "unshare", "setpriv", "useradd", "curl", *tools):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs it)"
    try:
        capture.require_net_admin()
    except capture.CaptureError:
        return "no CAP_NET_ADMIN in this process"
    return None


def require(*tools: str) -> None:
    """Skip with the reason where the machine cannot (not root, no CAP_NET_ADMIN); in CI, where .ci/run
    installs the tools, a missing one fails the test instead."""
    why = machine_refuses(*tools)
    if why and os.environ.get("CI") and "installs it" in why:
        pytest.fail(why)
    if why:
        pytest.skip(why)


class NetNS:
    """A network namespace of the test's own, with loopback up."""

    def __init__(self):
        self.name = f"tgcap-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True, capture_output=True)

    @contextlib.contextmanager
    def entered(self):
        """This thread in the namespace: sockets made and processes started meanwhile belong to it."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            os.setns(target, os.CLONE_NEWNET)
            yield self
        finally:
            os.setns(own, os.CLONE_NEWNET)
            os.close(own)
            os.close(target)

    def run(self, *command: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run([IP, "netns", "exec", self.name, *command], **kwargs)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


@pytest.fixture(scope="module")
def app_user():
    """A dedicated system user for the captured app, removed afterwards."""
    name = f"tgcap{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture(scope="module")
def app_dir():
    """Files the app's user reads (hosts file, CA bundles, the SDK script): outside pytest's private tmp."""
    path = Path(tempfile.mkdtemp(prefix="tollgate-capture-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class OtherSite:
    """example.test: an HTTPS site outside the catalog, with a certificate from its own CA."""

    def __init__(self, directory: Path):
        from mitmproxy import certs

        store = certs.CertStore.from_store(directory / "other-ca", "other", 2048)
        entry = store.get_cert("example.test", [x509.DNSName("example.test")])
        self.ca = directory / "other-ca" / "other-ca-cert.pem"
        chain = directory / "other-site.pem"
        chain.write_bytes(entry.cert.to_pem() + entry.privatekey.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain)
        self.sock = socket.create_server((OTHER_IP, 443))
        self.context = context
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.requests.append(tls.recv(65536))
                    tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\nconnection: close\r\n\r\nhello, other\n")
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()


class Scene:
    """The captured app's namespace, user and files, and the gateway (in the same namespace or not)."""

    def __init__(self, ns: NetNS, gateway: GatewayProcess, user: pwd.struct_passwd, app_dir: Path,
                 provider_ip: str = PROVIDER_IP):
        self.ns, self.gateway, self.user, self.dir = ns, gateway, user, app_dir
        self.hosts = app_dir / "hosts"
        self.hosts.write_text(f"127.0.0.1 localhost\n{provider_ip} api.openai.com\n{OTHER_IP} example.test\n")
        # The system store as the app sees it, the gateway's CA added (what `tollgate ca --install` does)
        self.system_store = app_dir / "ca-certificates.crt"
        self.system_store.write_bytes(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes() + gateway.ca.read_bytes())
        self.bundle = self.system_store  # the exported bundle: system roots plus the gateway's CA
        (app_dir / "sdk_app.py").write_text(SDK_APP)
        # the app's programs: local mode captures by name, so it runs them under names of their own
        self.curl, self.python, self.python_env = "curl", sys.executable, {}

    def tollgate(self, *args: str) -> subprocess.CompletedProcess:
        env = clean_env(PYTHONPATH=str(PROJECT))
        return self.ns.run(str(BIN / "tollgate"), *args, env=env)

    def as_app(self, *command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`command` as the app's user, no proxy variables, private /etc/hosts and system CA store."""
        app_env = {"PATH": "/usr/bin:/bin", "HOME": str(self.dir), **(env or {})}
        # The venv's interpreter may live under a home the user cannot enter (/root/.pyenv): Python apps
        # may read files anywhere (CAP_DAC_READ_SEARCH), nothing more; the redirect matches their uid.
        python = command[0] == self.python
        caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"] if python else []
        script = ('mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/ssl/certs/ca-certificates.crt && '
                  'shift 2 && exec "$@"')
        return self.ns.run(
            "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
            str(self.hosts), str(self.system_store),
            "setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups", *caps,
            "env", "-i", *(f"{k}={v}" for k, v in app_env.items()), *command,
        )

    def curl_chat(self, key: str, scheme: str = "https") -> subprocess.CompletedProcess:
        return self.as_app(self.curl, "-sS", "--max-time", "20", "-D", "-",
                           f"{scheme}://api.openai.com/v1/chat/completions", "-H", f"authorization: Bearer {key}",
                           "-H", "content-type: application/json", "-d", CHAT_BODY)

    def firewall(self) -> str:
        return "\n".join(self.ns.run(binary, "-t", "nat", "-S").stdout for binary in ("iptables", "ip6tables")
                         if shutil.which(binary))


def header(response: str, name: str) -> str:
    for line in response.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    raise AssertionError(f"no {name} header in {response!r}")


def assert_metered(gateway: GatewayProcess, request_id: str) -> Decimal:
    row = gateway.request_row(request_id)
    assert (row["provider"], row["model"], row["status"]) == ("openai", "gpt-4o-mini", 200)
    got = TokenUsage(row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"],
                     row["output_tokens"], row["reasoning_tokens"])
    assert got == OPENAI_CHAT and row["usage_source"] == "reported"
    cost = price(OPENAI_CHAT, model="gpt-4o-mini", provider_id="openai", pricing_id="openai")
    assert cost.total_nanos > 0 and row["provider_cost"] == row["charged"] == format_usd(cost.total_nanos)
    return Decimal(row["charged"])


def balance(gateway: GatewayProcess) -> Decimal:
    return Decimal(gateway.ledger.balance())


@pytest.fixture(params=["one process", "two workers"])
def transparent(request, tmp_path, app_dir):
    require("iptables")
    app_user = request.getfixturevalue("app_user")
    ns = NetNS()
    started: list = []
    try:
        with ns.entered():
            mock = MockProvider().start()
            started.append(mock.stop)
            args: tuple[str, ...] = ("--mode", "transparent")
            redis_url = None
            if request.param == "two workers":
                redis = PrivateRedis()
                started.append(redis.stop)
                redis_url = redis.url
            gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/ledger.db", {"openai": mock.url},
                                     redis_url=redis_url, args=args)
            gateway.fund()
            if request.param == "two workers":
                start_workers(gateway, 2)
            else:
                gateway.start()
            started.append(gateway.stop)
            other = OtherSite(app_dir)
            started.append(other.close)
        scene = Scene(ns, gateway, app_user, app_dir)
        scene.mock, scene.other = mock, other
        yield scene
    finally:
        for stop in reversed(started):
            stop()
        ns.delete()


def start_workers(gateway: GatewayProcess, n: int) -> None:
    """`./run_proxy.sh --workers N`: the supervisor and N tollgate-proxy workers sharing the port."""
    command = [sys.executable, "-m", "addons.runtime.workers", "--workers", str(n), "--",
               "--listen-host", "127.0.0.1", "--listen-port", str(gateway.port), "--set", f"confdir={gateway.confdir}",
               *(arg for name, value in gateway.options.items() for arg in ("--set", f"{name}={value}")), *gateway.args]
    env = {**gateway.env, "PYTHONPATH": str(PROJECT)}
    gateway.proc = subprocess.Popen(command, env=env, stdout=gateway.log.open("wb"), stderr=subprocess.STDOUT,
                                    cwd=gateway.tmp)
    deadline = time.monotonic() + 60
    while gateway.log.read_text(errors="replace").count(") is listening") < n:
        if gateway.proc.poll() is not None or time.monotonic() > deadline:
            gateway.stop()
            raise AssertionError(f"the workers did not start: {gateway.log.read_text()}")
        time.sleep(0.1)


def assert_apps_are_metered(scene: Scene) -> None:
    """curl (the system store) and the openai SDK (the exported bundle) reach the provider through the
    gateway, metered and debited; the provider sees only the gateway's key."""
    gateway = scene.gateway
    before = balance(gateway)
    result = scene.curl_chat(gateway.admin_key)
    assert result.returncode == 0, result.stderr
    assert "Hello from the mock." in result.stdout
    charged = assert_metered(gateway, header(result.stdout, "x-tollgate-request-id"))
    assert scene.mock.last.headers["authorization"] == "Bearer sk-real-openai-0123456789"

    sdk = scene.as_app(scene.python, str(scene.dir / "sdk_app.py"), env={
        "OPENAI_API_KEY": gateway.admin_key, "SSL_CERT_FILE": str(scene.bundle), **scene.python_env})
    assert sdk.returncode == 0, sdk.stderr
    answer = json.loads(sdk.stdout)
    assert answer["content"] == "Hello from the mock."
    charged += assert_metered(gateway, answer["request_id"])
    assert balance(gateway) == before - charged


def test_transparent_capture_meters_an_app_that_knows_nothing_of_the_gateway(transparent):
    scene, gateway = transparent, transparent.gateway
    assert json.loads(scene.tollgate("capture", "status", "--json").stdout)["active"] is False
    refused = scene.curl_chat(gateway.admin_key)
    assert refused.returncode != 0, "without capture nothing listens at the provider's address"

    on = scene.tollgate("capture", "on", "--uid", scene.user.pw_name, "--port", str(gateway.port))
    assert on.returncode == 0, on.stderr
    status = json.loads(scene.tollgate("capture", "status", "--json").stdout)
    assert status["active"] is True
    assert any(f"--uid-owner {scene.user.pw_uid}" in rule for rule in status["families"]["ipv4"]["rules"])

    assert_apps_are_metered(scene)
    plain = scene.curl_chat(gateway.admin_key, scheme="http")  # port 80: routed by the Host header
    assert plain.returncode == 0 and "Hello from the mock." in plain.stdout, plain.stderr
    assert_metered(gateway, header(plain.stdout, "x-tollgate-request-id"))

    # a host outside the catalog: tunnelled untouched (its own certificate, not the gateway's)
    rows = len(gateway.ledger.requests(limit=100))
    other = scene.as_app("curl", "-sS", "--max-time", "20", "--cacert", str(scene.other.ca), "https://example.test/")
    assert other.returncode == 0, other.stderr
    assert other.stdout == "hello, other\n" and scene.other.requests[-1].startswith(b"GET / HTTP/1.1")
    time.sleep(0.3)  # time for a row, were there one
    assert len(gateway.ledger.requests(limit=100)) == rows

    # off: no rule of ours left, and the app is no longer captured
    off = scene.tollgate("capture", "off")
    assert off.returncode == 0, off.stderr
    firewall = scene.firewall()
    assert capture.COMMENT not in firewall and capture.CHAIN not in firewall
    assert json.loads(scene.tollgate("capture", "status", "--json").stdout)["active"] is False
    assert scene.curl_chat(gateway.admin_key).returncode != 0


# -- WireGuard ---------------------------------------------------------------------------------------

WG_SERVER, WG_CLIENT, WG_PORT = "10.213.0.1", "10.213.0.2", 51820
TUNNELLED_IP = "10.213.9.9"  # api.openai.com for the app: routed into the tunnel, answered by the gateway


@pytest.fixture
def wireguard(request, tmp_path, app_dir):
    """The gateway (`--mode wireguard`) in one namespace; in another, joined by a veth pair, a real
    WireGuard client (wireguard-go) whose default route is the tunnel, and the app."""
    require("wg")
    app_user = request.getfixturevalue("app_user")
    gw_ns, app_ns = NetNS(), NetNS()
    started: list = []
    try:
        subprocess.run(["ip", "-n", gw_ns.name, "link", "add", "tgv", "type", "veth", "peer", "name", "tgc",
                        "netns", app_ns.name], check=True, capture_output=True)
        for ns, dev, address in ((gw_ns, "tgv", WG_SERVER), (app_ns, "tgc", WG_CLIENT)):
            subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{address}/24", "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns.name, "link", "set", dev, "up"], check=True)
        with gw_ns.entered():
            mock = MockProvider().start()
            started.append(mock.stop)
            gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/ledger.db", {"openai": mock.url},
                                     args=("--mode", "regular", "--mode", f"wireguard@{WG_SERVER}:{WG_PORT}"))
            gateway.fund()
            gateway.start()
            started.append(gateway.stop)
        client = WireGuardClient(app_ns, gateway.confdir / "wireguard.conf", tmp_path)
        started.append(client.stop)
        client.start()
        scene = Scene(app_ns, gateway, app_user, app_dir, provider_ip=TUNNELLED_IP)
        scene.mock = mock
        yield scene
    finally:
        for stop in reversed(started):
            stop()
        app_ns.delete()
        gw_ns.delete()


class WireGuardClient:
    """A WireGuard interface in the app's namespace (the kernel's, else wireguard-go's), keyed from the
    gateway's wireguard.conf, routing everything."""

    def __init__(self, ns: NetNS, conf: Path, tmp: Path):
        self.ns, self.conf, self.tmp = ns, conf, tmp
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import mitmproxy_rs.wireguard

        ns = self.ns
        keys = json.loads(self.conf.read_text())
        private = self.tmp / "wg-client.key"
        private.write_text(keys["client_key"] + "\n")
        private.chmod(0o600)
        if ns.run("ip", "link", "add", "wg0", "type", "wireguard").returncode != 0:  # no kernel module here
            if shutil.which("wireguard-go") is None:
                require("wireguard-go")
            self.proc = subprocess.Popen([IP, "netns", "exec", ns.name, "wireguard-go", "-f", "wg0"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while ns.run("ip", "link", "show", "wg0").returncode != 0:
                assert self.proc.poll() is None and time.monotonic() < deadline, "wireguard-go did not create wg0"
                time.sleep(0.05)
        for command in (
            ["wg", "set", "wg0", "private-key", str(private), "peer", mitmproxy_rs.wireguard.pubkey(keys["server_key"]),
             "endpoint", f"{WG_SERVER}:{WG_PORT}", "allowed-ips", "0.0.0.0/0"],
            ["ip", "addr", "add", "10.0.0.1/32", "dev", "wg0"],  # the address mitmproxy's client config gives
            ["ip", "link", "set", "wg0", "up"],
            ["ip", "route", "add", "default", "dev", "wg0"],
        ):
            result = ns.run(*command)
            assert result.returncode == 0, f"{command}: {result.stderr}"

    def stop(self) -> None:
        if self.proc is None:
            return  # the kernel's interface goes with its namespace
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def test_wireguard_mode_meters_apps_behind_a_real_wireguard_client(wireguard):
    assert_apps_are_metered(wireguard)
    handshake = wireguard.ns.run("wg", "show", "wg0", "latest-handshakes").stdout.split()
    assert len(handshake) == 2 and int(handshake[1]) > 0, "the traffic went through the tunnel"


# -- refusals: one line, why and what to do, and no process left behind ------------------------------

def gateway_refusal(tmp_path: Path, *args: str, wrap: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess,
                                                                                      float]:
    env = clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db", PYTHONPATH=str(PROJECT),
                    TOLLGATE_JOURNAL_DIR=str(tmp_path / "journal"))
    start = time.monotonic()
    result = subprocess.run([*wrap, str(BIN / "tollgate-proxy"), "--set", f"confdir={tmp_path / 'mitmproxy'}", *args],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    return result, time.monotonic() - start


def assert_one_line_refusal(result: subprocess.CompletedProcess, elapsed: float, *says: str) -> None:
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 78 and elapsed < 15, output  # EX_CONFIG: refused before starting
    assert len(output.splitlines()) == 1 and output.startswith("tollgate-proxy: "), output
    for words in says:
        assert words in output, output


def test_wireguard_on_a_taken_port_is_refused_in_one_line(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result, elapsed = gateway_refusal(tmp_path, "--mode", f"wireguard@127.0.0.1:{port}")
    assert_one_line_refusal(result, elapsed, f"UDP 127.0.0.1:{port}", "already in use", "pick another")


@pytest.mark.parametrize("mode", ["wireguard", "local:curl"])
def test_workers_refuse_modes_they_cannot_share_before_starting_any(tmp_path, mode):
    env = clean_env(PYTHONPATH=str(PROJECT))
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "addons.runtime.workers", "--workers", "2", "--", "--mode", mode,
                             "--set", "tollgate_redis_url=redis://127.0.0.1:1/0"],
                            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1 and time.monotonic() - start < 15
    assert result.stderr.strip() == (f"tollgate-workers: mode {mode!r} cannot be shared by several workers "
                                     "(only TCP listeners can); run one worker for it")
    assert "started" not in result.stdout + result.stderr


def test_local_mode_where_this_host_refuses_it_is_one_line(tmp_path):
    """The host's own verdict (on a cgroup v1 host, in a container...); the end-to-end test runs elsewhere."""
    why = capture_modes.refusal(["local"])
    if why is None:
        pytest.skip("this host can run local mode: test_local_mode_meters_programs_captured_by_name covers it")
    result, elapsed = gateway_refusal(tmp_path, "--mode", "local:tollgate-nothing")
    assert_one_line_refusal(result, elapsed, why)


def test_local_mode_without_its_capabilities_is_one_line(tmp_path):
    require()
    drop = ("setpriv", "--inh-caps=-all", "--bounding-set=-net_admin,-bpf,-sys_admin", "--")
    result, elapsed = gateway_refusal(tmp_path, "--mode", "local:tollgate-nothing", wrap=drop)
    assert_one_line_refusal(result, elapsed, "--mode local cannot run here", "CAP_NET_ADMIN and CAP_BPF",
                            "--mode transparent with `tollgate capture on`")


# README "Local (eBPF)": on a hybrid cgroup v1 host, the gateway in a mount namespace of its own where
# cgroup v2 is mounted at /sys/fs/cgroup (the redirector attaches there); the host's mounts do not change
PRIVATE_CGROUP2 = ("unshare", "--mount", "--propagation", "private", "--",
                   "sh", "-c", 'mount -t cgroup2 none /sys/fs/cgroup && exec "$@"', "sh")
REDIRECTOR_FAILED = "tollgate-proxy: --mode local failed: mitmproxy's eBPF redirector did not start"


def local_mode_wrap() -> tuple[str, ...]:
    """What the gateway runs under to see cgroup v2 at /sys/fs/cgroup: nothing where the host mounts it
    there, else the README's private mount namespace; skip where the kernel cannot mount cgroup v2."""
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return ()
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--",
                            "mount", "-t", "cgroup2", "none", "/sys/fs/cgroup"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"the kernel cannot mount cgroup v2, where the eBPF redirector attaches: {probe.stderr.strip()}")
    return PRIVATE_CGROUP2


def start_local_gateway(gateway: GatewayProcess, wrap: tuple[str, ...]) -> None:
    """GatewayProcess.start under `wrap`, ready once the redirector is (its eBPF program attached). A
    redirector the kernel refuses (loading or attaching BPF) skips, with the gateway's one line."""
    command = [*wrap, str(BIN / "tollgate-proxy"), "--listen-host", "127.0.0.1", "--listen-port", str(gateway.port),
               "--set", f"confdir={gateway.confdir}",
               *(arg for name, value in gateway.options.items() for arg in ("--set", f"{name}={value}")), *gateway.args]
    gateway.proc = subprocess.Popen(command, env=gateway.env, stdout=gateway.log.open("wb"), stderr=subprocess.STDOUT,
                                    cwd=gateway.tmp)
    deadline = time.monotonic() + 30
    while "Local redirector started." not in (log := gateway.log.read_text(errors="replace")):
        if gateway.proc.poll() is not None or time.monotonic() > deadline:
            gateway.stop()
            failed = log.strip().splitlines()[-1:] or [""]
            if failed[0].startswith(REDIRECTOR_FAILED) and "bpf" in failed[0].lower():
                pytest.skip(f"the kernel refuses the eBPF redirector: {failed[0]}")
            raise AssertionError(f"the gateway did not start local mode: {log}")
        time.sleep(0.1)
    time.sleep(0.5)  # a redirector that fails right after starting stops the gateway (addons.runtime.launcher)
    assert gateway.proc.poll() is None, gateway.log.read_text()


def descendants(pid: int) -> list[int]:
    """The pids of `pid`'s children, theirs and so on (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_local_mode_meters_programs_captured_by_name(request, tmp_path, app_dir):
    """mitmproxy's eBPF redirector captures two programs by name (curl and the openai SDK's Python,
    under names of their own), metered and debited; the same curl under its own name is not captured.
    Where the host mounts cgroup v1 at /sys/fs/cgroup, the gateway runs as the README says."""
    require("sudo")
    wrap = local_mode_wrap()
    if why := capture_modes.refusal(["local"], host=lambda: replace(capture_modes.this_host(), cgroup2_at_root=True)):
        pytest.skip(f"this machine refuses local mode: {why}")
    app_user = request.getfixturevalue("app_user")
    curl, python = app_dir / "tgcapcurl", app_dir / "tgcapsdk"  # names nothing else on the host runs under
    curl.symlink_to(shutil.which("curl"))
    python.symlink_to(sys.executable)
    ns = NetNS()
    started: list = []
    try:
        with ns.entered():
            mock = MockProvider().start()
            started.append(mock.stop)
            gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/ledger.db", {"openai": mock.url},
                                     args=("--mode", "regular", "--mode", f"local:{curl.name},{python.name}"))
            gateway.fund()
            started.append(gateway.stop)
            start_local_gateway(gateway, wrap)
        scene = Scene(ns, gateway, app_user, app_dir)
        scene.mock = mock
        refused = scene.curl_chat(gateway.admin_key)
        assert refused.returncode != 0, "curl under its own name is not captured: nothing listens at 127.0.0.2"

        scene.curl, scene.python = str(curl), str(python)
        scene.python_env = {"PYTHONPATH": sysconfig.get_paths()["purelib"]}  # the SDK, from this venv
        assert_apps_are_metered(scene)

        # stopping the gateway ends the capture: its redirector (sudo's child) exits, the eBPF program with it
        redirector = descendants(gateway.proc.pid)
        assert redirector, "the redirector runs as the gateway's descendant"
        gateway.stop()
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() for pid in redirector):
            assert time.monotonic() < deadline, "the redirector outlived the gateway"
            time.sleep(0.1)
        assert scene.curl_chat(gateway.admin_key).returncode != 0
    finally:
        for stop in reversed(started):
            stop()
        ns.delete()
        curl.unlink(missing_ok=True)
        python.unlink(missing_ok=True)


# -- tollgate capture: what it refuses and what --dry-run prints -----------------------------------------

def test_capture_refuses_the_gateways_own_uid_no_net_admin_and_no_iptables(tmp_path):
    require("iptables")
    env = clean_env(PYTHONPATH=str(PROJECT))
    tollgate = str(BIN / "tollgate")
    ns = NetNS()
    try:
        own = ns.run(tollgate, "capture", "on", "--uid", "root", env=env)
        assert own.returncode == 1 and "refusing to capture uid 0 (root)" in own.stderr and "loop" in own.stderr
        unprivileged = ns.run("setpriv", "--inh-caps=-all", "--bounding-set=-net_admin", "--",
                              tollgate, "capture", "on", "--uid", "nobody", env=env)
        assert unprivileged.returncode == 1 and unprivileged.stderr.strip() == (
            "tollgate capture: changing the firewall needs root (CAP_NET_ADMIN): run it with sudo, or print the "
            "rules with --dry-run and apply them yourself")
        no_iptables = ns.run(tollgate, "capture", "on", "--uid", "nobody", env={**env, "PATH": str(tmp_path)})
        assert no_iptables.returncode == 1 and "iptables is not installed" in no_iptables.stderr
        assert len(no_iptables.stderr.strip().splitlines()) == 1
        # nothing was changed by any of them
        assert capture.COMMENT not in ns.run("iptables", "-t", "nat", "-S").stdout
    finally:
        ns.delete()


def test_capture_dry_run_prints_the_rules_and_changes_nothing():
    require("iptables")
    env = clean_env(PYTHONPATH=str(PROJECT))
    ns = NetNS()
    try:
        result = ns.run(str(BIN / "tollgate"), "capture", "on", "--uid", "nobody", "--port", "8443", "--dry-run",
                        env=env)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        nobody = pwd.getpwnam("nobody").pw_uid
        assert (f"iptables -t nat -A TOLLGATE_CAPTURE -p tcp -m multiport --dports 80,443 -m owner --uid-owner "
                f"{nobody} -m comment --comment tollgate-capture -j REDIRECT --to-ports 8443") in lines
        assert any(line.startswith("ip6tables ") for line in lines)
        assert capture.COMMENT not in ns.run("iptables", "-t", "nat", "-S").stdout
        # what it printed is what `on` applies: run those lines, and `status` and `off` recognise them
        for line in lines:
            if line.startswith("iptables ") or shutil.which("ip6tables"):
                assert ns.run(*line.split()).returncode == 0, line
        status = json.loads(ns.run(str(BIN / "tollgate"), "capture", "status", "--json", env=env).stdout)
        assert status["active"] is True
        assert ns.run(str(BIN / "tollgate"), "capture", "off", env=env).returncode == 0
        assert capture.COMMENT not in ns.run("iptables", "-t", "nat", "-S").stdout
    finally:
        ns.delete()


def test_wireguard_with_a_broken_key_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "mitmproxy").mkdir()
    (tmp_path / "mitmproxy" / "wireguard.conf").write_text('{"server_key": "x"}')
    result, elapsed = gateway_refusal(tmp_path, "--mode", "wireguard@127.0.0.1:0")
    assert_one_line_refusal(result, elapsed, "cannot use its key file", "remove it to have new keys made")
