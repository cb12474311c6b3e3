"""Reading usage off the wire: one reader per API family (readers.py's table), over incremental SSE framing."""
