"""The admin process: Lava's REST API over addons/services, the dashboard and /metrics, on uvicorn.

It runs beside the gateway's workers, never on the proxy's event loop: the gateway passes `/v1/*`
requests addressed to itself (all but the forward endpoint) on to this process's listener.
"""
