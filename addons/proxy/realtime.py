"""OpenAI Realtime sessions through the gateway: frames pass as they come, each response is charged as its
own request, and the session's hold is renewed response by response.

The upgrade request is admitted like any request (the Gateway's `request` hook): authenticated (a Tollgate
key in Authorization, or in the `openai-insecure-api-key.<key>` subprotocol browsers send, taken out here),
priced, and held for one response's worst case. Once the provider answers 101, the session is watched here:

- every server event passes on unchanged; `session.created`/`session.updated` tell the model and output cap,
  output deltas are counted (for a response cut before its end), `response.done` carries the usage;
- at each `response.done` the response becomes a ledger row of its own (its own request id, the session's
  id in `session_id`), and the next response is held (`Cashier.renew`, once that row is committed). When it
  cannot be held (a balance, spend limit or rate limit), the client gets an OpenAI-shaped `error` event and
  the session is closed on both sides, with close code 4000 + the HTTP status of the refusal (4402, 4429)
  and the error's code as the reason; whatever either side sends after that is dropped;
- what the client adds to the conversation (appended audio, items, a response's own input) is held before it
  is passed on: the waiting hold, or while a response runs that response's, is topped up (`Cashier.top_up`, a
  few seconds of audio ahead), so a response never reads input no hold covered. A top-up that cannot be held
  drops the event and closes the session as above;
- when the session ends, however it ends, a response still running is recorded from what it carried
  (flagged "estimated"), and a hold no response used is given back.

Hooks await only the hold store and the ledger writer's commit (a future), never I/O on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mitmproxy import ctx, http
from mitmproxy.proxy.layers.websocket import WebSocketMessageInjected
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from addons.billing.cashier import Cashier, WorstCost
from addons.core.errors import GatewayError
from addons.proxy import metrics_recorder, mitmproxy_internals
from addons.proxy.error_pages import new_request_id
from addons.proxy.usage_record import Pending
from addons.usage.json_fields import CHARS_PER_TOKEN, as_dict, as_str, tokens
from addons.usage.realtime import (
    INPUT_AUDIO_TOKENS_PER_SECOND,
    RealtimeReader,
    ResponseReader,
    input_chars,
    server_event,
)

log = logging.getLogger(__name__)

SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."
_OUTPUT_DELTAS = frozenset({"response.output_text.delta", "response.text.delta", "response.output_audio.delta",
                            "response.audio.delta", "response.output_audio_transcript.delta",
                            "response.audio_transcript.delta"})

# input a top-up holds at least (five seconds of the client's audio): one top-up per few seconds of speech
TOP_UP_CHARS = 5 * INPUT_AUDIO_TOKENS_PER_SECOND * CHARS_PER_TOKEN

Record = Callable[[http.HTTPFlow, Pending, int | None, str | None], None]


def take_subprotocol_key(headers: http.Headers) -> str | None:
    """The key a browser puts in `Sec-WebSocket-Protocol` (`openai-insecure-api-key.<key>`), removed from the
    header (the other subprotocols stay; none left, no header). None where there is none."""
    offered = [p.strip() for p in headers.get_all("sec-websocket-protocol") for p in p.split(",") if p.strip()]
    key = next((p[len(SUBPROTOCOL_KEY_PREFIX):] for p in offered if p.startswith(SUBPROTOCOL_KEY_PREFIX)), None)
    if key is None:
        return None
    kept = [p for p in offered if not p.startswith(SUBPROTOCOL_KEY_PREFIX)]
    if kept:
        headers["sec-websocket-protocol"] = ", ".join(kept)
    else:
        del headers["sec-websocket-protocol"]
    return key


def error_event(error: GatewayError) -> bytes:
    """The refusal as the Realtime API words its errors: {"type": "error", "error": {...}}."""
    return json.dumps({
        "type": "error",
        "event_id": f"event_tollgate_{secrets.token_hex(8)}",
        "error": {"type": error.type, "code": error.code, "message": error.message, "param": None,
                  "event_id": None},
    }).encode()


def close_code(error: GatewayError) -> int:
    """4000 + the refusal's HTTP status (4402 payment required, 4429 rate limited): private-use codes."""
    return 4000 + error.status if 400 <= error.status < 1000 else 1011


@dataclass(slots=True)
class Response:
    request_id: str
    started: float
    reader: ResponseReader


