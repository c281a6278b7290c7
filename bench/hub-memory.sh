#!/usr/bin/env bash
# Server memory per hub subscriber: `wshub serve` (memory broker,
# `bench/hub.toml`, as in the comparison suite) pinned to CPU 0; `wshub bench hub` on CPU 1
# subscribes N anonymous clients to one channel, publishes at 1/s for a few
# seconds (every delivery checked), then leaves. RSS is read from /proc before
# the clients connect and after the run (the allocator keeps what it got, so
# that is the high-water mark); bytes per subscriber = (after - before) / N.
# A fresh server per run; prints each run and the median.
#
#   bench/hub-memory.sh [SUBSCRIBERS] [RUNS] [WSHUB_BINARY]
#
# The third argument measures another build (an earlier commit, say) with the
# same script and generator.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
subscribers=${1:-5000}
runs=${2:-3}
cargo build --release --locked -p wshub-cli --bin wshub >/dev/null
bin=target/release/wshub
server_bin=${3:-$bin}

# The generator holds one socket per subscriber plus the publisher's.
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

source bench/lib.sh
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

results=()
for r in $(seq "$runs"); do
  p=$(free_port)
  taskset -c 0 "$server_bin" serve --config bench/hub.toml --listen "127.0.0.1:$p" \
    >"$work/server.log" 2>&1 &
  pid=$!
  if ! wait_port "$p"; then
    echo "the hub did not start listening on port $p:" >&2
    tail -20 "$work/server.log" >&2
    exit 1
  fi
  before=$(rss_kib "$pid")
  timeout 120 taskset -c 1 "$bin" bench hub "http://127.0.0.1:$p" --api-key compare-suite-api-key \
    -c "$subscribers" --channels 1 --publishers 1 --rate 1 -s 64 -d 3 --drain 2 \
    --json "$work/run.json" -q >/dev/null
  after=$(rss_kib "$pid")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
  failed=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["lost"]+j["duplicates"]+j["out_of_order"]+j["errors"])' "$work/run.json")
  if [ "$failed" != 0 ]; then
    echo "run $r: $failed deliveries lost, duplicated, out of order or failed" >&2
    exit 1
  fi
  per=$(((after - before) * 1024 / subscribers))
  echo "run $r: RSS ${before} KiB before, ${after} KiB with ${subscribers} subscribers: ${per} B per subscriber"
  results+=("$per")
done
median=$(printf '%s\n' "${results[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median: ${median} B of server RSS per hub subscriber (${subscribers} subscribers, ${runs} runs)"
