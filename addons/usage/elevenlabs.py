"""ElevenLabs text to speech: `POST /v1/text-to-speech/{voice_id}` (and `/stream`, `/with-timestamps`).

ElevenLabs bills per character of the text spoken, at a rate set by `model_id`. The answer is audio
(or, with timestamps, JSON carrying it) and reports no usage in its body, so the characters are
measured from the request and flagged "estimated". The audio passes through as it comes.
"""

from __future__ import annotations

from typing import Any

from addons.usage.base import UsageReader, UsageReading
from addons.usage.json_fields import as_str
from pricing.usage import MediaUsage, TokenUsage

DEFAULT_MODEL = "eleven_multilingual_v2"  # what ElevenLabs uses when the request names none


class ElevenLabsReader(UsageReader):
    audio_bytes = 0  # passed on to the client
    @classmethod
    def endpoint_of(cls, path: str) -> tuple[str, str | None]:
        parts = path.split("/")
        if len(parts) >= 4 and parts[1] == "v1" and parts[2] == "text-to-speech":
            return "elevenlabs.text_to_speech", None
        return "other", None

    @classmethod
    def streams(cls, endpoint: str, req: dict[str, Any]) -> bool:
        return False  # /stream answers chunked audio, not events: streams_response passes it on

    def read_request(self, req: dict[str, Any], body: bytes) -> None:
        self.model = as_str(req.get("model_id")) or DEFAULT_MODEL
        self.prompt_chars = len(as_str(req.get("text")) or "")
        self.expected_media = MediaUsage(characters=self.prompt_chars)

    def streams_response(self, content_type: str) -> bool:
        return "json" not in content_type.lower()

    def feed(self, chunk: bytes) -> bytes:
        if chunk:
            self.audio_bytes += len(chunk)
            self._fed = True
            return chunk
        self._finished = True
        return b""

    def observe_body(self, body: bytes, content_type: str | None) -> None:
        if "json" in (content_type or "").lower():
            super().observe_body(body, content_type)  # errors, or audio with timestamps
        self.audio_bytes += len(body)

    def _read(self, obj: dict[str, Any]) -> None:
        if "detail" in obj:  # {"detail": {"status": ..., "message": ...}}
            self._error = True

    def result(self) -> UsageReading:
        if self.endpoint == "other" or self._error or not self.audio_bytes:
            return UsageReading(self.model, TokenUsage(), "none")
        return UsageReading(self.model, TokenUsage(), "estimated", MediaUsage(characters=self.prompt_chars))
