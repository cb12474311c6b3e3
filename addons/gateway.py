"""The mitmproxy script: `mitmdump -s addons/gateway.py` (what ./run_proxy.sh runs).

UpstreamTimeouts comes after the Gateway: it watches the flows the Gateway forwards.
"""

from addons.gateway_addon import Gateway
from addons.upstream_timeouts import UpstreamTimeouts

addons = [Gateway(), UpstreamTimeouts()]
