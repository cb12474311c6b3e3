"""The API's resources, one module each; ENDPOINTS is every route, in the order the document lists them."""

from __future__ import annotations

from addons.admin.resources import (
    customers,
    extras,
    keys,
    meters,
    models,
    requests,
    spend_keys,
    unsupported,
    usage,
    wallet,
    webhooks,
)

ENDPOINTS = [
    *customers.ENDPOINTS,
    *meters.ENDPOINTS,
    *requests.ENDPOINTS,
    *usage.ENDPOINTS,
    *wallet.ENDPOINTS,
    *keys.ENDPOINTS,
    *spend_keys.ENDPOINTS,
    *webhooks.ENDPOINTS,
    *models.ENDPOINTS,
    *extras.ENDPOINTS,
    *unsupported.ENDPOINTS,
]
