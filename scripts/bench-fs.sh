#!/usr/bin/env bash
# Benchmarks the syncfs FUSE mount against the plain backing filesystem.
#
# Every workload runs twice per round, in the same run: once in a plain directory
# (same filesystem as the store, no FUSE) and once through a live `syncfs mount`.
# Prints a table (workload, backing figure, mount figure, mount/backing ratio, goal)
# and saves it to target/bench-fs.txt.
#
# Workloads:
#   1. sequential write of BENCH_SIZE_MB MiB with fsync at the end (dd conv=fsync), MiB/s
#   2. sequential read of that file, cold (caches dropped) and warm (read again), MiB/s
#   3. 4 KiB random writes into a 256 MiB file, then fsync (fio, else python3), IOPS
#   4. `tar xf` of a crate source tree (>= 3000 files) plus a final sync, seconds
#
# Environment:
#   BENCH_SIZE_MB=1024     size of the sequential file
#   BENCH_RUNS=1           rounds; each figure is the median over the rounds
#   BENCH_RAND_IOS=20000   number of 4 KiB random writes
#   BENCH_RAND_MB=256      size of the random-write file
#   BENCH_RANDW_TOOL=auto  auto | fio | python
#   BENCH_DIR=/var/tmp     where the temp dir goes (must not be tmpfs)
#   BENCH_BUILD=1          0: don't run `cargo build --release --bin syncfs`
#   SYNCFS=path            binary to use (default target/release/syncfs)
#   BENCH_KEEP=0           1: keep the temp dir (store, files, daemon log)
#   BENCH_INSTALL=1        0: don't try `apt-get install fio` when fio is missing
#
# Needs root (drop_caches, FUSE mount).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

SIZE_MB=${BENCH_SIZE_MB:-1024}
RUNS=${BENCH_RUNS:-1}
RAND_IOS=${BENCH_RAND_IOS:-20000}
RAND_MB=${BENCH_RAND_MB:-256}
RANDW_TOOL=${BENCH_RANDW_TOOL:-auto}
BASE=${BENCH_DIR:-/var/tmp}
KEEP=${BENCH_KEEP:-0}
OUT=$REPO/target/bench-fs.txt
rm -f "$REPO/target/bench-fs-daemon.log"  # only a failed run leaves one

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for v in SIZE_MB RUNS RAND_IOS RAND_MB; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[ "$(id -u)" = 0 ] || die "run as root (drop_caches and the FUSE mount need it)"
[ -w /proc/sys/vm/drop_caches ] || die "/proc/sys/vm/drop_caches is not writable"
[ -e /dev/fuse ] || modprobe fuse || die "no /dev/fuse"

# ---------------------------------------------------------------- state and cleanup
TMP=""
DAEMON_PID=""
MNT=""
DAEMON_LOG=""

