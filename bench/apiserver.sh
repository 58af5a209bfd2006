#!/usr/bin/env bash
# Benchmark: durable writes of the API server's object service (crates/apiserver core)
# with BENCH_WRITERS concurrent writers (default 32) for BENCH_SECS seconds (default 5),
# each a ConfigMap create that returns only after its commit is durable (redb fsync,
# group-committed). Prints writes/s. BENCH_DIR: parent of the temp store (a real disk;
# tmpfs makes fsync free), default $TMPDIR or /tmp. Never runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -q -p cstor-apiserver --lib bench_concurrent_writers -- --ignored --nocapture 2>&1 |
  grep 'writes/s'
