"""The config the chain shares (addons/proxy/gateway_config.py): read once per process, handed to every
addon that needs it, and a bad file is mitmproxy's one-line OptionsError."""

from __future__ import annotations

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.exceptions import OptionsError
from mitmproxy.test import taddons

from addons.ledger.models import database
from addons.proxy.chain import gateway_chain
from addons.proxy.gateway_addon import Gateway
from addons.proxy.gateway_config import SharedConfig, load_config
from addons.proxy.upstream_retries import UpstreamRetries
from addons.proxy.upstream_timeouts import UpstreamTimeouts


class CountingLoader:
    def __init__(self, error: str | None = None):
        self.calls = 0
        self.error = error

    def __call__(self):
        self.calls += 1
        if self.error:
            raise ValueError(self.error)
        return load_config()


def test_every_addon_of_the_chain_gets_the_gateways_config():
    gateway = Gateway()
    users = [addon for addon in gateway_chain(gateway) if hasattr(addon, "config")]
    assert [type(a).__name__ for a in users] == ["AuthThrottle", "UpstreamGuard", "UpstreamRetries", "Redaction",
                                                 "Gateway", "UpstreamTimeouts", "RuntimeInfo"]
    assert all(addon.config is gateway.config for addon in users)


def test_load_reads_once_and_reload_again():
    loader = CountingLoader()
    config = SharedConfig(loader=loader)
    assert config.catalog is None
    first = config.load()
    assert config.load() is first and config.catalog is first.catalog and loader.calls == 1
    assert config.reload() is not first and loader.calls == 2


def test_a_bad_config_is_an_options_error_and_the_one_in_use_stays():
    config = SharedConfig(loader=CountingLoader("settings: timeouts.idle must be a positive number of seconds"))
    with pytest.raises(OptionsError, match=r"^settings: timeouts\.idle must be"):
        config.load()
    assert config.current is None
    loaded = SharedConfig().load()
    config.current = loaded
    with pytest.raises(OptionsError):
        config.reload()
    assert config.current is loaded


@pytest.mark.parametrize("retries", [0, 2])
def test_the_chain_reads_the_config_once_and_again_for_a_new_ledger(tmp_path, monkeypatch, retries):
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", f"sqlite:///{tmp_path}/l.db")
    monkeypatch.delenv("TOLLGATE_CONFIG", raising=False)
    loader = CountingLoader()
    config = SharedConfig(loader=loader)
    gateway = Gateway(config)
    retrying, timeouts = UpstreamRetries(config), UpstreamTimeouts(config)
    with taddons.context(Proxyserver(), retrying, gateway, timeouts) as tctx:
        tctx.options.update(tollgate_upstream_retries=retries)  # configures each addon in chain order
        assert loader.calls == 1 and gateway.writer is not None
        assert timeouts.limits["openai"] == config.current.timeouts["openai"]
        before = config.current
        tctx.configure(gateway, tollgate_database_url=f"sqlite:///{tmp_path}/other.db")
        assert loader.calls == 2 and config.current is not before
        assert gateway.catalog is config.catalog and timeouts.limits is config.current.timeouts
        gateway.done()
    database.close()
    database.initialize(None)
