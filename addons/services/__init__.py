"""The operator's actions over the ledger, with typed inputs and outputs: the one layer the CLI and the API stand on."""
