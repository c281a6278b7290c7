#!/usr/bin/env bash
# Run both interop clients (Python websockets, Node ws) against an ECHO server.
#
#   interop/run.sh URL [OPTIONS]
#   interop/run.sh [OPTIONS] -- SERVER_CMD ARG...
#
# URL is ws://127.0.0.1:PORT of a running echo server. With `-- SERVER_CMD`,
# the server is started on a free loopback port (`{addr}` in its arguments
# becomes 127.0.0.1:PORT, `{port}` PORT) and stopped at the end.
# OPTIONS go to both clients: --subprotocol NAME, --server-deflate yes|no,
# --timeout SECS (per step).
#
# Installs what the clients need on first use: a venv in .venv/interop (from
# interop/requirements.txt) and interop/node_modules (npm ci, from
# interop/package-lock.json). Exits non-zero if either client fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$root/.venv/interop"

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
url=""
client_args=()
server_cmd=()
while [ $# -gt 0 ]; do
  case "$1" in
    --subprotocol|--server-deflate|--timeout)
      [ $# -ge 2 ] || usage
      client_args+=("$1" "$2"); shift 2 ;;
    --) shift; server_cmd=("$@"); break ;;
    -h|--help) usage ;;
    -*) echo "interop/run.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$url" ] || usage; url="$1"; shift ;;
  esac
done
if [ -n "$url" ] && [ ${#server_cmd[@]} -gt 0 ]; then usage; fi
if [ -z "$url" ] && [ ${#server_cmd[@]} -eq 0 ]; then usage; fi

# --- what the clients need ---------------------------------------------------------
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$venv/.requirements.txt"; then
  echo "== setting up $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  timeout 600 "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/.requirements.txt"
fi
if [ ! -d "$here/node_modules/ws" ] || [ "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]; then
  echo "== npm ci in interop/"
  (cd "$here" && timeout 600 npm ci --no-audit --no-fund --loglevel=error)
fi

# --- the server, when given a command --------------------------------------------------
if [ ${#server_cmd[@]} -gt 0 ]; then
  port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  cmd=()
  for a in "${server_cmd[@]}"; do
    a="${a//\{addr\}/127.0.0.1:$port}"
    cmd+=("${a//\{port\}/$port}")
  done
  echo "== starting server: ${cmd[*]}"
  setsid "${cmd[@]}" &
  server_pid=$!
  stop_server() {
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  }
  trap stop_server EXIT
  trap 'exit 130' INT TERM
  if ! "$venv/bin/python" - "$port" "$server_pid" <<'PY'
import os, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
  then
    echo "interop/run.sh: the server exited or did not accept on 127.0.0.1:$port within 60s" >&2
    exit 1
  fi
  url="ws://127.0.0.1:$port"
fi

# --- the clients -------------------------------------------------------------------
# A client bounds itself (60 steps of --timeout, 10 s by default); this bound
# only catches a hang the client could not.
limit=900
status=0
echo "== python websockets client -> $url"
timeout --kill-after=10 "$limit" "$venv/bin/python" "$here/python_client.py" "$url" ${client_args[@]+"${client_args[@]}"} || status=1
echo "== node ws client -> $url"
timeout --kill-after=10 "$limit" node "$here/node_client.mjs" "$url" ${client_args[@]+"${client_args[@]}"} || status=1

if [ "$status" -ne 0 ]; then
  echo "interop: FAILED (see the FAIL line above)" >&2
else
  echo "interop: both clients passed"
fi
exit "$status"
