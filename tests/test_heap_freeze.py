"""tollgate-proxy keeps what it holds from its start out of the cyclic collector (addons/runtime/heap_freeze.py)."""

from __future__ import annotations

import asyncio
import gc

from mitmproxy import options

from addons.ledger.models import database
from addons.runtime.heap_freeze import HeapFreeze
from addons.runtime.launcher import GatewayMaster


class Held:
    """A container the collector tracks, as most of what the gateway loads at start."""


def tracked(obj: object) -> bool:
    """Whether a collection of some generation walks `obj` (frozen objects are in none)."""
    return any(o is obj for o in gc.get_objects())


def test_what_lives_when_the_gateway_runs_is_walked_by_no_later_collection():
    before = Held()
    assert tracked(before)
    try:
        HeapFreeze().running()
        after = Held()
        assert not tracked(before) and tracked(after)  # only what was made since is collected
    finally:
        gc.unfreeze()


def test_the_lean_launcher_freezes_after_every_other_addon_has_run(tmp_path, monkeypatch):
    """Its `running` comes last, so what the Gateway and its chain set up in theirs is frozen too."""
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", f"sqlite:///{tmp_path}/l.db")
    monkeypatch.delenv("TOLLGATE_CONFIG", raising=False)

    async def installed():
        m = GatewayMaster(options.Options(listen_host="127.0.0.1"))
        m.install_gateway()
        return m

    m = asyncio.run(installed())
    try:
        runners = [type(addon).__name__ for addon, _ in m.addons.handlers("running")]
        assert runners[-1] == "HeapFreeze" and "Gateway" in runners
    finally:
        m.gateway.done()
        database.close()
        database.initialize(None)
