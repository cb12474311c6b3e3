"""OpenAI's media endpoints: images (generations, edits), audio transcriptions and translations,
and speech. OpenAIFamilyReader (the openai family's entry in readers.py) picks them by endpoint, so every
OpenAI-compatible provider gets them.

- Images: gpt-image models report token usage (image tokens within it); dall-e models report none and
  are priced per image, by the request's quality and size and the number of images answered.
- Transcriptions: whisper-1 is priced per minute: the duration the answer reports (verbose_json,
  or usage {type: duration}), else the uploaded file's, measured here and flagged "estimated".
  gpt-4o-*-transcribe models report token usage (audio tokens within it).
- Speech: tts-1 is priced per character of input, measured from the request ("estimated");
  gpt-4o-mini-tts is priced per token and reports them only in its SSE stream (stream_format "sse").
  Otherwise its input tokens are estimated from the text, and its output audio tokens (20 a second) from
  the length of the audio it answered with (read from the audio's header and size as it passes: mp3,
  wav, flac, pcm), or, for opus and aac, from the text at the rate speech is spoken. The audio passes
  through as it comes (streams_response).

Uploads are multipart: only their small fields are decoded, the file is read in place (multipart.py).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal
from typing import Any

from addons.usage import audio_length, multipart
from addons.usage.base import UsageReader, UsageReading
from addons.usage.json_fields import as_dict, as_list, as_str, count, loads, tokens
from addons.usage.openai import OpenAIReader, openai_usage
from addons.usage.realtime import AUDIO_TOKENS_PER_SECOND
from pricing.usage import MediaUsage, TokenUsage

_IMAGE_DONE = frozenset({"image_generation.completed", "image_edit.completed"})
_DEFAULT_SIZE = "1024x1024"  # what every image model makes when no size is asked for


def _multipart_or_json(endpoint: str, body: bytes) -> dict[str, Any]:
    if body.startswith(b"--"):
        return dict(multipart.fields(body))
    return UsageReader.request_fields(endpoint, body)


def _whole(value: Any, default: int) -> int:
    """A count from JSON or a form field ("2"), else `default`."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1000 else default


def _true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


class _UploadReader(UsageReader):
    """A media endpoint's request: a multipart form (an upload) or JSON, streamed when it says `stream`."""

    @classmethod
    def request_fields(cls, endpoint: str, body: bytes) -> dict[str, Any]:
        return _multipart_or_json(endpoint, body)

    @classmethod
    def streams(cls, endpoint: str, req: dict[str, Any]) -> bool:
        return _true(req.get("stream"))


class ImagesReader(_UploadReader):
    """Images made: a JSON answer ({data: [...], usage?}), or a stream of partial images then a completed event."""

    variant = "standard/" + _DEFAULT_SIZE  # "<quality>/<size>" asked for
    images = 0  # images answered so far

    def read_request(self, req: dict[str, Any], body: bytes) -> None:
        self.model = self.model or "dall-e-2"  # OpenAI's default image model
        size = as_str(req.get("size")) or _DEFAULT_SIZE
        quality = as_str(req.get("quality")) or "standard"
        self.variant = f"{quality}/{size}".lower()
        self.prompt_chars = len(as_str(req.get("prompt")) or "")
        self.expected_media = MediaUsage(images=_whole(req.get("n"), 1), image_variant=self.variant)

    def _read(self, obj: dict[str, Any]) -> None:
        if self._error:
            return
        kind = obj.get("type")
        if isinstance(kind, str):  # a stream event
            if kind in _IMAGE_DONE:
                self.images += 1
                self._media_usage(obj.get("usage"), final=True)
            return
        self._model(obj.get("model"))
        self.images += len(as_list(obj.get("data")))
        self._media_usage(obj.get("usage"), final=True)

    def _media_usage(self, usage: Any, final: bool) -> None:
        u = as_dict(usage)
        tokens_used = openai_usage(u) if u else TokenUsage()
        out_details = as_dict(u.get("output_tokens_details"))
        self.media = MediaUsage(
            images=self.images, image_variant=self.variant,
            input_image_tokens=count(as_dict(u.get("input_tokens_details")).get("image_tokens")),
            # the output of an image endpoint is image tokens, unless the answer splits them
            output_image_tokens=count(out_details["image_tokens"]) if "image_tokens" in out_details
            else tokens_used.output_tokens,
        )
        self._report(tokens_used, final)


