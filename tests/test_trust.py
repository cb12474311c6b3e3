"""Trusting the gateway's CA (addons/host/trust.py): the bundle `tollgate ca --exports` points clients at keeps
tunnelled hosts verifying, and `tollgate ca --install/--uninstall` changes the real system trust store."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy.certs import CertStore

from addons.cli import main as cli
from addons.host import trust
from tests.harness import GatewayProcess, clean_env, tollgate_cli

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN = trust.STORES[0]


def make_ca(directory: Path) -> CertStore:
    return CertStore.from_store(directory, "mitmproxy", 2048)


class TlsServer:
    """A non-AI HTTPS host (localhost) whose certificate a public root signed: here, a root of the test's own."""

    def __init__(self, root: CertStore, tmp: Path):
        entry = root.get_cert("localhost", [x509.DNSName("localhost")])
        (tmp / "leaf.pem").write_bytes(entry.cert.to_pem())
        (tmp / "leaf.key").write_bytes(entry.privatekey.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tmp / "leaf.pem", tmp / "leaf.key")

        class Hello(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("content-length", "5")
                self.end_headers()
                self.wfile.write(b"hello")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"https://localhost:{self.server.server_address[1]}/"

    def close(self):
        self.server.shutdown()


def test_the_bundle_verifies_intercepted_and_tunnelled_hosts(tmp_path, mock, monkeypatch):
    gw = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/ledger.db", {"openai": mock.url})
    admin = gw.fund("5")
    public_root = make_ca(tmp_path / "public-root")  # stands in for the system's roots, offline
    roots = tmp_path / "system-roots.pem"
    roots.write_bytes((tmp_path / "public-root" / "mitmproxy-ca-cert.pem").read_bytes())
    elsewhere = TlsServer(public_root, tmp_path)
    gw.start()
    try:
        bundle = trust.write_bundle(gw.ca, tmp_path / "ca-bundle.pem", roots=roots)
        monkeypatch.setenv("HTTPS_PROXY", gw.url)
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        reply = openai.OpenAI(api_key=admin, max_retries=0).chat.completions.create(  # decrypted by the gateway
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "Hello from the mock."
        assert httpx.get(elsewhere.url).text == "hello"  # tunnelled untouched: the real server's certificate
        monkeypatch.setenv("SSL_CERT_FILE", str(gw.ca))  # the CA alone, as `tollgate ca` exported before
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(elsewhere.url)
    finally:
        elsewhere.close()
        gw.stop()


@pytest.mark.e2e
def test_the_cli_bundle_is_the_system_roots_plus_the_ca_and_follows_the_ca(tmp_path):
    tollgate = tollgate_cli(clean_env(TOLLGATE_RUNTIME_FILE=str(tmp_path / "none.json"),
                                      TOLLGATE_CA_BUNDLE=str(tmp_path / "ca-bundle.pem")))
    make_ca(tmp_path / "one")
    bundle = Path(tollgate.json("ca", "--confdir", str(tmp_path / "one"))["bundle"])
    text = bundle.read_text()
    assert text.startswith(trust.system_roots().read_text().rstrip())
    assert (tmp_path / "one" / "mitmproxy-ca-cert.pem").read_text().strip() in text
    before = bundle.stat().st_mtime_ns
    tollgate("ca", "--exports", "--confdir", str(tmp_path / "one"))
    assert bundle.stat().st_mtime_ns == before  # unchanged content is not rewritten
    make_ca(tmp_path / "two")
    tollgate("ca", "--exports", "--confdir", str(tmp_path / "two"))
    assert (tmp_path / "two" / "mitmproxy-ca-cert.pem").read_text().strip() in bundle.read_text()
    assert (tmp_path / "one" / "mitmproxy-ca-cert.pem").read_text().strip() not in bundle.read_text()


# -- the system trust store -------------------------------------------------------------------------


def openssl_trusts(ca: Path) -> bool:
    return subprocess.run(["openssl", "verify", "-CAfile", str(SYSTEM_BUNDLE), str(ca)],
                          capture_output=True).returncode == 0


@pytest.fixture
def system_store(tmp_path):
    """The real Debian store, put back as it was whatever the test did."""
    if os.geteuid() != 0 or not shutil.which("update-ca-certificates") or not SYSTEM_BUNDLE.exists():
        if os.environ.get("CI"):
            pytest.fail("the trust store test needs root and update-ca-certificates in CI")
        pytest.skip("needs root and Debian's update-ca-certificates (changes the real system trust store)")
    saved = DEBIAN.anchor.read_bytes() if DEBIAN.anchor.exists() else None
    yield DEBIAN
    if saved is not None:
        DEBIAN.anchor.write_bytes(saved)
    else:
        DEBIAN.anchor.unlink(missing_ok=True)
    subprocess.run(["update-ca-certificates", "--fresh"], capture_output=True, check=True, timeout=300)


@pytest.mark.e2e
def test_install_and_uninstall_change_the_system_store_and_say_what_changed(system_store, tmp_path):
    make_ca(tmp_path / "conf")
    ca = tmp_path / "conf" / "mitmproxy-ca-cert.pem"
    tollgate = tollgate_cli(clean_env(TOLLGATE_RUNTIME_FILE=str(tmp_path / "none.json")))
    system_store.anchor.unlink(missing_ok=True)
    assert not openssl_trusts(ca)

    said = tollgate("ca", "--install", "--confdir", str(tmp_path / "conf")).stdout.splitlines()
    assert said[0] == f"added {system_store.anchor} (a copy of {ca})"
    assert re.fullmatch(r"ran: update-ca-certificates \(\d+ added, \d+ removed; done\.\)", said[1]), said
    assert openssl_trusts(ca) and system_store.anchor.read_bytes() == ca.read_bytes()
    again = tollgate("ca", "--install", "--confdir", str(tmp_path / "conf")).stdout
    assert again.startswith(f"already installed: {system_store.anchor}") and "ran:" not in again

    said = tollgate("ca", "--uninstall").stdout.splitlines()
    assert said[0] == f"removed {system_store.anchor}"
    assert re.fullmatch(r"ran: update-ca-certificates --fresh \(\d+ added, \d+ removed; done\.\)", said[1]), said
    assert not openssl_trusts(ca) and not system_store.anchor.exists()
    assert not any(link.is_symlink() and not link.exists() for link in Path("/etc/ssl/certs").iterdir())
    assert tollgate("ca", "--uninstall").stdout.startswith(f"not installed: {system_store.anchor} does not exist")


def test_install_refuses_clearly_without_root_or_a_store_tool(tmp_path, monkeypatch, capsys):
    make_ca(tmp_path / "conf")
    monkeypatch.setenv(trust.BUNDLE_ENV, str(tmp_path / "bundle.pem"))
    monkeypatch.setenv("TOLLGATE_RUNTIME_FILE", str(tmp_path / "none.json"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit, match=r"needs root: sudo .venv/bin/tollgate ca --install$"):
        cli.main(["ca", "--install", "--confdir", str(tmp_path / "conf")])
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(tmp_path))  # neither update-ca-certificates nor update-ca-trust
    with pytest.raises(SystemExit, match="no system trust store tool found"):
        cli.main(["ca", "--uninstall"])
    with pytest.raises(SystemExit, match="mitmproxy's CA does not exist yet"):
        cli.main(["ca", "--install", "--confdir", str(tmp_path / "empty")])
