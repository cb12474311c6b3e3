"""`GET /metrics`: the whole gateway's Prometheus metrics (text format), every worker's merged.

Each gateway process writes its own files into the directory named by PROMETHEUS_MULTIPROC_DIR
(addons.core.metrics_dir prepares it; addons.proxy.metrics_recorder writes them); prometheus_client's
MultiProcessCollector sums them here at each scrape, on a worker thread (it reads files).

Who may read it: any process on this machine without a key (the admin listener is loopback-only by
default, and a local Prometheus scrapes without credentials); from another machine (a listener opened
with --allow-open or TLS) only with an admin key, `Authorization: Bearer tg_sk_...`, which Prometheus
sends with `authorization: {credentials: tg_sk_...}` in its scrape config. The metrics are the whole
instance's, every account's, hence admin keys only. A loopback address is this machine's, so a reverse
proxy on this machine in front of the admin listener should itself restrict /metrics.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from addons.admin.auth import authenticate, require_admin
from addons.admin.web import error_response
from addons.core.errors import GatewayError
from addons.core.metrics_dir import DIR_ENV
from addons.host.listen_addresses import is_loopback


def exposition(directory: str) -> bytes:
    """The text every gateway process's files in `directory` add up to."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


def _check_caller(request: Request) -> None:
    """On a worker thread (a key is looked up in the ledger)."""
    if request.client is not None and is_loopback(request.client.host):
        return
    require_admin(authenticate(request, request.app.state.throttle), "reading /metrics from another machine")


async def serve(request: Request) -> Response:
    try:
        await run_in_threadpool(_check_caller, request)
        directory = os.environ.get(DIR_ENV)
        if not directory or not os.path.isdir(directory):
            error = GatewayError("metrics_unavailable", f"no metrics directory: {DIR_ENV} is not set to one "
                                 "(the admin process the gateway starts is given the gateway's)")
            error.status = 503
            raise error
        body = await run_in_threadpool(exposition, directory)
    except GatewayError as e:
        return error_response(e)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def routes() -> list[BaseRoute]:
    return [Route("/metrics", serve, methods=["GET"], name="metrics")]
