"""The comment a gateway flow carries in mitmweb: what an operator looks for, on one line.

mitmweb shows `flow.comment` in the flow's detail view and, with `--set web_columns=...,comment`,
as a column; `~comment TEXT` filters on it. So each fact is a `name=value` word that can be
filtered on (`~comment customer=cus_42`, `~comment refused`). Metered flows are marked 💰, refused
ones ⛔.

The customer's meter fee is decided when the ledger writer commits the request (tiers run on the
customer's monthly total), after the flow is done: a metered customer's flow says `fee=at-commit`
until then, and the amount charged once the commit is in (`with_fee`).
"""

from __future__ import annotations

from addons.ledger.writer import UsageRecord
from pricing.money import format_usd

METERED = ":moneybag:"
REFUSED = ":no_entry:"


def metered_comment(record: UsageRecord, estimated: bool = False, key_name: str = "") -> str:
    if record.bill_customer and record.meter_id:
        fee = FEE_AT_COMMIT.removeprefix("fee=")
    elif record.byok:  # the BYOK fee: the customer's when billed, else the merchant's debit
        fee = "$" + format_usd(record.customer_byok_fee_nanos if record.bill_customer else record.charged_nanos)
    else:
        fee = "$0.00"
    words = [
        record.provider,
        f"model={record.model or '?'}",
        f"in={record.input_tokens}",
        f"out={record.output_tokens}",
        _cost(record, estimated),
        f"fee={fee}",
        f"key={_word(key_name or record.key or '?')}",
    ]
    if key_name and record.key:
        words.append(f"key_id={record.key}")
    if record.customer_id:
        words.append(f"customer={record.customer_id}")
    if record.meter_slug:
        words.append(f"meter={record.meter_slug}")
    words.append(f"request={record.id}")
    if record.latency_ms is not None:
        words.append(f"latency={record.latency_ms}ms")
    if record.error:
        words.append(f"error={record.error}")
    return " ".join(words)


FEE_AT_COMMIT = "fee=at-commit"


def with_fee(comment: str, fee_nanos: int) -> str:
    """The comment once the ledger has charged the customer's fee."""
    return comment.replace(FEE_AT_COMMIT, f"fee=${format_usd(fee_nanos)}", 1)


def _word(value: str) -> str:
    """A value as one filterable word: quoted when it has spaces."""
    return f'"{value}"' if " " in value else value


def _cost(record: UsageRecord, estimated: bool) -> str:
    if record.price_source in ("unpriced", "unmetered"):  # never a silent $0.00
        return f"cost={record.price_source}"
    return f"cost=${format_usd(record.provider_cost_nanos)}" + ("(estimated)" if estimated else "")


def refused_comment(status: int, code: str, message: str, request_id: str | None) -> str:
    """Error messages never carry secrets (addons/core/errors.py), so the message is shown as it is."""
    return f"refused {status} {code}: {message}" + (f" request={request_id}" if request_id else "")
