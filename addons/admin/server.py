"""`python -m addons.admin`: the admin listener (the API, the dashboard, /metrics, /openapi.json, /docs) on uvicorn.

Started and restarted by the gateway (addons/runtime/admin_process.py), which passes `/v1/*` requests
addressed to itself on to this listener. Like the proxy, it refuses to listen beyond loopback unless
told to: `--allow-open` (tollgate_allow_open_admin) or a TLS certificate and key.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

import uvicorn

from addons.admin import dashboard, metrics, openapi
from addons.admin.app import AdminOptions, build_app
from addons.core.settings import load_settings
from addons.host.listen_addresses import open_admin_refusal
from addons.services.autopay import start_autopay
from addons.services.database import open_ledger

PROG = "tollgate-admin"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="Tollgate's admin listener: REST API, dashboard, metrics.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8082, help="port to listen on (default 8082)")
    parser.add_argument("--database-url", default="", help="ledger URL (default: the settings' database_url)")
    parser.add_argument("--allow-open", action="store_true", help="allow a non-loopback address without TLS")
    parser.add_argument("--certfile", help="TLS certificate (PEM) for the listener")
    parser.add_argument("--keyfile", help="TLS private key (PEM) for the certificate")
    parser.add_argument("--auth-fail-limit", type=int, default=20,
                        help="failed authentications per address and window before 429 (0: off)")
    parser.add_argument("--auth-fail-window-s", type=float, default=60.0, help="the window, in seconds")
    parser.add_argument("--ready-fd", type=int, help="write a byte to this file descriptor once listening")
    return parser.parse_args(argv)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready_fd: int | None):
        super().__init__(config)
        self.ready_fd = ready_fd

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.ready_fd is not None:
            os.write(self.ready_fd, b"1")
            os.close(self.ready_fd)
            self.ready_fd = None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if why := open_admin_refusal(args.host, args.allow_open, args.certfile, args.keyfile):
        print(f"{PROG}: {why}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s")
    open_ledger(args.database_url or load_settings().database_url)
    options = AdminOptions(args.auth_fail_limit, args.auth_fail_window_s)
    app = build_app(options, extra_routes=[*openapi.routes(), *dashboard.routes(), *metrics.routes()])
    app.state.autopay = start_autopay()  # reported requests charge customers here, as the proxy does
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            ssl_certfile=args.certfile, ssl_keyfile=args.keyfile, lifespan="off",
                            server_header=False)
    server = _Server(config, args.ready_fd)
    try:
        asyncio.run(server.serve())
    finally:
        app.state.autopay.close()
    return 0 if server.started else 1
