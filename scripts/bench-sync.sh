#!/usr/bin/env bash
# Benchmarks live sync between two real syncfs mounts against rsync and xdelta3.
#
# Two network namespaces joined by a veth pair (10.231.0.1/24 <-> 10.231.0.2/24) stand for
# the two computers. Each syncfs daemon runs with `nsenter --net=/run/netns/NS`, which
# changes only the network namespace, so its FUSE mount is visible here. (`ip netns exec`
# also unshares the mount namespace: a FUSE mount made under it is invisible outside, and
# one made outside is copied into every such namespace created while it exists, which here
# (private root mount, no propagation) keeps the FUSE session alive after syncfs's own
# umount, so the daemon hangs on SIGTERM. Hence nsenter --net for everything run after
# the mounts.) An rsync daemon in namespace B (modules pointing at plain directories) is
# the baseline.
#
# Every figure is counted outside the programs:
#   - bytes on the wire: the veth's tx/rx byte counters in namespace A (Ethernet frames,
#     so TCP/IP headers are included; TSO/GSO/GRO are switched off on the veth when
#     ethtool is available, so the counters see real MTU-sized frames)
#   - bytes read per side: read_bytes (from disk) and rchar (all read() calls) of each
#     daemon in /proc/PID/io; page caches are dropped before each measured change
#     (BENCH_DROP_CACHES=1) so read_bytes means "read from disk"
#   - close-to-verified latency: from the return of the last write/close on A until B's
#     mount shows the new content (cmp of the changed regions, polled every 20 ms); the
#     whole tree is compared (diff -rq) afterwards, once the counters are read
#
# Workloads (each starts from an identical state on both sides: created through A's mount,
# compared on B; copied with cp -a into the rsync source and both rsync targets):
#   a. a 4 KiB edit in a BENCH_BIG_MB file (random content); then BENCH_LAT_REPS more
#      edits for the latency p50 (warm cache)
#   b. BENCH_APPENDS appends of 100 bytes (one open/write/close each) to a BENCH_LOG_MB log
#   c. BENCH_FILES new files of 1-4 KiB (text-like)
#   d. a ~BENCH_SQLITE_MB MB SQLite database; one UPDATE of BENCH_SQLITE_UPDATES random rows
#      run by the sqlite3 tool on the file inside A's mount (default rollback journal)
#   e. BENCH_VM_WRITES scattered 4 KiB writes (one dd each) into a BENCH_VM_MB image
#      (alternating 1 MiB chunks of random data and zeros)
# For each: syncfs bytes both ways, rsync (delta, daemon mode) and rsync -z bytes both
# ways, the xdelta3 size of new vs old (per changed file; files that are new are encoded
# without a source), ratios, latency, bytes read. Goals are printed next to the figures;
# nothing is asserted (exit status 0 unless the harness itself fails).
#
# Environment:
#   BENCH_BIG_MB=1024        workload a file size      BENCH_LAT_REPS=9     extra a edits
#   BENCH_LOG_MB=10          workload b log size       BENCH_APPENDS=200
#   BENCH_FILES=1000         workload c file count
#   BENCH_SQLITE_MB=60       workload d database size  BENCH_SQLITE_UPDATES=500
#   BENCH_VM_MB=256          workload e image size     BENCH_VM_WRITES=100
#   BENCH_WORKLOADS="a b c d e"
#   RATE=                    e.g. 1mbit: tc tbf on both veth ends during the measured
#                            phases only (initial states are copied at full speed)
#   BENCH_TIMEOUT=600        seconds to wait for B to converge, per measured change
#   BENCH_QUIET_MS=1000      the link must be this quiet before counters are read
#   BENCH_DROP_CACHES=1      drop page caches before each measured change
#   BENCH_SETTLE_MS=         override settle_ms in both stores' config.toml
#   BENCH_SEED=1             seed for offsets, row ids and file sizes
#   BENCH_DIR=/var/tmp       where the temp dir goes (needs ~6x BENCH_BIG_MB free)
#   BENCH_KEEP=0             1: keep the temp dir (stores, plain dirs)
#   BENCH_BUILD=1            0: don't run `cargo build --release --bin syncfs`
#   SYNCFS=path              binary to use (default target/release/syncfs; copied first,
#                            so a concurrent rebuild doesn't change it mid-run)
#   RUST_LOG=syncfs=debug    daemon log level (the "sending update ... payload=N" lines
#                            give the payload column)
# Output: the table on stdout and in target/bench-sync.txt; daemon, rsync and rsyncd logs
# in target/bench-sync-logs/ (kept after every run). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

BIG_MB=${BENCH_BIG_MB:-1024}
LAT_REPS=${BENCH_LAT_REPS:-9}
LOG_MB=${BENCH_LOG_MB:-10}
APPENDS=${BENCH_APPENDS:-200}
NFILES=${BENCH_FILES:-1000}
SQL_MB=${BENCH_SQLITE_MB:-60}
SQL_UPDATES=${BENCH_SQLITE_UPDATES:-500}
VM_MB=${BENCH_VM_MB:-256}
VM_WRITES=${BENCH_VM_WRITES:-100}
WORKLOADS=${BENCH_WORKLOADS:-a b c d e}
RATE=${RATE:-}
TIMEOUT=${BENCH_TIMEOUT:-600}
QUIET_MS=${BENCH_QUIET_MS:-1000}
DROP=${BENCH_DROP_CACHES:-1}
SETTLE_MS=${BENCH_SETTLE_MS:-}
SEED=${BENCH_SEED:-1}
BASE=${BENCH_DIR:-/var/tmp}
KEEP=${BENCH_KEEP:-0}
export RUST_LOG=${RUST_LOG:-syncfs=debug}

OUT=$REPO/target/bench-sync.txt
LOGDIR=$REPO/target/bench-sync-logs
NSA=sfbench-a
NSB=sfbench-b
VA=sfb-va
VB=sfb-vb
IPA=10.231.0.1
IPB=10.231.0.2
PORT=4801
RPORT=8873
LOCK=/run/syncfs-bench-sync.lock

