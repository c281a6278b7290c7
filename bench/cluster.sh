#!/usr/bin/env bash
# Cluster benchmark (issue 5): starts its own redis-server and three
# `wshub serve` nodes (release build) on free loopback ports, then runs
# `wshub bench hub` against all three: SUBSCRIBERS_PER_CHANNEL (default 9)
# subscribers per channel spread round-robin over the nodes, and publications
# through the HTTP API of every node at a fixed RATE over CHANNELS channels
# for SECONDS. Prints the summary (deliveries/s, publish-to-delivery
# p50/p99, lost / duplicate / out-of-order) and writes it as JSON to OUT.
# Every process it started is stopped when it exits, however it exits.
#
#   bench/cluster.sh [RATE] [SECONDS] [CHANNELS] [OUT]
#   defaults:        5000   10        50         bench/cluster.json
#
# Environment: SUBSCRIBERS_PER_CHANNEL (9), PUBLISHERS (24: HTTP keep-alive
# connections, each sending one request at a time), SIZE (64 bytes of data),
# CARGO_TARGET_DIR (where the release binary is built).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rate=${1:-5000}
seconds=${2:-10}
channels=${3:-50}
out=${4:-bench/cluster.json}
per_channel=${SUBSCRIBERS_PER_CHANNEL:-9}
publishers=${PUBLISHERS:-24}
size=${SIZE:-64}

command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
cargo build --release --locked -p wshub-cli >/dev/null
bin="${CARGO_TARGET_DIR:-target}/release/wshub"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

source bench/lib.sh
random() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

secret=$(random)
export WSHUB_API_KEY
WSHUB_API_KEY=$(random)

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  >"$tmp/redis.log" 2>&1 &
pids+=($!)
wait_port "$redis_port"

urls=()
shown=()
for i in 1 2 3; do
  p=$(free_port)
  # The bench opens every subscriber from 127.0.0.1: no per-IP limits.
  cat >"$tmp/node$i.toml" <<EOF
[limits]
max_connections_per_ip = 0
handshake_rate_per_ip = 0.0
[auth]
hmac_secret = "$secret"
[api]
key = "$WSHUB_API_KEY"
[log]
level = "warn"
[broker]
engine = "redis"
url = "redis://127.0.0.1:$redis_port"
[namespaces.bench]
EOF
  env -u WSHUB_CONFIG "$bin" serve --config "$tmp/node$i.toml" --listen "127.0.0.1:$p" \
    >"$tmp/node$i.log" 2>&1 &
  pids+=($!)
  wait_port "$p"
  urls+=(--url "http://127.0.0.1:$p")
  shown+=("127.0.0.1:$p")
done

echo "redis 127.0.0.1:$redis_port; nodes ${shown[*]}" >&2
"$bin" bench hub "${urls[@]}" --hmac-secret "$secret" \
  -c $((channels * per_channel)) --channels "$channels" --publishers "$publishers" \
  --rate "$rate" -s "$size" -d "$seconds" --json "$out" -q
echo "JSON: $out" >&2
