#!/usr/bin/env bash
# Installs what `make bench` needs, and nothing that is already there:
#   - Debian packages (the load generators, the peer registry, the image tools, the chart
#     library, the object stores of section 9), installed with apt-get only when
#     `dpkg-query` says one is missing; `apt-get update` runs at most once;
#   - zuul-registry 1.3.0 from PyPI in a venv of its own, bench/out/zuul-registry-venv,
#     made with Debian's python3 and installed only when its executable is missing.
# Safe to run again and again: a second run changes nothing and takes about a second.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh
# shellcheck source=scripts/lib/store-packages.sh
source scripts/lib/store-packages.sh

PACKAGES=(
    wrk                 # small-request load
    curl                # blob transfers
    skopeo umoci        # client-level pushes and pulls, OCI layouts
    docker-registry     # distribution, the reference registry
    apache2-utils       # htpasswd for distribution
    openssl             # the peers' self-signed certificate
    python3-matplotlib  # the chart in doc/benchmarks.png
    python3-venv        # the zuul-registry venv below
    "${STORE_PACKAGES[@]}"  # section 9: Swift and Ceph (scripts/lib/store-packages.sh)
)

install_missing install-bench-deps "${PACKAGES[@]}"

VENV=bench/out/zuul-registry-venv
ZUUL_REGISTRY=zuul-registry==1.3.0
if [[ -x $VENV/bin/zuul-registry ]]; then
    echo "install-bench-deps: $VENV present"
else
    echo "install-bench-deps: installing $ZUUL_REGISTRY into $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    /usr/bin/python3 -m venv "$VENV"
    timeout 600 "$VENV/bin/python" -m pip install -q "$ZUUL_REGISTRY"
fi