log() { printf '[bench-sync %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for v in BIG_MB LAT_REPS LOG_MB APPENDS NFILES SQL_MB SQL_UPDATES VM_MB VM_WRITES TIMEOUT QUIET_MS SEED; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
for v in BIG_MB LOG_MB APPENDS NFILES SQL_MB SQL_UPDATES VM_MB VM_WRITES TIMEOUT; do
    [ "${!v}" -gt 0 ] || die "$v must be positive"
done
[ -z "$SETTLE_MS" ] || [[ $SETTLE_MS =~ ^[0-9]+$ ]] || die "BENCH_SETTLE_MS must be an integer"
for w in $WORKLOADS; do case $w in a|b|c|d|e) ;; *) die "unknown workload '$w' (a b c d e)";; esac; done
[ "$(id -u)" = 0 ] || die "run as root (network namespaces, FUSE, drop_caches)"
[ "$((VM_MB * 256))" -gt "$VM_WRITES" ] || die "BENCH_VM_MB too small"

# ---------------------------------------------------------------- tools
need_pkgs=()
command -v rsync >/dev/null || need_pkgs+=(rsync)
command -v xdelta3 >/dev/null || need_pkgs+=(xdelta3)
command -v sqlite3 >/dev/null || need_pkgs+=(sqlite3)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v tc >/dev/null || need_pkgs+=(iproute2)
command -v nsenter >/dev/null || need_pkgs+=(util-linux)
command -v fusermount3 >/dev/null || need_pkgs+=(fuse3)
command -v ethtool >/dev/null || need_pkgs+=(ethtool)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need_pkgs[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${need_pkgs[@]}" >/dev/null 2>&1; } \
        || log "apt-get install ${need_pkgs[*]} failed"
fi
for t in rsync xdelta3 sqlite3 ip tc nsenter cmp diff flock; do
    command -v "$t" >/dev/null || die "$t is missing"
done
[ -e /dev/fuse ] || modprobe fuse || die "no /dev/fuse"
if [ "$DROP" = 1 ] && ! [ -w /proc/sys/vm/drop_caches ]; then
    log "/proc/sys/vm/drop_caches is not writable: not dropping caches (read_bytes may be 0)"
    DROP=0
fi

# One run at a time: the namespace names are fixed.
exec 9>"$LOCK"
flock -n 9 || die "another bench-sync.sh is running (lock $LOCK)"

# ---------------------------------------------------------------- state and cleanup
TMP=""
PID_A=""
PID_B=""
PID_R=""
MA=""
MB=""
RATE_ON=0

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
is_fuse_mounted() { [ -n "$1" ] && awk -v m="$1" '$2 == m && $3 ~ /^fuse/ { f = 1 } END { exit !f }' /proc/mounts; }
strip() { sed 's/\x1b\[[0-9;]*m//g'; }
tail_log() { # file [lines]
    if [ -s "$1" ]; then
        log "last lines of $1:"
        tail -n "${2:-25}" "$1" | strip | cut -c1-300 | sed 's/^/    | /' >&2
    fi
}

stop_pid() { # pid name
    local p=$1 i
    alive "$p" || return 0
    kill -TERM "$p" 2>/dev/null
    for i in $(seq 100); do alive "$p" || break; sleep 0.1; done
    if alive "$p"; then
        log "$2 (pid $p) did not stop on SIGTERM; SIGKILL"
        kill -KILL "$p" 2>/dev/null
    fi
    wait "$p" 2>/dev/null || true
}

# stop_daemons: SIGTERM to both syncfs daemons at once, SIGKILL after 15 s; sets STOP_NOTE.
STOP_NOTE="not stopped"
stop_daemons() {
    local p i t0 left
    [ -n "$PID_A$PID_B" ] || return 0
    t0=$(now_us)
    for p in $PID_A $PID_B; do alive "$p" && kill -TERM "$p" 2>/dev/null; done
    for i in $(seq 150); do
        left=""
        for p in $PID_A $PID_B; do alive "$p" && left="$left $p"; done
        [ -n "$left" ] || break
        sleep 0.1
    done
    if [ -n "$left" ]; then
        STOP_NOTE="SIGTERM did not stop pid(s)$left within 15 s (A=$PID_A B=$PID_B); SIGKILL"
        log "$STOP_NOTE"
        for p in $left; do
            { echo "== pid $p: $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)"
              for t in /proc/"$p"/task/*; do
                  echo "-- thread ${t##*/} $(cat "$t/comm" 2>/dev/null) wchan=$(cat "$t/wchan" 2>/dev/null)"
                  cat "$t/stack" 2>/dev/null | head -n 12
              done
              if command -v gdb >/dev/null; then
                  echo "== gdb backtraces"
                  timeout 60 gdb -p "$p" -batch -nx -ex 'set pagination off' -ex 'thread apply all bt 25' 2>&1 \
                      | grep -v '^\[New LWP\|^warning:' || true
              fi; } > "$LOGDIR/stuck-$p.txt" 2>&1
        done
        STOP_NOTE="$STOP_NOTE; thread states in target/bench-sync-logs/stuck-*.txt"
        for p in $left; do kill -KILL "$p" 2>/dev/null; done
    else
        STOP_NOTE="both stopped on SIGTERM in $(( ($(now_us) - t0) / 1000 )) ms"
    fi
    for p in $PID_A $PID_B; do wait "$p" 2>/dev/null || true; done
    PID_A=""; PID_B=""
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    set +e
    if [ "$rc" != 0 ]; then
        log "failed or interrupted (exit $rc)"
        [ -z "$PID_A" ] || alive "$PID_A" || log "syncfs A (pid $PID_A) is not running"
        [ -z "$PID_B" ] || alive "$PID_B" || log "syncfs B (pid $PID_B) is not running"
        tail_log "$LOGDIR/a.log" 30
        tail_log "$LOGDIR/b.log" 30
    fi
    stop_daemons
    stop_pid "$PID_R" "rsync daemon"
    for m in "$MA" "$MB"; do
        if is_fuse_mounted "$m"; then
            umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null
        fi
    done
    ip netns del "$NSA" 2>/dev/null   # the veth pair goes with it
    ip netns del "$NSB" 2>/dev/null
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if [ "$KEEP" = 1 ]; then
            log "kept $TMP"
        elif is_fuse_mounted "$MA" || is_fuse_mounted "$MB"; then
            log "a mount is still present; not removing $TMP"
        else
            rm -rf --one-file-system "$TMP"
        fi
    fi
    [ "$rc" = 0 ] || log "logs: $LOGDIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Namespaces left by a run that was killed with SIGKILL: their processes were started by
# this script (the names are its own), so stop them and delete the namespaces.
for ns in "$NSA" "$NSB"; do
    if ip netns list | awk '{print $1}' | grep -x "$ns" >/dev/null; then
        log "removing stale namespace $ns from an earlier run"
        for p in $(ip netns pids "$ns" 2>/dev/null); do
            log "  stopping leftover pid $p ($(tr '\0' ' ' < /proc/"$p"/cmdline 2>/dev/null | cut -c1-100))"
            kill -TERM "$p" 2>/dev/null || true
        done
        sleep 1
        ip netns del "$ns" || die "cannot delete netns $ns"
    fi
done

# ---------------------------------------------------------------- helpers
now_us() { echo "${EPOCHREALTIME/./}"; }
drop_caches() { [ "$DROP" = 1 ] || return 0; sync; echo 3 > /proc/sys/vm/drop_caches; }
# net_snap: "A->B B->A" bytes so far, from A's end of the veth.
# Read through nsenter --net (which, unlike `ip netns exec`, makes no mount namespace: a
# mount namespace created while the FUSE mounts exist holds copies of them, and the root
# here is a private mount, so syncfs's own umount would then never end its FUSE session).
# /proc/net/dev shows the reader's network namespace.
net_snap() {
    nsenter --net="/run/netns/$NSA" cat /proc/net/dev | sed 's/:/ /' | awk -v d="$VA" '$1 == d { print $10, $2; f = 1 } END { exit !f }'
}
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }
# io_snap PID: "read_bytes rchar"
io_snap() { awk '/^read_bytes:/ { r = $2 } /^rchar:/ { c = $2 } END { print (r == "" ? 0 : r), (c == "" ? 0 : c) }' "/proc/$1/io" 2>/dev/null || echo "0 0"; }
sub2() { # "a b" "c d" -> "c-a d-b"
    local a b c d
    read -r a b <<< "$1"; read -r c d <<< "$2"
    echo "$((c - a)) $((d - b))"
}
hb() { # human bytes
    awk -v b="$1" 'BEGIN {
        if (b == "" || b == "-") { print "-"; exit }
        split("B KiB MiB GiB TiB", u, " "); i = 1
        while (b >= 1024 && i < 5) { b /= 1024; i++ }
        if (i == 1) printf "%d B", b; else if (b < 10) printf "%.2f %s", b, u[i]; else printf "%.1f %s", b, u[i] }'
}
ratio() { # a b -> a/b
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "" || b == "" || a == "-" || b == "-" || b == 0) { print "-"; exit }
        r = a / b; if (r >= 10) printf "%.1f", r; else if (r >= 0.1) printf "%.2f", r; else printf "%.4f", r }'
}
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && b != "" && a != "-" && b != "-" && a + 0 < b + 0) }'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
# tree listing (relative paths of dirs, files with sizes) for the cheap "same shape" check
listing() { (cd "$1" 2>/dev/null && find . -mindepth 1 \( -type d -printf '%P/\n' \) -o \( -type f -printf '%P %s\n' \) | LC_ALL=C sort); }
lines() { [ -f "$1" ] && wc -l < "$1" || echo 0; }
check_daemons() {
    alive "$PID_A" || die "syncfs A died ($1)"
    alive "$PID_B" || die "syncfs B died ($1)"
    is_fuse_mounted "$MA" || die "A's mount is gone ($1)"
    is_fuse_mounted "$MB" || die "B's mount is gone ($1)"
}
rate_on() {
    [ -n "$RATE" ] || return 0
    in_ns "$NSA" tc qdisc replace dev "$VA" root tbf rate "$RATE" burst 32kbit latency 400ms
    in_ns "$NSB" tc qdisc replace dev "$VB" root tbf rate "$RATE" burst 32kbit latency 400ms
    RATE_ON=1
}
rate_off() {
    [ "$RATE_ON" = 1 ] || return 0
    in_ns "$NSA" tc qdisc del dev "$VA" root 2>/dev/null || true
    in_ns "$NSB" tc qdisc del dev "$VB" root 2>/dev/null || true
    RATE_ON=0
}
# wait_quiet: until the veth counters are unchanged for QUIET_MS (at most 60 s).
wait_quiet() {
    local last cur stable=0 need=$(( (QUIET_MS + 99) / 100 )) i
    last=$(net_snap)
    for i in $(seq 600); do
        sleep 0.1
        cur=$(net_snap)
        if [ "$cur" = "$last" ]; then
            stable=$((stable + 1))
            [ "$stable" -ge "$need" ] && return 0
        else
            stable=0; last=$cur
        fi
    done
    log "warning: the link did not go quiet within 60 s"
    return 1
}

