"""The one module per library that touches its internals: a version check that refuses an unchecked
version with a readable line, and (mitmproxy) one idempotent install that puts every patch in place."""

from __future__ import annotations

import asyncio
import datetime
import gc
import ssl
import weakref

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from mitmproxy import certs, http, version
from mitmproxy.addons import next_layer, proxyauth
from mitmproxy.addons.next_layer import NextLayer
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers import tls as tls_layer
from mitmproxy.proxy.layers.http import HttpStream, _http1
from mitmproxy.test import taddons

from addons.proxy import error_pages, mitmproxy_internals, proxyauth_compare
from pricing import genai_prices_internals

ALWAYS = {"_http1.make_error_response", "HttpStream.handle_protocol_error", "HttpStream.check_body_size",
          "Http1Server.read_headers", "proxyauth.SingleUser.__call__", "ConnectionHandler.handle_connection",
          "certs.create_ca"}


@pytest.fixture
def type_checks_kept(monkeypatch):
    """install(lean=True) drops mitmproxy's debug type checks; other tests expect them back."""
    monkeypatch.setattr(http.MessageData, "__post_init__", http.MessageData.__post_init__)


# -- mitmproxy ---------------------------------------------------------------------------------------


def test_the_installed_mitmproxy_is_supported():
    mitmproxy_internals.check_version()
    mitmproxy_internals.check_version(version.VERSION)


@pytest.mark.parametrize("found", ["11.1.3", "12.4.0", "13.0.0", "12", "dev"])
def test_an_unknown_mitmproxy_is_refused_in_one_readable_line(found):
    with pytest.raises(mitmproxy_internals.UnsupportedMitmproxy) as refused:
        mitmproxy_internals.check_version(found)
    said = str(refused.value)
    assert f"mitmproxy {found} is not supported" in said and "12.2, 12.3" in said
    assert "addons/proxy/mitmproxy_internals.py" in said and "\n" not in said


def test_install_refuses_an_unknown_mitmproxy_before_patching(monkeypatch):
    monkeypatch.setattr(version, "VERSION", "13.0.0")
    with pytest.raises(mitmproxy_internals.UnsupportedMitmproxy, match="mitmproxy 13.0.0 is not supported"):
        mitmproxy_internals.install()


def test_install_puts_every_patch_in_place_once(type_checks_kept):
    mitmproxy_internals.install(lean=True)
    placed = {"make_error_response": _http1.make_error_response, "handle": HttpStream.handle_protocol_error,
              "body": HttpStream.check_body_size, "head": _http1.Http1Server.read_headers,
              "auth": proxyauth.SingleUser.__call__, "types": http.MessageData.__post_init__}
    mitmproxy_internals.install(lean=True)
    assert ALWAYS | {"MessageData.__post_init__"} <= mitmproxy_internals.patched()
    assert _http1.make_error_response is error_pages.json_error_response
    assert placed == {"make_error_response": _http1.make_error_response, "handle": HttpStream.handle_protocol_error,
                      "body": HttpStream.check_body_size, "head": _http1.Http1Server.read_headers,
                      "auth": proxyauth.SingleUser.__call__, "types": http.MessageData.__post_init__}


