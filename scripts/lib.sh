# Shared helpers for the set-up scripts (sourced, not run).

# apt-get install the packages whose command is missing. Args: "command:package" pairs.
ensure_commands() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if ((${#missing[@]})); then
    echo "installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q "${missing[@]}" >/dev/null
  fi
}

ensure_rust_tools() {
  if ! command -v cargo >/dev/null 2>&1; then
    ensure_commands curl:curl
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    . "$HOME/.cargo/env"
  fi
}

# Real clients the tests drive: libiscsi's conformance suite and tools, qemu with its
# iscsi:// driver (qemu-block-extra), ext4 tools, loop devices, nbdfuse and FUSE (the
# iSCSI -> qemu-nbd -> nbdfuse -> loop -> ext4 chain of ../shared/reference/harness.md §3).
ensure_test_packages() {
  ensure_commands iscsi-test-cu:libiscsi-bin iscsi-inq:libiscsi-bin mkfs.ext4:e2fsprogs \
    losetup:mount nbdfuse:libnbd-bin fusermount3:fuse3 blkid:util-linux e2fsck:e2fsprogs
  # promtool (Debian's prometheus package) checks every /metrics endpoint and tests the
  # seed's alert rules (crates/cstor/tests/metrics_cli.rs fails under CI without it).
  if ! command -v promtool >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends prometheus >/dev/null
  fi
  # PostgreSQL 15 (initdb, pgbench, pg_amcheck) runs on a volume attached through the
  # CSI driver (crates/cstor/tests/csi_attach.rs); xfsprogs for the xfs node tests.
  if [ ! -x /usr/lib/postgresql/15/bin/pgbench ] || ! command -v mkfs.xfs >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends postgresql-15 postgresql-client-15 xfsprogs >/dev/null
  fi
  # qemu-block-extra (bookworm 7.2) replaces a backported qemu-utils; install both from
  # bookworm so qemu-img has the iscsi driver (../shared/reference/harness.md §0).
  if [ ! -e /usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q qemu-block-extra >/dev/null
    apt-get install -y -q qemu-utils >/dev/null
  fi
}

# A client that is not ours, for the API server tests: the official Kubernetes Python
# client from PyPI (crates/cstor/tests/apiserver_python.rs fails under CI without it).
ensure_python_clients() {
  ensure_commands python3:python3 pip3:python3-pip curl:curl
  if ! python3 -c 'import kubernetes' >/dev/null 2>&1; then
    echo "installing: python kubernetes client" >&2
    python3 -m pip install -q kubernetes 2>/dev/null ||
      python3 -m pip install -q --break-system-packages kubernetes
  fi
}

# kubectl is not in Debian 12: fetch the pinned release from dl.k8s.io when it is missing,
# checked against its published sha256.
ensure_kubectl() {
  command -v kubectl >/dev/null 2>&1 && return 0
  ensure_commands curl:curl
  local v=v1.32.0 d
  d=$(mktemp -d)
  echo "installing: kubectl $v" >&2
  curl -fsSLo "$d/kubectl" "https://dl.k8s.io/release/$v/bin/linux/amd64/kubectl"
  curl -fsSLo "$d/kubectl.sha256" "https://dl.k8s.io/release/$v/bin/linux/amd64/kubectl.sha256"
  echo "$(cat "$d/kubectl.sha256")  $d/kubectl" | sha256sum --check --quiet
  install -m 0755 "$d/kubectl" /usr/local/bin/kubectl
  rm -rf "$d"
}
