#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ (fuzz/fuzz_targets/*.rs) for SECONDS each, one after the
# other, and fails on the first crash or broken invariant (the input is kept in fuzz/artifacts/).
#
#   scripts/fuzz.sh [SECONDS-PER-TARGET]   (default 300; scripts/test.sh runs it with 20)
#   FUZZ_TARGETS="vote_json ws_frames" scripts/fuzz.sh 60   only these targets
#
# Stable toolchain only: cargo-fuzz passes a few -Z flags to rustc, which RUSTC_BOOTSTRAP=1 lets the
# stable compiler take (checked on stable 1.95). The targets are safe Rust, so they build without a
# sanitizer (`-s none`, what was verified on stable; FUZZ_SANITIZER=address asks for ASan, whose
# runtime must then be in the toolchain). cargo-fuzz is installed when missing.
# Each target reads the committed seeds (fuzz/seeds/<target>/) and grows its corpus in
# fuzz/corpus/<target>/ (not committed), so a longer local run picks up where the last one stopped.
# Reproduce a crash: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
sanitizer=${FUZZ_SANITIZER:-none}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing: cargo install --locked cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1

targets=${FUZZ_TARGETS:-$(cargo fuzz list --fuzz-dir fuzz)}
echo "== cargo fuzz build (sanitizer: $sanitizer)"
cargo fuzz build --fuzz-dir fuzz -s "$sanitizer"

for target in $targets; do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
  # -rss_limit_mb: a leak or an unbounded buffer fails the run; -max_len: requests and socket
  # messages larger than this are refused by size before any parsing.
  cargo fuzz run --fuzz-dir fuzz -s "$sanitizer" "$target" \
    "$PWD/fuzz/corpus/$target" "$PWD/fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1
done
echo "fuzz: $(echo $targets | wc -w) targets, ${seconds}s each, no failure"
