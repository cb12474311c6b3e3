"""The rules the gateway's imports obey, read from the source with `ast` (imports inside functions too).

- no module imports itself back, however indirectly;
- pricing/ is plain price arithmetic: it imports nothing of addons/;
- the guards (the chain's addons other than the Gateway, addons/proxy/chain.py) never import the Gateway's
  module: names they share with it live in addons/proxy/flow_keys.py;
- the ledger never imports billing: billing hands the ledger writer its charging function;
- the operator side reaches the ledger only through one service layer: addons/cli/ and addons/admin/ (the
  REST API) import nothing of addons/ledger/, addons/billing/ nor peewee, only addons/services/;
- the layers of ARCHITECTURE.md: a package imports only packages on lower floors (LAYERS), never one on
  its own floor or above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("addons", "pricing")
GATEWAY = "addons.proxy.gateway_addon"
GUARDS = (
    "addons.proxy.listen_guard",
    "addons.proxy.request_limits",
    "addons.proxy.auth_throttle",
    "addons.proxy.admin_route",
    "addons.proxy.admin_process",
    "addons.proxy.upstream_guard",
    "addons.proxy.upstream_retries",
    "addons.proxy.redaction",
    "addons.proxy.upstream_timeouts",
    "addons.proxy.runtime_info",
    "addons.proxy.web_redaction",
)


# Floors, bottom up. A package imports only packages on floors below its own.
LAYERS = (
    ("pricing",),
    ("addons.core",),
    ("addons.ledger", "addons.usage", "addons.host"),
    ("addons.auth", "addons.rewrite"),
    ("addons.billing",),
    ("addons.proxy", "addons.services"),
    ("addons.runtime", "addons.cli", "addons.admin", "addons.gateway"),
)
FLOOR = {package: floor for floor, packages in enumerate(LAYERS) for package in packages}


def package_of(module: str) -> str:
    """addons.billing.charges -> addons.billing; pricing.cost -> pricing."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "addons" and len(parts) > 1 else parts[0]


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = module_files()


def imported_names(name: str, path: Path) -> set[str]:
    """Every module name `name` imports anywhere in its source, the project's resolved to the module itself,
    third-party ones as written (`peewee`, `playhouse.db_url`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from addons import error_pages` imports the module addons.proxy.error_pages
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return targets - {name}


def imported(name: str, path: Path) -> set[str]:
    """The project modules `name` imports anywhere in its source, each resolved to the module itself."""
    return {t for t in imported_names(name, path) if t in MODULES}


GRAPH = {name: imported(name, path) for name, path in MODULES.items()}
SHELLS = [m for m in MODULES if m.split(".")[:2] in (["addons", "cli"], ["addons", "admin"])]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, str] = {}  # "open" while on the DFS stack, "done" after
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def offending(sources, forbidden) -> list[str]:
    return [f"{source} imports {target}" for source in sorted(sources) for target in sorted(GRAPH[source])
            if forbidden(target)]


def test_the_graph_is_read_from_the_source():
    """Guards the checks below against passing on an empty or misread graph."""
    assert {"addons.billing.charges", "addons.ledger.writer"} <= GRAPH[GATEWAY]
    assert "addons.proxy.flow_notes" in GRAPH[GATEWAY]  # `from addons import flow_notes`
    assert "pricing.money" in GRAPH["pricing.cost"]
    assert "addons.cli.main" in SHELLS and "addons.admin.app" in SHELLS and "addons.services.database" in GRAPH["addons.cli.main"]
    assert {"peewee", "addons.ledger.models"} <= imported_names("addons.services.reports", MODULES["addons.services.reports"])


def test_the_guards_are_the_chains_addons_but_the_gateway():
    assert set(GUARDS) == GRAPH["addons.proxy.chain"] - {GATEWAY}, "update GUARDS to match addons/proxy/chain.py"


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(("rule", "sources", "forbidden"), [
    ("pricing/ imports nothing of addons/",
     [m for m in MODULES if m.split(".")[0] == "pricing"], lambda t: t.split(".")[0] == "addons"),
    ("the guards never import the Gateway's module (shared names live in addons/proxy/flow_keys.py)",
     GUARDS, lambda t: t == GATEWAY),
    ("addons/ledger/ never imports addons/billing/ (billing hands the writer its charging function)",
     [m for m in MODULES if m.startswith("addons.ledger")], lambda t: t.startswith("addons.billing")),
])
def test_layer_rule(rule, sources, forbidden):
    broken = offending(sources, forbidden)
    assert not broken, f"{rule}; broken by: " + ", ".join(broken)


def _reaches_the_ledger(target: str) -> bool:
    return (target.split(".")[:2] in (["addons", "ledger"], ["addons", "billing"])
            or target.split(".")[0] in ("peewee", "playhouse"))


def test_the_shells_reach_the_ledger_only_through_the_services():
    """addons/cli/ and addons/admin/ are two shells over addons/services/: no ledger, billing or peewee."""
    broken = [f"{source} imports {target}" for source in sorted(SHELLS)
              for target in sorted(imported_names(source, MODULES[source])) if _reaches_the_ledger(target)]
    assert not broken, "the CLI and the API reach the ledger only through addons/services/; broken by: " + ", ".join(broken)


@pytest.mark.parametrize(("target", "reaches"), [
    ("addons.ledger.accounts", True), ("addons.billing.reprice", True), ("peewee", True), ("playhouse.db_url", True),
    ("addons.services.keys", False), ("addons.core.settings", False), ("pricing.money", False), ("rich.table", False),
])
def test_the_cli_rule_tells_the_ledger_from_the_rest(target, reaches):
    assert _reaches_the_ledger(target) is reaches


def test_every_package_has_a_floor():
    packages = {package_of(m) for m in MODULES} - {"addons"}
    assert packages == set(FLOOR), "add new packages to LAYERS (and ARCHITECTURE.md)"


def test_packages_import_only_lower_floors():
    broken = [f"{source} imports {target}" for source in sorted(MODULES) if package_of(source) != "addons"
              for target in sorted(GRAPH[source])
              if package_of(target) != package_of(source) and FLOOR[package_of(target)] >= FLOOR[package_of(source)]]
    assert not broken, "a package imports only packages on lower floors (LAYERS); broken by: " + ", ".join(broken)


def test_the_floor_rule_catches_an_upward_import():
    assert FLOOR[package_of("addons.ledger.writer")] < FLOOR[package_of("addons.billing.charges")]
    assert package_of("addons.gateway") == "addons.gateway" and package_of("pricing.cost") == "pricing"
