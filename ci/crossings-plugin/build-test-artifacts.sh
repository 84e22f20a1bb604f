#!/usr/bin/env bash
# Builds what the crossings-plugin VM tests need, where they look for it:
#   target/release/libxxcapture_crossings.so                 the TCG plugin
#   target/x86_64-unknown-linux-gnu/release/edu-probe        the static guest probe
# (under $CARGO_TARGET_DIR instead of target/ when that is set).
# The tests also need the provisioned QEMU and kernel (images/provision).
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --quiet --release -p xxcapture-crossings
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --quiet --release --target x86_64-unknown-linux-gnu -p edu-probe

target=${CARGO_TARGET_DIR:-target}
for f in "$target/release/libxxcapture_crossings.so" \
         "$target/x86_64-unknown-linux-gnu/release/edu-probe"; do
    [[ -f $f ]] || { echo "build-test-artifacts: $f was not produced" >&2; exit 1; }
    echo "built $f" >&2
done
