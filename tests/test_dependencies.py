"""What `./run_proxy.sh` installs (pyproject's dependencies, no test extras) is enough to import every module of
the gateway, the CLI and the admin process.

The test venv holds more than a user's: the SDKs of `.[test]` pull in their own dependencies (requests among
them), so a runtime import that only a test dependency satisfies passes every other test and breaks a fresh
`./run_proxy.sh`. Here every module of addons/ and pricing/ is imported in a fresh interpreter in which the
modules of installed distributions outside the runtime dependencies' closure cannot be imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.harness import PROJECT

pytestmark = pytest.mark.e2e  # a fresh interpreter imports the whole gateway

# Reads {"blocked": [...], "modules": [...]} on stdin, blocks the first, imports each of the second; prints the failures.
IMPORT_ALL = """
import importlib, importlib.abc, json, sys, traceback
given = json.load(sys.stdin)
blocked = set(given["blocked"])

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        parts = name.split(".")
        if any(".".join(parts[:n]) in blocked for n in range(1, len(parts) + 1)):
            raise ModuleNotFoundError(f"No module named {name!r} (only a test dependency installs it)", name=name)
        return None

sys.meta_path.insert(0, Blocked())
for module in given["modules"]:
    try:
        importlib.import_module(module)
    except Exception:
        print(f"--- {module}\\n{traceback.format_exc(limit=-3)}")
"""


def runtime_closure() -> set[str]:
    """The distributions `pip install .` installs: tollgate's requirements without extras, and theirs, markers
    evaluated for this interpreter (a requirement's own extras followed, as `google-auth[requests]`)."""
    seen: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    todo = [("tollgate", frozenset[str]())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in visited:
            continue
        visited.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # required on another platform, or by a marker that left it out
        seen.add(name)
        for requirement in map(Requirement, dist.requires or ()):
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": extra})
                                                 for extra in extras | {""}):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return seen


def test_runtime_closure_follows_extras():
    """The closure is what the check below rests on: google-auth's `requests` extra brings requests along."""
    closure = runtime_closure()
    assert {"mitmproxy", "peewee", "redis", "google-auth", "requests"} <= closure
    assert not {"pytest", "openai", "anthropic", "google-genai"} & closure


def modules_only_tests_install(closure: set[str]) -> set[str]:
    """Module names (packages and their subpackages) that only distributions outside `closure` provide: a
    namespace package shared with a runtime one (`google`) stays importable, its test-only parts (`google.genai`)
    do not."""
    owners: dict[str, set[str]] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            path = PurePosixPath(str(file))
            if path.suffix not in (".py", ".so") or ".." in path.parts or path.parts[0].endswith((".dist-info", ".data")):
                continue
            parts = [*path.parts[:-1], path.name.split(".")[0]]
            if parts[-1] == "__init__":
                parts.pop()
            for n in range(1, len(parts) + 1):
                owners.setdefault(".".join(parts[:n]), set()).add(name)
    only = {module for module, by in owners.items() if not by & closure}
    return {module for module in only if module.rpartition(".")[0] not in only}  # the outermost: they block the rest


def project_modules() -> list[str]:
    modules = []
    for package in ("addons", "pricing"):
        for path in sorted((PROJECT / package).rglob("*.py")):
            relative = path.relative_to(PROJECT).with_suffix("")
            if relative.name == "__main__":
                continue  # runs a program when imported
            modules.append(".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts))
    return modules


def test_every_module_imports_with_the_runtime_dependencies_alone():
    blocked = modules_only_tests_install(runtime_closure())
    assert {"openai", "pytest", "google.genai"} <= blocked  # the check has teeth: test dependencies are blocked
    given = json.dumps({"blocked": sorted(blocked), "modules": project_modules()})
    result = subprocess.run([sys.executable, "-c", IMPORT_ALL], input=given, cwd=PROJECT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "", f"modules that need a dependency pyproject's runtime list lacks:\n{result.stdout[-4000:]}"
