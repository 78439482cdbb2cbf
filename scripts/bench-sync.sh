#!/usr/bin/env bash
# Benchmarks syncfs between two real mounts, live and at pairing, against rsync -z and xdelta3.
#
# Two network namespaces joined by a veth pair (10.231.0.1/24 <-> 10.231.0.2/24) stand for
# the two computers. Each syncfs daemon runs with `nsenter --net=/run/netns/NS`, which
# changes only the network namespace, so its FUSE mount is visible here. (`ip netns exec`
# also unshares the mount namespace: a FUSE mount made under it is invisible outside, and
# one made outside is copied into every such namespace created while it exists, which here
# (private root mount, no propagation) keeps the FUSE session alive after syncfs's own
# umount, so the daemon hangs on SIGTERM. Hence nsenter --net for everything run after
# the mounts.) An rsync daemon in namespace B (one module pointing at a plain directory) is
# the baseline.
#
# Every figure is counted outside the programs:
#   - bytes on the wire: the veth's tx/rx byte counters in namespace A (Ethernet frames,
#     so TCP/IP headers are included; TSO/GSO/GRO are switched off on the veth when
#     ethtool is available, so the counters see real MTU-sized frames)
#   - live mode, also: bytes read per side (read_bytes, from disk, and rchar, all read()
#     calls, of each daemon in /proc/PID/io; page caches are dropped before each measured
#     change with BENCH_DROP_CACHES=1) and close-to-visible latency (from the return of the
#     last write/close/rename on A until B's mount shows the changed regions, polled every
#     20 ms); the whole tree is compared (diff -rq) once the counters are read
#
# Workloads (text is generated word-like prose or log lines from a seeded vocabulary of
# BENCH_VOCAB words of 2-10 letters, picked with a Zipf-like law; gzip -6 and zstd -3
# compress the prose to about 42-44% and the log lines to about 35%; the ratios are printed):
#   a. 100 B inserted at the top of a BENCH_INSERT_MB text file, rewritten in place
#      (`cat new > file`: O_TRUNC and a full rewrite)
#   b. a BENCH_DOC_MB text document, 20 B changed in the middle, saved as a temp file in
#      the same directory and renamed over the document
#   c. a real source tree: BENCH_SRC_FILES *.rs, *.md, *.toml files (1 B - 256 KiB, so no
#      generated bindings) of crates in the cargo registry (tokio, futures-util, time,
#      clap, ... then the rest by name; a generated tree if the registry has too few); 5% of the files get one line changed and are
#      rewritten (O_TRUNC), 10 others are renamed within their directory and one directory
#      of a few dozen files is moved into another crate
#   d. a 4 KiB edit in a BENCH_BIG_MB file of random content, in place
#   e. BENCH_VM_WRITES scattered 4 KiB writes (one dd each) into a BENCH_VM_MB image
#      (alternating 1 MiB chunks of random data and zeros)
#   f. a ~BENCH_SQLITE_MB MB SQLite database; one UPDATE of BENCH_SQLITE_UPDATES random rows
#      run by the sqlite3 tool on the file (default rollback journal)
#   g. BENCH_APPEND_KB KiB of log text appended (one open/append/close) to a BENCH_LOG_MB log
#   h. BENCH_FILES new text files of 1-4 KiB
#
# Modes (BENCH_MODES):
#   live     both stores mounted and connected for the whole phase; each workload's
#            initial state is copied through A's mount and compared on B, then the change
#            is made through A's mount; counted from just before the change until B's mount
#            matches the expected tree and the link is quiet (BENCH_QUIET_MS)
#   pairing  for each workload the old tree is copied (cp -a) into two plain folders PA and
#            PB, the change is applied to PA only, both are adopted with
#            `syncfs init --data` (B with --join, A with add-peer) and then both daemons are
#            mounted (they connect by themselves); counted from before the daemons start
#            (connection setup, first-contact index, transfer) until B's mount and PB match
#            the expected tree and the link is quiet; then both daemons get SIGTERM and the
#            stores are removed. Pairing has no history: a path only the old tree has (the
#            renamed and moved paths of c) survives on both sides ("union" in the table)
#   floor    pairing with the change left out: both folders hold the old tree, so the
#            bytes are what two peers pay to connect and agree that nothing differs
#            (TCP, Noise and Yamux handshakes, hellos, first-contact summaries), counted
#            until B's mount holds the old tree and the link is quiet. Not a goal: the
#            floor under each pairing figure, printed under the table
# Baselines, measured once per workload before any syncfs daemon runs: rsync -z (delta
# transfer, --delete, to the rsync daemon; the same old -> new transfer as both modes) and
# the xdelta3 size of new vs old (per changed file, new files without a source; for a
# tree whose paths change (c): the tar of the new tree against the tar of the old one).
# Each row shows the goal of each mode and MET / MISSED: met = B matched, bytes <= goal and
# bytes <= rsync -z. Nothing is asserted (exit status 0 unless the harness itself fails; a
# workload that never converges or a daemon that dies is reported, not a failure).
#
# Environment:
#   BENCH_MODES="live pairing"   BENCH_WORKLOADS="a b c d e f g h"   (modes: live pairing floor)
#   BENCH_KINDS=1            log the wire stream at trace level and print, for each pairing
#                            and floor run, each daemon's bytes by message kind
#                            (scripts/wire-kinds.sh)
#   BENCH_INSERT_MB=32       a: text file size          BENCH_DOC_MB=16      b: document size
#   BENCH_SRC_FILES=2500     c: files in the tree       BENCH_BIG_MB=256     d: file size
#   BENCH_VM_MB=256          e: image size              BENCH_VM_WRITES=100
#   BENCH_SQLITE_MB=60       f: database size           BENCH_SQLITE_UPDATES=500
#   BENCH_LOG_MB=64          g: log size                BENCH_APPEND_KB=1024
#   BENCH_FILES=1000         h: new files               BENCH_VOCAB=4000     words
#   BENCH_SMOKE=1            small defaults for a quick run (2 MiB, 1 MiB, 100 files,
#                            4 MiB, 4 MiB/20 writes, 2 MB/50 rows, 4 MiB/64 KiB, 50 files);
#                            each size knob still overrides. The goals are for the defaults
#   RATE=                    e.g. 1mbit: tc tbf on both veth ends during the measured
#                            phases only (initial states are copied at full speed)
#   BENCH_TIMEOUT=600        seconds to wait for B to converge, per measured change
#   BENCH_QUIET_MS=1000      the link must be this quiet before counters are read
#   BENCH_DROP_CACHES=1      drop page caches before each measured change / pairing start
#   BENCH_SETTLE_MS=         override settle_ms in the stores' config.toml
#   BENCH_SEED=1             seed for text, offsets, row ids, picked files and sizes
#   BENCH_DIR=/var/tmp       where the temp dir goes (needs a few GiB with the defaults)
#   BENCH_KEEP=0             1: keep the temp dir (stores, plain dirs)
#   BENCH_BUILD=1            0: don't run `cargo build --release --bin syncfs`
#   BENCH_OFFLOADS=off       on: leave the veth's TSO/GSO/GRO on (the kernel's default):
#                            the counters then see frames of up to 64 KiB, so fewer
#                            header bytes than any real link carries; for comparison only
#   BENCH_PCAP=              a directory: tcpdump each pairing's packets on A's veth end
#                            into DIR/pair-W.pcap (headers only, 128 B per packet)
#   SYNCFS=path              binary to use (default target/release/syncfs; copied first,
#                            so a concurrent rebuild doesn't change it mid-run)
#   RUST_LOG=syncfs=debug    daemon log level (the "sending update ... payload=N" lines
#                            give the payload figure of the live details)
# Output: the table on stdout and in target/bench-sync.txt; daemon (live-*.log,
# pair-W-*.log), rsync and rsyncd logs in target/bench-sync-logs/ (kept after every run).
# Needs root.
#
# The whole script is one { ... } block, so bash parses it before running any of it: a
# checkout or stash that rewrites this file during a run does not change the running one.
{
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

SMOKE=${BENCH_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    d_insert=2 d_doc=1 d_src=100 d_big=4 d_vm=4 d_vmw=20 d_sql=2 d_sqlu=50 d_log=4 d_app=64 d_files=50
else
    d_insert=32 d_doc=16 d_src=2500 d_big=256 d_vm=256 d_vmw=100 d_sql=60 d_sqlu=500 d_log=64 d_app=1024 d_files=1000
fi
INSERT_MB=${BENCH_INSERT_MB:-$d_insert}
DOC_MB=${BENCH_DOC_MB:-$d_doc}
SRC_FILES=${BENCH_SRC_FILES:-$d_src}
BIG_MB=${BENCH_BIG_MB:-$d_big}
VM_MB=${BENCH_VM_MB:-$d_vm}
VM_WRITES=${BENCH_VM_WRITES:-$d_vmw}
SQL_MB=${BENCH_SQLITE_MB:-$d_sql}
SQL_UPDATES=${BENCH_SQLITE_UPDATES:-$d_sqlu}
LOG_MB=${BENCH_LOG_MB:-$d_log}
APPEND_KB=${BENCH_APPEND_KB:-$d_app}
NFILES=${BENCH_FILES:-$d_files}
VOCAB=${BENCH_VOCAB:-4000}
MODES=${BENCH_MODES:-live pairing}
WORKLOADS=${BENCH_WORKLOADS:-a b c d e f g h}
RATE=${RATE:-}
TIMEOUT=${BENCH_TIMEOUT:-600}
QUIET_MS=${BENCH_QUIET_MS:-1000}
DROP=${BENCH_DROP_CACHES:-1}
SETTLE_MS=${BENCH_SETTLE_MS:-}
SEED=${BENCH_SEED:-1}
BASE=${BENCH_DIR:-/var/tmp}
KEEP=${BENCH_KEEP:-0}
KINDS=${BENCH_KINDS:-0}
if [ "$KINDS" = 1 ]; then export RUST_LOG=${RUST_LOG:-syncfs=debug,syncfs::wire::stream=trace}; fi
export RUST_LOG=${RUST_LOG:-syncfs=debug}

# goals in bytes on the wire, per workload: live, pairing (for the default sizes)
declare -A GOAL_L=([a]=2000 [b]=1000 [c]=20000 [d]=5000 [e]=420000 [f]=50000 [g]=400000 [h]=1750000)
declare -A GOAL_P=([a]=4000 [b]=3000 [c]=40000 [d]=8000 [e]=600000 [f]=60000 [g]=440000 [h]=1800000)
# crates of the cargo registry taken first for workload c (then the others by name)
SRC_CRATES="tokio futures-util time clap rustls regex-automata syn tokio-util tracing proptest hickory-proto serde"

OUT=$REPO/target/bench-sync.txt
LOGDIR=$REPO/target/bench-sync-logs
NSA=sfbench-a
NSB=sfbench-b
VA=sfb-va
VB=sfb-vb
IPA=10.231.0.1
IPB=10.231.0.2
PORT=4801           # live; pairing uses PORT + 1 + the workload's index (no TIME_WAIT reuse)
RPORT=8873
LOCK=/run/syncfs-bench-sync.lock

log() { printf '[bench-sync %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for v in INSERT_MB DOC_MB SRC_FILES BIG_MB VM_MB VM_WRITES SQL_MB SQL_UPDATES LOG_MB APPEND_KB NFILES VOCAB TIMEOUT QUIET_MS SEED; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
for v in INSERT_MB DOC_MB SRC_FILES BIG_MB VM_MB VM_WRITES SQL_MB SQL_UPDATES LOG_MB APPEND_KB NFILES TIMEOUT; do
    [ "${!v}" -gt 0 ] || die "$v must be positive"
done
[ "$VOCAB" -ge 100 ] || die "BENCH_VOCAB must be at least 100"
[ "$SRC_FILES" -ge 20 ] || die "BENCH_SRC_FILES must be at least 20"
[ -z "$SETTLE_MS" ] || [[ $SETTLE_MS =~ ^[0-9]+$ ]] || die "BENCH_SETTLE_MS must be an integer"
for w in $WORKLOADS; do case $w in [a-h]) ;; *) die "unknown workload '$w' (a b c d e f g h)";; esac; done
for m in $MODES; do case $m in live|pairing|floor) ;; *) die "unknown mode '$m' (live pairing floor)";; esac; done
[ -n "$WORKLOADS" ] || die "BENCH_WORKLOADS is empty"
[ "$(id -u)" = 0 ] || die "run as root (network namespaces, FUSE, drop_caches)"
[ "$((VM_MB * 256))" -gt "$VM_WRITES" ] || die "BENCH_VM_MB too small"
has_mode() { [[ " $MODES " == *" $1 "* ]]; }

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
[ -z "${BENCH_PCAP:-}" ] || command -v tcpdump >/dev/null || need_pkgs+=(tcpdump)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need_pkgs[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${need_pkgs[@]}" >/dev/null 2>&1; } \
        || log "apt-get install ${need_pkgs[*]} failed"
fi
for t in rsync xdelta3 sqlite3 ip tc nsenter cmp diff flock awk tar gzip; do
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
LOG_A=""
LOG_B=""
RATE_ON=0

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
is_fuse_mounted() { [ -n "$1" ] && awk -v m="$1" '$2 == m && $3 ~ /^fuse/ { f = 1 } END { exit !f }' /proc/mounts; }
strip() { sed 's/\x1b\[[0-9;]*m//g'; }
tail_log() { # file [lines]
    if [ -n "$1" ] && [ -s "$1" ]; then
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
    local p i t0 left=""
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
# unmount_left: umount -l what a stopped daemon left mounted; appends to STOP_NOTE.
unmount_left() {
    local m
    for m in "$MA" "$MB"; do
        if is_fuse_mounted "$m"; then
            STOP_NOTE="$STOP_NOTE; $m was still mounted (umount -l)"
            umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true
        fi
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    set +e
    if [ "$rc" != 0 ]; then
        log "failed or interrupted (exit $rc)"
        [ -z "$PID_A" ] || alive "$PID_A" || log "syncfs A (pid $PID_A) is not running"
        [ -z "$PID_B" ] || alive "$PID_B" || log "syncfs B (pid $PID_B) is not running"
        tail_log "$LOG_A" 30
        tail_log "$LOG_B" 30
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
num() { # 1234567 -> 1,234,567; empty -> -
    if [ -z "$1" ] || [ "$1" = "-" ]; then echo "-"; else sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<< "$1"; fi
}
ratio() { # a b -> a/b
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a == "" || b == "" || a == "-" || b == "-" || b == 0) { print "-"; exit }
        r = a / b; if (r >= 10) printf "%.1f", r; else if (r >= 0.1) printf "%.2f", r; else printf "%.4f", r }'
}
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "-" }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && b != "" && a != "-" && b != "-" && a + 0 <= b + 0) }'; }
# tree listing (relative paths of dirs, files with sizes) for the cheap "same shape" check
listing() { (cd "$1" 2>/dev/null && find . -mindepth 1 \( -type d -printf '%P/\n' \) -o \( -type f -printf '%P %s\n' \) | LC_ALL=C sort); }
lines() { [ -f "$1" ] && wc -l < "$1" || echo 0; }
# daemons_ok: both daemons alive and both mounts present; else 1 with DEAD_NOTE set.
DEAD_NOTE=""
daemons_ok() {
    alive "$PID_A" || { DEAD_NOTE="syncfs A (pid $PID_A) died"; return 1; }
    alive "$PID_B" || { DEAD_NOTE="syncfs B (pid $PID_B) died"; return 1; }
    is_fuse_mounted "$MA" || { DEAD_NOTE="A's mount is gone"; return 1; }
    is_fuse_mounted "$MB" || { DEAD_NOTE="B's mount is gone"; return 1; }
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
# problems LOGFILE FROM_LINE PREFIX: the daemon's WARN/ERROR lines after FROM_LINE
problems() {
    tail -n "+$(( $2 + 1 ))" "$1" 2>/dev/null | strip | grep -E ' (WARN|ERROR) ' | grep -v 'open-file limit is' | sed "s/^/$3: /" || true
}
# (the open-file limit warning every daemon logs at start is printed once, under the table)

# ---------------------------------------------------------------- text generation
# Word-like text from a vocabulary of VOCAB words of 2-10 letters (English letter
# frequencies, vocabulary seeded by BENCH_SEED), words picked with a Zipf-like law
# (index = VOCAB^u), sentences with commas, numbers and . ? !, lines of at most 72
# columns, paragraphs. style=prose: that text; style=log: log lines (timestamp from t0,
# level, module, words). mode=stream: n bytes on stdout (the last one a newline);
# mode=files: nf files f0001.txt... in dir, each of 1024-4096 bytes (the last a newline).
TEXT_AWK='
function init(   i, v, len, w, j, r, k, tot) {
    split("e t a o i n s h r d l c u m w f g y p b v k j x q z", L, " ")
    split("12 9 8 7.5 7 6.7 6.3 6 6 4.3 4 2.8 2.8 2.4 2.4 2.2 2 2 1.9 1.5 1 0.8 0.2 0.2 0.1 0.1", F, " ")
    tot = 0; for (i = 1; i <= 26; i++) { tot += F[i]; C[i] = tot }
    srand(vseed)
    for (v = 1; v <= nv; v++) {
        do {
            len = 2 + int(rand() * rand() * 9); w = ""
            for (j = 0; j < len; j++) { r = rand() * tot; for (k = 1; k < 26 && C[k] < r; k++); w = w L[k] }
        } while (w in seen)
        seen[w] = 1; W[v] = w
    }
    split("INFO INFO INFO INFO DEBUG DEBUG WARN ERROR", LV, " ")
    split("http db cache auth sync worker sched store", MOD, " ")
    logV = log(nv); srand(seed); sent = 0; para = 0; line = ""; pend = ""; parend = 0; t = t0
}
function word(   w, r, i) {
    i = int(exp(rand() * logV)); if (i < 1) i = 1; if (i > nv) i = nv
    w = W[i]
    if (sent == 0) w = toupper(substr(w, 1, 1)) substr(w, 2)
    sent++
    r = rand()
    if (sent > 4 && r < 0.12) {
        w = w (rand() < 0.8 ? "." : (rand() < 0.5 ? "?" : "!")); sent = 0
        if (++para >= 4 + int(rand() * 6)) { parend = 1; para = 0 }
    } else if (r < 0.18) w = w ","
    else if (r < 0.19) w = w " " int(rand() * 2000)
    return w
}
function nextline(   w, ln, k, i, d) {
    if (style == "log") {
        t += int(rand() * 3); d = int(t / 86400)
        ln = sprintf("2024-%02d-%02d %02d:%02d:%02d.%03d %-5s [%s] ", 1 + int(d / 28) % 12, 1 + d % 28, int(t / 3600) % 24,
                     int(t / 60) % 60, t % 60, int(rand() * 1000), LV[1 + int(rand() * 8)], MOD[1 + int(rand() * 8)])
        k = 4 + int(rand() * 14); sent = 1
        for (i = 0; i < k; i++) ln = ln (i ? " " : "") word()
        return ln "\n"
    }
    while (1) {
        if (pend != "") { w = pend; pend = "" } else w = word()
        if (line != "" && length(line) + 1 + length(w) > 72) { ln = line "\n"; line = ""; pend = w; return ln }
        line = (line == "" ? w : line " " w)
        if (parend) { parend = 0; ln = line "\n\n"; line = ""; return ln }
    }
}
function fill(n, f,   s, x) { # n bytes to f ("" = stdout), the last one a newline
    s = 0
    while (s < n) {
        x = nextline()
        if (s + length(x) >= n) x = substr(x, 1, n - s - 1) "\n"
        if (f == "") printf "%s", x; else printf "%s", x > f
        s += length(x)
    }
    if (f != "") close(f)
}
BEGIN {
    init()
    if (mode == "files") { for (fi = 1; fi <= nf; fi++) fill(1024 + int(rand() * 3073), sprintf("%s/f%04d.txt", dir, fi)) }
    else fill(n, "")
}'
gen_text() { # style bytes seed [t0] > out
    awk -v mode=stream -v style="$1" -v n="$2" -v seed="$3" -v t0="${4:-0}" -v vseed="$SEED" -v nv="$VOCAB" "$TEXT_AWK"
}
gen_files() { # dir count seed
    mkdir -p "$1"
    awk -v mode=files -v style=prose -v dir="$1" -v nf="$2" -v seed="$3" -v t0=0 -v vseed="$SEED" -v nv="$VOCAB" "$TEXT_AWK"
}
# compressibility FILE...: "gzip -6 X%, zstd -3 Y%" of the files' concatenation
compressibility() {
    local raw gz zs=""
    raw=$(cat "$@" | wc -c)
    gz=$(cat "$@" | gzip -6 | wc -c)
    if command -v zstd >/dev/null; then zs=", zstd -3 $(pct "$(cat "$@" | zstd -3 -q -c | wc -c)" "$raw")"; fi
    echo "gzip -6 $(pct "$gz" "$raw")$zs of $(hb "$raw")"
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

# ---------------------------------------------------------------- temp dir
[ "$(stat -f -c %T "$BASE")" != tmpfs ] || die "$BASE is tmpfs; set BENCH_DIR to a disk-backed directory"
# every workload's old tree, expected tree and change material stay until the end (about 3x
# its size); one workload at a time is also in both stores (live), the rsync target and PA,
# PB and the union tree (pairing), with the versions the stores keep (about 7x)
sum_mb=0; max_mb=0
for w in $WORKLOADS; do
    case $w in
        a) s=$INSERT_MB ;; b) s=$DOC_MB ;; c) s=$(( SRC_FILES * 16 / 1024 + 1 )) ;; d) s=$BIG_MB ;; e) s=$VM_MB ;;
        f) s=$SQL_MB ;; g) s=$(( LOG_MB + APPEND_KB / 1024 + 1 )) ;; h) s=$(( NFILES * 4 / 1024 + 1 )) ;;
    esac
    sum_mb=$((sum_mb + s)); [ "$s" -gt "$max_mb" ] && max_mb=$s