@dataclass(slots=True)
class Session:
    """One session: the upgrade's Pending (provider, plan, metadata) and the responses under way."""

    upgrade: Pending
    session_id: str
    held: str | None  # the request id the next response is held under (taken at the upgrade, then renewed)
    held_since: float = field(default_factory=time.monotonic)
    responses: dict[str, Response] = field(default_factory=dict)  # response id -> its request
    refusal: GatewayError | None = None  # set: the error event is on its way, then the close
    ended: bool = False
    holds: bool = True  # whether its requests hold anything (a balance, cap or limit): else no top-ups
    topped: str | None = None  # the request id top-ups last held more under
    ahead: int = 0  # input (characters) that request's top-ups hold beyond what the client has added

    @property
    def reader(self) -> RealtimeReader:
        return self.upgrade.reader  # type: ignore[return-value]


class RealtimeSessions:
    """The Gateway's Realtime sessions, by flow id. `record` is the Gateway's (journal, then ledger writer);
    `cost_of` prices a usage as the session's worst case."""

    def __init__(self, cashier: Callable[[], Cashier], record: Record,
                 cost_of: Callable[[Pending], WorstCost], keep_messages: Callable[[], bool]):
        self._cashier = cashier
        self._record = record
        self._cost_of = cost_of
        self._keep_messages = keep_messages
        self.sessions: dict[str, Session] = {}

    def start(self, flow: http.HTTPFlow, upgrade: Pending) -> None:
        """The provider accepted the upgrade: the session's hold, taken at admission, waits for its first response."""
        self.sessions[flow.id] = Session(upgrade, f"rts_{secrets.token_hex(12)}", upgrade.request_id,
                                         holds=upgrade.plan.holds)

    async def message(self, flow: http.HTTPFlow) -> None:
        session = self.sessions.get(flow.id)
        if session is None or flow.websocket is None:
            return
        message = flow.websocket.messages[-1]
        try:
            if session.refusal is not None:
                self._while_closing(flow, session, message)
            elif not message.is_text:
                pass
            elif not message.from_client:
                if (event := server_event(message.content)) is not None:
                    await self._server_event(flow, session, event)
            elif session.holds and (event := server_event(message.content)) is not None:
                await self._client_event(flow, session, message, event)
        except Exception:  # a metering bug must not cut a session: log it, the frames still pass
            log.exception("tollgate: metering failed on a Realtime event of session %s", session.session_id)
        finally:
            if not self._keep_messages():
                del flow.websocket.messages[:-1]  # a long audio session would keep every frame otherwise

    async def _server_event(self, flow: http.HTTPFlow, session: Session, event: dict) -> None:
        kind = event["type"]
        if kind in _OUTPUT_DELTAS:
            if (response := session.responses.get(as_str(event.get("response_id")) or "")) is not None:
                response.reader.delta(event)
        elif kind in ("session.created", "session.updated"):
            session.reader.session_configured(as_dict(event.get("session")))
            if kind == "session.created" and (provider_id := as_str(as_dict(event.get("session")).get("id"))):
                session.session_id = provider_id[:64]
        elif kind == "response.created":
            await self._response_started(flow, session, as_dict(event.get("response")))
        elif kind == "response.done":
            await self._response_done(flow, session, as_dict(event.get("response")))

    async def _client_event(self, flow: http.HTTPFlow, session: Session, message: WebSocketMessage,
                            event: dict) -> None:
        """Input the client adds is held before it passes: the waiting hold is topped up, or, while a response
        runs, that response's (its commit releases it, and the next hold counts the input again)."""
        reader = session.reader
        if not (chars := input_chars(event, reader.input_audio_bytes_per_second)):
            return
        running = next(reversed(session.responses.values()), None)
        target = session.held or (running.request_id if running is not None else None)
        if target is not None:
            if session.topped != target:
                session.topped, session.ahead = target, 0
            if chars > session.ahead:
                more = max(chars - session.ahead, TOP_UP_CHARS)
                try:
                    await self._cashier().top_up(target, session.upgrade.plan, reader,
                                                 self._cost_of(session.upgrade), tokens(more))
                except Exception as e:  # fail closed: input no hold covers does not reach the provider
                    message.drop()
                    if not isinstance(e, GatewayError):
                        log.exception("tollgate: topping up the hold of Realtime session %s failed",
                                      session.session_id)
                        e = GatewayError("internal_error", "the gateway failed to hold the session's input")
                    self._refuse(flow, session, e)
                    return
                session.ahead += more
            session.ahead -= chars
        if session.held is not None:  # the next response reads it
            reader.prompt_chars += chars
        else:  # the one after the response running now
            reader.pending_chars += chars

    async def _response_started(self, flow: http.HTTPFlow, session: Session, response: dict) -> None:
        response_id = as_str(response.get("id")) or f"anonymous-{len(session.responses)}"
        cashier = self._cashier()
        if session.held is not None and time.monotonic() - session.held_since > cashier.settings.hold_ttl_seconds / 2:
            # an idle session's hold would expire under the response: hold afresh, the old one given back first
            held, session.held = session.held, None
            await asyncio.shield(cashier.release(held))
        if session.held is None:  # a response beside one under way (out of band), or after a long pause
            request_id = new_request_id()
            if not await self._hold(flow, session, request_id, finished_id=None):
                return
            session.held, session.held_since = request_id, time.monotonic()
        cap = response.get("max_output_tokens")
        reader = session.reader.response(cap if isinstance(cap, int) and not isinstance(cap, bool) else None)
        reader.response_id = response_id
        session.responses[response_id] = Response(session.held, time.time(), reader)
        session.held = None

    async def _response_done(self, flow: http.HTTPFlow, session: Session, response_body: dict) -> None:
        response_id = as_str(response_body.get("id")) or ""
        response = session.responses.pop(response_id, None)
        if response is None:  # no response.created seen for it: it ran under the session's hold, if any
            response = Response(session.held or new_request_id(), time.time(), session.reader.response(None))
            session.held = None
        response.reader.done(response_body)
        status = response.reader.status
        self._record_response(flow, session, response, error=None if status in (None, "completed") else
                              f"response {status}")
        session.reader.context_after(response.reader.result().usage)
        if session.held is None and not session.responses:
            request_id = new_request_id()
            if await self._hold(flow, session, request_id, finished_id=response.request_id):
                session.held, session.held_since = request_id, time.monotonic()

    async def _hold(self, flow: http.HTTPFlow, session: Session, request_id: str, finished_id: str | None) -> bool:
        """Hold the session's next response; on a refusal, send the error event and close the session."""
        upgrade = session.upgrade
        cashier = self._cashier()
        try:
            if finished_id is None:
                await cashier.admit(request_id, upgrade.plan, session.reader, self._cost_of(upgrade))
            else:
                await cashier.renew(finished_id, request_id, upgrade.plan, session.reader, self._cost_of(upgrade))
        except GatewayError as e:
            self._refuse(flow, session, e)
            return False
        except Exception:  # fail closed: a session whose next response cannot be held does not go on
            log.exception("tollgate: holding the next response of Realtime session %s failed", session.session_id)
            self._refuse(flow, session, GatewayError("internal_error", "the gateway failed to hold the next response"))
            return False
        return True

    def _refuse(self, flow: http.HTTPFlow, session: Session, error: GatewayError) -> None:
        """The error event goes to the client first; its own websocket_message hook then closes the session."""
        session.refusal = error
        metrics_recorder.refused(error.status, error.code)
        log.info("tollgate: Realtime session %s closed: %s", session.session_id, error.code)
        proxyserver = ctx.master.addons.get("proxyserver")
        try:
            proxyserver.inject_event(WebSocketMessageInjected(flow, WebSocketMessage(Opcode.TEXT, False,
                                                                                     error_event(error))))
        except ValueError:  # the connection is gone already: websocket_end follows, nothing to tell
            pass

    def _while_closing(self, flow: http.HTTPFlow, session: Session, message: WebSocketMessage) -> None:
        """After a refusal nothing more passes, but the error event, after which the session closes."""
        if not (message.injected and not message.from_client):
            message.drop()
            return
        error = session.refusal
        proxyserver = ctx.master.addons.get("proxyserver")
        if not mitmproxy_internals.close_websocket(proxyserver, flow, close_code(error), error.code):
            # no layer to close through (a mitmproxy that moved it): drop the provider's connection instead,
            # which the client sees as an abnormal closure (flow.kill() does nothing to an open WebSocket)
            log.error("tollgate: cannot close Realtime session %s with a close frame; dropping it",
                      session.session_id)
            mitmproxy_internals.cancel_server_task(proxyserver, flow.client_conn, flow.server_conn, error.code)

    def end(self, flow: http.HTTPFlow) -> None:
        """The session ended (either side closed, the connection dropped, or the gateway cut it): responses
        still running are recorded from what they carried, an unused hold is given back."""
        session = self.sessions.pop(flow.id, None)
        if session is None or session.ended:
            return
        session.ended = True
        cashier = self._cashier()
        for response in session.responses.values():
            if response.reader.result().source == "none":
                cashier.release(response.request_id)
            else:
                self._record_response(flow, session, response, error="session closed before response.done")
        if session.held is not None:
            cashier.release(session.held)

    def _record_response(self, flow: http.HTTPFlow, session: Session, response: Response, error: str | None) -> None:
        state = replace(session.upgrade, request_id=response.request_id, started=response.started,
                        reader=response.reader, streamed=True, session_id=session.session_id)
        self._record(flow, state, 200 if error is None or response.reader.status else None, error)

