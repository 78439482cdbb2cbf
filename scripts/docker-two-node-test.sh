#!/usr/bin/env bash
# The docker two-node test: builds the image (scripts/docker-image.sh), starts node1 and
# node2 from docker/compose.yml under a project of its own, and then
#   1. writes files through node1's mount (docker exec) and checks each on node2, read
#      through node2's mount, by BLAKE3 (b3sum on this machine);
#   2. writes a 64 MiB file, then edits 4 KiB in its middle and prints the bytes node1's
#      eth0 sent and received for the edit (and syncfs status' counter);
#   3. writes a 192 MiB file on node1 and cuts node2 off the network (docker network
#      disconnect) once 8 MiB of it went out; while cut, both sides change files; after
#      DOCKER_TEST_CUT_S seconds (default 25: longer than syncfs' 20 s silence timeout,
#      so the link really breaks and is re-made) reconnects it (docker network connect);
#   4. checks that both nodes converge: the same tree (type, mode, size, BLAKE3 of every
#      file, read from both store volumes on this host), no conflict copies;
# then stops both nodes (SIGTERM: syncfs unmounts) and removes containers, network,
# volumes and the test image, also on failure. Exits non-zero on any divergence.
#
#   SYNCFS_BIN=target/debug/syncfs scripts/docker-two-node-test.sh
#   COMPOSE="docker-compose" ...   # default: `docker compose` if it works, else docker-compose
# Needs root (reads the volumes under docker's data root), docker, b3sum.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
t_start=$(date +%s)
cut_s=${DOCKER_TEST_CUT_S:-25}
project=syncfs-two-node-$$
export SYNCFS_IMAGE=syncfs:two-node-test-$$
compose_file=$root/docker/compose.yml

if [ -z "${COMPOSE:-}" ]; then
    if docker compose version >/dev/null 2>&1; then
        COMPOSE="docker compose"
    elif command -v docker-compose >/dev/null; then
        COMPOSE=docker-compose
    else
        echo "docker-two-node-test: neither 'docker compose' nor docker-compose is installed" >&2
        exit 1
    fi
fi
if command -v b3sum >/dev/null; then
    h3() { b3sum --no-names "$@"; }
    hash_name=BLAKE3
else
    h3() { sha256sum "$@" | cut -d' ' -f1; }
    hash_name=SHA-256
    echo "docker-two-node-test: b3sum not found (apt-get install b3sum): comparing by SHA-256"
fi
[ "$(id -u)" = 0 ] || { echo "docker-two-node-test: run as root" >&2; exit 1; }

dc() { $COMPOSE -p "$project" -f "$compose_file" "$@"; }
log() { echo "[$(( $(date +%s) - t_start ))s] $*"; }
fail() { echo "docker-two-node-test: FAIL: $*" >&2; exit 1; }

tmp=$(mktemp -d /tmp/syncfs-two-node.XXXXXX)
up=0
n1= n2=
teardown() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ "$up" = 1 ]; then
        if [ "$rc" != 0 ]; then
            if [ -s "$tmp/tree1" ] && ! cmp -s "$tmp/tree1" "$tmp/tree2"; then
                echo "---- node1's tree (<) against node2's (>): type mode size hash path ----"
                diff "$tmp/tree1" "$tmp/tree2" | head -n 40
            fi
            echo "---- last log lines of both nodes ----"
            dc logs --no-color --tail 40 2>&1 | cut -c1-400
        fi
        local t0 c
        t0=$(date +%s)
        dc stop -t 30 >/dev/null 2>&1
        for c in $n1 $n2; do
            log "$(docker inspect -f '{{.Name}}' "$c"): stopped (SIGTERM) within $(( $(date +%s) - t0 ))s, exit code $(docker inspect -f '{{.State.ExitCode}}' "$c")"
        done
        dc down -v --remove-orphans -t 30 >/dev/null 2>&1
    fi
    docker image rm -f "$SYNCFS_IMAGE" >/dev/null 2>&1
    rm -rf "$tmp"
    local left
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$project"; \
           docker network ls -q --filter "label=com.docker.compose.project=$project"; \
           docker volume ls -q --filter "label=com.docker.compose.project=$project")
    [ -z "$left" ] || { echo "docker-two-node-test: left behind: $left" >&2; rc=1; }
    if [ "$rc" = 0 ]; then
        log "docker two-node test passed ($COMPOSE)"
        echo "docker-two-node: 1 passed, 0 failed"
    else
        log "docker two-node test FAILED ($COMPOSE)"
        echo "docker-two-node: 0 passed, 1 failed"
    fi
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# wait_until SECONDS WHAT COMMAND...: polls COMMAND every $poll seconds.
poll=0.2
wait_until() {
    local limit=$1 what=$2 deadline
    shift 2
    deadline=$(( $(date +%s) + limit ))
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${limit}s waiting for $what"
        sleep "$poll"
    done
}
ex() { timeout 60 docker exec "$@"; }                   # bounded even if a mount hangs
put() { ex -i "$1" sh -c "cat > '/sync/$2'" < "$3"; }    # container path file
remote_hash() { ex "$1" cat "/sync/$2" 2>/dev/null | h3; }
mounted() { ex "$1" cat /proc/mounts | grep -q ' /sync fuse'; }
link_up() { ex "$1" syncfs status /store 2>/dev/null | grep -Eq '^peer link: +up'; }
# eth0 counters of a container, read from this host through its PID's /proc/PID/net/dev
tx() { awk '{ sub(/:/, " ") } $1 == "eth0" { print $10 }' "/proc/$1/net/dev"; }
rx() { awk '{ sub(/:/, " ") } $1 == "eth0" { print $2 }' "/proc/$1/net/dev"; }
# same_on NODE FILE HOSTFILE: FILE read through NODE's mount hashes like HOSTFILE
same_on() {
    local h
    h=$(remote_hash "$1" "$2") || return 1    # missing on NODE
    [ "$h" = "$(h3 < "$3")" ]
}
# tree DIR: one line per entry: type, mode, size, hash of regular files, path
tree() {
    (cd "$1" && find . -mindepth 1 -printf '%y %m %s %p\n' | sort -k4 | while read -r y m s p; do
        if [ "$y" = f ]; then echo "$y $m $s $(h3 < "$p") $p"; else echo "$y $m - - $p"; fi
    done)
}
converged() { tree "$data1" > "$tmp/tree1"; tree "$data2" > "$tmp/tree2"; cmp -s "$tmp/tree1" "$tmp/tree2"; }
status_line() { ex "$1" syncfs status /store 2>/dev/null | grep -E "^$2:" | sed "s/^$2: *//"; }
peer_connects() { dc logs --no-color "$1" 2>/dev/null | grep -c 'peer connected' || true; }

