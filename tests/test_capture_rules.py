"""System-wide capture in-process: routing by SNI/Host in every mode, the rules `tollgate capture`
builds, and the checks that refuse a capture mode this host cannot run."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess

import pytest
from mitmproxy.proxy import mode_specs

from addons.core.catalog import load_catalog
from addons.host import capture, capture_modes
from addons.proxy.routing import addressed_to_gateway, provider_for
from addons.runtime.launcher import RedirectorWatch
from tests.inprocess_gateway import PROVIDER_KEY, api_flow, run, secret_key

CATALOG = load_catalog()


def flow_in(mode: str, host: str, port: int = 443, sni: str | None = None, host_header: str | None = None,
            sockname=("127.0.0.1", 8080), path: str = "/v1/chat/completions"):
    flow = api_flow(host=host, port=port, path=path)
    flow.client_conn.proxy_mode = mode_specs.ProxyMode.parse(mode)
    flow.client_conn.sni = sni
    flow.client_conn.sockname = sockname
    if host_header is not None:
        flow.request.host_header = host_header
    return flow


# -- routing -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "mode, host, sni, host_header, provider",
    [
        ("transparent", "104.18.7.192", "api.openai.com", None, "openai"),  # the original destination is an IP
        ("transparent", "104.18.7.192", None, "api.anthropic.com", "anthropic"),  # plain HTTP: the Host header
        ("wireguard", "10.0.0.9", "API.OpenAI.com.", None, "openai"),
        ("local", "10.0.0.9", "example.com", "api.openai.com", "openai"),  # a catalog name anywhere is metered
        ("regular", "api.openai.com", None, None, "openai"),  # CONNECT target
        ("transparent", "104.18.7.192", "example.com", "example.com", None),
    ],
)
def test_provider_is_found_by_sni_or_host_in_every_mode(mode, host, sni, host_header, provider):
    found = provider_for(flow_in(mode, host, sni=sni, host_header=host_header), CATALOG)
    assert (found.id if found else None) == provider


@pytest.mark.parametrize(
    "mode, host, port, sockname, mine",
    [
        ("regular", "127.0.0.1", 8080, ("127.0.0.1", 8080), True),
        ("regular", "localhost", 8080, ("127.0.0.1", 8080), True),
        ("regular", "10.1.2.3", 8080, ("10.1.2.3", 8080), True),
        ("regular", "example.com", 8080, ("127.0.0.1", 8080), False),
        ("regular", "127.0.0.1", 9999, ("127.0.0.1", 8080), False),
        # transparent: the socket's address is the original destination; never the gateway's own
        ("transparent", "104.18.7.192", 443, ("104.18.7.192", 443), False),
        ("transparent", "127.0.0.1", 8080, ("127.0.0.1", 8080), False),
        ("wireguard", "127.0.0.1", 8080, ("127.0.0.1", 8080), False),
    ],
)
def test_only_regular_mode_requests_to_the_listener_are_the_gateways_own(mode, host, port, sockname, mine):
    assert addressed_to_gateway(flow_in(mode, host, port, sockname=sockname)) is mine


def test_transparent_request_is_forwarded_not_answered_404(gw):
    """The bug this fixes: captured requests were taken for the gateway's own and answered 404."""
    flow = flow_in("transparent", "104.18.7.192", sni="api.openai.com", sockname=("104.18.7.192", 443))
    flow.request.headers["authorization"] = f"Bearer {secret_key()}"
    run(gw, flow)
    assert flow.response is None, flow.response.content
    assert flow.request.url == "https://api.openai.com/v1/chat/completions"
    assert flow.request.headers["authorization"] == f"Bearer {PROVIDER_KEY}"


def test_captured_non_catalog_request_is_untouched(gw):
    flow = flow_in("transparent", "93.184.216.34", sni="example.com", path="/healthz",
                   sockname=("93.184.216.34", 443))
    before = flow.get_state()
    run(gw, flow)
    assert flow.get_state() == before


def test_allow_hosts_lets_a_captured_connection_in_by_its_sni():
    """allow_hosts (catalog hosts) is matched against `host:port` strings, SNI among them: in
    transparent mode the address is an IP and only the SNI names the provider."""
    patterns = CATALOG.allow_hosts_patterns()
    assert any(re.search(p, "api.openai.com:443", re.IGNORECASE) for p in patterns)
    assert not any(re.search(p, "104.18.7.192:443", re.IGNORECASE) for p in patterns)


# -- capture rules -----------------------------------------------------------------------------------

