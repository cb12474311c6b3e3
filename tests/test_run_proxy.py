"""The README's first command, as a new user runs it: set-up, first-run key, a listening gateway."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import PROJECT, clean_env, free_port

pytestmark = pytest.mark.e2e  # runs ./run_proxy.sh and the gateway it starts

SCRIPT = PROJECT / "run_proxy.sh"


def test_which_python_finds_a_pyenv_interpreter(tmp_path):
    real = subprocess.run([str(SCRIPT), "--which-python"], capture_output=True, text=True, check=True).stdout.strip()
    fake_root = tmp_path / "pyenv"
    (fake_root / "versions" / "3.12.99" / "bin").mkdir(parents=True)
    (fake_root / "versions" / "3.12.99" / "bin" / "python").symlink_to(real)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYENV_ROOT": str(fake_root)}
    found = subprocess.run(["bash", str(SCRIPT), "--which-python"], env=env, capture_output=True, text=True)
    if subprocess.run(["bash", "-c", "command -v python3.12 python3.13"], env=env, capture_output=True).stdout:
        return  # this machine has one on /usr/bin; the pyenv fallback is not reached
    assert found.returncode == 0 and found.stdout.strip() == f"{fake_root}/versions/3.12.99/bin/python"


def test_no_python_312_is_a_clear_error(tmp_path):
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path)}
    result = subprocess.run(["/bin/bash", str(SCRIPT), "--which-python"], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "needs Python >= 3.12" in result.stderr


def _run_gateway(tmp_path: Path, port: int) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"run-{port}.log"
    env = clean_env(TOLLGATE_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.db")
    proc = subprocess.Popen([str(SCRIPT), "--listen-port", str(port), "--set", f"confdir={tmp_path}/conf"],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False, timeout=1).status_code == 200:
                return proc, log
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(log.read_text())


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    proc.wait(30)


def test_first_run_prints_the_admin_key_once_then_serves(tmp_path):
    proc, log = _run_gateway(tmp_path, free_port())
    _stop(proc)
    first = log.read_text()
    assert "tg_sk_" in first and "tollgate wallet topup" in first and "tollgate ca" in first
    proc, log = _run_gateway(tmp_path, free_port())
    _stop(proc)
    assert "tg_sk_" not in log.read_text()
