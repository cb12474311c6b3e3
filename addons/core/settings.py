"""Gateway settings: config/gateway.yaml, overlaid by TOLLGATE_CONFIG's file, then the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from addons.core.catalog import Timeouts, parse_timeouts
from pricing.cost import Override, parse_overrides
from pricing.money import Refusals, non_negative_decimal, to_nanos

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "gateway.yaml"


@dataclass(frozen=True)
class AutopaySettings:
    webhook_url: str | None = None
    webhook_secret: str | None = None
    max_attempts: int = 5
    retry_base_seconds: float = 1.0  # doubled after every failed attempt


@dataclass(frozen=True)
class BillingSettings:
    byok_fee_percent: Decimal = Decimal(0)  # of the provider cost the request would have had
    byok_fee_per_request_nanos: int = 0
    default_max_output_tokens: int = 4096  # for holds, when a request names no max_tokens
    hold_ttl_seconds: int = 600  # an unsettled hold is released after this
    token_signing_key: str | None = None  # HMAC key of signed forward tokens
    autopay: AutopaySettings = field(default_factory=AutopaySettings)


@dataclass(frozen=True)
class LimitsSettings:
    """Where the calendar periods of spend and request limits begin (addons/core/limits.py)."""

    timezone: str = "UTC"  # an IANA zone name: Europe/Berlin, America/New_York

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


PROVIDER_KEY_POLICIES = ("refuse", "track")


@dataclass(frozen=True)
class CaptureSettings:
    """What to do with a provider key (sk-...) no one registered, sent by an app instead of a Tollgate key."""

    provider_keys: str = "refuse"  # refuse: 401; track: forward it as is, BYOK-metered to `account`
    account: str | None = None  # None: the default account


PRICING_POLICIES = ("flag", "refuse")


@dataclass(frozen=True)
class PricingSettings:
    """What to do with a request whose provider cost the ledger cannot know; None: the default
    (addons/billing/price_guard.py): refuse where a billed customer's fee would come out wrong."""

    unpriced: str | None = None  # a model no price list knows: flag | refuse
    unmetered: str | None = None  # an endpoint whose usage Tollgate does not read: flag | refuse


def parse_pricing(data) -> PricingSettings:
    if not isinstance(data, Mapping):
        raise ValueError("settings: pricing must be a mapping")
    if unknown := sorted(map(str, set(data) - {"unpriced", "unmetered"})):
        raise ValueError(f"settings: pricing has unknown field(s) {', '.join(unknown)}; expected unpriced, unmetered")
    for name in ("unpriced", "unmetered"):
        if data.get(name) is not None and data[name] not in PRICING_POLICIES:
            raise ValueError(f"settings: pricing.{name} must be flag, refuse or null (the default), not {data[name]!r}")
    return PricingSettings(unpriced=data.get("unpriced"), unmetered=data.get("unmetered"))


# Upstream timeouts when gateway.yaml names none (see its `timeouts:` for why these values).
DEFAULT_TIMEOUTS = Timeouts(connect=10.0, first_byte=600.0, idle=300.0, total=1800.0)


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None = None
    provider_overrides: dict[str, dict] = field(default_factory=dict)
    price_overrides: tuple[Override, ...] = ()
    billing: BillingSettings = field(default_factory=BillingSettings)
    journal_dir: Path = PROJECT_ROOT / "data" / "journal"
    timeouts: Timeouts = DEFAULT_TIMEOUTS  # every provider's, unless its `timeouts` say otherwise
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    pricing: PricingSettings = field(default_factory=PricingSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)


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


# YAML floats are refused (0.1 is not exact); a quoted string or an int is read, in any Decimal syntax.
_SETTING = Refusals(wrong_type="settings: {name} must be a quoted decimal string, not {value}",
                    not_a_number="settings: {name} is not a decimal number: {value}",
                    out_of_range="settings: {name} must be a non-negative number")


