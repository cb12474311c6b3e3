"""The limit flags of `keys create|update` and `customers create|update`, and the service changes they make.

The flags are read in command-line order (argparse runs actions as it meets them), so that a `--period` can
belong to the limit given before it: `--spend-limit 10 --period month --request-limit 50 --period day`. One
`--period` alone applies to every spend and request limit of the command; on update, a lone `--period` with no
such limit changes the period of the one limit the key (or customer) has. They become column changes for
services.limits (KEY_LIMIT_CHANGES); `none` clears a limit on update. Values are checked here, as argparse
types, so a negative or fractional count never reaches the service.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from addons.core.limits import CYCLES, Limits
from addons.services.errors import BadRequest
from pricing.money import parse_usd

PERIOD_OF = {"spend_limit_nanos": "spend_cycle", "request_limit": "request_cycle"}  # limit column -> its period's


class InOrder(argparse.Action):
    """Appends (column, value) to the destination, so the flags' order survives parsing."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or ()), (self.const, values)])


def usd(text: str) -> int:
    """A positive USD amount as nanos, exactly (pricing.money.parse_usd)."""
    try:
        return parse_usd(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def clearable(parse: Callable[[str], int]) -> Callable[[str], int | None]:
    """`parse`, or None for `none`: the value that clears a setting on update."""

    def parse_or_none(text: str) -> int | None:
        return None if text.lower() == "none" else parse(text)

    return parse_or_none


def add_limit_flags(parser: argparse.ArgumentParser, *, customer: bool = False, update: bool = False) -> None:
    """The limit flags, into `args.limits` as [(column, value), ...]; a customer has no request limit or burst."""
    group = parser.add_argument_group("limits", "enforced by the gateway" + ("; none clears one" if update else ""))
    money, count = (clearable(usd), clearable(positive)) if update else (usd, positive)
    clear = "|none" if update else ""

    def flag(name: str, column: str, parse, metavar: str, text: str) -> None:
        group.add_argument(name, dest="limits", action=InOrder, const=column, type=parse, metavar=metavar + clear,
                           help=text)

    flag("--spend-limit", "spend_limit_nanos", money, "USD", "USD it may spend a period (needs --period)")
    if customer:
        period = "the --spend-limit's period" + ("; alone: moves the spend limit to this period" if update else "")
    else:
        flag("--request-limit", "request_limit", count, "N", "requests it may make a period (needs --period)")
        period = ("the period of the --spend-limit or --request-limit just before it; a single --period is every "
                  "such limit's" + ("; alone: moves the key's one spend or request limit to it" if update else ""))
    group.add_argument("--period", dest="limits", action=InOrder, const="period", choices=CYCLES, help=period)
    flag("--rpm", "rpm", count, "N", "requests a minute")
    if not customer:
        flag("--burst", "rpm_burst", count, "N", "requests at once within --rpm (default: a minute's worth)")
    flag("--tpm", "tpm", count, "N", "tokens a minute")


def limit_changes(given: list[tuple[str, object]] | None, current: Limits | None = None,
                  owner: str = "key") -> dict:
    """The column changes `args.limits` asks for; `current`: the key's or customer's limits (None on create).
    BadRequest `limit_period_unclear` for a --period that belongs to no limit."""
    changes, periods, last = {}, [], None
    for column, value in given or ():
        if column == "period":
            periods.append((last, value))
            last = None
        else:
            changes[column] = value
            last = column if column in PERIOD_OF else last
    if len(periods) == 1:
        targets = [column for column in changes if column in PERIOD_OF] or _the_one_limit(current, owner)
        changes.update({PERIOD_OF[column]: periods[0][1] for column in targets})
    elif periods:
        for column, period in periods:
            if column is None:
                raise BadRequest("limit_period_unclear", f"--period {period} follows no --spend-limit or "
                                 "--request-limit of its own: with several --period, each follows its limit")
            changes[PERIOD_OF[column]] = period
    if changes.get("rpm_burst") is not None and changes.get("rpm", current.rpm if current else None) is None:
        raise BadRequest("limit_burst_alone", "--burst is the burst of an --rpm limit; give --rpm too")
    return changes


def _the_one_limit(current: Limits | None, owner: str) -> list[str]:
    """The spend or request limit a lone --period (on update) is for: the only one `owner` has."""
    has = [column for column, value in (("spend_limit_nanos", current and current.spend_limit_nanos),
                                        ("request_limit", current and current.request_limit)) if value is not None]
    if len(has) == 1:
        return has
    if current is None:
        raise BadRequest("limit_period_unclear", "--period goes with a --spend-limit or --request-limit")
    raise BadRequest("limit_period_unclear",
                     f"--period: the {owner} has a spend and a request limit; give it after the one it is for "
                     "(--spend-limit USD --period P)" if has else
                     f"--period: the {owner} has no limit with a period to give it to")
