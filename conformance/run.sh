#!/usr/bin/env bash
# Run the Autobahn TestSuite (via kosoku, fuzzingclient mode) against an echo
# server started on a free loopback port, then summarize the results.
#
#   conformance/run.sh [OPTIONS] [-- SERVER_CMD ARG...]
#
# SERVER_CMD is the echo server to test; `{addr}` in its arguments becomes
# 127.0.0.1:PORT and `{port}` becomes PORT. Without one, wshub's echo example
# is built (cargo build --release --example echo) and run as
#   target/release/examples/echo {addr}
#
# Options:
#   --case GLOB           run only these cases (repeatable; default: all)
#   --exclude GLOB        exclude more cases (repeatable; conformance/exclude.txt
#                         is always excluded)
#   --quick               leave out the slow permessage-deflate volume cases
#                         (12.*.N and 13.*.N for N = 9, 10, 12..18: 64 KiB and
#                         128 KiB messages, and the small auto-fragment sizes);
#                         about 1.5 minutes instead of 11-16
#   --parallelism N       cases run at once by kosoku (default 1)
#   --timeout SECS        bound on the kosoku run (default 2400)
#   --start-timeout SECS  bound on the server starting to accept (default 60)
#   --compare FILE        compare with FILE (default conformance/expected.json
#                         when it exists; `none` to skip)
#   --strict              fail unless every case is OK or INFORMATIONAL
#   --update-baseline     write the results to conformance/expected.json
#                         (refused unless they pass --strict)
#   --save FILE           also write the normalized results to FILE (only
#                         when the checks pass)
#   --reports DIR         output directory (default conformance/reports)
#   --no-fix              run kosoku as released, without kosoku_fix.py (its
#                         bug then turns many 12.x/13.x cases into ERROR)
#
# Exit status: 0 when the run finished and the summary checks passed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$root/.venv/conformance"

cases=()
excludes=()
quick=0
parallelism=1
run_timeout=2400
start_timeout=60
compare=""
strict=0
update_baseline=0
save=""
out="$here/reports"
fix=1
server_cmd=()

die() { echo "conformance/run.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --case) cases+=("${2:?--case needs a value}"); shift 2 ;;
    --exclude) excludes+=("${2:?--exclude needs a value}"); shift 2 ;;
    --quick) quick=1; shift ;;
    --parallelism) parallelism="${2:?}"; shift 2 ;;
    --timeout) run_timeout="${2:?}"; shift 2 ;;
    --start-timeout) start_timeout="${2:?}"; shift 2 ;;
    --compare) compare="${2:?}"; shift 2 ;;
    --strict) strict=1; shift ;;
    --update-baseline) update_baseline=1; strict=1; shift ;;
    --save) save="${2:?}"; shift 2 ;;
    --reports) out="${2:?}"; shift 2 ;;
    --no-fix) fix=0; shift ;;
    -h|--help) sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; server_cmd=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) server_cmd=("$@"); break ;;
  esac
done

