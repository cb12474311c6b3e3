"""Transparent capture on this host: the iptables rules behind `tollgate capture on|off|status`.

Apps that ignore proxy settings are captured in the kernel: their outgoing TCP connections to ports
80 and 443 are redirected (nat OUTPUT, REDIRECT) to the gateway's port, where `--mode transparent`
reads the original destination and routes by SNI. Only the connections of the app's user
(`--uid`, iptables' owner match) or of a cgroup (`--cgroup`, cgroup v2 path) are redirected, never
the gateway's own: its connections to providers would come back to it, a loop.

All the rules live in one chain, TOLLGATE_CAPTURE, entered from nat OUTPUT by one jump, and every
rule carries the comment `tollgate-capture`: `off` removes exactly those and leaves the rest of the
firewall alone. The chain starts with a RETURN for the gateway's uid, so a cgroup that also holds
the gateway cannot loop either. IPv4 through iptables, IPv6 through ip6tables where installed.

The rule building is pure (`plan_on`, `plan_off`), so `--dry-run` prints exactly what would run.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

CHAIN = "TOLLGATE_CAPTURE"
COMMENT = "tollgate-capture"
PORTS = (80, 443)
FAMILIES = (("ipv4", "iptables"), ("ipv6", "ip6tables"))
CAP_NET_ADMIN = 12
TAG = ("-m", "comment", "--comment", COMMENT)
JUMP = ("-p", "tcp", *TAG, "-j", CHAIN)


class CaptureError(Exception):
    """A refusal or failure, as the one line the command prints."""


@dataclass(frozen=True)
class Selector:
    """Whose connections are captured: a user (`uid`) or a cgroup v2 path (`cgroup`)."""

    kind: str  # "uid" | "cgroup"
    value: str

    def match(self) -> tuple[str, ...]:
        if self.kind == "uid":
            return ("-m", "owner", "--uid-owner", self.value)
        return ("-m", "cgroup", "--path", self.value)

    def describe(self) -> str:
        if self.kind == "uid":
            try:
                return f"uid {self.value} ({pwd.getpwuid(int(self.value)).pw_name})"
            except KeyError:
                return f"uid {self.value}"
        return f"cgroup {self.value}"


def resolve_uid(user: str) -> int:
    """A user name or number; an unknown name is refused (iptables would take it only as a number)."""
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise CaptureError(f"no such user: {user!r}") from None


def redirect_rule(selector: Selector, port: int) -> tuple[str, ...]:
    dports = ",".join(map(str, PORTS))
    return ("-p", "tcp", "-m", "multiport", "--dports", dports, *selector.match(), *TAG,
            "-j", "REDIRECT", "--to-ports", str(port))


def exempt_rule(gateway_uid: int) -> tuple[str, ...]:
    return ("-m", "owner", "--uid-owner", str(gateway_uid), *TAG, "-j", "RETURN")


@dataclass(frozen=True)
class Step:
    """One iptables call; `check` (the same rule with -C) makes it idempotent when it already holds."""

    args: tuple[str, ...]
    check: tuple[str, ...] | None = None


def plan_on(selector: Selector, port: int, gateway_uid: int) -> list[Step]:
    """The calls that install capture for `selector`, in order, for one address family."""
    if not 0 < port < 65536:
        raise CaptureError(f"--port must be between 1 and 65535, not {port}")
    if selector.kind == "uid" and int(selector.value) == gateway_uid:
        raise CaptureError(
            f"refusing to capture {selector.describe()}: the gateway runs as that user, so its own connections "
            "to providers would be redirected back to it (a loop); capture the app's user, and run the gateway "
            "as another one"
        )
    exempt, redirect = exempt_rule(gateway_uid), redirect_rule(selector, port)
    return [
        Step(("-t", "nat", "-N", CHAIN), check=("-t", "nat", "-n", "-L", CHAIN)),
        Step(("-t", "nat", "-I", CHAIN, "1", *exempt), check=("-t", "nat", "-C", CHAIN, *exempt)),
        Step(("-t", "nat", "-A", CHAIN, *redirect), check=("-t", "nat", "-C", CHAIN, *redirect)),
        Step(("-t", "nat", "-A", "OUTPUT", *JUMP), check=("-t", "nat", "-C", "OUTPUT", *JUMP)),
    ]


def plan_off(output_rules: Sequence[str]) -> list[Step]:
    """The calls that remove every tagged jump from nat OUTPUT (given `-S OUTPUT`), then the chain."""
    steps = [Step(("-t", "nat", "-D", *shlex.split(line)[1:])) for line in output_rules if _ours(line)]
    return [*steps, Step(("-t", "nat", "-F", CHAIN)), Step(("-t", "nat", "-X", CHAIN))]


def _ours(rule: str) -> bool:
    words = shlex.split(rule)
    return words[:1] == ["-A"] and COMMENT in words and words[words.index(COMMENT) - 1] == "--comment"


def command_line(binary: str, step: Step) -> str:
    return shlex.join([binary, *step.args])


# -- the host --------------------------------------------------------------------------------------

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def run_iptables(argv: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)


def binaries() -> dict[str, str]:
    """family -> iptables binary for the families this host has; IPv4's is required."""
    found = {family: path for family, name in FAMILIES if (path := shutil.which(name))}
    if "ipv4" not in found:
        raise CaptureError("iptables is not installed: install it (apt-get install iptables), or print the rules "
                           "with --dry-run and apply them with your own firewall tool")
    return found