log "compose: $COMPOSE ($($COMPOSE version 2>/dev/null | head -1)); hash: $hash_name"
SYNCFS_BIN=${SYNCFS_BIN:-target/release/syncfs} scripts/docker-image.sh 2>&1 | grep -v -i -e deprecated -e buildx -e 'docs.docker.com' -e '^ *$' || true
docker image inspect "$SYNCFS_IMAGE" >/dev/null 2>&1 || fail "image $SYNCFS_IMAGE was not built"

up=1
dc up -d >"$tmp/up.log" 2>&1 || { cat "$tmp/up.log"; fail "compose up"; }
n1=$(dc ps -q node1)
n2=$(dc ps -q node2)
[ -n "$n1" ] && [ -n "$n2" ] || fail "containers not created"
wait_until 60 "node1's mount" mounted "$n1"
wait_until 60 "node2's mount" mounted "$n2"
wait_until 60 "the peer link" link_up "$n1"
log "both nodes mounted and linked"
pid1=$(docker inspect -f '{{.State.Pid}}' "$n1")
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$n2")
volume_dir() { docker inspect -f '{{range .Mounts}}{{if eq .Destination "/store"}}{{.Source}}{{end}}{{end}}' "$1"; }
data1=$(volume_dir "$n1")/data
data2=$(volume_dir "$n2")/data
[ -d "$data1" ] && [ -d "$data2" ] || fail "store volumes not found on this host ($data1, $data2)"

# 1. small files, node1 -> node2
mkdir -p "$tmp/f"
ex "$n1" mkdir -p /sync/docs/deep/er /sync/empty-dir
: > "$tmp/f/empty"
echo "hello from node1" > "$tmp/f/hello.txt"
head -c 1000 /dev/urandom > "$tmp/f/k1"
head -c 100000 /dev/urandom > "$tmp/f/k100"
head -c 1048576 /dev/urandom > "$tmp/f/m1"
seq 1 200000 > "$tmp/f/numbers.txt"
files="empty hello.txt docs/k1 docs/deep/k100 docs/deep/er/m1 numbers.txt"
t0=$(date +%s%N)
for f in $files; do put "$n1" "$f" "$tmp/f/$(basename "$f")"; done
for f in $files; do
    wait_until 60 "$f on node2" same_on "$n2" "$f" "$tmp/f/$(basename "$f")"
done
log "1. $(echo $files | wc -w) files written through node1 arrived on node2, $hash_name equal, in $(( ($(date +%s%N) - t0) / 1000000 )) ms"

