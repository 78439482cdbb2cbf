#!/bin/sh
# Entrypoint of the syncfs image (POSIX sh: the image's /bin/sh is dash, and it has no
# other tools than syncfs, fusermount3, getent, cat, dd, ls, mkdir, mv, rm and sleep).
#
# On first start it creates the store in /store (`syncfs init`), and publishes this
# node's PeerId and folder id as /ids/$SYNCFS_NAME.id (`syncfs id` output). A node
# with SYNCFS_JOIN=OTHER waits for /ids/OTHER.id and joins OTHER's folder instead of
# creating a new one. Every start it then waits for /ids/$SYNCFS_PEER.id, resolves the
# peer's service name to an IPv4 address (getent: the binary's libp2p has no DNS
# transport, so /dns4/... multiaddrs cannot be dialed) and runs, as PID 1,
#   syncfs mount /store /sync --peer /ip4/<peer address>/tcp/$SYNCFS_PORT/p2p/<PeerId>
# which unmounts cleanly on SIGTERM (docker stop).
#
# Environment:
#   SYNCFS_NAME   this node's name (the service name; default: the hostname)
#   SYNCFS_PEER   the other node's service name (required)
#   SYNCFS_JOIN   on the joining node: the name of the node whose folder to join
#   SYNCFS_PORT   libp2p TCP port on both nodes (default 4801)
#   SYNCFS_WAIT   seconds to wait for the peer's id file and address (default 300)
#   RUST_LOG      syncfs log filter (default info)
set -eu

name=${SYNCFS_NAME:-$(cat /etc/hostname)}
peer=${SYNCFS_PEER:?set SYNCFS_PEER to the service name of the other node}
port=${SYNCFS_PORT:-4801}
wait_s=${SYNCFS_WAIT:-300}
store=/store
mnt=/sync
ids=/ids

log() { echo "syncfs-entrypoint[$name]: $*" >&2; }

# field FILE LABEL: the value after "LABEL:" in `syncfs id`/`syncfs init` output.
field() {
    while IFS= read -r line; do
        case $line in
        "$2:"*)
            set -- ${line#*:}
            echo "$1"
            return 0
            ;;
        esac
    done < "$1"
    return 1
}

# wait_file FILE: until the other node has published it.
wait_file() {
    i=0
    while [ ! -s "$1" ]; do
        [ $((i % 20)) = 0 ] && log "waiting for $1 (written by the other node on its first start)"
        i=$((i + 1))
        [ "$i" -le $((wait_s * 2)) ] || { log "gave up waiting for $1"; exit 1; }
        sleep 0.5
    done
}

mkdir -p "$ids" "$mnt"
if [ ! -e "$store/config.toml" ]; then
    if [ -n "${SYNCFS_JOIN:-}" ]; then
        wait_file "$ids/$SYNCFS_JOIN.id"
        folder=$(field "$ids/$SYNCFS_JOIN.id" "folder id")
        log "first start: creating a store that joins $SYNCFS_JOIN's folder $folder"
        syncfs init "$store" --join "$folder" --listen "/ip4/0.0.0.0/tcp/$port" >&2
    else
        log "first start: creating a store with a new folder"
        syncfs init "$store" --listen "/ip4/0.0.0.0/tcp/$port" >&2
    fi
fi

# Publish (again) who we are; written whole, then renamed, so a reader never sees half.
syncfs id "$store" > "$ids/.$name.id.tmp"
mv -f "$ids/.$name.id.tmp" "$ids/$name.id"
mine=$(field "$ids/$name.id" "folder id")

wait_file "$ids/$peer.id"
peer_id=$(field "$ids/$peer.id" "peer id")
theirs=$(field "$ids/$peer.id" "folder id")
if [ "$mine" != "$theirs" ]; then
    log "folder id mismatch: this store syncs $mine but $peer's syncs $theirs"
    log "(stores from different setups: remove all volumes with 'down -v' and start again)"
    exit 1
fi

i=0
until addr=$(getent ahostsv4 "$peer"); do
    [ $((i % 20)) = 0 ] && log "waiting for $peer to resolve"
    i=$((i + 1))
    [ "$i" -le $((wait_s * 2)) ] || { log "gave up resolving $peer"; exit 1; }
    sleep 0.5
done
set -- $addr
peer_addr=/ip4/$1/tcp/$port/p2p/$peer_id
log "peer $peer at $peer_addr; mounting $mnt"
export RUST_LOG="${RUST_LOG:-info}"
exec syncfs mount "$store" "$mnt" --peer "$peer_addr"
