#!/usr/bin/env bash
# Benchmarks the syncfs FUSE mount against the plain backing filesystem (issue 11).
#
# Every measure runs on a plain directory and through a live `syncfs mount` on the
# same filesystem, BENCH_RUNS times, interleaved (plain, mount, plain, mount), and the
# table prints the medians and mount/plain. Two modes:
#   alone  the mount has no peer configured
#   peer   a second daemon (B) is connected on loopback and receives everything; after
#          each measure through the mount the script waits (untimed) until A is idle
# Measures:
#   untar   `tar xf` of a source tree (>= 8,000 files from the cargo registry) + sync
#   cycle   the whole untar cycle: extract, sync, diff -r against a reference copy,
#           find -ls, read every file, rm -rf, sync
#   git     `git checkout` between two tags of a repository built from crate sources
#           (tag v1: older versions of the crates the registry holds twice, v2: newer)
#   write   sequential write of BENCH_SIZE_MB MiB + fsync (MiB/s)
#   read    sequential read of that file, caches dropped first (MiB/s)
# In the alone mode each measure also runs through a bare passthrough mount (unless
# BENCH_FLOOR=0): examples/passthrough.rs, syncfs's FUSE filesystem with nothing recorded,
# so the table shows what FUSE itself costs here beside what syncfs adds.
# Then, unless BENCH_PENDING=0: untar into a mount with BENCH_PENDING files pending for
# an offline peer, beside untar into an empty mount (same peer offline), interleaved.
#
# By default the filesystem is a fresh journaled ext4 image, loop-mounted (BENCH_FS=loop):
# the host's root here is ext4 without a journal, whose inode allocator scans past every
# inode deleted in the last 5 s (300 s while unflushed): a create right after an rm -rf
# then costs milliseconds, for the plain directory too, and swamped the ratios.
# BENCH_FS=dir runs in BENCH_DIR itself.
#
# Environment: BENCH_RUNS=2, BENCH_MODES="alone peer", BENCH_SIZE_MB=1024,
#   BENCH_PENDING=100000, BENCH_FS=loop, BENCH_IMG_GB=12, BENCH_DIR=/var/tmp,
#   BENCH_BUILD=1 (0: don't cargo build), SYNCFS=path (binary), BENCH_KEEP=0,
#   BENCH_FLOOR=1, PASSTHROUGH=path (the example's binary).
# Needs root (loop mount, drop_caches, FUSE). Writes target/bench-fs.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNS=${BENCH_RUNS:-2}
MODES=${BENCH_MODES:-alone peer}
SIZE_MB=${BENCH_SIZE_MB:-1024}
PENDING=${BENCH_PENDING:-100000}
FSKIND=${BENCH_FS:-loop}
OUT=$REPO/target/bench-fs.txt

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
for v in RUNS SIZE_MB; do [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"; done
[[ $PENDING =~ ^[0-9]+$ ]] || die "BENCH_PENDING must be a number"
[ -e /dev/fuse ] || modprobe fuse || die "no /dev/fuse"
command -v git >/dev/null || die "git is needed"

# ---------------------------------------------------------------- state and cleanup
TMP=$(mktemp -d "${BENCH_DIR:-/var/tmp}/syncfs-bench.XXXXXX")
PIDS=()   # daemons
MNTS=()   # their mount points
FSMNT=""  # the loop-mounted filesystem
cleanup() {
    local rc=$? p m
    trap - EXIT INT TERM
    set +e
    [ "$rc" = 0 ] || log "failed (exit $rc); daemon logs are in $TMP/*.log"
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for m in "${MNTS[@]}"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
    if [ "$rc" != 0 ]; then mkdir -p "$REPO/target" && cp "$TMP"/*.log "$REPO/target/" 2>/dev/null; fi
    [ -n "$FSMNT" ] && umount "$FSMNT" 2>/dev/null
    if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf --one-file-system "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "${SYNCFS:-}" ]; then BIN=$SYNCFS; else
    BIN=$REPO/target/release/syncfs
    [ "${BENCH_BUILD:-1}" = 0 ] || cargo build --release --bin syncfs >&2 || die "build failed"
fi
[ -x "$BIN" ] || die "no syncfs binary at $BIN"
FLOOR=${BENCH_FLOOR:-1}
if [ "$FLOOR" = 1 ]; then
    if [ -n "${PASSTHROUGH:-}" ]; then PT=$PASSTHROUGH; else
        PT=$REPO/target/release/examples/passthrough
        [ "${BENCH_BUILD:-1}" = 0 ] || cargo build --release --example passthrough >&2 || die "build failed"
    fi
    [ -x "$PT" ] || die "no passthrough binary at $PT"
fi

if [ "$FSKIND" = loop ]; then
    truncate -s "${BENCH_IMG_GB:-12}G" "$TMP/fs.img"
    # no lazy init: ext4lazyinit would zero inode tables in the background, mid-measure
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$TMP/fs.img" || die "mkfs.ext4 failed"
    mkdir "$TMP/fs" && mount -o loop "$TMP/fs.img" "$TMP/fs" || die "loop mount failed"
    FSMNT=$TMP/fs; W=$TMP/fs
else
    W=$TMP
fi
FSDESC="$(findmnt -n -o FSTYPE,OPTIONS -T "$W" | cut -c1-60)"

# ---------------------------------------------------------------- helpers
now() { date +%s.%N; }
ELAPSED=0
timed() { local t0; t0=$(now); "$@"; ELAPSED=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.4f", b - a }'); }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
declare -A VAL
add() { VAL[$1]="${VAL[$1]:-} $2"; }

# ---------------------------------------------------------------- inputs
REG=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ 2>/dev/null | head -n 1)
[ -n "$REG" ] || die "no cargo registry sources"
make_tarball() { # the largest crates until >= 8000 files
    local n d total=0; local -a pick=()
    while read -r n d; do
        pick+=("$d"); total=$(( total + n ))
        [ "$total" -ge 8000 ] && break
    done < <(cd "$REG" && for d in */; do echo "$(find "$d" -type f | wc -l) ${d%/}"; done | sort -rn)
    [ "$total" -ge 8000 ] || die "the registry holds only $total files"
    tar cf "$TMP/src.tar" -C "$REG" "${pick[@]}"
    TAR_FILES=$total
    mkdir "$W/ref" && tar xf "$TMP/src.tar" -C "$W/ref"
}
make_repo() { # tags v1 (older versions) and v2 (newer) of crates held twice, plus a shared base
    local g=$TMP/repo fam old new
    git init -q "$g"
    cp -r "$REG"/tokio-[0-9]* "$g/" 2>/dev/null || true
    for fam in $(cd "$REG" && ls | sed -E 's/-[0-9]+\.[0-9]+.*$//' | sort | uniq -d); do
        old=$(cd "$REG" && ls -d "$fam"-[0-9]* | sort -V | head -n 1)
        mkdir -p "$g/vendor" && cp -r "$REG/$old" "$g/vendor/$fam"
    done
    git -C "$g" add -A && git -C "$g" -c user.name=b -c user.email=b@b commit -qm v1 && git -C "$g" tag v1
    for fam in $(cd "$REG" && ls | sed -E 's/-[0-9]+\.[0-9]+.*$//' | sort | uniq -d); do
        new=$(cd "$REG" && ls -d "$fam"-[0-9]* | sort -V | tail -n 1)
        rm -rf "${g:?}/vendor/$fam" && cp -r "$REG/$new" "$g/vendor/$fam"
    done
    git -C "$g" add -A && git -C "$g" -c user.name=b -c user.email=b@b commit -qm v2 && git -C "$g" tag v2
    git clone -q --bare "$g" "$TMP/repo.git"
    GIT_FILES=$(git -C "$g" ls-files | wc -l)
    GIT_CHANGED=$(git -C "$g" diff --name-only v1 v2 | wc -l)
}
log "preparing inputs on $W ($FSDESC)"
make_tarball
make_repo
log "tree: $TAR_FILES files; repo: $GIT_FILES files, $GIT_CHANGED differ between v1 and v2"

