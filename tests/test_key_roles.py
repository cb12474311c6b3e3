"""Key roles (issue 12): admin reaches every account, account its own; `tollgate init`'s key is admin. The role as the
hot path's key record carries it, the ledger migration that gives an older ledger the column, and the CLI."""

from __future__ import annotations

import pytest
from peewee import IntegrityError
from playhouse.db_url import connect

from addons.core.secret_formats import hash_secret
from addons.ledger.accounts import create_key, find_key, find_key_by_id
from addons.ledger.models import ApiKey, database, open_database
from addons.services import bootstrap
from tests.harness import clean_env, fresh_postgres_database, tollgate_cli


@pytest.mark.parametrize("role", ["admin", "account"])
def test_the_key_record_carries_the_role(ledger, role):
    row, secret = create_key("ci", "acme", role)
    assert find_key(hash_secret(secret)).role == role and find_key_by_id(row.id).role == role


def test_the_ledger_refuses_a_role_it_does_not_know(ledger):
    with pytest.raises(IntegrityError), database.atomic():
        create_key("ci", "acme", "owner")


# -- an older ledger gets the column --------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    yield (f"sqlite:///{tmp_path}/old.db" if request.param == "sqlite"
           else fresh_postgres_database("tollgate_key_role_migration"))
    if not database.is_closed():
        database.close()
    database.initialize(None)


def _roles(db) -> dict[str, str]:
    return dict(db.execute_sql("SELECT name, role FROM apikey").fetchall())


def test_open_database_adds_role_and_keeps_the_init_key_admin(ledger_url):
    db = open_database(ledger_url)
    bootstrap.init_ledger()  # the default account's first key, "admin"
    create_key("ci")  # the operator's later keys, in the default account and another
    create_key("app", "acme")
    create_key("admin", "other")  # named so, but not the key init made
    db.close()
    old = connect(ledger_url)  # make it the previous release's ledger: no role
    old.execute_sql('ALTER TABLE "apikey" DROP COLUMN "role"')
    old.close()
    for _ in range(2):  # idempotent
        db = open_database(ledger_url)
        assert {"ci": "account", "app": "account", "admin": "admin"} == {
            name: role for name, role in db.execute_sql(
                "SELECT k.name, k.role FROM apikey k JOIN account a ON a.id = k.account_id WHERE a.name != 'other'")}
        assert db.execute_sql("SELECT k.role FROM apikey k JOIN account a ON a.id = k.account_id "
                              "WHERE a.name = 'other'").fetchone() == ("account",)
        db.close()
    # a process of the previous release, still running, inserts keys without a role: they get the narrow one
    db = open_database(ledger_url)
    account_id = db.execute_sql("SELECT id FROM account WHERE name = 'acme'").fetchone()[0]
    db.execute_sql("INSERT INTO apikey (id, account_id, name, key_hash, prefix, created_at) "
                   f"VALUES ('key_old', '{account_id}', 'legacy', 'h', 'p', '2026-01-01')")
    assert ApiKey.get_by_id("key_old").role == "account"
    db.close()


def test_a_ledger_where_init_made_no_key_gets_no_admin(ledger_url):
    db = open_database(ledger_url)
    create_key("ci")  # before init: init then makes no key of its own
    bootstrap.init_ledger()
    db.close()
    old = connect(ledger_url)
    old.execute_sql('ALTER TABLE "apikey" DROP COLUMN "role"')
    old.close()
    db = open_database(ledger_url)
    assert _roles(db) == {"ci": "account"}
    db.close()


# -- the CLI --------------------------------------------------------------------------------

@pytest.fixture
def tollgate(tmp_path):
    return tollgate_cli(clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db",
                                  TOLLGATE_RUNTIME_FILE=str(tmp_path / "no-gateway.json")))


@pytest.mark.e2e
def test_cli_keys_create_takes_a_role_and_list_shows_it(tollgate):
    tollgate("init")
    assert tollgate.json("keys", "create", "--name", "app")["role"] == "account"
    assert tollgate.json("keys", "create", "--name", "ops", "--account", "acme", "--role", "admin")["role"] == "admin"
    listed = tollgate.json("keys", "list")
    assert [(k["name"], k["account"], k["role"]) for k in listed] == [
        ("admin", "default", "admin"), ("app", "default", "account"), ("ops", "acme", "admin")]
    assert {"id", "name", "account", "prefix", "created_at", "revoked_at"} < set(listed[0])  # fields kept
    assert "role" in tollgate("keys", "list").stdout
    refused = tollgate("keys", "create", "--name", "x", "--role", "owner", check=False)
    assert refused.returncode == 2 and "invalid choice: 'owner'" in refused.stderr
    assert len(tollgate.json("keys", "list")) == 3
