"""Which format module speaks each client format and each provider family.

A client format is what Lava's SDK names in `rewrite/{format}/` (openai, anthropic, google, bedrock); a
provider family is the catalog's `api_family`. Each module speaks both sides: the format a client sends and
the family of the providers that answer in it.
"""

from __future__ import annotations

from types import ModuleType

from addons.rewrite import anthropic_format, bedrock_format, gemini_format, openai_format

CLIENT_FORMATS: dict[str, ModuleType] = {"openai": openai_format, "anthropic": anthropic_format,
                                         "google": gemini_format, "bedrock": bedrock_format}
PROVIDER_FAMILIES: dict[str, ModuleType] = {"openai": openai_format, "anthropic": anthropic_format,
                                            "gemini": gemini_format, "bedrock": bedrock_format}


def client_formats_for(api_family: str) -> list[str]:
    """The client formats that can reach a provider of `api_family` through the rewrite endpoint."""
    return sorted(CLIENT_FORMATS) if api_family in PROVIDER_FAMILIES else []
