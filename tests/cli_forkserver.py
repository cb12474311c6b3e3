"""`tollgate` runs for the tests, each in a process of its own, forked from one that has imported the CLI already.

A `tollgate` process spends most of its half second importing (mitmproxy, genai-prices, rich, peewee); the
suite runs the CLI a few thousand times. This server imports `addons.cli.main` once and, for each request on
its Unix socket, forks: the fork (the waiter) forks again into the run, with the request's argv, environment,
working directory, stdin and fresh stdout/stderr files, and which ends as `tollgate` ends (`sys.exit(main())`,
atexit handlers included); the waiter sends back its exit code and output. Every run is thus a new process,
as when a user types the command, minus only the imports. Nothing here starts a thread before forking.

Protocol: one JSON line in ({"args", "env", "cwd", "input"}), one JSON object back ({"returncode", "stdout",
"stderr"}), then the connection closes. Started by tests/harness.py (`run_tollgate`), with the socket's
path as its only argument; it prints "ready" once it listens.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import sys
import tempfile
import traceback

import addons.cli.main as cli_main  # the imports every run shares
import addons.cli.output as cli_output


def _run(request: dict) -> None:
    """In the grandchild: become `tollgate ARGS` and end as it ends."""
    stdin = tempfile.TemporaryFile()
    stdin.write((request.get("input") or "").encode())
    stdin.seek(0)
    os.dup2(stdin.fileno(), 0)
    os.dup2(request["stdout_fd"], 1)
    os.dup2(request["stderr_fd"], 2)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = ["tollgate", *request["args"]]
    importlib.reload(cli_output)  # its console reads COLUMNS, NO_COLOR, ... when made: made again, in this env
    try:
        sys.exit(cli_main.main())
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(1)


def _serve(conn: socket.socket) -> None:
    """In the waiter: fork the run, wait for it, send back what it did."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # this one waits for its run
    request = json.loads(conn.makefile("rb").readline())
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run({**request, "stdout_fd": out.fileno(), "stderr_fd": err.fileno()})  # exits as the interpreter does
    _, status = os.waitpid(pid, 0)
    out.seek(0)
    err.seek(0)
    conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status),
                             "stdout": out.read().decode(errors="replace"),
                             "stderr": err.read().decode(errors="replace")}).encode())
    conn.close()


def main() -> None:
    path = sys.argv[1]
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # waiters are reaped by the kernel
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:
            server.close()
            _serve(conn)  # in the run, `tollgate`'s SystemExit ends the process from here, as in a real one
            os._exit(0)
        conn.close()


if __name__ == "__main__":
    main()
