"""The table of usage readers: one per API family (a provider's `api_family` in the catalog).

A provider with a new wire format is one new reader module (a UsageReader subclass, see
base.py) and one entry here. A family with no entry gets UsageReader itself, which reads nothing.
"""

from __future__ import annotations

from addons.usage.anthropic import AnthropicReader
from addons.usage.base import UsageReader, UsageReading
from addons.usage.cohere import CohereReader
from addons.usage.elevenlabs import ElevenLabsReader
from addons.usage.fal import FalReader
from addons.usage.gemini import GeminiReader
from addons.usage.openai_media import OpenAIFamilyReader
from addons.usage.replicate import ReplicateReader
from addons.usage.retrieval import RetrievalReader

__all__ = ["READERS", "UsageReader", "UsageReading", "for_request"]

READERS: dict[str, type[UsageReader]] = {
    "openai": OpenAIFamilyReader,
    "anthropic": AnthropicReader,
    "gemini": GeminiReader,
    "cohere": CohereReader,
    "elevenlabs": ElevenLabsReader,
    "voyage": RetrievalReader,
    "jina": RetrievalReader,
    "fal": FalReader,
    "replicate": ReplicateReader,
}


def for_request(
    family: str, method: str, path: str, query: str, body: bytes, *, inject_usage: bool = True, upgrade: bool = False,
) -> UsageReader:
    """The reader of one request. Never raises: an unreadable request is read as nothing (and is
    unmetered), or only estimated.

    inject_usage: ask OpenAI-style chat streams for their usage (and hide it from the client).
    upgrade: the request asks for a protocol upgrade (a websocket session).
    """
    reader = READERS.get(family, UsageReader)
    try:
        return reader.from_request(family, method, path, query, body, inject_usage, upgrade)
    except Exception:  # a bad request must not break the proxy
        return reader(family)
