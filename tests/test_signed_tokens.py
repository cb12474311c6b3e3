import base64
import hashlib
import hmac
import json
import stat
import threading

import pytest

from addons.auth.signed_tokens import (
    SIGNED_PREFIX,
    SignedClaims,
    check_scope,
    issue_signed_token,
    load_signing_key,
    verify_signed_token,
)
from addons.core.errors import BadRequest, Forbidden, Unauthorized
from addons.core.secret_formats import hash_secret

KEY = b"k" * 32
SECRET = "tg_sk_" + "S" * 43
NOW = 1_700_000_000
FULL = dict(key_id="key_ab12cd34", customer_id="cus_1", meter_slug="chat", provider_key="sk-prov-XYZ",
            disable_billing=True, expires_in=3600, allow_providers=("openai", "anthropic"),
            allow_models=("gpt-4o", "claude-*"), spend_cap_nanos=12_500_000_000)
TOKEN = issue_signed_token(KEY, **FULL, now=NOW)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed(body: str, key: bytes = KEY) -> str:
    """A token with a valid signature over an arbitrary claims part."""
    sig = hmac.new(key, (SIGNED_PREFIX + body).encode(), hashlib.sha256).digest()
    return f"{SIGNED_PREFIX}{body}.{b64(sig)}"


def claims_of(token: str) -> dict:
    body = token[len(SIGNED_PREFIX):].split(".")[0]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def with_claims(**changes) -> str:
    """Valid claims JSON, changed as given (None removes a claim), validly signed."""
    data = {"v": 1, "jti": "ab" * 16, "kid": "key_x", "iat": NOW} | changes
    return signed(b64(json.dumps({k: v for k, v in data.items() if v is not None}).encode()))


def test_round_trip_of_every_field():
    claims = verify_signed_token(TOKEN, KEY, now=NOW)
    assert claims == SignedClaims(
        token_id=claims.token_id, key_id="key_ab12cd34", issued_at=NOW, expires_at=NOW + 3600,
        customer_id="cus_1", meter_slug="chat", provider_key="sk-prov-XYZ", disable_billing=True,
        allow_providers=("openai", "anthropic"), allow_models=("gpt-4o", "claude-*"),
        spend_cap_nanos=12_500_000_000)
    assert len(claims.token_id) == 32 and int(claims.token_id, 16) >= 0
    assert claims_of(TOKEN)["cap"] == "12.50"
    minimal = verify_signed_token(issue_signed_token(KEY, key_id="key_m", now=NOW), KEY, now=NOW + 10**9)
    assert minimal == SignedClaims(token_id=minimal.token_id, key_id="key_m", issued_at=NOW)
    assert set(claims_of(issue_signed_token(KEY, key_id="key_m"))) == {"v", "jti", "kid", "iat"}
    assert claims_of(issue_signed_token(KEY, key_id="k"))["jti"] != claims_of(issue_signed_token(KEY, key_id="k"))["jti"]


def test_token_names_the_key_id_never_the_secret():
    decoded = json.dumps(claims_of(TOKEN))
    for text in (TOKEN, decoded):
        assert SECRET not in text and hash_secret(SECRET) not in text
    assert claims_of(TOKEN)["kid"] == "key_ab12cd34"


def test_every_single_character_change_is_refused():
    positions = sorted({*range(0, len(TOKEN), 3), len(TOKEN) - 1, TOKEN.index(".") - 1, TOKEN.index(".")})
    for i in positions:
        for replacement in ("A", "B", "."):
            if TOKEN[i] == replacement:
                continue
            tampered = TOKEN[:i] + replacement + TOKEN[i + 1:]
            with pytest.raises((Unauthorized, BadRequest)) as caught:
                verify_signed_token(tampered, KEY, now=NOW)
            message = caught.value.message
            assert tampered not in message and "sk-prov-XYZ" not in message and TOKEN.split(".")[1] not in message


