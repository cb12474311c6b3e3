"""Lava's payment side (checkout sessions, plans, subscriptions, credit bundles): Tollgate takes no money
itself, so each route answers 501 `not_supported` saying how money comes in instead."""

from __future__ import annotations

from addons.admin.endpoints import Call, Endpoint
from addons.core.errors import GatewayError

HOW = ("Tollgate records payments rather than taking them: top a customer up with POST /v1/customers/{id}/topups "
       "(or `tollgate customers topup`), and let the auto top-up webhook charge the customer from your own "
       "billing system when its balance runs low (billing.autopay in config/gateway.yaml).")


class NotSupported(GatewayError):
    status = 501
    type = "not_supported"


def _refuse(what: str):
    def handler(call: Call):
        raise NotSupported("not_supported", f"{what} are not supported by Tollgate. {HOW}")

    handler.__name__ = f"unsupported_{what.replace(' ', '_')}"
    return handler


_PATHS = {
    "checkout sessions": ["/checkout_sessions"],
    "plans": ["/plans", "/plans/{plan_id}"],
    "subscriptions": ["/subscriptions", "/subscriptions/{subscription_id}", "/customers/{customer_id}/subscription"],
    "credit bundles": ["/credit_bundles", "/credit_bundles/{credit_bundle_id}"],
}
ENDPOINTS = [
    Endpoint(method, path, _refuse(what), f"Not supported: {what} (501)", tag="not supported")
    for what, paths in _PATHS.items() for path in paths
    for method in (("GET", "POST") if "{" not in path else ("GET", "PATCH", "DELETE"))
    if not (path == "/checkout_sessions" and method == "GET")
]
