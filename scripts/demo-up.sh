#!/usr/bin/env bash
# The seed's workflow (docs/seeds/how-to-build-cstor-pools.md) on one machine through
# `cstor up`: three nodes on their own loopback addresses, the seed's stripe
# CStorPoolCluster (block device names and hostnames replaced by this machine's), its
# 3-replica StorageClass and PostgreSQL claim, data written through the volume's iSCSI
# portal, a replica's node lost and brought back, every byte read back. Run by
# scripts/demo.sh after a build; CSTOR names the binary. Everything is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_kubectl
CSTOR=${CSTOR:-$PWD/target/release/cstor}
SEED=docs/seeds/how-to-build-cstor-pools.md
W=$(mktemp -d /tmp/cstor-up-demo.XXXXXX)
UP_PID=
cleanup() {
  [ -n "$UP_PID" ] && kill "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
# The seed's ```yaml block holding $1.
seed_yaml() { awk -v n="$1" '/^```yaml/{b="";on=1;next} /^```/{if(on&&index(b,n))print b;on=0;next} on{b=b $0 "\n"}' "$SEED"; }
# qemu-io exits 0 even when a command fails; its failures say so.
qio() { printf '$ qemu-io %s\n' "$*"; local out; out=$(qemu-io -f raw "$@" 2>&1); echo "$out"; ! grep -qE "failed|Pattern verification" <<<"$out"; }
wait_until() { # what seconds command...: until the command succeeds
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 2))); do "$@" >/dev/null 2>&1 && return; sleep 0.5; done
  echo "timed out: $what"; tail -20 "$W/up.log"; return 1
}

step "cstor up: API server, controller and three node agents on 127.0.9.x"
"$CSTOR" up --dir "$W/up" --nodes 3 --disks-per-node 1 --disk-size 1G \
  --base-address 127.0.9.1 --api-port 16443 >"$W/up.log" 2>&1 &
UP_PID=$!
wait_until "kubeconfig" 60 test -e "$W/up/kubeconfig"
export KUBECONFIG=$W/up/kubeconfig
wait_until "pods" 60 sh -c 'kubectl -n openebs get pods --no-headers | grep -c . | grep -qx 5'
run kubectl -n openebs wait --for=condition=Ready pods --all --timeout=60s
run kubectl get nodes
wait_until "block devices" 60 sh -c 'kubectl get bd -n openebs --no-headers | grep -c . | grep -qx 3'
run kubectl get bd -n openebs

step "The seed's stripe CStorPoolCluster, with this machine's block devices"
seed_yaml "name: cstor-pool-stripe" > "$W/cspc.yaml"
i=0
for old in $(grep -o 'blockDeviceName: "[^"]*"' "$W/cspc.yaml" | cut -d'"' -f2); do
  i=$((i + 1))
  bd=$(kubectl get bd -n openebs -l "kubernetes.io/hostname=node-$i" -o jsonpath='{.items[0].metadata.name}')
  sed -i "s/$old/$bd/; s/worker-0$i/node-$i/" "$W/cspc.yaml"
done
run kubectl apply -f "$W/cspc.yaml"
wait_until "CSPIs ONLINE" 90 sh -c 'kubectl get cspi -n openebs --no-headers | grep -c ONLINE | grep -qx 3'
run kubectl get cspc -n openebs
run kubectl get cspi -n openebs

step "The seed's StorageClass and PostgreSQL claim (3 replicas)"
seed_yaml "name: cstor-csi-3-replicas" > "$W/sc.yaml"
seed_yaml "name: postgres-data" | awk '/^---$/{exit} {print}' > "$W/pvc.yaml"
run kubectl apply -f "$W/sc.yaml"
run kubectl create namespace database
run kubectl apply -f "$W/pvc.yaml"
wait_until "claim Bound" 90 sh -c '[ "$(kubectl get pvc -n database postgres-data -o jsonpath={.status.phase})" = Bound ]'
wait_until "volume Healthy" 90 sh -c '[ "$(kubectl get cv,cvr -n openebs --no-headers | grep -c Healthy)" = 4 ]'
run kubectl get pvc -n database
run kubectl get cvc,cv,cvr -n openebs

IQN=$(kubectl get cv -n openebs -o jsonpath='{.items[0].spec.iqn}')
PORTAL=$(kubectl get cv -n openebs -o jsonpath='{.items[0].spec.targetPortal}')
TNODE=$(kubectl get cv -n openebs -o jsonpath='{.items[0].metadata.labels.cstor\.openebs\.io/target-node}')
URL=iscsi://$PORTAL/$IQN/0
step "Write 64 MiB through the volume's portal ($PORTAL, target on $TNODE)"
qio -c "write -P 0xab 0 64M" "$URL"

DOWN=$(for n in node-1 node-2 node-3; do [ "$n" != "$TNODE" ] && echo "$n"; done | head -1)
step "Lose $DOWN (a replica's node): the volume turns Degraded and keeps taking writes"
run "$CSTOR" up node stop "$DOWN" --dir "$W/up"
qio -c "write -P 0xcd 64M 16M" "$URL"
wait_until "volume Degraded" 30 sh -c 'kubectl get cv -n openebs --no-headers | grep -q Degraded'
run kubectl get cv,cvr -n openebs

step "$DOWN returns: its replica catches up and the volume is Healthy again"
run "$CSTOR" up node start "$DOWN" --dir "$W/up"
wait_until "volume Healthy" 90 sh -c '[ "$(kubectl get cv,cvr -n openebs --no-headers | grep -c Healthy)" = 4 ]'
run kubectl get cv,cvr -n openebs
qio -c "read -P 0xab 0 64M" -c "read -P 0xcd 64M 16M" "$URL"

step "Stop cstor up (Ctrl-C does the same)"
kill -INT "$UP_PID"; wait "$UP_PID" 2>/dev/null || true; UP_PID=
echo "stopped"
