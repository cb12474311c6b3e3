"""Callers that sign with AWS Signature V4 (Bedrock through boto3): the Tollgate key is the AWS credential.

The caller's AWS access key id is its Tollgate key's id (`key_…`), its secret access key the Tollgate
secret (`tg_sk_…`); boto3 signs with them unchanged. A signature can only be checked by computing it
again with the secret, which the ledger keeps sealed for this (ledger.accounts.find_sigv4_secret; the
hash it authenticates other requests by cannot make a signature). The check recomputes the signature
with botocore's own SigV4Auth over the request as received (the headers the caller signed, the body,
the caller's timestamp and scope) and compares in constant time, so nothing about SigV4 is written by
hand here. Like AWS, a signature more than 15 minutes from the gateway's clock is refused (replays).

The key is then checked like any other (revoked, paused, expired: authentication.usable_key), read
through the account cache: no database I/O on the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from calendar import timegm
from typing import NamedTuple

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from mitmproxy import http

from addons.auth.account_cache import AccountCache
from addons.auth.authentication import Caller, usable_key
from addons.core.errors import Unauthorized
from addons.core.sealed_secrets import UnsealError

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_SECONDS = 15 * 60
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*SignedHeaders=(?P<signed>[^,\s]+)\s*,"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})\s*")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_HOW = ("sign with your Tollgate key: AWS access key id = the key's id (key_…), "
        "AWS secret access key = its secret (tg_sk_…)")


class SignatureRefused(Unauthorized):
    """401 for a request whose AWS signature is missing, malformed or wrong (AWS answers 403; the gateway's
    credential refusals are 401 everywhere). x-amzn-errortype lets boto3 name the code."""


def _refused(code: str, message: str) -> SignatureRefused:
    return SignatureRefused(code, message, headers={"x-amzn-errortype": code})


class SignedScope(NamedTuple):
    """What a SigV4 Authorization header says: who signed, for which day, region and service, over which headers."""

    access_key: str
    day: str
    region: str
    service: str
    signed_headers: list[str]
    signature: str


def parse_authorization(value: str | None) -> SignedScope:
    if not value:
        raise _refused("missing_credential", f"this AWS API needs a SigV4-signed request: {_HOW}")
    m = _AUTH.fullmatch(value.strip())
    if m is None:
        raise _refused("invalid_credential", f"the Authorization header is not an {ALGORITHM} signature: {_HOW}")
    parts = m["credential"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts):
        raise _refused("invalid_credential", "the signature's Credential is not key/date/region/service/aws4_request")
    return SignedScope(*parts[:4], m["signed"].split(";"), m["signature"])


def _epoch(amz_date: str) -> float | None:
    try:
        return timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:  # digits that are no date (month 13)
        return None


def expected_signature(request: http.Request, secret: str, scope: SignedScope, amz_date: str) -> str:
    """What the caller's signature must be: botocore's SigV4Auth over the headers it signed (a repeated one
    joined by commas, as SigV4 joins them), the path and query as sent, the body, and its own timestamp."""
    headers = {name: ",".join(request.headers.get_all(name)) for name in scope.signed_headers}
    if "host" in headers:
        headers["host"] = request.host_header or ""  # HTTP/2 carries it as :authority
    aws = AWSRequest(method=request.method, url=request.url, data=request.raw_content or b"", headers=headers)
    aws.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(scope.access_key, secret), scope.service, scope.region)
    canonical = signer.canonical_request(aws)
    return signer.signature(signer.string_to_sign(aws, canonical), aws)


def _check_payload_hash(request: http.Request) -> None:
    """A signed x-amz-content-sha256 stands for the body in the signature: it must be the body's."""
    declared = request.headers.get("x-amz-content-sha256")
    if declared is not None and declared != hashlib.sha256(request.raw_content or b"").hexdigest():
        raise _refused("invalid_credential", "x-amz-content-sha256 is not the SHA-256 of the request body")


async def authenticate_sigv4(request: http.Request, cache: AccountCache, service: str,
                             now: float | None = None) -> Caller:
    """The caller of a SigV4-signed request, or a refusal saying what to fix; never reveals a secret."""
    scope = parse_authorization(request.headers.get("authorization"))
    if scope.service != service:
        raise _refused("invalid_credential", f"the request is signed for service {scope.service!r}, not {service!r}")
    if "host" not in scope.signed_headers:
        raise _refused("invalid_credential", "the signature must cover the host header")
    amz_date = request.headers.get("x-amz-date", "")
    signed_at = _epoch(amz_date) if _AMZ_DATE.fullmatch(amz_date) else None
    if signed_at is None or amz_date[:8] != scope.day:
        raise _refused("invalid_credential", "x-amz-date is missing or does not match the signature's date")
    if abs((time.time() if now is None else now) - signed_at) > MAX_SKEW_SECONDS:
        raise _refused("signature_expired", "the request's signature is more than 15 minutes from the gateway's "
                                            "clock; check the client's clock")
    akid = scope.access_key
    if not akid.startswith("key_"):
        raise _refused("invalid_credential", f"the AWS access key id is not a Tollgate key id: {_HOW}")
    key = await cache.key_by_id(akid)
    if key is None:
        raise _refused("invalid_credential", f"the AWS access key id names no Tollgate key: {_HOW}")
    try:
        secret = await cache.sigv4_secret(akid)
    except UnsealError:
        raise _refused("sigv4_secret_unavailable", "the gateway cannot read this key's signing secret (its "
                                                   "secrets key changed): create a new key") from None
    if secret is None:
        raise _refused("sigv4_secret_unavailable", "this key was made before the gateway kept signing secrets: "
                                                   "create a new key (or rotate a spend key) to sign AWS requests")
    _check_payload_hash(request)
    expected = expected_signature(request, secret, scope, amz_date)
    if not hmac.compare_digest(expected.encode(), scope.signature.encode()):
        raise _refused("signature_mismatch", "the AWS signature does not match: the secret access key must be "
                                             "the Tollgate secret (tg_sk_…) of the key named as access key id")
    return Caller(usable_key(key))
