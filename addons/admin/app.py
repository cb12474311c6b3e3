"""The admin process's ASGI app: every resource's endpoints under /v1, plus the dashboard, /metrics,
/openapi.json and /docs on the admin listener.

Each API call reads its body on the event loop, then authenticates and runs its handler on a worker
thread, where the ledger is read and written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from addons.admin import resources
from addons.admin.auth import FailedAuthThrottle, authenticate
from addons.admin.endpoints import Call, Endpoint
from addons.admin.web import MethodNotAllowed, error_response, json_response, read_json
from addons.core.errors import GatewayError, NotFound
from addons.services.errors import Conflict
from addons.services.idempotency import fingerprint, run_once

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True, slots=True)
class AdminOptions:
    auth_fail_limit: int = 20
    auth_fail_window_s: float = 60.0


def _api_route(endpoint: Endpoint, throttle: FailedAuthThrottle) -> Route:
    async def serve(request: Request) -> Response:
        try:
            body = await read_json(request) if request.method in WRITES else {}
            status, answer = await run_in_threadpool(_handle, endpoint, request, body, throttle)
        except GatewayError as e:
            return error_response(e)
        except Exception:
            log.exception("tollgate admin: internal error on %s %s", request.method, endpoint.path)
            return error_response(GatewayError("internal_error", "the admin API failed to handle this request"))
        return json_response(answer, status)

    return Route(API_PREFIX + endpoint.path, serve, methods=[endpoint.method], name=endpoint.handler.__name__)


def _handle(endpoint: Endpoint, request: Request, body: dict, throttle: FailedAuthThrottle) -> tuple[int, dict]:
    call = Call(request, authenticate(request, throttle), body, request.path_params)
    answer = _answer(endpoint, call)
    for callback in call.after_commit:
        callback()
    return answer


def _answer(endpoint: Endpoint, call: Call) -> tuple[int, dict]:
    request, body = call.request, call.body

    def work() -> tuple[int, dict]:
        answer = endpoint.handler(call)
        return answer if isinstance(answer, tuple) else (endpoint.status, answer)

    key = request.headers.get("idempotency-key")
    if not endpoint.idempotent or key is None:
        return work()
    request_hash = fingerprint(request.method, request.url.path, body)
    if endpoint.secret is None:
        return run_once(call.principal.account_id, key, request_hash, work)
    return _created_once(call.principal.account_id, key, request_hash, work, *endpoint.secret)


def _created_once(account_id: str, key: str, request_hash: str, work, secret_field: str,
                  id_field: str) -> tuple[int, dict]:
    """An idempotent creation whose answer carries a secret, which is never stored in clear: the idempotency
    store keeps the answer without `secret_field`, and a repeat of a creation that went through is 409
    `secret_shown_once` naming what it created (a client that lost the secret deletes that object)."""
    shown: list[str] = []

    def once() -> tuple[int, dict]:
        status, answer = work()
        shown.append(answer.pop(secret_field))
        return status, answer

    status, answer = run_once(account_id, key, request_hash, once)
    if not shown:
        raise Conflict("secret_shown_once", f"the first request with this Idempotency-Key created {answer[id_field]}; "
                                            "its secret was shown once, in that answer. If it was lost, delete "
                                            f"{answer[id_field]} and create another")
    return status, {**answer, secret_field: shown[0]}


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(NotFound("not_found", f"no route {request.method} {request.url.path}"))


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(MethodNotAllowed("method_not_allowed", f"{request.method} is not allowed on {request.url.path}"))


def api_routes(throttle: FailedAuthThrottle) -> list[BaseRoute]:
    return [_api_route(endpoint, throttle) for endpoint in resources.ENDPOINTS]


def build_app(options: AdminOptions = AdminOptions(), *, extra_routes: list[BaseRoute] = ()) -> Starlette:
    """`extra_routes`: the admin listener's own pages (dashboard, metrics, OpenAPI) beside the API."""
    throttle = FailedAuthThrottle(options.auth_fail_limit, options.auth_fail_window_s)
    app = Starlette(routes=[*extra_routes, *api_routes(throttle)],
                    exception_handlers={404: _not_found, 405: _method_not_allowed})
    app.state.throttle = throttle
    return app