# ---------------------------------------------------------------- daemons
N=0
start_node() { # name [init args...]: inits a store, mounts it; sets NODE_MNT
    local name=$1; shift
    "$BIN" init "$W/$name" "$@" > "$TMP/$name.id" 2>&1 || { cat "$TMP/$name.id" >&2; die "init $name"; }
    mkdir -p "$W/mnt-$name"
    NO_COLOR=1 "$BIN" mount "$W/$name" "$W/mnt-$name" > "$TMP/$name.log" 2>&1 &
    PIDS+=($!); MNTS+=("$W/mnt-$name")
    for _ in $(seq 150); do mountpoint -q "$W/mnt-$name" && break; sleep 0.2; done
    mountpoint -q "$W/mnt-$name" || die "$name did not mount (see $TMP/$name.log)"
    NODE_MNT=$W/mnt-$name
}
id_of() { awk -v k="$2" '$0 ~ k { print $NF }' "$TMP/$1.id"; }
stop_nodes() {
    local p m
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for m in "${MNTS[@]}"; do mountpoint -q "$m" && umount -l "$m"; done
    PIDS=(); MNTS=()
}
wait_idle() { # store: until its daemon reports idle (bounded)
    for _ in $(seq 1200); do
        "$BIN" status --json "$1" 2>/dev/null | grep -q '"phase": *"idle"' && return 0
        sleep 0.25
    done
    log "warning: $1 not idle after 300 s"
}
start_floor() { # a bare passthrough mount at $W/floor-$N; sets FLOOR_MNT
    mkdir -p "$W/floor-back-$N" "$W/floor-$N"
    "$PT" "$W/floor-back-$N" "$W/floor-$N" > "$TMP/floor-$N.log" 2>&1 &
    PIDS+=($!); MNTS+=("$W/floor-$N")
    for _ in $(seq 150); do mountpoint -q "$W/floor-$N" && break; sleep 0.2; done
    mountpoint -q "$W/floor-$N" || die "the passthrough did not mount (see $TMP/floor-$N.log)"
    FLOOR_MNT=$W/floor-$N
}
# A pair: A mounted; B (peer mode) joins A's folder on loopback.
start_mode() { # alone | peer | offline
    N=$((N + 1))
    local a=a$N b=b$N pa=$((5800 + N * 2)) pb=$((5801 + N * 2))
    start_node_args=(--listen "/ip4/127.0.0.1/tcp/$pa")
    if [ "$1" = alone ]; then start_node "$a" "${start_node_args[@]}"; A_STORE=$W/$a; A_MNT=$NODE_MNT; return; fi
    "$BIN" init "$W/$a" "${start_node_args[@]}" > "$TMP/$a.id" 2>&1
    "$BIN" init "$W/$b" --join "$(id_of "$a" 'folder id')" --listen "/ip4/127.0.0.1/tcp/$pb" \
        --peer "/ip4/127.0.0.1/tcp/$pa/p2p/$(id_of "$a" 'peer id')" > "$TMP/$b.id" 2>&1
    "$BIN" add-peer "$W/$a" "/ip4/127.0.0.1/tcp/$pb/p2p/$(id_of "$b" 'peer id')" >/dev/null
    for n in "$a" $([ "$1" = peer ] && echo "$b"); do
        mkdir -p "$W/mnt-$n"
        NO_COLOR=1 "$BIN" mount "$W/$n" "$W/mnt-$n" > "$TMP/$n.log" 2>&1 &
        PIDS+=($!); MNTS+=("$W/mnt-$n")
        for _ in $(seq 150); do mountpoint -q "$W/mnt-$n" && break; sleep 0.2; done
        mountpoint -q "$W/mnt-$n" || die "$n did not mount (see $TMP/$n.log)"
    done
    A_STORE=$W/$a; A_MNT=$W/mnt-$a
}

