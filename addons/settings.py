"""Gateway settings: config/gateway.yaml, overlaid by TOLLGATE_CONFIG's file, then the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pricing.cost import Override, parse_overrides

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "gateway.yaml"


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None = None
    provider_overrides: dict[str, dict] = field(default_factory=dict)
    price_overrides: tuple[Override, ...] = ()


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read settings file {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"settings file {path} must hold a mapping")
    return data


def _overlay(base: dict, extra: Mapping) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_database_url(url: str) -> str:
    """Anchor a relative SQLite path at the project root, so the CLI and proxy agree from any cwd."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        return prefix + str(PROJECT_ROOT / url[len(prefix) :])
    return url


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    data = _read_yaml(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else {}
    if environ.get("TOLLGATE_CONFIG"):
        data = _overlay(data, _read_yaml(Path(environ["TOLLGATE_CONFIG"])))
    providers = data.get("providers") or {}
    if not isinstance(providers, dict) or not all(isinstance(v, dict) for v in providers.values()):
        raise ValueError("settings: providers must map a provider id to a mapping of fields")
    return Settings(
        database_url=resolve_database_url(
            environ.get("TOLLGATE_DATABASE_URL") or data.get("database_url") or "sqlite:///data/tollgate.db"
        ),
        redis_url=environ.get("TOLLGATE_REDIS_URL") or data.get("redis_url") or None,
        provider_overrides=providers,
        price_overrides=parse_overrides({"models": data.get("prices") or []}),
    )
