"""The hold store's own Redis connection: replies of every shape in order however the bytes arrive, a caller that
gives up not shifting the others' answers, and every way the connection fails mapped to redis-py's errors, which
FailoverHolds takes as Redis being away, followed by a fresh connection on the next call."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import time

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy import certs
from redis.exceptions import AuthenticationError, ConnectionError, NoScriptError, ResponseError, TimeoutError

from addons.billing.redis_wire import RedisWire, Script
from tests.harness import free_port, shared_redis

DB = 6  # of the machine's Redis (tests/test_limits.py names the others)


@pytest.fixture()
def url():
    shared_redis(DB)
    return f"redis://127.0.0.1:6379/{DB}"


REPLIES = (b":42\r\n" b"$-1\r\n" b"$5\r\nhe\r\no\r\n" b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n:-7\r\n$0\r\n\r\n"
           b"*-1\r\n" b"+OK\r\n" b"-ERR wrong\r\n" b"-NOSCRIPT No matching script\r\n" b":0\r\n")


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, len(REPLIES)])
def test_replies_of_every_shape_reach_their_callers_in_order_however_the_bytes_are_split(chunk):
    async def scenario():
        wire = RedisWire("redis://127.0.0.1:1/0")
        loop = asyncio.get_running_loop()
        answers = [loop.create_future() for _ in range(9)]
        wire._waiting.extend((answer, 0.0) for answer in answers)
        for i in range(0, len(REPLIES), chunk):
            wire._received(REPLIES[i:i + chunk])
        assert not wire._waiting and not wire._buffer
        assert [answer.result() for answer in answers[:6]] == [42, None, b"he\r\no", [1, [b"a", -7], b""], None, "OK"]
        assert type(answers[6].exception()) is ResponseError and str(answers[6].exception()) == "ERR wrong"
        assert isinstance(answers[7].exception(), NoScriptError) and answers[8].result() == 0

    asyncio.run(scenario())


def test_scripts_answer_through_redis_by_sha_and_load_themselves_when_redis_lost_them(url):
    shapes = Script("return {tonumber(ARGV[1]) + 1, ARGV[2], false, {ARGV[3]}}")

    async def scenario():
        wire = RedisWire(url)
        try:
            assert await wire.script(shapes, 41, "é", b"raw") == [42, "é".encode(), None, [b"raw"]]
            redis.Redis.from_url(url).script_flush()
            assert await wire.script(shapes, 1, "x", "y") == [2, b"x", None, [b"y"]]
            assert await wire.call("EVALSHA", shapes.sha, 0, 1, "x", "y") == [2, b"x", None, [b"y"]]  # loaded again
            assert await wire.call("SET", "k", 5) == "OK" and await wire.call("GET", "k") == b"5"
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await wire.call("HGET", "k", "f")
            assert await wire.call("INCR", "k") == 6  # an error reply fails its own call only
        finally:
            await wire.close()

    asyncio.run(scenario())


def test_a_caller_that_gives_up_leaves_the_others_their_own_answers(url):
    async def scenario():
        wire = RedisWire(url)
        try:
            await wire.call("PING")
            calls = [asyncio.ensure_future(wire.call("ECHO", str(i))) for i in range(5)]
            await asyncio.sleep(0)
            calls[2].cancel()
            assert await asyncio.gather(*calls[:2], *calls[3:]) == [b"0", b"1", b"3", b"4"]
            assert await wire.call("ECHO", "after") == b"after"
        finally:
            await wire.close()

    asyncio.run(scenario())


def test_a_url_with_credentials_and_database_authenticates_and_selects(url):
    admin = redis.Redis.from_url(url)
    admin.acl_setuser("tollgate_wire", enabled=True, passwords=["+s3cret-pass"], keys=["*"], commands=["+@all"])
    try:
        async def scenario():
            wire = RedisWire(f"redis://tollgate_wire:s3cret-pass@127.0.0.1:6379/{DB}")
            try:
                await wire.call("SET", "who", "wire")
            finally:
                await wire.close()
            wrong = RedisWire(f"redis://tollgate_wire:not-it@127.0.0.1:6379/{DB}")
            with pytest.raises(AuthenticationError) as refused:
                await wrong.call("PING")
            assert "not-it" not in str(refused.value)  # a secret is never echoed

        asyncio.run(scenario())
        assert admin.get("who") == b"wire"
    finally:
        admin.acl_deluser("tollgate_wire")


def test_a_dead_connection_fails_what_waits_and_the_next_call_connects_again(private_redis):
    async def scenario():
        wire = RedisWire(private_redis.url)
        try:
            await wire.call("SET", "k", 1)
            waiting = asyncio.ensure_future(wire.call("BLPOP", "nothing", 30))  # waits on the server
            await asyncio.sleep(0.05)
            private_redis.stop()
            with pytest.raises(ConnectionError):
                await waiting
            with pytest.raises(ConnectionError, match="cannot connect to Redis"):
                await wire.call("PING")
            private_redis.start()
            assert await wire.call("PING") == "PONG"
        finally:
            await wire.close()

    asyncio.run(scenario())


def test_a_server_that_stops_answering_times_out_every_waiting_call_and_is_connected_again(private_redis):
    async def scenario():
        wire = RedisWire(private_redis.url, timeout=0.3)
        try:
            await wire.call("CLIENT", "PAUSE", 1000, "ALL")  # answered; the calls after it are not, for a second
            started = asyncio.get_running_loop().time()
            stuck = await asyncio.gather(*(wire.call("PING") for _ in range(3)), return_exceptions=True)
            assert all(isinstance(e, TimeoutError) for e in stuck), stuck
            assert asyncio.get_running_loop().time() - started < 0.9
            await asyncio.sleep(1.0)
            assert await wire.call("PING") == "PONG"
        finally:
            await wire.close()

    asyncio.run(scenario())


def test_nothing_listening_is_a_connection_error_naming_only_the_address():
    async def scenario():
        port = free_port()
        wire = RedisWire(f"redis://user:hunter2@127.0.0.1:{port}/0")
        failed = await asyncio.gather(*(wire.call("PING") for _ in range(3)), return_exceptions=True)
        assert all(isinstance(e, ConnectionError) for e in failed)
        assert str(failed[0]) == f"cannot connect to Redis at 127.0.0.1:{port}: ConnectionRefusedError"

    asyncio.run(scenario())


@pytest.mark.e2e
def test_rediss_is_tls_verified_against_the_system_or_a_given_ca_unless_told_not_to(tmp_path):
    """A Redis behind TLS with a private CA: refused as unverified by default, reached with ssl_ca_certs (redis-py's
    option) naming that CA, or with ssl_cert_reqs=none."""
    ca = certs.CertStore.from_store(tmp_path, "test-ca", 2048)
    server = ca.get_cert("127.0.0.1", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], None)
    (tmp_path / "server.pem").write_bytes(server.cert.to_pem())
    (tmp_path / "server.key").write_bytes(server.privatekey.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(tmp_path / "server.pem"), "--tls-key-file", str(tmp_path / "server.key"),
                             "--tls-ca-cert-file", str(tmp_path / "test-ca-ca-cert.pem"), "--tls-auth-clients", "no",
                             "--save", ""], stdout=subprocess.DEVNULL)

    async def answer(url: str):
        wire = RedisWire(url)
        try:
            return await wire.call("PING")
        except ConnectionError as e:
            return str(e)
        finally:
            await wire.close()

    async def scenario():
        base = f"rediss://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while "ConnectionRefusedError" in (refused := await answer(base)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # starting
        assert refused == f"cannot connect to Redis at 127.0.0.1:{port}: SSLCertVerificationError"
        assert await answer(f"{base}?ssl_ca_certs={tmp_path}/test-ca-ca-cert.pem") == "PONG"
        assert await answer(f"{base}?ssl_cert_reqs=none") == "PONG"

    try:
        asyncio.run(scenario())
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("url, where", [
    ("redis://h:7000/3", ("h", 7000, None, 3, [])),
    ("redis://:pw@h", ("h", 6379, None, 0, ["pw"])),
    ("redis://u:p%40ss@h/0?db=5", ("h", 6379, None, 5, ["u", "p@ss"])),
    ("unix:///run/redis.sock?db=2", ("127.0.0.1", 6379, "/run/redis.sock", 2, [])),
])
def test_urls_name_the_server_database_and_credentials_as_redis_py_reads_them(url, where):
    wire = RedisWire(url)
    assert (wire.host, wire.port, wire.path, wire.db, wire.auth) == where


def test_a_url_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="redis://"):
        RedisWire("http://127.0.0.1:6379")