# ---------------------------------------------------------------- binary
if [ -n "${SYNCFS:-}" ]; then
    SRC_BIN=$SYNCFS
    BUILD_NOTE="given (SYNCFS=$SYNCFS)"
else
    SRC_BIN=$REPO/target/release/syncfs
    BUILD_NOTE="target/release/syncfs"
    if [ "${BENCH_BUILD:-1}" = 1 ]; then
        log "cargo build --release --bin syncfs"
        if cargo build --release --bin syncfs >&2; then
            BUILD_NOTE="built now"
        else
            [ -x "$SRC_BIN" ] || die "release build failed and there is no binary"
            log "WARNING: the release build failed (sources being edited?); using the existing binary"
            BUILD_NOTE="BUILD FAILED, existing binary from $(date -r "$SRC_BIN" '+%F %T')"
        fi
    fi
fi
[ -x "$SRC_BIN" ] || die "no syncfs binary at $SRC_BIN (build it, or set SYNCFS)"

# ---------------------------------------------------------------- temp dir, stores
[ "$(stat -f -c %T "$BASE")" != tmpfs ] || die "$BASE is tmpfs; set BENCH_DIR to a disk-backed directory"
need_mb=0
for w in $WORKLOADS; do
    case $w in
        a) s=$BIG_MB ;; b) s=$LOG_MB ;; c) s=$(( NFILES * 4 / 1024 + 1 )) ;; d) s=$SQL_MB ;; e) s=$VM_MB ;;
    esac
    [ "$((s * 7))" -gt "$need_mb" ] && need_mb=$((s * 7))
done
need_mb=$((need_mb + 500))
avail_mb=$(df -Pm "$BASE" | awk 'NR == 2 { print $4 }')
[ "$avail_mb" -ge "$need_mb" ] || die "need ~${need_mb} MiB free in $BASE, have ${avail_mb} MiB"

