"""Pass the REST API on to the admin process: `/v1/*` requests addressed to the gateway itself (all but the
forward and rewrite endpoints) go to the admin listener, so one base URL serves Lava's SDK both the gateway and the API.

The gateway does none of the API's work: it rewrites the request's destination to the admin listener
(127.0.0.1:tollgate_admin_port) and mitmproxy forwards it as any other request. It tags the request with
the instance's pass-through secret (addons/core/process_env.py) so the admin process leaves throttling
failed authentications to the proxy's AuthThrottle, which sees the client's own address; the request id
it sets lets that throttle count the admin's 401s. The tag replaces any copy the client sent.

The admin listener's options live here, the one place both the proxy and the process that starts the
admin server (addons/runtime/admin_process.py) read them.
"""

from __future__ import annotations

from mitmproxy import ctx, http
from mitmproxy.exceptions import OptionsError

from addons.core.errors import NotFound
from addons.core.process_env import PASSTHROUGH_HEADER, passthrough_secret
from addons.host.listen_addresses import open_admin_refusal
from addons.proxy.error_pages import new_request_id, refuse
from addons.proxy.flow_keys import ADMIN_KEY, REQUEST_ID_KEY
from addons.proxy.forward import FORWARD_PATH
from addons.proxy.routing import addressed_to_gateway
from addons.rewrite.endpoint import REWRITE_PREFIX

API_PREFIX = "/v1/"
ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")


def is_api_path(path: str) -> bool:
    """A path of the REST API: under /v1/, but not the forward endpoint (nor what an SDK adds to it) nor the
    rewrite endpoint."""
    return path.startswith(API_PREFIX) and not (
        (path.startswith(FORWARD_PATH) and path[len(FORWARD_PATH):len(FORWARD_PATH) + 1] in ("", "/", "?"))
        or path.startswith(REWRITE_PREFIX))


class AdminRoute:
    def __init__(self) -> None:
        self.secret = passthrough_secret()
        self.target: tuple[str, str, int] | None = None  # scheme, host, port of the admin listener

    def load(self, loader):
        loader.add_option(
            "tollgate_admin", bool, True,
            "Run the admin process (Lava's REST API, the dashboard, /metrics) beside the gateway and pass "
            "/v1/* requests to it. Off (--no-admin): neither the admin listener nor the API.",
        )
        loader.add_option("tollgate_admin_host", str, "127.0.0.1",
                          "Address of the admin listener (--admin-host); beyond loopback it needs TLS or "
                          "tollgate_allow_open_admin.")
        loader.add_option("tollgate_admin_port", int, 8082, "Port of the admin listener (--admin-port).")
        loader.add_option("tollgate_allow_open_admin", bool, False,
                          "Allow the admin listener on a non-loopback address without TLS, for a network "
                          "that already restricts who can connect.")
        loader.add_option("tollgate_admin_certfile", str, "", "TLS certificate (PEM) for the admin listener.")
        loader.add_option("tollgate_admin_keyfile", str, "", "TLS private key (PEM) for the admin listener.")

    def configure(self, updated):
        names = {"tollgate_admin", "tollgate_admin_host", "tollgate_admin_port", "tollgate_allow_open_admin",
                 "tollgate_admin_certfile", "tollgate_admin_keyfile"}
        if not names & set(updated):
            return
        options = ctx.options
        if not options.tollgate_admin:
            self.target = None
            return
        if not 1 <= options.tollgate_admin_port <= 65535:
            raise OptionsError(f"tollgate_admin_port must be a port number, not {options.tollgate_admin_port}")
        if bool(options.tollgate_admin_certfile) != bool(options.tollgate_admin_keyfile):
            raise OptionsError("tollgate_admin_certfile and tollgate_admin_keyfile go together")
        if why := open_admin_refusal(options.tollgate_admin_host, options.tollgate_allow_open_admin,
                                     options.tollgate_admin_certfile, options.tollgate_admin_keyfile):
            raise OptionsError(why)
        host = options.tollgate_admin_host
        host = "127.0.0.1" if host in ANY_ADDRESS else host.strip("[]")
        self.target = ("https" if options.tollgate_admin_certfile else "http", host, options.tollgate_admin_port)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if not is_api_path(flow.request.path) or not addressed_to_gateway(flow):
            return
        if self.target is None:
            refuse(flow, NotFound("admin_off", "the REST API is off on this gateway (started with --no-admin)"))
            return
        request = flow.request
        request.scheme, request.host, request.port = self.target
        request.headers[PASSTHROUGH_HEADER] = self.secret
        flow.metadata[ADMIN_KEY] = True
        flow.metadata.setdefault(REQUEST_ID_KEY, new_request_id())  # AuthThrottle counts the admin's 401s
