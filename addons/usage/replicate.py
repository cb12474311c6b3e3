"""Replicate's predictions API: `POST /v1/predictions` (the model's version in the body),
`/v1/models/{owner}/{name}/predictions` and `/v1/deployments/{owner}/{name}/predictions`.

Replicate bills most models per second of hardware time (`metrics.predict_time`), some per output.
A prediction answered finished (`Prefer: wait`) reports its predict time and outputs, which are read;
one answered while still running reports nothing yet, and is recorded with no usage. Tollgate ships no
Replicate prices (they depend on the hardware a model runs on): an operator's override prices a model
per_second or per_image, else its requests are recorded unpriced.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from addons.usage.base import UsageReader, UsageReading
from addons.usage.json_fields import as_dict, as_str
from pricing.usage import MediaUsage, TokenUsage


class ReplicateReader(UsageReader):
    EMBEDDINGS = frozenset({"replicate.predictions"})

    @classmethod
    def endpoint_of(cls, path: str) -> tuple[str, str | None]:
        parts = path.strip("/").split("/")
        if parts[-1] != "predictions" or parts[0] != "v1":
            return "other", None
        if len(parts) == 5 and parts[1] in ("models", "deployments"):
            return "replicate.predictions", f"{parts[2]}/{parts[3]}"
        return ("replicate.predictions", None) if len(parts) == 2 else ("other", None)

    def read_request(self, req: dict[str, Any], body: bytes) -> None:
        if self.model is None:  # POST /v1/predictions names "owner/name:version" or a bare version id
            self.model = (as_str(req.get("version")) or "").partition(":")[0] or None

    def _read(self, obj: dict[str, Any]) -> None:
        if "detail" in obj and "id" not in obj:  # Replicate's errors (problem+json)
            self._error = True
            return
        self._model(obj.get("model"))
        if obj.get("status") != "succeeded":
            self.running = True  # billed when it ends, which this request does not see
            return
        seconds = _decimal(as_dict(obj.get("metrics")).get("predict_time"))
        output = obj.get("output")
        outputs = len(output) if isinstance(output, list) else int(output is not None)
        self.media = MediaUsage(compute_seconds=seconds, images=outputs)
        self._report(TokenUsage(), True)

    running = False  # the answer was a prediction still running

    def result(self) -> UsageReading:
        if self.running and self.media is None:
            return UsageReading(self.model, TokenUsage(), "none")
        return super().result()


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() and result >= 0 else None
