#!/usr/bin/env bash
# Benchmark: cstor's iSCSI target against tgt on the same kind of file (both sparse or
# both preallocated, buffered I/O through the page cache on both), driven by fio's
# libiscsi engine in the same run. Prints a table of median IOPS, mean latency (for QD1
# rows: the latency aim) and the cstor/tgt ratio. Never runs in CI.
#
# Fairness: both files get the same fill (1 MiB writes over the working set, so reads hit
# data and both page caches hold the same large folios); dirty pages are synced before
# every job so no job pays for another's writeback; each job runs REPEAT times with the
# order of the two targets alternating, and the medians are printed.
#
# Needs root (tgtd), tgt, libiscsi-dev, python3, and builds fio 3.33 with libiscsi once
# into $CSTOR_BENCH_CACHE (default ~/.cache/cstor-bench); see
# ../shared/reference/harness.md §2. Env: RUNTIME (seconds per job, default 10),
# SIZE (working set, default 256m), REPEAT (runs per job, default 3), FILE_KIND (sparse
# or prealloc, default sparse), JOBS (space-separated rw:bs:qd list), CSTOR_BIN (a
# prebuilt cstor binary to measure instead of building this tree, e.g. an older build),
# FIO (a libiscsi-enabled fio binary to use instead of building one).
#
# MODE=pool serves pool volumes instead of a file (`cstor target serve --volume`): a stripe
# pool of one file and a raidz pool of three, each with a 1 GiB volume (compression off,
# incompressible fio data; the block cache keeps its default, so a 256m working set is 4x
# it), against tgt on a plain file in the same run. CSTOR_BIN_BEFORE (an older build) adds
# its own stripe and raidz pools in the same run, for before/after tables. Ratios are each
# target's median over tgt's.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RUNTIME=${RUNTIME:-10}
SIZE=${SIZE:-256m}
REPEAT=${REPEAT:-3}
FILE_KIND=${FILE_KIND:-sparse}
CACHE=${CSTOR_BENCH_CACHE:-$HOME/.cache/cstor-bench}
FIO=${FIO:-$CACHE/fio-3.33/fio}
MODE=${MODE:-file}

build_fio() {
  [ -x "$FIO" ] && return
  command -v iscsi-ls >/dev/null || { echo "need libiscsi-bin" >&2; exit 1; }
  dpkg -s libiscsi-dev >/dev/null 2>&1 || apt-get install -y -q libiscsi-dev >/dev/null
  mkdir -p "$CACHE/aptsrc/lists/partial"
  echo "deb-src http://deb.debian.org/debian bookworm main" > "$CACHE/aptsrc/src.list"
  local O="-o Dir::Etc::SourceList=$CACHE/aptsrc/src.list -o Dir::Etc::SourceParts=/nonexistent -o Dir::State::Lists=$CACHE/aptsrc/lists"
  # shellcheck disable=SC2086
  apt-get $O update -q >/dev/null
  # shellcheck disable=SC2086
  (cd "$CACHE" && apt-get $O source --download-only fio=3.33-3 >/dev/null && tar xzf fio_3.33.orig.tar.gz)
  (cd "$CACHE/fio-3.33" && ./configure --enable-libiscsi --disable-native >/dev/null && make -j2 >/dev/null)
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

build_fio
CSTOR_BIN=${CSTOR_BIN:-}
if [ -z "$CSTOR_BIN" ]; then
  cargo build --release -q -p cstor
  CSTOR_BIN=./target/release/cstor
fi
W=$(mktemp -d)
CP=$(free_port); TP=$(free_port); TC=$((RANDOM % 1000 + 100))
CIQN=iqn.2024-01.io.cstor.bench:cstor
TIQN=iqn.2024-01.io.cstor.bench:tgt
case "$FILE_KIND" in
  sparse) truncate -s 1G "$W/cstor.img" "$W/tgt.img" ;;
  prealloc) fallocate -l 1G "$W/cstor.img"; fallocate -l 1G "$W/tgt.img" ;;
  *) echo "FILE_KIND must be sparse or prealloc" >&2; exit 1 ;;
esac

