#!/usr/bin/env bash
# First echo comparison (issue 4 grows this into the full suite): wshub's `echo`
# example against the seed's Node `ws` echo server, in one run, on this machine.
# Each server is pinned to CPU 0 and the load generator (`wshub bench echo`, the
# same client for both) to CPU 1; cases alternate between the servers and repeat,
# and the medians are printed. Server CPU time per message is read from /proc
# over the measured window, because on 2 cores the client can saturate first.
#
#   bench/echo-vs-ws.sh [REPEATS] [SECONDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repeats=${1:-3}
seconds=${2:-5}

cargo build --release --locked -p wshub --example echo -p wshub-cli >/dev/null
(cd bench/node && npm ci --silent --no-audit --no-fund >/dev/null)

source bench/lib.sh

p1=$(free_port); p2=$(free_port)
# The echo example enables permessage-deflate, but the load generator does not
# offer it, so both servers run uncompressed.
taskset -c 0 target/release/examples/echo "127.0.0.1:$p1" >/dev/null 2>&1 & pid1=$!
(cd bench/node && exec taskset -c 0 node echo.js "127.0.0.1:$p2") >/dev/null 2>&1 & pid2=$!
trap 'kill $pid1 $pid2 2>/dev/null || true' EXIT
wait_port "$p1"; wait_port "$p2"

out=$(mktemp -d)
for conns in 100 1000; do
  for r in $(seq "$repeats"); do
    for s in wshub ws; do
      if [ $s = wshub ]; then p=$p1; pid=$pid1; else p=$p2; pid=$pid2; fi
      taskset -c 1 target/release/wshub bench echo "ws://127.0.0.1:$p/" \
        -c "$conns" -w 1 -s 64 -d "$seconds" --server-pid "$pid" \
        --json "$out/$s-$conns-$r.json" >/dev/null
    done
  done
done

python3 - "$out" "$repeats" <<'PY'
import json, statistics, sys
out, repeats = sys.argv[1], int(sys.argv[2])
print(f"| server | connections | msg/s (median of {repeats}) | p50 ms | p99 ms | server CPU µs/msg |")
print("|---|---|---|---|---|---|")
for conns in (100, 1000):
    for s in ("wshub", "ws"):
        runs = [json.load(open(f"{out}/{s}-{conns}-{r}.json")) for r in range(1, repeats + 1)]
        med = lambda k: statistics.median(x[k] for x in runs)
        print(f"| {s} | {conns} × 64 B | {med('msg_per_sec'):,.0f} | {med('p50_ms'):.2f} | "
              f"{med('p99_ms'):.2f} | {med('server_cpu_us_per_msg'):.2f} |")
PY
