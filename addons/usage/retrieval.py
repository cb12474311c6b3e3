"""Retrieval APIs that report one token count: Voyage AI and Jina AI embeddings and rerank.

Both answer `usage: {total_tokens}` (Jina also `prompt_tokens`): the tokens read, priced as input
tokens. There is no output and no stream.
"""

from __future__ import annotations

from typing import Any

from addons.usage.base import UsageReader
from addons.usage.json_fields import as_dict, count
from pricing.usage import TokenUsage


class RetrievalReader(UsageReader):
    ENDPOINTS = (("/rerank", "rerank"), ("/embeddings", "embeddings"), ("/multimodalembeddings", "embeddings"),
                 ("/contextualizedembeddings", "embeddings"), ("/classify", "classify"))
    EMBEDDINGS = frozenset({"rerank", "embeddings", "classify"})

    def _read(self, obj: dict[str, Any]) -> None:
        if isinstance(obj.get("detail"), (str, list)):  # Voyage's and Jina's errors: {"detail": ...}
            self._error = True
            return
        self._model(obj.get("model"))
        usage = as_dict(obj.get("usage"))
        if "total_tokens" in usage or "prompt_tokens" in usage:
            self._report(TokenUsage(input_tokens=count(usage.get("total_tokens") or usage.get("prompt_tokens"))), True)