done
need_mb=$(( sum_mb * 3 + max_mb * 7 + 500 ))
avail_mb=$(df -Pm "$BASE" | awk 'NR == 2 { print $4 }')
[ "$avail_mb" -ge "$need_mb" ] || die "need ~${need_mb} MiB free in $BASE, have ${avail_mb} MiB"

TMP=$(mktemp -d "$BASE/syncfs-bench-sync.XXXXXX")
BIN=$TMP/syncfs
cp "$SRC_BIN" "$BIN"
BIN_SUM=$(sha256sum "$BIN" | cut -c1-12)
MA=$TMP/mnt-a
MB=$TMP/mnt-b
OLD=$TMP/old        # initial states (also the xdelta3 source)
RA=$TMP/ra          # the expected new states (old + the change), also the rsync source
RBZ=$TMP/rbz        # rsync daemon module "b": a copy of the old state, for rsync -z
UNION=$TMP/union    # old + new paths, for pairing (a path only the old tree has stays)
PATCH=$TMP/patch    # change material (new contents, edit lists, SQL, new files)
PA=$TMP/pa          # pairing: A's plain folder (old + the change)
PB=$TMP/pb          # pairing: B's plain folder (old)
mkdir -p "$MA" "$MB" "$OLD" "$RA" "$RBZ" "$UNION" "$PATCH" "$TMP/xd"
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
    if command -v ethtool >/dev/null && [ "${BENCH_OFFLOADS:-off}" = off ]; then
        ip netns exec "$ns" ethtool -K "$dev" tso off gso off gro off >/dev/null 2>&1 || true
    fi
