#!/usr/bin/env bash
# Installs what the tests need, and nothing that is already there:
#   - Debian packages (container clients, the reference registry, busybox for test images,
#     the object stores of scripts/stores/), installed with apt-get only when `dpkg-query`
#     says one is missing; `apt-get update` runs at most once;
#   - the Python venv .venv with requirements-test.txt (ansible-core, zuul, pytest,
#     ansible-lint), reinstalled only when the requirements file changed.
# Safe to run again and again: a second run changes nothing and takes about a second.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh
# shellcheck source=scripts/lib/store-packages.sh
source scripts/lib/store-packages.sh

PACKAGES=(
    skopeo podman buildah          # real clients
    docker-registry                # distribution, the reference registry
    docker.io                      # a private dockerd per test
    umoci                          # OCI layouts
    busybox-static                 # a shell inside test images
    apache2-utils                  # htpasswd
    iproute2                       # ip netns
    openssl                        # certificate checks
    curl                           # bench readiness probes; S3 requests (--aws-sigv4)
    "${STORE_PACKAGES[@]}"         # scripts/stores/: Swift and Ceph (scripts/lib/store-packages.sh)
    shellcheck                     # lint scripts/
    python3-venv                   # the .venv below
    plantuml                       # make docs: the sequence diagram
)

install_missing install-test-deps "${PACKAGES[@]}"

VENV=.venv
REQUIREMENTS=requirements-test.txt
STAMP=$VENV/.requirements.sha256

if [[ ! -f $REQUIREMENTS ]]; then
    echo "install-test-deps: $REQUIREMENTS is missing" >&2
    exit 1
fi
if [[ ! -x $VENV/bin/python ]]; then
    echo "install-test-deps: creating $VENV"
    python3 -m venv "$VENV"
fi
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [[ $want != "$have" ]]; then
    echo "install-test-deps: installing $REQUIREMENTS into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r "$REQUIREMENTS"
    echo "$want" >"$STAMP"
else
    echo "install-test-deps: $VENV up to date"
fi