mounted() { [ -n "$MNT" ] && awk -v m="$MNT" '$2 == m && $3 ~ /^fuse/ { f = 1 } END { exit !f }' /proc/mounts; }
daemon_alive() { [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; }

show_daemon_log() {
    if [ -n "$DAEMON_LOG" ] && [ -s "$DAEMON_LOG" ]; then
        log "last lines of the daemon log ($DAEMON_LOG):"
        tail -n "${1:-30}" "$DAEMON_LOG" | sed 's/\x1b\[[0-9;]*m//g; s/^/    | /' >&2
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    set +e
    if [ "$rc" != 0 ]; then
        log "failed or interrupted (exit $rc)"
        daemon_alive || [ -z "$DAEMON_PID" ] || log "the syncfs daemon (pid $DAEMON_PID) is not running"
        show_daemon_log 40
    fi
    if daemon_alive; then
        kill -TERM "$DAEMON_PID" 2>/dev/null
        for _ in $(seq 50); do daemon_alive || break; sleep 0.2; done
        if daemon_alive; then
            log "daemon did not stop on SIGTERM; SIGKILL"
            kill -KILL "$DAEMON_PID" 2>/dev/null
        fi
        wait "$DAEMON_PID" 2>/dev/null
    fi
    if mounted; then
        umount -l "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" 2>/dev/null
    fi
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if [ "$rc" != 0 ] && [ -s "$DAEMON_LOG" ]; then
            mkdir -p "$REPO/target" && cp "$DAEMON_LOG" "$REPO/target/bench-fs-daemon.log" \
                && log "daemon log saved to target/bench-fs-daemon.log"
        fi
        if [ "$KEEP" = 1 ]; then
            log "kept $TMP"
        elif mounted; then
            log "mount still present at $MNT; not removing $TMP"
        else
            rm -rf --one-file-system "$TMP"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- helpers
now() { date +%s.%N; }
ELAPSED=0
# timed CMD...: runs CMD, sets ELAPSED to its wall time in seconds.
timed() {
    local t0 t1
    t0=$(now)
    "$@"
    t1=$(now)
    ELAPSED=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')
}
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
median() { # median of the arguments
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.6f", v[(NR + 1) / 2]; else printf "%.6f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
check_daemon() {
    daemon_alive || die "the syncfs daemon died ($1)"
    mounted || die "$MNT is no longer mounted ($1)"
}

# ---------------------------------------------------------------- binary
if [ -n "${SYNCFS:-}" ]; then
    BIN=$SYNCFS
else
    BIN=$REPO/target/release/syncfs
    if [ "${BENCH_BUILD:-1}" = 1 ]; then
        log "cargo build --release --bin syncfs"
        cargo build --release --bin syncfs >&2 || die "release build failed"
    fi
fi
[ -x "$BIN" ] || die "no syncfs binary at $BIN (build it, or set SYNCFS)"

# ---------------------------------------------------------------- random-write tool
if [ "$RANDW_TOOL" = auto ] || [ "$RANDW_TOOL" = fio ]; then
    if ! command -v fio >/dev/null && [ "${BENCH_INSTALL:-1}" = 1 ] && command -v apt-get >/dev/null; then
        log "fio missing: apt-get install -y fio"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q fio >/dev/null 2>&1 \
            || { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 \
                 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q fio >/dev/null 2>&1; } \
            || log "could not install fio"
    fi
    if command -v fio >/dev/null; then
        RANDW_TOOL=fio
    elif [ "$RANDW_TOOL" = fio ]; then
        die "BENCH_RANDW_TOOL=fio but fio is not available"
    else
        RANDW_TOOL=python
    fi
fi
if [ "$RANDW_TOOL" = python ] && ! command -v python3 >/dev/null; then die "neither fio nor python3"; fi
[ "$RANDW_TOOL" = fio ] || [ "$RANDW_TOOL" = python ] || die "BENCH_RANDW_TOOL must be auto, fio or python"

# ---------------------------------------------------------------- temp dir
[ "$(stat -f -c %T "$BASE")" != tmpfs ] || die "$BASE is tmpfs; set BENCH_DIR to a disk-backed directory"
TMP=$(mktemp -d "$BASE/syncfs-bench.XXXXXX")
STORE=$TMP/store
PLAIN=$TMP/plain         # the "backing" side: a plain directory on the same filesystem
MNT=$TMP/mnt
DAEMON_LOG=$TMP/daemon.log
mkdir -p "$PLAIN" "$MNT"

need_mb=$(( SIZE_MB * 2 + RAND_MB * 2 + 600 ))
avail_mb=$(df -Pm "$TMP" | awk 'NR == 2 { print $4 }')
[ "$avail_mb" -ge "$need_mb" ] || die "need ~${need_mb} MiB free in $BASE, have ${avail_mb} MiB"

# ---------------------------------------------------------------- source tarball
# Real source trees: crates from the cargo registry (tokio-*, libp2p-*, sled-* first,
# then the largest other crates until there are >= 3000 files).
TARBALL=$TMP/src.tar
make_tarball() {
    local reg d n total=0
    local -a pick=()
    reg=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ 2>/dev/null | head -n 1)
    [ -n "$reg" ] || die "no cargo registry sources under ${CARGO_HOME:-$HOME/.cargo}/registry/src"
    shopt -s nullglob
    for d in "$reg"tokio-* "$reg"libp2p-* "$reg"sled-*; do
        pick+=("$(basename "$d")")
    done
    shopt -u nullglob
    for d in "${pick[@]}"; do total=$(( total + $(find "$reg$d" -type f | wc -l) )); done
    if [ "$total" -lt 3000 ]; then
        while read -r n d; do
            [ "$total" -ge 3000 ] && break
            case " ${pick[*]} " in *" $d "*) continue ;; esac
            pick+=("$d"); total=$(( total + n ))
        done < <(cd "$reg" && for d in */; do echo "$(find "$d" -type f | wc -l) ${d%/}"; done | sort -rn)
    fi
    tar cf "$TARBALL" -C "$reg" "${pick[@]}"
    TAR_FILES=$(tar tf "$TARBALL" | grep -vc '/$' || true)
    TAR_MB=$(( $(stat -c %s "$TARBALL") / 1048576 ))
    TAR_CRATES=${#pick[@]}
    [ "$TAR_FILES" -ge 3000 ] || die "tarball has only $TAR_FILES files"
}
log "building the source tarball"
make_tarball
log "tarball: $TAR_FILES files, $TAR_CRATES crates, $TAR_MB MiB"

# ---------------------------------------------------------------- mount
log "syncfs init + mount ($BIN)"
"$BIN" init "$STORE" >"$TMP/init.log" 2>&1 || { cat "$TMP/init.log" >&2; die "syncfs init failed"; }
[ -d "$STORE/data" ] || die "syncfs init did not create $STORE/data"
NO_COLOR=1 "$BIN" mount "$STORE" "$MNT" >"$DAEMON_LOG" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 150); do
    mounted && break
    daemon_alive || die "syncfs mount exited before mounting"
    sleep 0.2
done
mounted || die "no FUSE mount at $MNT after 30 s"
MNT_TYPE=$(awk -v m="$MNT" '$2 == m { t = $3 } END { print t }' /proc/mounts)
log "mounted at $MNT, type $MNT_TYPE (daemon pid $DAEMON_PID)"

# ---------------------------------------------------------------- workloads
# Each sets ELAPSED (seconds) for a run in directory $1.
w_seqwrite() {
    rm -f "$1/seq.bin"; drop_caches
    timed dd if=/dev/zero of="$1/seq.bin" bs=1M count="$SIZE_MB" conv=fsync status=none
    local got; got=$(stat -c %s "$1/seq.bin")
    [ "$got" = $(( SIZE_MB * 1048576 )) ] || die "$1/seq.bin has $got bytes"
}
w_seqread() { # $2 = cold | warm
    if [ "$2" = cold ]; then drop_caches; fi
    timed dd if="$1/seq.bin" of=/dev/null bs=1M status=none
}
randw_python() {
    python3 - "$1" "$RAND_IOS" "$RAND_MB" <<'EOF'
import os, random, sys
path, n, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_WRONLY)
buf = os.urandom(4096)
rnd = random.Random(42)
blocks = mb * 256
for _ in range(n):
    os.pwrite(fd, buf, rnd.randrange(blocks) * 4096)
os.fsync(fd)
os.close(fd)
EOF
}
randw_fio() {
    fio --name=randw --filename="$1" --rw=randwrite --bs=4k --size="${RAND_MB}M" \
        --number_ios="$RAND_IOS" --ioengine=psync --end_fsync=1 --invalidate=0 \
        --randrepeat=1 --norandommap --overwrite=1 --output=/dev/null
}
w_randwrite() {
    local f=$1/rand.bin
    if [ ! -f "$f" ]; then # lay the file out once, untimed
        dd if=/dev/urandom of="$f" bs=1M count="$RAND_MB" conv=fsync status=none
    fi
    drop_caches
    timed "randw_$RANDW_TOOL" "$f"
}
w_untar() {
    rm -rf "$1/tree"; mkdir "$1/tree"
    drop_caches; cat "$TARBALL" >/dev/null  # tarball warm, target cold, for both sides
    timed untar_sync "$1/tree"
    local n; n=$(find "$1/tree" -type f | wc -l)
    [ "$n" = "$TAR_FILES" ] || die "untar into $1 produced $n files, want $TAR_FILES"
}
untar_sync() { tar xf "$TARBALL" -C "$1"; sync; }

