#!/usr/bin/env bash
# The side-by-side comparison suite of issue 4, in one command: builds wshub's
# `echo` and `broadcast` examples, the `wshub` CLI (its `bench` load generator,
# the same client for every server), the Rust peers of bench/compare/
# (tokio-tungstenite and fastwebsockets, outside the product's workspace) and
# installs Node `ws` 8 for the seed's own code (bench/node/), then runs every
# case against every server in one run and writes bench/COMPARISON.md,
# bench/comparison.json and the charts in bench/charts/.
#
# Each server is pinned to CPU 0 and the generator to CPU 1 (`taskset`); every
# server uses one core (the Rust ones run `#[tokio::main]`, whose worker count
# follows the CPUs the process may use: one). Each case is repeated, the
# servers alternate within a repeat (in a rotated order), and the tables give
# medians. Server CPU time per message is utime+stime from /proc/PID/stat over
# the measured window (with the kernel's share, stime), and where perf can count
# syscall tracepoints the server's send, receive and poll calls per message,
# from one more run of each loaded case (`wshub bench --count-syscalls`; the
# tracepoints slow every syscall, so that run gives nothing else); server RSS
# (VmRSS) and threads come from /proc/PID/status after the run.
#
#   bench/compare.sh [--repeats N] [--seconds S] [--quick] [--cases LIST]
#                    [--idle-connections N] [--deflate-connections N]
#                    [--hold S] [--out FILE.md]
#
#   --repeats N      runs of each case per server (default 3; --quick: 1)
#   --seconds S      measured seconds of each echo, fan-out and hub run
#                    (default 10; --quick: 2)
#   --quick          a smoke run: the defaults above, a short idle hold, and
#                    COMPARISON.md says in its first line that it is one
#   --cases LIST     comma-separated subset of: echo-100x64, echo-1000x64,
#                    echo-100x16k, fanout-1000, fanout-5000, fanout-5000-r20,
#                    idle, hub-5000, deflate-fanout-5000,
#                    deflate-fanout-5000-r20, deflate-idle
#   --idle-connections N   idle connections (default 19500)
#   --deflate-connections N   connections of deflate-idle (default 5000: each
#                    generator connection keeps its own compressor, ~300 KiB)
#   --hold S         seconds the idle connections are held (default 15;
#                    --quick: 6); wshub's heartbeat pings every 5 s meanwhile
#   --out FILE.md    where the Markdown goes (default bench/COMPARISON.md; the
#                    JSON and charts go beside it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
invocation="bench/compare.sh${*:+ $*}"

repeats= seconds= hold= quick=0 idle_conns=19500 deflate_conns=5000 only= out_md=bench/COMPARISON.md
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --repeats) repeats=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --hold) hold=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --cases) only=$2; shift 2 ;;
    --idle-connections) idle_conns=$2; shift 2 ;;
    --deflate-connections) deflate_conns=$2; shift 2 ;;
    --out) out_md=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$quick" = 1 ]; then
  repeats=${repeats:-1} seconds=${seconds:-2} hold=${hold:-6}
else
  repeats=${repeats:-3} seconds=${seconds:-10} hold=${hold:-15}
fi
# The report's folder, made now rather than found missing after the run.
mkdir -p "$(dirname "$out_md")"
for n in "$repeats" "$seconds" "$hold" "$idle_conns" "$deflate_conns"; do
  case $n in '' | *[!0-9]* | 0) echo "counts and durations must be positive integers, got '$n'" >&2; exit 2 ;; esac
done
all_cases="echo-100x64 echo-1000x64 echo-100x16k fanout-1000 fanout-5000 fanout-5000-r20 idle hub-5000
  deflate-fanout-5000 deflate-fanout-5000-r20 deflate-idle"
all_cases=$(echo $all_cases)
cases=${only//,/ }
cases=${cases:-$all_cases}
for c in $cases; do
  case " $all_cases " in *" $c "*) ;; *) echo "unknown case '$c' (one of: $all_cases)" >&2; exit 2 ;; esac
