#!/usr/bin/env bash
# Pairing benchmark (issue "reconcile"): two mostly-same folders adopted with
# `init --data`, then connected. Prints syncfs's wire bytes beside rsync -z over the same
# pair, the index cost per unchanged file at first contact and at reconnect, and the
# mount-time scan of unchanged files beside `find -ls`; then big files changed by an
# insert, a small edit, scattered writes or an append, paired (`pairing_big_files`) and
# live (`live_big_files`), beside rsync -z and xdelta3. Needs root (FUSE) and rsync.
#   BENCH_FILES=2500        files in the pairing tree (1% changed on one side, 10 new)
#   BENCH_UNCHANGED=100000  files in the unchanged-tree run
set -euo pipefail
cd "$(dirname "$0")/.."
# xdelta3 is the per-file delta baseline beside rsync -z (printed "n/a" without it)
command -v xdelta3 >/dev/null || apt-get install -y -q xdelta3 || true
exec cargo test --release --test bench_pairing -- --ignored --nocapture --test-threads 1
