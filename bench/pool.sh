#!/usr/bin/env bash
# Benchmark: the pool engine (a volume on a stripe of 1, mirror of 2 and raidz of 3
# sparse files) against the raw file on the same disk, compression off (incompressible
# data) and lz4 (half-compressible data). Both sides are measured in the same run by one
# Rust harness (crates/pool/examples/poolbench.rs), the same way: one thread, buffered
# pread/pwrite through the page cache (the engine's devices are buffered files too), each
# write phase ends with a durable sync inside the timing (fdatasync / txg commit), reads
# follow the writes with the page cache warm, the same offsets over the same working set;
# each side runs REPEAT times, alternating, and keeps its best (the disk is shared).
# Prints sequential 1 MiB write/read, random 4 KiB write/read (MiB/s) and 4 KiB
# write+flush latency (us), with the ratio to raw ÷ write amplification (1 stripe, n for
# an n-way mirror, n/(n-1) for raidz) and whether it meets the issue's aim on writes
# (>= 0.8 sequential, >= 0.5 random 4 KiB); reads are compared with page-cache reads of
# the raw file, without an aim. Never runs in CI.
#
# Env: SIZE_MIB (working set, default 512), RAND_OPS (default 32768), FLUSH_OPS
# (default 500), REPEAT (default 3), LAYOUTS (default stripe,mirror,raidz), COMPS (default off,lz4),
# BLOCK_KIB (volume block size, default the engine's 16), DIRTY_MIB (dirty-data bound), BENCH_DIR (parent of the temp
# dir: the disk to measure, default $TMPDIR or /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p cstor-pool --example poolbench
W=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/cstor-poolbench.XXXXXX")
trap 'rm -rf "$W"' EXIT
./target/release/examples/poolbench "$W"
