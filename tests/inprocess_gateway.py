"""What in-process tests of the Gateway addon send it (the `gw` fixture in tests/conftest.py runs it under
mitmproxy's test context on a throwaway SQLite ledger): flows, keys, and the provider key it injects."""

import asyncio

from mitmproxy import http
from mitmproxy.test import tflow, tutils

from addons.ledger.accounts import create_key, credit_wallet, ensure_account, revoke_key

PROVIDER_KEY = "sk-test-provider-key"
CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
STREAM_CHAT = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}'


def secret_key(balance: int = 10**9, revoked: bool = False) -> str:
    row, secret = create_key("unit")
    if balance:
        credit_wallet(ensure_account()[1].id, balance)
    if revoked:
        revoke_key(row.id)
    return secret


def api_flow(headers=(), content=CHAT, host="api.openai.com", port=443, scheme="https", path="/v1/chat/completions"):
    fields = [(k.encode(), v.encode()) for k, v in headers]
    req = tutils.treq(host=host, port=port, scheme=scheme, method="POST", path=path,
                      headers=http.Headers(fields), content=content)
    return tflow.tflow(req=req)


def run(gw, flow):
    asyncio.run(gw.request(flow))
    return flow