TMP=$(mktemp -d "$BASE/syncfs-bench-sync.XXXXXX")
BIN=$TMP/syncfs
cp "$SRC_BIN" "$BIN"
BIN_SUM=$(sha256sum "$BIN" | cut -c1-12)
MA=$TMP/mnt-a
MB=$TMP/mnt-b
OLD=$TMP/old        # initial states (also the xdelta3 source)
RA=$TMP/ra          # rsync source (A), the change is applied here too: the expected state
RB1=$TMP/rb1        # rsync daemon module "b1" (plain rsync)
RB2=$TMP/rb2        # rsync daemon module "b2" (rsync -z)
PATCH=$TMP/patch    # change material (edit blocks, appended lines, new files, SQL)
mkdir -p "$MA" "$MB" "$OLD" "$RA" "$RB1" "$RB2" "$PATCH" "$TMP/xd"
rm -rf "$LOGDIR"; mkdir -p "$LOGDIR"
log "temp dir $TMP, logs in $LOGDIR"

# ---------------------------------------------------------------- network
ip netns add "$NSA"
ip netns add "$NSB"
ip link add "$VA" netns "$NSA" type veth peer name "$VB" netns "$NSB"
for x in "$NSA $VA $IPA" "$NSB $VB $IPB"; do
    read -r ns dev addr <<< "$x"
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 || true
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$addr/24" dev "$dev"
    ip -n "$ns" link set "$dev" up
    if command -v ethtool >/dev/null; then
        ip netns exec "$ns" ethtool -K "$dev" tso off gso off gro off >/dev/null 2>&1 || true
    fi
done
OFFLOAD_NOTE="TSO/GSO/GRO off"
command -v ethtool >/dev/null || OFFLOAD_NOTE="offloads on (no ethtool)"
# (the link is checked by the daemons connecting to each other below)

# ---------------------------------------------------------------- stores and mounts
"$BIN" init "$TMP/a" --listen "/ip4/$IPA/tcp/$PORT" > "$TMP/a.id"
peer_a=$(awk '/peer id:/ {print $3}' "$TMP/a.id")
folder=$(awk '/folder id:/ {print $3}' "$TMP/a.id")
[ -n "$peer_a" ] && [ -n "$folder" ] || { cat "$TMP/a.id" >&2; die "cannot parse 'syncfs init' output"; }
"$BIN" init "$TMP/b" --join "$folder" --listen "/ip4/$IPB/tcp/$PORT" \
    --peer "/ip4/$IPA/tcp/$PORT/p2p/$peer_a" > "$TMP/b.id"
peer_b=$(awk '/peer id:/ {print $3}' "$TMP/b.id")
[ -n "$peer_b" ] || { cat "$TMP/b.id" >&2; die "cannot parse 'syncfs init --join' output"; }
"$BIN" add-peer "$TMP/a" "/ip4/$IPB/tcp/$PORT/p2p/$peer_b" >/dev/null
for s in a b; do
    sed -i 's/^mdns = .*/mdns = false/' "$TMP/$s/config.toml"
    grep -q '^mdns = false' "$TMP/$s/config.toml" || die "could not set mdns = false in $s/config.toml"
    if [ -n "$SETTLE_MS" ]; then sed -i "s/^settle_ms = .*/settle_ms = $SETTLE_MS/" "$TMP/$s/config.toml"; fi
done
SETTLE_NOTE=$(awk -F' = ' '/^settle_ms/ {print $2}' "$TMP/a/config.toml")

nsenter --net="/run/netns/$NSA" "$BIN" mount "$TMP/a" "$MA" 2> "$LOGDIR/a.log" &
PID_A=$!
nsenter --net="/run/netns/$NSB" "$BIN" mount "$TMP/b" "$MB" 2> "$LOGDIR/b.log" &
PID_B=$!
for m in "$MA" "$MB"; do
    for i in $(seq 300); do is_fuse_mounted "$m" && break; alive "$PID_A" && alive "$PID_B" || break; sleep 0.1; done
    is_fuse_mounted "$m" || die "$m did not get mounted"
done
for i in $(seq 300); do
    grep -q 'peer connected' "$LOGDIR/a.log" && grep -q 'peer connected' "$LOGDIR/b.log" && break
    alive "$PID_A" && alive "$PID_B" || break
    sleep 0.1
done
grep -q 'peer connected' "$LOGDIR/a.log" && grep -q 'peer connected' "$LOGDIR/b.log" \
    || die "the daemons did not connect to each other within 30 s"
log "mounted: A $MA (pid $PID_A, netns $NSA), B $MB (pid $PID_B, netns $NSB); connected"

# ---------------------------------------------------------------- rsync daemon
cat > "$TMP/rsyncd.conf" <<EOF
pid file = $TMP/rsyncd.pid
log file = $LOGDIR/rsyncd.log
port = $RPORT
address = $IPB
reverse lookup = no
use chroot = no
uid = root
gid = root
read only = false
[b1]
    path = $RB1
[b2]
    path = $RB2
EOF
nsenter --net="/run/netns/$NSB" rsync --daemon --no-detach --config="$TMP/rsyncd.conf" &
PID_R=$!
for i in $(seq 100); do
    in_ns "$NSA" rsync "rsync://$IPB:$RPORT/" >/dev/null 2>&1 && break
    alive "$PID_R" || die "the rsync daemon exited (see $LOGDIR/rsyncd.log)"
    sleep 0.1
done
in_ns "$NSA" rsync "rsync://$IPB:$RPORT/" >/dev/null 2>&1 || die "the rsync daemon does not answer"

# ---------------------------------------------------------------- workloads
RANDOM=$SEED
declare -A R    # results: R[w.key]

# Change material and initial states. Every change is a function of a target root, applied
# identically to RA (the expected state) and to A's mount.
A_BLOCKS=$((BIG_MB * 256))
A_FILE=w-a/big.img
declare -a A_EDITS=()   # 4 KiB block numbers
prep_a() {
    mkdir -p "$OLD/w-a"
    head -c "${BIG_MB}M" /dev/urandom > "$OLD/$A_FILE"
    local i
    for i in $(seq 0 "$LAT_REPS"); do
        A_EDITS+=( $(( ((RANDOM << 15) | RANDOM) % A_BLOCKS )) )
        head -c 4096 /dev/urandom > "$PATCH/a-$i.bin"
    done
}
edit_a() { # root rep
    dd if="$PATCH/a-$2.bin" of="$1/$A_FILE" bs=4096 count=1 seek="${A_EDITS[$2]}" conv=notrunc status=none
}
change_a() { edit_a "$1" 0; }
fast_a_rep() { # root rep
    local off=$(( A_EDITS[$2] * 4096 ))
    cmp -s -i "$off:$off" -n 4096 "$RA/$A_FILE" "$1/$A_FILE"
}
fast_a() { fast_a_rep "$1" 0; }

