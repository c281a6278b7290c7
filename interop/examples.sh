#!/usr/bin/env bash
# Drive every wshub example (crates/wshub/examples) with independent clients.
#
#   interop/examples.sh [EXAMPLE ...] [--timeout SECS]
#
# Builds the examples (cargo build --release -p wshub --examples --locked),
# ensures the venv .venv/interop (interop/requirements.txt, shared with
# interop/run.sh, plus interop/requirements-examples.txt), then runs
# interop/examples_test.py, which starts each example on a free loopback port,
# prints `ok  EXAMPLE CHECK` per check and stops at the first failure.
# Exits with the test's status.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$root/.venv/interop"
python="${PYTHON:-python3}"

case "${1:-}" in -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac

echo "== cargo build --release -p wshub --examples --locked"
(cd "$root" && cargo build --release -p wshub --examples --locked)

# Same rule as interop/run.sh, so the two scripts agree on when to rebuild the venv.
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$venv/.requirements.txt"; then
  echo "== setting up $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  timeout 600 "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/.requirements.txt"
fi
if ! cmp -s "$here/requirements-examples.txt" "$venv/.requirements-examples.txt"; then
  echo "== installing interop/requirements-examples.txt into $venv"
  timeout 600 "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements-examples.txt"
  cp "$here/requirements-examples.txt" "$venv/.requirements-examples.txt"
fi

target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
echo "== examples_test.py"
status=0
# The test bounds itself (300 steps of --timeout at most); this only catches a hang it could not.
timeout --kill-after=10 900 "$venv/bin/python" "$here/examples_test.py" \
  --bin-dir "$target/release/examples" "$@" || status=$?
exit "$status"
