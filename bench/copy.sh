#!/usr/bin/env bash
# Time `speculum copy` against `skopeo copy` of the same 3-layer ~100 MB image
# between two local registries (plain HTTP on loopback), in the same run, and
# print the ratio. Both tools copy to a registry started for that copy alone:
# skopeo keeps a blob-info cache keyed by registry address that would
# otherwise turn its later runs into mounts.
#
# Usage: bench/copy.sh [RUNS] [REGISTRIES]
#   REGISTRIES: "distribution speculum" (default), or either one.
set -euo pipefail

RUNS=${1:-3}
KINDS=${2:-distribution speculum}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for tool in docker-registry skopeo python3 bc curl; do
    command -v "$tool" >/dev/null || { echo "bench/copy.sh: $tool is required" >&2; exit 1; }
done

cargo build --release -p speculum-cli -p speculum-registry-bin --manifest-path "$ROOT/Cargo.toml" >&2
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"
SPECULUM="$TARGET/speculum"
REGISTRY="$TARGET/speculum-registry"

WORK=$(mktemp -d /tmp/speculum-bench-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start KIND NAME -> sets PORT and PUSH_CREDS
start() {
    local kind=$1 dir="$WORK/$2"
    mkdir -p "$dir/storage"
    if [ "$kind" = distribution ]; then
        PORT=$(free_port)
        PUSH_CREDS=""
        cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
  secret: bench
YAML
        docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 100); do
            curl -fs "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1 && return
            sleep 0.1
        done
    else
        "$REGISTRY" buildset --listen 127.0.0.1:0 --insecure-http --root "$dir/storage" \
            --info-file "$dir/info.json" >"$dir/log" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 100); do
            if read -r PORT PASS < <(python3 -c "import json; d=json.load(open('$dir/info.json')); print(d['port'], d['password'])" 2>/dev/null); then
                PUSH_CREDS="zuul:$PASS"
                return
            fi
            sleep 0.1
        done
    fi
    echo "$kind registry did not start" >&2; cat "$dir/log" >&2; exit 1
}

# A 3-layer image of incompressible data (~100 MB) as an OCI layout.
python3 - "$WORK/layout" <<'PY'
import hashlib, json, os, sys
root = sys.argv[1]
blobs = os.path.join(root, "blobs", "sha256")
os.makedirs(blobs)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)
layers = []
for size in (50 << 20, 30 << 20, 20 << 20):
    d, n = put(os.urandom(size))
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n})
cfg = json.dumps({"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
                  "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]},
                  "config": {}}).encode()
cd, cn = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
                  "layers": layers}).encode()
md, mn = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
           "digest": md, "size": mn, "annotations": {"org.opencontainers.image.ref.name": "v1"}}]},
          open(os.path.join(root, "index.json"), "w"))
open(os.path.join(root, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
PY

now() { date +%s.%N; }
creds() { [ -n "$1" ] && echo "$2" "$1" || true; }

for kind in $KINDS; do
    start "$kind" "$kind-src"
    SRC=$PORT
    # shellcheck disable=SC2046
    "$SPECULUM" copy "oci:$WORK/layout:v1" "127.0.0.1:$SRC/bench/src:v1" --dest-insecure \
        $(creds "$PUSH_CREDS" --dest-creds) >/dev/null 2>&1
    total_s=0
    total_k=0
    for i in $(seq "$RUNS"); do
        start "$kind" "$kind-k$i"; K=$PORT; KC=$PUSH_CREDS
        start "$kind" "$kind-s$i"; S=$PORT; SC=$PUSH_CREDS
        t0=$(now)
        # shellcheck disable=SC2046
        skopeo --insecure-policy copy -q --src-tls-verify=false --dest-tls-verify=false \
            $(creds "$KC" --dest-creds) \
            "docker://127.0.0.1:$SRC/bench/src:v1" "docker://127.0.0.1:$K/bench/app:v1" >/dev/null
        t1=$(now)
        # shellcheck disable=SC2046
        "$SPECULUM" copy "127.0.0.1:$SRC/bench/src:v1" "127.0.0.1:$S/bench/app:v1" --insecure \
            $(creds "$SC" --dest-creds) >/dev/null 2>&1
        t2=$(now)
        k=$(echo "$t1 - $t0" | bc -l); s=$(echo "$t2 - $t1" | bc -l)
        printf '%s run %d: skopeo %.3fs  speculum %.3fs\n' "$kind" "$i" "$k" "$s"
        total_k=$(echo "$total_k + $k" | bc -l); total_s=$(echo "$total_s + $s" | bc -l)
    done
    printf '%s mean: skopeo %.3fs  speculum %.3fs  ratio (skopeo/speculum) %.2fx\n' "$kind" \
        "$(echo "$total_k / $RUNS" | bc -l)" "$(echo "$total_s / $RUNS" | bc -l)" "$(echo "$total_k / $total_s" | bc -l)"
done
