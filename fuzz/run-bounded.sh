#!/usr/bin/env bash
# fuzz/run-bounded.sh [TARGET...]: builds the fuzz targets with libFuzzer on
# the stable toolchain and runs each for a bounded time, starting from the
# corpus committed in fuzz/corpus/<target>. Prints the executions of every
# target and their total; exits non-zero on a crash, a leak of time (a slow
# input) or an invariant the harness checks (see fuzz/README.md).
#
# Environment:
#   XXCAP_FUZZ_SECONDS     seconds per target (default 25: 5 targets, ~125 s)
#   XXCAP_FUZZ_TARGET_DIR  build and scratch directory (default
#                          ~/.cache/xxcapture/fuzz: outside the work tree, so
#                          a clean clone reuses the instrumented build)
set -euo pipefail
cd "$(dirname "$0")"

seconds=${XXCAP_FUZZ_SECONDS:-25}
cache=${XXCAP_FUZZ_TARGET_DIR:-${XXCAP_CACHE:-$HOME/.cache/xxcapture}/fuzz}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	targets=(task_file card_sequence chain backend ring)
fi

# What `cargo fuzz build --sanitizer none` (cargo-fuzz 0.13) passes: SanCov
# instrumentation for libFuzzer's coverage feedback and comparison tracing,
# `--cfg fuzzing`, and debug assertions and overflow checks on. All stable
# flags; no nightly and no RUSTC_BOOTSTRAP. `--target` keeps them off build
# scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cllvm-args=-sanitizer-coverage-stack-depth \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="$cache/target"
cargo build --release --locked --quiet --target "$host" \
	$(printf -- '--bin %s ' "${targets[@]}")
bin="$CARGO_TARGET_DIR/$host/release"

total=0
for t in "${targets[@]}"; do
	# New inputs go to a scratch copy; the committed corpus stays as it is.
	work="$cache/corpus/$t"
	artifacts="$cache/artifacts/$t/"
	mkdir -p "$work" "$artifacts" "corpus/$t"
	log="$cache/$t.log"
	status=0
	"$bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$artifacts" \
		"$work" "corpus/$t" >"$log" 2>&1 || status=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	if [ "$status" -ne 0 ]; then
		tail -40 "$log" >&2
		crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
		if [ -n "$crash" ] && [ -f "$crash" ]; then
			echo "fuzz $t: crash input $crash (base64 below; add it to fuzz/regressions/$t/)" >&2
			base64 -w0 "$crash" >&2
			echo >&2
		fi
		echo "fuzz $t: FAILED after ${runs:-?} executions (exit $status, log $log)" >&2
		exit 1
	fi
	echo "fuzz $t: ${runs:-0} executions in ${seconds} s, 0 crashes"
	total=$((total + ${runs:-0}))
done
echo "fuzz: ${total} executions over ${#targets[@]} targets, 0 crashes"
