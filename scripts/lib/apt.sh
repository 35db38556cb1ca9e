# shellcheck shell=bash
# Sourced by the install-*-deps.sh scripts: install_missing NAME PACKAGE... installs with
# apt-get the Debian packages that `dpkg-query` does not list as installed, and nothing
# when all are (`apt-get update` then does not run either). NAME prefixes the messages.
install_missing() {
    local name=$1 pkg
    shift
    local missing=()
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        echo "$name: Debian packages present"
        return 0
    fi
    echo "$name: installing ${missing[*]}"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 "${sudo[@]}" apt-get update -q
    timeout 900 "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}
