"""The admin API's common ground: authentication and roles, the error shape, unknown routes, Lava's
unsupported payment resources, pagination cursors, Idempotency-Key and the OpenAPI document."""

from __future__ import annotations

import pytest

from addons.admin import openapi, resources
from addons.admin.app import API_PREFIX, AdminOptions
from addons.admin.auth import FailedAuthThrottle
from tests.admin_api import make_api


def test_a_call_without_a_key_is_401_in_the_gateways_error_shape(api):
    answer = api.anonymous.get("/v1/plans")
    assert answer.status_code == 401
    assert answer.json()["error"] == {"type": "authentication_error", "code": "missing_secret_key",
                                      "message": "send your Tollgate secret key as 'Authorization: Bearer tg_sk_...'"}


def test_an_unknown_or_revoked_key_is_401(api):
    assert api.client("tg_sk_" + "0" * 40).get("/v1/plans").json()["error"]["code"] == "invalid_secret_key"


def test_an_unknown_route_is_a_json_404(api):
    answer = api.admin.get("/v1/nothing-here")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/v1/checkout_sessions", "/v1/plans", "/v1/subscriptions", "/v1/credit_bundles"])
def test_lavas_payment_resources_are_501_saying_how_tollgate_takes_money(api, path):
    answer = api.merchant.post(path, json={})
    assert answer.status_code == 501
    error = answer.json()["error"]
    assert error["code"] == "not_supported" and "topups" in error["message"]


def test_failed_authentications_are_throttled_per_address_but_a_good_key_still_works(ledger):
    api = make_api(AdminOptions(auth_fail_limit=3, auth_fail_window_s=60))
    good = api.client(api.merchant_key)
    assert good.get("/v1/plans").status_code == 501  # authenticated, then refused by the route
    bad = api.client("tg_sk_" + "1" * 40)
    assert [bad.get("/v1/plans").status_code for _ in range(3)] == [401, 401, 401]
    throttled = bad.get("/v1/plans")
    assert throttled.status_code == 429 and throttled.json()["error"]["code"] == "too_many_failed_auths"
    # a key this process has seen succeed is still let in from that address
    assert good.get("/v1/plans").status_code == 501
    assert api.client(api.admin_key).get("/v1/plans").status_code == 429  # not seen succeed: throttled


def test_the_throttle_lets_an_address_in_again_as_failures_leave_the_window():
    now = [0.0]
    throttle = FailedAuthThrottle(limit=2, window=10, clock=lambda: now[0])
    throttle.failed("1.2.3.4", "d")
    throttle.failed("1.2.3.4", "d")
    assert throttle.retry_after("1.2.3.4") == 10
    now[0] = 10.5
    assert throttle.retry_after("1.2.3.4") == 0


def test_the_openapi_document_covers_every_route_and_is_valid(api):
    from openapi_spec_validator import validate

    document = api.admin.get("/openapi.json").json()
    validate(document)
    routes = {(e.method.lower(), API_PREFIX + e.path) for e in resources.ENDPOINTS}
    documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert routes == documented and len(routes) == len(resources.ENDPOINTS)
    assert document == openapi.document()


def test_a_method_a_route_does_not_take_is_a_json_405(api):
    answer = api.admin.put("/v1/wallet", json={})
    assert answer.status_code == 405 and answer.json()["error"]["code"] == "method_not_allowed"