B_FILE=w-b/app.log
prep_b() {
    mkdir -p "$OLD/w-b"
    awk -v n="$((LOG_MB * 1048576))" -v seed="$SEED" 'BEGIN {
        srand(seed); t = 1700000000; s = 0
        split("INFO INFO INFO DEBUG WARN ERROR", lv, " ")
        split("http db cache auth sync worker", mod, " ")
        while (s < n) {
            t += int(rand() * 3)
            l = sprintf("%d %s [%s] request id=%08x user=%d took %d ms status=%d", t, lv[1 + int(rand() * 6)],
                        mod[1 + int(rand() * 6)], int(rand() * 4294967295), int(rand() * 100000), int(rand() * 900), 200 + int(rand() * 4) * 100)
            l = l "\n"
            if (s + length(l) > n) l = substr(l, 1, n - s)
            printf "%s", l; s += length(l)
        }
    }' > "$OLD/$B_FILE"
    # APPENDS lines of exactly 100 bytes (99 characters and a newline)
    awk -v n="$APPENDS" -v seed="$((SEED + 7))" 'BEGIN {
        srand(seed)
        for (i = 0; i < n; i++) {
            l = sprintf("%d INFO [sync] appended entry %05d id=%08x value=%d", 1800000000 + i, i, int(rand() * 4294967295), int(rand() * 1000000))
            while (length(l) < 99) l = l "."
            print substr(l, 1, 99)
        }
    }' > "$PATCH/b.lines"
}
change_b() {
    local line
    while IFS= read -r line; do printf '%s\n' "$line" >> "$1/$B_FILE"; done < "$PATCH/b.lines"
}
fast_b() {
    local sa sb tail=$((APPENDS * 100))
    sa=$(stat -c %s "$RA/$B_FILE"); sb=$(stat -c %s "$1/$B_FILE" 2>/dev/null) || return 1
    [ "$sa" = "$sb" ] || return 1
    cmp -s -i "$((sa - tail)):$((sa - tail))" "$RA/$B_FILE" "$1/$B_FILE"
}

C_LAST=""
prep_c() {
    mkdir -p "$OLD/w-c" "$PATCH/c/new"
    echo "existing file; the workload adds new/ with $NFILES files" > "$OLD/w-c/README"
    local i size
    head -c "$((NFILES * 4096 * 3 / 4 + 4096))" /dev/urandom | base64 -w 76 > "$PATCH/c.pool"
    local pool_size; pool_size=$(stat -c %s "$PATCH/c.pool")
    local off=0
    for i in $(seq -w 1 "$NFILES"); do
        size=$(( 1024 + (((RANDOM << 15) | RANDOM) % 3073) ))
        [ $((off + size)) -le "$pool_size" ] || off=0
        dd if="$PATCH/c.pool" of="$PATCH/c/new/f$i.txt" iflag=skip_bytes,count_bytes skip="$off" count="$size" status=none
        off=$((off + size))
    done
    C_LAST=new/f$(seq -w 1 "$NFILES" | tail -n1).txt
}
change_c() { cp -r "$PATCH/c/new" "$1/w-c/"; }
fast_c() {
    [ -f "$1/w-c/$C_LAST" ] || return 1
    [ "$(find "$1/w-c/new" -maxdepth 1 -type f 2>/dev/null | wc -l)" = "$NFILES" ] || return 1
    cmp -s "$RA/w-c/$C_LAST" "$1/w-c/$C_LAST"
}

D_FILE=w-d/app.db
prep_d() {
    mkdir -p "$OLD/w-d"
    local rows=$(( SQL_MB * 1048576 / 1365 ))
    sqlite3 "$OLD/$D_FILE" <<EOF
PRAGMA page_size = 4096;
CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, note TEXT NOT NULL, data BLOB NOT NULL);
BEGIN;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $rows)
INSERT INTO t SELECT x, 0, hex(randomblob(300)), randomblob(600) FROM c;
COMMIT;
EOF
    # SQL_UPDATES distinct random ids; each row gets n + 1 and 10 new characters at the
    # end of its note (same length, so the rows stay in place, as in most real updates)
    local ids
    ids=$(awk -v rows="$rows" -v k="$SQL_UPDATES" -v seed="$((SEED + 11))" 'BEGIN {
        srand(seed); if (k > rows) k = rows
        while (c < k) { i = 1 + int(rand() * rows); if (!(i in s)) { s[i] = 1; c++; printf "%s%d", (c > 1 ? "," : ""), i } } }')
    cat > "$PATCH/d.sql" <<EOF
UPDATE t SET n = n + 1, note = substr(note, 1, 590) || printf('%010d', (id * 7919 + $SEED) % 1000000007) WHERE id IN ($ids);
EOF
    # the same SQL on two copies must give the same bytes, or B could never "match"
    mkdir -p "$TMP/dcheck"
    cp "$OLD/$D_FILE" "$TMP/dcheck/1.db"; cp "$OLD/$D_FILE" "$TMP/dcheck/2.db"
    sqlite3 "$TMP/dcheck/1.db" < "$PATCH/d.sql"; sqlite3 "$TMP/dcheck/2.db" < "$PATCH/d.sql"
    cmp -s "$TMP/dcheck/1.db" "$TMP/dcheck/2.db" || log "warning: the SQLite update is not byte-deterministic; B may never match"
    rm -rf "$TMP/dcheck"
}
change_d() { sqlite3 "$1/$D_FILE" < "$PATCH/d.sql"; }
fast_d() { # the header page holds the file change counter
    cmp -s -n 4096 "$RA/$D_FILE" "$1/$D_FILE"
}