class TranscriptionReader(_UploadReader):
    """A transcript: JSON, verbose JSON, plain text (text, srt, vtt) or an SSE stream (gpt-4o transcribe models)."""

    file_seconds: Decimal | None = None  # the upload's length, measured
    reported_seconds: Decimal | None = None  # the length the answer reports
    audio_tokens = 0  # of the input tokens reported
    answered = False  # an answer that is no error came

    def read_request(self, req: dict[str, Any], body: bytes) -> None:
        self.model = self.model or "whisper-1"
        self.prompt_chars = 0  # the upload is audio; its prompt field is a hint, not billed text
        upload = multipart.first_file(body, "file")
        self.file_seconds = audio_length.seconds(upload.data) if upload is not None else None
        self.expected_media = MediaUsage(audio_seconds=self.file_seconds)

    def observe_body(self, body: bytes, content_type: str | None) -> None:
        super().observe_body(body, content_type)
        self.reported_seconds = self.measures.get("audio_seconds")
        # text, srt and vtt answers are not JSON: an answer that is no error is a transcript
        self.answered = bool(body) and not self._error and (loads(body) is not None or "json" not in (content_type or ""))

    def _read(self, obj: dict[str, Any]) -> None:
        self.answered = True
        usage = as_dict(obj.get("usage"))
        if usage.get("type") == "tokens" or "input_tokens" in usage:
            details = as_dict(usage.get("input_token_details") or usage.get("input_tokens_details"))
            self.audio_tokens = count(details.get("audio_tokens"))
            self._report(TokenUsage(input_tokens=count(usage.get("input_tokens")),
                                    output_tokens=count(usage.get("output_tokens"))), True)

    def result(self) -> UsageReading:
        reading = super().result()
        if self._error or not (self.answered or self._responded):
            return UsageReading(self.model, TokenUsage(), "none")
        seconds = self.reported_seconds if self.reported_seconds is not None else self.file_seconds
        self.media = MediaUsage(audio_seconds=seconds, input_audio_tokens=self.audio_tokens)
        if reading.source == "reported":  # priced by the tokens the answer reported
            return UsageReading(reading.model, reading.usage, "reported", self.media)
        source = "reported" if self.reported_seconds is not None else "estimated"
        return UsageReading(reading.model, TokenUsage(), source, self.media)


CHARACTERS_PER_SECOND = 15  # speech at speed 1.0 (4,096 characters make 256 to 268 s of audio)
PCM_RATE = 24_000  # OpenAI's pcm: 24 kHz, 16-bit signed, mono, no header
_LENGTH_READ = frozenset({"mp3", "wav", "flac"})  # formats whose length audio_length reads (opus, aac: not)