cleanup() {
  for p in ${CPIDS:-}; do kill "$p" 2>/dev/null || true; done
  tgt_stop
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

tgt_start "$TC" "$TP" "$TIQN" "$W/tgt.img"

# name url, one a line: every target measured.
echo "tgt $(url "$TP" "$TIQN" 1)" > "$W/targets"


if [ "$MODE" = file ]; then
  "$CSTOR_BIN" target serve --listen "127.0.0.1:$CP" --iqn "$CIQN" --file "$W/cstor.img" >"$W/cstor.log" 2>&1 &
  CPIDS="$!"
  wait_portal "$CP"
  echo "cstor $(url "$CP" "$CIQN" 0)" >> "$W/targets"
else
  # serve_pools BIN TAG PORT: a stripe and a raidz pool with one volume each, one process.
  serve_pools() {
    local bin=$1 tag=$2 port=$3 home="$W/home-$2"
    mkdir -p "$home"
    truncate -s 2G "$W/$tag-s0.img" "$W/$tag-z0.img" "$W/$tag-z1.img" "$W/$tag-z2.img"
    CSTOR_HOME=$home "$bin" pool create "s$tag" stripe "$W/$tag-s0.img" >/dev/null
    CSTOR_HOME=$home "$bin" pool create "z$tag" raidz "$W/$tag-z0.img" "$W/$tag-z1.img" "$W/$tag-z2.img" >/dev/null
    CSTOR_HOME=$home "$bin" volume create "s$tag/v" --size 1G --compression off >/dev/null
    CSTOR_HOME=$home "$bin" volume create "z$tag/v" --size 1G --compression off >/dev/null
    CSTOR_HOME=$home "$bin" target serve --listen "127.0.0.1:$port" --iqn "$CIQN-s$tag" --volume "s$tag/v" \
      --target "$CIQN-z$tag,volume=z$tag/v" >"$W/cstor-$tag.log" 2>&1 &
    CPIDS="${CPIDS:-} $!"
    wait_portal "$port"
    echo "stripe$tag $(url "$port" "$CIQN-s$tag" 0)" >> "$W/targets"
    echo "raidz$tag $(url "$port" "$CIQN-z$tag" 0)" >> "$W/targets"
  }
  serve_pools "$CSTOR_BIN" "" "$CP"
  if [ -n "${CSTOR_BIN_BEFORE:-}" ]; then
    serve_pools "$CSTOR_BIN_BEFORE" "-before" "$(free_port)"
  fi
fi

job() { # name url rw bs qd
  "$FIO" --name="$1" --ioengine=libiscsi --filename="$2" --rw="$3" --bs="$4" --iodepth="$5" \
    --size="$SIZE" --time_based --runtime="$RUNTIME" --output-format=json 2>"$W/$1.err" || {
    echo "fio $1 failed: $(tail -3 "$W/$1.err")" >&2
  }
}

# Map the working set on every target so reads hit data, not holes.
while read -r _ u; do
  "$FIO" --name=fill --ioengine=libiscsi --filename="$u" --rw=write --bs=1m --iodepth=8 --size="$SIZE" >/dev/null 2>&1
done < "$W/targets"

if [ "$MODE" = file ]; then
  DEFAULT_JOBS="randread:4k:1 randread:4k:16 randwrite:4k:1 randwrite:4k:16 read:128k:16 write:128k:16"
else
  DEFAULT_JOBS="randread:4k:1 randread:4k:16 randwrite:4k:1 randwrite:4k:16 read:128k:8 write:128k:8"
fi
JOBS=${JOBS:-$DEFAULT_JOBS}
mapfile -t TARGETS < "$W/targets"
: > "$W/results"
for j in $JOBS; do
  IFS=: read -r rw bs qd <<<"$j"
  for r in $(seq "$REPEAT"); do
    # Rotate the order each round so no target always runs first or last.
    n=${#TARGETS[@]}
    for k in $(seq 0 $((n - 1))); do
      IFS=' ' read -r t u <<<"${TARGETS[$(((k + r) % n))]}"
      sync
      job "$t-$rw-$bs-qd$qd" "$u" "$rw" "$bs" "$qd" > "$W/$t-$rw-$bs-$qd-$r.json"
      echo "$rw $bs $qd $t $W/$t-$rw-$bs-$qd-$r.json" >> "$W/results"
    done
  done
done
echo "file kind: $FILE_KIND, working set $SIZE, $REPEAT x ${RUNTIME}s per job, load: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$W/results" <<'PY'
import json, statistics, sys
rows = {}
order = []
for line in open(sys.argv[1]):
    rw, bs, qd, t, path = line.split()
    text = open(path).read()
    # fio may print notices before the JSON document.
    start = text.find("{")
    if start < 0:
        print(f"no result for {t} {rw} {bs} qd{qd}", file=sys.stderr)
        continue
    d = json.loads(text[start:])["jobs"][0]
    side = d["read"] if "read" in rw else d["write"]
    if t not in order:
        order.append(t)
    runs = rows.setdefault((rw, bs, qd), {}).setdefault(t, [])
    runs.append((side["iops"], side["clat_ns"]["mean"] / 1000.0, side["bw"] / 1024.0))
print("ratio = target IOPS / tgt IOPS (medians); lat = mean completion latency; spread = (max-min)/median of the IOPS runs")
print(f"{'job':<20}{'target':<14}{'IOPS':>10}{'ratio':>8}{'lat us':>10}{'lat/tgt':>9}{'MiB/s':>9}{'spread':>8}")
for (rw, bs, qd), r in rows.items():
    if "tgt" not in r:
        continue
    base = [statistics.median(x) for x in zip(*r["tgt"])]
    for t in order:
        if t not in r:
            continue
        m = [statistics.median(x) for x in zip(*r[t])]
        iops = [x[0] for x in r[t]]
        spread = (max(iops) - min(iops)) / m[0] if m[0] else float("nan")
        ratio = m[0] / base[0] if base[0] else float("nan")
        lat = m[1] / base[1] if base[1] else float("nan")
        print(f"{rw+' '+bs+' qd'+qd:<20}{t:<14}{m[0]:>10.0f}{ratio:>8.2f}{m[1]:>10.1f}{lat:>9.2f}{m[2]:>9.1f}{spread:>8.2f}")
PY
