"""The mitmproxy script: `mitmdump -s addons/gateway.py` (what ./run_proxy.sh --web loads into mitmweb)."""

from addons.chain import gateway_chain
from addons.gateway_addon import Gateway

addons = gateway_chain(Gateway())
