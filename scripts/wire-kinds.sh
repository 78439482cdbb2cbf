#!/usr/bin/env bash
# Bytes a daemon wrote, by message kind, from its log at trace level for the wire stream
# (RUST_LOG=syncfs=debug,syncfs::wire::stream=trace; bench-sync.sh's BENCH_KINDS=1 sets
# it). Usage: scripts/wire-kinds.sh LOG...
#
# A compressed block's bytes (its 4-byte header included) are shared among the frames
# it carries in proportion to their raw sizes, so a kind's written bytes are an estimate
# when kinds share blocks; the total is exact. Not counted: libp2p's own framing (Noise,
# Yamux, multistream-select) and TCP/IP headers, which the bench's byte counts include.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 LOG..." >&2; exit 2; }
for log in "$@"; do
    sed 's/\x1b\[[0-9;]*m//g' "$log" | awk -v name="$log" '
        function field(k,   m) { return match($0, k "=[0-9]+") ? substr($0, RSTART + length(k) + 1, RLENGTH - length(k) - 1) + 0 : -1 }
        function kind(   m) { if (match($0, /kind="?[a-z-]+/)) { m = substr($0, RSTART + 5, RLENGTH - 5); gsub(/"/, "", m); return m } return "?" }
        / frame queued/ {
            k = kind(); n[k]++
            if ((p = field("plain")) >= 0) { raw[k] += p; out[k] += p; next }
            r = field("frame") + 4 + field("data"); raw[k] += r
            pk[++np] = k; pr[np] = r; tot += r; next
        }
        / block sealed/ {
            w = field("written"); if (w < 0) w = field("plain")
            for (i = 1; i <= np; i++) out[pk[i]] += (tot > 0 ? w * pr[i] / tot : 0)
            np = 0; tot = 0; next
        }
        END {
            printf "%s\n", name
            for (;;) {  # the kinds, most bytes first
                best = ""
                for (k in n) if (!(k in done) && (best == "" || out[k] > out[best])) best = k
                if (best == "") break
                done[best] = 1; all += out[best]
                printf "  %-14s %6d frames %10d B raw %10.0f B written\n", best, n[best], raw[best], out[best]
            }
            printf "  %-14s %6s        %10s       %10.0f B written\n", "total", "", "", all
        }'
done
