"""A fake AWS Bedrock runtime that speaks its real wire format and checks AWS signatures like AWS does.

Every request must carry a SigV4 signature made with the operator's credentials (OPERATOR): the mock
recomputes it with botocore over the request it received and answers 403 with AWS's error shape
(`x-amzn-errortype`, `{"message": ...}`) otherwise. It answers InvokeModel (Anthropic's Messages
format), InvokeModelWithResponseStream (AWS's binary event stream of `chunk` events, each the base64
of an Anthropic event), Converse and ConverseStream (its `metadata` event carries usage; a forced tool choice is answered with
a call of that tool). Streamed
frames are written split across chunk boundaries, and every byte sent is kept (`sent`) so a test can
check the client received exactly those.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.mock_provider import TOOL_ARGUMENTS

OPERATOR = Credentials("AKIAOPERATOR0EXAMPLE", "operator/secret/key/EXAMPLEKEY0123456789", "operator-session-token")
REGION = "us-east-1"

# What the mock reports, per API (tests compare the ledger with these).
INVOKE_USAGE = {"input_tokens": 21, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 5,
                "output_tokens": 11}
CONVERSE_USAGE = {"inputTokens": 31, "outputTokens": 17, "cacheReadInputTokens": 6, "cacheWriteInputTokens": 2,
                  "totalTokens": 31 + 17 + 6 + 2}
TEXT = ["Hello", " from", " Bedrock."]
TITAN_ANSWER = {"inputTextTokenCount": 12, "results": [{"tokenCount": 7, "outputText": "Hello from Titan.",
                                                        "completionReason": "FINISH"}]}
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})")


def event_frame(event_type: str, payload: dict[str, Any], message_type: str = "event") -> bytes:
    """One message of AWS's event stream: prelude (total and headers length, CRC), string headers, payload, CRC."""
    kind = ":event-type" if message_type == "event" else ":exception-type"
    headers = b""
    for name, value in ((kind, event_type), (":content-type", "application/json"), (":message-type", message_type)):
        raw = value.encode()
        headers += struct.pack("!B", len(name)) + name.encode() + struct.pack("!BH", 7, len(raw)) + raw
    body = json.dumps(payload, separators=(",", ":")).encode()
    prelude = struct.pack("!II", 12 + len(headers) + len(body) + 4, len(headers))
    prelude += struct.pack("!I", binascii.crc32(prelude))
    message = prelude + headers + body
    return message + struct.pack("!I", binascii.crc32(message))


def anthropic_chunk(event: dict[str, Any]) -> bytes:
    return event_frame("chunk", {"bytes": base64.b64encode(json.dumps(event).encode()).decode(), "p": "abcd"})


def verify_operator_signature(method: str, url: str, headers: dict[str, str], body: bytes) -> str | None:
    """None if the request is signed with OPERATOR's credentials; else why not (AWS's own wording, roughly)."""
    m = _AUTH.fullmatch(headers.get("authorization", ""))
    if m is None:
        return "Missing or malformed Authorization header"
    akid, _day, region, service, signed, signature = m.groups()
    if akid != OPERATOR.access_key or service != "bedrock" or region != REGION:
        return f"The security token included in the request is invalid ({akid}, {region}, {service})"
    if headers.get("x-amz-security-token") != OPERATOR.token or "x-amz-security-token" not in signed.split(";"):
        return "The security token is missing or not signed"
    aws = AWSRequest(method=method, url=url, data=body, headers={h: headers.get(h, "") for h in signed.split(";")})
    aws.context["timestamp"] = headers.get("x-amz-date", "")
    signer = SigV4Auth(OPERATOR, "bedrock", region)
    expected = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
    if not hmac.compare_digest(expected, signature):
        return "The request signature we calculated does not match the signature you provided."
    return None


TOOL_USE_ID = "tooluse_mock0123456789"


def forced_tool(body: bytes) -> str | None:
    """A Converse request whose toolChoice is `any` or names a tool: the tool the model must call (as Bedrock's
    models do then), else None."""
    try:
        config = json.loads(body).get("toolConfig") or {}
    except ValueError:
        return None
    choice, tools = config.get("toolChoice") or {}, config.get("tools") or []
    if "tool" in choice:
        return choice["tool"]["name"]
    return tools[0]["toolSpec"]["name"] if "any" in choice and tools else None


