"""The mitmproxy script: `mitmdump -s addons/gateway.py` (what ./run_proxy.sh --web loads into mitmweb)."""

from addons.proxy.chain import gateway_chain
from addons.proxy.gateway_addon import Gateway

addons = gateway_chain(Gateway())
