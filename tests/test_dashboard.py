"""The dashboard on the admin listener (issues 12 and 13): its data, in-process on both ledgers (the same totals as
`tollgate usage` for the same period, an account key's own account only, filters, balance marks, keys' and
customers' limits with the current period's use), the page
and its assets offline, and the page itself in Debian's headless Chromium against `python -m addons.admin`:
it signs in, draws the chart, shows the ledger's numbers, refreshes itself, and leaves screenshots."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from addons.admin import dashboard as page
from addons.admin.app import build_app
from addons.admin.web import iso
from addons.core.limits import Period, period_of
from addons.core.settings import load_settings
from addons.ledger import accounts
from addons.ledger.models import ApiKey, Hold, RequestRow, database, open_database, utcnow
from addons.services import bootstrap, customers, keys, usage
from addons.services.dashboard import period_start
from pricing.money import NANOS_PER_USD, format_usd
from tests.chromium import Browser, chromium_or_skip
from tests.harness import free_port

USD = NANOS_PER_USD
ROOT = Path(__file__).resolve().parent.parent


def add_request(request_id: str, account: str, *, days_ago: float = 0, provider: str = "openai",
                model: str = "gpt-4o", status: int = 200, cost: int = 1000, fee: int = 0, customer: str | None = None,
                price_source: str = "catalog", key: str | None = None) -> None:
    """A request row as the gateway's writer leaves it."""
    RequestRow.create(id=request_id, created_at=utcnow() - timedelta(days=days_ago), account=account, key=key,
                      provider=provider, model=model, endpoint="/v1/chat/completions", status=status,
                      customer_id=customer, bill_customer=customer is not None, input_tokens=100, output_tokens=20,
                      provider_cost_nanos=cost, charged_nanos=cost, fee_nanos=fee, latency_ms=300,
                      usage_source="reported", price_source=price_source)


def seed() -> dict[str, str]:
    """Two accounts: `default` (the admin key's, with traffic inside and outside the 30 days) and `shop`."""
    admin = bootstrap.init_ledger()
    shop = keys.create_key("shop-backend", "shop")
    default_id = accounts.find_account("default").account_id
    shop_id = accounts.find_account("shop").account_id
    admin_key = ApiKey.get(ApiKey.name == "admin").id
    customers.create("default", "alice", balance_nanos=5 * USD, autopay_threshold_nanos=10 * USD,
                     autopay_amount_nanos=20 * USD)
    customers.create("default", "bob")
    carol = customers.create("default", "carol", balance_nanos=50 * USD)
    Hold.create(request_id="req_held", wallet=carol.wallet, amount_nanos=3 * USD // 2,
                expires_at=utcnow() + timedelta(minutes=5))
    customers.create("shop", "zed", balance_nanos=7 * USD)
    rows = [  # id, account, days ago, provider, model, status, cost, fee, customer, price source
        ("req_a1", default_id, 0, "openai", "gpt-4o", 200, 2_000_000, 500_000, "alice", "catalog"),
        ("req_a2", default_id, 1, "openai", "gpt-4o-mini", 200, 300_000, 0, None, "catalog"),
        ("req_a3", default_id, 3, "anthropic", "claude-3-5-sonnet", 200, 1_234_567, 400_000, "bob", "catalog"),
        ("req_a4", default_id, 3, "anthropic", "claude-3-5-sonnet", 429, 0, 0, None, "catalog"),
        ("req_a5", default_id, 10, "gemini", "gemini-2.0-flash", 500, 0, 0, "carol", "catalog"),
        ("req_a6", default_id, 28.5, "openai", "o3", 200, 0, 0, None, "unpriced"),
        ("req_old", default_id, 45, "openai", "gpt-4o", 200, 9 * USD, 0, None, "catalog"),
        ("req_s1", shop_id, 2, "openai", "gpt-4o", 200, 777_000, 100_000, "zed", "catalog"),
    ]
    for rid, account, days, provider, model, status, cost, fee, customer, source in rows:
        add_request(rid, account, days_ago=days, provider=provider, model=model, status=status, cost=cost, fee=fee,
                    customer=customer, price_source=source, key=admin_key if account == default_id else shop.id)
    return {"admin": admin.secret_key, "shop": shop.secret_key}


