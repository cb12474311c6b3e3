"""Google's Gemini API: the model and the verb are in the URL (`models/{model}:{verb}`).

streamGenerateContent streams server-sent events with `alt=sse`, else one JSON array whose
items arrive in pieces. Every chunk may carry `usageMetadata`; the one with a finishReason is final.
Image and speech output (gemini-*-image, *-tts) is priced apart from text: the usage's per-modality
details (`candidatesTokensDetails`, `promptTokensDetails`) give the image and audio tokens within it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote

from addons.usage.base import UsageReader
from addons.usage.json_fields import as_dict, as_list, count, text_chars
from pricing.usage import MediaUsage, TokenUsage

_VERBS = {
    "generateContent": "generateContent",
    "streamGenerateContent": "streamGenerateContent",
    "embedContent": "embedContent",
    "batchEmbedContents": "embedContent",
}
_OUT_KEYS = frozenset({"content", "parts", "text"})


class GeminiReader(UsageReader):
    EMBEDDINGS = frozenset({"embedContent"})

    @classmethod
    def endpoint_of(cls, path: str) -> tuple[str, str | None]:
        resource, _, verb = unquote(path.rpartition("/")[2]).partition(":")
        if verb in _VERBS:
            return _VERBS[verb], resource or None
        return "other", None

    @classmethod
    def streams(cls, endpoint: str, req: dict[str, Any]) -> bool:
        return endpoint == "streamGenerateContent"

    @classmethod
    def json_array(cls, endpoint: str, query: str) -> bool:
        return endpoint == "streamGenerateContent" and parse_qs(query or "").get("alt") != ["sse"]

    def _read(self, obj: dict[str, Any]) -> None:
        self._model(obj.get("modelVersion"))
        candidates = obj.get("candidates")
        self._out_chars += text_chars(candidates, _OUT_KEYS)
        meta = obj.get("usageMetadata")
        if isinstance(meta, dict):
            ends = any(as_dict(c).get("finishReason") for c in as_list(candidates))
            self._report(gemini_usage(meta), ends)
            self.media = gemini_media(meta)


def gemini_usage(m: dict[str, Any]) -> TokenUsage:
    """promptTokenCount includes the cache; candidatesTokenCount excludes thoughts."""
    thoughts = count(m.get("thoughtsTokenCount"))
    return TokenUsage(
        count(m.get("promptTokenCount")) + count(m.get("toolUsePromptTokenCount")),
        count(m.get("cachedContentTokenCount")),
        0,
        count(m.get("candidatesTokenCount")) + thoughts,
        thoughts,
    )


def gemini_media(m: dict[str, Any]) -> MediaUsage | None:
    """The image and audio tokens within the usage, by modality; None when it lists only text."""
    def tokens_of(details: Any, modality: str) -> int:
        return sum(count(d.get("tokenCount")) for d in map(as_dict, as_list(details)) if d.get("modality") == modality)

    prompt, made = m.get("promptTokensDetails"), m.get("candidatesTokensDetails")
    media = MediaUsage(input_image_tokens=tokens_of(prompt, "IMAGE"), input_audio_tokens=tokens_of(prompt, "AUDIO"),
                       output_image_tokens=tokens_of(made, "IMAGE"), output_audio_tokens=tokens_of(made, "AUDIO"))
    return media if media.genai_prices_usage() else None
