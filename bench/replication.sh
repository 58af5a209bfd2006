#!/usr/bin/env bash
# Benchmark: replicated volumes (`cstor target serve --replica ...`) with 1, 2 and 3
# replicas against tgt on a plain file, driven by fio's libiscsi engine in the same run.
# Three pools (one sparse file each) with one `cstor replica serve` process per pool;
# one target process per replication factor (volumes r1, r2, r3 on the same replica
# servers). Prints median IOPS, mean latency, the ratio to tgt, and CPU seconds per
# 1,000 writes of the target and replica processes (4 KiB random write QD16), to project
# to clusters where each replica has its own node. Never runs in CI.
#
# Then two rebuilds of the RF=3 volume: incremental (replica c SIGKILLed, REBUILD_MB MiB
# written while it is away, then restarted: bytes the catch-up sent vs bytes written)
# and full (a fourth pool added as a New replica: MB/s vs the disk's sequential write
# rate measured by dd with fdatasync beside the pools).
#
# Aims (issue 11, on this 2-core machine where target, replicas and fio share the
# cores): RF=3 at QD16 >= 0.5x tgt's IOPS; QD1 write latency with RF=3 <= 2x RF=1;
# incremental rebuild sends <= 1.2x the bytes written while away; a full rebuild
# >= 0.5x the disk's sequential write rate.
#
# Needs root (tgtd), tgt, libiscsi-bin, python3 and a libiscsi-enabled fio: FIO (default
# /work/fio-build/fio if present, else the one bench/iscsi.sh builds into
# $CSTOR_BENCH_CACHE). Env: RUNTIME (seconds per job, default 8), SIZE (working set,
# default 128m), REPEAT (runs per job, default 1), JOBS (rw:bs:qd list), REBUILD_MB
# (default 64; 0 skips the rebuilds), CSTOR_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RUNTIME=${RUNTIME:-8}
SIZE=${SIZE:-128m}
REPEAT=${REPEAT:-1}
CACHE=${CSTOR_BENCH_CACHE:-$HOME/.cache/cstor-bench}
if [ -z "${FIO:-}" ]; then
  if [ -x /work/fio-build/fio ]; then FIO=/work/fio-build/fio; else FIO=$CACHE/fio-3.33/fio; fi