def test_non_canonical_base64_of_the_same_signature_is_refused():
    """43 base64 chars carry 258 bits for a 256-bit MAC: the last char's 2 spare bits must not vary."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = TOKEN[:-1] + alphabet[alphabet.index(TOKEN[-1]) ^ 1]
    assert base64.urlsafe_b64decode(twin.split(".")[1] + "=") == base64.urlsafe_b64decode(TOKEN.split(".")[1] + "=")
    with pytest.raises(Unauthorized):
        verify_signed_token(twin, KEY, now=NOW)


@pytest.mark.parametrize("change", [{"cap": "1000000.00"}, {"cus": "cus_other"}, {"kid": "key_other"},
                                    {"exp": None}, {"prov": ["openai", "anthropic", "groq"]}, {"dis": None}])
def test_changed_claims_under_the_old_signature_are_refused(change):
    data = {k: v for k, v in (claims_of(TOKEN) | change).items() if v is not None}
    body = b64(json.dumps(data, separators=(",", ":")).encode())
    with pytest.raises(Unauthorized) as caught:
        verify_signed_token(f"{SIGNED_PREFIX}{body}.{TOKEN.split('.')[1]}", KEY, now=NOW)
    assert caught.value.code == "token_signature_invalid"


@pytest.mark.parametrize("token", [
    issue_signed_token(b"o" * 32, key_id="key_ab12cd34", now=NOW),
    signed(b64(b"not json"), key=b"o" * 32),  # the signature is checked before the claims are parsed
])
def test_token_signed_with_another_key_is_refused(token):
    with pytest.raises(Unauthorized) as caught:
        verify_signed_token(token, KEY, now=NOW)
    assert caught.value.code == "token_signature_invalid"


def test_expiry_is_exclusive():
    token = issue_signed_token(KEY, key_id="key_e", expires_in=60, now=NOW)
    assert verify_signed_token(token, KEY, now=NOW + 59).expires_at == NOW + 60
    with pytest.raises(Unauthorized) as caught:
        verify_signed_token(token, KEY, now=NOW + 60)
    assert caught.value.code == "token_expired"


@pytest.mark.parametrize("token", [
    "", None, "tgt_", "tgt_abc", "tgt_.", TOKEN.replace(SIGNED_PREFIX, "tgx_", 1), TOKEN + ".x",
    "tgt_ab!c." + TOKEN.split(".")[1], TOKEN.split(".")[0] + ".ab=c", TOKEN + "=",
    signed("abcde"),  # a length no base64 has
    signed(b64(b"not json")), signed(b64(b"\xff\xfe")), signed(b64(b"[1, 2]")), signed(b64(b'"kid"')),
    with_claims(exp=str(NOW + 60)), with_claims(iat=None), with_claims(iat=True), with_claims(v=2),
    with_claims(v=True), with_claims(kid=""), with_claims(jti=None), with_claims(cus=7),
    with_claims(cap="ten"), with_claims(cap=10), with_claims(cap="0"), with_claims(cap="0.0000000001"),
    with_claims(dis=False), with_claims(prov="openai"), with_claims(mod=["gpt", 3]), with_claims(extra=1),
])
def test_malformed_tokens_are_bad_requests(token):
    with pytest.raises(BadRequest) as caught:
        verify_signed_token(token, KEY, now=NOW)
    assert caught.value.code == "invalid_signed_token"


def scoped(providers=(), models=()):
    return SignedClaims(token_id="t", key_id="k", issued_at=NOW, allow_providers=providers, allow_models=models)


@pytest.mark.parametrize("providers, models, provider, model, allowed", [
    ((), (), "openai", None, True),
    (("openai",), (), "openai", "gpt-4o", True),
    (("openai",), (), "anthropic", "claude-3", False),
    ((), ("gpt-4o",), "openai", "gpt-4o", True),
    ((), ("gpt-4o",), "openai", "gpt-4o-mini", False),
    ((), ("gpt-4o*",), "openai", "gpt-4o-mini", True),
    ((), ("claude-*",), "anthropic", "claude-3-opus", True),
    ((), ("claude-*",), "anthropic", "gpt-claude-x", False),
    ((), ("*",), "openai", "anything", True),
    ((), ("gpt-4o",), "openai", None, False),
    (("openai",), ("gpt-*",), "openai", "o1", False),
])
def test_check_scope(providers, models, provider, model, allowed):
    if allowed:
        check_scope(scoped(providers, models), provider, model)
    else:
        with pytest.raises(Forbidden) as caught:
            check_scope(scoped(providers, models), provider, model)
        assert caught.value.code == "token_scope"


def test_configured_signing_key_wins(tmp_path):
    assert load_signing_key("c" * 32, tmp_path / "token-signing.key") == b"c" * 32
    assert not (tmp_path / "token-signing.key").exists()
    with pytest.raises(ValueError):
        load_signing_key("c" * 31, tmp_path / "token-signing.key")


def test_signing_key_file_is_created_once_with_mode_0600(tmp_path):
    path = tmp_path / "data" / "token-signing.key"
    first = load_signing_key(None, path)
    assert len(first) == 64 and bytes.fromhex(first.decode())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signing_key(None, path) == first == path.read_text().strip().encode()
    assert [p.name for p in path.parent.iterdir()] == ["token-signing.key"]
    token = issue_signed_token(first, key_id="key_f", now=NOW)
    assert verify_signed_token(token, load_signing_key(None, path), now=NOW).key_id == "key_f"


def test_concurrent_first_loads_agree(tmp_path):
    path, barrier, results = tmp_path / "token-signing.key", threading.Barrier(8), []

    def load():
        barrier.wait()
        results.append(load_signing_key(None, path))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["token-signing.key"]
