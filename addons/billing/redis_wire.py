"""One pipelined Redis connection for the hold scripts, every request's admission and commit.

redis-py spends about 45 us of the gateway's CPU on a script call even when calls are coalesced into pipelines
(its pool's Condition, pipeline bookkeeping, a pure-Python RESP parser: bench/redis_admission_cost.py), three
times what Redis itself spends running it. Here a call is packed RESP written to one socket, and its future waits
in a FIFO for the reply, which Redis sends in order: calls made in the same loop turn leave as one write, however
many requests are in flight, and a lone call waits for nothing.

Failures are redis-py's exceptions, so callers treat both clients alike: a connection that cannot be opened, is
closed, or leaves the oldest call unanswered for `timeout` seconds fails every call waiting on it with
ConnectionError or TimeoutError (the next call connects again); an error reply fails its own call only
(ResponseError; NoScriptError, which `script` answers by sending the script itself).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import NamedTuple
from urllib.parse import urlsplit

from mitmproxy.utils.asyncio_utils import create_task
from redis.connection import parse_url
from redis.exceptions import AuthenticationError, ConnectionError, NoScriptError, ResponseError, TimeoutError

_INCOMPLETE = -1


class Script:
    """A Lua script, called by its sha while Redis has it, else sent whole (which caches it again)."""

    def __init__(self, text: str) -> None:
        self.text = text.encode()
        self.sha = hashlib.sha1(self.text).hexdigest().encode()
        self.by_sha = packed(b"EVALSHA", self.sha, 0)  # no keys: they are built in the script
        self.by_text = packed(b"EVAL", self.text, 0)


class Packed(NamedTuple):
    """Arguments already in RESP, to be sent as they are: what stays the same from call to call is packed once."""

    count: int
    data: bytes


def packed(*args: str | bytes | int) -> Packed:
    """Arguments as RESP bulk strings (str as UTF-8, int in decimal)."""
    parts = [arg if type(arg) is bytes else arg.encode() if type(arg) is str else b"%d" % arg for arg in args]
    return Packed(len(parts), b"".join([b"$%d\r\n%b\r\n" % (len(part), part) for part in parts]))


def _command(*parts: Packed) -> bytes:
    return b"*%d\r\n" % sum(part.count for part in parts) + b"".join([part.data for part in parts])


def _reply(buffer: bytearray, at: int) -> tuple[object, int]:
    """The reply starting at `at` and where the next begins, or (None, _INCOMPLETE) until all of it is here."""
    end = buffer.find(b"\r\n", at)
    if end < 0:
        return None, _INCOMPLETE
    kind, line, after = buffer[at], buffer[at + 1:end], end + 2
    if kind == 58:  # ':' an integer
        return int(line), after
    if kind == 42:  # '*' an array
        count, items = int(line), []
        for _ in range(count):  # -1, a nil array, makes none
            if after < len(buffer) and buffer[after] == 58 and (close := buffer.find(b"\r\n", after)) > 0:
                items.append(int(buffer[after + 1:close]))  # an integer, what scripts answer, without a call
                after = close + 2
                continue
            item, after = _reply(buffer, after)
            if after == _INCOMPLETE:
                return None, _INCOMPLETE
            items.append(item)
        return (items if count >= 0 else None), after
    if kind == 36:  # '$' a bulk string
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return None, _INCOMPLETE
        return bytes(buffer[after:after + size]), after + size + 2
    if kind == 43:  # '+' a status
        return line.decode(), after
    message = line.decode(errors="replace")  # '-' an error
    return (NoScriptError if message.startswith("NOSCRIPT") else ResponseError)(message), after


class _Replies(asyncio.Protocol):
    def __init__(self, wire: RedisWire) -> None:
        self.wire = wire

    def data_received(self, data: bytes) -> None:
        self.wire._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.wire._lost(self, ConnectionError("Redis closed the connection"))


class RedisWire:
    def __init__(self, url: str, timeout: float = 1.0) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("a Redis URL starts with redis://, rediss:// or unix://")
        options = parse_url(url)  # as redis-py reads it: the database from the path or ?db=, the parts unquoted
        self.path = options.get("path")
        self.host, self.port = options.get("host") or "127.0.0.1", options.get("port") or 6379
        self.db = options.get("db") or 0
        password = options.get("password")
        self.auth = [value for value in (options.get("username"), password) if value] if password else []
        self.tls = _tls(options) if scheme == "rediss" else None
        self.timeout = timeout
        self._replies: _Replies | None = None  # the open connection's
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future | None = None
        self._waiting: deque[tuple[asyncio.Future, float]] = deque()  # in the order Redis answers, with when sent
        self._out: list[bytes] = []
        self._buffer = bytearray()
        self._watch: asyncio.TimerHandle | None = None

    def call(self, *args: str | bytes | int):
        """The command's reply, awaited."""
        return self.send(packed(*args))

    def send(self, *parts: Packed):
        """The reply to the command the parts make, awaited."""
        if self._transport is None:
            return self._send_connecting(parts)
        return self._send(_command(*parts))

    def script(self, script: Script, *args: str | bytes | int):
        return self.run(script, packed(*args))

    async def run(self, script: Script, *parts: Packed):
        """The script's reply to the arguments the parts make."""
        try:
            return await self.send(script.by_sha, *parts)
        except NoScriptError:  # Redis lost it (a restart, SCRIPT FLUSH): EVAL caches it again
            return await self.send(script.by_text, *parts)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()  # its _lost fails what waits

    async def _send_connecting(self, parts: tuple[Packed, ...]):
        await self._connected()
        if self._transport is None:  # lost again before this caller woke
            raise ConnectionError("Redis closed the connection")
        return await self._send(_command(*parts))

    def _send(self, command: bytes) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        now = loop.time()
        self._waiting.append((answer, now))
        if not self._out:
            loop.call_soon(self._flush)  # what else this loop turn sends goes in the same write
        self._out.append(command)
        if self._watch is None:
            self._watch = loop.call_at(now + self.timeout, self._overdue)
        return answer

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None:
            self._transport.write(b"".join(out))

    async def _connected(self) -> None:
        if self._connecting is None:
            self._connecting = create_task(self._connect(), name="tollgate-redis-connect", keep_ref=True)
            self._connecting.add_done_callback(self._connect_done)
        await asyncio.shield(self._connecting)

    def _connect_done(self, connecting: asyncio.Future) -> None:
        self._connecting = None
        if not connecting.cancelled():
            connecting.exception()  # retrieved: each waiter raises it

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        where = self.path or f"{self.host}:{self.port}"
        try:
            if self.path:
                opening = loop.create_unix_connection(lambda: _Replies(self), self.path)
            else:
                opening = loop.create_connection(lambda: _Replies(self), self.host, self.port, ssl=self.tls)
            transport, replies = await asyncio.wait_for(opening, self.timeout)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as e:
            raise ConnectionError(f"cannot connect to Redis at {where}: {type(e).__name__}") from None
        self._transport, self._replies = transport, replies
        hello = [self._send(_command(packed(b"AUTH", *self.auth)))] if self.auth else []
        if self.db:
            hello.append(self._send(_command(packed(b"SELECT", self.db))))
        try:
            await asyncio.gather(*hello)
        except ResponseError as e:
            transport.abort()
            error = AuthenticationError if "AUTH" in str(e) or "WRONGPASS" in str(e) else ConnectionError
            raise error(f"Redis at {where} refused the connection's setup: {str(e).split(' ', 1)[0]}") from None

    def _received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        at = 0
        while self._waiting:
            value, after = _reply(buffer, at)
            if after == _INCOMPLETE:
                break
            at = after
            answer, _ = self._waiting.popleft()
            if not answer.done():  # its caller may have been cancelled meanwhile
                if isinstance(value, ResponseError):
                    answer.set_exception(value)
                else:
                    answer.set_result(value)
        del buffer[:at]

    def _lost(self, replies: _Replies | None, error: Exception) -> None:
        if replies is not self._replies:
            return  # an earlier connection's
        self._transport = self._replies = None
        self._buffer.clear()
        self._out.clear()
        waiting, self._waiting = self._waiting, deque()
        for answer, _ in waiting:
            if not answer.done():
                answer.set_exception(error)

    def _overdue(self) -> None:
        """The oldest call unanswered for `timeout` s: the connection counts as dead, like a socket timeout."""
        self._watch = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        sent = self._waiting[0][1]
        if loop.time() < sent + self.timeout:
            self._watch = loop.call_at(sent + self.timeout, self._overdue)
            return
        transport = self._transport
        self._lost(self._replies, TimeoutError(f"Redis did not answer within {self.timeout:g} s"))
        if transport is not None:
            transport.abort()


def _tls(options: dict) -> ssl.SSLContext:
    """rediss://: verified as a browser would, unless the URL says ssl_cert_reqs=none (redis-py's option)."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if str(options.get("ssl_cert_reqs", "required")).lower() in ("none", "optional"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
