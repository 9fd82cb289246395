#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 / Raspberry Pi OS Bookworm machine:
# the Debian packages the agent and its tests need (installed only when missing,
# with sudo when not root), then a .venv with the package and its dev tools.
# Called by `make demo` and `make test`; safe to run again at any time.
set -euo pipefail
cd "$(dirname "$0")/.."

# mosquitto: the tests and the demo start private brokers; libsystemd-dev,
# pkg-config and gcc build systemd-python; python3-venv/python3-dev make the venv;
# swig is the last of the Debian packages deploy/install.sh needs (lgpio's
# binding), so the installer run for real in the tests finds them all, as it
# would after its own apt-get on a bench (its sandbox has no network);
# iproute2 brings the sandbox's loopback up; strace is how bench/bench_sd_day.py
# counts the agent's writes (make bench); chromium (headless) is how the tests look at
# bench-ops report's HTML as a person would (tests/chromium_support.py); postgresql:
# the archive's tests start a real PostgreSQL server (initdb/pg_ctl in a temporary
# directory).
debian_packages=(mosquitto mosquitto-clients libsystemd-dev pkg-config gcc python3-venv python3-dev swig iproute2 strace chromium postgresql)

missing=()
for pkg in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Debian mosquitto package starts a system broker on port 1883; the agent's
# tests never use it (each starts its own on a free port), so it is left alone; the
# same for the cluster the postgresql package starts on port 5432.

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: $python is older than 3.11; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
# Reinstall only when the dependency list changed since the last install. The tests
# cover the city's tools too, so the venv has the `ops` extra beside `dev`.
stamp=.venv/.installed-pyproject
if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,ops]'
    cp pyproject.toml "$stamp"
fi

# A wheelhouse for the system Python (/usr/bin/python3, the interpreter the
# installer builds /opt/bench-agent/venv from): exactly the files of
# deploy/requirements.lock (hash-checked), plus setuptools, wheel and setuptools_scm
# (adafruit-extended-bus asks for it) to build the
# two that come as source. The deployment tests run deploy/install.sh for real
# inside a sandbox without network, where pip finds its packages here
# (PIP_NO_INDEX + PIP_FIND_LINKS), as a bench would behind a local mirror.
# Rebuilt only when the lock changed.
wheelhouse=.cache/wheelhouse
wheel_stamp=$wheelhouse/.built-from-lock
if [ ! -f "$wheel_stamp" ] || ! cmp -s deploy/requirements.lock "$wheel_stamp"; then
    echo "setup: filling $wheelhouse from deploy/requirements.lock (the installer's packages)"
    rm -rf .cache/system-venv "$wheelhouse"
    /usr/bin/python3 -m venv .cache/system-venv
    .cache/system-venv/bin/python -m pip download -q --disable-pip-version-check \
        --require-hashes -r deploy/requirements.lock -d "$wheelhouse"
    .cache/system-venv/bin/python -m pip download -q --disable-pip-version-check \
        -d "$wheelhouse" 'setuptools>=64' wheel setuptools_scm
    cp deploy/requirements.lock "$wheel_stamp"
fi
