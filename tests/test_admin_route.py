"""AdminRoute: which requests go to the admin process, where, tagged how; the admin listener's options."""

from __future__ import annotations

import json
import os

import pytest
from mitmproxy.exceptions import OptionsError
from mitmproxy.test import taddons, tflow, tutils

from addons.core.process_env import PASSTHROUGH_ENV, PASSTHROUGH_HEADER
from addons.proxy.admin_route import AdminRoute, is_api_path
from addons.proxy.flow_keys import ADMIN_KEY, REQUEST_ID_KEY


@pytest.mark.parametrize(("path", "api"), [
    ("/v1/customers", True), ("/v1/customers/cus_1/topups?x=1", True), ("/v1/forward?u=x", False),
    ("/v1/forward", False), ("/v1/forward/v1beta/models/m:generateContent", False), ("/v1/forwarder", True),
    ("/healthz", False), ("/v2/customers", False), ("/", False),
    ("/v1/rewrite/openai/https://api.anthropic.com/v1/messages/chat/completions", False),
])
def test_the_api_is_every_v1_path_but_the_forward_and_rewrite_endpoints(path, api):
    assert is_api_path(path) is api


def to_gateway(path: str, headers=()) -> tflow.tflow:
    request = tutils.treq(host="127.0.0.1", port=8080, scheme=b"http", path=path.encode(), headers=list(headers))
    flow = tflow.tflow(req=request)
    flow.client_conn.sockname = ("127.0.0.1", 8080)
    return flow


@pytest.fixture
def route():
    addon = AdminRoute()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, tollgate_admin_port=18082)
        addon.tctx = tctx
        yield addon


def test_an_api_request_goes_to_the_admin_listener_tagged_with_the_instances_secret(route):
    flow = to_gateway("/v1/customers?limit=5", [(b"authorization", b"Bearer tg_sk_x"), (PASSTHROUGH_HEADER.encode(),
                                                                                         b"forged")])
    route.request(flow)
    assert flow.response is None
    assert flow.request.url == "http://127.0.0.1:18082/v1/customers?limit=5"
    assert flow.request.headers[PASSTHROUGH_HEADER] == os.environ[PASSTHROUGH_ENV] != "forged"
    assert flow.request.headers["authorization"] == "Bearer tg_sk_x"  # the admin process authenticates
    assert flow.metadata[ADMIN_KEY] and flow.metadata[REQUEST_ID_KEY].startswith("req_")


@pytest.mark.parametrize("path", ["/v1/forward?u=https%3A%2F%2Fapi.openai.com%2Fv1", "/healthz"])
def test_the_gateways_own_endpoints_stay_with_it(route, path):
    flow = to_gateway(path)
    route.request(flow)
    assert flow.request.port == 8080 and ADMIN_KEY not in flow.metadata


def test_a_provider_request_is_not_the_apis_even_on_a_v1_path(route):
    flow = tflow.tflow(req=tutils.treq(host="api.openai.com", port=443, scheme=b"https", path=b"/v1/chat/completions"))
    flow.client_conn.sockname = ("127.0.0.1", 8080)
    route.request(flow)
    assert flow.request.host == "api.openai.com" and ADMIN_KEY not in flow.metadata


def test_with_the_admin_process_off_the_api_is_a_json_404(route):
    route.tctx.configure(route, tollgate_admin=False)
    flow = to_gateway("/v1/customers")
    route.request(flow)
    assert flow.response.status_code == 404
    assert json.loads(flow.response.content)["error"]["code"] == "admin_off"


def test_any_address_is_reached_on_loopback_and_tls_makes_it_https(route, tmp_path):
    route.tctx.configure(route, tollgate_admin_host="0.0.0.0", tollgate_allow_open_admin=True)
    flow = to_gateway("/v1/models")
    route.request(flow)
    assert flow.request.url == "http://127.0.0.1:18082/v1/models"
    route.tctx.configure(route, tollgate_admin_host="10.1.2.3", tollgate_allow_open_admin=False,
                         tollgate_admin_certfile=str(tmp_path / "c.pem"), tollgate_admin_keyfile=str(tmp_path / "k.pem"))
    flow = to_gateway("/v1/models")
    route.request(flow)
    assert flow.request.url == "https://10.1.2.3:18082/v1/models"


@pytest.mark.parametrize(("options", "says"), [
    ({"tollgate_admin_host": "0.0.0.0"}, "refusing to run an open admin listener"),
    ({"tollgate_admin_port": 0}, "tollgate_admin_port must be a port number"),
    ({"tollgate_admin_certfile": "c.pem"}, "go together"),
])
def test_bad_admin_options_are_refused(route, options, says):
    with pytest.raises(OptionsError, match=says):
        route.tctx.configure(route, **options)
