"""Who is calling: Tollgate credentials, signed tokens, and the cached ledger reads that resolve them."""
