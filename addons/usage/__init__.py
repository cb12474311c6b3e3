"""Reading usage off the wire: one reader per API family, over incremental SSE framing."""
