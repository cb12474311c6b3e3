import json

import pytest
from mitmproxy.net.http import http1

from addons.proxy import error_pages
from addons.proxy.error_pages import json_error_response, protocol_error_message, strip_tag
from addons.proxy.flow_keys import REQUEST_ID_KEY, TIMEOUT_KEY

TAG = error_pages._TAG  # what protocol_error_message appends to mitmproxy's message before the request id


def parse(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    response = http1.read_response_head([line + b"\r\n" for line in head.split(b"\r\n")])
    assert int(response.headers["content-length"]) == len(body)
    return response, json.loads(body)


@pytest.mark.parametrize(
    "status, message, expected_status, error_type, code",
    [
        (502, "Connection refused", 502, "upstream_error", "upstream_unreachable"),
        (502, "[Errno -2] Name or service not known", 502, "upstream_error", "upstream_unreachable"),
        (502, "Connection timed out", 504, "upstream_timeout", "upstream_timeout"),
        (502, "TIMED OUT after 10s", 504, "upstream_timeout", "upstream_timeout"),
        (400, "Bad HTTP request line: b'GE T /'", 400, "invalid_request_error", "bad_http_request"),
        (413, "Request too large", 413, "invalid_request_error", "request_too_large"),
        (431, "Header too large", 431, "invalid_request_error", "request_headers_too_large"),
        (502, f"Connection killed: {error_pages.UPSTREAM_REFUSED}", 502, "upstream_error", "upstream_address_refused"),
        (500, "boom", 500, "gateway_error", "proxy_error"),
    ],
)
def test_json_error_response(status, message, expected_status, error_type, code):
    response, body = parse(json_error_response(status, message))
    assert (response.http_version, response.status_code) == ("HTTP/1.1", expected_status)
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert body["error"]["type"] == error_type and body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_request_id_tag_becomes_headers():
    response, _ = parse(json_error_response(502, f"Connection refused{TAG}req_0123abcd"))
    assert response.headers["x-lava-request-id"] == "req_0123abcd"
    assert response.headers["x-tollgate-request-id"] == "req_0123abcd"


def test_an_error_before_any_request_id_gets_a_fresh_one():
    first, _ = parse(json_error_response(431, "Header too large"))
    second, _ = parse(json_error_response(431, "Header too large"))
    assert first.headers["x-lava-request-id"] == first.headers["x-tollgate-request-id"]
    assert first.headers["x-lava-request-id"].startswith("req_")
    assert first.headers["x-lava-request-id"] != second.headers["x-lava-request-id"]


@pytest.mark.parametrize("status", [400, 413, 502, 500])
@pytest.mark.parametrize(
    "message", ["Bad request line: b'GET /<script>tg_sk_LEAK'", f"Connection refused: 10.0.0.7:443 tg_sk_LEAK{TAG}req_1"]
)
def test_mitmproxy_text_never_reaches_the_body(status, message):
    raw = json_error_response(status, message)
    assert b"tg_sk_LEAK" not in raw and b"<script>" not in raw and b"10.0.0.7" not in raw


@pytest.mark.parametrize(
    "message, stripped",
    [(f"Connection refused{TAG}req_1", "Connection refused"), ("Connection refused", "Connection refused"), ("", "")],
)
def test_strip_tag(message, stripped):
    assert strip_tag(message) == stripped


@pytest.mark.parametrize(
    "metadata, message, reworded",
    [
        ({}, "server closed connection", "server closed connection"),
        ({REQUEST_ID_KEY: "req_1"}, "server closed connection", f"server closed connection{TAG}req_1"),
        ({TIMEOUT_KEY: "first byte timed out", REQUEST_ID_KEY: "req_1"}, "server closed connection",
         f"first byte timed out{TAG}req_1"),
        ({TIMEOUT_KEY: "timed out", REQUEST_ID_KEY: "req_2"}, f"too large{TAG}req_1", f"too large{TAG}req_1"),
    ],
)
def test_protocol_error_message_says_why_and_carries_the_request_id(metadata, message, reworded):
    assert protocol_error_message(metadata, message) == reworded
