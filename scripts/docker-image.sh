#!/usr/bin/env bash
# Builds the syncfs docker image FROM scratch, with no network access and no registry:
# assembles a build context from the syncfs binary, the programs the entrypoint and the
# two-node test use (dash as /bin/sh, fusermount3, getent and a few coreutils), every
# shared library `ldd` lists for them, and docker/Dockerfile, then runs `docker build`.
#
#   scripts/docker-image.sh                         # binary: target/release/syncfs
#   SYNCFS_BIN=target/debug/syncfs scripts/docker-image.sh
#   SYNCFS_IMAGE=syncfs:dev scripts/docker-image.sh # tag (default syncfs:local)
#   DOCKER_IMAGE_KEEP_CONTEXT=1 ...                 # keep (and print) the build context
#
# The binary's debug info is stripped in the copy (objcopy --strip-debug) when objcopy
# exists; the image then holds ~20 MB instead of ~80 MB for a debug build.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SYNCFS_BIN:-target/release/syncfs}
image=${SYNCFS_IMAGE:-syncfs:local}
[ -x "$bin" ] || {
    echo "docker-image.sh: no syncfs binary at $bin (cargo build --release, or set SYNCFS_BIN)" >&2
    exit 1
}
command -v docker >/dev/null || { echo "docker-image.sh: docker is not installed" >&2; exit 1; }
command -v fusermount3 >/dev/null || {
    echo "docker-image.sh: fusermount3 not found (apt-get install fuse3)" >&2
    exit 1
}

ctx=$(mktemp -d /tmp/syncfs-image.XXXXXX)
if [ "${DOCKER_IMAGE_KEEP_CONTEXT:-0}" = 1 ]; then
    echo "docker-image.sh: build context kept in $ctx"
else
    trap 'rm -rf "$ctx"' EXIT
fi
root=$ctx/rootfs
mkdir -p "$root"/{bin,usr/bin,usr/local/bin,etc,tmp,store,sync,ids}
chmod 1777 "$root/tmp"

# copy_libs PROGRAM: every library the dynamic loader resolves for it, at the same path.
copy_libs() {
    local lib
    if ldd "$1" 2>/dev/null | grep -q 'not found'; then
        echo "docker-image.sh: $1 needs a library this machine lacks:" >&2
        ldd "$1" | grep 'not found' >&2
        exit 1
    fi
    for lib in $(ldd "$1" | grep -oE '/[^ ]+' | sort -u); do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

if command -v objcopy >/dev/null; then
    objcopy --strip-debug "$bin" "$root/usr/local/bin/syncfs"
else
    cp "$bin" "$root/usr/local/bin/syncfs"
fi
chmod 755 "$root/usr/local/bin/syncfs"
copy_libs "$bin"
install -m 755 docker/entrypoint.sh "$root/usr/local/bin/syncfs-entrypoint"

# /bin/sh: dash (Debian's /bin/sh), falling back to whatever /bin/sh is.
sh_src=$(command -v dash || readlink -f /bin/sh)
cp -L "$sh_src" "$root/bin/sh"
copy_libs "$sh_src"
# fusermount3 (the FUSE mount helper), getent (the entrypoint resolves the peer's service
# name), and the coreutils the entrypoint and scripts/docker-two-node-test.sh use.
for tool in fusermount3 getent cat dd ls mkdir mv rm sleep; do
    src=$(command -v "$tool") || { echo "docker-image.sh: $tool not found on this machine" >&2; exit 1; }
    cp -L "$src" "$root/usr/bin/$tool"
    copy_libs "$src"
done

# glibc >= 2.34 has the files and dns NSS modules built into libc; an older one needs them
# copied (getent resolves the peer's name through NSS, which loads them at run time).
libdir=$(dirname "$(ldd "$bin" | grep -oE '/[^ ]*/libc\.so\.6')")
for mod in libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
    if [ -e "$libdir/$mod" ] && [ ! -e "$root$libdir/$mod" ]; then
        cp -L "$libdir/$mod" "$root$libdir/$mod"
    fi
done
printf 'hosts: files dns\npasswd: files\ngroup: files\n' > "$root/etc/nsswitch.conf"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
printf 'user_allow_other\n' > "$root/etc/fuse.conf"

cp docker/Dockerfile "$ctx/Dockerfile"
echo "docker-image.sh: context $(du -sh "$ctx" | cut -f1) from $bin"
docker build -q -t "$image" "$ctx" >/dev/null
echo "docker-image.sh: built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}'))"
