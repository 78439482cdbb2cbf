#!/usr/bin/env bash
# Two mounts syncing on this machine: creates stores A and B (B joins A's folder), mounts
# both with the default config (listening on loopback ports), writes through A and shows
# the file arriving through B's mount, then the other way round.
# DEMO_KEEP=1 keeps both mounts running until Ctrl-C. Needs root (FUSE, allow_other).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (sudo scripts/demo.sh)" >&2; exit 1; }
command -v fusermount3 >/dev/null || { apt-get update -q && apt-get install -y -q fuse3; }
[ -e /dev/fuse ] || modprobe fuse
cargo build --release --locked --bin syncfs
bin=$PWD/target/release/syncfs
dir=${DEMO_DIR:-$(mktemp -d /var/tmp/syncfs-demo.XXXXXX)}
port_a=${DEMO_PORT_A:-4801}
port_b=${DEMO_PORT_B:-4802}
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for m in "$dir/mnt-a" "$dir/mnt-b"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
    echo "demo stores left in $dir"
}
trap cleanup EXIT

"$bin" init "$dir/a" --listen "/ip4/127.0.0.1/tcp/$port_a" | tee "$dir/a.id"
peer_a=$(awk '/peer id:/ {print $3}' "$dir/a.id")
folder=$(awk '/folder id:/ {print $3}' "$dir/a.id")
"$bin" init "$dir/b" --join "$folder" --listen "/ip4/127.0.0.1/tcp/$port_b" \
    --peer "/ip4/127.0.0.1/tcp/$port_a/p2p/$peer_a" | tee "$dir/b.id"
peer_b=$(awk '/peer id:/ {print $3}' "$dir/b.id")
"$bin" add-peer "$dir/a" "/ip4/127.0.0.1/tcp/$port_b/p2p/$peer_b"

mkdir -p "$dir/mnt-a" "$dir/mnt-b"
for n in a b; do
    "$bin" mount "$dir/$n" "$dir/mnt-$n" 2> "$dir/$n.log" &
    pids+=($!)
done
for n in a b; do
    for _ in $(seq 100); do mountpoint -q "$dir/mnt-$n" && break; sleep 0.1; done
    mountpoint -q "$dir/mnt-$n" || { cat "$dir/$n.log"; exit 1; }
done
echo "mounted: $dir/mnt-a and $dir/mnt-b (logs: $dir/a.log, $dir/b.log)"

wait_for() { # file expected-content
    for _ in $(seq 300); do
        [ "$(cat "$1" 2>/dev/null)" = "$2" ] && return 0
        sleep 0.05
    done
    echo "timed out waiting for $1" >&2; return 1
}
msg="hello from A at $(date +%T)"
start=$(date +%s%N)
echo "$msg" > "$dir/mnt-a/hello.txt"
wait_for "$dir/mnt-b/hello.txt" "$msg"
echo "A -> B: '$(cat "$dir/mnt-b/hello.txt")' arrived in $(( ($(date +%s%N) - start) / 1000000 )) ms"
msg="reply from B at $(date +%T)"
start=$(date +%s%N)
mkdir -p "$dir/mnt-b/docs" && echo "$msg" > "$dir/mnt-b/docs/reply.txt"
wait_for "$dir/mnt-a/docs/reply.txt" "$msg"
echo "B -> A: '$(cat "$dir/mnt-a/docs/reply.txt")' arrived in $(( ($(date +%s%N) - start) / 1000000 )) ms"
echo
echo "syncfs status $dir/a:"
sleep 1
"$bin" status "$dir/a"
if [ "${DEMO_KEEP:-0}" = 1 ]; then
    echo "both mounts stay up; edit files in either and watch the other"
    echo "(syncfs status --watch $dir/a in another terminal). Ctrl-C to stop."
    wait
fi
