#!/usr/bin/env bash
# Push and pull of a 3-layer ~100 MB image (40 + 35 + 25 MiB of random data, gzip) with
# skopeo, against speculum-registry buildset (release build, TLS) and its peers in the same
# run: Debian's docker-registry (distribution 2.8) over TLS and plain HTTP, and zuul-registry
# 1.3.0 from PyPI (TLS) when it installs. Every registry is restarted on empty storage and a
# fresh loopback port before each push, so every push uploads everything; each pull goes into
# a fresh directory. Results: bench/out/results.md.
#
# Usage: bench/registry.sh [RUNS]   (default 3; at most 10)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/bench/out
RUNS=${1:-3}
((RUNS >= 1 && RUNS <= 10)) || { echo "RUNS must be 1..10" >&2; exit 2; }
STEP_TIMEOUT=300

for tool in skopeo umoci docker-registry openssl python3 curl; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing (scripts/install-test-deps.sh)" >&2; exit 1; }
done

mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/run.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "bench: $*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

now_ns() { date +%s%N; }

# Waits until something answers on 127.0.0.1:$1 (any HTTP status), for at most 30 s.
wait_port() {
    local port=$1 i
    for ((i = 0; i < 600; i++)); do
        if curl -sk -o /dev/null "https://127.0.0.1:$port/v2/" || curl -s -o /dev/null "http://127.0.0.1:$port/v2/"; then
            return 0
        fi
        sleep 0.05
    done
    log "nothing answers on port $port"
    return 1
}

# --- the image ------------------------------------------------------------------------------
IMAGE=$OUT/image
if [[ ! -f $IMAGE/.complete ]]; then
    log "building the image (40 + 35 + 25 MiB) in $IMAGE"
    rm -rf "$IMAGE"
    umoci init --layout "$IMAGE"
    umoci new --image "$IMAGE:v1"
    for mib in 40 35 25; do
        head -c "${mib}M" /dev/urandom >"$WORK/layer-$mib.bin"
        umoci insert --image "$IMAGE:v1" "$WORK/layer-$mib.bin" "/data/layer-$mib.bin"
        rm "$WORK/layer-$mib.bin"
    done
    touch "$IMAGE/.complete"
fi
IMAGE_BYTES=$(du -sb "$IMAGE/blobs" | cut -f1)
SRC_DIGEST=$(skopeo inspect --raw "oci:$IMAGE:v1" | sha256sum | cut -d' ' -f1)

# --- the registries -------------------------------------------------------------------------
# Each start_* sets PORT, TLS (yes/no), CERT_DIR, CREDS and records the pid in PIDS/SERVER.

log "building speculum-registry (release)"
cargo build --release --quiet --bin speculum-registry
SPECULUM=$ROOT/target/release/speculum-registry
SPECULUM_HTTP=no
if "$SPECULUM" buildset --help 2>/dev/null | grep -q -- --insecure-http; then
    SPECULUM_HTTP=yes
fi

# A self-signed certificate for the peers.
PEER_CERTS=$WORK/peer-certs
mkdir -p "$PEER_CERTS"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext 'subjectAltName = DNS:localhost,IP:127.0.0.1' \
    -keyout "$WORK/peer.key" -out "$PEER_CERTS/ca.crt" 2>/dev/null

start_speculum() { # $1 = tls|http
    local dir=$WORK/speculum args=()
    rm -rf "$dir"
    mkdir -p "$dir/certs"
    [[ $1 == http ]] && args+=(--insecure-http)
    "$SPECULUM" buildset --listen 127.0.0.1:0 --info-file "$dir/info.json" "${args[@]}" \
        >"$dir.log" 2>&1 &
    SERVER=$!
    PIDS+=("$SERVER")
    local i
    for ((i = 0; i < 3000; i++)); do
        [[ -s $dir/info.json ]] && python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$dir/info.json" 2>/dev/null && break
        sleep 0.01
    done
    read -r PORT CREDS < <(python3 - "$dir/info.json" "$dir/certs/ca.crt" <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
if info.get("cert"):
    open(sys.argv[2], "w").write(info["cert"])
print(info["port"], f'{info["username"]}:{info["password"]}')
PY
    )
    CERT_DIR=$dir/certs
    TLS=$([[ $1 == tls ]] && echo yes || echo no)
}

start_distribution() { # $1 = tls|http
    local dir=$WORK/distribution
    rm -rf "$dir"
    mkdir -p "$dir/storage"
    PORT=$(free_port)
    {
        echo "version: 0.1"
        echo "log: {level: warn, accesslog: {disabled: true}}"
        echo "storage: {filesystem: {rootdirectory: $dir/storage}, delete: {enabled: true}}"
        echo "http:"
        echo "  addr: 127.0.0.1:$PORT"
        echo "  secret: bench"
        if [[ $1 == tls ]]; then
            echo "  tls: {certificate: $PEER_CERTS/ca.crt, key: $WORK/peer.key}"
        fi
    } >"$dir/config.yml"
    docker-registry serve "$dir/config.yml" >"$dir.log" 2>&1 &
    SERVER=$!
    PIDS+=("$SERVER")
    wait_port "$PORT"
    CERT_DIR=$PEER_CERTS
    CREDS=
    TLS=$([[ $1 == tls ]] && echo yes || echo no)
}

ZUUL_VENV=$OUT/zuul-registry-venv
ZUUL=no
if [[ -x $ZUUL_VENV/bin/zuul-registry ]] ||
    { log "installing zuul-registry 1.3.0 into $ZUUL_VENV" &&
        python3 -m venv "$ZUUL_VENV" &&
        timeout 600 "$ZUUL_VENV/bin/pip" install -q zuul-registry==1.3.0; }; then
    ZUUL=yes