def test_rules_for_a_user_exempt_the_gateway_first_and_redirect_80_and_443():
    steps = capture.plan_on(capture.Selector("uid", "1001"), 8080, gateway_uid=998)
    assert [capture.command_line("iptables", s) for s in steps] == [
        "iptables -t nat -N TOLLGATE_CAPTURE",
        "iptables -t nat -I TOLLGATE_CAPTURE 1 -m owner --uid-owner 998 -m comment --comment tollgate-capture "
        "-j RETURN",
        "iptables -t nat -A TOLLGATE_CAPTURE -p tcp -m multiport --dports 80,443 -m owner --uid-owner 1001 "
        "-m comment --comment tollgate-capture -j REDIRECT --to-ports 8080",
        "iptables -t nat -A OUTPUT -p tcp -m comment --comment tollgate-capture -j TOLLGATE_CAPTURE",
    ]
    assert all(s.check is not None for s in steps)  # each is skipped when already in place


def test_rules_for_a_cgroup():
    redirect = capture.plan_on(capture.Selector("cgroup", "/app.slice"), 9090, gateway_uid=0)[2]
    assert "-m cgroup --path /app.slice" in capture.command_line("iptables", redirect)
    assert redirect.args[-2:] == ("--to-ports", "9090")


@pytest.mark.parametrize(
    "selector, port, says",
    [
        (capture.Selector("uid", "0"), 8080, "refusing to capture uid 0 (root): the gateway runs as that user"),
        (capture.Selector("uid", "1001"), 0, "--port must be between 1 and 65535"),
        (capture.Selector("uid", "1001"), 70000, "--port must be between 1 and 65535"),
    ],
)
def test_rules_are_refused(selector, port, says):
    with pytest.raises(capture.CaptureError, match=re.escape(says)):
        capture.plan_on(selector, port, gateway_uid=0)


def test_off_removes_only_tagged_jumps_then_the_chain():
    output = [
        "-A OUTPUT -p tcp -m comment --comment tollgate-capture -j TOLLGATE_CAPTURE",
        "-A OUTPUT -d 10.0.0.0/8 -j ACCEPT",
        '-A OUTPUT -m comment --comment "tollgate-capture-of-someone-else" -j ACCEPT',
        "-A OUTPUT -m comment --comment mine -j TOLLGATE_CAPTURE",
    ]
    assert [capture.command_line("iptables", s) for s in capture.plan_off(output)] == [
        "iptables -t nat -D OUTPUT -p tcp -m comment --comment tollgate-capture -j TOLLGATE_CAPTURE",
        "iptables -t nat -F TOLLGATE_CAPTURE",
        "iptables -t nat -X TOLLGATE_CAPTURE",
    ]


def test_on_is_idempotent_and_stops_at_the_first_failure():
    calls = []

    def runner(argv):
        calls.append(list(argv))
        verb = argv[3:5]
        present = verb in (["-n", "-L"], ["-C", "TOLLGATE_CAPTURE"])  # chain and rules exist, not the jump
        failing = verb == ["-A", "OUTPUT"]
        return subprocess.CompletedProcess(argv, 0 if present else 1, "",
                                           "iptables: Permission denied (you must be root)." if failing else "")

    with pytest.raises(capture.CaptureError, match="needs root"):
        capture.capture_on(capture.Selector("uid", "1001"), 8080, 0, {"ipv4": "/sbin/iptables"}, runner)
    changes = [c for c in calls if c[3] not in ("-n", "-C")]
    assert changes == [["/sbin/iptables", "-t", "nat", "-A", "OUTPUT", *capture.JUMP]]


def test_listener_uid_reads_proc_net(tmp_path):
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    listening = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000   998 0 1\n"
    established = "   1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1001 0 2\n"
    (tmp_path / "tcp").write_text(header + listening + established)
    (tmp_path / "tcp6").write_text(header)
    assert capture.listener_uid(8080, tmp_path) == 998
    assert capture.listener_uid(8081, tmp_path) is None  # established, not listening


# -- capture modes -----------------------------------------------------------------------------------

ALL_CAPS = (1 << 41) - 1
OK = capture_modes.Host("linux", ALL_CAPS, cgroup2_at_root=True, has_sudo=True)


@pytest.mark.parametrize(
    "host, says",
    [
        (OK, None),
        (capture_modes.Host("darwin", 0, False, False), None),  # mitmproxy's own macOS redirector
        (capture_modes.Host("linux", ALL_CAPS & ~(1 << 12), True, True), "needs CAP_NET_ADMIN, which"),
        (capture_modes.Host("linux", ALL_CAPS & ~(1 << 39) & ~(1 << 21), True, True), "needs CAP_BPF"),
        (capture_modes.Host("linux", ALL_CAPS, False, True), "does not mount cgroup v2 there"),
        (capture_modes.Host("linux", ALL_CAPS, True, False), "needs sudo"),
        (capture_modes.Host("linux", ALL_CAPS, True, True, "no redirector"), "cannot run here: no redirector"),
    ],
)
def test_local_mode_refusals(host, says):
    why = capture_modes.local_mode_refusal(host)
    if says is None:
        assert why is None
    else:
        assert says in why and why.endswith("use --mode transparent with `tollgate capture on`, or --mode wireguard")


