#!/usr/bin/env bash
# Pairing benchmark (issue "reconcile"): two mostly-same folders adopted with
# `init --data`, then connected. Prints syncfs's wire bytes beside rsync -z over the same
# pair, the index cost per unchanged file at first contact and at reconnect, and the
# mount-time scan of unchanged files beside `find -ls`. Needs root (FUSE) and rsync.
#   BENCH_FILES=2500        files in the pairing tree (1% changed on one side, 10 new)
#   BENCH_UNCHANGED=100000  files in the unchanged-tree run
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --release --test bench_pairing -- --ignored --nocapture --test-threads 1