# 2. a 64 MiB file, then a 4 KiB edit in its middle
head -c 64M /dev/urandom > "$tmp/big"
t0=$(date +%s%N)
put "$n1" big "$tmp/big"
wait_until 120 "big on node2" same_on "$n2" big "$tmp/big"
log "2. 64 MiB file on node2 after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
head -c 4096 /dev/urandom > "$tmp/patch"
block=$(( (40 << 20) / 4096 + 3 ))       # 40 MiB + 12 KiB
dd if="$tmp/patch" of="$tmp/big" bs=4096 seek=$block conv=notrunc status=none
sent0=$(status_line "$n1" sent)
tx0=$(tx "$pid1"); rx0=$(rx "$pid1")
t0=$(date +%s%N)
ex -i "$n1" dd of=/sync/big bs=4096 seek=$block conv=notrunc status=none < "$tmp/patch"
hb=$(h3 < "$tmp/big")
until [ "$(h3 < "$data2/big" 2>/dev/null)" = "$hb" ]; do
    [ $(( ($(date +%s%N) - t0) / 1000000000 )) -lt 60 ] || fail "the 4 KiB edit did not reach node2 in 60 s"
    sleep 0.05
done
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
sleep 1    # let the ack and any trailing bytes go out before reading the counters
tx1=$(tx "$pid1"); rx1=$(rx "$pid1")
same_on "$n2" big "$tmp/big" || fail "big differs on node2 (read through its mount)"
log "2. 4 KiB edit in the 64 MiB file: on node2 in $ms ms; node1 eth0 sent $((tx1 - tx0)) B, received $((rx1 - rx0)) B (headers, acks and mDNS included)"
log "   node1 status 'sent' before: $sent0"
log "   node1 status 'sent' after:  $(status_line "$n1" sent)"

# 3. cut node2 off mid-transfer
head -c 192M /dev/urandom > "$tmp/cut"
conn0=$(peer_connects node1)
tx0=$(tx "$pid1")
put "$n1" cut "$tmp/cut"
t0=$(date +%s)
while [ $(( $(tx "$pid1") - tx0 )) -lt $((8 << 20)) ]; do
    [ $(( $(date +%s) - t0 )) -lt 60 ] || fail "the 192 MiB transfer did not start in 60 s"
    sleep 0.01
done
docker network disconnect "$net" "$n2"
t_cut=$(date +%s)
sent_at_cut=$(( $(tx "$pid1") - tx0 ))
if same_on "$n2" cut "$tmp/cut"; then
    fail "node2 already had the whole 192 MiB file when cut: the cut was not mid-transfer"
fi
log "3. node2 cut off after node1 sent $((sent_at_cut >> 20)) MiB of the 192 MiB file (node2 does not have it yet)"
# While cut: both sides change something.
echo "written on node1 while node2 was cut off" > "$tmp/f/n1-offline.txt"
echo "written on node2 while cut off" > "$tmp/f/n2-offline.txt"
put "$n1" n1-offline.txt "$tmp/f/n1-offline.txt"
ex "$n1" rm /sync/docs/k1
put "$n2" n2-offline.txt "$tmp/f/n2-offline.txt"
ex "$n2" mkdir /sync/made-on-node2
sleep $(( cut_s - ($(date +%s) - t_cut) > 0 ? cut_s - ($(date +%s) - t_cut) : 0 ))
tx0=$(tx "$pid1")
docker network connect "$net" "$n2"
log "3. node2 reconnected after $(( $(date +%s) - t_cut ))s off the network"
t0=$(date +%s)
poll=1 wait_until 150 "both nodes to converge" converged
log "4. converged $(( $(date +%s) - t0 ))s after the reconnect: $(wc -l < "$tmp/tree1") entries, identical trees; node1 eth0 sent $(( ($(tx "$pid1") - tx0) >> 20 )) MiB since the reconnect"
conn1=$(peer_connects node1)
if [ "$conn1" -gt "$conn0" ]; then
    log "   (the link was re-made: node1 logged $((conn1 - conn0)) new peer connection(s))"
else
    log "   (the TCP connection survived the cut: no new peer connection)"
fi

# Through the mounts too, both ways, and nothing left over.
same_on "$n2" cut "$tmp/cut" || fail "cut differs on node2 (read through its mount)"
same_on "$n1" n2-offline.txt "$tmp/f/n2-offline.txt" || fail "n2-offline.txt differs on node1"
same_on "$n2" n1-offline.txt "$tmp/f/n1-offline.txt" || fail "n1-offline.txt differs on node2"
ex "$n2" ls /sync/docs/k1 >/dev/null 2>&1 && fail "docs/k1, deleted on node1, is still on node2"
ex "$n1" ls -d /sync/made-on-node2 >/dev/null 2>&1 || fail "made-on-node2/ did not reach node1"
if grep -q 'sync-conflict' "$tmp/tree1"; then fail "conflict copies appeared: $(grep sync-conflict "$tmp/tree1")"; fi
for c in $n1 $n2; do
    n=$(docker inspect -f '{{.Config.Hostname}}' "$c")
    log "   $n status: peer link $(status_line "$c" 'peer link'); queued $(status_line "$c" queued | cut -d' ' -f1); conflicts $(status_line "$c" conflicts | cut -d' ' -f1); sent $(status_line "$c" sent)"
done
log "4. node2's mount serves the 192 MiB file and node1's the file written on node2 while cut, $hash_name equal"