# ---------------------------------------------------------------- measures
# Each runs in directory $1 (plain or mount) and sets ELAPSED, or RATE in MiB/s.
untar_sync() { tar xf "$TMP/src.tar" -C "$1"; sync; }
m_untar() {
    mkdir "$1/u"; cat "$TMP/src.tar" > /dev/null
    timed untar_sync "$1/u"
    [ "$(find "$1/u" -type f | wc -l)" = "$TAR_FILES" ] || die "untar into $1 is incomplete"
    rm -rf "$1/u"; sync
}
cycle() {
    mkdir "$1/c" && tar xf "$TMP/src.tar" -C "$1/c" && sync
    diff -r "$W/ref" "$1/c" > /dev/null || die "the tree extracted into $1 differs"
    find "$1/c" -ls > /dev/null
    tar cf - -C "$1/c" . | cat > /dev/null
    rm -rf "$1/c"; sync
}
m_cycle() { timed cycle "$1"; }
checkout() { git -C "$1/g" checkout -q v2; sync; }
m_git() {
    git clone -q --no-checkout "$TMP/repo.git" "$1/g" && git -C "$1/g" checkout -q v1 && sync
    timed checkout "$1"
    [ -z "$(git -C "$1/g" status --porcelain)" ] || die "checkout in $1 left a dirty tree"
    rm -rf "$1/g"; sync
}
m_write() {
    rm -f "$1/seq.bin"; drop_caches
    timed dd if=/dev/zero of="$1/seq.bin" bs=1M count="$SIZE_MB" conv=fsync status=none
    RATE=$(awk -v s="$SIZE_MB" -v t="$ELAPSED" 'BEGIN { printf "%.1f", s / t }')
}
m_read() {
    drop_caches
    timed dd if="$1/seq.bin" of=/dev/null bs=1M status=none
    RATE=$(awk -v s="$SIZE_MB" -v t="$ELAPSED" 'BEGIN { printf "%.1f", s / t }')
    rm -f "$1/seq.bin"; sync
}
run_measure() { # mode measure dir side
    "m_$2" "$3"
    case $2 in write | read) add "$1,$2,$4" "$RATE"; log "  $1 $2 $4: $RATE MiB/s" ;;
        *) add "$1,$2,$4" "$ELAPSED"; log "  $1 $2 $4: ${ELAPSED} s" ;; esac
    [ "$4" = plain ] || [ "$1" != peer ] || wait_idle "$A_STORE"
}