class MockBedrock:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.sent: list[bytes] = []  # each streamed answer's bytes, as written
        self._lock = threading.Lock()
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with mock._lock:
                    mock.requests.append({"path": self.path, "headers": headers, "body": body})
                why = verify_operator_signature("POST", f"http://{headers.get('host')}{self.path}", headers, body)
                if why is not None:
                    return self._json(403, {"message": why}, {"x-amzn-errortype": "InvalidSignatureException"})
                m = re.fullmatch(r"/model/([^/]+)/(invoke|invoke-with-response-stream|converse|converse-stream)",
                                 self.path)
                if m is None:
                    return self._json(404, {"message": "Unknown operation"}, {"x-amzn-errortype": "UnknownOperation"})
                op = m[2]
                if op == "invoke" and m[1].startswith("amazon.titan-text"):  # a model with its own format
                    return self._json(200, TITAN_ANSWER, {
                        "x-amzn-bedrock-input-token-count": str(TITAN_ANSWER["inputTextTokenCount"]),
                        "x-amzn-bedrock-output-token-count": str(TITAN_ANSWER["results"][0]["tokenCount"])})
                if op == "invoke":
                    return self._json(200, mock.anthropic_message(), {
                        "x-amzn-bedrock-input-token-count": str(INVOKE_USAGE["input_tokens"]),
                        "x-amzn-bedrock-output-token-count": str(INVOKE_USAGE["output_tokens"])})
                tool = forced_tool(body) if op.startswith("converse") else None
                if op == "converse":
                    return self._json(200, mock.converse_tool_answer(tool) if tool else mock.converse_answer())
                frames = (mock.invoke_frames() if op == "invoke-with-response-stream"
                          else mock.converse_tool_frames(tool) if tool else mock.converse_frames())
                self._stream(frames)

            def _json(self, status: int, payload: dict, extra: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"content-type": "application/json", "content-length": str(len(data)),
                                    "x-amzn-requestid": "mock-request-id", **(extra or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, frames: list[bytes]) -> None:
                data = b"".join(frames)
                with mock._lock:
                    mock.sent.append(data)
                self.send_response(200)
                self.send_header("content-type", "application/vnd.amazon.eventstream")
                self.send_header("x-amzn-requestid", "mock-request-id")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                step = 37  # not a frame size: frames arrive split across chunks
                for i in range(0, len(data), step):
                    piece = data[i:i + step]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def last(self) -> dict[str, Any]:
        with self._lock:
            return self.requests[-1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the answers -----------------------------------------------------------------------

    @staticmethod
    def anthropic_message() -> dict[str, Any]:
        return {"id": "msg_bdrk_01", "type": "message", "role": "assistant", "model": "claude-3-5-sonnet-20240620",
                "content": [{"type": "text", "text": "".join(TEXT)}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": dict(INVOKE_USAGE)}

    @staticmethod
    def invoke_frames() -> list[bytes]:
        start_usage = {k: v for k, v in INVOKE_USAGE.items() if k != "output_tokens"} | {"output_tokens": 1}
        events = [{"type": "message_start", "message": {**MockBedrock.anthropic_message(), "content": [],
                                                        "stop_reason": None, "usage": start_usage}},
                  {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}]
        events += [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
                   for t in TEXT]
        events += [{"type": "content_block_stop", "index": 0},
                   {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": INVOKE_USAGE["output_tokens"]}},
                   {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
                       "inputTokenCount": INVOKE_USAGE["input_tokens"],
                       "outputTokenCount": INVOKE_USAGE["output_tokens"], "invocationLatency": 321,
                       "firstByteLatency": 123}}]
        return [anthropic_chunk(e) for e in events]

    @staticmethod
    def converse_answer() -> dict[str, Any]:
        return {"output": {"message": {"role": "assistant", "content": [{"text": "".join(TEXT)}]}},
                "stopReason": "end_turn", "usage": dict(CONVERSE_USAGE), "metrics": {"latencyMs": 345}}

    @staticmethod
    def converse_tool_answer(tool: str) -> dict[str, Any]:
        use = {"toolUse": {"toolUseId": TOOL_USE_ID, "name": tool, "input": TOOL_ARGUMENTS}}
        return {"output": {"message": {"role": "assistant", "content": [use]}}, "stopReason": "tool_use",
                "usage": dict(CONVERSE_USAGE), "metrics": {"latencyMs": 345}}

    @staticmethod
    def converse_tool_frames(tool: str) -> list[bytes]:
        """ConverseStream's tool call: the block starts with the tool's id and name, its input comes as JSON text."""
        arguments = json.dumps(TOOL_ARGUMENTS)
        half = len(arguments) // 2
        return [event_frame("messageStart", {"role": "assistant", "p": "ab"}),
                event_frame("contentBlockStart", {"contentBlockIndex": 0, "start": {
                    "toolUse": {"toolUseId": TOOL_USE_ID, "name": tool}}, "p": "a"}),
                *(event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}},
                                                    "p": "abc"}) for piece in (arguments[:half], arguments[half:])),
                event_frame("contentBlockStop", {"contentBlockIndex": 0, "p": "a"}),
                event_frame("messageStop", {"stopReason": "tool_use", "p": "abcd"}),
                event_frame("metadata", {"usage": dict(CONVERSE_USAGE), "metrics": {"latencyMs": 345}, "p": "abc"})]

    @staticmethod
    def converse_frames() -> list[bytes]:
        frames = [event_frame("messageStart", {"role": "assistant", "p": "ab"})]
        frames += [event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}, "p": "abc"})
                   for t in TEXT]
        frames += [event_frame("contentBlockStop", {"contentBlockIndex": 0, "p": "a"}),
                   event_frame("messageStop", {"stopReason": "end_turn", "p": "abcd"}),
                   event_frame("metadata", {"usage": dict(CONVERSE_USAGE), "metrics": {"latencyMs": 345},
                                            "p": "abcdef"})]
        return frames