E_FILE=w-e/vm.img
declare -a E_OFFS=()
prep_e() {
    mkdir -p "$OLD/w-e"
    local i
    for i in $(seq 0 $((VM_MB - 1))); do
        if [ $((i % 2)) = 0 ]; then head -c 1M /dev/urandom; else head -c 1M /dev/zero; fi
    done > "$OLD/$E_FILE"
    head -c "$((VM_WRITES * 4096))" /dev/urandom > "$PATCH/e.bin"
    for i in $(seq 0 $((VM_WRITES - 1))); do
        E_OFFS+=( $(( ((RANDOM << 15) | RANDOM) % (VM_MB * 256) )) )
    done
}
change_e() {
    local i
    for i in $(seq 0 $((VM_WRITES - 1))); do
        dd if="$PATCH/e.bin" of="$1/$E_FILE" bs=4096 count=1 skip="$i" seek="${E_OFFS[$i]}" conv=notrunc status=none
    done
}
fast_e() {
    local i off
    for i in 0 $((VM_WRITES / 2)) $((VM_WRITES - 1)); do
        off=$(( E_OFFS[$i] * 4096 ))
        cmp -s -i "$off:$off" -n 4096 "$RA/$E_FILE" "$1/$E_FILE" || return 1
    done
}

declare -A TITLE=(
    [a]="4 KiB edit in ${BIG_MB} MiB file"
    [b]="${APPENDS}x100 B appends to ${LOG_MB} MiB log"
    [c]="${NFILES} new files, 1-4 KiB"
    [d]="SQLite ~${SQL_MB} MB, ${SQL_UPDATES}-row UPDATE"
    [e]="${VM_WRITES}x4 KiB writes, ${VM_MB} MiB image"
)

# ---------------------------------------------------------------- measurement
# initial_sync w: the initial state through A's mount, compared on B; plain copies.
initial_sync() {
    local w=$1 t0 deadline ok=0
    log "[$w] initial state: $(du -sh "$OLD/w-$w" | cut -f1) through A's mount"
    t0=$(now_us)
    cp -r "$OLD/w-$w" "$MA/"
    deadline=$(( $(now_us) + TIMEOUT * 1000000 ))
    while [ "$(now_us)" -lt "$deadline" ]; do
        check_daemons "initial sync of w-$w"
        if [ "$(listing "$OLD/w-$w")" = "$(listing "$MB/w-$w")" ] && diff -rq "$OLD/w-$w" "$MB/w-$w" >/dev/null 2>&1; then
            ok=1; break
        fi
        sleep 1
    done
    if [ "$ok" != 1 ]; then
        { diff -rq "$OLD/w-$w" "$MB/w-$w" 2>&1 | head -n 5 | sed 's/^/    /' >&2; } || true
        die "[$w] B did not get the initial state within ${TIMEOUT} s"
    fi
    log "[$w] B has the initial state ($(( ($(now_us) - t0) / 1000 )) ms incl. copy)"
    for d in "$RA" "$RB1" "$RB2"; do cp -a "$OLD/w-$w" "$d/"; done
    wait_quiet || true
}

# poll_fast fn deadline_us: polls "fn MB" every 20 ms; prints the time it passed (us) or nothing.
poll_fast() {
    local fn=$1 deadline=$2 n=0
    while :; do
        if "$fn" "$MB"; then now_us; return 0; fi
        [ "$(now_us)" -lt "$deadline" ] || return 1
        n=$((n + 1))
        if [ $((n % 250)) = 0 ]; then alive "$PID_A" && alive "$PID_B" || return 1; fi
        sleep 0.02
    done
}

# measure_syncfs w: drops caches, reads the counters, applies change_w through A's mount
# (the expected state is in RA already), waits for B, waits for a quiet link, reads the
# counters again, then compares the whole tree.
measure_syncfs() {
    local w=$1 net0 net1 ioa0 iob0 ioa1 iob1 la0 lb0 t0 tch t1 deadline late=0
    drop_caches
    rate_on
    wait_quiet || true
    la0=$(lines "$LOGDIR/a.log"); lb0=$(lines "$LOGDIR/b.log")
    net0=$(net_snap); ioa0=$(io_snap "$PID_A"); iob0=$(io_snap "$PID_B")
    tch=$(now_us)
    "change_$w" "$MA"
    t0=$(now_us)
    R[$w.apply_ms]=$(( (t0 - tch) / 1000 ))
    deadline=$(( t0 + TIMEOUT * 1000000 ))
    if t1=$(poll_fast "fast_$w" "$deadline"); then
        R[$w.lat]=$(( (t1 - t0) / 1000 ))
    else
        R[$w.lat]="-"
        log "[$w] B's mount did not show the change within ${TIMEOUT} s"
        if "fast_$w" "$TMP/b/data"; then log "[$w]   ... but B's backing directory has it (stale mount view?)";
        else log "[$w]   ... and B's backing directory does not have it either"; fi
    fi
    wait_quiet || R[$w.notquiet]=1
    net1=$(net_snap); ioa1=$(io_snap "$PID_A"); iob1=$(io_snap "$PID_B")
    rate_off
    read -r "R[$w.sf_ab]" "R[$w.sf_ba]" <<< "$(sub2 "$net0" "$net1")"
    read -r "R[$w.rdA]" "R[$w.rcA]" <<< "$(sub2 "$ioa0" "$ioa1")"
    read -r "R[$w.rdB]" "R[$w.rcB]" <<< "$(sub2 "$iob0" "$iob1")"
    R[$w.sf]=$(( ${R[$w.sf_ab]} + ${R[$w.sf_ba]} ))
    # the daemons' own view, from their logs over the same window
    local newa newb
    newa=$(tail -n "+$((la0 + 1))" "$LOGDIR/a.log" | strip)
    newb=$(tail -n "+$((lb0 + 1))" "$LOGDIR/b.log" | strip)
    R[$w.upd]=$(grep -c 'sending update' <<< "$newa" || true)
    R[$w.payload]=$(grep 'sending update' <<< "$newa" | sed -n 's/.*payload=\([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }')
    R[$w.updB]=$(grep -c 'sending update' <<< "$newb" || true)
    R[$w.problems]=$( { grep -E ' (WARN|ERROR) ' <<< "$newa" | sed 's/^/A: /'; grep -E ' (WARN|ERROR) ' <<< "$newb" | sed 's/^/B: /'; } | cut -c1-250 | head -n 8 || true)
    # the whole tree, now that the counters are read
    if diff -rq "$RA/w-$w" "$MB/w-$w" > "$TMP/diff.out" 2>&1; then
        R[$w.ok]=yes
    else
        R[$w.ok]=NO
        log "[$w] B differs from the expected state after the fast check passed:"
        head -n 5 "$TMP/diff.out" | sed 's/^/    /' >&2
        # keep waiting (counters no longer clean: marked "late")
        while [ "$(now_us)" -lt "$deadline" ]; do
            sleep 1
            if diff -rq "$RA/w-$w" "$MB/w-$w" >/dev/null 2>&1; then
                late=$(( ($(now_us) - t0) / 1000 )); R[$w.ok]="late ${late} ms"
                net1=$(net_snap)
                read -r "R[$w.sf_ab]" "R[$w.sf_ba]" <<< "$(sub2 "$net0" "$net1")"
                R[$w.sf]=$(( ${R[$w.sf_ab]} + ${R[$w.sf_ba]} ))
                break
            fi
        done
        [ "${R[$w.ok]}" != NO ] || { log "[$w] B never matched; log tails:"; tail_log "$LOGDIR/a.log" 15; tail_log "$LOGDIR/b.log" 15; }
    fi
    log "[$w] syncfs: A->B $(hb "${R[$w.sf_ab]}"), B->A $(hb "${R[$w.sf_ba]}"), close->B ${R[$w.lat]} ms, updates ${R[$w.upd]} (payload $(hb "${R[$w.payload]}")), read A $(hb "${R[$w.rdA]}") B $(hb "${R[$w.rdB]}"), verified ${R[$w.ok]}"
}

