"""What the API tests of customers, meters and the wallet check alike: an error's code, the field a 422 names,
and the CLI's --json answer to the same question, run in this process on the test's ledger."""

from __future__ import annotations

import json

from peewee import SqliteDatabase

from addons.cli.main import main
from addons.ledger.models import database


def error(answer, status: int) -> dict:
    assert answer.status_code == status, answer.text
    return answer.json()["error"]


def invalid(answer) -> str:
    """The field a 422 names (in `param` and at the head of its message)."""
    body = error(answer, 422)
    assert body["code"] == "invalid_field" and body["message"].startswith(body["param"] + ": ")
    return body["param"]


def _url(db) -> str:
    if isinstance(db, SqliteDatabase):
        return f"sqlite:///{db.database}"
    params = db.connect_params
    return f"postgresql://{params['user']}@{params['host']}:{params['port']}/{db.database}"


def cli_json(ledger, capsys, *argv: str):
    """`tollgate ARGV --json` in this process, on the test's `ledger`."""
    capsys.readouterr()
    try:
        main([*argv, "--json", "--database-url", _url(ledger)])
    finally:
        database.obj.close()  # the CLI opened its own connection; the API goes on with the test's
        database.initialize(ledger)
    return json.loads(capsys.readouterr().out)
