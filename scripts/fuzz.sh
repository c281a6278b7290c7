#!/usr/bin/env bash
# Fuzzes wshub-proto: installs cargo-fuzz (pinned) if it is missing, builds every
# target in fuzz/ with the nightly toolchain, replays the saved reproducers in
# fuzz/regressions/, then runs each target for FUZZ_SECONDS seconds.
#
#   FUZZ_SECONDS=20       seconds of fuzzing per target (default 20)
#   FUZZ_TARGETS="a b"    only these targets (default: all, from `cargo fuzz list`)
#   FUZZ_TOOLCHAIN=name   rustup toolchain to build with (default: nightly if
#                         installed, else the default toolchain with
#                         RUSTC_BOOTSTRAP=1, which accepts the -Z flags too)
#
# Exits non-zero if a build fails, a reproducer fails again, or a target finds a
# crash; the crashing input is in fuzz/artifacts/TARGET/. Corpora grow in
# fuzz/corpus/TARGET/ (ignored by git) and are reused by the next run.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-20}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/fuzz"

if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

toolchain=()
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  toolchain=("+$FUZZ_TOOLCHAIN")
elif rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  echo "== no nightly toolchain: building with the default one and RUSTC_BOOTSTRAP=1"
  export RUSTC_BOOTSTRAP=1
fi
fuzz() { cargo "${toolchain[@]}" fuzz "$@"; }

# The committed lock file must already be complete.
cargo "${toolchain[@]}" fetch --locked --manifest-path Cargo.toml

read -r -a targets <<<"${FUZZ_TARGETS:-$(fuzz list | tr '\n' ' ')}"
echo "== building ${targets[*]}"
fuzz build

failed=()
for t in "${targets[@]}"; do
  shopt -s nullglob
  saved=(regressions/"$t"-*)
  shopt -u nullglob
  if [ "${#saved[@]}" -gt 0 ]; then
    echo "== $t: replaying ${#saved[@]} reproducer(s)"
    if ! fuzz run "$t" "${saved[@]}" -- -runs=1; then
      failed+=("$t (regression)")
    fi
  fi
done

for t in "${targets[@]}"; do
  echo "== $t: fuzzing for ${FUZZ_SECONDS}s"
  mkdir -p "corpus/$t"
  if ! fuzz run "$t" "corpus/$t" -- -max_total_time="$FUZZ_SECONDS" -print_final_stats=1; then
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "== FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "== all ${#targets[@]} targets ran ${FUZZ_SECONDS}s each without a crash"