done
OFFLOAD_NOTE="TSO/GSO/GRO off"
command -v ethtool >/dev/null || OFFLOAD_NOTE="offloads on (no ethtool)"
[ "${BENCH_OFFLOADS:-off}" = off ] || OFFLOAD_NOTE="offloads on (BENCH_OFFLOADS): frames of up to 64 KiB, fewer headers than a real link"

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
[b]
    path = $RBZ
EOF
nsenter --net="/run/netns/$NSB" rsync --daemon --no-detach --config="$TMP/rsyncd.conf" &
PID_R=$!
for i in $(seq 100); do
    in_ns "$NSA" rsync "rsync://$IPB:$RPORT/" >/dev/null 2>&1 && break
    alive "$PID_R" || die "the rsync daemon exited (see $LOGDIR/rsyncd.log)"
    sleep 0.1
done
in_ns "$NSA" rsync "rsync://$IPB:$RPORT/" >/dev/null 2>&1 || die "the rsync daemon does not answer"

# ---------------------------------------------------------------- stores and daemons
# init_stores STORE_A STORE_B PORT [DATA_A DATA_B]: A new (or adopting DATA_A), B joining
# A's folder (adopting DATA_B), each naming the other, mdns off.
init_stores() {
    local sa=$1 sb=$2 port=$3 da=${4:-} db=${5:-} peer_a folder peer_b s
    "$BIN" init "$sa" ${da:+--data "$da"} --listen "/ip4/$IPA/tcp/$port" > "$sa.id"
    peer_a=$(awk '/peer id:/ {print $3}' "$sa.id")
    folder=$(awk '/folder id:/ {print $3}' "$sa.id")
    [ -n "$peer_a" ] && [ -n "$folder" ] || { cat "$sa.id" >&2; die "cannot parse 'syncfs init' output"; }
    "$BIN" init "$sb" --join "$folder" ${db:+--data "$db"} --listen "/ip4/$IPB/tcp/$port" \
        --peer "/ip4/$IPA/tcp/$port/p2p/$peer_a" > "$sb.id"
    peer_b=$(awk '/peer id:/ {print $3}' "$sb.id")
    [ -n "$peer_b" ] || { cat "$sb.id" >&2; die "cannot parse 'syncfs init --join' output"; }
    "$BIN" add-peer "$sa" "/ip4/$IPB/tcp/$port/p2p/$peer_b" >/dev/null
    for s in "$sa" "$sb"; do
        sed -i 's/^mdns = .*/mdns = false/' "$s/config.toml"
        grep -q '^mdns = false' "$s/config.toml" || die "could not set mdns = false in $s/config.toml"
        if [ -n "$SETTLE_MS" ]; then sed -i "s/^settle_ms = .*/settle_ms = $SETTLE_MS/" "$s/config.toml"; fi
    done
    SETTLE_NOTE=$(awk -F' = ' '/^settle_ms/ {print $2}' "$sa/config.toml")
}
SETTLE_NOTE="-"
# start_daemons STORE_A STORE_B TAG: A mounted at MA in netns A, B at MB in netns B; logs in
# LOGDIR/TAG-a.log and TAG-b.log.
start_daemons() {
    LOG_A=$LOGDIR/$3-a.log
    LOG_B=$LOGDIR/$3-b.log
    nsenter --net="/run/netns/$NSA" "$BIN" mount "$1" "$MA" 2> "$LOG_A" &
    PID_A=$!
    nsenter --net="/run/netns/$NSB" "$BIN" mount "$2" "$MB" 2> "$LOG_B" &
    PID_B=$!
}
# wait_mounted DEADLINE_US: both mounts present (0), or a daemon died / the deadline passed (1)
wait_mounted() {
    while :; do
        is_fuse_mounted "$MA" && is_fuse_mounted "$MB" && return 0
        alive "$PID_A" || { DEAD_NOTE="syncfs A (pid $PID_A) exited before mounting"; return 1; }
        alive "$PID_B" || { DEAD_NOTE="syncfs B (pid $PID_B) exited before mounting"; return 1; }
        [ "$(now_us)" -lt "$1" ] || { DEAD_NOTE="not mounted within the deadline"; return 1; }
        sleep 0.1
    done
}

# ---------------------------------------------------------------- workloads
RANDOM=$SEED
declare -A R    # results: R[w.key]
MODE=prep       # live / pairing while measuring (fast_c checks old paths only when live)

