"""OpenAI Realtime: what the events of one WebSocket session say about money, response by response.

A session opens with a GET upgrade to `.../realtime?model=...` (Azure: `/openai/realtime?deployment=...`)
and carries no request body. The server reports each response's usage in its `response.done` event:
`response.usage` with input and output tokens, their text/audio/image split, and the cached ones among the
input (`input_token_details.cached_tokens_details`). Tollgate charges every response as its own request
(addons/proxy/realtime.py), so this module reads per response:

- RealtimeReader: the session as its upgrade request shows it (the model, endpoint "realtime"), and what its
  next response may use, for that response's hold: input up to the conversation so far, output up to the
  session's max_output_tokens (else billing's default), all of it at the model's audio rates (cost_of_worst).
- ResponseReader: one response. Its usage from `response.done` ("reported"); cut before that, an estimate from
  the text and audio it carried ("estimated").
- server_event(): a message as a JSON object, or None for what is not one.
- input_chars(): what a client event adds to the input of the session's next response, for its top-up.

GA event names (`response.output_audio.delta`, `max_output_tokens`) and the beta's (`response.audio.delta`,
`max_response_output_tokens`) are both read.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from addons.usage.base import UsageReader, UsageReading
from addons.usage.json_fields import CHARS_PER_TOKEN, as_dict, as_str, count, tokens
from pricing.usage import MediaUsage, TokenUsage

ENDPOINT = "realtime"
MAX_EVENT = 16 * 1024 * 1024  # bytes of a server message worth parsing (audio deltas are a few KiB)

_TEXT_DELTAS = frozenset({"response.output_text.delta", "response.text.delta",
                          "response.output_audio_transcript.delta", "response.audio_transcript.delta"})
_AUDIO_DELTAS = frozenset({"response.output_audio.delta", "response.audio.delta"})
# Output audio of a cut response is estimated from its length: bytes per second of each format, and
# about 20 tokens a second (OpenAI counts output audio at roughly one token per 50 ms).
_AUDIO_BYTES_PER_SECOND = {"pcm16": 48_000, "audio/pcm": 48_000, "g711_ulaw": 8_000, "g711_alaw": 8_000,
                           "audio/pcmu": 8_000, "audio/pcma": 8_000}
AUDIO_TOKENS_PER_SECOND = 20
INPUT_AUDIO_TOKENS_PER_SECOND = 10  # the client's audio: OpenAI counts one token per 100 ms of it


def is_realtime_path(path: str) -> bool:
    """Whether an upgrade to `path` (no query) opens a Realtime session: OpenAI's /v1/realtime, Azure's
    /openai/realtime and /openai/v1/realtime."""
    return path.rstrip("/").endswith("/realtime")


def server_event(content: bytes | str) -> dict[str, Any] | None:
    """A message (the server's, or the client's) as its JSON object; None for anything else (binary frames, junk,
    a huge message)."""
    if len(content) > MAX_EVENT:
        return None
    try:
        event = json.loads(content)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) and isinstance(event.get("type"), str) else None


def response_usage(usage: dict[str, Any]) -> tuple[TokenUsage, MediaUsage]:
    """`response.usage` of a response.done event: the totals, and the audio and image tokens among them."""
    details_in = as_dict(usage.get("input_token_details"))
    cached = as_dict(details_in.get("cached_tokens_details"))
    details_out = as_dict(usage.get("output_token_details"))
    totals = TokenUsage(input_tokens=count(usage.get("input_tokens")),
                        cache_read_tokens=count(details_in.get("cached_tokens")),
                        output_tokens=count(usage.get("output_tokens")))
    media = MediaUsage(input_audio_tokens=count(details_in.get("audio_tokens")),
                       input_image_tokens=count(details_in.get("image_tokens")),
                       cache_audio_read_tokens=count(cached.get("audio_tokens")),
                       cache_image_read_tokens=count(cached.get("image_tokens")),
                       output_audio_tokens=count(details_out.get("audio_tokens")))
    return totals, media


def input_chars(event: dict[str, Any], audio_bytes_per_second: int) -> int:
    """What a client event adds to the input of the session's next response, in characters as the cashier reads
    them (four a token): an input_audio_buffer.append's audio, a conversation.item.create's item, a
    response.create's own instructions, tools and input items, a session.update's instructions and tools (every
    response reads them; counted in full each time they are sent, as the previous response's usage may not hold
    them yet). Other events add nothing."""
    kind = event["type"]
    if kind == "input_audio_buffer.append":
        return _audio_chars(event.get("audio"), audio_bytes_per_second)
    if kind == "conversation.item.create":
        return _item_chars(as_dict(event.get("item")), audio_bytes_per_second)
    if kind == "response.create":
        response = as_dict(event.get("response"))
        items = response.get("input")
        return _setup_chars(response) + (sum(
            _item_chars(as_dict(item), audio_bytes_per_second) for item in items) if isinstance(items, list) else 0)
    if kind == "session.update":
        return _setup_chars(as_dict(event.get("session")))
    return 0


def _setup_chars(setup: dict[str, Any]) -> int:
    """A session's or response's instructions, and its tools as the JSON they are sent as."""
    tools = setup.get("tools")
    return len(as_str(setup.get("instructions")) or "") + (
        len(json.dumps(tools, separators=(",", ":"))) if isinstance(tools, list) and tools else 0)


def _audio_chars(audio: Any, bytes_per_second: int) -> int:
    """Base64 audio as input tokens (INPUT_AUDIO_TOKENS_PER_SECOND), four characters each."""
    if not isinstance(audio, str):
        return 0
    audio_bytes = len(audio) * 3 // 4 - audio[-2:].count("=")  # less the padding
    return -(-audio_bytes * INPUT_AUDIO_TOKENS_PER_SECOND // bytes_per_second) * CHARS_PER_TOKEN


def _item_chars(item: dict[str, Any], audio_bytes_per_second: int) -> int:
    """A conversation item's input: its content's text and audio, a function call's arguments or output."""
    chars = sum(len(value) for name in ("arguments", "output") if isinstance(value := item.get(name), str))
    content = item.get("content")
    for part in content if isinstance(content, list) else ():
        part = as_dict(part)
        if isinstance(audio := part.get("audio"), str):
            chars += _audio_chars(audio, audio_bytes_per_second)
        elif isinstance(text := part.get("text") or part.get("transcript"), str):
            chars += len(text)
    return chars