done
wanted() { case " $cases " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

command -v taskset >/dev/null || { echo "taskset is missing (Debian: util-linux)" >&2; exit 1; }
if [ "$(nproc --all)" -lt 2 ]; then
  echo "the suite pins the server to CPU 0 and the generator to CPU 1: it needs 2 CPUs" >&2
  exit 1
fi

# Idle connections need a descriptor each, in the server and in the generator.
soft=$(ulimit -Sn) hard=$(ulimit -Hn)
if [ "$soft" != "$hard" ]; then
  ulimit -n "$hard"
  echo "raised the soft open-files limit (RLIMIT_NOFILE) from $soft to the hard limit $hard"
else
  echo "open-files limit (RLIMIT_NOFILE): soft = hard = $hard; nothing to raise"
fi
if [ "$hard" != unlimited ] && [ $((idle_conns + 200)) -gt "$hard" ]; then
  echo "--idle-connections $idle_conns needs about $((idle_conns + 200)) open files; the limit is $hard" >&2
  exit 1
fi

# The servers' syscalls per message, where perf can count them (Debian:
# linux-perf, as root): the evidence of what every server leaves to the kernel.
count_syscalls=()
if perf stat -x, -e syscalls:sys_enter_sendto -- true >/dev/null 2>&1; then
  count_syscalls=(--count-syscalls)
  echo "perf counts syscall tracepoints: the tables show each server's send, receive and poll calls per message"
else
  echo "perf cannot count syscall tracepoints here (Debian: linux-perf, as root): no syscall counts in the tables"
fi

started=$(date +%s)
echo "== building (release): wshub examples and CLI, the Rust peers, Node ws"
target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release --locked -p wshub --example echo --example broadcast -p wshub-cli --bin wshub
cargo build --release --locked --manifest-path bench/compare/Cargo.toml --target-dir "$target"
(cd bench/node && npm ci --no-audit --no-fund --loglevel=error)
bin=$target/release

work=$(mktemp -d "${TMPDIR:-/tmp}/wshub-compare.XXXXXX")
mkdir -p "$work/runs" "$work/logs"
echo "== raw results and server logs: $work"
: >"$work/runs.tsv"
: >"$work/commands.tsv"
cat /proc/loadavg >"$work/load-start"

servers=(wshub ws tokio-tungstenite fastwebsockets)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

source bench/lib.sh

# start SERVER KIND [ENV=VALUE…]: starts it on CPU 0 on a free port; sets
# $port and $pid. KIND is echo, broadcast or hub.
start() {
  local server=$1 kind=$2
  shift 2
  port=$(free_port)
  local cmd
  case $server in
    wshub) cmd=("$bin/examples/$kind" "127.0.0.1:$port") ;;
    ws) cmd=(node "$root/bench/node/$kind.js" "127.0.0.1:$port") ;;
    tokio-tungstenite) cmd=("$bin/tungstenite-$kind" "127.0.0.1:$port") ;;
    fastwebsockets) cmd=("$bin/fastws-$kind" "127.0.0.1:$port") ;;
    wshub-hub) cmd=("$bin/wshub" serve --config "$root/bench/hub.toml" --listen "127.0.0.1:$port") ;;
  esac
  local log="$work/logs/$server-$kind-$port.log"
  env RUST_LOG=warn "$@" taskset -c 0 "${cmd[@]}" >"$log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "$server ($kind) did not start listening on port $port:" >&2
  tail -20 "$log" >&2
  exit 1
}

stop() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

