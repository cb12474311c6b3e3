"""Trusting mitmproxy's CA: the bundle `tollgate ca --exports` points clients at, and the system trust store.

The bundle. `SSL_CERT_FILE` and `REQUESTS_CA_BUNDLE` replace a client's roots rather than add to
them, so pointing them at mitmproxy's CA alone breaks every host the gateway tunnels untouched
(every non-AI host: the client then sees the real server's certificate). `data/ca-bundle.pem`
(or TOLLGATE_CA_BUNDLE) is the system's roots followed by mitmproxy's CA, rewritten whenever
either changes. `NODE_EXTRA_CA_CERTS` adds to Node's roots, so it stays the CA alone.

The system store (`tollgate ca --install`, for system-wide capture, where apps cannot be given
variables): Debian/Ubuntu take a `.crt` in /usr/local/share/ca-certificates and
`update-ca-certificates`; Fedora/RHEL a file in /etc/pki/ca-trust/source/anchors and
`update-ca-trust extract`. Both steps say exactly what they changed; repeating one changes nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from addons.core.files import write_atomically
from addons.core.settings import PROJECT_ROOT

CA_FILE = "mitmproxy-ca-cert.pem"
BUNDLE_ENV = "TOLLGATE_CA_BUNDLE"
SYSTEM_ROOTS = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")


class TrustError(Exception):
    """A change to the trust store that cannot be made; the message says why and what to do."""


def bundle_path() -> Path:
    return Path(os.environ.get(BUNDLE_ENV) or PROJECT_ROOT / "data" / "ca-bundle.pem")


def system_roots() -> Path:
    """The system's own root bundle, else certifi's (what Python clients use when the system has none)."""
    for candidate in SYSTEM_ROOTS:
        if Path(candidate).is_file():
            return Path(candidate)
    import certifi

    return Path(certifi.where())


def write_bundle(ca: Path, path: Path | None = None, roots: Path | None = None) -> Path:
    """The system roots plus mitmproxy's CA, written only when that content changed."""
    path = path or bundle_path()
    base = (roots or system_roots()).read_text()
    text = f"{base.rstrip()}\n\n# mitmproxy's CA, added by Tollgate ({ca})\n{ca.read_text().strip()}\n"
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    write_atomically(path, text, 0o644)  # certificates, no secret: apps running as other users read it
    return path


@dataclass(frozen=True)
class TrustStore:
    name: str
    anchor: Path  # the file Tollgate adds
    command: tuple[str, ...]  # rebuilds the system bundle from the anchors
    after_removal: tuple[str, ...]  # the same once an anchor is gone


STORES = (
    # without --fresh, Debian's tool leaves the removed CA's links in /etc/ssl/certs (read by -CApath clients)
    TrustStore("Debian/Ubuntu", Path("/usr/local/share/ca-certificates/tollgate-mitmproxy.crt"),
               ("update-ca-certificates",), ("update-ca-certificates", "--fresh")),
    TrustStore("Fedora/RHEL", Path("/etc/pki/ca-trust/source/anchors/tollgate-mitmproxy.pem"),
               ("update-ca-trust", "extract"), ("update-ca-trust", "extract")),
)


def system_store() -> TrustStore:
    for store in STORES:
        if shutil.which(store.command[0]):
            return store
    raise TrustError("no system trust store tool found (update-ca-certificates on Debian/Ubuntu, update-ca-trust "
                     "on Fedora/RHEL); add the CA to this system's trust store by hand")


def _need_root(action: str, euid: int | None) -> None:
    if (os.geteuid() if euid is None else euid) != 0:
        raise TrustError(f"tollgate ca --{action} changes the system trust store and needs root: "
                         f"sudo .venv/bin/tollgate ca --{action}")


def _rebuild(command: tuple[str, ...]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    said = (result.stdout.strip() or result.stderr.strip()).splitlines()
    if result.returncode != 0:
        raise TrustError(f"{' '.join(command)} failed (exit {result.returncode}): "
                         f"{said[-1] if said else 'no output'}")
    summary = next((line for line in said if " added, " in line), said[-1] if said else "")  # "1 added, 0 removed"
    return f"ran: {' '.join(command)}" + (f" ({summary.strip()})" if summary else "")


def install(ca: Path, store: TrustStore | None = None, euid: int | None = None) -> list[str]:
    """Add the CA to the system store; the lines say what changed."""
    _need_root("install", euid)
    if not ca.is_file():
        raise TrustError(f"mitmproxy's CA does not exist yet ({ca}): start the gateway once (./run_proxy.sh), "
                         "which creates it, then run this again")
    store = store or system_store()
    pem = ca.read_bytes()
    if store.anchor.is_file() and store.anchor.read_bytes() == pem:
        return [f"already installed: {store.anchor} holds this CA ({ca}); nothing changed"]
    verb = "replaced" if store.anchor.exists() else "added"
    store.anchor.parent.mkdir(parents=True, exist_ok=True)
    store.anchor.write_bytes(pem)
    store.anchor.chmod(0o644)
    return [f"{verb} {store.anchor} (a copy of {ca})", _rebuild(store.command)]


def uninstall(store: TrustStore | None = None, euid: int | None = None) -> list[str]:
    _need_root("uninstall", euid)
    store = store or system_store()
    if not store.anchor.exists():
        return [f"not installed: {store.anchor} does not exist; nothing changed"]
    store.anchor.unlink()
    return [f"removed {store.anchor}", _rebuild(store.after_removal)]
