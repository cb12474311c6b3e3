"""Which format module speaks each client format and each provider family.

A client format is what Lava's SDK names in `rewrite/{format}/` (openai, anthropic, google, bedrock); a
provider family is the catalog's `api_family`. A format whose module is not installed is simply absent,
so `tollgate providers` and the model catalog list only the translations that exist.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from addons.rewrite import anthropic_format, openai_format

# client format (URL segment) -> (module name, provider api_family the module also speaks)
_MODULES = {
    "openai": ("openai_format", "openai"),
    "anthropic": ("anthropic_format", "anthropic"),
    "google": ("gemini_format", "gemini"),
    "bedrock": ("bedrock_format", "bedrock"),
}


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"addons.rewrite.{name}")
    except ModuleNotFoundError:
        return None


CLIENT_FORMATS: dict[str, ModuleType] = {"openai": openai_format, "anthropic": anthropic_format}
PROVIDER_FAMILIES: dict[str, ModuleType] = {"openai": openai_format, "anthropic": anthropic_format}
for _format, (_name, _family) in _MODULES.items():
    if _format not in CLIENT_FORMATS and (_module := _load(_name)) is not None:
        CLIENT_FORMATS[_format] = _module
        PROVIDER_FAMILIES[_family] = _module


def client_formats_for(api_family: str) -> list[str]:
    """The client formats that can reach a provider of `api_family` through the rewrite endpoint."""
    return sorted(CLIENT_FORMATS) if api_family in PROVIDER_FAMILIES else []
