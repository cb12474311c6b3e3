"""Bulk inserts for the ledger writer's batches."""

from __future__ import annotations

from datetime import datetime

from peewee import PostgresqlDatabase
from psycopg2.extras import execute_values

from addons.ledger.models import database


def bulk_insert(model, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """One INSERT for many rows, values bound by the driver.

    peewee's insert_many renders every value into SQL in Python, which was most of a batch's CPU
    (bench/ledger_throughput.py); the driver's own bulk paths do the same work in C.
    """
    if not rows:
        return
    meta = model._meta
    names = ", ".join(f'"{meta.fields[c].column_name}"' for c in columns)
    cursor = database.cursor()
    if isinstance(database.obj, PostgresqlDatabase):
        execute_values(cursor, f'INSERT INTO "{meta.table_name}" ({names}) VALUES %s', rows, page_size=1000)
    else:  # SQLite keeps datetimes as text, in the format peewee writes and reads
        rows = [tuple(str(v) if isinstance(v, datetime) else v for v in row) for row in rows]
        cursor.executemany(f'INSERT INTO "{meta.table_name}" ({names}) VALUES ({", ".join("?" * len(columns))})', rows)