for mode in $MODES; do
    log "mode $mode"
    start_mode "$mode"
    mkdir -p "$W/plain-$N"
    FLOOR_MNT=""
    [ "$FLOOR" != 1 ] || [ "$mode" != alone ] || start_floor
    # warm-up, untimed: the first untar into a fresh filesystem ran twice as slow
    for d in "$W/plain-$N" "$A_MNT" $FLOOR_MNT; do m_untar "$d"; done
    [ "$mode" != peer ] || wait_idle "$A_STORE"
    for r in $(seq "$RUNS"); do
        for m in untar cycle git write read; do
            run_measure "$mode" "$m" "$W/plain-$N" plain
            run_measure "$mode" "$m" "$A_MNT" mount
            [ -z "$FLOOR_MNT" ] || run_measure "$mode" "$m" "$FLOOR_MNT" floor
        done
    done
    stop_nodes
done

# ---------------------------------------------------------------- pending files
if [ "$PENDING" -gt 0 ]; then
    log "pending: two mounts whose peer is offline; $PENDING new files in one"
    start_mode offline; E_MNT=$A_MNT
    start_mode offline; P_MNT=$A_MNT; P_STORE=$A_STORE
    python3 - "$P_MNT/pending" "$PENDING" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for d in range(0, n, 1000):
    os.makedirs(f"{root}/{d // 1000}", exist_ok=True)
    for i in range(d, min(n, d + 1000)):
        with open(f"{root}/{d // 1000}/f{i}", "w") as f:
            f.write(f"{i}\n")
    if d % 10000 == 9000:
        # The mount holds an fd per inode the kernel caches; let the kernel forget
        # them, or a low open-file limit (20,000 here) runs out before n.
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
EOF
    sync
    log "  A's status: $("$BIN" status "$P_STORE" | grep -i 'queue' | head -n 1)"
    for r in $(seq "$RUNS"); do
        m_untar "$E_MNT"; add "pending,empty" "$ELAPSED"; log "  untar, empty mount: $ELAPSED s"
        m_untar "$P_MNT"; add "pending,full" "$ELAPSED"; log "  untar, $PENDING pending: $ELAPSED s"
    done
    stop_nodes