fi
[ -x "$FIO" ] || { echo "no libiscsi fio at $FIO: run bench/iscsi.sh once (it builds one) or set FIO" >&2; exit 1; }
CSTOR_BIN=${CSTOR_BIN:-}
if [ -z "$CSTOR_BIN" ]; then
  cargo build --release -q -p cstor
  CSTOR_BIN=./target/release/cstor
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
W=$(mktemp -d)
export CSTOR_HOME=$W/home
TP=$(free_port); TC=$((RANDOM % 1000 + 100))
IQN=iqn.2024-01.io.cstor.bench
cleanup() {
  for p in ${PIDS:-}; do kill "$p" 2>/dev/null || true; done
  tgt_stop
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

truncate -s 1G "$W/tgt.img"
tgt_start "$TC" "$TP" "$IQN:tgt" "$W/tgt.img"

echo "tgt $(url "$TP" "$IQN:tgt" 1)" > "$W/targets"

# Replica servers: the first stdout line is "... listening on ADDR".
REPS=()
declare -A RPID
for p in a b c; do
  truncate -s 4G "$W/$p.img"
  "$CSTOR_BIN" pool create "p$p" stripe "$W/$p.img" >/dev/null
  "$CSTOR_BIN" replica serve --pool "p$p" --listen 127.0.0.1:0 >"$W/rep-$p.out" 2>"$W/rep-$p.log" &
  PIDS="${PIDS:-} $!"
  REP_PIDS="${REP_PIDS:-} $!"
  RPID[$p]=$!
  for _ in $(seq 100); do grep -q "listening on" "$W/rep-$p.out" 2>/dev/null && break; sleep 0.1; done
  REPS+=("$(sed -n 's/.*listening on //p' "$W/rep-$p.out" | head -1)")
done
declare -A TPIDS
for rf in 1 2 3; do
  port=$(free_port)
  args=()
  for i in $(seq 0 $((rf - 1))); do args+=(--replica "${REPS[$i]}"); done
  "$CSTOR_BIN" target serve --listen "127.0.0.1:$port" --iqn "$IQN:rf$rf" --volume "r$rf" --size 1G \
    "${args[@]}" --state-dir "$W/state-$rf" --control "$W/t$rf.sock" >"$W/t$rf.out" 2>"$W/t$rf.log" &
  PIDS="${PIDS:-} $!"
  TPIDS[rf$rf]=$!
  wait_portal "$port"
  echo "rf$rf $(url "$port" "$IQN:rf$rf" 0)" >> "$W/targets"
done

# CPU seconds (user + system) of the listed pids.
cpu() { local s=0; for p in "$@"; do s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$s"; }
job() { # name url rw bs qd
  "$FIO" --name="$1" --ioengine=libiscsi --filename="$2" --rw="$3" --bs="$4" --iodepth="$5" \
    --size="$SIZE" --time_based --runtime="$RUNTIME" --output-format=json 2>"$W/$1.err" || {
    echo "fio $1 failed: $(tail -3 "$W/$1.err")" >&2
  }
}
while read -r _ u; do
  "$FIO" --name=fill --ioengine=libiscsi --filename="$u" --rw=write --bs=1m --iodepth=8 --size="$SIZE" >/dev/null 2>&1
done < "$W/targets"

JOBS=${JOBS:-"randwrite:4k:1 randwrite:4k:16 randread:4k:16 write:128k:8"}
mapfile -t TARGETS < "$W/targets"
: > "$W/results"
: > "$W/cpu"
TICK=$(getconf CLK_TCK)
for j in $JOBS; do
  IFS=: read -r rw bs qd <<<"$j"
  for r in $(seq "$REPEAT"); do
    n=${#TARGETS[@]}
    for k in $(seq 0 $((n - 1))); do
      IFS=' ' read -r t u <<<"${TARGETS[$(((k + r) % n))]}"
      sync
      before=0
      if [ "$t" != tgt ] && [ "$j" = randwrite:4k:16 ]; then
        # shellcheck disable=SC2086
        before=$(cpu "${TPIDS[$t]}" $REP_PIDS)
      fi
      out="$W/$t-$rw-$bs-$qd-$r.json"
      job "$t-$rw-$bs-qd$qd" "$u" "$rw" "$bs" "$qd" > "$out"
      if [ "$t" != tgt ] && [ "$j" = randwrite:4k:16 ]; then
        # shellcheck disable=SC2086
        echo "$t $(( $(cpu "${TPIDS[$t]}" $REP_PIDS) - before )) $TICK $out" >> "$W/cpu"
      fi
      echo "$rw $bs $qd $t $out" >> "$W/results"
    done
  done
done
echo "replicated volumes vs tgt (file), working set $SIZE, $REPEAT x ${RUNTIME}s per job, load: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$W/results" "$W/cpu" <<'PY'
import json, statistics, sys
def load(path):
    text = open(path).read()
    start = text.find("{")
    return json.loads(text[start:])["jobs"][0] if start >= 0 else None
rows, order = {}, []
for line in open(sys.argv[1]):
    rw, bs, qd, t, path = line.split()
    d = load(path)
    if d is None:
        print(f"no result for {t} {rw} {bs} qd{qd}", file=sys.stderr)
        continue
    side = d["read"] if "read" in rw else d["write"]
    if t not in order:
        order.append(t)
    rows.setdefault((rw, bs, qd), {}).setdefault(t, []).append(
        (side["iops"], side["clat_ns"]["mean"] / 1000.0, side["bw"] / 1024.0))
print("ratio = IOPS / tgt IOPS (medians); lat = mean completion latency; lat/rf1 = latency over RF=1's")
print(f"{'job':<20}{'target':<8}{'IOPS':>10}{'ratio':>8}{'lat us':>10}{'lat/rf1':>9}{'MiB/s':>9}")
for (rw, bs, qd), r in rows.items():
    med = {t: [statistics.median(x) for x in zip(*v)] for t, v in r.items()}
    base = med.get("tgt")
    for t in order:
        if t not in med:
            continue
        m = med[t]
        ratio = m[0] / base[0] if base and base[0] else float("nan")
        l1 = m[1] / med["rf1"][1] if "rf1" in med and med["rf1"][1] else float("nan")
        print(f"{rw+' '+bs+' qd'+qd:<20}{t:<8}{m[0]:>10.0f}{ratio:>8.2f}{m[1]:>10.1f}{l1:>9.2f}{m[2]:>9.1f}")
print("CPU seconds per 1,000 writes (4k randwrite qd16; target + all three replica processes)")
for line in open(sys.argv[2]):
    t, ticks, hz, path = line.split()
    d = load(path)
    if d is None:
        continue
    writes = d["write"]["total_ios"]
    print(f"  {t}: {int(ticks) / int(hz) / max(writes, 1) * 1000:.3f} s ({writes} writes)")
PY

REBUILD_MB=${REBUILD_MB:-64}
[ "$REBUILD_MB" -gt 0 ] || exit 0
# watch_rebuild ADDR: polls the RF=3 target until every member is Healthy again; prints
# the seconds it took and the most catch-up bytes the member at ADDR was shown sending.
watch_rebuild() {
  python3 - "$CSTOR_BIN" "$W/t3.sock" "$1" <<'PY'
import json, subprocess, sys, time
cstor, sock, addr = sys.argv[1:4]
t0, sent, seen_away = time.time(), 0, False
while time.time() - t0 < 600:
    out = subprocess.run([cstor, "target", "status", "--control", sock, "-o", "json"],
                         capture_output=True, text=True)
    if out.returncode == 0:
        st = json.loads(out.stdout)
        reps = st["replicas"]
        for r in reps:
            if r["address"] == addr:
                sent = max(sent, r["rebuild_bytes_done"])
        mine = [r for r in reps if r["address"] == addr]
        if mine and mine[0]["mode"] != "Healthy":
            seen_away = True
        if seen_away and st["phase"] == "Healthy" and all(r["mode"] == "Healthy" for r in reps):
            print(f"{time.time() - t0:.2f} {sent}")
            sys.exit(0)
    time.sleep(0.2)
print("timeout", file=sys.stderr)
sys.exit(1)
PY
}
U3=$(sed -n 's/^rf3 //p' "$W/targets")
echo
echo "rebuilds of the RF=3 volume, load: $(cut -d' ' -f1-3 /proc/loadavg)"
# Incremental: replica c away while REBUILD_MB MiB are written, then back.
kill -9 "${RPID[c]}"
"$FIO" --name=away --ioengine=libiscsi --filename="$U3" --rw=write --bs=1m --iodepth=8 \
  --offset=0 --size="${REBUILD_MB}m" >/dev/null 2>"$W/away.err" || { echo "fio away failed: $(tail -3 "$W/away.err")" >&2; }
"$CSTOR_BIN" replica serve --pool pc --listen "${REPS[2]}" >"$W/rep-c2.out" 2>"$W/rep-c2.log" &
PIDS="${PIDS:-} $!"
read -r secs sent < <(watch_rebuild "${REPS[2]}")
written=$((REBUILD_MB * 1048576))
python3 -c "import sys; s,b,w=float(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]); print(f'incremental: {w/1048576:.0f} MiB written while away, {b/1048576:.1f} MiB sent by the catch-up ({b/w:.2f}x; aim <= 1.2x), back Healthy in {s:.1f} s')" "$secs" "$sent" "$written"
# Full: a New replica on a fourth pool.
truncate -s 4G "$W/d.img"
"$CSTOR_BIN" pool create pd stripe "$W/d.img" >/dev/null
"$CSTOR_BIN" replica serve --pool pd --listen 127.0.0.1:0 >"$W/rep-d.out" 2>"$W/rep-d.log" &
PIDS="${PIDS:-} $!"
for _ in $(seq 100); do grep -q "listening on" "$W/rep-d.out" 2>/dev/null && break; sleep 0.1; done
RD=$(sed -n 's/.*listening on //p' "$W/rep-d.out" | head -1)
"$CSTOR_BIN" target add-replica --control "$W/t3.sock" "$RD" >/dev/null
read -r secs sent < <(watch_rebuild "$RD")
disk=$(dd if=/dev/zero of="$W/dd.img" bs=1M count=256 conv=fdatasync 2>&1 | python3 -c "
import re, sys
t = sys.stdin.read()
m = re.search(r'copied, ([0-9.]+) s', t)
print(f'{256 * 1048576 / float(m.group(1)) / 1e6:.1f}' if m else 'nan')")
rm -f "$W/dd.img"
python3 -c "import sys; s,b,d=float(sys.argv[1]),int(sys.argv[2]),float(sys.argv[3]); r=b/s/1e6; print(f'full: {b/1048576:.1f} MiB copied in {s:.1f} s = {r:.1f} MB/s; disk sequential write {d:.1f} MB/s ({r/d:.2f}x; aim >= 0.5x)')" "$secs" "$sent" "$disk"
