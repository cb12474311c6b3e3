"""What one request used, in the shape every API family is normalised to: its tokens, and the other
quantities a customer's meter may count (Measured)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class TokenUsage:
    input_tokens: int = 0  # all prompt tokens, cached ones included
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0  # all completion tokens, reasoning ones included
    reasoning_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass(frozen=True, slots=True)
class Measured:
    """Everything a meter unit may count, as the usage reader measured it (pricing.meters.UNIT_RULES)."""

    tokens: TokenUsage
    characters: int = 0  # text characters of the request
    audio_seconds: Decimal | None = None  # audio duration the provider reported; None: unknown
    images: int = 0  # images generated
    search_units: int = 0  # rerank search units billed

    def __post_init__(self) -> None:
        seconds = self.audio_seconds
        if min(self.characters, self.images, self.search_units) < 0 or (
                seconds is not None and not (seconds.is_finite() and seconds >= 0)):
            raise ValueError(f"usage must be non-negative: characters={self.characters}, audio_seconds={seconds}, "
                             f"images={self.images}, search_units={self.search_units}")


@dataclass(frozen=True, slots=True)
class MediaUsage:
    """What an image, audio, speech or rerank request used besides its tokens: the quantities that
    per-unit prices (genai-prices' and pricing/overrides.yaml's) and customers' meters count.

    Token counts of a modality are subsets of TokenUsage's totals (input_image_tokens of input_tokens),
    as genai-prices counts them.
    """

    characters: int = 0  # characters billed: the text a speech request turns into audio
    audio_seconds: Decimal | None = None  # length of the audio transcribed; None: unknown
    images: int = 0  # images generated
    image_variant: str = ""  # "<quality>/<size>" of a per-image price ("standard/1024x1024"), "" if none
    megapixels: Decimal = Decimal(0)  # of the images generated, each rounded up to a whole megapixel
    search_units: int = 0  # rerank searches as billed (Cohere's billed_units.search_units)
    compute_seconds: Decimal | None = None  # time the provider's hardware ran (Replicate's predict_time)
    input_image_tokens: int = 0
    output_image_tokens: int = 0
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    cache_audio_read_tokens: int = 0  # of cache_read_tokens: cached input audio (Realtime), at its own rate
    cache_image_read_tokens: int = 0

    def __post_init__(self) -> None:
        counts = (self.characters, self.images, self.search_units, self.input_image_tokens, self.output_image_tokens,
                  self.input_audio_tokens, self.output_audio_tokens, self.cache_audio_read_tokens,
                  self.cache_image_read_tokens)
        decimals = [d for d in (self.audio_seconds, self.compute_seconds, self.megapixels) if d is not None]
        if min(counts) < 0 or not all(d.is_finite() and d >= 0 for d in decimals):
            raise ValueError(f"media usage must be non-negative: {self}")

    def to_json(self) -> str:
        """The quantities set, as the ledger keeps them to price the request again (Decimals as text: exact)."""
        return json.dumps({f.name: str(value) if isinstance(value, Decimal) else value for f in fields(self)
                           if (value := getattr(self, f.name)) != f.default}, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MediaUsage:
        return cls(**{name: Decimal(value) if name in _DECIMAL_FIELDS else value
                      for name, value in json.loads(text).items()})

    def genai_prices_usage(self) -> dict[str, int | Decimal]:
        """The genai-prices Usage fields these quantities fill (its unit names), only those used."""
        quantities = {
            "input_characters": self.characters,
            "audio_seconds": self.audio_seconds,
            "input_image_tokens": self.input_image_tokens,
            "output_image_tokens": self.output_image_tokens,
            "input_audio_tokens": self.input_audio_tokens,
            "output_audio_tokens": self.output_audio_tokens,
            "cache_audio_read_tokens": self.cache_audio_read_tokens,
            "cache_image_read_tokens": self.cache_image_read_tokens,
            "rerank_searches": self.search_units,
        }
        return {name: value for name, value in quantities.items() if value}


_DECIMAL_FIELDS = frozenset({"audio_seconds", "megapixels", "compute_seconds"})
