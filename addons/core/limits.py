"""Limits on a key or a customer, and the calendar periods spend and request limits count in.

A spend or request limit counts per cycle: `day`, `week` (ISO, from Monday), `month`, or `total`
(never resets). Cycles start on calendar boundaries in the operator's time zone (`limits.timezone`
in config/gateway.yaml, default UTC). Lava names the same cycles daily, weekly, monthly, total.
Rate limits (requests and tokens per minute) are token buckets with no calendar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

CYCLES = ("day", "week", "month", "total")
LAVA_CYCLES = {"daily": "day", "weekly": "week", "monthly": "month", "total": "total"}
TO_LAVA = {ours: theirs for theirs, ours in LAVA_CYCLES.items()}


@dataclass(frozen=True, slots=True)
class Limits:
    """What a key or customer may use; None: no such limit. A limit without its cycle is not a limit."""

    spend_limit_nanos: int | None = None
    spend_cycle: str | None = None
    request_limit: int | None = None  # keys only
    request_cycle: str | None = None
    rpm: int | None = None
    burst: int | None = None  # requests let through at once; None: rpm (a full minute's worth)
    tpm: int | None = None
    any: bool = field(init=False, compare=False, repr=False)  # some limit is set: read on every request

    def __post_init__(self) -> None:
        object.__setattr__(self, "any", not (self.spend_limit_nanos is None and self.request_limit is None
                                             and self.rpm is None and self.tpm is None))


NO_LIMITS = Limits()


def check_cycle(cycle: str) -> str:
    """ValueError unless `cycle` is one of CYCLES (or Lava's name for one); returns Tollgate's name."""
    cycle = LAVA_CYCLES.get(cycle, cycle)
    if cycle not in CYCLES:
        raise ValueError(f"a period is one of {', '.join(CYCLES)}, not {cycle!r}")
    return cycle


@dataclass(frozen=True, slots=True)
class Period:
    """One cycle's current period: `id` names it (2026-12-05, 2026-W49, 2026-12, total); start and reset
    are UTC instants (naive, as the ledger stores times); reset is None for `total`."""

    id: str
    start: datetime | None
    reset: datetime | None


def period_of(cycle: str, now: datetime, zone: ZoneInfo) -> Period:
    """The period of `cycle` that `now` (aware) falls in, on calendar boundaries of `zone`."""
    if cycle == "total":
        return Period("total", None, None)
    local = now.astimezone(zone)
    day = local.date()
    if cycle == "day":
        first, after, name = day, day + timedelta(days=1), day.isoformat()
    elif cycle == "week":
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
        year, week, _ = first.isocalendar()
        name = f"{year}-W{week:02d}"
    elif cycle == "month":
        first = day.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
        name = f"{first:%Y-%m}"
    else:
        raise ValueError(f"unknown cycle {cycle!r}")
    return Period(name, _utc_midnight(first, zone), _utc_midnight(after, zone))


def _utc_midnight(day, zone: ZoneInfo) -> datetime:
    """The instant `day` begins in `zone` (its first moment, across a DST change too), as naive UTC."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC).replace(tzinfo=None)


class PeriodClock:
    """The current period of each cycle, computed once per period rather than per request."""

    def __init__(self, zone: ZoneInfo):
        self.zone = zone
        self._current: dict[str, tuple[float, Period]] = {}  # cycle -> (reset as epoch seconds, period)

    def period(self, cycle: str, now: float) -> Period:
        known = self._current.get(cycle)
        if known is not None and now < known[0] and (known[1].start is None or now >= epoch(known[1].start)):
            return known[1]
        current = period_of(cycle, datetime.fromtimestamp(now, UTC), self.zone)
        self._current[cycle] = (epoch(current.reset) if current.reset else float("inf"), current)
        return current


def epoch(naive_utc: datetime) -> float:
    """A naive UTC time (as the ledger and Period hold them) as epoch seconds."""
    return naive_utc.replace(tzinfo=UTC).timestamp()


def go_duration(ms: float) -> str:
    """A wait as OpenAI's x-ratelimit-reset-* headers write it: 20ms, 1s, 1.5s, 6m0s."""
    if ms < 1000:
        return f"{max(int(ms), 0)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{int(rest)}s"