def totals_of(report: usage.UsageReport, errors: int) -> dict:
    t = report.totals
    return {"requests": t.requests, "input_tokens": t.input_tokens, "output_tokens": t.output_tokens,
            "provider_cost": format_usd(t.provider_cost_nanos), "charged": format_usd(t.charged_nanos),
            "fees": format_usd(t.fee_nanos), "margin": format_usd(t.margin_nanos),
            "unpriced_requests": t.unpriced_requests, "unmetered_requests": t.unmetered_requests,
            "errors_recorded": errors}


@pytest.fixture
def board(ledger):
    """The admin app with the dashboard's routes, and a client per key."""
    secrets = seed()
    app = build_app(extra_routes=page.routes())

    def client(secret: str | None) -> TestClient:
        return TestClient(app, headers={"authorization": f"Bearer {secret}"} if secret else {})

    return {name: client(secret) for name, secret in secrets.items()} | {"anonymous": client(None), "app": app}


def test_admin_sees_every_account_with_the_totals_of_tollgate_usage(board):
    data = board["admin"].get("/dashboard/data").json()
    since = period_start()
    assert data["account"] is None and data["accounts"] == ["default", "shop"]
    assert data["period"] == {"since": since.date().isoformat(), "cli": f"tollgate usage --since {since:%Y-%m-%d}",
                              "days": [(since + timedelta(days=n)).date().isoformat() for n in range(30)]}
    assert data["totals"] == totals_of(usage.usage(since=since), errors=2)
    assert data["totals"]["requests"] == 7  # req_old is older than 30 days
    # Each provider's series adds up to its `tollgate usage` row; each day to its `--by day` row.
    by_provider = {row.group: format_usd(row.provider_cost_nanos) for row in usage.usage(since=since).rows}
    assert {s["group"]: format_usd(sum(_nanos(v) for v in s["provider_cost"])) for s in data["chart"]["series"]} \
        == by_provider
    by_day = {row.group: row.requests for row in usage.usage("day", since=since).rows}
    per_day = [sum(s["requests"][n] for s in data["chart"]["series"]) for n in range(30)]
    assert {day: n for day, n in zip(data["period"]["days"], per_day) if n} == by_day
    assert {r["id"] for r in data["requests"]} == {"req_a1", "req_a2", "req_a3", "req_a4", "req_a5", "req_a6",
                                                   "req_old", "req_s1"}
    assert {(k["name"], k["account"]) for k in data["keys"]} == {("admin", "default"), ("shop-backend", "shop")}


def _nanos(usd: str) -> int:
    whole, _, frac = usd.partition(".")
    return int(whole) * USD + int(frac.ljust(9, "0"))


def test_an_account_key_sees_its_own_account_only(board):
    data = board["shop"].get("/dashboard/data").json()
    assert data["account"] == "shop" and data["accounts"] == ["shop"]
    assert data["totals"]["requests"] == 1 and data["totals"]["provider_cost"] == "0.000777"
    assert [c["customer_id"] for c in data["customers"]] == ["zed"]
    assert [r["id"] for r in data["requests"]] == ["req_s1"]
    assert [k["name"] for k in data["keys"]] == ["shop-backend"]
    other = board["shop"].get("/dashboard/data", params={"account": "default"})
    assert other.status_code == 404 and other.json()["error"]["code"] == "account_not_found"


def test_an_admin_may_name_one_account(board):
    data = board["admin"].get("/dashboard/data", params={"account": "shop"}).json()
    assert data["account"] == "shop" and [r["id"] for r in data["requests"]] == ["req_s1"]
    assert board["admin"].get("/dashboard/data", params={"account": "nobody"}).status_code == 404


@pytest.mark.parametrize("client, code", [("anonymous", "missing_secret_key"), ("wrong", "invalid_secret_key")])
def test_it_authenticates_as_the_api_does(board, client, code):
    answer = (board["anonymous"].get("/dashboard/data", headers={"authorization": "Bearer tg_sk_wrong"})
              if client == "wrong" else board[client].get("/dashboard/data"))
    assert answer.status_code == 401 and answer.json()["error"]["code"] == code


def test_failed_sign_ins_are_throttled_like_the_api(board):
    board["app"].state.throttle.limit = 2
    wrong = {"authorization": "Bearer tg_sk_wrong"}
    assert [board["anonymous"].get("/dashboard/data", headers=wrong).status_code for _ in range(3)] == [401, 401, 429]


