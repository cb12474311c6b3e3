"""AWS Bedrock through the gateway: boto3's bedrock-runtime client, unchanged, signs with a Tollgate key over
HTTPS_PROXY; the gateway checks that signature, signs again with the operator's AWS credentials (which the mock
Bedrock verifies with botocore), passes the binary event stream through byte for byte, and records usage and cost.

One gateway process (tollgate-proxy, SQLite: the ledger backend changes nothing here) and one mock Bedrock serve
the module's end-to-end tests; the reader (on arbitrary chunkings of real frames) and the signature checks are also
tested in-process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal

import boto3
import botocore.exceptions
import genai_prices
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from addons.auth.sigv4_callers import SignatureRefused, authenticate_sigv4, expected_signature, parse_authorization
from addons.core.catalog import load_catalog, parse_providers
from addons.ledger.accounts import create_key, credit_wallet, ensure_account
from addons.proxy.auth_throttle import credential_digest
from addons.proxy.bedrock import region_of
from addons.usage.readers import for_request
from pricing.money import to_nanos
from tests.harness import GatewayProcess
from tests.mock_bedrock import (
    CONVERSE_USAGE,
    INVOKE_USAGE,
    OPERATOR,
    REGION,
    TEXT,
    TITAN_ANSWER,
    MockBedrock,
    event_frame,
    verify_operator_signature,
)

MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
HOST = f"bedrock-runtime.{REGION}.amazonaws.com"
INVOKE_BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
               "messages": [{"role": "user", "content": "hi"}]}
CONVERSE_ARGS = {"modelId": MODEL, "messages": [{"role": "user", "content": [{"text": "hi"}]}],
                 "inferenceConfig": {"maxTokens": 64}}


@pytest.fixture(scope="module")
def gateway(bedrock, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bedrock-gateway")
    gw = GatewayProcess(tmp, f"sqlite:///{tmp}/ledger.db", {"bedrock": bedrock.url})
    gw.env.update(AWS_ACCESS_KEY_ID=OPERATOR.access_key, AWS_SECRET_ACCESS_KEY=OPERATOR.secret_key,
                  AWS_SESSION_TOKEN=OPERATOR.token)
    gw.fund("10")
    gw.key = gw.cli_json("keys", "create", "--name", "bedrock-app")
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway, monkeypatch):
    """boto3 as an app runs it: HTTPS_PROXY to the gateway, its CA in AWS_CA_BUNDLE, the Tollgate key as credentials."""
    return _client(gateway, monkeypatch, gateway.key["id"], gateway.key["secret_key"])


def _client(gateway, monkeypatch, access_key: str, secret: str):
    monkeypatch.setenv("HTTPS_PROXY", gateway.url)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(gateway.ca))
    for name in ("NO_PROXY", "no_proxy", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return boto3.client("bedrock-runtime", region_name=REGION, aws_access_key_id=access_key,
                        aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}))


def _request_id(response) -> str:
    return response["ResponseMetadata"]["HTTPHeaders"]["x-tollgate-request-id"]


def _expected_cost(model: str, input_tokens: int, cache_read: int, cache_write: int, output: int) -> Decimal:
    """genai-prices' own price for the usage (aws = Bedrock), in USD at the ledger's nano precision."""
    usage = genai_prices.Usage(input_tokens=input_tokens, cache_read_tokens=cache_read, cache_write_tokens=cache_write,
                               output_tokens=output)
    total = genai_prices.calc_price(usage, model, provider_id="aws").total_price
    return Decimal(to_nanos(total)) / 10**9


def _assert_row(gateway, request_id: str, endpoint: str, streamed: bool, usage: tuple[int, int, int, int],
                model: str = MODEL) -> None:
    row = gateway.request_row(request_id)
    assert (row["provider"], row["model"], row["endpoint"], row["status"], row["streamed"]) == (
        "bedrock", model, endpoint, 200, streamed)
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"]) == usage
    assert row["usage_source"] == "reported" and row["price_source"] == "catalog"
    expected = _expected_cost(model, *usage)
    assert expected > 0 and Decimal(row["provider_cost"]) == expected == Decimal(row["charged"])


def _assert_signed_by_operator_only(bedrock, gateway) -> None:
    seen = bedrock.last["headers"]
    assert seen["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={OPERATOR.access_key}/")
    raw = " ".join(f"{k}: {v}" for k, v in seen.items())
    assert gateway.key["id"] not in raw and "tg_sk_" not in raw


def _invoke_usage() -> tuple[int, int, int, int]:
    read, write = INVOKE_USAGE["cache_read_input_tokens"], INVOKE_USAGE["cache_creation_input_tokens"]
    return INVOKE_USAGE["input_tokens"] + read + write, read, write, INVOKE_USAGE["output_tokens"]


def _converse_usage() -> tuple[int, int, int, int]:
    read, write = CONVERSE_USAGE["cacheReadInputTokens"], CONVERSE_USAGE["cacheWriteInputTokens"]
    return CONVERSE_USAGE["inputTokens"] + read + write, read, write, CONVERSE_USAGE["outputTokens"]


def _tee(stream) -> list[bytes]:
    """The raw bytes botocore reads for an event stream, as it reads them."""
    received, raw = [], stream._raw_stream
    read = raw.stream
    raw.stream = lambda *args, **kwargs: (received.append(chunk) or chunk for chunk in read(*args, **kwargs))
    return received


# -- through the gateway ---------------------------------------------------------------------------


def test_invoke_model(client, gateway, bedrock):
    response = client.invoke_model(modelId=MODEL, body=json.dumps(INVOKE_BODY), contentType="application/json")
    answer = json.loads(response["body"].read())
    assert answer["content"][0]["text"] == "".join(TEXT) and answer["usage"] == INVOKE_USAGE
    assert json.loads(bedrock.last["body"]) == INVOKE_BODY
    _assert_signed_by_operator_only(bedrock, gateway)
    _assert_row(gateway, _request_id(response), "invoke_model", False, _invoke_usage())


def test_invoke_model_of_another_family_is_read_from_its_token_headers(client, gateway):
    model = "amazon.titan-text-express-v1"
    response = client.invoke_model(modelId=model, body=json.dumps({"inputText": "hi"}))
    assert json.loads(response["body"].read()) == TITAN_ANSWER
    usage = (TITAN_ANSWER["inputTextTokenCount"], 0, 0, TITAN_ANSWER["results"][0]["tokenCount"])
    _assert_row(gateway, _request_id(response), "invoke_model", False, usage, model=model)


def test_invoke_model_with_response_stream_passes_bytes_through(client, gateway, bedrock):
    response = client.invoke_model_with_response_stream(modelId=MODEL, body=json.dumps(INVOKE_BODY))
    received = _tee(response["body"])
    events = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]  # boto3 decodes the base64
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == "".join(TEXT)
    assert b"".join(received) == bedrock.sent[-1]
    _assert_signed_by_operator_only(bedrock, gateway)
    _assert_row(gateway, _request_id(response), "invoke_model_stream", True, _invoke_usage())


def test_converse(client, gateway, bedrock):
    response = client.converse(**CONVERSE_ARGS)
    assert response["output"]["message"]["content"][0]["text"] == "".join(TEXT)
    assert response["usage"] == CONVERSE_USAGE
    _assert_signed_by_operator_only(bedrock, gateway)
    _assert_row(gateway, _request_id(response), "converse", False, _converse_usage())


def test_converse_stream_passes_bytes_through(client, gateway, bedrock):
    response = client.converse_stream(**CONVERSE_ARGS)
    received = _tee(response["stream"])
    events = list(response["stream"])
    assert "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e) == "".join(TEXT)
    assert [e["metadata"]["usage"] for e in events if "metadata" in e] == [CONVERSE_USAGE]
    assert b"".join(received) == bedrock.sent[-1]
    _assert_row(gateway, _request_id(response), "converse_stream", True, _converse_usage())


def test_wrong_tollgate_secret_is_refused_without_a_row(gateway, bedrock, monkeypatch):
    before_rows, before_calls = len(gateway.ledger.requests()), len(bedrock.requests)
    wrong = _client(gateway, monkeypatch, gateway.key["id"], gateway.key["secret_key"][:-4] + "AAAA")
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        wrong.converse(**CONVERSE_ARGS)
    error = refused.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert error["Error"]["Code"] == "signature_mismatch"
    assert "secret access key must be the Tollgate secret" in error["Error"]["Message"]
    unknown = _client(gateway, monkeypatch, "key_000000000000000000000000", gateway.key["secret_key"])
    with pytest.raises(botocore.exceptions.ClientError, match="invalid_credential"):
        unknown.converse(**CONVERSE_ARGS)
    assert len(bedrock.requests) == before_calls  # nothing reached Bedrock
    # A good request afterwards is the only new row: the refusals wrote none.
    ok = _client(gateway, monkeypatch, gateway.key["id"], gateway.key["secret_key"]).converse(**CONVERSE_ARGS)
    gateway.request_row(_request_id(ok))
    assert len(gateway.ledger.requests()) == before_rows + 1


def test_mock_refuses_a_signature_not_made_with_the_operator_credentials(bedrock):
    url = f"{bedrock.url}/model/{MODEL}/converse"
    for credentials in (Credentials("AKIAOPERATOR0EXAMPLE", "not-the-secret", OPERATOR.token),
                        Credentials("AKIASOMEONEELSE", OPERATOR.secret_key, OPERATOR.token)):
        aws = AWSRequest(method="POST", url=url, data=b"{}", headers={"content-type": "application/json"})
        SigV4Auth(credentials, "bedrock", REGION).add_auth(aws)
        request = urllib.request.Request(url, data=b"{}", headers=dict(aws.headers.items()), method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 403
        assert refused.value.headers["x-amzn-errortype"] == "InvalidSignatureException"


# -- in-process: the reader over arbitrary chunkings, and the caller's signature --------------------


def _read_stream(path: str, frames: bytes, step: int):
    reader = for_request("bedrock", "POST", path, "", b"{}")
    out = b"".join(reader.feed(frames[i:i + step]) for i in range(0, len(frames), step)) + reader.feed(b"")
    assert out == frames  # the stream passes unchanged
    return reader.result()


@pytest.mark.parametrize("step", [1, 7, 64, 10_000])
def test_reader_frames_any_chunking(step):
    invoke = _read_stream(f"/model/{MODEL.replace(':', '%3A')}/invoke-with-response-stream",
                          b"".join(MockBedrock.invoke_frames()), step)
    assert (invoke.model, invoke.source) == (MODEL, "reported")
    assert (invoke.usage.input_tokens, invoke.usage.cache_read_tokens, invoke.usage.cache_write_tokens,
            invoke.usage.output_tokens) == _invoke_usage()
    converse = _read_stream(f"/model/{MODEL}/converse-stream", b"".join(MockBedrock.converse_frames()), step)
    assert (converse.usage.input_tokens, converse.usage.cache_read_tokens, converse.usage.cache_write_tokens,
            converse.usage.output_tokens, converse.source) == (*_converse_usage(), "reported")


def test_reader_estimates_a_cut_or_corrupt_stream():
    frames = b"".join(MockBedrock.converse_frames()[:-1])  # no metadata event: cut before the usage
    reader = for_request("bedrock", "POST", f"/model/{MODEL}/converse-stream", "", b'{"messages": []}')
    reader.feed(frames[:-5])
    cut = reader.result()
    assert cut.source == "estimated" and cut.usage.output_tokens == -(-len("".join(TEXT)) // 4)
    corrupt = bytearray(b"".join(MockBedrock.converse_frames()))
    corrupt[20] ^= 0xFF  # a CRC that no longer matches: reading stops, the bytes still pass
    assert _read_stream(f"/model/{MODEL}/converse-stream", bytes(corrupt), 50).source == "estimated"
    exception = event_frame("throttlingException", {"message": "slow down"}, message_type="exception")
    assert _read_stream(f"/model/{MODEL}/converse-stream", exception, 9).usage.input_tokens == 0


def test_reader_reads_other_models_by_invocation_metrics():
    chunk = {"outputText": "hi", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 9, "outputTokenCount": 4}}
    frame = event_frame("chunk", {"bytes": base64.b64encode(json.dumps(chunk).encode()).decode()})
    result = _read_stream("/model/amazon.titan-text-express-v1/invoke-with-response-stream", frame, 5)
    assert (result.model, result.usage.input_tokens, result.usage.output_tokens, result.source) == (
        "amazon.titan-text-express-v1", 9, 4, "reported")


def _signed_request(secret: str, body: bytes = b'{"messages":[]}') -> http.Request:
    """A request as boto3 signs it (botocore's signer, the key id as access key id), as mitmproxy hands it over."""
    url = f"https://{HOST}/model/{MODEL.replace(':', '%3A')}/converse"
    aws = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
    signer = SigV4Auth(Credentials("key_0123456789abcdef01234567", secret), "bedrock", REGION)
    signer.add_auth(aws)
    headers = http.Headers([(k.encode(), v.encode()) for k, v in aws.headers.items()] + [(b"host", HOST.encode())])
    return tutils.treq(host=HOST, port=443, scheme="https", method="POST",
                       path=f"/model/{MODEL.replace(':', '%3A')}/converse", headers=headers, content=body)


def test_signature_check_is_botocores_own():
    request = _signed_request("tg_sk_right")
    scope = parse_authorization(request.headers["authorization"])
    amz_date = request.headers["x-amz-date"]
    assert expected_signature(request, "tg_sk_right", scope, amz_date) == scope.signature
    assert expected_signature(request, "tg_sk_wrong", scope, amz_date) != scope.signature
    request.content = b'{"messages":[1]}'  # the body is signed
    assert expected_signature(request, "tg_sk_right", scope, amz_date) != scope.signature


@pytest.mark.parametrize("value, code", [
    (None, "missing_credential"),
    ("Bearer tg_sk_abc", "invalid_credential"),
    ("AWS4-HMAC-SHA256 Credential=key_1/20250101/us-east-1/bedrock, SignedHeaders=host, Signature=" + "0" * 64,
     "invalid_credential"),
])
def test_malformed_signatures_are_refused_clearly(value, code):
    with pytest.raises(SignatureRefused) as refused:
        parse_authorization(value)
    assert refused.value.code == code and "tg_sk_" not in refused.value.message.replace("(tg_sk_…)", "")


@pytest.mark.parametrize("change, code", [
    ({"skew": 16 * 60}, "signature_expired"),
    ({"skew": -16 * 60}, "signature_expired"),
    ({"x-amz-date": "20251399T000000Z"}, "invalid_credential"),  # no such date
    ({"service": "s3"}, "invalid_credential"),
])
def test_old_or_misdirected_signatures_are_refused(change, code):
    """Refused before any key is looked up (the cache is not even given)."""
    request = _signed_request("tg_sk_right")
    if "x-amz-date" in change:  # the signature's own date too: only the calendar can refuse it
        day = request.headers["x-amz-date"][:8]
        request.headers["x-amz-date"] = change["x-amz-date"]
        request.headers["authorization"] = request.headers["authorization"].replace(day, change["x-amz-date"][:8])
    with pytest.raises(SignatureRefused) as refused:
        asyncio.run(authenticate_sigv4(request, cache=None, service=change.get("service", "bedrock"),
                                       now=time.time() + change.get("skew", 0)))
    assert refused.value.code == code


def _forward(gateway, action: str, headers: dict[str, str]):
    """Converse through the forward endpoint, as a plain HTTP client posts it (no boto3: nothing signs it)."""
    target = f"https://{HOST}/model/{MODEL.replace(':', '%3A')}/{action}"
    body = json.dumps({k: v for k, v in CONVERSE_ARGS.items() if k != "modelId"}).encode()  # the id is in the URL
    request = urllib.request.Request(f"{gateway.url}/v1/forward?u={urllib.parse.quote(target, safe='')}", data=body,
                                     method="POST", headers={"content-type": "application/json", **headers})
    return urllib.request.urlopen(request, timeout=10)


@pytest.mark.parametrize("action", ["converse", "converse-stream"])
def test_the_forward_endpoint_reaches_bedrock_with_the_tollgate_key(gateway, bedrock, action):
    """The forward endpoint takes the Tollgate key as for any provider (nothing to sign on the caller's side); the
    gateway signs for the region the target URL names, with the operator's credentials only."""
    with _forward(gateway, action, {"authorization": f"Bearer {gateway.key['secret_key']}"}) as answer:
        assert answer.status == 200
        raw, request_id = answer.read(), answer.headers["x-tollgate-request-id"]
    _assert_signed_by_operator_only(bedrock, gateway)
    if action == "converse":
        reply = json.loads(raw)
        assert reply["output"]["message"]["content"][0]["text"] == "".join(TEXT) and reply["usage"] == CONVERSE_USAGE
        _assert_row(gateway, request_id, "converse", False, _converse_usage())
    else:
        assert raw == bedrock.sent[-1]  # the event stream, byte for byte
        _assert_row(gateway, request_id, "converse_stream", True, _converse_usage())


def test_a_forward_token_bills_a_customer_for_bedrock(gateway, bedrock):
    """Through the forward endpoint a Bedrock request can carry a forward token, so a customer's meter is billed
    (HTTPS_PROXY callers sign with a key, which names no customer)."""
    gateway.cli("customers", "create", "bedrock-customer", "--balance", "1.00")
    gateway.cli("meters", "create", "bedrock-per-request", "--rate-type", "fixed", "--unit", "requests",
                "--tier", "0:0.01")
    token = gateway.cli_json("token", "--secret-key", gateway.key["secret_key"], "--customer", "bedrock-customer",
                             "--meter", "bedrock-per-request")["token"]
    with _forward(gateway, "converse", {"authorization": f"Bearer {token}"}) as answer:
        assert answer.status == 200
        request_id = answer.headers["x-tollgate-request-id"]
    _assert_row(gateway, request_id, "converse", False, _converse_usage())
    row = gateway.request_row(request_id)
    assert (row["customer_id"], row["meter_slug"], row["fee"]) == ("bedrock-customer", "bedrock-per-request", "0.01")
    assert Decimal(gateway.ledger.balance("bedrock-customer")) == Decimal("0.99")


def test_a_signature_sent_to_the_forward_endpoint_is_refused_saying_how(gateway, bedrock):
    calls = len(bedrock.requests)
    signed = {"authorization": f"AWS4-HMAC-SHA256 Credential={gateway.key['id']}/20250101/{REGION}/bedrock/"
                               "aws4_request, SignedHeaders=host, Signature=" + "0" * 64}
    with pytest.raises(urllib.error.HTTPError) as refused:
        _forward(gateway, "converse", signed)
    error = json.loads(refused.value.read())["error"]
    assert (refused.value.code, error["code"]) == (400, "sigv4_needs_proxy")
    assert "Authorization: Bearer" in error["message"] and len(bedrock.requests) == calls


def test_catalog_lists_bedrock_regions_with_sigv4():
    [parsed] = parse_providers({"providers": [{
        "id": "aws-x", "name": "X", "hosts": ["bedrock-runtime.eu-west-1.amazonaws.com"],
        "base_url": "https://bedrock-runtime.eu-west-1.amazonaws.com", "auth": {"sigv4": "bedrock"},
        "credential_env": "AWS_ACCESS_KEY_ID", "api_family": "bedrock", "pricing_id": "aws"}]})
    assert (parsed.sigv4_service, parsed.auth_header, parsed.auth_query) == ("bedrock", None, None)
    with pytest.raises(ValueError, match="sigv4 must be an AWS service name"):
        parse_providers({"providers": [{**_entry(parsed), "auth": {"sigv4": "Bed Rock"}}]})
    catalog = load_catalog()
    for region in ("us-east-1", "eu-central-1", "ap-northeast-1", "us-gov-west-1"):
        provider = catalog.by_host(f"bedrock-runtime.{region}.amazonaws.com")
        assert provider is not None and provider.id == "bedrock" and provider.sigv4_service == "bedrock"
        assert region_of(f"bedrock-runtime.{region}.amazonaws.com") == region


def _entry(provider) -> dict:
    return {"id": provider.id, "name": provider.name, "hosts": list(provider.hosts), "base_url": provider.base_url,
            "credential_env": provider.credential_env, "api_family": provider.api_family,
            "pricing_id": provider.pricing_id}


def test_signatures_count_towards_the_auth_throttle_by_access_key_id():
    """Each signature differs; the key id it names is what the throttle trusts once it passed, or counts."""
    first, second = (credential_digest(tflow.tflow(req=_signed_request(s))) for s in ("tg_sk_right", "tg_sk_wrong"))
    assert first is not None and first == second


# -- in-process: the Gateway addon on a signed flow ------------------------------------------------


def _key_flow(gw, monkeypatch, secret_of=lambda secret: secret) -> tuple[http.HTTPFlow, dict]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", OPERATOR.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", OPERATOR.secret_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", OPERATOR.token)
    row, secret = create_key("bedrock-unit")
    credit_wallet(ensure_account()[1].id, 10**9)
    body = json.dumps({k: v for k, v in CONVERSE_ARGS.items() if k != "modelId"}).encode()  # the id is in the URL
    url = f"https://{HOST}/model/{MODEL.replace(':', '%3A')}/converse"
    aws = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
    SigV4Auth(Credentials(row.id, secret_of(secret)), "bedrock", REGION).add_auth(aws)
    headers = http.Headers([(k.encode(), v.encode()) for k, v in aws.headers.items()] + [(b"host", HOST.encode())])
    request = tutils.treq(host=HOST, port=443, scheme="https", method="POST",
                          path=f"/model/{MODEL.replace(':', '%3A')}/converse", headers=headers, content=body)
    return tflow.tflow(req=request), {"key_id": row.id, "secret": secret}


def test_gateway_re_signs_with_the_operator_credentials(gw, monkeypatch):
    flow, key = _key_flow(gw, monkeypatch)
    asyncio.run(gw.request(flow))
    assert flow.response is None, flow.response and flow.response.content  # forwarded
    request = flow.request
    assert (request.scheme, request.host, request.port) == ("https", HOST, 443)  # the region the caller meant
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert verify_operator_signature("POST", request.url, headers, request.raw_content) is None
    assert key["key_id"] not in str(request.headers) and key["secret"] not in str(request.headers)


def test_gateway_refuses_a_wrong_secret_in_a_shape_boto3_reads(gw, monkeypatch):
    flow, _ = _key_flow(gw, monkeypatch, secret_of=lambda secret: secret + "x")
    asyncio.run(gw.request(flow))
    assert flow.response.status_code == 401 and flow.response.headers["x-amzn-errortype"] == "signature_mismatch"
    body = json.loads(flow.response.content)
    assert body["error"]["code"] == "signature_mismatch" and body["message"] == body["error"]["message"]
    assert flow.id not in gw.pending  # refused before anything was held or will be recorded
