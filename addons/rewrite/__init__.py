"""Lava's rewrite endpoint: client formats translated to and from provider formats through the hub (hub.py)."""
