"""An OpenAI-compatible provider that speaks only HTTP/2 over TLS (ALPN h2), as api.openai.com does.

Chat completions only, plain and streamed, in OpenAI's wire format with its usage block (a stream
sends the usage chunk when `stream_options.include_usage` asks for it). It counts the connections it
accepted and the requests per connection, so a test can see HTTP/2 multiplexing and reuse.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from pathlib import Path

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
WORDS = ["Hello", " over", " h2"]


def _completion(model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-h2", "object": "chat.completion", "created": 1764201600, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)},
                     "finish_reason": "stop"}],
        "usage": USAGE,
    }).encode()


def _events(model: str, include_usage: bool) -> list[bytes]:
    def chunk(delta: dict, finish: str | None, usage=None) -> bytes:
        body = {"id": "chatcmpl-h2", "object": "chat.completion.chunk", "created": 1764201600, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if delta is not None else []}
        if include_usage:
            body["usage"] = usage
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": word}, None) for word in WORDS]
    events.append(chunk({}, "stop"))
    if include_usage:
        events.append(chunk(None, None, USAGE))
    return events + [b"data: [DONE]\n\n"]


class H2Provider:
    def __init__(self, cert: Path, key: Path):
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(cert, key)
        self._tls.set_alpn_protocols(["h2"])
        self.connections: list[str | None] = []  # the ALPN protocol each accepted connection negotiated
        self.requests: list[tuple[int, dict]] = []  # (connection number, request JSON)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0

    def start(self) -> H2Provider:
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(self.connections)
        self.connections.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())
        conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        bodies: dict[int, bytes] = {}
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, RequestReceived):
                        bodies[event.stream_id] = b""
                    elif isinstance(event, DataReceived):
                        bodies[event.stream_id] += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, StreamEnded):
                        request = json.loads(bodies.pop(event.stream_id) or b"{}")
                        self.requests.append((number, request))
                        self._respond(conn, event.stream_id, request)
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _respond(conn: H2Connection, stream_id: int, request: dict) -> None:
        model = request.get("model", "gpt-4o-mini")
        if request.get("stream"):
            include_usage = (request.get("stream_options") or {}).get("include_usage") is True
            conn.send_headers(stream_id, [(":status", "200"), ("content-type", "text/event-stream")])
            for event in _events(model, include_usage):
                conn.send_data(stream_id, event)
            conn.end_stream(stream_id)
        else:
            body = _completion(model)
            conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/json"),
                                          ("content-length", str(len(body)))])
            conn.send_data(stream_id, body, end_stream=True)
