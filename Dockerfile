# The one cstor image: every process of deploy/ (`cstor controller`, `cstor csi`,
# `cstor node`) is this binary with another subcommand. Build from the repository root:
#   docker build -t cstor:0.1.0 .
# The binary links only libc, libm and libgcc_s (CSI protos are compiled by protox, TLS
# is rustls/ring, FUSE is the pure-Rust fuser), so the runtime stage needs no -dev
# packages, only the tools the node side runs: mkfs.ext4/blkid (e2fsprogs, util-linux),
# mkfs.xfs/xfs_growfs (xfsprogs), losetup/mount (util-linux, mount), fusermount3 (fuse3).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# Release build of the binary only; the workspace's tests are not needed in the image.
RUN cargo build --release --locked -p cstor --bin cstor \
 && install -D -m 0755 target/release/cstor /out/cstor

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates e2fsprogs xfsprogs util-linux mount fuse3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/cstor /usr/local/bin/cstor
ENTRYPOINT ["cstor"]
