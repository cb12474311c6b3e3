"""Running the gateway: the lean launcher, the worker supervisor, the per-hook addon index."""
