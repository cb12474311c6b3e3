"""Authentication in-process: each kind of credential resolved to its caller through a fake account cache."""

from __future__ import annotations

import asyncio

import pytest

from addons.auth.authentication import Caller, authenticate
from addons.auth.credentials import CallerCredential, ForwardToken
from addons.auth.signed_tokens import issue_signed_token
from addons.core.errors import GatewayError
from addons.core.secret_formats import hash_secret
from addons.core.settings import CaptureSettings
from addons.ledger.accounts import AccountRecord, KeyRecord, ProviderKeyRecord

SECRET = "tg_sk_" + "a" * 43
REVOKED = "tg_sk_" + "r" * 43
SIGNING_KEY = b"k" * 32
KEY = KeyRecord("key_1", "acc_1", "wal_1", False, name="app")
PROVIDER_KEY = "sk-proj-registered"


class FakeCache:
    """The account cache's lookups, answered from dicts."""

    def __init__(self, accounts=None):
        self.keys = {hash_secret(SECRET): KEY, hash_secret(REVOKED): KeyRecord("key_2", "acc_1", "wal_1", True)}
        self.provider_keys = {(hash_secret(PROVIDER_KEY), "openai"): ProviderKeyRecord("reg_1", "acc_2", "wal_2", False)}
        self.accounts = accounts or {}

    async def key(self, key_hash):
        return self.keys.get(key_hash)

    async def key_by_id(self, key_id):
        return next((k for k in self.keys.values() if k.key_id == key_id), None)

    async def provider_key(self, key_hash, provider):
        return self.provider_keys.get((key_hash, provider))

    async def account(self, name):
        return self.accounts.get(name)


def authenticated(credential: CallerCredential, cache=None, signing_key=SIGNING_KEY, **kwargs) -> Caller:
    return asyncio.run(authenticate(credential, cache or FakeCache(), signing_key, provider="openai", **kwargs))


def refusal(credential: CallerCredential, cache=None, signing_key=SIGNING_KEY, **kwargs) -> tuple[int, str]:
    with pytest.raises(GatewayError) as raised:
        authenticated(credential, cache, signing_key, **kwargs)
    return raised.value.status, raised.value.code


def test_a_secret_key_is_its_key():
    assert authenticated(CallerCredential(secret_key=SECRET)) == Caller(KEY)


def test_a_forward_token_passes_its_billing_fields_on_unchecked():
    token = ForwardToken(SECRET, customer_id="cus_1", meter_slug="gold", provider_key="sk-own", disable_billing=True)
    caller = authenticated(CallerCredential(secret_key=SECRET, token=token))
    assert caller == Caller(KEY, None, "cus_1", "gold", "sk-own", True)


def test_a_signed_token_is_the_key_it_names_by_id():
    signed = issue_signed_token(SIGNING_KEY, key_id="key_1", customer_id="cus_1", meter_slug="gold")
    caller = authenticated(CallerCredential(signed_token=signed))
    assert (caller.key, caller.token.key_id, caller.customer_id, caller.meter_slug) == (KEY, "key_1", "cus_1", "gold")


@pytest.mark.parametrize(("credential", "signing_key", "expected"), [
    (CallerCredential(secret_key="tg_sk_unknown"), SIGNING_KEY, (401, "invalid_credential")),
    (CallerCredential(secret_key=REVOKED), SIGNING_KEY, (403, "key_revoked")),
    (CallerCredential(signed_token=issue_signed_token(SIGNING_KEY, key_id="key_9")), SIGNING_KEY,
     (401, "invalid_credential")),
    (CallerCredential(signed_token=issue_signed_token(SIGNING_KEY, key_id="key_2")), SIGNING_KEY,
     (403, "key_revoked")),
    (CallerCredential(signed_token=issue_signed_token(SIGNING_KEY, key_id="key_1")), None,
     (401, "token_signature_invalid")),  # signed tokens are not enabled
    (CallerCredential(signed_token=issue_signed_token(b"o" * 32, key_id="key_1")), SIGNING_KEY,
     (401, "token_signature_invalid")),
])
def test_refusals(credential, signing_key, expected):
    assert refusal(credential, signing_key=signing_key) == expected


@pytest.mark.parametrize(("swap", "forwarded"), [(False, PROVIDER_KEY), (True, None)])
def test_a_registered_provider_key_is_its_account(swap, forwarded):
    cache = FakeCache()
    cache.provider_keys[(hash_secret(PROVIDER_KEY), "openai")] = ProviderKeyRecord("reg_1", "acc_2", "wal_2", swap)
    caller = authenticated(CallerCredential(provider_key=PROVIDER_KEY), cache)
    assert caller == Caller(KeyRecord(None, "acc_2", "wal_2", False, name="provider key reg_1"), provider_key=forwarded)


@pytest.mark.parametrize(("captured", "code"), [(False, "invalid_credential"), (True, "unknown_provider_key")])
def test_an_unregistered_provider_key_is_refused(captured, code):
    assert refusal(CallerCredential(provider_key="sk-other"), captured=captured) == (401, code)


def test_an_unregistered_provider_key_is_tracked_to_the_capture_account():
    cache = FakeCache(accounts={"capture": AccountRecord("acc_3", "wal_3")})
    caller = authenticated(CallerCredential(provider_key="sk-other"), cache,
                           capture=CaptureSettings(provider_keys="track", account="capture"))
    assert caller == Caller(KeyRecord(None, "acc_3", "wal_3", False, name="unregistered provider key"),
                            provider_key="sk-other")


def test_tracking_to_a_missing_capture_account_is_a_configuration_error():
    assert refusal(CallerCredential(provider_key="sk-other"),
                   capture=CaptureSettings(provider_keys="track", account="nowhere")) == (503, "capture_account_missing")
