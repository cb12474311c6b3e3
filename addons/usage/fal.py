"""fal.ai model endpoints: `fal.run/{model}` answers at once; `queue.fal.run/{model}` takes a request
(answering its request id) whose result is later fetched with `GET .../requests/{id}`.

fal bills image models per image or per megapixel of the images made (each rounded up to a whole
megapixel, 1024x1024 pixels); the answer lists the images with their width and height, which is
what is read. The model is the URL's path. The queue's submit costs nothing by itself; its result
is metered when fetched, so a result fetched twice is counted twice.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from addons.usage.base import UsageReader
from addons.usage.json_fields import as_dict, as_list, count
from pricing.usage import MediaUsage, TokenUsage

_MEGAPIXEL = 1024 * 1024
_PRESETS = {"square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
            "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576)}


class FalReader(UsageReader):
    EMBEDDINGS = frozenset({"fal.run", "fal.queue.submit", "fal.queue.result"})

    @classmethod
    def from_request(cls, family: str, method: str, path: str, query: str, body: bytes, inject_usage: bool,
                     upgrade: bool) -> UsageReader:
        """The queue's result is a GET: it is read like a direct answer."""
        model, _, rest = path.strip("/").partition("/requests/")
        request_id, _, verb = rest.partition("/")
        if method.upper() == "GET" and request_id and not verb:
            return cls(family, "fal.queue.result", model or None, basis="metered")
        return super().from_request(family, method, path, query, body, inject_usage, upgrade)

    @classmethod
    def endpoint_of(cls, path: str) -> tuple[str, str | None]:
        model = path.strip("/")
        if not model or "/requests/" in path:
            return "other", None
        return "fal.run", model  # fal.run and queue.fal.run share paths; the host tells them apart

    def read_request(self, req: dict[str, Any], body: bytes) -> None:
        """The images asked for: num_images of image_size (a preset or {width, height}; default 4:3)."""
        size = req.get("image_size")
        width, height = (count(size.get("width")), count(size.get("height"))) if isinstance(size, dict) else (
            _PRESETS.get(size if isinstance(size, str) else "", (1024, 768)))
        images = count(req.get("num_images")) or 1
        self.expected_media = MediaUsage(images=images, megapixels=Decimal(images * -(-(width * height) // _MEGAPIXEL)))

    def _read(self, obj: dict[str, Any]) -> None:
        if "detail" in obj:  # fal's errors
            self._error = True
            return
        if "request_id" in obj and "response_url" in obj:  # a queue submit: nothing made yet
            self.endpoint = "fal.queue.submit"
            self._report(TokenUsage(), True)
            return
        images = [as_dict(image) for image in as_list(obj.get("images"))]
        if "image" in obj:
            images.append(as_dict(obj["image"]))
        megapixels = sum(-(-(count(i.get("width")) * count(i.get("height"))) // _MEGAPIXEL) for i in images)
        self.media = MediaUsage(images=len(images), megapixels=Decimal(megapixels))
        self._report(TokenUsage(), True)