fi

# ---------------------------------------------------------------- table
row() { # key label unit higher|lower goal
    local k=$1 p m ratio ok
    # shellcheck disable=SC2086
    p=$(median ${VAL[$k,plain]}); m=$(median ${VAL[$k,mount]})
    ratio=$(awk -v a="$m" -v b="$p" 'BEGIN { printf "%.2f", a / b }')
    ok=$(awk -v r="$ratio" -v g="$5" -v k="$4" 'BEGIN { print ((k == "higher") ? (r >= g) : (r <= g)) ? "ok" : "MISS" }')
    local floor=""
    if [ -n "${VAL[$k,floor]:-}" ]; then
        # shellcheck disable=SC2086
        f=$(median ${VAL[$k,floor]})
        floor=$(awk -v f="$f" -v b="$p" -v u="$3" 'BEGIN { printf "   FUSE floor %s %s (%.2f)", f, u, f / b }')
    fi
    printf '%-34s %12s %12s %8s %8s  %s%s\n' "$2" "$p $3" "$m $3" "$ratio" "$([ "$4" = higher ] && echo ">=" || echo "<=") $5" "$ok" "$floor"
}
{
    echo "syncfs bench-fs: $(git rev-parse --short HEAD 2>/dev/null) $(date -u '+%Y-%m-%d %H:%M UTC'), kernel $(uname -r), $(nproc) cpus"
    echo "filesystem: $FSKIND ($FSDESC); runs: $RUNS interleaved, medians shown"
    echo "untar tree: $TAR_FILES files; git: $GIT_FILES files, $GIT_CHANGED changed v1 -> v2; seq file: $SIZE_MB MiB"
    for mode in $MODES; do
        echo
        printf '%-34s %12s %12s %8s %8s  %s\n' "[$mode]" plain mount mnt/plain goal verdict
        row "$mode,untar" "untar + sync" s lower 2
        row "$mode,cycle" "untar cycle" s lower 2
        row "$mode,git" "git checkout v1 -> v2 + sync" s lower 2
        row "$mode,write" "seq write + fsync" MiB/s higher 0.8
        row "$mode,read" "seq read, cold" MiB/s higher 0.9
    done
    if [ "$PENDING" -gt 0 ]; then
        echo
        # shellcheck disable=SC2086
        e=$(median ${VAL[pending,empty]}); f=$(median ${VAL[pending,full]})
        printf 'untar into a mount with %s files pending for an offline peer: %s s; into an empty one: %s s; ratio %.2f (goal <= 1)\n' \
            "$PENDING" "$f" "$e" "$(awk -v a="$f" -v b="$e" 'BEGIN { print a / b }')"
    fi
    echo
    echo "per-run figures:"
    for k in $(printf '%s\n' "${!VAL[@]}" | sort); do echo "  $k:${VAL[$k]}"; done
} > "$TMP/table.txt"
mkdir -p "$REPO/target" && cp "$TMP/table.txt" "$OUT"
echo; cat "$OUT"