def require_net_admin(status: Path = Path("/proc/self/status")) -> None:
    try:
        caps = int(next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("CapEff:")), 16)
    except (OSError, StopIteration, ValueError):
        return  # not Linux /proc: let iptables say it
    if not caps >> CAP_NET_ADMIN & 1:
        raise CaptureError("changing the firewall needs root (CAP_NET_ADMIN): run it with sudo, or print the rules "
                           "with --dry-run and apply them yourself")


def listener_uid(port: int, proc_net: Path = Path("/proc/net")) -> int | None:
    """The uid of the process listening on TCP `port` (the gateway), from /proc/net/tcp and tcp6."""
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, uid = fields[1], fields[3], fields[7]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return int(uid)
    return None


def _fail(binary: str, step: Step, result: subprocess.CompletedProcess) -> CaptureError:
    message = (result.stderr or result.stdout).strip().splitlines()
    detail = message[0] if message else f"exit status {result.returncode}"
    if "Permission denied" in detail or "must be root" in detail:
        return CaptureError("changing the firewall needs root (CAP_NET_ADMIN): run it with sudo, or print the "
                            "rules with --dry-run and apply them yourself")
    return CaptureError(f"{command_line(binary, step)} failed: {detail}")


def apply(steps_by_family: dict[str, list[Step]], found: dict[str, str], run: Runner = run_iptables) -> list[str]:
    """Run each family's steps (skipping those whose check holds); returns the commands that ran."""
    ran = []
    for family, steps in steps_by_family.items():
        binary = found[family]
        for step in steps:
            if step.check is not None and run([binary, *step.check]).returncode == 0:
                continue
            result = run([binary, *step.args])
            if result.returncode != 0:
                raise _fail(binary, step, result)
            ran.append(command_line(binary, step))
    return ran


def capture_on(selector: Selector, port: int, gateway_uid: int, found: dict[str, str],
               run: Runner = run_iptables) -> list[str]:
    plan = plan_on(selector, port, gateway_uid)
    return apply(dict.fromkeys(found, plan), found, run)


def capture_off(found: dict[str, str], run: Runner = run_iptables) -> list[str]:
    """Remove every tagged jump and the chain, in each family; returns the commands that ran."""
    removed = []
    for binary in found.values():
        steps = plan_off(list_rules(binary, "OUTPUT", run))
        if run([binary, "-t", "nat", "-n", "-L", CHAIN]).returncode != 0:
            steps = steps[:-2]  # no chain to flush and delete
        for step in steps:
            result = run([binary, *step.args])
            if result.returncode != 0:
                raise _fail(binary, step, result)
            removed.append(command_line(binary, step))
    return removed


def list_rules(binary: str, chain: str, run: Runner = run_iptables) -> list[str]:
    result = run([binary, "-t", "nat", "-S", chain])
    if result.returncode != 0:
        detail = (result.stderr or "").strip()
        if "Permission denied" in detail or "must be root" in detail:
            raise CaptureError("reading the firewall needs root (CAP_NET_ADMIN): run it with sudo")
        return []
    return [line for line in result.stdout.splitlines() if line.startswith("-A ")]


def capture_status(found: dict[str, str], run: Runner = run_iptables) -> dict:
    """Our rules per family: the jump from nat OUTPUT and the chain's rules."""
    families = {}
    for family, binary in found.items():
        jumps = [r for r in list_rules(binary, "OUTPUT", run) if _ours(r)]
        families[family] = {"jump": jumps, "rules": list_rules(binary, CHAIN, run)}
    active = any(f["jump"] and any("REDIRECT" in r for r in f["rules"]) for f in families.values())
    return {"active": active, "families": families}


def default_gateway_uid(port: int) -> int:
    """The gateway's uid: its listener's owner, else the caller's (the gateway usually runs as them)."""
    uid = listener_uid(port)
    return os.getuid() if uid is None else uid
