"""Loaded into a test gateway with `-s`: every provider host resolves to a private address, as a
poisoned resolver or a DNS rebind would make it, through the UpstreamGuard's injectable resolver."""

from mitmproxy import ctx

ADDRESS = "10.255.0.1"


async def resolve(host: str, port: int) -> list[str]:
    return [ADDRESS]


class FakeDns:
    def running(self):
        ctx.master.addons.get("upstreamguard").resolver = resolve


addons = [FakeDns()]
