#!/usr/bin/env bash
# The main demo on a fresh Debian 12 machine: builds cstor, makes a raidz pool on three
# sparse files, creates a thin volume, serves it over iSCSI and drives it with real iSCSI
# clients (libiscsi tools, qemu-io, ext4 through qemu-nbd + nbdfuse + loop when root and
# FUSE are there), while `cstor pool`/`cstor volume` talk to the serving process: status,
# snapshot, clone, snapshot read, background scrub. Then the pool imports from renamed
# devices. Last, a volume replicated on three pools (`cstor replica serve` x 3 behind one
# `cstor target serve --replica ...`) keeps serving while a replica is killed, catches it
# up when it returns, and ends byte-identical on every pool. Then the whole system through
# `cstor up` and the seed's kubectl workflow (scripts/demo-up.sh). Everything lives in temp
# dirs and is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust_tools
ensure_test_packages

cargo build --release --locked -p cstor
CSTOR=$PWD/target/release/cstor
W=$(mktemp -d /tmp/cstor-demo.XXXXXX)
export CSTOR_HOME=$W/home
TARGET_PID= NBD_PID= FUSE_PID= LOOP= RTARGET_PID=
declare -A REPLICA_PID=()
cleanup() {
  # Undo the ext4 chain first (if a step failed midway), then stop the target.
  mountpoint -q "$W/mnt" 2>/dev/null && umount "$W/mnt"
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
  [ -n "$FUSE_PID" ] && { fusermount3 -u "$W/fuse" 2>/dev/null; kill "$FUSE_PID" 2>/dev/null; }
  [ -n "$NBD_PID" ] && kill "$NBD_PID" 2>/dev/null
  [ -n "$TARGET_PID" ] && kill "$TARGET_PID" 2>/dev/null && wait "$TARGET_PID" 2>/dev/null
  [ -n "$RTARGET_PID" ] && kill "$RTARGET_PID" 2>/dev/null && wait "$RTARGET_PID" 2>/dev/null
  for p in "${REPLICA_PID[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$W"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "A raidz pool on three sparse 1 GiB files"
for i in 1 2 3; do truncate -s 1G "$W/disk$i.img"; done
run "$CSTOR" pool create demo raidz "$W/disk1.img" "$W/disk2.img" "$W/disk3.img"
run "$CSTOR" volume create demo/vol1 --size 512M
run "$CSTOR" pool status demo

step "Serve demo/vol1 over iSCSI"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
IQN=iqn.2026-11.io.cstor:demo-vol1
"$CSTOR" target serve --listen 127.0.0.1:$PORT --iqn $IQN --volume demo/vol1 &
TARGET_PID=$!
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
  sleep 0.1
done
URL=iscsi://127.0.0.1:$PORT/$IQN/0
run iscsi-ls -s iscsi://127.0.0.1:$PORT
run iscsi-inq "$URL"
run iscsi-readcapacity16 "$URL"

step "Write and read back through the initiator"
run qemu-io -f raw -c "write -P 0xab 0 4M" -c "write -P 0xcd 100M 1M" -c "read -P 0xab 0 4M" -c "read -P 0xcd 100M 1M" "$URL"

step "Pool commands reach the serving process"
run "$CSTOR" volume snapshot demo/vol1@before
run qemu-io -f raw -c "write -P 0x11 0 4M" "$URL"
run "$CSTOR" volume clone demo/vol1@before demo/restored
run "$CSTOR" volume read demo/restored --output "$W/restored.head" --length 4M
python3 - "$W/restored.head" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
assert data == b"\xab" * len(data), "clone does not hold the snapshot's data"
print("clone demo/restored holds the data of demo/vol1@before (0xab), the volume moved on (0x11)")
PY
run "$CSTOR" volume read demo/vol1@before --output "$W/snap.head" --length 4M
cmp "$W/snap.head" "$W/restored.head" && echo "the snapshot reads directly too"
run "$CSTOR" volume list demo
# Without --wait the serving process scrubs in the background; status shows progress.
run "$CSTOR" pool scrub demo
for _ in $(seq 600); do
  "$CSTOR" pool status demo -o json | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["scan"]["state"] == "scanning")' && break
  sleep 0.1
done
run "$CSTOR" pool status demo

# A real filesystem on the volume, without a kernel initiator: iSCSI -> qemu-nbd ->
# nbdfuse -> loop -> ext4 (needs root and FUSE; skipped otherwise).
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ] && command -v nbdfuse >/dev/null && command -v qemu-nbd >/dev/null; then
  step "ext4 on demo/vol1 through the iSCSI target"
  mkdir -p "$W/fuse" "$W/mnt"
  qemu-nbd -f raw -x lun -k "$W/nbd.sock" -t -e 2 --cache=none "$URL" &
  NBD_PID=$!
  for _ in $(seq 100); do [ -S "$W/nbd.sock" ] && break; sleep 0.1; done
  nbdfuse -C 1 "$W/fuse/disk" "nbd+unix:///lun?socket=$W/nbd.sock" &
  FUSE_PID=$!
  for _ in $(seq 100); do [ -s "$W/fuse/disk" ] && break; sleep 0.1; done
  LOOP=$(losetup -f --show --direct-io=on "$W/fuse/disk")
  run mkfs.ext4 -q -F "$LOOP"
  run mount "$LOOP" "$W/mnt"
  run cp -r crates/pool/src "$W/mnt/pool-src"
  run df -h "$W/mnt"
  umount "$W/mnt"; losetup -d "$LOOP"; LOOP=
  fusermount3 -u "$W/fuse"; wait "$FUSE_PID" 2>/dev/null || true; FUSE_PID=
  kill "$NBD_PID"; wait "$NBD_PID" 2>/dev/null || true; NBD_PID=
  EXT4=1
