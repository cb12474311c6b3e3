"""How the CLI shows a result: a rich table or text for people, `--json` or `--csv` for scripts.

Money is printed as decimal strings (USD) in every form: a service's `*_nanos` integer becomes a field of the
same stem without the suffix.
"""

from __future__ import annotations

import csv
import json
import sys
from datetime import datetime

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table

from pricing.money import format_usd

console = Console(soft_wrap=True)  # long keys and commands stay copyable on one line
WIDE_WIDTH = 10_000  # a table printed this wide takes the width its cells need: one line per row, never cut


def emit(args, data, table: RenderableType | None = None, text: str | None = None, csv_rows: list[dict] | None = None,
         csv_columns: list[str] | None = None, width: int | None = None) -> None:
    if getattr(args, "csv", False) and csv_rows is not None:
        columns = csv_columns or (list(csv_rows[0]) if csv_rows else [])
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: json.dumps(v, default=_json_default) if isinstance(v, (dict, list)) else v
                         for k, v in r.items()} for r in csv_rows)
    elif args.json:
        print(json.dumps(data, default=_json_default, indent=2))
    elif table is not None:
        (Console(soft_wrap=True, width=width) if width else console).print(table)
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


def rows_table(title: str, columns: list[str], rows: list[dict]) -> Table:
    """A table of `columns`, each read from every row by name."""
    return table(title, columns, [[row[column] for column in columns] for row in rows])


def compact_table(title: str, columns: list[str], rows: list[list]) -> Table:
    """A borderless table, one line per row: a cell too long for the terminal is cut with …, never wrapped."""
    shown = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1),
                  collapse_padding=True)
    for column in columns:
        shown.add_column(column, no_wrap=True, overflow="ellipsis")
    for row in rows:
        shown.add_row(*["" if v is None else str(v) for v in row])
    return shown


def text_block(data: dict, indent: str = "") -> str:
    """`name: value` lines for people: nested dicts indented, lists one item a line, datetimes as UTC."""
    lines = []
    for name, value in data.items():
        if isinstance(value, dict) and value:
            lines += [f"{indent}{name}:", text_block(value, indent + "  ")]
        elif isinstance(value, dict):
            lines.append(f"{indent}{name}: none")
        elif isinstance(value, list):
            lines.append(f"{indent}{name}:" + ("" if value else " none"))
            lines += [f"{indent}  - " + (", ".join(f"{k} {v}" for k, v in item.items()) if isinstance(item, dict)
                                         else str(item)) for item in value]
        else:
            lines.append(f"{indent}{name}: {_human(value)}")
    return "\n".join(line for line in lines if line)


def _human(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)
