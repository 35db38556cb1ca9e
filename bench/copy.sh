#!/usr/bin/env bash
# Time `speculum copy` against `skopeo copy` of the same 3-layer ~100 MB image
# between two local docker-registry instances (plain HTTP on loopback), in the
# same run, and print the ratio. Usage: bench/copy.sh [RUNS]
set -euo pipefail

RUNS=${1:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for tool in docker-registry skopeo python3; do
    command -v "$tool" >/dev/null || { echo "bench/copy.sh: $tool is required" >&2; exit 1; }
done

cargo build --release -p speculum-cli --manifest-path "$ROOT/Cargo.toml" >&2
SPECULUM="${CARGO_TARGET_DIR:-$ROOT/target}/release/speculum"

WORK=$(mktemp -d /tmp/speculum-bench-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_registry() { # name -> prints port
    local dir="$WORK/$1" port
    port=$(free_port)
    mkdir -p "$dir/storage"
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
  addr: 127.0.0.1:$port
  secret: bench
YAML
    docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && { echo "$port"; return; }
        sleep 0.1
    done
    echo "docker-registry did not start" >&2; cat "$dir/log" >&2; exit 1
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

A=$(start_registry a)
B=$(start_registry b)
"$SPECULUM" copy "oci:$WORK/layout:v1" "127.0.0.1:$A/bench/src:v1" --dest-insecure >/dev/null 2>&1

now() { date +%s.%N; }
total_s=0
total_k=0
for i in $(seq "$RUNS"); do
    t0=$(now)
    skopeo --insecure-policy copy -q --src-tls-verify=false --dest-tls-verify=false \
        "docker://127.0.0.1:$A/bench/src:v1" "docker://127.0.0.1:$B/bench/skopeo$i:v1" >/dev/null
    t1=$(now)
    "$SPECULUM" copy "127.0.0.1:$A/bench/src:v1" "127.0.0.1:$B/bench/speculum$i:v1" --insecure >/dev/null 2>&1
    t2=$(now)
    k=$(echo "$t1 - $t0" | bc -l); s=$(echo "$t2 - $t1" | bc -l)
    printf 'run %d: skopeo %.3fs  speculum %.3fs\n' "$i" "$k" "$s"
    total_k=$(echo "$total_k + $k" | bc -l); total_s=$(echo "$total_s + $s" | bc -l)
done
printf 'mean: skopeo %.3fs  speculum %.3fs  ratio (skopeo/speculum) %.2fx\n' \
    "$(echo "$total_k / $RUNS" | bc -l)" "$(echo "$total_s / $RUNS" | bc -l)" "$(echo "$total_k / $total_s" | bc -l)"