declare -A VAL  # VAL[key,side] = space-separated per-run figures
add() { VAL[$1,$2]="${VAL[$1,$2]:-} $3"; }

for run in $(seq "$RUNS"); do
    log "round $run/$RUNS"
    for side in backing mount; do
        if [ "$side" = backing ]; then dir=$PLAIN; else dir=$MNT; check_daemon "before round $run"; fi

        w_seqwrite "$dir"
        mbps=$(calc "$SIZE_MB / $ELAPSED"); add seqwrite "$side" "$mbps"
        log "  $side seq write:       ${mbps} MiB/s (${ELAPSED}s)"

        w_seqread "$dir" cold
        mbps=$(calc "$SIZE_MB / $ELAPSED"); add readcold "$side" "$mbps"
        log "  $side seq read cold:   ${mbps} MiB/s"
        w_seqread "$dir" warm
        mbps=$(calc "$SIZE_MB / $ELAPSED"); add readwarm "$side" "$mbps"
        log "  $side seq read warm:   ${mbps} MiB/s"

        w_randwrite "$dir"
        iops=$(calc "$RAND_IOS / $ELAPSED" 0); add randwrite "$side" "$iops"
        log "  $side 4K rand write:   ${iops} IOPS (${ELAPSED}s incl. fsync)"

        w_untar "$dir"
        secs=$(calc "$ELAPSED" 3); add untar "$side" "$secs"
        log "  $side untar+sync:      ${secs} s"

        if [ "$side" = mount ]; then check_daemon "after round $run"; fi
    done
