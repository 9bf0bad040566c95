#!/usr/bin/env bash
# Make a fresh Debian 12 machine ready for README.md's commands, from this checkout:
# the system packages, a virtualenv .venv holding the harness (editable) with its test
# extras (Debian's Python refuses a plain `pip install`: PEP 668), and the C tests built.
# Run as root (the harness needs ptrace and namespaces); then `. .venv/bin/activate`.
set -euo pipefail
cd "$(dirname "$0")"

# gcc, make and libc.a (build-essential, libc6-dev) for the tests and the static ns init;
# python3-venv for .venv; python3-yaml so ./runner.py also runs without the venv;
# iproute2 to inspect a test's network namespace; redis-server for tests/real.
PACKAGES=(build-essential libc6-dev python3 python3-venv python3-yaml iproute2 redis-server)

if [ "$(id -u)" -ne 0 ]; then
	echo "bootstrap.sh: run as root (the harness needs ptrace and namespaces)" >&2
	exit 1
fi
if command -v apt-get >/dev/null; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
else
	echo "bootstrap.sh: no apt-get here: install the equivalents of ${PACKAGES[*]}" >&2
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q -e '.[test]'
make -C zdtm -j"$(nproc)"
make -C flavors
echo "bootstrap.sh: ready; now: . .venv/bin/activate"
