"""The mitmproxy script: `mitmdump -s addons/gateway.py` (what ./run_proxy.sh --web runs)."""

from addons.gateway_addon import Gateway
from addons.security import security_addons

gateway = Gateway()
addons = [*security_addons(lambda: gateway.catalog), gateway]