done

# Writes through the mount must have landed in the store's backing directory.
[ "$(stat -c %s "$STORE/data/seq.bin" 2>/dev/null || echo 0)" = $(( SIZE_MB * 1048576 )) ] \
    || die "seq.bin written through the mount is missing or short in $STORE/data"
[ "$(find "$STORE/data/tree" -type f | wc -l)" = "$TAR_FILES" ] \
    || die "the untarred tree is incomplete in $STORE/data"

# ---------------------------------------------------------------- table
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=""
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || dirty=" (work tree has uncommitted changes; binary built from it)"
fstype=$(findmnt -n -o FSTYPE -T "$TMP" 2>/dev/null || stat -f -c %T "$TMP")

# row KEY LABEL UNIT KIND GOAL: KIND=higher (ratio >= GOAL) | lower (ratio <= GOAL) | none
row() {
    local key=$1 label=$2 unit=$3 kind=$4 goal=$5 b m ratio verdict goaltxt
    # shellcheck disable=SC2086
    b=$(median ${VAL[$key,backing]})
    # shellcheck disable=SC2086
    m=$(median ${VAL[$key,mount]})
    ratio=$(calc "$m / $b" 2)
    case $kind in
        higher) goaltxt=">= $goal"; verdict=$(awk -v r="$m" -v b="$b" -v g="$goal" 'BEGIN { print (r / b >= g) ? "ok" : "MISS" }') ;;
        lower)  goaltxt="<= $goal"; verdict=$(awk -v r="$m" -v b="$b" -v g="$goal" 'BEGIN { print (r / b <= g) ? "ok" : "MISS" }') ;;
        *)      goaltxt="-"; verdict="-" ;;
    esac
    local fmt=2; [ "$unit" = IOPS ] && fmt=0; [ "$unit" = s ] && fmt=3
    printf '%-40s %14s %14s %9s %8s  %s\n' "$label" \
        "$(calc "$b" $fmt) $unit" "$(calc "$m" $fmt) $unit" "$ratio" "$goaltxt" "$verdict"
}

{
    echo "syncfs bench-fs: commit $commit$dirty"
    echo "kernel $(uname -r), $(nproc) cpus, backing fs $fstype ($TMP), mount type $MNT_TYPE, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "binary $BIN"
    echo "runs per figure: $RUNS (median); seq file ${SIZE_MB} MiB; random writes: $RAND_IOS x 4 KiB in ${RAND_MB} MiB via $RANDW_TOOL;"
    echo "untar: $TAR_FILES files, $TAR_CRATES crates, $TAR_MB MiB; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    printf '%-40s %14s %14s %9s %8s  %s\n' workload backing mount mnt/back goal verdict
    printf '%-40s %14s %14s %9s %8s  %s\n' "$(printf -- '-%.0s' {1..40})" -------------- -------------- --------- -------- -------
    row seqwrite  "seq write ${SIZE_MB} MiB + fsync"        MiB/s higher 0.70
    row readcold  "seq read ${SIZE_MB} MiB, cold"           MiB/s higher 0.90
    row readwarm  "seq read ${SIZE_MB} MiB, warm"           MiB/s higher 0.90
    row randwrite "4K rand write x$RAND_IOS + fsync"        IOPS  none   -
    row untar     "untar $TAR_FILES files + sync (time)"    s     lower  2.00
    if [ "$RUNS" -gt 1 ]; then
        echo
        echo "per-run figures (backing | mount):"
        for k in seqwrite readcold readwarm randwrite untar; do
            printf '  %-10s %s |%s\n' "$k" "${VAL[$k,backing]}" "${VAL[$k,mount]}"
        done
    fi
} > "$TMP/table.txt"

check_daemon "at the end"
mkdir -p "$(dirname "$OUT")"
cp "$TMP/table.txt" "$OUT"
echo
cat "$TMP/table.txt"
echo
echo "(saved to ${OUT#"$REPO"/})"
# "no peer configured" is expected: the bench store has no peer.
bad=$(sed 's/\x1b\[[0-9;]*m//g' "$DAEMON_LOG" | grep -E ' (WARN|ERROR) |panicked' | grep -v 'no peer configured' || true)
if [ -n "$bad" ]; then
    log "the daemon logged $(printf '%s\n' "$bad" | wc -l) warning/error lines; the last ones:"
    printf '%s\n' "$bad" | tail -n 20 | sed 's/^/    | /' >&2
fi
