"""mitmproxy's AddonManager, with each hook sent only to the addons that handle it.

mitmproxy walks its whole addon chain on every hook: for each addon a safecall context manager, a
coroutine and a generator, whether the addon has the hook or not. Every flow hook is also followed
by an `update` hook, which no addon of a headless gateway handles. With the gateway's 16 addons
that is about 130 empty calls per request, about a fifth of the process's CPU (py-spy, see
bench/README.md).

This manager keeps, per hook name, the handlers of the chain entries that have it, and calls only
those, directly: the hook's arguments are built once (from its fields, listed once per hook class),
and an error is caught and logged as mitmproxy's `safecall` does ("Addon error", the traceback from
the addon on; AddonHalt stops the hook, OptionsError goes up). An entry with child addons (the script loader with scripts loaded)
goes through mitmproxy's own walk, because its children change at run time. The index is rebuilt
after any register, add, remove or clear; mitmproxy registers every child it adds (the script
loader registers each script, a script its module), so an entry without children when the index
was built (the script loader of a gateway run without `-s`) is called like any other.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging

from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager, cut_traceback, safecall

addon_errors = logging.getLogger("mitmproxy.addonmanager")  # where safecall logs them


@functools.cache
def _arg_names(hook: type[hooks.Hook]) -> tuple[str, ...]:
    """A hook's fields, read once per hook class: `Hook.args()` calls dataclasses.fields() on every event."""
    return tuple(field.name for field in dataclasses.fields(hook))


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

    def handlers(self, name: str) -> list[tuple[object, object | None]]:
        """(entry, its handler) per chain entry that may handle hook `name`, in chain order; the handler is
        None for an entry with child addons."""
        found = self._handlers.get(name)
        if found is None:
            found = self._handlers[name] = [
                (entry, None) if getattr(entry, "addons", None) else (entry, getattr(entry, name))
                for entry in self.chain
                if getattr(entry, "addons", None) or callable(getattr(entry, name, None))
            ]
        return found

    async def trigger_event(self, event: hooks.Hook):
        args = None
        for entry, handler in self.handlers(event.name):
            if handler is None:
                try:
                    with safecall():
                        await self.invoke_addon(entry, event)
                except exceptions.AddonHalt:
                    return
                continue
            if args is None:
                args = [getattr(event, name) for name in _arg_names(type(event))]  # what event.args() gives
            try:
                result = handler(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except (exceptions.AddonHalt, exceptions.OptionsError) as e:
                if isinstance(e, exceptions.AddonHalt):
                    return
                raise
            except Exception as e:
                addon_errors.error(f"Addon error: {e}",
                                   exc_info=(type(e), e, cut_traceback(e.__traceback__, "trigger_event")))
