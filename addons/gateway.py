"""The mitmproxy script: `mitmdump -s addons/gateway.py` (what ./run_proxy.sh --web loads into mitmweb)."""

from addons.core import metrics_dir
from addons.proxy import mitmproxy_internals
from addons.proxy.chain import gateway_chain
from addons.proxy.gateway_addon import Gateway

metrics_dir.prepare()  # kept when mitmweb reloads the script
mitmproxy_internals.install(web=mitmproxy_internals.under_mitmweb())  # refuses an unsupported mitmproxy
addons = gateway_chain(Gateway())
