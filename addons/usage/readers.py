"""The table of usage readers: one per API family (a provider's `api_family` in the catalog).

A provider with a new wire format is one new reader module (a UsageReader subclass, see
base.py) and one entry here. A family with no entry gets UsageReader itself, which reads nothing.
"""

from __future__ import annotations

from addons.usage.anthropic import AnthropicReader
from addons.usage.base import UsageReader, UsageReading
from addons.usage.bedrock import BedrockReader
from addons.usage.cohere import CohereReader
from addons.usage.elevenlabs import ElevenLabsReader
from addons.usage.fal import FalReader
from addons.usage.gemini import GeminiReader
from addons.usage.openai_media import OpenAIFamilyReader
from addons.usage.realtime import RealtimeReader, is_realtime_path
from addons.usage.replicate import ReplicateReader
from addons.usage.retrieval import RetrievalReader

__all__ = ["READERS", "UsageReader", "UsageReading", "for_request"]

READERS: dict[str, type[UsageReader]] = {
    "openai": OpenAIFamilyReader,
    "anthropic": AnthropicReader,
    "gemini": GeminiReader,
    "cohere": CohereReader,
    "bedrock": BedrockReader,
    "elevenlabs": ElevenLabsReader,
    "voyage": RetrievalReader,
    "jina": RetrievalReader,
    "fal": FalReader,
    "replicate": ReplicateReader,
}

# OpenAI-compatible APIs some families serve beside their own, found by a path segment:
# Gemini's /v1beta/openai/... and Cohere's /compatibility/v1/... (both in Lava's SDK map).
# The bool: whether the stream may be asked for its usage (Cohere's documents no stream_options).
OPENAI_COMPATIBLE: dict[str, tuple[str, bool]] = {
    "gemini": ("/openai/", True),
    "cohere": ("/compatibility/", False),
}


def for_request(
    family: str, method: str, path: str, query: str, body: bytes, *, inject_usage: bool = True, upgrade: bool = False,
) -> UsageReader:
    """The reader of one request. Never raises: an unreadable request is read as nothing (and is
    unmetered), or only estimated.

    inject_usage: ask OpenAI-style chat streams for their usage (and hide it from the client).
    upgrade: the request asks for a protocol upgrade (a websocket session; OpenAI Realtime's is metered).
    """
    if upgrade and family == "openai" and method.upper() == "GET" and is_realtime_path(path):
        return RealtimeReader.from_upgrade(family, query)  # a Realtime session: charged per response
    reader = READERS.get(family, UsageReader)
    if (compatible := OPENAI_COMPATIBLE.get(family)) and compatible[0] in path:
        reader, inject_usage = OpenAIFamilyReader, inject_usage and compatible[1]
    try:
        return reader.from_request(family, method, path, query, body, inject_usage, upgrade)
    except Exception:  # a bad request must not break the proxy
        return reader(family)
