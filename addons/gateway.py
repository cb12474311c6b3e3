"""The mitmproxy script: `mitmdump -s addons/gateway.py` (what ./run_proxy.sh runs).

Order matters: UpstreamRetries changes a provider's answer before the Gateway meters it, and
UpstreamTimeouts watches the flows the Gateway forwards.
"""

from addons.gateway_addon import Gateway
from addons.upstream_retries import UpstreamRetries
from addons.upstream_timeouts import UpstreamTimeouts

addons = [UpstreamRetries(), Gateway(), UpstreamTimeouts()]
