"""Fixtures: the mock provider, ledgers on SQLite and PostgreSQL, the Gateway addon in-process, and the shared
running gateways (the backend matrix and the launcher matrix)."""

from __future__ import annotations

import subprocess

import pytest
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from addons.ledger.models import database, open_database
from addons.proxy.gateway_addon import Gateway

# Fixtures for every test module:
from tests.harness import (  # noqa: F401
    GatewayProcess,
    PaymentHook,
    fresh_postgres_database,
    private_postgres,
    private_postgres_cluster,
    private_redis,
)
from tests.inprocess_gateway import PROVIDER_KEY
from tests.mock_bedrock import MockBedrock
from tests.mock_provider import MockProvider

MOCK_MODEL_PRICE = {"provider": "openai", "model": "mock-*", "input_mtok": "1.00", "output_mtok": "2.00"}

# A test that uses one of these (directly or through another fixture) starts processes or servers: end-to-end.
PROCESS_FIXTURES = {"gateway", "mock", "payhook", "private_postgres", "private_postgres_cluster", "private_redis"}


def pytest_configure(config):
    config.addinivalue_line("markers", "launchers: runs on each launcher (on SQLite) instead of each ledger backend; "
                                       "for what differs between launchers: startup, streaming, errors, shutdown")
    config.addinivalue_line("markers", "one_gateway: runs on one shared gateway (lean launcher, SQLite): for checks "
                                       "of a request's shape, which neither backend nor launcher changes")


