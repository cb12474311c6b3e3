#!/usr/bin/env bash
# Set up and run Tollgate.
#   ./run_proxy.sh [--workers N] [mitmproxy args...]
#                                        set up .venv and the ledger, then run the gateway on a lean
#                                        mitmproxy (tollgate-proxy): N processes sharing the port
#                                        (SO_REUSEPORT, supervised by addons/runtime/workers.py); default one
#                                        per core when Redis is configured (shared holds), else one
#   ./run_proxy.sh --web [args...]       mitmweb instead, one process with all of mitmproxy's addons
#                                        and its UI on 127.0.0.1:8081 (for interactive inspection)
#   ./run_proxy.sh --test [pytest args]  set up .venv with test dependencies and run the test suite
#   ./run_proxy.sh --which-python        print the Python >= 3.12 that would build .venv
set -euo pipefail
cd "$(dirname "$0")"

python_ok() {  # a working interpreter of Python >= 3.12 (pyenv shims of absent versions fail here)
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

find_python() {
    local candidate root
    for candidate in python3.13 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            command -v "$candidate"; return 0
        fi
    done
    root=$( (command -v pyenv >/dev/null 2>&1 && pyenv root) || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    for candidate in $(ls -d "$root"/versions/3.1[2-9]* 2>/dev/null | sort -rV); do
        if python_ok "$candidate/bin/python"; then
            echo "$candidate/bin/python"; return 0
        fi
    done
    return 1
}

mode=run
case "${1:-}" in
    --web) mode=web; shift ;;
    --test) mode=test; shift ;;
    --which-python) mode=which ;;
esac

workers=""
if [ "$mode" = run ]; then  # --workers N / --workers=N, anywhere among the arguments
    args=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --workers) [ $# -ge 2 ] || { echo "run_proxy.sh: --workers needs a number" >&2; exit 2; }
                       workers=$2; shift 2 ;;
            --workers=*) workers=${1#--workers=}; shift ;;
            *) args+=("$1"); shift ;;
        esac
    done
    set -- ${args[@]+"${args[@]}"}
    if [ -n "$workers" ] && ! [[ "$workers" =~ ^([1-9][0-9]*|auto)$ ]]; then
        echo "run_proxy.sh: --workers needs a positive number or auto, not '$workers'" >&2; exit 2
    fi
    [ -n "$workers" ] || workers=auto  # one per core with Redis configured, else one
fi

no_python() {
    echo "run_proxy.sh: Tollgate needs Python >= 3.12 (mitmproxy 12 requires it), and none was found." >&2
    echo "Install python3.12 or python3.13 on PATH, or with pyenv: pyenv install 3.12" >&2
    exit 1
}
if [ "$mode" = which ]; then
    find_python || no_python
    exit 0
fi

if [ -x .venv/bin/python ] && ! python_ok .venv/bin/python; then
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    python=$(find_python) || no_python
    echo "Creating .venv with $python" >&2
    "$python" -m venv .venv
fi

installed() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }
if [ "$mode" = test ]; then
    installed .venv/.installed-test || {
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
        touch .venv/.installed-test .venv/.installed
    }
else
    installed .venv/.installed || installed .venv/.installed-test || {
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
        touch .venv/.installed
    }
fi

if [ "$mode" = test ]; then
    exec .venv/bin/python -m pytest "$@"
fi

.venv/bin/tollgate init  # once, before any worker starts
defaults=(--listen-host 127.0.0.1 --listen-port 8080)
if [ "$mode" = web ]; then
    # mitmweb prints its UI address with the login token on one line ("Web server listening at
    # http://127.0.0.1:8081/?token=..."); no browser is opened unless the user's own arguments say so
    browser=(--set web_open_browser=false)
    for arg in "$@"; do
        case "$arg" in *web_open_browser*|--web-open-browser|--no-web-open-browser) browser=() ;; esac
    done
    # a capture mode this host cannot run: one line, as tollgate-proxy says it, before mitmweb starts
    .venv/bin/python -m addons.host.capture_modes "${defaults[@]}" "$@" || exit 1
    exec .venv/bin/mitmweb "${defaults[@]}" -s addons/gateway.py ${browser[@]+"${browser[@]}"} "$@"
else
    exec .venv/bin/python -m addons.runtime.workers --workers "$workers" -- "${defaults[@]}" "$@"
fi
