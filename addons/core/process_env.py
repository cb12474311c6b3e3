"""Environment variables the processes of one gateway hand each other."""

PID_ENV = "TOLLGATE_GATEWAY_PID"  # the worker supervisor's pid, which data/gateway.json then names
WORKER_ENV = "TOLLGATE_WORKER"  # a worker's number (1..N) under the supervisor; worker 1 runs the admin process
# A secret the gateway adds to the requests it passes to the admin process, so the admin's own throttle of failed
# authentications (per client address) leaves them to the gateway's, which sees the real client address.
PASSTHROUGH_ENV = "TOLLGATE_ADMIN_PASSTHROUGH"
PASSTHROUGH_HEADER = "x-tollgate-passthrough"


def passthrough_secret() -> str:
    """The instance's pass-through secret: made by the first process that asks, inherited by its children."""
    import os
    import secrets

    return os.environ.setdefault(PASSTHROUGH_ENV, secrets.token_hex(16))
