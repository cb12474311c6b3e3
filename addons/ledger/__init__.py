"""The ledger: accounts, keys, wallets, immutable balance entries and request rows (Peewee)."""
