# shellcheck shell=bash
# Sourced by scripts/stores/swift and scripts/stores/ceph: the parts both stores share.
#
# A store lives in one directory DIR. Every process `up` starts is a child of the script,
# with stdin from /dev/null and its output in DIR/log/NAME.log (never the caller's pipes,
# so a caller reading our output to its end is not held up by a server), and is listed in
# DIR/pids as `PID NAME STARTTIME`; STARTTIME (field 22 of /proc/PID/stat) lets `down`
# tell our process from a later one that reuses its number. `down` stops those PIDs and
# nothing else. `up --parent PID` also starts a watcher (DIR/watcher.pid) that runs
# `down` when PID exits, so a test binary that dies never leaves a store behind.
#
# The caller sets STORE (swift|ceph) and defines store_up (starts the store, writes
# DIR/s3.env); store_cmd then handles the command line.

set -euo pipefail

# Debian's python: the first python3 on PATH may be a pyenv shim that cannot import swift.
PY=/usr/bin/python3
# How long `down` waits after TERM before it sends KILL.
STOP_GRACE_SECONDS=10

die() {
    echo "$STORE: $*" >&2
    exit 1
}

note() {
    echo "$STORE: $*" >&2
}

usage() {
    cat >&2 <<EOF
usage: $0 up DIR [--parent PID] [--purge]   start the store under DIR, write DIR/s3.env
       $0 down DIR [--purge]                stop the PIDs in DIR/pids (--purge: remove DIR)
--parent PID  stop the store (as \`down\` does) when process PID exits
--purge       with --parent: also remove DIR then
EOF
    exit 2
}

# starttime PID: field 22 of /proc/PID/stat, or nothing when PID is gone or a zombie.
starttime() {
    local stat rest fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    rest=${stat##*) }
    read -ra fields <<<"$rest"
    [[ ${fields[0]} == Z ]] && return 0
    echo "${fields[19]}"
}

# spawn NAME COMMAND...: starts COMMAND in the background, logging to DIR/log/NAME.log, and
# records it in DIR/pids. Sets SPAWNED to its PID.
spawn() {
    local name=$1
    shift
    "$@" </dev/null >>"$DIR/log/$name.log" 2>&1 &
    SPAWNED=$!
    echo "$SPAWNED $name $(starttime "$SPAWNED")" >>"$DIR/pids"
}

# forget PID: drops PID (which has exited) from DIR/pids, so that waits no longer watch it.
forget() {
    awk -v p="$1" '$1 != p' "$DIR/pids" >"$DIR/pids.tmp"
    mv "$DIR/pids.tmp" "$DIR/pids"
}

# alive PID: whether PID is still the process we started (same start time, not a zombie).
alive() {
    local pid=$1 want
    want=$(awk -v p="$pid" '$1 == p { print $3 }' "$DIR/pids")
    [[ -n $want && $(starttime "$pid") == "$want" ]]
}

# free_ports N: N distinct TCP ports on 127.0.0.1 that were free a moment ago.
free_ports() {
    "$PY" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds; fails with
# the logs after SECONDS, or as soon as a process in DIR/pids has exited.
wait_for() {
    local seconds=$1 what=$2 deadline pid name _ out
    shift 2
    deadline=$((SECONDS + seconds))
    until out=$("$@" 2>&1); do
        while read -r pid name _; do
            alive "$pid" || fail "$name (pid $pid) exited while waiting for $what"
        done <"$DIR/pids"
        ((SECONDS < deadline)) || fail "no $what after ${seconds} s; the last try said: ${out:-nothing}"
        sleep 0.2
    done
}

# tcp_open PORT: whether something accepts connections on 127.0.0.1:PORT.
tcp_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# s3 METHOD PATH [CURL ARGS...]: a path-style S3 request signed with SigV4 (credentials
# from the S3_* variables); prints the body, fails on an HTTP error. The credentials go in
# the URL, percent-encoded, because curl splits --user at the first colon and Swift's
# access keys are ACCOUNT:USER. The payload is not signed (curl 7.88 sends no
# x-amz-content-sha256 of its own, and both stores require one).
s3() {
    local method=$1 path=$2
    shift 2
    curl -sS --fail-with-body --max-time 10 -X "$method" \
        --aws-sigv4 "aws:amz:$S3_REGION:s3" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
        "$@" "${S3_ENDPOINT%%://*}://$(urlencode "$S3_ACCESS_KEY_ID"):$(urlencode "$S3_SECRET_ACCESS_KEY")@${S3_ENDPOINT#*://}$path"
}

# urlencode STRING: STRING with everything but [A-Za-z0-9._~-] percent-encoded.
urlencode() {
    local s=$1 out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case $c in
        [A-Za-z0-9._~-]) out+=$c ;;
        *) out+=$(printf '%%%02X' "'$c") ;;
        esac
    done
    echo "$out"
}

# s3_probe: create a bucket, put, get and delete an object, delete the bucket: the whole
# path through the store, not just its front door.
s3_probe() {
    local bucket="speculum-probe-$$" body
    s3 GET / >/dev/null &&
        s3 PUT "/$bucket" >/dev/null &&
        s3 PUT "/$bucket/probe" --data-binary probe -H 'Content-Type: text/plain' >/dev/null &&
        body=$(s3 GET "/$bucket/probe") &&
        [[ $body == probe ]] &&
        s3 DELETE "/$bucket/probe" >/dev/null &&
        s3 DELETE "/$bucket" >/dev/null
}

# write_env: DIR/s3.env from the S3_* variables, written last and atomically: its presence
# means the store is up.
write_env() {
    cat >"$DIR/s3.env.tmp" <<EOF
S3_ENDPOINT=$S3_ENDPOINT
S3_ACCESS_KEY_ID=$S3_ACCESS_KEY_ID
S3_SECRET_ACCESS_KEY=$S3_SECRET_ACCESS_KEY
S3_REGION=$S3_REGION
STORE=$STORE
EOF
    mv "$DIR/s3.env.tmp" "$DIR/s3.env"
}

# log_tails: the last lines of every log in DIR/log.
log_tails() {
    local log
    for log in "$DIR"/log/*.log; do
        [[ -s $log ]] || continue
        echo "--- ${log#"$DIR"/} (last 30 lines) ---"
        tail -n 30 "$log"
    done
}

# fail MESSAGE: stops what `up` started, prints MESSAGE and the log tails, exits 1.
fail() {
    note "$*"
    log_tails >&2
    store_down 0
    exit 1
}

# stop_pids: stops every process in DIR/pids that is still ours, the last started first
# (a Ceph OSD stops at once while its monitor still answers, and waits for it otherwise),
# each with TERM; whatever is left after STOP_GRACE_SECONDS in all gets KILL.
stop_pids() {
    [[ -f $DIR/pids ]] || return 0
    local pid deadline
    local -a pids
    mapfile -t pids < <(tac "$DIR/pids" | cut -d' ' -f1)
    deadline=$((SECONDS + STOP_GRACE_SECONDS))
    for pid in "${pids[@]}"; do
        alive "$pid" || continue
        kill -TERM "$pid" 2>/dev/null || true
        while alive "$pid" && ((SECONDS < deadline)); do
            sleep 0.1
        done
    done
    for pid in "${pids[@]}"; do
        if alive "$pid"; then
            note "pid $pid still there ${STOP_GRACE_SECONDS} s after TERM: KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# down [--purge]: stops the store and its watcher (unless we are the watcher).
store_down() {
    local purge=$1 pid
    stop_pids
    if [[ -f $DIR/watcher.pid ]]; then
        read -r pid _ <"$DIR/watcher.pid"
        if [[ $pid != "$BASHPID" ]] && alive_watcher "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    fi
    if [[ $purge == 1 && -f $DIR/.speculum-store ]]; then
        rm -rf "$DIR"
    fi
}

alive_watcher() {
    local pid=$1 want
    read -r _ want <"$DIR/watcher.pid"
    [[ $(starttime "$pid") == "$want" ]]
}

# watch_parent PARENT PURGE: in the background, waits for PARENT to exit, then runs down.
watch_parent() {
    local parent=$1 purge=$2 since
    since=$(starttime "$parent")
    [[ -n $since ]] || fail "--parent $parent: no such process"
    (
        while [[ $(starttime "$parent") == "$since" ]]; do
            sleep 0.5
        done
        echo "parent $parent exited: stopping the store"
        store_down "$purge"
    ) </dev/null >>"$DIR/log/watcher.log" 2>&1 &
    echo "$! $(starttime $!)" >"$DIR/watcher.pid"
}

# store_cmd "$@": the command line (up|down DIR [options]).
store_cmd() {
    (($# >= 2)) || usage
    local cmd=$1 parent="" purge=0 start
    DIR=$2
    shift 2
    while (($#)); do
        case $1 in
        --parent)
            (($# >= 2)) || usage
            parent=$2
            shift 2
            ;;
        --purge)
            purge=1
            shift
            ;;
        *) usage ;;
        esac
    done
    case $cmd in
    up)
        mkdir -p "$DIR"
        DIR=$(cd "$DIR" && pwd)
        [[ ! -e $DIR/pids ]] || die "$DIR/pids exists: run \`$0 down $DIR\` first, or use a new DIR"
        touch "$DIR/.speculum-store" "$DIR/pids"
        mkdir -p "$DIR/log"
        if [[ -n $parent ]]; then
            watch_parent "$parent" "$purge"
        fi
        start=$(date +%s.%N)
        store_up
        note "up in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s: $DIR/s3.env"
        ;;
    down)
        [[ -d $DIR ]] || die "$DIR: no such directory"
        DIR=$(cd "$DIR" && pwd)
        store_down "$purge"
        ;;
    *) usage ;;
    esac
}
