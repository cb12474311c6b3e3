"""The admin API in this process (Starlette's TestClient) over the `ledger` fixture's database: an admin key,
and an account key of another account, each a client that sends it."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.testclient import TestClient

from addons.admin import openapi
from addons.admin.app import AdminOptions, build_app
from addons.services import keys


@dataclass
class Api:
    admin: TestClient  # the default account's admin key, as `tollgate init` makes it
    merchant: TestClient  # an account key of the account "shop"
    anonymous: TestClient  # no key at all
    admin_key: str
    merchant_key: str

    def client(self, secret: str) -> TestClient:
        return _client(self.admin.app, secret)


def _client(app, secret: str | None) -> TestClient:
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    return TestClient(app, base_url="http://testserver", headers=headers, raise_server_exceptions=True)


def make_api(options: AdminOptions | None = None) -> Api:
    app = build_app(options or AdminOptions(), extra_routes=openapi.routes())
    admin = keys.create_key("admin", role="admin").secret_key
    merchant = keys.create_key("shop-backend", "shop").secret_key
    return Api(_client(app, admin), _client(app, merchant), _client(app, None), admin, merchant)