def test_customers_carry_balances_holds_and_low_balance_marks(board):
    shown = {c["customer_id"]: c for c in board["admin"].get("/dashboard/data").json()["customers"]}
    assert [c for c in shown] == ["bob", "alice", "carol", "zed"]  # depleted, low, then the rest
    assert (shown["bob"]["mark"], shown["alice"]["mark"], shown["carol"]["mark"]) == ("depleted", "low", None)
    assert shown["alice"]["balance"] == "5.00" and shown["alice"]["autopay_threshold"] == "10.00"
    assert shown["carol"]["holds"] == {"count": 1, "amount": "1.50"} and shown["carol"]["available"] == "48.50"


def period(cycle: str) -> Period:
    return period_of(cycle, datetime.now(UTC), load_settings().limits.zone)


TEAM_LIMITS = {"spend_limit_nanos": 10 * USD, "spend_cycle": "month", "request_limit": 100, "request_cycle": "day",
               "rpm": 60, "tpm": 5000}


def test_keys_and_customers_show_their_limits_with_the_periods_use_and_reset(board):
    team = keys.create_spend_key("team", limits=TEAM_LIMITS)
    default_id = accounts.find_account("default").account_id
    add_request("req_t1", default_id, cost=2 * USD // 5, key=team.id)
    add_request("req_t_old", default_id, days_ago=40, cost=USD, key=team.id)  # before this month and day
    customers.update("default", "alice", spend_limit_nanos=USD, spend_cycle="week")
    data = board["admin"].get("/dashboard/data").json()
    shown = {k["name"]: k for k in data["keys"]}
    assert (shown["team"]["kind"], shown["team"]["status"], shown["admin"]["limits"]) == ("spend", "active", None)
    assert shown["team"]["limits"] == {
        "spend": {"used": "0.40", "limit": "10.00", "cycle": "monthly", "resets_at": iso(period("month").reset)},
        "requests": {"used": 1, "limit": 100, "cycle": "daily", "resets_at": iso(period("day").reset)},
        "rpm": 60, "burst": None, "tpm": 5000}
    limited = {c["customer_id"]: c["limits"] for c in data["customers"]}
    assert limited["alice"]["spend"] == {"used": "0.0005", "limit": "1.00", "cycle": "weekly",  # req_a1's fee
                                         "resets_at": iso(period("week").reset)}
    assert limited["bob"] is None


@pytest.mark.parametrize("params, ids", [
    ({"status": "4xx"}, ["req_a4"]),
    ({"status": "500"}, ["req_a5"]),
    ({"provider": "anthropic"}, ["req_a4", "req_a3"]),  # newest first
    ({"model": "gpt-4o*", "account": "default"}, ["req_a1", "req_a2", "req_old"]),
    ({"customer": "alice"}, ["req_a1"]),
    ({"key": "shop-backend"}, ["req_s1"]),
    ({"limit": "2"}, ["req_a1", "req_a2"]),
])
def test_recent_requests_filters(board, params, ids):
    assert [r["id"] for r in board["admin"].get("/dashboard/data", params=params).json()["requests"]] == ids


@pytest.mark.parametrize("params, field", [({"status": "teapot"}, "status"), ({"by": "customer"}, "by"),
                                           ({"limit": "0"}, "limit")])
def test_bad_parameters_are_422_naming_the_field(board, params, field):
    answer = board["admin"].get("/dashboard/data", params=params)
    assert answer.status_code == 422 and answer.json()["error"]["param"] == field


def test_stacked_by_model(board):
    chart = board["admin"].get("/dashboard/data", params={"by": "model"}).json()["chart"]
    assert chart["by"] == "model"
    assert {s["group"] for s in chart["series"]} == {"gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "gemini-2.0-flash",
                                                     "o3"}


def test_past_twelve_series_the_rest_are_one_exact_other(board):
    shop = accounts.find_account("shop").account_id
    for n in range(14):
        add_request(f"req_m{n}", shop, model=f"model-{n:02d}", cost=(n + 1) * 1000)
    chart = board["shop"].get("/dashboard/data", params={"by": "model"}).json()["chart"]
    assert len(chart["series"]) == 12 and chart["series"][-1]["group"] == "other"
    # 15 models (gpt-4o and model-00..13): the 11 costliest stand alone, the 4 cheapest add up exactly.
    assert [s["group"] for s in chart["series"][:2]] == ["gpt-4o", "model-13"]
    assert sum(_nanos(v) for v in chart["series"][-1]["provider_cost"]) == (1 + 2 + 3 + 4) * 1000


# -- the page and its assets --------------------------------------------------------------------------


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href", "action") and value]


def test_the_page_and_its_assets_load_nothing_from_outside_the_server(board):
    client = board["anonymous"]
    html = client.get("/")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    csp = html.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    parser = _References()
    parser.feed(html.text)
    local = [url for url in parser.urls if not url.startswith(("data:", "#"))]
    assert local and not [url for url in local if re.match(r"\w+:|//", url)], parser.urls
    assets = [url for url in local if url.startswith("dashboard/static/")]
    assert {Path(url).name for url in assets} == {"dashboard.css", "chart.umd.min.js", "dashboard.js"}
    for url in assets:
        body = client.get("/" + url)
        assert body.status_code == 200, url
        text = body.text
        if url.endswith("chart.umd.min.js"):  # its license notices name their home pages: comments, not loads
            text = re.sub(r"/\*!.*?\*/", "", text, flags=re.S)
            assert "sourceMappingURL" not in text
        assert not re.search(r"https?://", text), url


def test_the_vendored_chart_library_ships_with_its_license():
    static = ROOT / "addons" / "admin" / "static"
    assert "Chart.js v4" in (static / "chart.umd.min.js").read_text()[:200]
    assert "MIT License" in (static / "chart.js.LICENSE.md").read_text()


# -- in Chromium ------------------------------------------------------------------------------------------


@pytest.fixture
def admin_listener(tmp_path, monkeypatch):
    """A seeded SQLite ledger, and `python -m addons.admin` serving it; yields (url, secrets, ledger url)."""
    monkeypatch.setenv("TOLLGATE_TOKEN_SIGNING_KEY", "k" * 40)
    url = f"sqlite:///{tmp_path}/ledger.db"
    open_database(url)
    secrets = seed()
    port = free_port()
    ready_read, ready_write = os.pipe()
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    log = tmp_path / "admin.log"
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "addons.admin", "--port", str(port), "--database-url", url,
                                   "--ready-fd", str(ready_write)], cwd=ROOT, env=env, pass_fds=(ready_write,),
                                  stdout=out, stderr=out)
    os.close(ready_write)
    try:
        assert os.read(ready_read, 1) == b"1", log.read_text()[-3000:]  # nothing: it exited before listening
        yield f"http://127.0.0.1:{port}", secrets
    finally:
        os.close(ready_read)
        server.terminate()
        server.wait(10)
        database.close()
        database.initialize(None)


