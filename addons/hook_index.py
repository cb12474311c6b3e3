"""mitmproxy's AddonManager, with each hook sent only to the addons that handle it.

mitmproxy walks its whole addon chain on every hook: for each addon a safecall context manager, a
coroutine and a generator, whether the addon has the hook or not. Every flow hook is also followed
by an `update` hook, which no addon of a headless gateway handles. With the gateway's 16 addons
that is about 130 empty calls per request, about a fifth of the process's CPU (py-spy, see
bench/README.md).

This manager keeps, per hook name, the chain entries that handle it, and calls only those. It keeps
chain order and mitmproxy's own per-addon error handling (`safecall`, AddonHalt). An entry with
child addons (the script loader) is always called, because its children change at run time. The
index is rebuilt after any add, remove or clear.
"""

from __future__ import annotations

from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager, safecall, traverse


class IndexedAddonManager(AddonManager):
    def __init__(self, master):
        super().__init__(master)
        self._handlers: dict[str, list] = {}

    def register(self, addon):
        self._handlers.clear()
        return super().register(addon)

    def add(self, *addons):
        try:
            super().add(*addons)
        finally:
            self._handlers.clear()

    def remove(self, addon):
        try:
            super().remove(addon)
        finally:
            self._handlers.clear()

    def clear(self):
        try:
            super().clear()
        finally:
            self._handlers.clear()

    def handlers(self, name: str) -> list:
        """The chain entries that may handle hook `name`, in chain order."""
        found = self._handlers.get(name)
        if found is None:
            found = self._handlers[name] = [
                entry for entry in self.chain
                if hasattr(entry, "addons") or any(getattr(a, name, None) for a in traverse([entry]))
            ]
        return found

    async def trigger_event(self, event: hooks.Hook):
        for addon in self.handlers(event.name):
            try:
                with safecall():
                    await self.invoke_addon(addon, event)
            except exceptions.AddonHalt:
                return
