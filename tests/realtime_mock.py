"""A local fake of OpenAI's Realtime API (GA event names), for tests/test_realtime.py: a WebSocket server on
its own thread (the `websockets` package) speaking the real event protocol.

On connect      session.created (the model from the URL's `model`, output audio as 24 kHz PCM).
session.update  session.updated with the session merged.
conversation.item.create   conversation.item.created (the item with an id and status "completed").
input_audio_buffer.append  the audio (base64) is buffered; nothing is answered, as OpenAI answers nothing.
input_audio_buffer.commit  input_audio_buffer.committed and conversation.item.created (the buffer as an item):
                the conversation now holds that audio, which every later response reads as input: its usage
                counts one input audio token per 100 ms of it (24 kHz pcm16, 4,800 bytes), as OpenAI counts.
response.create response.created, response.output_item.added, two response.output_text.delta and two
                response.output_audio.delta (base64 PCM) with their response.output_audio_transcript.delta,
                response.output_item.done, then response.done whose `response.usage` is the next of USAGES
                (text, audio and cached tokens, as OpenAI reports them), then rate_limits.updated.
                With `"metadata": {"mock": "cut"}` on the response, the deltas are sent and then the
                connection is dropped, before response.done; with `{"mock": "stall"}` the deltas are sent
                and nothing more, until the client closes.

Every connection is recorded (`sessions`): the upgrade's path and headers, the subprotocol chosen, every text
message received and sent in order (`received`, `sent`), and how it closed (`close_code`, `close_reason`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

# What each response of a session reports, in turn: OpenAI's response.usage shape.
USAGES = (
    {"total_tokens": 1450, "input_tokens": 1200, "output_tokens": 250,
     "input_token_details": {"text_tokens": 300, "audio_tokens": 900, "image_tokens": 0, "cached_tokens": 0,
                             "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}},
     "output_token_details": {"text_tokens": 50, "audio_tokens": 200}},
    {"total_tokens": 1900, "input_tokens": 1600, "output_tokens": 300,
     "input_token_details": {"text_tokens": 400, "audio_tokens": 1200, "image_tokens": 0, "cached_tokens": 1088,
                             "cached_tokens_details": {"text_tokens": 256, "audio_tokens": 832, "image_tokens": 0}},
     "output_token_details": {"text_tokens": 60, "audio_tokens": 240}},
    {"total_tokens": 2650, "input_tokens": 2300, "output_tokens": 350,
     "input_token_details": {"text_tokens": 500, "audio_tokens": 1800, "image_tokens": 0, "cached_tokens": 1536,
                             "cached_tokens_details": {"text_tokens": 384, "audio_tokens": 1152, "image_tokens": 0}},
     "output_token_details": {"text_tokens": 70, "audio_tokens": 280}},
)
AUDIO_CHUNK = bytes(range(256)) * 19  # 4864 bytes of "PCM"
AUDIO_BYTES_PER_TOKEN = 4_800  # of the client's 24 kHz pcm16 audio: one token per 100 ms
TEXT_DELTAS = ("Hello", " there!")


@dataclass
class MockSession:
    path: str
    headers: dict[str, str]
    subprotocol: str | None
    received: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    done_events: list[dict] = field(default_factory=list)
    audio_bytes: int = 0  # the client's audio received (appended), decoded
    heard_tokens: int = 0  # input audio tokens of the audio committed to the conversation
    close_code: int | None = None
    close_reason: str | None = None
    closed: threading.Event = field(default_factory=threading.Event)


def heard(usage: dict, audio_tokens: int) -> dict:
    """`usage` with the conversation's committed audio added to its input, as audio tokens."""
    if not audio_tokens:
        return usage
    details = usage["input_token_details"]
    return {**usage, "total_tokens": usage["total_tokens"] + audio_tokens,
            "input_tokens": usage["input_tokens"] + audio_tokens,
            "input_token_details": {**details, "audio_tokens": details["audio_tokens"] + audio_tokens}}