else
    log "zuul-registry did not install: it is left out"
fi

start_zuul() { # TLS only
    local dir=$WORK/zuul
    rm -rf "$dir"
    mkdir -p "$dir/data"
    PORT=$(free_port)
    cat >"$dir/registry.yaml" <<YAML
registry:
  address: '127.0.0.1'
  port: $PORT
  public-url: https://127.0.0.1:$PORT
  tls-cert: $PEER_CERTS/ca.crt
  tls-key: $WORK/peer.key
  secret: "%(ZUUL_REGISTRY_SECRET)"
  users:
    - name: writer
      pass: writerpass
      access: write
  storage:
    driver: filesystem
    root: $dir/data
YAML
    ZUUL_REGISTRY_SECRET=bench-secret "$ZUUL_VENV/bin/zuul-registry" -c "$dir/registry.yaml" serve \
        >"$dir.log" 2>&1 &
    SERVER=$!
    PIDS+=("$SERVER")
    wait_port "$PORT"
    CERT_DIR=$PEER_CERTS
    CREDS=writer:writerpass
    TLS=yes
}

stop_server() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
}

# --- one measurement ------------------------------------------------------------------------
# Prints "push_seconds pull_seconds" for one push and one pull.
measure() {
    local run=$1 dest src_args=() dest_args=() t0 t1 t2 back
    dest=docker://127.0.0.1:$PORT/bench/img:v$run
    if [[ $TLS == yes ]]; then
        dest_args+=(--dest-cert-dir "$CERT_DIR")
        src_args+=(--src-cert-dir "$CERT_DIR")
    else
        dest_args+=(--dest-tls-verify=false)
        src_args+=(--src-tls-verify=false)
    fi
    [[ -n $CREDS ]] && dest_args+=(--dest-creds "$CREDS")
    back=$WORK/pulled-$run
    rm -rf "$back"
    t0=$(now_ns)
    timeout "$STEP_TIMEOUT" skopeo --insecure-policy copy -q "${dest_args[@]}" "oci:$IMAGE:v1" "$dest" >&2
    t1=$(now_ns)
    timeout "$STEP_TIMEOUT" skopeo --insecure-policy copy -q "${src_args[@]}" "$dest" "oci:$back:v1" >&2
    t2=$(now_ns)
    local got
    got=$(sha256sum <"$(python3 - "$back" <<'PY'
import json, sys
d = sys.argv[1]
m = json.load(open(f"{d}/index.json"))["manifests"][0]["digest"].split(":")[1]
print(f"{d}/blobs/sha256/{m}")
PY
    )" | cut -d' ' -f1)
    [[ $got == "$SRC_DIGEST" ]] || { log "digest changed: $got != $SRC_DIGEST"; exit 1; }
    rm -rf "$back"
    python3 -c "import sys; print(f'{($t1-$t0)/1e9:.3f} {($t2-$t1)/1e9:.3f}')"
}

# --- the runs -------------------------------------------------------------------------------
declare -A PUSH PULL
NAMES=()
bench_one() { # $1 = label, $2... = start command
    local label=$1 run times
    shift
    NAMES+=("$label")
    PUSH[$label]=""
    PULL[$label]=""
    for ((run = 1; run <= RUNS; run++)); do
        "$@"
        times=$(measure "$run")
        stop_server
        PUSH[$label]+="${times% *} "
        PULL[$label]+="${times#* } "
        log "$label run $run: push ${times% *} s, pull ${times#* } s"
    done
}

bench_one "speculum buildset, TLS" start_speculum tls
[[ $SPECULUM_HTTP == yes ]] && bench_one "speculum buildset, HTTP" start_speculum http
bench_one "distribution 2.8.2, TLS" start_distribution tls
bench_one "distribution 2.8.2, HTTP" start_distribution http
[[ $ZUUL == yes ]] && bench_one "zuul-registry 1.3.0, TLS" start_zuul

# --- the report -----------------------------------------------------------------------------
REPORT=$OUT/results.md
{
    python3 - "$RUNS" "$IMAGE_BYTES" <<PY
import statistics, sys
runs, size = int(sys.argv[1]), int(sys.argv[2])
names = """$(printf '%s\n' "${NAMES[@]}")""".strip().splitlines()
push = {$(for n in "${NAMES[@]}"; do printf '"%s": [%s], ' "$n" "$(echo ${PUSH[$n]} | tr ' ' ,)"; done)}
pull = {$(for n in "${NAMES[@]}"; do printf '"%s": [%s], ' "$n" "$(echo ${PULL[$n]} | tr ' ' ,)"; done)}
print(f"Image: 3 gzip layers of random data, {size/1e6:.1f} MB in the layout; skopeo 1.9.3; {runs} runs; loopback.")
print("Every push goes to a freshly started registry with empty storage; every pull into a fresh directory.\n")
print("| registry | push (s) | pull (s) | push median | pull median |")
print("|---|---|---|---|---|")
for n in names:
    print(f"| {n} | {' / '.join(f'{x:.2f}' for x in push[n])} | {' / '.join(f'{x:.2f}' for x in pull[n])} "
          f"| {statistics.median(push[n]):.2f} | {statistics.median(pull[n]):.2f} |")
print()
print("Ratios of medians, peer time / speculum time (above 1: speculum is faster):\n")
print("| speculum | peer | push | pull |")
print("|---|---|---|---|")
for s in [n for n in names if n.startswith("speculum")]:
    for p in [n for n in names if not n.startswith("speculum")]:
        print(f"| {s} | {p} | {statistics.median(push[p])/statistics.median(push[s]):.2f}x "
              f"| {statistics.median(pull[p])/statistics.median(pull[s]):.2f}x |")
PY
} | tee "$REPORT"
log "report written to $REPORT"