fi

step "Stop the target; the pool is closed cleanly and imports from its devices alone"
kill "$TARGET_PID"; wait "$TARGET_PID" 2>/dev/null || true; TARGET_PID=
rm -rf "$CSTOR_HOME"
for i in 1 2 3; do mv "$W/disk$i.img" "$W/renamed$((4-i)).img"; done
run "$CSTOR" pool import demo "$W/renamed1.img" "$W/renamed2.img" "$W/renamed3.img"
if [ -n "${EXT4:-}" ]; then
  run "$CSTOR" volume read demo/vol1 --output "$W/vol1.img"
  run e2fsck -fn "$W/vol1.img"
  echo "the filesystem written through iSCSI is intact after import with renamed devices"
else
  run "$CSTOR" volume read demo/vol1 --output "$W/vol1.head" --length 4M
  cmp <(head -c 4M "$W/vol1.head") <(head -c 4194304 /dev/zero | tr '\0' '\021') && echo "data intact after export-free import with renamed devices"
fi
step "A volume replicated on three pools"
export CSTOR_HOME=$W/home-repl
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A RPORT=()
for r in r1 r2 r3; do
  truncate -s 512M "$W/$r.img"
  run "$CSTOR" pool create "$r" stripe "$W/$r.img"
  RPORT[$r]=$(free_port)
done
start_replica() {
  "$CSTOR" replica serve --pool "$1" --listen "127.0.0.1:${RPORT[$1]}" >"$W/$1.log" 2>&1 &
  REPLICA_PID[$1]=$!
  for _ in $(seq 100); do grep -q "listening on" "$W/$1.log" 2>/dev/null && break; sleep 0.1; done
  cat "$W/$1.log"
}
for r in r1 r2 r3; do start_replica "$r"; done
RPORT_T=$(free_port)
RIQN=iqn.2026-11.io.cstor:demo-replicated
printf '$ %s\n' "cstor target serve --listen 127.0.0.1:$RPORT_T --iqn $RIQN --volume pvc-demo --size 256M --replica ... x3 --state-dir ... --control ..."
"$CSTOR" target serve --listen "127.0.0.1:$RPORT_T" --iqn "$RIQN" --volume pvc-demo --size 256M \
  --replica "127.0.0.1:${RPORT[r1]}" --replica "127.0.0.1:${RPORT[r2]}" --replica "127.0.0.1:${RPORT[r3]}" \
  --state-dir "$W/target-state" --control "$W/target.sock" >"$W/target.log" 2>&1 &
RTARGET_PID=$!
wait_phase() {
  for _ in $(seq 600); do
    "$CSTOR" target status --control "$W/target.sock" -o json 2>/dev/null | grep -q "\"phase\": *\"$1\"" && return 0
    sleep 0.1
  done
  echo "the volume did not reach phase $1"; cat "$W/target.log"; return 1
}
wait_phase Healthy
run "$CSTOR" target status --control "$W/target.sock"
RURL=iscsi://127.0.0.1:$RPORT_T/$RIQN/0
run qemu-io -f raw -c "write -P 0x11 0 8M" -c "read -P 0x11 0 8M" "$RURL"

step "Kill replica r3: writes go on with two copies"
kill -9 "${REPLICA_PID[r3]}"; wait "${REPLICA_PID[r3]}" 2>/dev/null || true; unset 'REPLICA_PID[r3]'
run qemu-io -f raw -c "write -P 0x22 8M 8M" -c "read -P 0x11 0 8M" -c "read -P 0x22 8M 8M" "$RURL"
wait_phase Degraded
run "$CSTOR" target status --control "$W/target.sock"

step "r3 returns, catches up what it missed, and is readmitted"
start_replica r3
wait_phase Healthy
run "$CSTOR" target status --control "$W/target.sock"

step "Stop everything; each pool holds the same bytes"
kill "$RTARGET_PID"; wait "$RTARGET_PID" 2>/dev/null || true; RTARGET_PID=
for r in r1 r2 r3; do kill "${REPLICA_PID[$r]}"; wait "${REPLICA_PID[$r]}" 2>/dev/null || true; unset "REPLICA_PID[$r]"; done
for r in r1 r2 r3; do run "$CSTOR" volume read "$r/pvc-demo" --output "$W/$r-pvc-demo.img"; done
cmp "$W/r1-pvc-demo.img" "$W/r2-pvc-demo.img" && cmp "$W/r1-pvc-demo.img" "$W/r3-pvc-demo.img" \
  && echo "the three replicas are byte-identical"
cmp <(head -c 8M "$W/r3-pvc-demo.img") <(head -c 8388608 /dev/zero | tr '\0' '\021') \
  && cmp <(tail -c +8388609 "$W/r3-pvc-demo.img" | head -c 8M) <(head -c 8388608 /dev/zero | tr '\0' '\042') \
  && echo "r3 holds the writes made before and while it was away"

step "The whole system: cstor up and the seed's workflow with kubectl"
CSTOR=$CSTOR scripts/demo-up.sh

step "Done"
