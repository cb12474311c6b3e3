"""Keep credentials out of everything mitmweb shows, also while a request is in flight.

What mitmweb may show of a flow is a copy carrying "[redacted]" wherever `redaction.redact_request`
finds a credential (the SDK headers, the catalog's auth headers and query parameters, `key`, also
inside the forward endpoint's `u`) and in the ProxyAuth password; of the options, the password in
proxyauth, upstream_auth, web_password and the ledger and Redis URLs masked. The flow that goes
upstream is left untouched. Why this is done at serialization, and which of mitmweb's ways out are
wrapped: mask_web_views in addons/proxy/mitmproxy_internals.py, which addons/gateway.py installs
under mitmweb. `WebRedaction.load` hands it the Masker, in mitmweb's process only (it does nothing
under mitmdump or tollgate-proxy), `done` takes it back; `load` refuses to run when the wraps are
not installed, rather than show keys.

Every HTTP flow is masked this way, not only the gateway's: under the gateway mitmweb decrypts
only catalog hosts, and a viewer that hides an Authorization header too many is safe where one
that shows a key too many is not.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from mitmproxy import http

from addons.proxy import mitmproxy_internals
from addons.proxy.redaction import REDACTED, redact_proxyauth, redact_request

SECRET_OPTIONS = ("proxyauth", "upstream_auth", "web_password", "tollgate_database_url", "tollgate_redis_url")
URL_PASSWORD = re.compile(r"(?<=://)([^/@:]*):[^/@]*@")

Names = Callable[[], tuple[frozenset[str], frozenset[str]]]


def masked_option(name: str, value: object) -> object:
    """An option's value as the Options view may show it: user names and hosts, never a password."""
    if name not in SECRET_OPTIONS or not isinstance(value, str) or not value:
        return value
    if name.endswith("_url"):
        return URL_PASSWORD.sub(rf"\1:{REDACTED}@", value)
    if name == "web_password":
        return REDACTED
    if value == "any" or value.startswith("@"):  # any user, an htpasswd file: no secret in the value
        return value
    user, sep, _ = value.partition(":")
    return f"{user}:{REDACTED}" if sep and not value.startswith("ldap") else REDACTED


class Masker:
    """What mitmweb may show of a flow: the flow itself, or a masked copy when it carries a credential."""

    def __init__(self, names: Names):
        self.names = names

    def request(self, request: http.Request) -> http.Request:
        header_names, query_names = self.names()
        if not ("?" in request.path or any(
                name.lower().decode("latin-1") in header_names for name, _ in request.headers.fields)):
            return request  # the common case, decided without a copy
        shown = request.copy()
        return shown if redact_request(shown, header_names, query_names) else request

    def flow(self, flow):
        if not isinstance(flow, http.HTTPFlow):
            return flow
        request = self.request(flow.request)
        if request is flow.request and not redact_proxyauth(dict(flow.metadata)):  # a trial on a copy
            return flow
        shown = flow.copy()
        shown.id = flow.id
        shown.request = request
        redact_proxyauth(shown.metadata)
        return shown

    def options(self, dumped: dict) -> dict:
        """mitmproxy's dump of the options (the Options view), every password masked."""
        for name in SECRET_OPTIONS:
            if name in dumped:
                dumped[name] = {**dumped[name], "value": masked_option(name, dumped[name]["value"])}
        return dumped


class WebRedaction:
    def __init__(self, names: Names):
        self.masker = Masker(names)

    def load(self, loader) -> None:
        if mitmproxy_internals.under_mitmweb():
            mitmproxy_internals.show_web_through(self.masker)

    def done(self) -> None:
        mitmproxy_internals.stop_showing_web_through(self.masker)
