"""Keep credentials out of everything mitmweb shows, also while a request is in flight.

Why a patch: the provider key has to be on the live `flow.request` from the gateway's `request`
hook until the request is sent, and a non-streamed answer can take minutes to start; Redaction
(addons/proxy/redaction.py) can only mask it once the response headers arrive. mitmweb reads the live
flow whenever it serializes one (every update it pushes to the UI, every listing, export and dump),
so what it shows has to be masked at serialization instead: the flow that goes upstream is left
untouched, the one mitmweb shows carries "[redacted]" wherever `redaction.redact_request` finds a
credential (the SDK headers, the catalog's auth headers and query parameters, `key`, also inside
the forward endpoint's `u`) and in the ProxyAuth password.

Patched, in mitmweb's process only (`WebRedaction.load` does nothing under mitmdump or
tollgate-proxy), and undone in `done` so a script reload does not stack wrappers:

    mitmproxy.tools.web.app.flow_to_json        /flows and the /updates websocket (list, detail view)
    mitmproxy.tools.web.app.FlowContentView     request content views (the `query` view shows `?key=`)
    mitmproxy.io.FlowWriter.add                 /flows/dump (File > Save) and the save.file command
    mitmproxy.addons.export.formats             "Copy as cURL/HTTPie/raw" (export, export.clip, export.file)
    mitmproxy.addons.cut.extract                the command bar's cut, cut.clip, cut.save
    mitmproxy.addons.savehar.SaveHar.flow_entry save.har and hardump
    mitmproxy.optmanager.dump_dicts             the Options view: the password in proxyauth,
                                                upstream_auth, web_password and the ledger and Redis URLs

Every HTTP flow is masked this way, not only the gateway's: under the gateway mitmweb decrypts
only catalog hosts, and a viewer that hides an Authorization header too many is safe where one
that shows a key too many is not. Written against mitmproxy 12.2/12.3 (these names and
signatures); on any other version `load` refuses to run rather than show keys.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

from mitmproxy import ctx, http, version

from addons.proxy.redaction import REDACTED, redact_proxyauth, redact_request

SUPPORTED = ((12, 2), (12, 3))
SECRET_OPTIONS = ("proxyauth", "upstream_auth", "web_password", "tollgate_database_url", "tollgate_redis_url")
URL_PASSWORD = re.compile(r"(?<=://)([^/@:]*):[^/@]*@")

Names = Callable[[], tuple[frozenset[str], frozenset[str]]]


def check_version(text: str) -> None:
    major_minor = tuple(int(part) for part in text.split(".")[:2] if part.isdigit())
    if major_minor not in SUPPORTED:
        raise RuntimeError(
            f"addons/proxy/web_redaction.py was written for mitmproxy {' and '.join('%d.%d' % v for v in SUPPORTED)}, "
            f"not {text}: check that mitmweb's flow serialization still goes through the patched names, "
            "then add the version to SUPPORTED. Refusing to run mitmweb, which could show provider keys."
        )


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


class WebRedaction:
    def __init__(self, names: Names):
        self.masker = Masker(names)
        self._undo: list[Callable[[], None]] = []

    def load(self, loader) -> None:
        web = sys.modules.get("mitmproxy.tools.web.master")
        if web is None or not isinstance(ctx.master, web.WebMaster):
            return
        check_version(version.VERSION)
        if not self._undo:
            self._install()

    def done(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _patch(self, owner, name: str, wrapper) -> None:
        original = owner[name] if isinstance(owner, dict) else getattr(owner, name)
        replacement = wrapper(original)
        if isinstance(owner, dict):
            owner[name] = replacement
            self._undo.append(lambda: owner.__setitem__(name, original))
        else:
            setattr(owner, name, replacement)
            self._undo.append(lambda: setattr(owner, name, original))

    def _install(self) -> None:
        from mitmproxy import io, optmanager
        from mitmproxy.addons import cut, export, savehar
        from mitmproxy.tools.web import app

        masker = self.masker

        def flow_to_json(original):
            def shown(flow):
                data = original(flow)
                if isinstance(flow, http.HTTPFlow) and "request" in data:
                    request = masker.request(flow.request)
                    if request is not flow.request:
                        data["request"]["headers"] = tuple(request.headers.items(True))
                        data["request"]["path"] = request.path
                return data
            return shown

        def message_to_json(original):
            def shown(handler, view_name, message, flow, *args, **kwargs):
                if isinstance(flow, http.HTTPFlow) and message is flow.request:
                    flow = masker.flow(flow)
                    message = flow.request
                return original(handler, view_name, message, flow, *args, **kwargs)
            return shown

        def dump_dicts(original):
            def shown(opts, keys=None):
                dumped = original(opts, keys)
                for name in SECRET_OPTIONS:
                    if name in dumped:
                        dumped[name] = {**dumped[name], "value": masked_option(name, dumped[name]["value"])}
                return dumped
            return shown

        def takes_flow(original):  # f(flow) -> ...
            return lambda flow, *args, **kwargs: original(masker.flow(flow), *args, **kwargs)

        def method_takes_flow(original):  # self.f(flow, ...) -> ...
            return lambda self, flow, *args, **kwargs: original(self, masker.flow(flow), *args, **kwargs)

        self._patch(app, "flow_to_json", flow_to_json)
        self._patch(app.FlowContentView, "message_to_json", message_to_json)
        self._patch(io.FlowWriter, "add", method_takes_flow)
        for name in list(export.formats):
            self._patch(export.formats, name, takes_flow)
        self._patch(cut, "extract", lambda original: lambda spec, flow: original(spec, masker.flow(flow)))
        self._patch(savehar.SaveHar, "flow_entry", method_takes_flow)
        self._patch(optmanager, "dump_dicts", dump_dicts)
