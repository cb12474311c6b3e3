"""A local fake of the media APIs, speaking each provider's real wire format, for tests/test_media_*.py.

One threaded HTTP/1.1 server answers every provider by path (the gateway's `upstream` of each):

OpenAI      POST /v1/images/generations (JSON), /v1/images/edits (multipart): gpt-image-* answer with
            token usage, dall-e-* with none; `n` images of base64 PNG.
            POST /v1/audio/transcriptions|translations (multipart): whisper-1 json (usage {type: duration}),
            verbose_json (duration) or text; gpt-4o-*-transcribe json with token usage.
            POST /v1/audio/speech: chunked audio; the first chunk, then (held until `release_speech` is set,
            at most 5 s) the rest; stream_format "sse": audio deltas and `speech.audio.done` with usage.
            response_format mp3 (the default: SPEECH_CHUNKS constant 128 kbit/s frames), wav (a streamed
            header, whose sizes say 0xFFFFFFFF) and pcm (24 kHz 16-bit mono, no header), SPEECH_SECONDS of
            audio each, opus (Ogg pages).
Gemini      POST /{version}/models/{model}:generateContent: an inline PNG and usageMetadata whose
            candidatesTokensDetails count the image tokens (GEMINI_IMAGE_USAGE).
Cohere      POST /v2/rerank: meta.billed_units.search_units (one per 100 documents, as Cohere counts).
Voyage/Jina POST /v1/rerank, /v1/embeddings: usage.total_tokens; a model named jina-* answers Jina's shape.
ElevenLabs  POST /v1/text-to-speech/{voice}[/stream]: chunked audio/mpeg, `character-cost` header.
fal         POST /{owner}/{model}... (fal.run): images with width and height; with `x-mock-queue: 1` (as
            queue.fal.run) a submit answer, whose result is GET /{model}/requests/{id}.
Replicate   POST /v1/models/{owner}/{name}/predictions with `Prefer: wait`: a succeeded prediction with
            metrics.predict_time; without it, a prediction still starting.

Every request is recorded (`requests`: method, path, headers, body length) so tests can check the
credential the provider saw. Usage numbers are the module constants below.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
import uuid
import wave
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

IMAGE_USAGE = {"input_tokens": 50, "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
               "output_tokens": 4160, "total_tokens": 4210}
IMAGE_EDIT_USAGE = {"input_tokens": 323, "input_tokens_details": {"text_tokens": 65, "image_tokens": 258},
                    "output_tokens": 4160, "total_tokens": 4483}
TRANSCRIBE_USAGE = {"type": "tokens", "input_tokens": 114, "input_token_details": {"text_tokens": 0, "audio_tokens": 114},
                    "output_tokens": 45, "total_tokens": 159}
SPEECH_USAGE = {"input_tokens": 14, "output_tokens": 101, "total_tokens": 115}
GEMINI_IMAGE_USAGE = {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302,
                      "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 12}],
                      "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}]}
RETRIEVAL_TOKENS = 37
REPLICATE_PREDICT_TIME = 2.613
SPEECH_CHUNKS = 4
CHUNK = b"\xff\xfb\x90\x64" + bytes(2044)  # an MP3-looking 2 KiB piece of audio: 128 kbit/s
SPEECH_SECONDS = {"wav": 1.5, "pcm": 1.25}  # of the audio answered in these formats
# a WAV as a streaming encoder writes it: 24 kHz 16-bit mono, the RIFF and data sizes unknown (0xFFFFFFFF)
WAV_STREAM_HEADER = (b"RIFF\xff\xff\xff\xffWAVEfmt " + (16).to_bytes(4, "little") + (1).to_bytes(2, "little")
                     + (1).to_bytes(2, "little") + (24_000).to_bytes(4, "little") + (48_000).to_bytes(4, "little")
                     + (2).to_bytes(2, "little") + (16).to_bytes(2, "little") + b"data\xff\xff\xff\xff")
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(64)).decode()
FAL_SIZES = {"square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
             "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576)}


def wav_seconds(data: bytes) -> float:
    """The length of a WAV file, as the provider would measure it (Python's own wave module)."""
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


def make_wav(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(2 * round(seconds * rate)))
    return out.getvalue()


class Recorded:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes):
        self.method, self.path, self.headers, self.body_length = method, path, headers, len(body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        self._handle(self.rfile.read(int(self.headers.get("content-length") or 0)))

    def _handle(self, body: bytes) -> None:
        path = self.path.partition("?")[0]
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.mock.requests.append(Recorded(self.command, path, headers, body))
        try:
            self._route(path, headers, body)
        except BrokenPipeError:
            pass

    def _route(self, path: str, headers: dict[str, str], body: bytes) -> None:
        if path.endswith("/images/generations"):
            return self._images(json.loads(body), IMAGE_USAGE)
        if path.endswith("/images/edits"):
            return self._images(_form(headers, body), IMAGE_EDIT_USAGE)
        if path.endswith(("/audio/transcriptions", "/audio/translations")):
            return self._transcription(_form(headers, body))
        if path.endswith("/audio/speech"):
            return self._speech(json.loads(body))
        if path.endswith(":generateContent"):
            model = path.rpartition("/models/")[2].partition(":")[0]
            return self._json({"candidates": [{"content": {"role": "model", "parts": [
                {"inlineData": {"mimeType": "image/png", "data": PNG}}]}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": GEMINI_IMAGE_USAGE, "modelVersion": model, "responseId": "mock-1"})
        if path == "/v2/rerank":
            req = json.loads(body)
            return self._json({"id": str(uuid.uuid4()), "results": [{"index": 0, "relevance_score": 0.93}],
                               "meta": {"api_version": {"version": "2"},
                                        "billed_units": {"search_units": math.ceil(len(req["documents"]) / 100)}}})
        if path in ("/v1/rerank", "/v1/embeddings"):
            return self._retrieval(path, json.loads(body))
        if path.startswith("/v1/text-to-speech/"):
            return self._audio([CHUNK] * SPEECH_CHUNKS, "audio/mpeg",
                               {"character-cost": str(len(json.loads(body)["text"])), "request-id": "el_1"}, gate=False)
        if path.startswith("/v1/") and path.endswith("/predictions"):
            return self._prediction(path, headers, json.loads(body))
        if "/requests/" in path and self.command == "GET":
            model = path.strip("/").partition("/requests/")[0]
            return self._json(_fal_result(self.server.mock.fal_queue[path.rpartition("/")[2]], model))
        if self.command == "POST" and path.count("/") >= 2:
            req = json.loads(body)
            model = path.strip("/")
            if headers.get("x-mock-queue"):
                request_id = str(uuid.uuid4())
                self.server.mock.fal_queue[request_id] = req
                base = f"https://queue.fal.run/{model}/requests/{request_id}"
                return self._json({"status": "IN_QUEUE", "request_id": request_id, "response_url": base,
                                   "status_url": base + "/status", "cancel_url": base + "/cancel",
                                   "queue_position": 0})
            return self._json(_fal_result(req, model))
        self._json({"error": {"message": f"no route {path}", "type": "invalid_request_error"}}, 404)

    # -- answers --------------------------------------------------------------------------

    def _images(self, req: dict[str, Any], usage: dict[str, Any]) -> None:
        model = req.get("model") or "dall-e-2"
        answer: dict[str, Any] = {"created": int(time.time()), "data": [{"b64_json": PNG}] * int(req.get("n") or 1)}
        if model.startswith("gpt-image"):
            answer["usage"] = usage
        else:
            answer["data"] = [{"b64_json": PNG, "revised_prompt": req.get("prompt")}] * int(req.get("n") or 1)
        self._json(answer)

    def _transcription(self, form: dict[str, Any]) -> None:
        model, fmt, audio = form["model"], form.get("response_format", "json"), form["file"]
        text = "Hello from the media mock."
        if model.startswith("gpt-4o"):
            return self._json({"text": text, "usage": TRANSCRIBE_USAGE})
        seconds = wav_seconds(audio)
        if fmt == "verbose_json":
            return self._json({"task": "transcribe", "language": "english", "duration": seconds, "text": text,
                               "segments": [{"id": 0, "start": 0.0, "end": seconds, "text": text}]})
        if fmt == "text":
            return self._send(200, (text + "\n").encode(), "text/plain; charset=utf-8")
        self._json({"text": text, "usage": {"type": "duration", "seconds": math.ceil(seconds)}})

    def _speech(self, req: dict[str, Any]) -> None:
        if req.get("stream_format") == "sse":
            events = [{"type": "speech.audio.delta", "audio": base64.b64encode(CHUNK).decode()}] * SPEECH_CHUNKS
            events.append({"type": "speech.audio.done", "usage": SPEECH_USAGE})
            return self._audio([f"data: {json.dumps(e)}\n\n".encode() for e in events], "text/event-stream", {},
                               gate=False)
        fmt = req.get("response_format", "mp3")
        if fmt == "wav":
            data = WAV_STREAM_HEADER + bytes(round(SPEECH_SECONDS["wav"] * 48_000))
        elif fmt == "pcm":
            data = bytes(round(SPEECH_SECONDS["pcm"] * 48_000))
        elif fmt == "opus":
            data = b"OggS" + bytes(6000)
        else:
            return self._audio([CHUNK] * SPEECH_CHUNKS, "audio/mpeg", {}, gate=True)
        pieces = [data[i:i + 4096] for i in range(0, len(data), 4096)]
        self._audio(pieces, {"wav": "audio/wav", "pcm": "audio/pcm", "opus": "audio/opus"}[fmt], {}, gate=True)

    def _retrieval(self, path: str, req: dict[str, Any]) -> None:
        model = req["model"]
        if path == "/v1/rerank":
            scores = [{"index": i, "relevance_score": 0.5} for i in range(len(req["documents"]))]
            if model.startswith("jina"):
                return self._json({"model": model, "usage": {"total_tokens": RETRIEVAL_TOKENS}, "results": scores})
            return self._json({"object": "list", "data": scores, "model": model,
                               "usage": {"total_tokens": RETRIEVAL_TOKENS}})
        inputs = req["input"] if isinstance(req["input"], list) else [req["input"]]
        data = [{"object": "embedding", "embedding": [0.1, 0.2], "index": i} for i in range(len(inputs))]
        usage = {"total_tokens": RETRIEVAL_TOKENS}
        if model.startswith("jina"):
            usage["prompt_tokens"] = RETRIEVAL_TOKENS
        self._json({"object": "list", "data": data, "model": model, "usage": usage})

    def _prediction(self, path: str, headers: dict[str, str], req: dict[str, Any]) -> None:
        parts = path.strip("/").split("/")
        model = f"{parts[2]}/{parts[3]}" if len(parts) == 5 else req.get("version", "").partition(":")[0]
        done = "wait" in headers.get("prefer", "")
        answer = {"id": "rp_" + uuid.uuid4().hex[:10], "model": model, "version": "v1", "input": req.get("input"),
                  "logs": "", "error": None, "status": "succeeded" if done else "starting",
                  "output": ["https://replicate.delivery/out-0.webp"] if done else None,
                  "metrics": {"image_count": 1, "predict_time": REPLICATE_PREDICT_TIME, "total_time": 2.7} if done else {},
                  "urls": {"get": "https://api.replicate.com/v1/predictions/x"}}
        self._json(answer, 201)

    # -- the wire -------------------------------------------------------------------------

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _audio(self, chunks: list[bytes], content_type: str, headers: dict[str, str], gate: bool) -> None:
        """Chunked, each chunk flushed; with `gate`, everything after the first waits for the test's release."""
        mock = self.server.mock
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        for i, chunk in enumerate(chunks):
            if i == 1 and gate:
                mock.release_speech.wait(5)
                mock.rest_sent.set()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _form(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """A multipart form's fields (str) and files (bytes), parsed with the standard library."""
    message = BytesParser(policy=HTTP).parsebytes(b"content-type: " + headers["content-type"].encode() + b"\r\n\r\n" + body)
    form: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        form[name] = payload if part.get_filename() else payload.decode()
    return form


def _fal_result(req: dict[str, Any], model: str) -> dict[str, Any]:
    size = req.get("image_size", "landscape_4_3")
    width, height = (size["width"], size["height"]) if isinstance(size, dict) else FAL_SIZES[size]
    images = [{"url": f"https://v3.fal.media/files/mock/{i}.jpeg", "width": width, "height": height,
               "content_type": "image/jpeg"} for i in range(int(req.get("num_images", 1)))]
    return {"images": images, "timings": {"inference": 1.2}, "seed": 42,
            "has_nsfw_concepts": [False] * len(images), "prompt": req.get("prompt", "")}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mock: MediaMock


class MediaMock:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.fal_queue: dict[str, dict[str, Any]] = {}
        self.release_speech = threading.Event()
        self.rest_sent = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.mock = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    def __enter__(self) -> MediaMock:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release_speech.set()
        self._server.shutdown()
        self._server.server_close()