# run CASE KIND SERVER REPEAT PID PORT MODE ARGS…: one `wshub bench` run on
# CPU 1, bounded in time; a failure is recorded, not fatal.
run() {
  local case=$1 kind=$2 server=$3 r=$4 spid=$5 sport=$6
  shift 6
  local base="$work/runs/$case-$server-$r"
  local extra=()
  [ "$r" != 0 ] || extra=("${count_syscalls[@]}")
  local cmd=(taskset -c 1 "$bin/wshub" bench "$@" --server-pid "$spid" "${extra[@]}" --json "$base.json" -q)
  local shown="${cmd[*]}"
  shown=${shown//$bin/\$BIN}
  shown=${shown//$base.json/RESULT.json}
  shown=${shown//127.0.0.1:$sport/127.0.0.1:\$PORT}
  shown=${shown//--server-pid $spid/--server-pid \$SERVER_PID}
  printf '%s\t%s\t%s\n' "$case" "$server" "$shown" >>"$work/commands.tsv"
  local t0 status=ok
  t0=$(date +%s.%N)
  if ! timeout $((seconds + hold + 300)) "${cmd[@]}" >"$base.out" 2>&1; then
    status=failed
    echo "   $case / $server / run $r FAILED: $(tail -2 "$base.out" | tr '\n' ' ')"
  fi
  local wall
  wall=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
  local rss threads
  rss=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$spid/status" 2>/dev/null || echo 0)
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$spid/status" 2>/dev/null || echo 0)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$case" "$kind" "$server" "$r" "$status" "$rss" "$wall" \
    "$threads" >>"$work/runs.tsv"
  printf '   %-13s %-18s run %s: %s (%ss)\n' "$case" "$server" "$r" "$status" "$wall"
}

# The runs of a loaded case: repeats 1..N, then, where perf can count
# syscalls, run 0, which counts them: the tracepoints cost the server some
# CPU on every syscall, so run 0 gives the syscall counts and nothing else.
passes() {
  seq "$repeats"
  if [ ${#count_syscalls[@]} -gt 0 ]; then echo 0; fi
}

# The servers in the order of repeat R (rotated, so no server always goes first).
order() {
  local r=$1 n=${#servers[@]} i
  [ "$r" != 0 ] || r=$((repeats + 1))
  for i in $(seq 0 $((n - 1))); do echo "${servers[$(((i + r - 1) % n))]}"; done
}

# pace_args PACING: sets $pace to the generator's options for a fan-out
# pacing, -w8 (8 messages ahead of the slowest receiver) or --rate20.
pace_args() {
  case $1 in
    -w8) pace=(-w 8) ;;
    --rate20) pace=(--rate 20) ;;
  esac
}

echo_cases=()
for c in echo-100x64:100:64 echo-1000x64:1000:64 echo-100x16k:100:16384; do
  wanted "${c%%:*}" && echo_cases+=("$c")
done
if [ ${#echo_cases[@]} -gt 0 ]; then
  echo "== echo: ${echo_cases[*]%%:*} ($repeats × $seconds s each)"
  declare -A spid sport
  for s in "${servers[@]}"; do start "$s" echo; spid[$s]=$pid; sport[$s]=$port; done
  for c in "${echo_cases[@]}"; do
    IFS=: read -r name conns size <<<"$c"
    for r in $(passes); do
      for s in $(order "$r"); do
        run "$name" echo "$s" "$r" "${spid[$s]}" "${sport[$s]}" \
          echo "ws://127.0.0.1:${sport[$s]}/" -c "$conns" -w 1 -s "$size" -d "$seconds"
      done
    done
  done
  for s in "${servers[@]}"; do stop "${spid[$s]}"; done
fi

fanout_cases=()
# NAME:RECEIVERS:PACING. Saturation (-w 8): the sender keeps 8 messages
# ahead of the slowest receiver. A fixed 20 messages/s (--rate 20): the hub
# case's offered load (100,000 deliveries/s), the peers' side of its
# comparison: at a low rate every delivery is a write of its own, at
# saturation many share one, so the two are not comparable.
for c in fanout-1000:1000:-w8 fanout-5000:5000:-w8 fanout-5000-r20:5000:--rate20; do
  wanted "${c%%:*}" && fanout_cases+=("$c")
done
if [ ${#fanout_cases[@]} -gt 0 ]; then
  echo "== fan-out: ${fanout_cases[*]%%:*} ($repeats × $seconds s each)"
  declare -A spid sport
  for s in "${servers[@]}"; do start "$s" broadcast; spid[$s]=$pid; sport[$s]=$port; done
  for c in "${fanout_cases[@]}"; do
    IFS=: read -r name receivers pacing <<<"$c"
    pace_args "$pacing"
    for r in $(passes); do
      for s in $(order "$r"); do
        run "$name" fanout "$s" "$r" "${spid[$s]}" "${sport[$s]}" \
          fanout "ws://127.0.0.1:${sport[$s]}/" -r "$receivers" "${pace[@]}" -s 64 -d "$seconds" --drain 5
      done
    done
  done
  for s in "${servers[@]}"; do stop "${spid[$s]}"; done
fi

if wanted idle; then
  echo "== idle: $idle_conns connections held $hold s, a fresh echo server per run"
  for r in $(seq "$repeats"); do
    for s in $(order "$r"); do
      # wshub's heartbeat is on in every example (a ping every 25 s by
      # default); every 5 s here, so the hold sees pings answered.
      start "$s" echo WSHUB_EXAMPLE_PING_MS=5000
      sleep 0.5
      run idle idle "$s" "$r" "$pid" "$port" \
        idle "ws://127.0.0.1:$port/" -c "$idle_conns" --hold "$hold"
      stop "$pid"
    done
  done
fi

if wanted hub-5000; then
  echo "== hub: 5000 subscribers of one channel, publications through the HTTP API"
  start wshub-hub hub
  for r in $(passes); do
    # 20 publications/s × 5000 subscribers = 100,000 deliveries/s offered.
    run hub-5000 hub wshub "$r" "$pid" "$port" \
      hub "http://127.0.0.1:$port" --api-key compare-suite-api-key -c 5000 --channels 1 \
      --publishers 1 --rate 20 -s 64 -d "$seconds" --drain 5
  done
  stop "$pid"
fi

# permessage-deflate (wshub only): the same server with and without
# compression negotiated, alternating. Fan-out: the broadcast example (deflate
# on for clients that offer it), the generator's receivers offering it with
# --deflate; the frame is compressed once per message for all of them.
# Memory: a fresh echo server per run; with --deflate each connection sends
# one 40 KiB compressed message and gets its echo before it goes idle, so the
# server's decompressor has filled its window (the client keeps its context,
# as browsers do).
deflate_fanout=()
for c in deflate-fanout-5000:-w8 deflate-fanout-5000-r20:--rate20; do
  wanted "${c%%:*}" && deflate_fanout+=("$c")
done
if [ ${#deflate_fanout[@]} -gt 0 ]; then
  echo "== permessage-deflate fan-out: ${deflate_fanout[*]%%:*} ($repeats × $seconds s each, off and on)"
  start wshub broadcast
  for c in "${deflate_fanout[@]}"; do
    IFS=: read -r name pacing <<<"$c"
    pace_args "$pacing"
    for r in $(passes); do
      for variant in wshub wshub+deflate; do
        flag=()
        [ "$variant" = wshub+deflate ] && flag=(--deflate)
        run "$name" fanout "$variant" "$r" "$pid" "$port" \
          fanout "ws://127.0.0.1:$port/" -r 5000 "${pace[@]}" -s 64 -d "$seconds" --drain 5 "${flag[@]}"
      done
    done
  done
  stop "$pid"
fi
if wanted deflate-idle; then
  echo "== permessage-deflate memory: $deflate_conns connections held $hold s, off and on"
  for r in $(seq "$repeats"); do
    for variant in wshub wshub+deflate; do
      flag=()
      [ "$variant" = wshub+deflate ] && flag=(--deflate)
      start wshub echo WSHUB_EXAMPLE_PING_MS=5000
      sleep 0.5
      run deflate-idle idle "$variant" "$r" "$pid" "$port" \
        idle "ws://127.0.0.1:$port/" -c "$deflate_conns" --hold "$hold" "${flag[@]}"
      stop "$pid"
    done
  done
fi
cat /proc/loadavg >"$work/load-end"

echo "== report"
out_dir=$(dirname "$out_md")
python3 bench/compare/report.py "$work" "$out_md" "$out_dir/comparison.json" \
  --repeats "$repeats" --seconds "$seconds" --hold "$hold" --quick "$quick" \
  --idle-connections "$idle_conns" --elapsed $(($(date +%s) - started)) \
  --command "$invocation"
"$bin/compare-charts" "$out_dir/comparison.json" "$out_dir/charts"
echo "== done in $(($(date +%s) - started)) s: $out_md, $out_dir/comparison.json, $out_dir/charts/"