# Each workload: prep_W makes OLD/w-W (the initial state) and the change material in PATCH;
# change_W ROOT applies the change to ROOT/w-W (RA: the expected state, A's mount, PA);
# fast_W ROOT: the change is visible in ROOT (cheap, polled).

A_FILE=w-a/notes.txt
prep_a() {
    mkdir -p "$OLD/w-a"
    gen_text prose "$((INSERT_MB * 1048576))" "$((SEED * 100 + 1))" > "$OLD/$A_FILE"
    gen_text prose 100 "$((SEED * 100 + 2))" > "$PATCH/a.top"     # 100 B, the last a newline
    cat "$PATCH/a.top" "$OLD/$A_FILE" > "$PATCH/a.new"
}
change_a() { cat "$PATCH/a.new" > "$1/$A_FILE"; }
fast_a() {
    local sa sb t
    sa=$(stat -c %s "$RA/$A_FILE"); sb=$(stat -c %s "$1/$A_FILE" 2>/dev/null) || return 1
    [ "$sa" = "$sb" ] || return 1
    t=$(( sa > 65536 ? sa - 65536 : 0 ))
    cmp -s -n 65536 "$RA/$A_FILE" "$1/$A_FILE" && cmp -s -i "$t:$t" "$RA/$A_FILE" "$1/$A_FILE"
}

B_FILE=w-b/report.txt
B_TMP=w-b/.report.txt.tmp
B_OFF=0
prep_b() {
    mkdir -p "$OLD/w-b"
    gen_text prose "$((DOC_MB * 1048576))" "$((SEED * 100 + 3))" > "$OLD/$B_FILE"
    local n; n=$(stat -c %s "$OLD/$B_FILE"); B_OFF=$((n / 2))
    gen_text prose 20 "$((SEED * 100 + 4))" | tr '\n' ' ' > "$PATCH/b.mid"
    { head -c "$B_OFF" "$OLD/$B_FILE"; cat "$PATCH/b.mid"; tail -c "+$((B_OFF + 21))" "$OLD/$B_FILE"; } > "$PATCH/b.new"
    [ "$(stat -c %s "$PATCH/b.new")" = "$n" ] || die "[b] the edited document has another size"
    ! cmp -s "$OLD/$B_FILE" "$PATCH/b.new" || die "[b] the 20 B edit changes nothing"
}
change_b() { cat "$PATCH/b.new" > "$1/$B_TMP" && mv -f "$1/$B_TMP" "$1/$B_FILE"; }
fast_b() {
    local o=$(( B_OFF > 4096 ? B_OFF - 4096 : 0 ))
    [ "$(stat -c %s "$1/$B_FILE" 2>/dev/null)" = "$(stat -c %s "$RA/$B_FILE")" ] || return 1
    cmp -s -i "$o:$o" -n 8192 "$RA/$B_FILE" "$1/$B_FILE" || return 1
    [ "$MODE" != live ] || [ ! -e "$1/$B_TMP" ]
}