def _number(text: str) -> str:
    """A number as the page shows it ($1,234.50, -$0.25) as the CLI writes it (1234.50, -0.25)."""
    return text.replace("$", "").replace(",", "")


@pytest.fixture
def chromium() -> str:
    return chromium_or_skip()


@pytest.mark.e2e
def test_in_chromium_it_signs_in_draws_the_chart_and_shows_the_ledgers_numbers(chromium, admin_listener, tmp_path):
    base, secrets = admin_listener
    team = keys.create_spend_key("team", limits=TEAM_LIMITS)
    add_request("req_team", accounts.find_account("default").account_id, cost=USD // 4, key=team.id)
    customers.update("default", "alice", spend_limit_nanos=USD, spend_cycle="total")
    shots = [tmp_path / "screenshots"] + ([Path(os.environ["TOLLGATE_SCREENSHOTS"])]
                                          if os.environ.get("TOLLGATE_SCREENSHOTS") else [])

    def screenshot(browser: Browser, name: str) -> None:
        path = browser.screenshot(tmp_path / f"{name}.png")
        for folder in shots:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / path.name)

    with Browser(chromium, tmp_path / "profile") as browser:
        browser.goto(base + "/")
        browser.wait_for("!document.getElementById('sign-in').hidden", what="the sign-in form")
        browser.type("#secret-key", "tg_sk_not_a_key")
        browser.click("#sign-in-button")
        assert browser.wait_for("document.getElementById('sign-in-error').textContent") \
            == "the secret key is not an active Tollgate key"  # the API's own message
        assert browser.evaluate("sessionStorage.length") == 0

        browser.type("#secret-key", secrets["admin"])
        browser.click("#sign-in-button")
        browser.wait_for("document.getElementById('total-requests').textContent", what="the totals")
        # The chart is drawn: Chart.js holds a chart for the canvas, and the canvas has coloured pixels.
        browser.wait_for("""(() => {
            const canvas = document.getElementById('spend-chart'), chart = Chart.getChart(canvas);
            if (!chart || chart.data.datasets.length < 3) return false;
            const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let coloured = 0;
            for (let i = 0; i < pixels.length; i += 4) if (pixels[i + 3] && pixels[i] !== pixels[i + 2]) coloured++;
            return coloured > 500;
        })()""", what="the chart's bars")
        screenshot(browser, "dashboard-by-provider")

        # The key is in this tab's session storage, never in the URL or a cookie.
        assert browser.evaluate("location.href") == base + "/"
        assert browser.evaluate("sessionStorage.getItem('tollgate.secret_key')") == secrets["admin"]
        assert browser.evaluate("document.cookie") == ""

        since = datetime.fromisoformat(re.search(r"From (\S+)", browser.text("#period")).group(1))
        assert since == period_start()
        expected = usage.usage(since=since).totals  # what `tollgate usage --since` adds up
        shown = {name: _number(browser.text(f"#total-{name}")) for name in
                 ("requests", "input-tokens", "output-tokens", "provider-cost", "charged", "fees", "margin",
                  "unpriced", "unmetered", "errors")}
        assert shown == {"requests": str(expected.requests), "input-tokens": str(expected.input_tokens),
                         "output-tokens": str(expected.output_tokens),
                         "provider-cost": format_usd(expected.provider_cost_nanos),
                         "charged": format_usd(expected.charged_nanos), "fees": format_usd(expected.fee_nanos),
                         "margin": format_usd(expected.margin_nanos), "unpriced": str(expected.unpriced_requests),
                         "unmetered": str(expected.unmetered_requests), "errors": "2"}
        cells = browser.evaluate("[...document.querySelectorAll('#customers tbody tr')]"
                                 ".map(tr => [...tr.cells].map(td => td.textContent))")
        alice = next(row for row in cells if row[1] == "alice")
        assert _number(alice[2]) == format_usd(customers.get("default", "alice").balance_nanos)
        assert alice[7] == "low balance" and alice[8] == "$0.0005 / $1.00 in total"  # req_a1's fee, never resets
        # Each key with its limits: what the current period used of each, and when it resets.
        keys_shown = browser.evaluate("[...document.querySelectorAll('#keys tbody tr')]"
                                      ".map(tr => [...tr.cells].map(td => td.textContent))")
        team_row = next(row for row in keys_shown if row[0] == "team")
        month, day = period("month").reset, period("day").reset
        assert (team_row[4], team_row[7]) == ("spend", "active")
        assert team_row[8].split("\n") == [f"$0.25 / $10.00 this month, resets {month:%Y-%m-%d %H:%M} UTC",
                                            f"1 / 100 requests today, resets {day:%Y-%m-%d %H:%M} UTC",
                                            "60 requests/min", "5,000 tokens/min"]
        assert next(row for row in keys_shown if row[0] == "admin")[8] == ""

        browser.click("#by-model")
        browser.wait_for("document.getElementById('spend-chart').dataset.by === 'model'")
        labels = browser.evaluate("Chart.getChart(document.getElementById('spend-chart')).data.datasets"
                                  ".map(d => d.label)")
        assert set(labels) == {"gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "gemini-2.0-flash", "o3"}
        screenshot(browser, "dashboard-by-model")

        browser.evaluate("document.getElementById('filter-status').value = '4xx'")
        browser.click("#filters button[type=submit]")
        browser.wait_for("document.querySelectorAll('#requests tbody tr').length === 1", what="the 4xx filter")
        assert browser.evaluate("document.querySelector('#requests tbody td:nth-child(2)').textContent") == "req_a4"

        # Left open, it refreshes itself: a request written now shows up without a click.
        add_request("req_new", accounts.find_account("default").account_id, cost=5000)
        browser.wait_for(f"document.getElementById('total-requests').textContent === '{expected.requests + 1}'",
                         timeout=25, what="the next automatic refresh")

        urls = browser.requested_urls()
        assert urls and all(url.startswith(base + "/") for url in urls), urls  # nothing from a CDN
        errors = [e for e in browser.errors() if "status of 401" not in e]  # the wrong key's answer
        assert errors == []

        browser.click("#sign-out")
        browser.wait_for("!document.getElementById('sign-in').hidden")
        assert browser.evaluate("sessionStorage.length") == 0
        screenshot(browser, "dashboard-signed-out")
    assert {p.name for p in (tmp_path / "screenshots").iterdir()} == {
        "dashboard-by-provider.png", "dashboard-by-model.png", "dashboard-signed-out.png"}

