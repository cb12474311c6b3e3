"""Environment variables the processes of one gateway hand each other."""

PID_ENV = "TOLLGATE_GATEWAY_PID"  # the worker supervisor's pid, which data/gateway.json then names