def _decimal(name: str, value) -> Decimal:
    return non_negative_decimal(value, name, plain=False, refusals=_SETTING)


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"settings: {name} must be a positive integer")
    return value


def parse_billing(data: Mapping, environ: Mapping[str, str]) -> BillingSettings:
    if not isinstance(data, Mapping):
        raise ValueError("settings: billing must be a mapping")
    autopay = data.get("autopay") or {}
    if not isinstance(autopay, Mapping):
        raise ValueError("settings: billing.autopay must be a mapping")
    defaults = BillingSettings()
    webhook_secret = environ.get("TOLLGATE_AUTOPAY_WEBHOOK_SECRET") or autopay.get("webhook_secret") or None
    if autopay.get("webhook_url") and not webhook_secret:
        raise ValueError("settings: billing.autopay.webhook_url needs webhook_secret: payment hook calls are signed")
    return BillingSettings(
        byok_fee_percent=_decimal("billing.byok_fee_percent", data.get("byok_fee_percent", "0")),
        byok_fee_per_request_nanos=to_nanos(
            _decimal("billing.byok_fee_per_request", data.get("byok_fee_per_request", "0"))
        ),
        default_max_output_tokens=_positive_int(
            "billing.default_max_output_tokens", data.get("default_max_output_tokens", defaults.default_max_output_tokens)
        ),
        hold_ttl_seconds=_positive_int("billing.hold_ttl_seconds", data.get("hold_ttl_seconds", defaults.hold_ttl_seconds)),
        token_signing_key=environ.get("TOLLGATE_TOKEN_SIGNING_KEY") or data.get("token_signing_key") or None,
        autopay=AutopaySettings(
            webhook_url=autopay.get("webhook_url") or None,
            webhook_secret=webhook_secret,
            max_attempts=_positive_int("billing.autopay.max_attempts", autopay.get("max_attempts", 5)),
            retry_base_seconds=float(_decimal("billing.autopay.retry_base_seconds", autopay.get("retry_base_seconds", "1"))),
        ),
    )


def parse_capture(data: Mapping) -> CaptureSettings:
    if not isinstance(data, Mapping):
        raise ValueError("settings: capture must be a mapping")
    unknown = set(data) - {"provider_keys", "account"}
    if unknown:
        raise ValueError(f"settings: capture has no field {sorted(unknown)[0]!r} (fields: provider_keys, account)")
    policy = "refuse" if data.get("provider_keys") is None else data["provider_keys"]
    if policy not in PROVIDER_KEY_POLICIES:
        raise ValueError(f"settings: capture.provider_keys must be one of {', '.join(PROVIDER_KEY_POLICIES)}, "
                         f"not {policy!r}")
    account = data.get("account")
    if account is not None and (not isinstance(account, str) or not account.strip()):
        raise ValueError("settings: capture.account must be an account name, or null for the default account")
    return CaptureSettings(provider_keys=policy, account=account)


def parse_limits(data) -> LimitsSettings:
    if not isinstance(data, Mapping):
        raise ValueError("settings: limits must be a mapping")
    if unknown := sorted(map(str, set(data) - {"timezone"})):
        raise ValueError(f"settings: limits has unknown field(s) {', '.join(unknown)}; expected timezone")
    name = data.get("timezone") or "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"settings: limits.timezone {name!r} is not a time zone name (e.g. UTC, Europe/Berlin)") from None
    return LimitsSettings(timezone=name)


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
        billing=parse_billing(data.get("billing") or {}, environ),
        journal_dir=PROJECT_ROOT / (environ.get("TOLLGATE_JOURNAL_DIR") or data.get("journal_dir") or "data/journal"),
        timeouts=DEFAULT_TIMEOUTS.updated(parse_timeouts("settings: timeouts", data.get("timeouts") or {})),
        capture=parse_capture(data.get("capture") or {}),
        pricing=parse_pricing(data.get("pricing") or {}),
        limits=parse_limits(data.get("limits") or {}),
    )
