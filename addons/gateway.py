"""The mitmproxy script: `mitmdump -s addons/gateway.py` (what ./run_proxy.sh runs)."""

from addons.gateway_addon import Gateway

addons = [Gateway()]
