# Shared by the bench/ scripts: tgt, the peer every iSCSI benchmark is measured against,
# and the fio libiscsi URL helpers. Sourced, not run. Callers set W (their temp dir).

# tgt_start TC PORT IQN BACKING: a tgtd on 127.0.0.1:PORT with control port TC and one LU
# (lun 1) over the file BACKING. Sets TPID for tgt_stop.
tgt_start() {
  /usr/sbin/tgtd -f -C "$1" --iscsi "portal=127.0.0.1:$2" >"$W/tgt.log" 2>&1 &
  TPID=$!
  TGT_CONTROL=$1
  for _ in $(seq 100); do tgtadm -C "$1" --op show --mode system >/dev/null 2>&1 && break; sleep 0.1; done
  tgtadm -C "$1" --lld iscsi --mode target --op new --tid 1 --targetname "$3"
  tgtadm -C "$1" --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$4" --bstype rdwr
  tgtadm -C "$1" --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL
}

# tgt_stop: undo tgt_start (safe to call when it never ran).
tgt_stop() {
  [ -n "${TPID:-}" ] || return 0
  tgtadm -C "$TGT_CONTROL" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
  tgtadm -C "$TGT_CONTROL" --op delete --mode system >/dev/null 2>&1 || true
  kill "$TPID" 2>/dev/null || true
}

# url PORT IQN LUN: fio's libiscsi filename (colons escaped).
url() { echo "iscsi\\://127.0.0.1\\:$1/$(echo "$2" | sed 's/:/\\:/g')/$3"; }

# wait_portal PORT: until a discovery on 127.0.0.1:PORT answers (at most 20 s).
wait_portal() { for _ in $(seq 200); do iscsi-ls "iscsi://127.0.0.1:$1" >/dev/null 2>&1 && return; sleep 0.1; done; }
