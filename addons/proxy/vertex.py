"""Vertex AI's publishers: which wire format a request speaks, when one host serves several.

Google's own models (`publishers/google/models/{model}:generateContent`) speak the gemini family's format,
which the catalog names for the provider. Anthropic's Claude models on Vertex
(`publishers/anthropic/models/{model}:rawPredict`, `:streamRawPredict`) speak Anthropic's Messages format
instead, with the model in the URL rather than the body and `stream` in the body. `reader_request` says
which family's usage reader reads a request, and the path and model it reads it as.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_ANTHROPIC = re.compile(r"/publishers/anthropic/models/([^/:]+):(?:rawPredict|streamRawPredict)")
ANTHROPIC_MESSAGES = "/v1/messages"  # what Anthropic's own API calls the endpoint Vertex's rawPredict is


def reader_request(family: str, path: str) -> tuple[str, str, str | None]:
    """(api family, path, model the URL names) to read a request by; the provider's own family otherwise."""
    if family == "gemini" and "/publishers/anthropic/" in path:
        if match := _ANTHROPIC.search(unquote(path)):
            return "anthropic", ANTHROPIC_MESSAGES, match[1]
    return family, path, None
