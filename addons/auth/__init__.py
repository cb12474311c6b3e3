"""Who is calling: Tollgate credentials, signed tokens, the cached account records, and authentication,
which resolves a credential to its caller."""
