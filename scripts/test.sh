#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests that mount real FUSE
# filesystems and run real peers on loopback. Installs what it needs (Debian, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: run as root (the tests mount FUSE filesystems with allow_other)" >&2
    exit 1
fi
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v umount >/dev/null || need+=(mount)
for tool in git vim sqlite3 rsync; do   # real clients driven by tests/clients.rs
    command -v "$tool" >/dev/null || need+=("$tool")
done
# tests/bwlimit.rs, tests/link_cut.rs: two network namespaces and a veth pair (tc shapes it)
command -v ip >/dev/null || need+=(iproute2)
command -v ethtool >/dev/null || need+=(ethtool)
command -v nsenter >/dev/null || need+=(util-linux)
command -v iptables >/dev/null || need+=(iptables)   # tests/random_two_node.rs partitions
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${need[@]}"
fi
[ -e /dev/fuse ] || modprobe fuse
grep -q '^user_allow_other' /etc/fuse.conf 2>/dev/null || echo user_allow_other >> /etc/fuse.conf
exec cargo test --locked --features fault-injection "$@"
