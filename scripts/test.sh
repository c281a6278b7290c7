#!/usr/bin/env bash
# The one test command (README, and what .ci/run runs): static checks, all tests,
# interop with independent clients, Autobahn conformance against the committed
# baseline, and the fuzz targets. Installs what it needs under the repo on first
# use (.venv/, node_modules/, cargo-fuzz). Every step is bounded in time.
#
#   bash scripts/test.sh            # everything
#   SKIP_FUZZ=1 SKIP_CONFORMANCE=1 SKIP_BROWSER=1 bash scripts/test.sh   # the quick subset
#
# The browser tests need Debian's chromium at /usr/bin/chromium (.ci/run installs
# it; elsewhere: apt-get install chromium, or SKIP_BROWSER=1).
# The NATS JetStream bridge tests start their own nats-server (.ci/run installs
# it; elsewhere: apt-get install nats-server), as the Redis tests do redis-server.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$(date +%s)
step() { printf '\n== %s (t+%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

step "format"
cargo fmt --all -- --check

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "docs (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "wshub-proto stays sans-IO (no tokio, futures or mio in its tree)"
if cargo tree -p wshub-proto -e normal,build --prefix none --locked \
    | grep -E '^(tokio|tokio-[a-z-]+|futures|futures-[a-z-]+|mio) ' ; then
  echo "wshub-proto depends on an async runtime crate (listed above)" >&2
  exit 1
fi
echo "ok: $(cargo tree -p wshub-proto -e normal --prefix none --locked | sort -u | wc -l) crates, none async"

step "release build (server, examples, CLI)"
cargo build --release --workspace --examples --bins --locked

step "micro-benchmarks build (criterion; run them with cargo bench -p wshub-proto)"
cargo bench -p wshub-proto --no-run --locked

step "unit, property, doc and integration tests"
cargo test --workspace --locked

step "interop: Node ws and Python websockets clients against the echo example"
interop/run.sh -- target/release/examples/echo '{addr}'

step "examples driven by an independent client"
interop/examples.sh

step "JavaScript client (clients/js) against a real hub"
(cd clients/js && timeout 300 npm test)

if [ "${SKIP_BROWSER:-0}" != 1 ]; then
  step "browser end to end: headless Chromium (demo chat, recovery, admin)"
  if [ ! -x /usr/bin/chromium ]; then
    echo "the browser tests need /usr/bin/chromium (apt-get install chromium), or SKIP_BROWSER=1" >&2
    exit 1
  fi
  (cd e2e && npm ci --no-audit --no-fund --loglevel=error && timeout 300 node run.mjs)
fi

if [ "${SKIP_CONFORMANCE:-0}" != 1 ]; then
  step "conformance: Autobahn TestSuite (kosoku) against the echo example"
  conformance/run.sh --strict --parallelism 2
fi

if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  step "fuzz targets: build and a short run each"
  scripts/fuzz.sh
fi

step "all checks passed in $(( $(date +%s) - started ))s"
