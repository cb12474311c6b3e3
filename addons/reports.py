"""Read-side queries of the ledger for the CLI: request listings and usage roll-ups."""

from __future__ import annotations

from peewee import fn

from addons.ledger.models import ApiKey, RequestRow

USAGE_GROUPS = {
    "provider": RequestRow.provider,
    "model": RequestRow.model,
    "key": RequestRow.key,
    "day": fn.DATE(RequestRow.created_at),
}


def recent_requests(limit: int) -> list[dict]:
    rows = RequestRow.select().order_by(RequestRow.created_at.desc(), RequestRow.id).limit(limit).dicts()
    return list(rows)


def usage_by(group: str) -> list[dict]:
    column = USAGE_GROUPS[group]
    query = (
        RequestRow.select(
            column.alias("group"),
            fn.COUNT(RequestRow.id).alias("requests"),
            fn.SUM(RequestRow.input_tokens).alias("input_tokens"),
            fn.SUM(RequestRow.output_tokens).alias("output_tokens"),
            fn.SUM(RequestRow.provider_cost_nanos).alias("provider_cost_nanos"),
            fn.SUM(RequestRow.charged_nanos).alias("charged_nanos"),
        )
        .group_by(column)
        .order_by(fn.SUM(RequestRow.provider_cost_nanos).desc(), column)
        .dicts()
    )
    rows = [
        {k: (int(v) if k != "group" and v is not None else v) for k, v in row.items()} for row in query
    ]
    for row in rows:
        row["group"] = str(row["group"]) if row["group"] is not None else None
    if group == "key":
        names = dict(ApiKey.select(ApiKey.id, ApiKey.name).tuples())
        for row in rows:
            row["key_name"] = names.get(row["group"])
    return rows