def test_only_local_specs_are_checked_for_local_mode():
    refusing = capture_modes.Host("linux", 0, False, False)
    assert capture_modes.refusal(["regular", "transparent"], host=lambda: refusing) is None
    assert "--mode local" in capture_modes.refusal(["regular", "local:curl"], host=lambda: refusing)


def test_a_taken_wireguard_port_is_refused():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert "already in use" in capture_modes.refusal([f"wireguard@127.0.0.1:{port}"])
    assert capture_modes.refusal([f"wireguard@127.0.0.1:{port}"]) is None


@pytest.mark.parametrize(
    "specs, port, shareable",
    [
        (["regular"], 8080, True),
        (["transparent"], 8080, True),
        (["regular", "transparent@8081"], 8080, True),
        (["wireguard"], 8080, False),
        (["local"], 8080, False),
        (["transparent"], 0, False),
    ],
)
def test_which_modes_workers_can_share(specs, port, shareable):
    assert (capture_modes.worker_refusal(specs, port) is None) is shareable


def test_workers_read_modes_from_the_proxy_options():
    args = ["--listen-port", "9090", "--mode", "regular", "-m", "wireguard", "--mode=local:curl", "--set", "x=1"]
    opts = capture_modes.listen_options(args)
    assert opts.modes == ["regular", "wireguard", "local:curl"]
    assert opts.listen_port == 9090


# What mitmproxy's redirector printed on this project's test host (kernel 6.18, hybrid cgroups), abridged.
REDIRECTOR_OUTPUT = [
    (logging.INFO, "[mitmproxy_linux_redirector] remove limit on locked memory failed, ret is: -1"),
    (logging.WARNING, "[aya::bpf] object BTF couldn't be loaded in the kernel: the BPF_BTF_LOAD syscall returned "
                      "Invalid argument (os error 22). Verifier output: magic: 0xeb9f"),
    (logging.WARNING, "    [2] STRUCT bpf_sock size=80 vlen=16"),
    (logging.WARNING, "Error: eBPF initialization failed"),
    (logging.WARNING, ""),
    (logging.WARNING, "Caused by:"),
    (logging.WARNING, "    0: failed to attach cgroup_sock_create program"),
    (logging.WARNING, "    1: `bpf_link_create` failed"),
    (logging.WARNING, "    2: Bad file descriptor (os error 9)"),
    (logging.WARNING, ""),
    (logging.WARNING, "Stack backtrace:"),
    (logging.WARNING, "   0: <unknown>"),
    (logging.ERROR, "[linux-redirector] exited: Ok(ExitStatus(unix_wait_status(256)))"),
]


def test_a_failed_redirector_stops_the_gateway_with_one_line(caplog):
    failures = []
    watch = RedirectorWatch(failures.append)
    logger = logging.getLogger("tests.redirector")
    logger.addFilter(watch)
    try:
        with caplog.at_level(logging.DEBUG, logger="tests.redirector"):
            for level, line in REDIRECTOR_OUTPUT:
                logger.log(level, line)
    finally:
        logger.removeFilter(watch)
    assert failures == [
        "--mode local failed: mitmproxy's eBPF redirector did not start (eBPF initialization failed: failed to "
        "attach cgroup_sock_create program: `bpf_link_create` failed: Bad file descriptor (os error 9)); use "
        "--mode transparent with `tollgate capture on`, or --mode wireguard (-v shows its output)"
    ]
    assert caplog.records == []  # the dump is kept for -v


def test_a_broken_wireguard_key_file_is_refused_without_its_contents(tmp_path):
    import mitmproxy_rs.wireguard

    path = tmp_path / "wireguard.conf"
    assert capture_modes.wireguard_keys_refusal("wireguard", path) is None  # made on first start
    good = {"server_key": mitmproxy_rs.wireguard.genkey(), "client_key": mitmproxy_rs.wireguard.genkey()}
    path.write_text(json.dumps(good))
    assert capture_modes.wireguard_keys_refusal("wireguard", path) is None
    for broken, says in (({"server_key": good["server_key"]}, "(no 'client_key')"),
                         ({**good, "client_key": "not-a-key-but-a-secret"}, "(ValueError)"), ("{", "(JSONDecodeError)")):
        path.write_text(broken if isinstance(broken, str) else json.dumps(broken))
        why = capture_modes.wireguard_keys_refusal("wireguard", path)
        assert why == f"--mode wireguard cannot use its key file {path} {says}; fix it, or remove it to have new keys made"
        assert good["server_key"] not in why and "not-a-key" not in why