def pytest_collection_modifyitems(config, items):
    """Every test is `e2e` or `unit`: e2e where it starts processes (a process fixture, or marked so in its
    module because it starts them itself), unit otherwise, so `-m unit` is the fast in-process loop."""
    for item in items:
        if item.get_closest_marker("e2e") is None and PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request, monkeypatch):
    """Keeps the unit loop honest: a unit test that starts a process fails, naming the mark it needs."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(self, args, *rest, **kwargs):
        raise AssertionError(f"a unit test started a process ({args!r}): mark the test or its module e2e")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture(autouse=True)
def _journal_in_tmp(tmp_path, monkeypatch):
    """Gateways built in this process journal under the test's own directory, not the project's data/."""
    monkeypatch.setenv("TOLLGATE_JOURNAL_DIR", str(tmp_path / "journal"))


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    """A fresh, empty ledger opened in this process; each test module gets its own PostgreSQL database."""
    name = "tollgate_" + request.module.__name__.rpartition(".")[2].removeprefix("test_")
    url = f"sqlite:///{tmp_path}/ledger.db" if request.param == "sqlite" else fresh_postgres_database(name)
    db = open_database(url)
    yield db
    db.close()
    database.initialize(None)


@pytest.fixture
def api(ledger):
    """The admin API in-process on the `ledger` (SQLite and PostgreSQL): tests/admin_api.py."""
    from tests.admin_api import make_api

    return make_api()


@pytest.fixture
def gw(tmp_path, monkeypatch):
    """The Gateway addon in this process under mitmproxy's test context, on a throwaway SQLite ledger."""
    monkeypatch.setenv("TOLLGATE_DATABASE_URL", f"sqlite:///{tmp_path}/l.db")
    monkeypatch.delenv("TOLLGATE_CONFIG", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", PROVIDER_KEY)
    gateway = Gateway()
    with taddons.context(Proxyserver(), gateway) as tctx:  # Proxyserver owns connection_strategy
        tctx.configure(gateway)
        gateway.tctx = tctx
        yield gateway
        gateway.done()
    database.close()
    database.initialize(None)


@pytest.fixture(scope="session")
def mock():
    with MockProvider() as server:
        yield server


@pytest.fixture(scope="module")
def bedrock():
    """AWS Bedrock's mock (SigV4 checked against the operator's credentials), one per module that uses it."""
    server = MockBedrock()
    yield server
    server.close()


PAYHOOK_SECRET = "whsec_test_0123456789abcdef"
BYOK_FEE = {"byok_fee_percent": "10", "byok_fee_per_request": "0.001"}


@pytest.fixture(scope="session")
def payhook():
    hook = PaymentHook(PAYHOOK_SECRET)
    yield hook
    hook.close()


# The shared gateway runs in one of these setups, named by the test id: (ledger backend, launcher).
# The backend matrix runs both ledgers under the lean launcher (what ./run_proxy.sh runs); the launcher
# matrix runs both launchers (the lean one, and the addon as a mitmproxy script, as ./run_proxy.sh --web
# loads it) on SQLite, for the tests marked `launchers`: what differs between them (startup, streaming,
# errors, shutdown), not the whole suite twice.
BACKEND_MATRIX = {"sqlite": ("sqlite", "tollgate-proxy"), "postgresql": ("postgresql", "tollgate-proxy")}
LAUNCHER_MATRIX = {"tollgate-proxy": ("sqlite", "tollgate-proxy"), "mitmdump": ("sqlite", "mitmdump")}
# Tests marked `one_gateway` check a request's shape (a malformed token, metadata or forward URL), which
# neither the ledger backend nor the launcher changes: one setup is enough.
ONE_GATEWAY = {"sqlite": ("sqlite", "tollgate-proxy")}


def pytest_generate_tests(metafunc):
    """A test of the shared gateway runs on the backend matrix, on the launcher matrix if marked `launchers`, or
    once if marked `one_gateway`."""
    fixturedefs = metafunc._arg2fixturedefs.get("gateway")  # a module may have a `gateway` of its own
    if fixturedefs and fixturedefs[-1].func.__module__ == __name__:
        marked = metafunc.definition.get_closest_marker
        matrix = LAUNCHER_MATRIX if marked("launchers") else ONE_GATEWAY if marked("one_gateway") else BACKEND_MATRIX
        metafunc.parametrize("gateway", list(matrix.values()), ids=list(matrix), indirect=True, scope="session")


@pytest.fixture(scope="session")
def _gateways(mock, payhook, tmp_path_factory):
    """The running shared gateways by setup, each started the first time a test asks for it."""
    running: dict[tuple[str, str], GatewayProcess] = {}

    def get(backend: str, launcher: str) -> GatewayProcess:
        if (backend, launcher) not in running:
            running[backend, launcher] = _start_gateway(backend, launcher, mock, payhook, tmp_path_factory)
        return running[backend, launcher]

    yield get
    for gw in running.values():
        gw.stop()


def _start_gateway(backend, launcher, mock, payhook, tmp_path_factory) -> GatewayProcess:
    tmp = tmp_path_factory.mktemp(f"gateway-{backend}-{launcher}")
    url = f"sqlite:///{tmp}/ledger.db" if backend == "sqlite" else fresh_postgres_database("tollgate_test")
    upstreams = {p: mock.url for p in ("openai", "anthropic", "gemini", "cohere", "groq")}
    upstreams["mistral"] = "http://127.0.0.1:9"  # nothing listens: the unreachable-provider case
    # The mock's behaviour models (mock-slow, mock-cut) get a price, as an operator's own model would.
    billing = {**BYOK_FEE, "autopay": {"webhook_url": payhook.url, "webhook_secret": PAYHOOK_SECRET,
                                       "retry_base_seconds": "0.05"}}
    gw = GatewayProcess(tmp, url, upstreams, prices=[MOCK_MODEL_PRICE], billing=billing, launcher=launcher, admin=True)
    gw.fund("100")
    gw.start()
    return gw


@pytest.fixture(scope="session")
def gateway(request, _gateways):
    """The shared gateway of the test's setup (a value of one of the matrices above), funded with $100."""
    return _gateways(*request.param)


@pytest.fixture
def proxied(gateway, monkeypatch):
    """Environment of an unmodified app: HTTPS_PROXY plus the mitmproxy CA."""
    monkeypatch.setenv("HTTPS_PROXY", gateway.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(gateway.ca))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    return gateway