class SpeechReader(UsageReader):
    """Audio made from text: raw audio bytes passed on as they come, or (stream_format "sse") audio deltas
    and a final `speech.audio.done` event with the token usage."""

    audio_bytes = 0  # of raw audio passed on

    @classmethod
    def streams(cls, endpoint: str, req: dict[str, Any]) -> bool:
        return req.get("stream_format") == "sse"

    def read_request(self, req: dict[str, Any], body: bytes) -> None:
        self.prompt_chars = len(as_str(req.get("input")) or "")  # what is billed: the characters spoken
        self.expected_media = MediaUsage(characters=self.prompt_chars)
        self.instruction_chars = len(as_str(req.get("instructions")) or "")  # input tokens too (gpt-4o-mini-tts)
        self.response_format = as_str(req.get("response_format")) or "mp3"
        speed = req.get("speed")  # 0.25 to 4.0; anything else is refused by the provider, or taken as 1.0 here
        usable = isinstance(speed, (int, float)) and not isinstance(speed, bool) and 0.25 <= speed <= 4
        self.speed = Decimal(str(speed)) if usable else Decimal(1)
        self.head = bytearray()  # the audio's first bytes, where its format states its length
        self.max_output_tokens = 2 * _audio_tokens(self._spoken_seconds())  # a hold's worst case: twice as slow

    def streams_response(self, content_type: str) -> bool:
        return True

    def feed(self, chunk: bytes) -> bytes:
        if not self.stream_requested:  # audio: counted, its head kept, never parsed or held
            if chunk:
                self._audio(chunk)
                self._fed = True
                return chunk
            self._finished = True
            return b""
        return super().feed(chunk)

    def observe_body(self, body: bytes, content_type: str | None) -> None:
        if "json" in (content_type or "") or "event-stream" in (content_type or ""):
            super().observe_body(body, content_type)
        elif body:
            self._audio(body)
            self._finished = True

    def _audio(self, data: bytes) -> None:
        self.audio_bytes += len(data)
        if len(self.head) < audio_length.HEAD_KEPT:
            self.head += data[:audio_length.HEAD_KEPT - len(self.head)]

    def _read(self, obj: dict[str, Any]) -> None:
        if obj.get("type") == "speech.audio.done" and isinstance(obj.get("usage"), dict):
            self._report(openai_usage(obj["usage"]), True)

    def audio_seconds(self) -> Decimal | None:
        """How long the audio answered plays, where its format says (None: opus, aac, or not understood)."""
        if self.response_format == "pcm":
            return audio_length.pcm_seconds(self.audio_bytes, PCM_RATE)
        if self.response_format in _LENGTH_READ:
            return audio_length.seconds(self.head, self.audio_bytes)
        return None

    def _spoken_seconds(self) -> Decimal:
        return Decimal(self.prompt_chars) / (CHARACTERS_PER_SECOND * self.speed)

    def result(self) -> UsageReading:
        reading = super().result()
        if self._error or not (self.audio_bytes or self._responded):
            return UsageReading(self.model, TokenUsage(), "none")
        self.media = MediaUsage(characters=self.prompt_chars)
        if reading.source == "reported":
            return UsageReading(reading.model, reading.usage, "reported", self.media)
        # characters are measured from the request; a token-priced model's input tokens estimated from them (and
        # its instructions), its output audio tokens from the audio's length (a character-priced model's price
        # counts neither)
        seconds = self.audio_seconds()
        usage = TokenUsage(input_tokens=tokens(self.prompt_chars + self.instruction_chars),
                           output_tokens=_audio_tokens(seconds if seconds is not None else self._spoken_seconds()))
        return UsageReading(reading.model, usage, "estimated", self.media)


def _audio_tokens(seconds: Decimal) -> int:
    """Output audio tokens as OpenAI counts them, about one per 50 ms (as for Realtime, realtime.py): a 268 s
    gpt-4o-mini-tts clip has been seen billed 5,392 tokens, 20.1 a second; OpenAI's own estimate, $0.015 a
    minute at $12 per million, is 20.8."""
    return int((seconds * AUDIO_TOKENS_PER_SECOND).to_integral_value(ROUND_CEILING))


MEDIA_ENDPOINTS = (
    ("/images/generations", "images.generations"),
    ("/images/edits", "images.edits"),
    ("/audio/transcriptions", "audio.transcriptions"),
    ("/audio/translations", "audio.translations"),
    ("/audio/speech", "audio.speech"),
)
READERS_BY_ENDPOINT: dict[str, type[UsageReader]] = {
    "images.generations": ImagesReader,
    "images.edits": ImagesReader,
    "audio.transcriptions": TranscriptionReader,
    "audio.translations": TranscriptionReader,
    "audio.speech": SpeechReader,
}


class OpenAIFamilyReader(OpenAIReader):
    """The openai family: OpenAIReader's text endpoints and the media endpoints above."""

    ENDPOINTS = (*MEDIA_ENDPOINTS, *OpenAIReader.ENDPOINTS)

    @classmethod
    def for_endpoint(cls, endpoint: str) -> type[UsageReader]:
        return READERS_BY_ENDPOINT.get(endpoint) or super().for_endpoint(endpoint)