C_NOTE=""
C_LAST_EDIT=""
C_LAST_FROM=""
C_LAST_TO=""
C_MOVE_FROM=""
C_MOVE_TO=""
C_MOVE_N=0
prep_c() {
    local reg list=$PATCH/c.files cnt=0 d c i k p n ln lst
    mkdir -p "$OLD/w-c"
    : > "$list"
    reg=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ 2>/dev/null | LC_ALL=C sort | head -n1 || true)
    if [ -n "$reg" ]; then
        while IFS= read -r d; do
            [ -n "$d" ] || continue
            (cd "$reg" && find "$d" -type f \( -name '*.rs' -o -name '*.md' -o -name '*.toml' \) -size +0c -size -257k \
                 ! -name '*[[:space:]]*' | LC_ALL=C sort) >> "$list"
            cnt=$(wc -l < "$list"); [ "$cnt" -lt "$SRC_FILES" ] || break
        done < <({ for c in $SRC_CRATES; do (cd "$reg" && ls -d "$c"-[0-9]* 2>/dev/null | sort -V | tail -n1) || true; done
                   (cd "$reg" && ls -d -- */ | sed 's:/$::' | LC_ALL=C sort) || true; } | awk '!seen[$0]++')
    fi
    if [ "$cnt" -ge $(( SRC_FILES / 2 )) ]; then
        head -n "$SRC_FILES" "$list" > "$list.n"; mv "$list.n" "$list"
        tar -C "$reg" -cf - -T "$list" | tar -C "$OLD/w-c" -xf - --no-same-owner
        chmod -R u+rwX,go+rX "$OLD/w-c"
        C_NOTE="$(wc -l < "$list") files from $(cut -d/ -f1 "$list" | uniq | wc -l) crates of ${reg%/} ($(cut -d/ -f1 "$list" | uniq | head -n 12 | tr '\n' ' ')...), $(du -sh --apparent-size "$OLD/w-c" | cut -f1)B"
    else
        # too few files in the registry: a generated tree of text files, 40 per directory
        log "[c] only $cnt source files in the cargo registry: generating a tree"
        gen_files "$PATCH/c.gen" "$SRC_FILES" "$((SEED * 100 + 5))"
        : > "$list"
        i=0
        for p in "$PATCH"/c.gen/f*.txt; do
            d=gen/m$(( i / 200 ))/s$(( i / 40 % 5 ))
            mkdir -p "$OLD/w-c/$d"; mv "$p" "$OLD/w-c/$d/${p##*/}"; echo "$d/${p##*/}" >> "$list"
            i=$((i + 1))
        done
        LC_ALL=C sort -o "$list" "$list"
        rm -rf "$PATCH/c.gen"
        C_NOTE="$(wc -l < "$list") generated text files (the cargo registry had $cnt), $(du -sh --apparent-size "$OLD/w-c" | cut -f1)B"
    fi
    n=$(wc -l < "$list")
    # the directory to move: below a crate's top, 24-60 files under it (else the one nearest
    # 30 files), picked with the seed; it goes to the top of another crate
    awk -F/ '{ p = $1; for (i = 2; i < NF; i++) { p = p "/" $i; c[p]++ } } END { for (d in c) print c[d], d }' "$list" \
        | LC_ALL=C sort -k2 > "$PATCH/c.dirs"
    C_MOVE_FROM=$(awk -v seed="$((SEED + 23))" '
        { n[NR] = $1; d[NR] = $2; if ($1 >= 24 && $1 <= 60) cand[++k] = NR
          x = ($1 > 30 ? $1 - 30 : 30 - $1); if (best == "" || x < bx) { best = NR; bx = x } }
        END { srand(seed); if (k > 0) print d[cand[1 + int(rand() * k)]]; else if (best != "") print d[best] }' "$PATCH/c.dirs")
    [ -n "$C_MOVE_FROM" ] || die "[c] no directory to move in the tree"
    C_MOVE_N=$(awk -v d="$C_MOVE_FROM" '$2 == d { print $1 }' "$PATCH/c.dirs")
    c=$(cut -d/ -f1 "$list" | uniq | grep -vx "${C_MOVE_FROM%%/*}" | head -n1 || true)
    [ -n "$c" ] || c=${C_MOVE_FROM%%/*}
    C_MOVE_TO=$c/moved-${C_MOVE_FROM##*/}
    [ ! -e "$OLD/w-c/$C_MOVE_TO" ] || C_MOVE_TO=$c/moved2-${C_MOVE_FROM##*/}
    # 5% of the other files get one line changed; 10 more are renamed in their directory
    k=$(( n * 5 / 100 )); [ "$k" -ge 1 ] || k=1
    grep -v -F -- "$C_MOVE_FROM/" "$list" | awk -v seed="$((SEED + 29))" -v k="$k" -v r=10 '
        { f[NR] = $0 }
        END { srand(seed); m = NR; if (k + r > m) { r = int(m / 4); k = int(m / 4) }
              for (i = 1; i <= m; i++) idx[i] = i
              for (i = 1; i <= k + r; i++) { j = i + int(rand() * (m - i + 1)); t = idx[i]; idx[i] = idx[j]; idx[j] = t }
              for (i = 1; i <= k + r; i++) print (i <= k ? "E" : "R") "\t" f[idx[i]] }' > "$PATCH/c.picks"
    mkdir -p "$PATCH/c.edits"
    : > "$PATCH/c.edits.lst"; : > "$PATCH/c.renames"
    i=0
    while IFS=$'\t' read -r k p; do
        i=$((i + 1))
        if [ "$k" = E ]; then
            ln=$(wc -l < "$OLD/w-c/$p"); [ "$ln" -ge 1 ] || ln=1
            ln=$(( 1 + (SEED * 7919 + i * 104729) % ln ))
            sed "${ln}s|\$| // bench edit $i|" "$OLD/w-c/$p" > "$PATCH/c.edits/$i"
            printf '%s\t%s\n' "$p" "$PATCH/c.edits/$i" >> "$PATCH/c.edits.lst"
            C_LAST_EDIT=$p
        else
            d=$(dirname "$p"); lst=renamed_${p##*/}
            printf '%s\t%s\n' "$p" "$d/$lst" >> "$PATCH/c.renames"
            C_LAST_FROM=$p; C_LAST_TO=$d/$lst
        fi
    done < "$PATCH/c.picks"
    C_NOTE="$C_NOTE; $(wc -l < "$PATCH/c.edits.lst") edited, $(wc -l < "$PATCH/c.renames") renamed, $C_MOVE_FROM ($C_MOVE_N files) moved to $C_MOVE_TO"
    TITLE[c]="source tree, $n files: edits, renames, mv dir"
}
change_c() {
    local p f
    while IFS=$'\t' read -r p f; do cat "$f" > "$1/w-c/$p"; done < "$PATCH/c.edits.lst"
    while IFS=$'\t' read -r p f; do mv "$1/w-c/$p" "$1/w-c/$f"; done < "$PATCH/c.renames"
    mv "$1/w-c/$C_MOVE_FROM" "$1/w-c/$C_MOVE_TO"
}
fast_c() {
    cmp -s "$RA/w-c/$C_LAST_EDIT" "$1/w-c/$C_LAST_EDIT" || return 1
    [ -z "$C_LAST_TO" ] || [ -f "$1/w-c/$C_LAST_TO" ] || return 1
    [ -d "$1/w-c/$C_MOVE_TO" ] && [ "$(find "$1/w-c/$C_MOVE_TO" -type f | wc -l)" = "$C_MOVE_N" ] || return 1
    [ "$MODE" = live ] || return 0
    { [ -z "$C_LAST_FROM" ] || [ ! -e "$1/w-c/$C_LAST_FROM" ]; } && [ ! -e "$1/w-c/$C_MOVE_FROM" ]
}

D_BLOCKS=$((BIG_MB * 256))
D_FILE=w-d/big.img
D_EDIT=0
prep_d() {
    mkdir -p "$OLD/w-d"
    head -c "${BIG_MB}M" /dev/urandom > "$OLD/$D_FILE"
    D_EDIT=$(( ((RANDOM << 15) | RANDOM) % D_BLOCKS ))
    head -c 4096 /dev/urandom > "$PATCH/d.bin"
}
change_d() { dd if="$PATCH/d.bin" of="$1/$D_FILE" bs=4096 count=1 seek="$D_EDIT" conv=notrunc status=none; }
fast_d() {
    local off=$(( D_EDIT * 4096 ))
    cmp -s -i "$off:$off" -n 4096 "$RA/$D_FILE" "$1/$D_FILE"
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

F_FILE=w-f/app.db
prep_f() {
    mkdir -p "$OLD/w-f"
    local rows=$(( SQL_MB * 1048576 / 1365 ))
    sqlite3 "$OLD/$F_FILE" <<EOF
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
    cat > "$PATCH/f.sql" <<EOF
UPDATE t SET n = n + 1, note = substr(note, 1, 590) || printf('%010d', (id * 7919 + $SEED) % 1000000007) WHERE id IN ($ids);
EOF
    # the same SQL on two copies must give the same bytes, or B could never "match"
    mkdir -p "$TMP/fcheck"
    cp "$OLD/$F_FILE" "$TMP/fcheck/1.db"; cp "$OLD/$F_FILE" "$TMP/fcheck/2.db"
    sqlite3 "$TMP/fcheck/1.db" < "$PATCH/f.sql"; sqlite3 "$TMP/fcheck/2.db" < "$PATCH/f.sql"
    cmp -s "$TMP/fcheck/1.db" "$TMP/fcheck/2.db" || log "warning: the SQLite update is not byte-deterministic; B may never match"
    rm -rf "$TMP/fcheck"
}
change_f() { sqlite3 "$1/$F_FILE" < "$PATCH/f.sql"; }
fast_f() { # the header page holds the file change counter
    cmp -s -n 4096 "$RA/$F_FILE" "$1/$F_FILE"
}

G_FILE=w-g/server.log
prep_g() {
    mkdir -p "$OLD/w-g"
    gen_text log "$((LOG_MB * 1048576))" "$((SEED * 100 + 6))" 1700000000 > "$OLD/$G_FILE"
    # about 1.5 s per line of ~100 B: the appended lines continue the timestamps
    gen_text log "$((APPEND_KB * 1024))" "$((SEED * 100 + 7))" "$(( 1700000000 + LOG_MB * 1048576 / 66 ))" > "$PATCH/g.add"
}
change_g() { cat "$PATCH/g.add" >> "$1/$G_FILE"; }
fast_g() {
    local sa sb t
    sa=$(stat -c %s "$RA/$G_FILE"); sb=$(stat -c %s "$1/$G_FILE" 2>/dev/null) || return 1
    [ "$sa" = "$sb" ] || return 1
    t=$(( sa > 4096 ? sa - 4096 : 0 ))
    cmp -s -i "$t:$t" "$RA/$G_FILE" "$1/$G_FILE"
}

H_LAST=""
prep_h() {
    mkdir -p "$OLD/w-h"
    echo "existing file; the workload adds new/ with $NFILES text files" > "$OLD/w-h/README"
    gen_files "$PATCH/h/new" "$NFILES" "$((SEED * 100 + 8))"
    H_LAST=new/$(cd "$PATCH/h/new" && ls | LC_ALL=C sort | tail -n1)
}
change_h() { cp -r "$PATCH/h/new" "$1/w-h/"; }
fast_h() {
    [ -f "$1/w-h/$H_LAST" ] || return 1
    [ "$(find "$1/w-h/new" -maxdepth 1 -type f 2>/dev/null | wc -l)" = "$NFILES" ] || return 1
    cmp -s "$RA/w-h/$H_LAST" "$1/w-h/$H_LAST"
}

declare -A TITLE=(
    [a]="100 B insert at top, ${INSERT_MB} MiB text, O_TRUNC"
    [b]="20 B edit, ${DOC_MB} MiB text, temp+rename"
    [c]="source tree, ${SRC_FILES} files: edits, renames, mv dir"
    [d]="4 KiB edit in ${BIG_MB} MiB random file"
    [e]="${VM_WRITES}x4 KiB writes, ${VM_MB} MiB image"
    [f]="SQLite ~${SQL_MB} MB, ${SQL_UPDATES}-row UPDATE"
    [g]="$(hb $((APPEND_KB * 1024))) text appended to ${LOG_MB} MiB log"
    [h]="${NFILES} new text files, 1-4 KiB"
)

# ---------------------------------------------------------------- baselines
# measure_rsync w: RA/w-w -> rsync://B/b/w-w (a copy of OLD/w-w) with -z, over the veth.
measure_rsync() {
    local w=$1 net0 net1 t0 t1 rc=0
    cp -a "$OLD/w-$w" "$RBZ/"
    rate_on
    wait_quiet || true
    net0=$(net_snap)
    t0=$(now_us)
    echo "=== [$w] rsync -a --no-whole-file --delete -z --stats (module b)" >> "$LOGDIR/rsync.log"
    in_ns "$NSA" rsync -a --no-whole-file --delete -z --stats "$RA/w-$w/" "rsync://$IPB:$RPORT/b/w-$w/" \
        >> "$LOGDIR/rsync.log" 2>&1 || rc=$?
    t1=$(now_us)
    wait_quiet || true
    net1=$(net_snap)
    rate_off
    read -r "R[$w.rz_ab]" "R[$w.rz_ba]" <<< "$(sub2 "$net0" "$net1")"
    R[$w.rz]=$(( ${R[$w.rz_ab]} + ${R[$w.rz_ba]} ))
    R[$w.rz_ms]=$(( (t1 - t0) / 1000 ))
    if [ "$rc" != 0 ]; then
        R[$w.rz_ok]="rsync exit $rc"; log "[$w] rsync -z failed (exit $rc), see $LOGDIR/rsync.log"
    elif diff -rq "$RA/w-$w" "$RBZ/w-$w" >/dev/null 2>&1; then
        R[$w.rz_ok]=yes
    else
        R[$w.rz_ok]=NO; log "[$w] rsync -z left a different tree"
    fi
    rm -rf "${RBZ:?}/w-$w"
    log "[$w] rsync -z: A->B $(hb "${R[$w.rz_ab]}"), B->A $(hb "${R[$w.rz_ba]}"), ${R[$w.rz_ms]} ms"
}

# xdelta_size w: sum over files of RA/w-w that differ from OLD/w-w of the xdelta3 size (new
# files without a source); when some old path is gone (renames, moves), the xdelta3 size of
# the new tree's tar against the old tree's tar instead. Sets R[w.xd] and R[w.xd_how].
xdelta_src_window() { # file size -> -B value covering it
    local B=$((64 << 20))
    while [ "$B" -lt "$1" ] && [ "$B" -lt $((1 << 31)) ]; do B=$((B * 2)); done
    echo "$B"
}
xdelta_size() {
    local w=$1 total=0 f old new
    if [ -n "$(comm -23 <(cd "$OLD/w-$w" && find . -type f | LC_ALL=C sort) <(cd "$RA/w-$w" && find . -type f | LC_ALL=C sort))" ]; then
        tar -C "$OLD/w-$w" --sort=name --owner=0 --group=0 --numeric-owner -cf "$TMP/xd/old.tar" .
        tar -C "$RA/w-$w" --sort=name --owner=0 --group=0 --numeric-owner -cf "$TMP/xd/new.tar" .
        xdelta3 -e -f -B "$(xdelta_src_window "$(stat -c %s "$TMP/xd/old.tar")")" -s "$TMP/xd/old.tar" "$TMP/xd/new.tar" "$TMP/xd/out"
        R[$w.xd]=$(stat -c %s "$TMP/xd/out")
        R[$w.xd_how]="tar of the new tree vs tar of the old tree (paths changed)"
    else
        while IFS= read -r -d '' f; do
            new=$RA/w-$w/$f; old=$OLD/w-$w/$f
            if [ -f "$old" ]; then
                cmp -s "$old" "$new" && continue
                xdelta3 -e -f -B "$(xdelta_src_window "$(stat -c %s "$old")")" -s "$old" "$new" "$TMP/xd/out"
            else
                xdelta3 -e -f "$new" "$TMP/xd/out"
            fi
            total=$(( total + $(stat -c %s "$TMP/xd/out") ))
        done < <(cd "$RA/w-$w" && find . -type f -printf '%P\0')
        R[$w.xd]=$total
        R[$w.xd_how]="per changed file (new files without a source)"
    fi
    rm -f "$TMP/xd/"*
    log "[$w] xdelta3: $(hb "${R[$w.xd]}") (${R[$w.xd_how]})"
}

# prepare w: the old state (mtimes a day back, so a changed file is newer and rsync's quick
# check sees it), the expected state, the union tree, the baselines.
prepare() {
    local w=$1 t0
    log "=== workload $w: ${TITLE[$w]}: preparing"
    t0=$(now_us)
    "prep_$w"
    find "$OLD/w-$w" -exec touch -h -d "@$(( $(date +%s) - 86400 ))" {} +
    R[$w.prep_s]=$(( ($(now_us) - t0) / 1000000 ))
    cp -a "$OLD/w-$w" "$RA/"
    "change_$w" "$RA"
    listing "$OLD/w-$w" > "$TMP/lst-$w.old"
    if has_mode pairing; then
        cp -a "$OLD/w-$w" "$UNION/"
        cp -a "$RA/w-$w/." "$UNION/w-$w/"
        listing "$RA/w-$w" > "$TMP/lst-$w.new"
        listing "$UNION/w-$w" > "$TMP/lst-$w.union"
        if cmp -s "$TMP/lst-$w.new" "$TMP/lst-$w.union"; then rm -rf "${UNION:?}/w-$w"; fi
    fi
    log "[$w] old $(du -sh --apparent-size "$OLD/w-$w" | cut -f1), prepared in ${R[$w.prep_s]} s"
    measure_rsync "$w"
    xdelta_size "$w"
}

# ---------------------------------------------------------------- live mode
LIVE_BROKEN=""
# initial_sync w: the initial state through A's mount, compared on B (0), or 1 (LIVE_BROKEN set).
initial_sync() {
    local w=$1 t0 deadline ok=0
    log "[$w] live: initial state, $(du -sh "$OLD/w-$w" | cut -f1), through A's mount"
    t0=$(now_us)
    cp -r "$OLD/w-$w" "$MA/"
    deadline=$(( $(now_us) + TIMEOUT * 1000000 ))
    while [ "$(now_us)" -lt "$deadline" ]; do
        daemons_ok || { LIVE_BROKEN="$DEAD_NOTE during the initial sync of w-$w"; return 1; }
        if [ "$(listing "$OLD/w-$w")" = "$(listing "$MB/w-$w")" ] && diff -rq "$OLD/w-$w" "$MB/w-$w" >/dev/null 2>&1; then
            ok=1; break
        fi
        sleep 1
    done
    if [ "$ok" != 1 ]; then
        { diff -rq "$OLD/w-$w" "$MB/w-$w" 2>&1 | head -n 5 | sed 's/^/    /' >&2; } || true
        LIVE_BROKEN="B did not get the initial state of w-$w within ${TIMEOUT} s"
        return 1
    fi
    log "[$w] B has the initial state ($(( ($(now_us) - t0) / 1000 )) ms incl. copy)"
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

# measure_live w: drops caches, reads the counters, applies change_w through A's mount (the
# expected state is in RA), waits for B, waits for a quiet link, reads the counters again,
# then compares the whole tree.
measure_live() {
    local w=$1 net0 net1 ioa0 iob0 ioa1 iob1 la0 lb0 t0 tch t1 deadline late=0 newa
    MODE=live
    drop_caches
    rate_on
    wait_quiet || true
    la0=$(lines "$LOG_A"); lb0=$(lines "$LOG_B")
    net0=$(net_snap); ioa0=$(io_snap "$PID_A"); iob0=$(io_snap "$PID_B")
    tch=$(now_us)
    "change_$w" "$MA" || { R[$w.l_changerr]=1; log "[$w] the change through A's mount reported an error"; }
    t0=$(now_us)
    R[$w.l_apply]=$(( (t0 - tch) / 1000 ))
    deadline=$(( t0 + TIMEOUT * 1000000 ))
    if t1=$(poll_fast "fast_$w" "$deadline"); then
        R[$w.l_lat]=$(( (t1 - t0) / 1000 ))
    else
        R[$w.l_lat]="-"
        log "[$w] B's mount did not show the change within ${TIMEOUT} s (or a daemon died)"
    fi
    wait_quiet || R[$w.l_notquiet]=1
    net1=$(net_snap); ioa1=$(io_snap "$PID_A"); iob1=$(io_snap "$PID_B")
    rate_off
    read -r "R[$w.l_ab]" "R[$w.l_ba]" <<< "$(sub2 "$net0" "$net1")"
    read -r "R[$w.l_rdA]" "R[$w.l_rcA]" <<< "$(sub2 "$ioa0" "$ioa1")"
    read -r "R[$w.l_rdB]" "R[$w.l_rcB]" <<< "$(sub2 "$iob0" "$iob1")"
    R[$w.l_sf]=$(( ${R[$w.l_ab]} + ${R[$w.l_ba]} ))
    # the daemons' own view, from their logs over the same window
    newa=$(tail -n "+$((la0 + 1))" "$LOG_A" | strip)
    R[$w.l_upd]=$(grep -c 'sending update' <<< "$newa" || true)
    R[$w.l_payload]=$(grep 'sending update' <<< "$newa" | sed -n 's/.*payload=\([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }')
    R[$w.l_updB]=$(tail -n "+$((lb0 + 1))" "$LOG_B" | strip | grep -c 'sending update' || true)
    if ! daemons_ok; then
        R[$w.l_ok]="NO ($DEAD_NOTE)"; LIVE_BROKEN="$DEAD_NOTE during workload $w"
    elif diff -rq "$RA/w-$w" "$MB/w-$w" > "$TMP/diff.out" 2>&1; then
        R[$w.l_ok]=yes
    else
        R[$w.l_ok]=NO
        log "[$w] B differs from the expected state after the fast check:"
        head -n 5 "$TMP/diff.out" | sed 's/^/    /' >&2
        # keep waiting (counters no longer clean: marked "late")
        while [ "$(now_us)" -lt "$deadline" ]; do
            sleep 1
            daemons_ok || break
            if diff -rq "$RA/w-$w" "$MB/w-$w" >/dev/null 2>&1; then
                late=$(( ($(now_us) - t0) / 1000 )); R[$w.l_ok]="late ${late} ms"
                wait_quiet || true
                net1=$(net_snap)
                read -r "R[$w.l_ab]" "R[$w.l_ba]" <<< "$(sub2 "$net0" "$net1")"
                R[$w.l_sf]=$(( ${R[$w.l_ab]} + ${R[$w.l_ba]} ))
                break
            fi
        done
        if [ "${R[$w.l_ok]}" = NO ]; then
            diff -rq "$RA/w-$w" "$MB/w-$w" 2>&1 | head -n 5 | sed 's/^/    /' >&2 || true
            log "[$w] B never matched; log tails:"; tail_log "$LOG_A" 15; tail_log "$LOG_B" 15
        fi
    fi
    R[$w.l_problems]=$( { problems "$LOG_A" "$la0" A; problems "$LOG_B" "$lb0" B; } | cut -c1-250 | head -n 8)
    log "[$w] live: A->B $(hb "${R[$w.l_ab]}"), B->A $(hb "${R[$w.l_ba]}"), close->B ${R[$w.l_lat]} ms, updates ${R[$w.l_upd]} (payload $(hb "${R[$w.l_payload]}")), read A $(hb "${R[$w.l_rdA]}") B $(hb "${R[$w.l_rdB]}"), B matches: ${R[$w.l_ok]}"
}

run_live() {
    local w i
    log "=== live mode: two new stores, mounted and connected"
    init_stores "$TMP/live-a" "$TMP/live-b" "$PORT"
    start_daemons "$TMP/live-a" "$TMP/live-b" live
    if ! wait_mounted $(( $(now_us) + 30000000 )); then
        LIVE_BROKEN="the live daemons did not mount: $DEAD_NOTE"
    else
        for i in $(seq 300); do
            grep -q 'peer connected' "$LOG_A" && grep -q 'peer connected' "$LOG_B" && break
            alive "$PID_A" && alive "$PID_B" || break
            sleep 0.1
        done
        grep -q 'peer connected' "$LOG_A" && grep -q 'peer connected' "$LOG_B" \
            || LIVE_BROKEN="the live daemons did not connect to each other within 30 s"
    fi
    [ -n "$LIVE_BROKEN" ] || log "mounted: A $MA (pid $PID_A, netns $NSA), B $MB (pid $PID_B, netns $NSB); connected"
    for w in $WORKLOADS; do
        if [ -n "$LIVE_BROKEN" ]; then
            R[$w.l_ok]="not run ($LIVE_BROKEN)"; log "[$w] live: not run: $LIVE_BROKEN"; continue
        fi
        log "=== workload $w, live: ${TITLE[$w]}"
        initial_sync "$w" || { R[$w.l_ok]="not run ($LIVE_BROKEN)"; log "[$w] live: $LIVE_BROKEN"; continue; }
        measure_live "$w"
        [ -z "$LIVE_BROKEN" ] || continue
        # tidy up before the next workload
        rm -rf "$MA/w-$w"
        for i in $(seq 600); do [ -e "$MB/w-$w" ] || break; sleep 0.2; done
        [ ! -e "$MB/w-$w" ] || log "[$w] warning: the deletion did not reach B within 120 s"
    done
    [ -z "$LIVE_BROKEN" ] || { log "live mode broken: $LIVE_BROKEN"; tail_log "$LOG_A" 20; tail_log "$LOG_B" 20; }
    log "live: stopping both daemons (SIGTERM)"
    stop_daemons
    unmount_left
    LIVE_STOP=$STOP_NOTE
    rm -rf "$TMP/live-a" "$TMP/live-b"
}
LIVE_STOP="-"

# ---------------------------------------------------------------- pairing mode
# matches_now w: B's mount has the new tree, or the union of the old and the new tree (same
# listing), and the change is visible (fast_w)
matches_now() {
    local l; l=$(listing "$MB/w-$1")
    { [ "$l" = "$(cat "$TMP/lst-$1.new")" ] || { [ -d "$UNION/w-$1" ] && [ "$l" = "$(cat "$TMP/lst-$1.union")" ]; }; } \
        && "fast_$1" "$MB"
}
# verify_pairing w: sets R[w.p_ok] from B's mount and PB against RA (or UNION)
verify_pairing() {
    local w=$1
    if diff -rq "$RA/w-$w" "$MB/w-$w" > "$TMP/diff.out" 2>&1 && diff -rq "$RA/w-$w" "$PB/w-$w" >/dev/null 2>&1; then
        R[$w.p_ok]=yes; return 0
    fi
    if [ -d "$UNION/w-$w" ] && diff -rq "$UNION/w-$w" "$MB/w-$w" >/dev/null 2>&1 && diff -rq "$UNION/w-$w" "$PB/w-$w" >/dev/null 2>&1; then
        R[$w.p_ok]=union; return 0
    fi
    R[$w.p_ok]=NO; return 1
}

# pcap_start W / pcap_stop: with BENCH_PCAP, capture A's veth end during a pairing.
PCAP_PID=""
pcap_start() {
    [ -n "${BENCH_PCAP:-}" ] || return 0
    mkdir -p "$BENCH_PCAP"
    nsenter --net="/run/netns/$NSA" tcpdump -i "$VA" -s 128 -w "$BENCH_PCAP/$1.pcap" 2>/dev/null &
    PCAP_PID=$!
    sleep 1
}
pcap_stop() {
    [ -n "$PCAP_PID" ] || return 0
    kill -TERM "$PCAP_PID" 2>/dev/null || true
    wait "$PCAP_PID" 2>/dev/null || true
    PCAP_PID=""
}

# exchanged: both daemons logged their first-contact index exchange
exchanged() {
    strip < "$LOG_A" | grep -q 'index exchanged' && strip < "$LOG_B" | grep -q 'index exchanged'
}
# measure_pairing w idx [floor]: the pairing of workload w (R[w.p_*]), or with floor
# the same pairing without the change (R[w.f_*]; see the modes above)
measure_pairing() {
    local w=$1 idx=$2 port net0 net1 t0 t1 deadline late k=p run=pair
    local sa=$TMP/pair-a sb=$TMP/pair-b
    port=$(( PORT + 1 + idx ))
    if [ "${3:-}" = floor ]; then k=f; run=floor; port=$(( port + 20 )); fi
    MODE=pairing
    log "=== workload $w, $run: ${TITLE[$w]}"
    rm -rf "$PA" "$PB" "$sa" "$sb" "$sa.id" "$sb.id"
    mkdir -p "$PA" "$PB"
    cp -a "$OLD/w-$w" "$PA/"
    cp -a "$OLD/w-$w" "$PB/"
    [ "$k" = f ] || "change_$w" "$PA"
    init_stores "$sa" "$sb" "$port" "$PA" "$PB"
    drop_caches
    rate_on
    wait_quiet || true
    pcap_start "$run-$w"
    net0=$(net_snap)
    t0=$(now_us)
    deadline=$(( t0 + TIMEOUT * 1000000 ))
    start_daemons "$sa" "$sb" "$run-$w"
    R[$w.${k}_ms]="-"
    if ! wait_mounted "$deadline"; then
        R[$w.${k}_ok]="NO ($DEAD_NOTE)"
        log "[$w] $run: $DEAD_NOTE"
    else
        R[$w.${k}_mount]=$(( ($(now_us) - t0) / 1000 ))
        log "[$w] $run: both mounted after ${R[$w.${k}_mount]} ms"
        while :; do
            if { [ "$k" = f ] && [ "$(listing "$MB/w-$w")" = "$(cat "$TMP/lst-$w.old")" ] && exchanged; } \
                || { [ "$k" = p ] && matches_now "$w"; }; then t1=$(now_us); R[$w.${k}_ms]=$(( (t1 - t0) / 1000 )); break; fi
            daemons_ok || { R[$w.${k}_ok]="NO ($DEAD_NOTE)"; break; }
            [ "$(now_us)" -lt "$deadline" ] || { log "[$w] $run: B did not match within ${TIMEOUT} s"; break; }
            sleep 0.25
        done
    fi
    wait_quiet || R[$w.${k}_notquiet]=1
    net1=$(net_snap)
    pcap_stop
    rate_off
    read -r "R[$w.${k}_ab]" "R[$w.${k}_ba]" <<< "$(sub2 "$net0" "$net1")"
    R[$w.${k}_sf]=$(( ${R[$w.${k}_ab]} + ${R[$w.${k}_ba]} ))
    if [ -z "${R[$w.${k}_ok]:-}" ]; then
        if [ "$k" = f ]; then
            if diff -rq "$OLD/w-$w" "$MB/w-$w" >/dev/null 2>&1; then R[$w.f_ok]=yes; else R[$w.f_ok]=NO; fi
        elif ! verify_pairing "$w"; then
            log "[$w] $run: B differs from the expected state:"
            head -n 5 "$TMP/diff.out" | sed 's/^/    /' >&2
            while [ "$(now_us)" -lt "$deadline" ] && daemons_ok; do
                sleep 1
                if verify_pairing "$w"; then
                    late=$(( ($(now_us) - t0) / 1000 )); R[$w.${k}_ok]="late ${late} ms (${R[$w.${k}_ok]})"
                    wait_quiet || true
                    net1=$(net_snap)
                    read -r "R[$w.${k}_ab]" "R[$w.${k}_ba]" <<< "$(sub2 "$net0" "$net1")"
                    R[$w.${k}_sf]=$(( ${R[$w.${k}_ab]} + ${R[$w.${k}_ba]} ))
                    break
                fi
            done
            if [ "${R[$w.${k}_ok]}" = NO ]; then
                diff -rq "$RA/w-$w" "$MB/w-$w" 2>&1 | head -n 5 | sed 's/^/    /' >&2 || true
                log "[$w] $run: B never matched; log tails:"; tail_log "$LOG_A" 15; tail_log "$LOG_B" 15
            fi
        fi
        if daemons_ok && diff -rq "$MA/w-$w" "$MB/w-$w" >/dev/null 2>&1; then R[$w.${k}_agree]=yes; else R[$w.${k}_agree]=NO; fi
    fi
    R[$w.${k}_upd]=$(strip < "$LOG_A" | grep -c 'sending update' || true)
    R[$w.${k}_updB]=$(strip < "$LOG_B" | grep -c 'sending update' || true)
    R[$w.${k}_problems]=$( { problems "$LOG_A" 0 A; problems "$LOG_B" 0 B; } | cut -c1-250 | head -n 8)
    log "[$w] $run: A->B $(hb "${R[$w.${k}_ab]}"), B->A $(hb "${R[$w.${k}_ba]}"), start->match ${R[$w.${k}_ms]} ms, B matches: ${R[$w.${k}_ok]}, A = B: ${R[$w.${k}_agree]:--}"
    [ "$KINDS" != 1 ] || R[$w.${k}_kinds]=$(bash scripts/wire-kinds.sh "$LOG_A" "$LOG_B" 2>&1 || true)
    stop_daemons
    unmount_left
    R[$w.${k}_stop]=$STOP_NOTE
    rm -rf "$PA" "$PB" "$sa" "$sb" "$sa.id" "$sb.id"
}

# ---------------------------------------------------------------- run
T_START=$(now_us)
for w in $WORKLOADS; do prepare "$w"; done
TEXT_NOTE=""
[ ! -f "$OLD/$A_FILE" ] || TEXT_NOTE="prose (a): $(compressibility "$OLD/$A_FILE")"
[ ! -f "$OLD/$B_FILE" ] || [ -n "$TEXT_NOTE" ] || TEXT_NOTE="prose (b): $(compressibility "$OLD/$B_FILE")"
[ ! -f "$OLD/$G_FILE" ] || TEXT_NOTE="${TEXT_NOTE:+$TEXT_NOTE; }log (g): $(compressibility "$OLD/$G_FILE")"
[ ! -d "$PATCH/h/new" ] || TEXT_NOTE="${TEXT_NOTE:+$TEXT_NOTE; }new files (h): $(compressibility "$PATCH"/h/new/*)"
TEXT_NOTE=${TEXT_NOTE:-no generated text in these workloads}
log "text: $TEXT_NOTE"
T_PREP=$(( ($(now_us) - T_START) / 1000000 ))
if has_mode live; then run_live; fi
T_LIVE=$(( ($(now_us) - T_START) / 1000000 - T_PREP ))
if has_mode pairing; then
    i=0
    for w in $WORKLOADS; do measure_pairing "$w" "$i"; i=$((i + 1)); done
fi
if has_mode floor; then
    i=0
    for w in $WORKLOADS; do measure_pairing "$w" "$i" floor; i=$((i + 1)); done
fi
T_TOTAL=$(( ($(now_us) - T_START) / 1000000 ))

# ---------------------------------------------------------------- report
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then DIRTY="dirty ($(git status --porcelain | wc -l) changed/untracked paths)"; else DIRTY=clean; fi

# verdict w mode(l|p) goal: MET when B matched, bytes <= goal and bytes <= rsync -z
verdict() {
    local ok=${R[$1.$2_ok]:-} sf=${R[$1.$2_sf]:-}
    if [ -z "$sf" ] || [[ $ok != yes && $ok != late* && $ok != union ]]; then echo MISSED; return; fi
    if le "$sf" "$3" && le "$sf" "${R[$1.rz]:-}"; then echo MET; else echo MISSED; fi
}
matched() { # short form of R[w.X_ok]
    local ok=${R[$1.$2_ok]:-}
    case $ok in "") echo "-";; yes) echo yes;; union) echo union;; late*) echo late;; "not run"*) echo "n/r";; *) echo NO;; esac
}
report() {
    local w fmt
    echo "syncfs sync benchmark, live and pairing   $(date '+%F %T')"
    echo "commit $COMMIT, tree $DIRTY; binary: $BUILD_NOTE (sha256 $BIN_SUM)"
    echo "link: veth in two netns, $IPA <-> $IPB, rate ${RATE:-unlimited}, $OFFLOAD_NOTE; settle_ms=$SETTLE_NOTE; drop caches: $DROP; rsync $(rsync --version | awk 'NR == 1 {print $3}') (-z: $(rsync --version | awk '/Compress list/ { getline; print $1 }')), seed $SEED"
    echo "modes: $MODES; workloads: $WORKLOADS$( [ "$SMOKE" = 1 ] && echo " (BENCH_SMOKE=1: small sizes, the goals are for the default sizes)"); total ${T_TOTAL} s (prepare + baselines ${T_PREP} s, live ${T_LIVE} s)"
    echo "text: $TEXT_NOTE"
    echo "bytes on the wire = veth frame bytes (TCP/IP headers included), A->B + B->A. live: from just before the change through A's"
    echo "mount until B matches and the link is quiet. pairing: from before both daemons start (connect, first contact, transfer) until"
    echo "B's mount and PB match and the link is quiet. rsync -z = delta transfer of the same old -> new change to an rsync daemon;"
    echo "xdelta3 = size of new vs old. MET = B matched, syncfs bytes <= goal and <= rsync -z."
    echo "B: yes / union (B holds the new tree plus the old paths; counted as matched) / late (matched after the counters) / NO"
    echo
    fmt='%-50s | %11s %10s %-6s %-5s %8s | %11s %10s %-6s %-5s %8s | %11s %11s | %7s %7s\n'
    printf "$fmt" "" "live" "goal" "" "B" "close>B" "pairing" "goal" "" "B" "match" "rsync -z" "xdelta3" "live/rz" "pair/rz"
    for w in $WORKLOADS; do
        printf "$fmt" "$w. ${TITLE[$w]}" \
            "$(num "${R[$w.l_sf]:-}")" "$(num "${GOAL_L[$w]}")" "$(has_mode live && verdict "$w" l "${GOAL_L[$w]}" || echo -)" \
            "$(matched "$w" l)" "$( [ -n "${R[$w.l_lat]:-}" ] && [ "${R[$w.l_lat]}" != - ] && echo "${R[$w.l_lat]} ms" || echo -)" \
            "$(num "${R[$w.p_sf]:-}")" "$(num "${GOAL_P[$w]}")" "$(has_mode pairing && verdict "$w" p "${GOAL_P[$w]}" || echo -)" \
            "$(matched "$w" p)" "$( [ -n "${R[$w.p_ms]:-}" ] && [ "${R[$w.p_ms]}" != - ] && echo "$(awk -v m="${R[$w.p_ms]}" 'BEGIN { printf "%.1f s", m / 1000 }')" || echo -)" \
            "$(num "${R[$w.rz]:-}")" "$(num "${R[$w.xd]:-}")" \
            "$(ratio "${R[$w.l_sf]:-}" "${R[$w.rz]:-}")" "$(ratio "${R[$w.p_sf]:-}" "${R[$w.rz]:-}")"
    done
    if has_mode floor; then
        echo
        printf 'floor (the same pairing with nothing changed: connect, handshakes, first-contact index; no goal):'
        for w in $WORKLOADS; do printf ' %s %s B%s' "$w" "$(num "${R[$w.f_sf]:-}")" "$( [ "${R[$w.f_ok]:-}" = yes ] || echo " (B: ${R[$w.f_ok]:-?})")"; done
        echo
    fi
    echo
    echo "details"
    for w in $WORKLOADS; do
        echo "  $w. ${TITLE[$w]}:"
        [ "$w" != c ] || echo "     tree     $C_NOTE"
        if has_mode live; then
            if [ -n "${R[$w.l_sf]:-}" ]; then
                echo "     live     A>B ${R[$w.l_ab]} B, B>A ${R[$w.l_ba]} B ($(hb "${R[$w.l_sf]}")); B matches: ${R[$w.l_ok]}; ${R[$w.l_upd]} updates sent by A, payload $(hb "${R[$w.l_payload]}"); ${R[$w.l_updB]} sent by B${R[$w.l_notquiet]:+; link never went quiet}"
                echo "              change took ${R[$w.l_apply]} ms on A${R[$w.l_changerr]:+ (and reported an error)}; close->B ${R[$w.l_lat]} ms; read from disk A $(hb "${R[$w.l_rdA]}"), B $(hb "${R[$w.l_rdB]}"); read() total A $(hb "${R[$w.l_rcA]}"), B $(hb "${R[$w.l_rcB]}")"
            else
                echo "     live     ${R[$w.l_ok]:-not run}"
            fi
            if [ -n "${R[$w.l_problems]:-}" ]; then
                echo "              daemon warnings/errors during the change:"
                sed 's/^/                /' <<< "${R[$w.l_problems]}"
            fi
        fi
        if has_mode pairing; then
            echo "     pairing  A>B ${R[$w.p_ab]:-?} B, B>A ${R[$w.p_ba]:-?} B ($(hb "${R[$w.p_sf]:-}")); B matches: ${R[$w.p_ok]:-?}; A = B: ${R[$w.p_agree]:--}; ${R[$w.p_upd]:-?} updates sent by A, ${R[$w.p_updB]:-?} by B${R[$w.p_notquiet]:+; link never went quiet}"
            echo "              both mounted after ${R[$w.p_mount]:--} ms, B matched after ${R[$w.p_ms]:--} ms (from the daemons' start); shutdown: ${R[$w.p_stop]:--}"
            if [ -n "${R[$w.p_problems]:-}" ]; then
                echo "              daemon warnings/errors (whole run):"
                sed 's/^/                /' <<< "${R[$w.p_problems]}"
            fi
            [ -z "${R[$w.p_kinds]:-}" ] || sed 's/^/              /' <<< "${R[$w.p_kinds]}"
        fi
        if has_mode floor; then
            echo "     floor    A>B ${R[$w.f_ab]:-?} B, B>A ${R[$w.f_ba]:-?} B ($(hb "${R[$w.f_sf]:-}")); B holds the old tree: ${R[$w.f_ok]:-?}${R[$w.f_notquiet]:+; link never went quiet}"
            [ -z "${R[$w.f_kinds]:-}" ] || sed 's/^/              /' <<< "${R[$w.f_kinds]}"
        fi
        echo "     rsync -z A>B ${R[$w.rz_ab]} B, B>A ${R[$w.rz_ba]} B, ${R[$w.rz_ms]} ms, result ${R[$w.rz_ok]}"
        echo "     xdelta3  ${R[$w.xd]} B, ${R[$w.xd_how]}"
    done
    echo
    has_mode live && echo "live daemons' shutdown: $LIVE_STOP${LIVE_BROKEN:+; live mode broken: $LIVE_BROKEN}"
    local nofile
    nofile=$(cat "$LOGDIR"/live-?.log "$LOGDIR"/pair-?-?.log 2>/dev/null | strip | grep -m1 'open-file limit is' | sed 's/^[^ ]* *//' || true)
    [ -z "$nofile" ] || echo "logged by the daemons at start (left out of the details above): $nofile"
    echo "notes: close>B = last write/close/rename on A -> change visible in B's mount (20 ms polls); match = daemons' start -> B's"
    echo "mount has the expected tree (0.25 s polls); disk read = /proc/PID/io read_bytes of each live daemon (caches dropped: $DROP);"
    echo "logs in target/bench-sync-logs/ (live-a.log, live-b.log, pair-W-a.log, pair-W-b.log, rsync.log)"
}
report | tee "$OUT"
log "saved to $OUT"
exit 0
}