# measure_rsync w key module [opts]: RA/w-w -> rsync://B/module/w-w over the veth.
measure_rsync() {
    local w=$1 key=$2 mod=$3 dest net0 net1 t0 t1 rc=0
    shift 3
    dest=$TMP/$( [ "$mod" = b1 ] && echo rb1 || echo rb2 )
    rate_on
    wait_quiet || true
    net0=$(net_snap)
    t0=$(now_us)
    echo "=== [$w] rsync -a --no-whole-file --stats $* (module $mod)" >> "$LOGDIR/rsync.log"
    in_ns "$NSA" rsync -a --no-whole-file --stats "$@" "$RA/w-$w/" "rsync://$IPB:$RPORT/$mod/w-$w/" \
        >> "$LOGDIR/rsync.log" 2>&1 || rc=$?
    t1=$(now_us)
    wait_quiet || true
    net1=$(net_snap)
    rate_off
    read -r "R[$w.${key}_ab]" "R[$w.${key}_ba]" <<< "$(sub2 "$net0" "$net1")"
    R[$w.$key]=$(( ${R[$w.${key}_ab]} + ${R[$w.${key}_ba]} ))
    R[$w.${key}_ms]=$(( (t1 - t0) / 1000 ))
    if [ "$rc" != 0 ]; then
        R[$w.${key}_ok]="rsync exit $rc"; log "[$w] rsync $* failed (exit $rc), see $LOGDIR/rsync.log"
    elif diff -rq "$RA/w-$w" "$dest/w-$w" >/dev/null 2>&1; then
        R[$w.${key}_ok]=yes
    else
        R[$w.${key}_ok]=NO; log "[$w] rsync $* left a different tree"
    fi
    log "[$w] rsync $*: A->B $(hb "${R[$w.${key}_ab]}"), B->A $(hb "${R[$w.${key}_ba]}"), ${R[$w.${key}_ms]} ms"
}

# xdelta_size w: sum over files of RA/w-w that differ from OLD/w-w of the xdelta3 size.
xdelta_size() {
    local w=$1 total=0 f old new sz B
    while IFS= read -r -d '' f; do
        new=$RA/w-$w/$f; old=$OLD/w-$w/$f
        if [ -f "$old" ]; then
            cmp -s "$old" "$new" && continue
            sz=$(stat -c %s "$old"); B=$((64 << 20))
            while [ "$B" -lt "$sz" ] && [ "$B" -lt $((1 << 31)) ]; do B=$((B * 2)); done
            xdelta3 -e -f -B "$B" -s "$old" "$new" "$TMP/xd/out"
        else
            xdelta3 -e -f "$new" "$TMP/xd/out"
        fi
        total=$(( total + $(stat -c %s "$TMP/xd/out") ))
    done < <(cd "$RA/w-$w" && find . -type f -printf '%P\0')
    rm -f "$TMP/xd/out"
    echo "$total"
}

