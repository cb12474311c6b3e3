"""The proxy chain: the mitmproxy addons in chain order (chain.py), the Gateway's request path, the guards and the names they share (flow_keys.py)."""
