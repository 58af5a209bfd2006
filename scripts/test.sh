#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine: installs what it needs, then runs
# formatting, lints and every test. CI runs this through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust_tools
ensure_test_packages
ensure_python_clients
ensure_kubectl

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Release build: the pool and target tests push real data through checksums, compression
# and parity, which debug builds make several times slower.
cargo test --workspace --release --locked --no-fail-fast -- --test-threads=2
