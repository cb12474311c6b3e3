"""How the CLI shows a result: a rich table or text for people, `--json` or `--csv` for scripts.

Money is printed as decimal strings (USD) in every form: a service's `*_nanos` integer becomes a field of the
same stem without the suffix.
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime

from rich.console import Console
from rich.table import Table

from pricing.money import format_usd

console = Console(soft_wrap=True)  # long keys and commands stay copyable on one line


def emit(args, data, table: Table | None = None, text: str | None = None, csv_rows: list[dict] | None = None,
         csv_columns: list[str] | None = None) -> None:
    if getattr(args, "csv", False) and csv_rows is not None:
        columns = csv_columns or (list(csv_rows[0]) if csv_rows else [])
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in csv_rows)
    elif args.json:
        print(json.dumps(data, default=_json_default, indent=2))
    elif table is not None:
        console.print(table)
    if text and not args.json and not getattr(args, "csv", False):
        console.print(text)


def _json_default(value):
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    raise TypeError(type(value).__name__)


def money_fields(value):
    """Every *_nanos int becomes a decimal-string USD field of the same stem, nested dicts too."""
    if not isinstance(value, dict):
        return value
    return {
        (k[: -len("_nanos")] if k.endswith("_nanos") else k):
            (format_usd(v) if k.endswith("_nanos") and isinstance(v, int) else money_fields(v))
        for k, v in value.items()
    }


def table(title: str, columns: list[str], rows: list[list]) -> Table:
    shown = Table(title=title)
    for column in columns:
        shown.add_column(column)
    for row in rows:
        shown.add_row(*["" if v is None else str(v) for v in row])
    return shown