selected=0  # a run of selected cases only
if [ ${#cases[@]} -gt 0 ] || [ ${#excludes[@]} -gt 0 ] || [ "$quick" -eq 1 ]; then selected=1; fi
if [ "$update_baseline" -eq 1 ] && { [ "$selected" -eq 1 ] || [ "$fix" -eq 0 ]; }; then
  die "--update-baseline needs the whole suite, with the fix (no --case, --exclude, --quick or --no-fix)"
fi

# --- the runner's venv (.venv/conformance, gitignored), reused when current --
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/kosoku" ] || ! cmp -s "$here/requirements.txt" "$venv/.requirements.txt"; then
  echo "== setting up $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  timeout 600 "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/.requirements.txt"
fi

# --- the server under test ------------------------------------------------------
if [ ${#server_cmd[@]} -eq 0 ]; then
  echo "== building wshub's echo example"
  (cd "$root" && timeout 1800 cargo build --release --example echo)
  server_cmd=("$root/target/release/examples/echo" "{addr}")
fi

port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
addr="127.0.0.1:$port"
cmd=()
for a in "${server_cmd[@]}"; do
  a="${a//\{addr\}/$addr}"
  cmd+=("${a//\{port\}/$port}")
done

reports="$out/servers"
rm -rf "$reports" "$out/results.json" "$out/kosoku.log" "$out/server.log"
mkdir -p "$reports"
server_log="$out/server.log"
kosoku_log="$out/kosoku.log"

echo "== starting server: ${cmd[*]}"
# Its own process group, so that the whole tree (e.g. `cargo run` and its
# child) goes away at the end.
setsid "${cmd[@]}" >"$server_log" 2>&1 &
server_pid=$!

stop_server() {
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$server_pid" 2>/dev/null || true
  fi
  wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# Wait (bounded) until the server accepts TCP connections.
if ! "$venv/bin/python" - "$port" "$start_timeout" "$server_pid" <<'PY'
import os, socket, sys, time
port, limit, pid = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("server exited before accepting")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
then
  echo "---- server log:"
  tail -n 40 "$server_log"
  die "the server did not accept on 127.0.0.1:$port within ${start_timeout}s"
fi
echo "== server accepts on $addr"

# --- the Autobahn run --------------------------------------------------------------
args=(--mode fuzzingclient --parallelism "$parallelism" --outdir "$reports")
for c in ${cases[@]+"${cases[@]}"}; do args+=(--include "$c"); done
while read -r line; do
  line="${line%%#*}"
  line="$(echo "$line" | tr -d '[:space:]')"
  if [ -n "$line" ]; then args+=(--exclude "$line"); fi
done <"$here/exclude.txt"
for x in ${excludes[@]+"${excludes[@]}"}; do args+=(--exclude "$x"); done
if [ "$quick" -eq 1 ]; then
  for n in 9 10 12 13 14 15 16 17 18; do args+=(--exclude "12.*.$n" --exclude "13.*.$n"); done
fi

if [ "$fix" -eq 1 ]; then
  runner=("$venv/bin/python" "$here/kosoku_fix.py")
else
  runner=("$venv/bin/kosoku")
fi
echo "== kosoku ws://$addr (timeout ${run_timeout}s$([ "$fix" -eq 1 ] || echo ', without kosoku_fix.py'))"
start=$(date +%s)
set +e
# kosoku exits 1 when any case did not pass; the summary below decides.
timeout --kill-after=30 "$run_timeout" "${runner[@]}" "${args[@]}" "ws://$addr" >"$kosoku_log" 2>&1
krc=$?
set -e
elapsed=$(( $(date +%s) - start ))
tail -n 3 "$kosoku_log"
echo "== kosoku finished in ${elapsed}s (exit $krc)"
if [ "$krc" -eq 124 ] || [ "$krc" -eq 137 ]; then
  die "kosoku did not finish within ${run_timeout}s (see $kosoku_log)"
fi
server_died=0
if ! kill -0 "$server_pid" 2>/dev/null; then
  server_died=1
  echo "!! the server exited during the run; its log ends with:" >&2
  tail -n 20 "$server_log" >&2
fi
stop_server
[ -f "$reports/index.json" ] || die "kosoku wrote no $reports/index.json (exit $krc; see $kosoku_log)"

# --- summary -----------------------------------------------------------------------
sum=("$venv/bin/python" "$here/summarize.py" "$reports/index.json" --out "$out/results.json")
if [ -z "$compare" ] && [ -f "$here/expected.json" ] && [ "$update_baseline" -eq 0 ]; then
  compare="$here/expected.json"
fi
if [ -n "$compare" ] && [ "$compare" != none ]; then sum+=(--compare "$compare"); fi
if [ "$strict" -eq 1 ]; then sum+=(--strict); fi
if [ -n "$save" ]; then sum+=(--save "$save"); fi
if [ "$update_baseline" -eq 1 ]; then sum+=(--save "$here/expected.json"); fi
# A run of selected cases: baseline cases left out are not differences.
if [ "$selected" -eq 1 ]; then sum+=(--partial); fi
set +e
"${sum[@]}"
rc=$?
set -e
if [ "$server_died" -eq 1 ]; then die "the server under test exited during the run"; fi
exit "$rc"
