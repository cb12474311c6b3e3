"""The ledger writer's SQL, bound by the driver: bulk inserts, and statements over a list of ids.

peewee renders every query through its expression tree in Python, and an `IN` list into one
placeholder per value, so a statement's text changes with the batch. That rendering was most of a
small batch's CPU: on SQLite, write_batch of one request took about 1 ms of CPU, of ten about 1.4 ms;
written out as here, 0.3 and 0.65 ms. The batch statements are therefore written out once per
backend: a list is one parameter (an array with `= ANY` on PostgreSQL, a JSON array through
`json_each` on SQLite), values are bound by the driver, and the text never changes. On PostgreSQL the rows of
a plain insert go as COPY text (psycopg2's VALUES list adapts value by value in Python: half the writer's CPU).
"""

from __future__ import annotations

import functools
import io
import json
from datetime import datetime

from peewee import DateTimeField, PostgresqlDatabase
from psycopg2.extras import execute_values

from addons.ledger.models import database


def on_postgres() -> bool:
    return isinstance(database.obj, PostgresqlDatabase)


def for_update() -> str:
    """Row locks for a read-then-write: SQLite's transaction is IMMEDIATE already, and has no FOR UPDATE."""
    return " FOR UPDATE" if on_postgres() else ""


@functools.cache
def _native(sql: str, postgres: bool) -> str:
    """`sql` uses psycopg2's %s placeholders and writes a list parameter as `IN %(list)s`."""
    if postgres:
        return sql.replace("IN %(list)s", "= ANY(%s)")
    return sql.replace("IN %(list)s", "IN (SELECT value FROM json_each(?))").replace("%s", "?")


def _bound(value, postgres: bool):
    if isinstance(value, list | tuple | set | frozenset):
        return list(value) if postgres else json.dumps(list(value))
    if isinstance(value, datetime) and not postgres:
        return str(value)  # SQLite keeps datetimes as text, in the format peewee writes and reads
    return value


def execute(sql: str, *params):
    """Run `sql` (see _native) with `params`; a list or set parameter is bound as one value. The cursor."""
    postgres = on_postgres()
    cursor = database.cursor()
    cursor.execute(_native(sql, postgres), tuple(_bound(p, postgres) for p in params))
    return cursor


def bulk_insert(model, columns: tuple[str, ...], rows: list[tuple], ignore_duplicates: bool = False) -> None:
    """One INSERT for many rows, values bound by the driver (its bulk path does the work in C)."""
    if not rows:
        return
    meta = model._meta
    names = ", ".join(f'"{meta.fields[c].column_name}"' for c in columns)
    conflict = " ON CONFLICT DO NOTHING" if ignore_duplicates else ""
    cursor = database.cursor()
    if on_postgres():
        if not ignore_duplicates and (text := _copy_text(rows)) is not None:
            cursor.copy_expert(f'COPY "{meta.table_name}" ({names}) FROM STDIN', io.StringIO(text))
        else:
            execute_values(cursor, f'INSERT INTO "{meta.table_name}" ({names}) VALUES %s{conflict}', rows,
                           page_size=1000)
    else:
        stamps = [i for i, c in enumerate(columns) if isinstance(meta.fields[c], DateTimeField)]
        if stamps:
            rows = [list(row) for row in rows]
            for row in rows:
                for i in stamps:
                    row[i] = _bound(row[i], False)
        placeholders = ", ".join("?" * len(columns))
        cursor.executemany(f'INSERT INTO "{meta.table_name}" ({names}) VALUES ({placeholders}){conflict}', rows)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _copy_text(rows: list[tuple]) -> str | None:
    """`rows` in COPY's text format, or None if a value is of a type only psycopg2's adaptation should write.
    psycopg2 adapts every value of a VALUES list in turn (about 1 us each, 40 columns a request row: most of the
    writer's CPU on PostgreSQL); here a row is one join. A NUL in a string is refused as psycopg2 refuses it."""
    lines = []
    for row in rows:
        fields = []
        for value in row:
            kind = type(value)
            if kind is str:
                if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
                    value = value.translate(_COPY_ESCAPES)
                if "\x00" in value:
                    raise ValueError("A string literal cannot contain NUL (0x00) characters.")
                fields.append(value)
            elif kind is int:
                fields.append(str(value))
            elif value is None:
                fields.append("\\N")
            elif kind is bool:
                fields.append("t" if value else "f")
            elif kind is datetime and value.tzinfo is None:
                fields.append(value.isoformat(" "))
            else:
                return None
        lines.append("\t".join(fields))
    return "\n".join(lines) + "\n"