run_workload() {
    local w=$1 i t0 t1 deadline
    local -a lats=()
    log "=== workload $w: ${TITLE[$w]}"
    "prep_$w"
    initial_sync "$w"
    check_daemons "before workload $w"
    "change_$w" "$RA"                     # the expected new state
    measure_syncfs "$w"
    check_daemons "after workload $w"
    measure_rsync "$w" rs b1
    measure_rsync "$w" rz b2 -z
    R[$w.xd]=$(xdelta_size "$w")
    log "[$w] xdelta3: $(hb "${R[$w.xd]}")"
    [ "${R[$w.lat]}" = "-" ] || lats+=("${R[$w.lat]}")
    if [ "$w" = a ] && [ "$LAT_REPS" -gt 0 ] && [ "${R[a.lat]}" != "-" ]; then
        for i in $(seq 1 "$LAT_REPS"); do
            edit_a "$RA" "$i"
            wait_quiet || true
            edit_a "$MA" "$i"
            t0=$(now_us)
            deadline=$(( t0 + TIMEOUT * 1000000 ))
            fast_rep() { fast_a_rep "$1" "$i"; }
            if t1=$(poll_fast fast_rep "$deadline"); then lats+=( $(( (t1 - t0) / 1000 )) ); else log "[a] edit $i did not arrive"; break; fi
        done
        wait_quiet || true
        diff -rq "$RA/w-a" "$MB/w-a" >/dev/null 2>&1 || { log "[a] B differs after the latency edits"; R[a.ok]="${R[a.ok]}; reps NO"; }
        log "[a] close->B over $(( ${#lats[@]} )) edits (ms): ${lats[*]}"
    fi
    R[$w.lats]="${lats[*]}"
    R[$w.p50]=$(median "${lats[@]}")
    # tidy up before the next workload
    rm -rf "$MA/w-$w"
    for i in $(seq 600); do [ -e "$MB/w-$w" ] || break; sleep 0.2; done
    [ ! -e "$MB/w-$w" ] || log "[$w] warning: the deletion did not reach B within 120 s"
    rm -rf "${OLD:?}/w-$w" "${RA:?}/w-$w" "${RB1:?}/w-$w" "${RB2:?}/w-$w" "${PATCH:?}"/*
}

T_START=$(now_us)
for w in $WORKLOADS; do run_workload "$w"; done
T_TOTAL=$(( ($(now_us) - T_START) / 1000000 ))

log "stopping both daemons (SIGTERM)"
stop_daemons
for m in "$MA" "$MB"; do
    if is_fuse_mounted "$m"; then
        STOP_NOTE="$STOP_NOTE; $m was still mounted (umount -l)"
        umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true
    fi
done

# ---------------------------------------------------------------- report
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then DIRTY="dirty ($(git status --porcelain | wc -l) changed/untracked paths)"; else DIRTY=clean; fi

goal_line() { # text value limit -> "text: value vs limit MET|MISSED"
    if lt "$2" "$3"; then echo "MET"; else echo "MISSED"; fi
}
report() {
    echo "syncfs live-sync benchmark   $(date '+%F %T')"
    echo "commit $COMMIT, tree $DIRTY; binary: $BUILD_NOTE (sha256 $BIN_SUM)"
    echo "link: veth in two netns, $IPA <-> $IPB, rate ${RATE:-unlimited}, $OFFLOAD_NOTE; settle_ms=$SETTLE_NOTE; drop caches: $DROP; rsync $(rsync --version | awk 'NR == 1 {print $3}') (-z: $(rsync --version | awk '/Compress list/ { getline; print $1 }')), seed $SEED; total ${T_TOTAL} s"
    echo "bytes on the wire = veth frame bytes, A->B + B->A; rsync = delta transfer to an rsync daemon; xdelta3 = size of new vs old"
    echo
    printf '%-34s %30s %11s %11s %10s %7s %7s %9s %21s %6s\n' \
        workload "syncfs (A>B / B>A)" rsync "rsync -z" xdelta3 "sf/rz" "sf/xd" "close>B" "disk read A / B" verified
    local w
    for w in $WORKLOADS; do
        printf '%-34s %30s %11s %11s %10s %7s %7s %9s %21s %6s\n' \
            "$w. ${TITLE[$w]}" \
            "$(hb "${R[$w.sf]}") ($(hb "${R[$w.sf_ab]}")/$(hb "${R[$w.sf_ba]}"))" \
            "$(hb "${R[$w.rs]}")" "$(hb "${R[$w.rz]}")" "$(hb "${R[$w.xd]}")" \
            "$(ratio "${R[$w.sf]}" "${R[$w.rz]}")" "$(ratio "${R[$w.sf]}" "${R[$w.xd]}")" \
            "$( [ "$w" = a ] && echo "p50 ${R[a.p50]}" || echo "${R[$w.lat]}") ms" \
            "$(hb "${R[$w.rdA]}") / $(hb "${R[$w.rdB]}")" "${R[$w.ok]%% *}"
    done
    echo
    echo "details"
    for w in $WORKLOADS; do
        echo "  $w. ${TITLE[$w]}:"
        echo "     syncfs   A>B $(hb "${R[$w.sf_ab]}") (${R[$w.sf_ab]} B), B>A $(hb "${R[$w.sf_ba]}") (${R[$w.sf_ba]} B); ${R[$w.upd]} updates sent by A, payload $(hb "${R[$w.payload]}"); ${R[$w.updB]} sent by B${R[$w.notquiet]:+; link never went quiet}"
        echo "              change took ${R[$w.apply_ms]} ms on A; close->B ${R[$w.lat]} ms$( [ -n "${R[$w.lats]}" ] && [ "$w" = a ] && echo "; all edits (ms): ${R[$w.lats]}")"
        echo "              read from disk A $(hb "${R[$w.rdA]}"), B $(hb "${R[$w.rdB]}"); read() total A $(hb "${R[$w.rcA]}"), B $(hb "${R[$w.rcB]}"); B matches: ${R[$w.ok]}"
        echo "     rsync    A>B $(hb "${R[$w.rs_ab]}"), B>A $(hb "${R[$w.rs_ba]}"), ${R[$w.rs_ms]} ms, result ${R[$w.rs_ok]}"
        echo "     rsync -z A>B $(hb "${R[$w.rz_ab]}"), B>A $(hb "${R[$w.rz_ba]}"), ${R[$w.rz_ms]} ms, result ${R[$w.rz_ok]}"
        echo "     xdelta3  ${R[$w.xd]} B"
        if [ -n "${R[$w.problems]}" ]; then
            echo "     daemon warnings/errors during the change:"
            sed 's/^/       /' <<< "${R[$w.problems]}"
        fi
    done
    echo
    echo "goals (not asserted)"
    for w in $WORKLOADS; do
        echo "  $w: syncfs <= rsync -z: $(hb "${R[$w.sf]}") vs $(hb "${R[$w.rz]}")  $(lt "${R[$w.sf]}" "$(( ${R[$w.rz]:-0} + 1 ))" && echo MET || echo MISSED)"
    done
    if [[ " $WORKLOADS " == *" a "* ]]; then
        echo "  a: syncfs < rsync -z / 20: $(hb "${R[a.sf]}") vs $(hb "$(( ${R[a.rz]:-0} / 20 ))")  $(goal_line x "${R[a.sf]}" "$(( ${R[a.rz]:-0} / 20 ))")"
        echo "  a: read from disk < 1 MiB per side: A $(hb "${R[a.rdA]}") $(goal_line x "${R[a.rdA]}" 1048576), B $(hb "${R[a.rdB]}") $(goal_line x "${R[a.rdB]}" 1048576)"
        echo "  a: close->verified p50 < 300 ms: ${R[a.p50]} ms over $(wc -w <<< "${R[a.lats]}") edits  $(goal_line x "${R[a.p50]}" 300)"
    fi
    if [[ " $WORKLOADS " == *" d "* ]]; then
        echo "  d: syncfs < rsync -z / 50: $(hb "${R[d.sf]}") vs $(hb "$(( ${R[d.rz]:-0} / 50 ))")  $(goal_line x "${R[d.sf]}" "$(( ${R[d.rz]:-0} / 50 ))")"
        echo "  d: syncfs < 2x xdelta3: $(hb "${R[d.sf]}") vs $(hb "$(( ${R[d.xd]:-0} * 2 ))")  $(goal_line x "${R[d.sf]}" "$(( ${R[d.xd]:-0} * 2 ))")"
    fi
    echo
    echo "daemon shutdown: $STOP_NOTE"
    echo
    echo "notes: latency = last close on A -> changed regions visible in B's mount (20 ms polls); 'a' p50 is over the"
    echo "measured edit (cold cache) and BENCH_LAT_REPS more (warm); disk read = /proc/PID/io read_bytes of each daemon"
    echo "after dropping caches (A's figure for 'd' includes serving sqlite3's own reads); logs in target/bench-sync-logs/"
}
report | tee "$OUT"
log "saved to $OUT"
