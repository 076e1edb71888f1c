#!/usr/bin/env bash
# The whole test suite: formatting, lints, every config check, unit + integration tests
# (including the official SDKs against the sandbox). `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo build --locked --bins
for d in routes examples/*/; do
  ./target/debug/paymux check "$d"
done
cargo test --locked --all-targets