def _realtime_if_offered(connection: ServerConnection, offered) -> str | None:
    """As OpenAI answers: "realtime" where the client offers it (browsers), no subprotocol where none is."""
    return "realtime" if "realtime" in offered else None


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class RealtimeMock:
    """`with RealtimeMock() as mock:` serves on 127.0.0.1:`port` (`url`) until the block ends."""

    def __init__(self) -> None:
        self.sessions: list[MockSession] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._run, name="realtime-mock", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RealtimeMock:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Realtime mock did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._session, "127.0.0.1", 0, select_subprotocol=_realtime_if_offered, max_size=None,
                         compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop

    async def _session(self, ws: ServerConnection) -> None:
        request = ws.request
        record = MockSession(request.path, {k.lower(): v for k, v in request.headers.raw_items()}, ws.subprotocol)
        self.sessions.append(record)
        model = parse_qs(urlsplit(request.path).query).get("model", ["gpt-realtime"])[0]
        session = {"id": _id("sess"), "object": "realtime.session", "type": "realtime", "model": model,
                   "output_modalities": ["audio"], "instructions": "", "max_output_tokens": "inf",
                   "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}}}
        responses = buffered = 0
        try:
            await self._send(ws, record, {"type": "session.created", "session": session})
            async for message in ws:
                if not isinstance(message, str):
                    continue
                record.received.append(message)
                event = json.loads(message)
                kind = event.get("type")
                if kind == "session.update":
                    session.update(event.get("session") or {})
                    await self._send(ws, record, {"type": "session.updated", "session": session})
                elif kind == "conversation.item.create":
                    item = {**event["item"], "id": _id("item"), "object": "realtime.item", "status": "completed"}
                    await self._send(ws, record, {"type": "conversation.item.created", "previous_item_id": None,
                                                  "item": item})
                elif kind == "input_audio_buffer.append":
                    audio = len(base64.b64decode(event["audio"]))
                    buffered += audio
                    record.audio_bytes += audio
                elif kind == "input_audio_buffer.commit":
                    record.heard_tokens += -(-buffered // AUDIO_BYTES_PER_TOKEN)
                    buffered, item_id = 0, _id("item")
                    await self._send(ws, record, {"type": "input_audio_buffer.committed", "previous_item_id": None,
                                                  "item_id": item_id})
                    await self._send(ws, record, {"type": "conversation.item.created", "previous_item_id": None,
                                                  "item": {"id": item_id, "object": "realtime.item",
                                                           "type": "message", "role": "user", "status": "completed",
                                                           "content": [{"type": "input_audio", "transcript": None}]}})
                elif kind == "response.create":
                    options = event.get("response") or {}
                    cut = (options.get("metadata") or {}).get("mock")
                    await self._respond(ws, record, heard(USAGES[responses % len(USAGES)], record.heard_tokens), cut)
                    responses += 1
        except ConnectionClosed:
            pass
        finally:
            record.close_code, record.close_reason = ws.close_code, ws.close_reason
            record.closed.set()

    async def _respond(self, ws: ServerConnection, record: MockSession, usage: dict, cut: str | None) -> None:
        response_id, item_id = _id("resp"), _id("item")
        response = {"id": response_id, "object": "realtime.response", "status": "in_progress", "output": [],
                    "usage": None, "conversation_id": _id("conv"), "output_modalities": ["audio"]}
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": "in_progress", "content": []}
        await self._send(ws, record, {"type": "response.created", "response": response})
        await self._send(ws, record, {"type": "response.output_item.added", "response_id": response_id,
                                      "output_index": 0, "item": item})
        where = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        for text in TEXT_DELTAS:
            await self._send(ws, record, {"type": "response.output_text.delta", **where, "delta": text})
        for text in TEXT_DELTAS:
            await self._send(ws, record, {"type": "response.output_audio.delta", **where,
                                          "delta": base64.b64encode(AUDIO_CHUNK).decode()})
            await self._send(ws, record, {"type": "response.output_audio_transcript.delta", **where, "delta": text})
        if cut == "cut":
            ws.transport.abort()  # the provider drops the connection mid-response
            raise ConnectionClosed(None, None)
        if cut == "stall":
            await ws.wait_closed()  # never finishes: the client leaves mid-response
            raise ConnectionClosed(None, None)
        item = {**item, "status": "completed",
                "content": [{"type": "output_audio", "transcript": "".join(TEXT_DELTAS)}]}
        await self._send(ws, record, {"type": "response.output_item.done", "response_id": response_id,
                                      "output_index": 0, "item": item})
        done = {"type": "response.done", "response": {**response, "status": "completed", "output": [item],
                                                      "usage": usage}}
        record.done_events.append(done)
        await self._send(ws, record, done)
        await self._send(ws, record, {"type": "rate_limits.updated", "rate_limits": [
            {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5}]})

    @staticmethod
    async def _send(ws: ServerConnection, record: MockSession, event: dict) -> None:
        text = json.dumps({"event_id": _id("event"), **event})
        record.sent.append(text)
        await ws.send(text)
