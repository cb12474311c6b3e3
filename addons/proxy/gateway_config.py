"""What the gateway reads from its config files once per process, and the one holder the chain shares.

`load_config()` is the one place that reads config/gateway.yaml (with TOLLGATE_CONFIG and the
environment over it), config/providers.yaml, the price overrides and the token signing key. Its
result, a `GatewayConfig`, is kept in a `SharedConfig` that addons/proxy/chain.py hands to every
addon of the chain that needs it: the Gateway, the guards that know catalog hosts, upstream
timeouts and retries, runtime info and redaction. None of them reads a config file itself.

The first addon to need the config loads it from its `configure` (the Gateway on its first one,
or UpstreamRetries ahead of it when retries are on), so a bad file stops the gateway at start-up
with mitmproxy's one-line OptionsError, whichever addon hit it. Until then `catalog` is None, which
the guards take as "no catalog host yet". The Gateway loads it again when `tollgate_database_url`
changes, as it always has; the others see the new one at once, as they read it through the holder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mitmproxy.exceptions import OptionsError

from addons.auth.signed_tokens import load_signing_key
from addons.core.catalog import Catalog, Timeouts, load_catalog
from addons.core.settings import PROJECT_ROOT, Settings, load_settings
from pricing.cost import Override, shipped_overrides

SIGNING_KEY_FILE = PROJECT_ROOT / "data" / "token-signing.key"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    settings: Settings
    catalog: Catalog
    prices: tuple[Override, ...] = ()  # the settings' price overrides, then the shipped ones
    signing_key: bytes | None = None  # HMAC key of signed forward tokens
    timeouts: Mapping[str, Timeouts] = field(default_factory=dict)  # provider id -> its upstream timeouts


def provider_timeouts(settings: Settings, catalog: Catalog) -> dict[str, Timeouts]:
    """Each catalog provider's timeouts: the settings' `timeouts:` with the provider's own over them."""
    return {p.id: settings.timeouts.updated(p.timeouts) for p in catalog.providers}


def load_config() -> GatewayConfig:
    """Read every config file the gateway has; a ValueError names what is wrong in one line."""
    settings = load_settings()
    catalog = load_catalog(overrides=settings.provider_overrides)
    return GatewayConfig(
        settings=settings,
        catalog=catalog,
        prices=settings.price_overrides + shipped_overrides(),
        signing_key=load_signing_key(settings.billing.token_signing_key, SIGNING_KEY_FILE),
        timeouts=provider_timeouts(settings, catalog),
    )


class SharedConfig:
    """The process's GatewayConfig, one object for the whole chain; `current` is None until loaded."""

    def __init__(self, current: GatewayConfig | None = None, loader: Callable[[], GatewayConfig] = load_config):
        self.current = current
        self.loader = loader

    @property
    def catalog(self) -> Catalog | None:
        return self.current.catalog if self.current is not None else None

    def load(self) -> GatewayConfig:
        """The config, read now if no addon has read it yet; for `configure` (a bad file is an OptionsError)."""
        return self.current if self.current is not None else self.reload()

    def reload(self) -> GatewayConfig:
        """Read the files again; on an error the config in use stays as it was."""
        try:
            self.current = self.loader()
        except ValueError as e:
            raise OptionsError(str(e)) from None
        return self.current
