"""Models, as Lava's (and OpenAI's) model list: every model the gateway's providers are priced for, from the
catalog (config/providers.yaml) and the price lists (genai-prices, the settings' `prices:` and
pricing/overrides.yaml). `owned_by` is the catalog provider that serves it.

`created` is 0: the price lists carry no release dates. Tollgate's own fields: `price_source` (catalog or
override), `pattern` (an override's glob, e.g. "ft:gpt-4o-mini-*", that prices every model it matches) and
`format`: the client formats (openai, anthropic, google, bedrock) whose requests the rewrite endpoint
(/v1/rewrite/{format}/{url}) translates for the model's provider; empty where it translates none.
"""

from __future__ import annotations

from addons.admin.endpoints import Call, Endpoint
from addons.services import prices


def list_models(call: Call) -> dict:
    return {"object": "list",
            "data": [{"id": m.id, "object": "model", "created": 0, "owned_by": m.owned_by,
                      "price_source": m.price_source, "pattern": m.pattern, "format": list(m.formats)}
                     for m in prices.models()]}


ENDPOINTS = [
    Endpoint("GET", "/models", list_models, "List the models the gateway prices, by provider"),
]
