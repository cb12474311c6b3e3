"""AWS Bedrock's side of the request path: where a signed request goes, and its signature for AWS.

The caller's signature (made with its Tollgate key, checked by auth.sigv4_callers) is replaced by one
made with the operator's AWS credentials, by botocore's SigV4Auth, for the region of the host the
caller meant (`bedrock-runtime.{region}.amazonaws.com`). The body is final by then (Bedrock's readers
never rewrite it), and the signature covers it.

Only the headers AWS needs are signed (host, content-type, accept and the x-amz-* / x-amzn-* ones),
so nothing a later hop adds or changes (content-length, accept-encoding, user-agent) can break it.
The operator's credentials come from the gateway's environment: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and, for temporary credentials, AWS_SESSION_TOKEN (read per request: a
rotated session token in the environment of a restarted worker is used at once).
"""

from __future__ import annotations

import json
import os
import re

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from mitmproxy import http
from mitmproxy.net.http import url

from addons.core.catalog import Provider
from addons.core.errors import BadRequest, GatewayError, ProviderNotConfigured

_REGION = re.compile(r"bedrock-runtime\.([a-z0-9-]+)\.amazonaws\.com")
# What the caller sent for its own signature: replaced, never forwarded.
_CALLER_AUTH = ("x-amz-date", "x-amz-security-token", "x-amz-content-sha256")
_UNSIGNED_AMZ = frozenset({"x-amzn-trace-id"})  # botocore never signs it


def region_of(host: str) -> str:
    m = _REGION.fullmatch(host)
    if m is None:  # the catalog lists only hosts of this form; a new one must say its region
        raise GatewayError("internal_error", f"no AWS region in Bedrock host {host!r}")
    return m[1]


def meant_host(flow: http.HTTPFlow, provider: Provider) -> str | None:
    """The Bedrock host the caller addressed (routing found it by SNI, Host header or request host); None for a
    request addressed to the gateway itself (the forward endpoint, whose target URL names the host)."""
    request = flow.request
    host_header = (request.host_header or "").rpartition(":")[0] or request.host_header
    for candidate in (flow.client_conn.sni, host_header, request.host):
        if candidate and candidate.lower().rstrip(".") in provider.hosts:
            return candidate.lower().rstrip(".")
    return None


def refuse_a_forwarded_signature(request: http.Request, provider: Provider) -> None:
    """A SigV4 signature sent to the forward endpoint was made for the gateway's URL, not Bedrock's: say how it
    is done instead, rather than refusing it as a malformed credential."""
    if (request.headers.get("authorization") or "").lstrip().startswith("AWS4-HMAC-SHA256"):
        raise BadRequest("sigv4_needs_proxy", f"a request signed for AWS reaches {provider.name} through HTTPS_PROXY "
                                              "(or system-wide capture) with its own endpoint; through the forward "
                                              "endpoint, send the Tollgate key (Authorization: Bearer) unsigned")


def operator_credentials(provider: Provider) -> Credentials:
    access_key, secret = os.environ.get(provider.credential_env), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access_key or not secret:
        raise ProviderNotConfigured("provider_key_missing", f"no {provider.name} credentials are configured "
                                                            f"({provider.credential_env} and AWS_SECRET_ACCESS_KEY)")
    return Credentials(access_key, secret, os.environ.get("AWS_SESSION_TOKEN") or None)


def _signed_headers(request: http.Request) -> dict[str, str]:
    headers = {}
    for name in request.headers:
        lower = name.lower()
        if lower in ("content-type", "accept") or (lower.startswith(("x-amz-", "x-amzn-"))
                                                   and lower not in _UNSIGNED_AMZ):
            headers[lower] = ",".join(request.headers.get_all(name))
    return headers


def send_signed(flow: http.HTTPFlow, provider: Provider, host: str, credentials: Credentials) -> None:
    """Aim the request at the provider (its configured upstream, else the host the caller meant) and sign it
    with the operator's credentials. Call with the caller's credential already stripped and the body final."""
    request = flow.request
    for name in _CALLER_AUTH:
        request.headers.pop(name, None)
    request.scheme, request.host, request.port = provider.origin if provider.upstream else ("https", host, 443)
    authority = url.hostport(request.scheme, request.host, request.port)
    aws = AWSRequest(method=request.method, url=request.url, data=request.raw_content or b"",
                     headers={**_signed_headers(request), "host": authority})
    SigV4Auth(credentials, provider.sigv4_service, region_of(host)).add_auth(aws)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
        if name in aws.headers:
            request.headers[name] = aws.headers[name]


def aws_shaped(response: http.Response, error: GatewayError) -> None:
    """A gateway refusal that boto3 can read: its code in x-amzn-errortype and its message at the top of the
    body (botocore's REST-JSON error parser), beside the gateway's usual {"error": {...}}."""
    try:
        body = json.loads(response.content or b"{}")
    except ValueError:
        return
    if isinstance(body, dict):
        body["message"] = error.message
        response.content = json.dumps(body).encode()
    response.headers["x-amzn-errortype"] = error.code
