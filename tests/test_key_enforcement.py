"""What the gateway does with a key's status, expiry and allow-lists (issue 12's spend keys), in-process (the `gw`
fixture): paused 403 `key_paused`, expired 401 `key_expired`, outside the allow-lists 403 `key_scope`, a rotated
secret refused; every refusal before anything is held or written, and each change seen within the cache's TTL."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from addons.ledger.accounts import credit_wallet, ensure_account
from addons.ledger.models import RequestRow, utcnow
from addons.services import keys
from tests.inprocess_gateway import api_flow, run


@pytest.fixture
def clock(gw):
    """The key cache's clock, moved by hand: a change is seen once the cached record is older than the TTL."""
    now = [0.0]
    gw.keys._clock = lambda: now[0]
    credit_wallet(ensure_account()[1].id, 10**9)
    return now


def send(gw, secret: str, content: bytes | None = None):
    flow = run(gw, api_flow([("authorization", f"Bearer {secret}")], **({"content": content} if content else {})))
    if flow.response is None:
        return "forwarded"
    return flow.response.status_code, json.loads(flow.response.content)["error"]["code"]


def nothing_written(gw) -> bool:
    """No request row (once the writer has written all it was given) and nothing awaiting an answer."""
    assert gw.writer.flush(timeout=10)
    return RequestRow.select().count() == 0 and not gw.pending


def test_a_paused_key_is_403_and_works_again_within_the_ttl_of_its_resume(gw, clock):
    key = keys.create_spend_key("team", status="paused")
    assert send(gw, key.secret_key) == (403, "key_paused")
    keys.update_key("default", key.id, "spend", status="active")
    assert send(gw, key.secret_key) == (403, "key_paused")  # the cached record, until the TTL is over
    assert nothing_written(gw)
    clock[0] += 1.01  # tollgate_cache_ttl_ms: 1000
    assert send(gw, key.secret_key) == "forwarded"
    keys.update_key("default", key.id, "spend", status="paused")
    clock[0] += 1.01
    assert send(gw, key.secret_key) == (403, "key_paused")


def test_an_expired_key_is_401(gw, clock):
    key = keys.create_spend_key("team", expires_at=utcnow() + timedelta(hours=1))
    assert send(gw, key.secret_key) == "forwarded"
    keys.update_key("default", key.id, "spend", expires_at=utcnow() - timedelta(seconds=1))
    clock[0] += 1.01
    assert send(gw, key.secret_key) == (401, "key_expired")


@pytest.mark.parametrize("scope, outcome", [
    ({"allowed_models": ["gpt-4o-mini"]}, "forwarded"),
    ({"allowed_models": ["gpt-4o*"]}, "forwarded"),  # a prefix
    ({"allowed_models": ["gpt-4o"]}, (403, "key_scope")),  # exact: not gpt-4o-mini
    ({"allowed_models": ["o3*", "claude-*"]}, (403, "key_scope")),
    ({"allowed_providers": ["openai"]}, "forwarded"),
    ({"allowed_providers": ["anthropic"]}, (403, "key_scope")),
    ({"allowed_providers": ["openai"], "allowed_models": ["o3"]}, (403, "key_scope")),
])
def test_allow_lists_confine_the_key(gw, clock, scope, outcome):
    key = keys.create_spend_key("team", **scope)
    assert send(gw, key.secret_key) == outcome  # the request is a gpt-4o-mini chat to api.openai.com


def test_a_refusal_names_what_is_not_allowed_and_writes_nothing(gw, clock):
    key = keys.create_spend_key("team", allowed_providers=["anthropic"])
    flow = run(gw, api_flow([("authorization", f"Bearer {key.secret_key}")]))
    assert json.loads(flow.response.content)["error"]["message"] == "this key does not allow provider openai"
    paused = keys.create_spend_key("idle", status="paused")
    expired = keys.create_spend_key("old", expires_at=utcnow() - timedelta(seconds=1))
    assert [send(gw, paused.secret_key), send(gw, expired.secret_key)] == [(403, "key_paused"), (401, "key_expired")]
    assert nothing_written(gw)


def test_a_rotated_secret_is_refused_and_the_new_one_admitted(gw, clock):
    key = keys.create_spend_key("team")
    assert send(gw, key.secret_key) == "forwarded"
    rotated = keys.rotate_key("default", key.id, "spend")
    clock[0] += 1.01
    assert send(gw, key.secret_key) == (401, "invalid_credential")
    assert send(gw, rotated.secret_key) == "forwarded"


def test_a_secret_key_paused_or_scoped_is_refused_too(gw, clock):
    """The same columns on a secret key (issue 13's `keys update`) are enforced the same way."""
    key = keys.create_key("app")
    keys.update_key("default", key.id, "secret", allowed_models=["o3"])
    assert send(gw, key.secret_key) == (403, "key_scope")
