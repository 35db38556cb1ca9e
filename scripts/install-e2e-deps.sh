#!/usr/bin/env bash
# Installs what `make e2e` (tests/zuul) needs, and nothing that is already there:
#   - Debian packages: ZooKeeper, PostgreSQL, bubblewrap, the node's sshd and sudo, git,
#     the container clients and daemons the jobs run on the node, the reference registry
#     that stands in for Docker Hub; apt-get runs only when `dpkg-query` says a package is
#     missing, and `apt-get update` at most once;
#   - Zuul from PyPI in its own venv under $E2E_ROOT (default /opt/speculum-e2e), built
#     from Debian's /usr/bin/python3.11: the executor runs Ansible inside bubblewrap,
#     which binds /usr and /opt-style fixed paths but hides /tmp and pyenv's interpreter;
#   - the Ansible versions Zuul runs jobs with (`zuul-manage-ansible`), in $E2E_ROOT/ansible.
# Each Python step is recorded in a stamp file holding what it installed, so a second run
# changes nothing and takes a few seconds.
set -euo pipefail

cd "$(dirname "$0")/.."

E2E_ROOT=${E2E_ROOT:-/opt/speculum-e2e}
ZUUL_SPEC='zuul==14.3.0'
BASE_PYTHON=/usr/bin/python3.11

PACKAGES=(
    zookeeper libslf4j-java        # ZooKeeper (TLS needs netty-codec, in libnetty-java)
    postgresql                     # Zuul's database (a private cluster per run)
    bubblewrap                     # the executor's sandbox
    openssh-server sudo            # the static node: sshd on loopback, user zuul with sudo
    git                            # bare repositories behind the git connection
    python3.11 python3.11-venv     # the Zuul venv's base interpreter
    docker.io skopeo podman buildah # container tools the jobs use on the node
    docker-registry                # stands in for Docker Hub and the like
    busybox-static                 # a shell for the base image made locally
    iproute2 util-linux            # ip, unshare, nsenter
    openssl                        # certificates for ZooKeeper and the registries
    curl
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
        missing+=("$pkg")
    fi
done

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
fi

if ((${#missing[@]})); then
    echo "install-e2e-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Another install may hold the dpkg lock for a while: wait for it, bounded.
    apt_opts=(-o DPkg::Lock::Timeout=600)
    "${sudo[@]}" apt-get "${apt_opts[@]}" update -q
    "${sudo[@]}" apt-get "${apt_opts[@]}" install -y -q --no-install-recommends "${missing[@]}"
else
    echo "install-e2e-deps: Debian packages present"
fi

# The Zuul venv. Its stamp holds the requirement it was built for.
VENV=$E2E_ROOT/venv
STAMP=$VENV/.speculum-e2e-stamp
if [[ $(cat "$STAMP" 2>/dev/null || true) != "$ZUUL_SPEC" ]]; then
    echo "install-e2e-deps: installing $ZUUL_SPEC into $VENV"
    "${sudo[@]}" mkdir -p "$E2E_ROOT"
    if [[ ! -x $VENV/bin/python ]]; then
        "${sudo[@]}" "$BASE_PYTHON" -m venv "$VENV"
    fi
    "${sudo[@]}" "$VENV/bin/python" -m pip install -q --upgrade pip
    "${sudo[@]}" "$VENV/bin/python" -m pip install -q "$ZUUL_SPEC"
    echo "$ZUUL_SPEC" | "${sudo[@]}" tee "$STAMP" >/dev/null
else
    echo "install-e2e-deps: $VENV up to date"
fi

# Ansible for the executor. Rebuilt whenever the venv was.
ANSIBLE_ROOT=$E2E_ROOT/ansible
ANSIBLE_STAMP=$ANSIBLE_ROOT/.speculum-e2e-stamp
if [[ $(cat "$ANSIBLE_STAMP" 2>/dev/null || true) != "$ZUUL_SPEC" ]]; then
    echo "install-e2e-deps: installing Zuul's Ansible versions into $ANSIBLE_ROOT"
    "${sudo[@]}" mkdir -p "$ANSIBLE_ROOT"
    "${sudo[@]}" "$VENV/bin/zuul-manage-ansible" -r "$ANSIBLE_ROOT"
    echo "$ZUUL_SPEC" | "${sudo[@]}" tee "$ANSIBLE_STAMP" >/dev/null
else
    echo "install-e2e-deps: $ANSIBLE_ROOT up to date"
fi
