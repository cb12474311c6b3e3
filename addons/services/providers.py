"""The providers this gateway fronts (config/providers.yaml with the settings' `providers:` changes), and whether
this process's environment holds each one's credential: the admin process runs beside the gateway's workers,
started with the same environment. The key itself is never read out."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from addons.core.catalog import load_catalog
from addons.core.settings import load_settings


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    id: str
    name: str
    hosts: tuple[str, ...]
    base_url: str
    api_family: str
    pricing_id: str | None  # genai-prices' provider id; None: priced by overrides only
    credential_env: str  # the environment variable the gateway's managed key is read from
    credential_set: bool
    upstream: str | None  # where requests go instead of base_url (a test double, a regional endpoint)


def configured(environ: Mapping[str, str] = os.environ) -> list[ProviderInfo]:
    catalog = load_catalog(overrides=load_settings(environ).provider_overrides)
    return [ProviderInfo(p.id, p.name, p.host_names, p.base_url, p.api_family, p.pricing_id, p.credential_env,
                         p.credential_configured(environ), p.upstream) for p in catalog.providers]
