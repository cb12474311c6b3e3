"""Names the chain's addons share: the `tollgate.*` keys they leave in `flow.metadata` for each
other (and for `~meta` filters and saved flows), and the header names more than one of them reads.

They live here, apart from any addon, so a guard can read what the Gateway wrote without importing
the Gateway (tests/test_import_rules.py holds that rule).
"""

# flow.metadata keys
REQUEST_ID_KEY = "tollgate.request_id"  # the request id the client gets back (addons.proxy.error_pages)
PROVIDER_KEY = "tollgate.provider"  # set by the Gateway on every flow it forwards: the provider's id
ENDPOINT_KEY = "tollgate.endpoint"  # the metered endpoint ("chat.completions", ...; "other")
STREAM_KEY = "tollgate.stream"  # True when the client asked for a stream
COST_KEY = "tollgate.cost"  # the provider cost in USD, as text, once metered
PRICE_SOURCE_KEY = "tollgate.price_source"  # catalog | override | unpriced | unmetered | free
RETRIES_KEY = "tollgate.retries"  # how many times addons.proxy.upstream_retries resent the request
REFUSAL_KEY = "tollgate.refusal"  # the error code of a refusal the Gateway answered itself
ADMIN_KEY = "tollgate.admin"  # True on a request passed to the admin process (addons.proxy.admin_route)
CLIENT_FORMAT_KEY = "tollgate.client_format"  # a /v1/rewrite request's client format (openai, anthropic, ...)
TIMEOUT_KEY = "tollgate.timeout"  # why addons.proxy.upstream_timeouts closed the provider connection

# header names
REQUEST_ID_HEADERS = ("x-lava-request-id", "x-tollgate-request-id")
METADATA_HEADERS = ("x-tollgate-metadata", "x-lava-metadata")