def worst_media(usage: TokenUsage) -> MediaUsage:
    """The dearest reading of `usage` a Realtime model can have: every token audio, none of it cached."""
    return MediaUsage(input_audio_tokens=usage.input_tokens, output_audio_tokens=usage.output_tokens)


class RealtimeReader(UsageReader):
    """The session, for its admission and each hold: the model, and what its next response may use.

    `prompt_chars` stands for the conversation so far (the input of the next response: four characters a
    token, as the cashier's worst case reads it); `max_output_tokens` is the session's cap, if it set one.
    """

    audio_format = "pcm16"  # of the output audio, as the session last set it
    input_audio_bytes_per_second = 48_000  # of the client's audio (24 kHz pcm16 unless the session says)
    pending_chars = 0  # input added while a response ran: the response after it reads it too

    @classmethod
    def from_upgrade(cls, family: str, query: str) -> RealtimeReader:
        params = dict(parse_qsl(query))
        model = as_str(params.get("model")) or as_str(params.get("deployment"))
        return cls(family, ENDPOINT, model, stream_requested=True, basis="metered")

    def session_configured(self, session: dict[str, Any]) -> None:
        """session.created / session.updated: the output cap the server confirms, and the model where the upgrade
        named none (the one it named prices the session: an Azure session may answer with its deployment's name)."""
        if not self.model and (model := as_str(session.get("model"))):
            self.model = model
        cap = session.get("max_output_tokens", session.get("max_response_output_tokens"))
        if cap is not None:  # "inf" lifts a cap set before
            self.max_output_tokens = count(cap) or None
        audio = as_dict(session.get("audio"))
        audio_format = as_dict(as_dict(audio.get("output")).get("format")).get("type") or session.get(
            "output_audio_format")
        if isinstance(audio_format, str):
            self.audio_format = audio_format
        audio_format = as_dict(as_dict(audio.get("input")).get("format")).get("type") or session.get(
            "input_audio_format")
        if isinstance(audio_format, str):
            self.input_audio_bytes_per_second = _AUDIO_BYTES_PER_SECOND.get(audio_format, 48_000)

    def context_after(self, usage: TokenUsage) -> None:
        """A response finished with `usage`: the next one reads all of it again (its input and its output), and
        what the client added while it ran."""
        self.prompt_chars = (usage.input_tokens + usage.output_tokens) * CHARS_PER_TOKEN + self.pending_chars
        self.pending_chars = 0

    def response(self, max_output_tokens: int | None) -> ResponseReader:
        """The reader of the session's next response (its own cap, where response.create named one)."""
        reader = ResponseReader(self.family, ENDPOINT, self.model, stream_requested=True, basis="metered",
                                prompt_chars=self.prompt_chars,
                                max_output_tokens=max_output_tokens or self.max_output_tokens)
        reader.audio_bytes_per_second = _AUDIO_BYTES_PER_SECOND.get(self.audio_format, 48_000)
        return reader

    def result(self) -> UsageReading:
        return UsageReading(self.model, TokenUsage(), "none")


class ResponseReader(UsageReader):
    """One response of a session: `done()` with its response.done event, or `result()` as it was cut."""

    audio_bytes_per_second = 48_000

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.response_id: str | None = None
        self.status: str | None = None  # response.done's status: completed, cancelled, incomplete, failed
        self._audio_bytes = 0

    def delta(self, event: dict[str, Any]) -> None:
        """An output delta: its text counted, its audio measured (base64, four characters per three bytes)."""
        kind, delta = event.get("type"), event.get("delta")
        if not isinstance(delta, str):
            return
        self._responded = self._fed = True
        if kind in _TEXT_DELTAS:
            self._out_chars += len(delta)
        elif kind in _AUDIO_DELTAS:
            self._audio_bytes += len(delta) * 3 // 4

    def done(self, response: dict[str, Any]) -> None:
        """The response.done event's `response`: its usage is the provider's last word."""
        self.status = as_str(response.get("status"))
        self._responded = self._fed = True
        if isinstance(usage := response.get("usage"), dict):
            self._usage, self.media = response_usage(usage)
        self._finished = True
        self._final = self._usage is not None

    def result(self) -> UsageReading:
        if self._final:
            return UsageReading(self.model, self._usage, "reported", self.media)
        if not self._responded:
            return UsageReading(self.model, TokenUsage(), "none")
        audio = -(-self._audio_bytes * AUDIO_TOKENS_PER_SECOND // self.audio_bytes_per_second)
        output = tokens(self._out_chars) + audio
        usage = TokenUsage(input_tokens=tokens(self.prompt_chars), output_tokens=output)
        return UsageReading(self.model, usage, "estimated", MediaUsage(output_audio_tokens=audio) if audio else None)