def test_a_new_ca_has_an_ecdsa_key_and_an_existing_one_is_kept(tmp_path):
    """The CA mitmproxy creates on first start signs every intercepted handshake: P-256, with mitmproxy's own
    names and extensions; a CA already there (clients trust it) is loaded as it is, RSA or not."""
    mitmproxy_internals.install()
    store = certs.CertStore.from_store(tmp_path / "new", "mitmproxy", 2048)
    assert store.default_ca.keyinfo == ("EC (secp256r1)", 256)
    ca = x509.load_pem_x509_certificate((tmp_path / "new" / "mitmproxy-ca-cert.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.subject.rfc4514_string() == "O=mitmproxy,CN=mitmproxy"
    ca.verify_directly_issued_by(ca)  # self-signed with the EC key
    leaf = store.get_cert("api.openai.com", [x509.DNSName("api.openai.com")]).cert
    assert leaf.keyinfo == ("EC (secp256r1)", 256) and leaf.issuer == store.default_ca.subject

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # an RSA CA made before
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "mitmproxy-ca.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                          serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))
    kept = certs.CertStore.from_store(tmp_path / "old", "mitmproxy", 2048)
    assert kept.default_ca.keyinfo == ("RSA", 2048) and kept.default_ca.cn == "old"


def test_install_wraps_again_what_was_put_back(monkeypatch):
    """Idempotence is read from the targets, not from a flag: a target restored (a test's monkeypatch) is wrapped again."""
    mitmproxy_internals.install()
    monkeypatch.setattr(proxyauth.SingleUser, "__call__", lambda self, user, password: True)
    assert "proxyauth.SingleUser.__call__" not in mitmproxy_internals.patched()
    mitmproxy_internals.install()
    assert "proxyauth.SingleUser.__call__" in mitmproxy_internals.patched()
    assert not proxyauth.SingleUser("user:pass")("user", "wrong")


def test_the_type_checks_are_dropped_only_for_the_lean_process(type_checks_kept):
    mitmproxy_internals.install()
    assert "MessageData.__post_init__" not in mitmproxy_internals.patched()


def test_single_user_goes_through_the_policy():
    mitmproxy_internals.install()
    assert proxyauth.SingleUser("user:pass")("user", "pass")
    assert proxyauth_compare.same_credentials("user", "pass", "user", "pass")
    assert not proxyauth_compare.same_credentials("user", "pass", "user", "pasS")


async def _answer_each_path(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An HTTP/1.1 server that answers every request, kept alive, with its own path."""
    while head := await reader.readuntil(b"\r\n\r\n"):
        path = head.split(b" ")[1]
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(path), path))
        await writer.drain()


async def _response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    size = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]) if b"content-length" in head.lower() else 0
    return head.split(b"\r\n")[0] + b" " + await reader.readexactly(size)


async def _requests_in_a_connect_tunnel() -> tuple[list[bytes], list[str], bool]:
    upstream = await asyncio.start_server(_answer_each_path, "127.0.0.1", 0)
    up_port = upstream.sockets[0].getsockname()[1]
    proxyserver = Proxyserver()
    with taddons.context(proxyserver, NextLayer()) as tctx:
        tctx.configure(proxyserver, listen_host="127.0.0.1", listen_port=0, connection_strategy="lazy")
        assert await proxyserver.setup_servers()
        proxyserver.running()
        reader, writer = await asyncio.open_connection(*proxyserver.listen_addrs()[0][:2])
        # the first request sent with the CONNECT, before its answer: held by the Http1Server, then passed on
        writer.write(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\nGET /first HTTP/1.1\r\nHost: a\r\n\r\n" % up_port)
        answers = [(await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0], await _response(reader)]
        mode = next(iter(proxyserver.connections.values())).layer  # the mode layer: HttpProxy
        stacks = [mode._handle_event.__qualname__]
        for path in (b"/second", b"/third"):
            writer.write(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path)
            answers.append(await _response(reader))
        writer.close()
        for _ in range(200):  # the client's close reaches the proxy and through it the upstream
            if not proxyserver.connections:
                break
            await asyncio.sleep(0.01)
        closed = not proxyserver.connections
        tctx.configure(proxyserver, server=False)
        await asyncio.sleep(0)
    upstream.close()
    return answers, stacks, closed


def test_an_http1_connect_tunnel_skips_the_layers_that_only_relay_it(type_checks_kept):
    """Once the CONNECT is answered, the mode layer hands events straight to the tunnel: requests sent with the
    CONNECT, after it, and the client's close all arrive as before."""
    mitmproxy_internals.install(lean=True)
    assert "HttpStream.handle_connect_finish" in mitmproxy_internals.patched()
    answers, stacks, closed = asyncio.run(_requests_in_a_connect_tunnel())
    assert answers == [b"HTTP/1.1 200 Connection established", b"HTTP/1.1 200 OK /first",
                       b"HTTP/1.1 200 OK /second", b"HTTP/1.1 200 OK /third"]
    assert stacks == ["_tunnel_events.<locals>.handle_event"]
    assert closed


class _KeepsWeakFlows:
    """An addon that remembers each finished flow only weakly."""

    def __init__(self) -> None:
        self.flows: list[weakref.ref] = []

    def response(self, flow: http.HTTPFlow) -> None:
        self.flows.append(weakref.ref(flow))


async def _finished_flows_alive(requests: int) -> tuple[list[bytes], int, int]:
    """Requests through a reverse proxy with the cyclic collector off: the answers, then how many flows are
    still alive once the proxy has taken a turn after the last answer, and how many were seen."""
    upstream = await asyncio.start_server(_answer_each_path, "127.0.0.1", 0)
    up_port = upstream.sockets[0].getsockname()[1]
    proxyserver, kept = Proxyserver(), _KeepsWeakFlows()
    with taddons.context(proxyserver, NextLayer(), kept) as tctx:
        tctx.configure(proxyserver, listen_host="127.0.0.1", listen_port=0, mode=[f"reverse:http://127.0.0.1:{up_port}"])
        assert await proxyserver.setup_servers()
        proxyserver.running()
        reader, writer = await asyncio.open_connection(*proxyserver.listen_addrs()[0][:2])
        answers = []
        for n in range(requests):
            writer.write(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
            answers.append(await _response(reader))
        await asyncio.sleep(0.05)  # the proxy's turns after the last answer went out
        alive = sum(flow() is not None for flow in kept.flows)
        writer.close()
        tctx.configure(proxyserver, server=False)
        await asyncio.sleep(0)
    upstream.close()
    return answers, alive, len(kept.flows)


@pytest.mark.parametrize("lean", [True, False])
def test_a_finished_stream_is_freed_by_reference_counting(type_checks_kept, monkeypatch, lean):
    """Once its stream is dropped, a request's stream, flow, messages and context are unlinked and freed at once,
    not left in reference cycles for the cyclic collector (what mitmproxy does: the `lean=False` case)."""
    stock = getattr(http_layer.HttpLayer.__init__, "__wrapped__", http_layer.HttpLayer.__init__)
    monkeypatch.setattr(http_layer.HttpLayer, "__init__", stock)  # put back after, whatever was there
    mitmproxy_internals.install(lean=lean)
    gc.collect()
    gc.disable()
    try:
        answers, alive, seen = asyncio.run(_finished_flows_alive(5))
    finally:
        gc.enable()
    assert answers == [b"HTTP/1.1 200 OK /%d" % n for n in range(5)] and seen == 5
    assert alive == (0 if lean else 5)


def _client_hello(server_name: str) -> bytes:
    """The first flight of a real TLS client: its ClientHello record."""
    tls = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(),
                                                server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_client_hello_is_parsed_once_for_the_next_layer_decision_and_the_tls_layer(type_checks_kept):
    mitmproxy_internals.install(lean=True)
    assert {"tls.parse_client_hello", "next_layer.parse_client_hello"} <= mitmproxy_internals.patched()
    assert next_layer.parse_client_hello is tls_layer.parse_client_hello  # one memory for both
    record = _client_hello("api.openai.com")
    first = next_layer.parse_client_hello(record)  # the next_layer addon, for allow_hosts
    assert first.sni == "api.openai.com"
    assert tls_layer.parse_client_hello(bytearray(record)) is first  # the ClientTLSLayer's buffer: not parsed again
    again = tls_layer.parse_client_hello(record)  # asked for a third time: parsed afresh, and equal
    assert again is not first and again.raw_bytes() == first.raw_bytes()
    assert tls_layer.parse_client_hello(record[:40]) is None  # incomplete: nothing kept
    other = _client_hello("api.anthropic.com")
    assert tls_layer.parse_client_hello(other).sni == "api.anthropic.com"
    with pytest.raises(ValueError):
        tls_layer.parse_client_hello(record[:5] + bytes(len(record) - 5))  # a record of junk: refused as before


class ShowNothing:
    def request(self, request):
        shown = request.copy()
        shown.path = "/hidden"
        return shown

    def flow(self, flow):
        return flow

    def options(self, dumped):
        return {name: {**option, "value": "hidden"} for name, option in dumped.items()}


def test_mitmweb_shows_flows_and_options_through_the_view_handed_in():
    from mitmproxy import options, optmanager
    from mitmproxy.test import tflow
    from mitmproxy.tools.web import app

    mitmproxy_internals.install(web=True)
    assert {"app.flow_to_json", "optmanager.dump_dicts", "export.formats[curl]"} <= mitmproxy_internals.patched()
    flow, view = tflow.tflow(), ShowNothing()
    assert app.flow_to_json(flow)["request"]["path"] == flow.request.path  # no view: unmasked
    mitmproxy_internals.show_web_through(view)
    try:
        assert app.flow_to_json(flow)["request"]["path"] == "/hidden"
        assert {o["value"] for o in optmanager.dump_dicts(options.Options(), ["mode"]).values()} == {"hidden"}
    finally:
        mitmproxy_internals.stop_showing_web_through(view)
    assert app.flow_to_json(flow)["request"]["path"] == flow.request.path


def test_no_web_view_without_the_wraps(monkeypatch):
    monkeypatch.setattr(mitmproxy_internals, "_placed", {})
    with pytest.raises(RuntimeError, match="Refusing to show provider keys"):
        mitmproxy_internals.show_web_through(ShowNothing())


# -- genai-prices ------------------------------------------------------------------------------------


def test_the_installed_genai_prices_is_supported():
    genai_prices_internals.check_version()


@pytest.mark.parametrize("found", ["0.1.9", "0.3.0", "1.0.0"])
def test_an_unknown_genai_prices_is_refused_in_one_readable_line(found, monkeypatch):
    with pytest.raises(genai_prices_internals.UnsupportedGenaiPrices) as refused:
        genai_prices_internals.check_version(found)
    said = str(refused.value)
    assert f"genai-prices {found} is not supported" in said and "0.2" in said
    assert "pricing/genai_prices_internals.py" in said and "\n" not in said
    monkeypatch.setattr(genai_prices_internals.metadata, "version", lambda name: found)
    with pytest.raises(genai_prices_internals.UnsupportedGenaiPrices, match=f"genai-prices {found} "):
        genai_prices_internals.check_version()


def test_what_the_fast_path_reads_is_still_there():
    provider, model = genai_prices_internals.find_provider_model("gpt-4o", "openai")
    assert (provider.id, genai_prices_internals.PER["input_mtok"], genai_prices_internals.PER["output_mtok"]) == (
        "openai", 1_000_000, 1_000_000)
    price = model.prices if not isinstance(model.prices, list) else model.prices[0].prices
    assert {"input_mtok", "output_mtok"} <= dict(genai_prices_internals.rates(price)).keys()
    with pytest.raises(LookupError):
        genai_prices_internals.find_provider_model("no-such-model-anywhere", "openai")
