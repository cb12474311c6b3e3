"""What one request used, in the shape every API family is normalised to: its tokens, and the other
quantities a customer's meter may count (Measured)."""

from __future__ import annotations

from dataclasses import dataclass
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

    def __post_init__(self) -> None:
        seconds = self.audio_seconds
        if self.characters < 0 or (seconds is not None and not (seconds.is_finite() and seconds >= 0)):
            raise ValueError(f"usage must be non-negative: characters={self.characters}, audio_seconds={seconds}")
