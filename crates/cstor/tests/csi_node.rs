//! The CSI Node service of `cstor csi --mode node`, judged by a CSI client (tonic over its
//! unix socket) as kubelet calls it, against a real `cstor target serve` of pool volumes
//! on 127.0.0.1 and `cstor apiserver` (for a stage without publish_context, which reads
//! the CStorVolume).
//!
//! One scenario, in order: argument checks and the codes of calls on unknown volumes;
//! concurrent stages (one ABORTED); stage (mkfs ext4), publish rw and ro, files written
//! through the target path, stats; the plugin SIGKILLed while staged and published (the
//! attach survives, files readable and writable through a new plugin); online expansion
//! (`cstor volume resize` of the served volume, NodeExpandVolume, statvfs grows);
//! unpublish, unstage, stage again (files intact), e2fsck -fn clean through a block
//! publish; block access from the CStorVolume, with a read-only block publish (its own
//! read-only loop device: reads see the data, writes fail); the plugin and the attach
//! processes SIGKILLed: the next plugin sweeps the loop devices and mounts, reports the
//! volume abnormal, and a new NodeStage attaches again. Every call is made twice
//! (idempotent). Further scenarios: xfs (made, grown online, kept across stages),
//! fencing of a lost node, REMOUNT after a path outage, a forced iscsiadm attach where
//! open-iscsi cannot work.
//! Needs root, /dev/fuse, losetup, mkfs.ext4, e2fsck, resize2fs, mkfs.xfs, xfs_growfs,
//! kubectl.

mod apiserver_support;
mod initiator_support;
mod target_common;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver_support::{free_port, have_kubectl, required, ApiServer};
use cstor_csi::pb::node_client::NodeClient;
use cstor_csi::pb::volume_capability::access_mode::Mode;
use cstor_csi::pb::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use cstor_csi::pb::*;
use initiator_support::{free_addr, is_root, pattern, Pool};
use target_common::{have, wait_for};
use tonic::transport::Channel;
use tonic::Code;

const IQN_V: &str = "iqn.2026-12.io.cstor.test:csi-node-v";
const IQN_B: &str = "iqn.2026-12.io.cstor.test:csi-node-b";

/// A running `cstor csi --mode node`; SIGKILLed on drop.
struct Plugin {
    child: Child,
}

impl Plugin {
    fn start(w: &Work) -> Plugin {
        Plugin::start_node(w, "node-1", &w.socket, &w.state)
    }

    /// The node plugin of `node` on its own socket and state dir, logging to csi.log.
    fn start_node(w: &Work, node: &str, socket: &Path, state: &Path) -> Plugin {
        Plugin::start_with(w, node, socket, state, &[])
    }

    /// [`Plugin::start_node`] with more flags.
    fn start_with(w: &Work, node: &str, socket: &Path, state: &Path, extra: &[&str]) -> Plugin {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(w.root.join("csi.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cstor"))
            .arg("csi")
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .args(["--mode", "node", "--node-id", node, "--kubeconfig"])
            .arg(&w.kubeconfig)
            .arg("--state-dir")
            .arg(state)
            .args(extra)
            .env("RUST_LOG", "cstor_csi=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut p = Plugin { child };
        let t0 = Instant::now();
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("cstor csi exited ({status}): {}", w.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no socket: {}",
                w.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's directory; on drop every mount, loop device and attach process under it
/// is removed, even when the test failed half-way.
struct Work {
    _dir: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    socket: PathBuf,
    kubeconfig: PathBuf,
}

impl Work {
    /// A temporary directory with an API server, the first plugin's state dir and socket.
    fn new(state: &str, socket: &str) -> (ApiServer, Work) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let api = ApiServer::start(&root.join("api"), free_port());
        let w = Work {
            state: root.join(state),
            socket: root.join(socket),
            kubeconfig: api.kubeconfig(),
            root,
            _dir: dir,
        };
        (api, w)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("csi.log")).unwrap_or_default()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The attach pid the record of `volume` names.
    fn attach_pid(&self, volume: &str) -> i32 {
        let p = self.state.join("volumes").join(format!("{volume}.json"));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["pid"].as_i64().unwrap() as i32
    }

    fn mounts_under(&self) -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.root.display().to_string();
        info.lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root))
            .collect()
    }

    fn loops_under(&self) -> Vec<String> {
        let root = self.root.display().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
            if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
                if b.starts_with(&root) {
                    out.push(format!("{}: {}", e.file_name().to_string_lossy(), b.trim()));
                }
            }
        }
        out
    }

    fn attach_pids(&self) -> Vec<i32> {
        let root = self.root.display().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let zombie = std::fs::read_to_string(e.path().join("stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true);
            if cmd.contains("initiator attach") && cmd.contains(&root) && !zombie {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        for _ in 0..3 {
            // The attach processes first: a dead FUSE server fails the I/O that a live
            // one would hold for its replacement timeout (the target is gone by now).
            for pid in self.attach_pids() {
                // SAFETY: kill(2) on an attach process this test's plugin started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            // Then the loop devices: once the FUSE mount under them is lazily unmounted
            // their backing file reads `/lun`, no longer under this directory. A busy
            // one is detached when the filesystems on it go (autoclear).
            for l in self.loops_under() {
                if let Some(dev) = l.split(':').next() {
                    let _ = Command::new("losetup")
                        .arg("-d")
                        .arg(format!("/dev/{dev}"))
                        .status();
                }
            }
            let mut ms = self.mounts_under();
            ms.reverse();
            for m in ms {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn mount_cap(fs: &str) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs.to_owned(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn context(iqn: &str, portal: &str) -> HashMap<String, String> {
    [("iqn", iqn), ("portal", portal), ("lun", "0")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn stage_req(
    id: &str,
    staging: &Path,
    cap: VolumeCapability,
    ctx: HashMap<String, String>,
) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: id.to_owned(),
        publish_context: ctx,
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap),
        ..Default::default()
    }
}

fn publish_req(
    id: &str,
    staging: &Path,
    target: &Path,
    cap: VolumeCapability,
    readonly: bool,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.to_owned(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap),
        readonly,
        ..Default::default()
    }
}

fn unpublish_req(id: &str, target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: id.to_owned(),
        target_path: target.display().to_string(),
    }
}

fn unstage_req(id: &str, staging: &Path) -> NodeUnstageVolumeRequest {
    NodeUnstageVolumeRequest {
        volume_id: id.to_owned(),
        staging_target_path: staging.display().to_string(),
    }
}

/// NodeExpandVolume of `id` at `path` (staged at `staging`) to exactly `bytes`.
fn expand_req(
    id: &str,
    path: &Path,
    staging: &Path,
    bytes: i64,
    fs: &str,
) -> NodeExpandVolumeRequest {
    NodeExpandVolumeRequest {
        volume_id: id.to_owned(),
        volume_path: path.display().to_string(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(mount_cap(fs)),
        ..Default::default()
    }
}

fn stats_req(id: &str, path: &Path) -> NodeGetVolumeStatsRequest {
    NodeGetVolumeStatsRequest {
        volume_id: id.to_owned(),
        volume_path: path.display().to_string(),
        staging_target_path: String::new(),
    }
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

async fn client(w: &Work) -> NodeClient<Channel> {
    client_at(&w.socket).await
}

async fn client_at(socket: &Path) -> NodeClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    NodeClient::new(ch)
}

fn files() -> Vec<(String, Vec<u8>)> {
    (0..4u64)
        .map(|i| {
            (
                format!("f{i}.bin"),
                pattern((i as usize + 1) * 300_000, 70 + i),
            )
        })
        .collect()
}

fn sync_dir(p: &Path) {
    assert!(Command::new("sync")
        .arg("-f")
        .arg(p)
        .status()
        .unwrap()
        .success());
}

fn usage(s: &NodeGetVolumeStatsResponse, unit: volume_usage::Unit) -> VolumeUsage {
    s.usage
        .iter()
        .find(|u| u.unit == unit as i32)
        .cloned()
        .unwrap_or_else(|| panic!("no {unit:?} usage in {s:?}"))
}

fn tools_present() -> bool {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set: this test needs root"
        );
        eprintln!("SKIPPED: needs root (FUSE mount, loop devices)");
        return false;
    }
    required(have_kubectl(), "kubectl")
        && have("losetup", "mount")
        && have("mkfs.ext4", "e2fsprogs")
        && have("e2fsck", "e2fsprogs")
        && have("resize2fs", "e2fsprogs")
        && have("blkid", "util-linux")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_stage_publish_restart_expand_sweep() {
    if !tools_present() {
        return;
    }
    let t_start = Instant::now();
    let (api, w) = Work::new("state", "csi.sock");
    let crd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/crds/cstorvolumes.cstor.openebs.io.yaml"
    );
    api.ok(&["apply", "-f", crd]);

    let pool = Pool::new();
    pool.cstor(&["volume", "create", "ip/v", "--size", "64M"]);
    pool.cstor(&["volume", "create", "ip/b", "--size", "32M"]);
    let addr = free_addr();
    let _target = pool.serve(
        &addr,
        &[
            "--iqn",
            IQN_V,
            "--volume",
            "ip/v",
            "--target",
            &format!("{IQN_B},volume=ip/b"),
        ],
    );
    // Volume b is staged without publish_context: the CStorVolume names its target.
    let (host, port) = addr.rsplit_once(':').unwrap();
    let cv = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: openebs\n---\napiVersion: cstor.openebs.io/v1\nkind: CStorVolume\nmetadata:\n  name: vol-b\n  namespace: openebs\nspec:\n  iqn: {IQN_B}\n  targetIP: \"{host}\"\n  targetPort: \"{port}\"\n  capacity: 32Mi\n"
    );
    let cv_file = w.path("cv.yaml");
    std::fs::write(&cv_file, cv).unwrap();
    api.ok(&["apply", "-f", cv_file.to_str().unwrap()]);

    let plugin = Plugin::start(&w);
    let mut node = client(&w).await;
    let caps = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut types: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|node_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        [1, 2, 3, 4],
        "STAGE_UNSTAGE, GET_VOLUME_STATS, EXPAND, VOLUME_CONDITION"
    );

    let ctx = context(IQN_V, &addr);
    let staging = w.path("staging/v");
    let t1 = w.path("pods/p1/v");
    let t2 = w.path("pods/p2/v");

    // Argument checks and unknown volumes, before anything is attached.
    let mut r = stage_req("vol-v", &staging, mount_cap("ext4"), ctx.clone());
    r.volume_id.clear();
    assert_eq!(code(node.node_stage_volume(r).await), Code::InvalidArgument);
    let mut r = stage_req("vol-v", &staging, mount_cap("ext4"), ctx.clone());
    r.staging_target_path.clear();
    assert_eq!(code(node.node_stage_volume(r).await), Code::InvalidArgument);
    let mut r = stage_req("vol-v", &staging, mount_cap("ext4"), ctx.clone());
    r.volume_capability = None;
    assert_eq!(code(node.node_stage_volume(r).await), Code::InvalidArgument);
    let r = stage_req("vol-v", &staging, mount_cap("btrfs"), ctx.clone());
    assert_eq!(code(node.node_stage_volume(r).await), Code::InvalidArgument);
    let mut bad = ctx.clone();
    bad.insert("lun".into(), "x".into());
    let r = stage_req("vol-v", &staging, mount_cap("ext4"), bad);
    assert_eq!(code(node.node_stage_volume(r).await), Code::InvalidArgument);
    let r = stage_req("vol-none", &staging, mount_cap("ext4"), HashMap::new());
    assert_eq!(
        code(node.node_stage_volume(r).await),
        Code::NotFound,
        "no CStorVolume"
    );
    let mut r = publish_req("vol-v", &staging, &t1, mount_cap("ext4"), false);
    r.target_path.clear();
    assert_eq!(
        code(node.node_publish_volume(r).await),
        Code::InvalidArgument
    );
    let r = publish_req("vol-v", &staging, &t1, mount_cap("ext4"), false);
    assert_eq!(
        code(node.node_publish_volume(r).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(node.node_get_volume_stats(stats_req("vol-v", &t1)).await),
        Code::NotFound
    );
    assert_eq!(
        code(node.node_get_volume_stats(stats_req("", &t1)).await),
        Code::InvalidArgument
    );
    let er = NodeExpandVolumeRequest {
        volume_id: "vol-v".into(),
        volume_path: t1.display().to_string(),
        ..Default::default()
    };
    assert_eq!(code(node.node_expand_volume(er).await), Code::NotFound);
    node.node_unstage_volume(unstage_req("vol-v", &staging))
        .await
        .unwrap();
    node.node_unpublish_volume(unpublish_req("vol-v", &t1))
        .await
        .unwrap();
    assert!(
        !w.state.exists(),
        "nothing is created before the first stage"
    );

    // Two stages at once: one works, the other is ABORTED; then the repeat is OK.
    let (mut n1, mut n2) = (node.clone(), node.clone());
    let (a, b) = tokio::join!(
        n1.node_stage_volume(stage_req("vol-v", &staging, mount_cap("ext4"), ctx.clone())),
        n2.node_stage_volume(stage_req("vol-v", &staging, mount_cap("ext4"), ctx.clone())),
    );
    let codes = [
        a.as_ref().map(|_| Code::Ok).unwrap_or_else(|s| s.code()),
        b.as_ref().map(|_| Code::Ok).unwrap_or_else(|s| s.code()),
    ];
    assert!(
        codes.contains(&Code::Ok) && codes.contains(&Code::Aborted),
        "{a:?} {b:?}: {}",
        w.log()
    );
    node.node_stage_volume(stage_req("vol-v", &staging, mount_cap("ext4"), ctx.clone()))
        .await
        .unwrap();
    // Another filesystem or path for a staged volume: ALREADY_EXISTS.
    assert_eq!(
        code(
            node.node_stage_volume(stage_req("vol-v", &staging, block_cap(), ctx.clone()))
                .await
        ),
        Code::AlreadyExists
    );

    for _ in 0..2 {
        node.node_publish_volume(publish_req(
            "vol-v",
            &staging,
            &t1,
            mount_cap("ext4"),
            false,
        ))
        .await
        .unwrap();
    }
    assert_eq!(
        code(
            node.node_publish_volume(publish_req("vol-v", &staging, &t1, mount_cap("ext4"), true))
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            node.node_publish_volume(publish_req("vol-v", &staging, &t1, block_cap(), false))
                .await
        ),
        Code::InvalidArgument
    );
    node.node_publish_volume(publish_req("vol-v", &staging, &t2, mount_cap("ext4"), true))
        .await
        .unwrap();
    for (name, data) in files() {
        std::fs::write(t1.join(&name), &data).unwrap();
    }
    sync_dir(&t1);
    assert!(
        std::fs::read(t2.join("f0.bin")).unwrap() == files()[0].1,
        "ro publish sees the files"
    );
    let ro = std::fs::write(t2.join("x"), b"x").unwrap_err();
    assert_eq!(ro.raw_os_error(), Some(libc::EROFS), "{ro}");

    let s = node
        .node_get_volume_stats(stats_req("vol-v", &t1))
        .await
        .unwrap()
        .into_inner();
    let bytes = usage(&s, volume_usage::Unit::Bytes);
    let inodes = usage(&s, volume_usage::Unit::Inodes);
    assert!(bytes.total > 40 << 20 && bytes.total <= 64 << 20, "{s:?}");
    assert!(
        bytes.used >= 1 << 20 && bytes.available > 0 && bytes.available < bytes.total,
        "{s:?}"
    );
    assert!(
        inodes.total > 1000 && inodes.used >= 5 && inodes.available > 0,
        "{s:?}"
    );
    assert!(!s.volume_condition.as_ref().unwrap().abnormal, "{s:?}");

    // The plugin dies; the attach process does not, and a new plugin serves the volume.
    let pid_v = w.attach_pid("vol-v");
    plugin.kill9();
    let plugin = Plugin::start(&w);
    let mut node = client(&w).await;
    assert_eq!(w.attach_pid("vol-v"), pid_v);
    for (name, data) in files() {
        assert!(
            std::fs::read(t1.join(&name)).unwrap() == data,
            "{name} after restart"
        );
    }
    std::fs::write(t1.join("after-restart"), b"written through the new plugin").unwrap();
    sync_dir(&t1);
    let s = node
        .node_get_volume_stats(stats_req("vol-v", &staging))
        .await
        .unwrap()
        .into_inner();
    assert!(!s.volume_condition.as_ref().unwrap().abnormal, "{s:?}");
    node.node_stage_volume(stage_req("vol-v", &staging, mount_cap("ext4"), ctx.clone()))
        .await
        .unwrap();

    // Online expansion: the served volume grows, the node follows.
    pool.cstor(&["volume", "resize", "ip/v", "--size", "96M"]);
    let er = expand_req("vol-v", &t1, &staging, 96 << 20, "ext4");
    if !has_cap_sys_resource() {
        // This sandbox drops CAP_SYS_RESOURCE, without which the kernel refuses to grow a
        // mounted ext4: the driver says so (FAILED_PRECONDITION), the device has grown.
        let e = node.node_expand_volume(er.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("CAP_SYS_RESOURCE"), "{e:?}");
    } else {
        for _ in 0..2 {
            let got = node
                .node_expand_volume(er.clone())
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.capacity_bytes, 96 << 20);
        }
        let s = node
            .node_get_volume_stats(stats_req("vol-v", &t1))
            .await
            .unwrap()
            .into_inner();
        assert!(
            usage(&s, volume_usage::Unit::Bytes).total > 80 << 20,
            "filesystem did not grow: {s:?}"
        );
        let df = Command::new("df").arg("-B1").arg(&t1).output().unwrap();
        let df = String::from_utf8_lossy(&df.stdout);
        let df_total: i64 = df
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(df_total > 80 << 20, "df: {df}");
    }

    // Unstaging while published is refused; unpublish, unstage (twice each).
    assert_eq!(
        code(
            node.node_unstage_volume(unstage_req("vol-v", &staging))
                .await
        ),
        Code::FailedPrecondition
    );
    for _ in 0..2 {
        node.node_unpublish_volume(unpublish_req("vol-v", &t1))
            .await
            .unwrap();
        node.node_unpublish_volume(unpublish_req("vol-v", &t2))
            .await
            .unwrap();
    }
    assert!(
        !t1.exists() && !t2.exists(),
        "unpublish removes the target paths"
    );
    for _ in 0..2 {
        node.node_unstage_volume(unstage_req("vol-v", &staging))
            .await
            .unwrap();
    }
    assert!(w.mounts_under().is_empty(), "{:?}", w.mounts_under());
    assert!(
        wait_for(Duration::from_secs(10), || w.loops_under().is_empty()),
        "{:?}",
        w.loops_under()
    );
    assert!(
        wait_for(Duration::from_secs(10), || w.attach_pids().is_empty()),
        "attach process left: {:?}",
        w.attach_pids()
    );

    // Stage again: no mkfs, the files are there.
    node.node_stage_volume(stage_req("vol-v", &staging, mount_cap("ext4"), ctx.clone()))
        .await
        .unwrap();
    node.node_publish_volume(publish_req(
        "vol-v",
        &staging,
        &t1,
        mount_cap("ext4"),
        false,
    ))
    .await
    .unwrap();
    for (name, data) in files() {
        assert!(
            std::fs::read(t1.join(&name)).unwrap() == data,
            "{name} after re-stage"
        );
    }
    assert_eq!(
        std::fs::read(t1.join("after-restart")).unwrap(),
        b"written through the new plugin"
    );
    node.node_unpublish_volume(unpublish_req("vol-v", &t1))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req("vol-v", &staging))
        .await
        .unwrap();

    // Block access: e2fsck of volume v through a block publish finds it clean.
    let bstage = w.path("staging/vb");
    let bt = w.path("pods/p3/dev");
    node.node_stage_volume(stage_req("vol-v", &bstage, block_cap(), ctx.clone()))
        .await
        .unwrap();
    node.node_publish_volume(publish_req("vol-v", &bstage, &bt, block_cap(), false))
        .await
        .unwrap();
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&bt)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "e2fsck: {fsck:?}");
    node.node_unpublish_volume(unpublish_req("vol-v", &bt))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req("vol-v", &bstage))
        .await
        .unwrap();

    // Block access to volume b, its target read from the CStorVolume.
    let bs = w.path("staging/b");
    let bt = w.path("pods/p4/dev");
    for _ in 0..2 {
        node.node_stage_volume(stage_req("vol-b", &bs, block_cap(), HashMap::new()))
            .await
            .unwrap();
        node.node_publish_volume(publish_req("vol-b", &bs, &bt, block_cap(), false))
            .await
            .unwrap();
    }
    // A read-only block publish: a read-only loop device of its own over the same LUN.
    let bro = w.path("pods/p5/dev");
    let loops_rw = w.loops_under();
    assert_eq!(loops_rw.len(), 1, "{loops_rw:?}");
    for _ in 0..2 {
        node.node_publish_volume(publish_req("vol-b", &bs, &bro, block_cap(), true))
            .await
            .unwrap();
    }
    assert_eq!(
        code(
            node.node_publish_volume(publish_req("vol-b", &bs, &bro, block_cap(), false))
                .await
        ),
        Code::AlreadyExists,
        "the same target path read-write"
    );
    assert_eq!(
        code(
            node.node_publish_volume(publish_req("vol-b", &bs, &bt, block_cap(), true))
                .await
        ),
        Code::AlreadyExists,
        "the read-write target path read-only"
    );
    let ro_dev = |w: &Work| -> String {
        record(&w.state, "vol-b")["published"][bro.display().to_string()]["loop_device"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let ro_loop = ro_dev(&w);
    assert!(
        ro_loop.starts_with("/dev/loop"),
        "{}",
        record(&w.state, "vol-b")
    );
    let ro_name = ro_loop.trim_start_matches("/dev/").to_owned();
    assert_eq!(
        std::fs::read_to_string(format!("/sys/block/{ro_name}/ro"))
            .unwrap()
            .trim(),
        "1"
    );
    assert_eq!(w.loops_under().len(), 2, "{:?}", w.loops_under());
    let data = pattern(1 << 20, 9);
    {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&bt)
            .unwrap();
        let buf = aligned(&data);
        f.seek(SeekFrom::Start(4 << 20)).unwrap();
        f.write_all(buf.as_slice()).unwrap();
        f.sync_all().unwrap();
        let mut back = aligned(&vec![0u8; data.len()]);
        f.seek(SeekFrom::Start(4 << 20)).unwrap();
        f.read_exact(back.as_mut_slice()).unwrap();
        assert!(back.as_slice() == data.as_slice(), "block data differs");
    }
    // Through the read-only publish: the data reads back, every write is refused.
    assert!(
        read_direct(&bro, 4 << 20, data.len()).unwrap() == data,
        "the read-only publish reads the volume's data"
    );
    let refused = write_direct(&bro, 4 << 20, &pattern(64 << 10, 10))
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&bro)?
                .write_all(b"buffered")
        })
        .unwrap_err();
    assert!(
        matches!(
            refused.raw_os_error(),
            Some(libc::EPERM | libc::EROFS | libc::EACCES)
        ),
        "write through the read-only publish: {refused}"
    );
    eprintln!("write through the read-only block publish: {refused}");
    assert!(
        read_direct(&bt, 4 << 20, data.len()).unwrap() == data,
        "the refused write changed nothing"
    );
    let s = node
        .node_get_volume_stats(stats_req("vol-b", &bro))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        usage(&s, volume_usage::Unit::Bytes).total,
        32 << 20,
        "{s:?}"
    );
    // Unpublished, its loop device is gone; published again for the sweep below.
    for _ in 0..2 {
        node.node_unpublish_volume(unpublish_req("vol-b", &bro))
            .await
            .unwrap();
    }
    assert!(!bro.exists());
    assert_eq!(
        w.loops_under(),
        loops_rw,
        "the read-only loop device is detached"
    );
    assert!(
        !Path::new(&format!("/sys/block/{ro_name}/loop/backing_file")).exists()
            || !std::fs::read_to_string(format!("/sys/block/{ro_name}/loop/backing_file"))
                .unwrap_or_default()
                .starts_with(&w.root.display().to_string()),
        "{ro_loop} still over the volume"
    );
    node.node_publish_volume(publish_req("vol-b", &bs, &bro, block_cap(), true))
        .await
        .unwrap();
    assert!(read_direct(&bro, 4 << 20, data.len()).unwrap() == data);
    let s = node
        .node_get_volume_stats(stats_req("vol-b", &bt))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        usage(&s, volume_usage::Unit::Bytes).total,
        32 << 20,
        "{s:?}"
    );
    node.node_unpublish_volume(unpublish_req("vol-b", &bt))
        .await
        .unwrap();

    // The plugin and the attach processes die (vol-b still published read-only); the
    // next plugin sweeps what they left, the read-only loop device too.
    node.node_stage_volume(stage_req("vol-v", &staging, mount_cap("ext4"), ctx.clone()))
        .await
        .unwrap();
    node.node_publish_volume(publish_req(
        "vol-v",
        &staging,
        &t1,
        mount_cap("ext4"),
        false,
    ))
    .await
    .unwrap();
    let pid = w.attach_pid("vol-v");
    let pid_b = w.attach_pid("vol-b");
    assert_eq!(w.loops_under().len(), 3, "{:?}", w.loops_under());
    plugin.kill9();
    // SAFETY: kill(2) on the attach processes of this test's plugin.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::kill(pid_b, libc::SIGKILL);
    }
    assert!(wait_for(Duration::from_secs(10), || w
        .attach_pids()
        .is_empty()));
    assert!(
        !w.loops_under().is_empty(),
        "the loop device outlives its attach"
    );
    let _plugin = Plugin::start(&w);
    let mut node = client(&w).await;
    assert!(
        wait_for(Duration::from_secs(10), || w.loops_under().is_empty()),
        "loop device over the dead FUSE file: {:?}",
        w.loops_under()
    );
    assert!(
        w.mounts_under().is_empty(),
        "stale mounts: {:?}",
        w.mounts_under()
    );
    let s = node
        .node_get_volume_stats(stats_req("vol-v", &staging))
        .await
        .unwrap()
        .into_inner();
    let cond = s.volume_condition.unwrap();
    assert!(cond.abnormal && cond.message.contains("gone"), "{cond:?}");
    assert_eq!(
        code(
            node.node_publish_volume(publish_req(
                "vol-v",
                &staging,
                &t1,
                mount_cap("ext4"),
                false
            ))
            .await
        ),
        Code::FailedPrecondition
    );
    // The retried stage attaches again; the files are there.
    node.node_stage_volume(stage_req("vol-v", &staging, mount_cap("ext4"), ctx.clone()))
        .await
        .unwrap();
    node.node_publish_volume(publish_req(
        "vol-v",
        &staging,
        &t1,
        mount_cap("ext4"),
        false,
    ))
    .await
    .unwrap();
    for (name, data) in files() {
        assert!(
            std::fs::read(t1.join(&name)).unwrap() == data,
            "{name} after the sweep"
        );
    }
    node.node_unpublish_volume(unpublish_req("vol-v", &t1))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req("vol-v", &staging))
        .await
        .unwrap();
    // vol-b's swept record: unpublish and unstage find nothing left to undo.
    node.node_unpublish_volume(unpublish_req("vol-b", &bro))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req("vol-b", &bs))
        .await
        .unwrap();
    assert!(w.mounts_under().is_empty(), "{:?}", w.mounts_under());
    assert!(w.loops_under().is_empty(), "{:?}", w.loops_under());
    assert!(wait_for(Duration::from_secs(10), || w
        .attach_pids()
        .is_empty()));
    eprintln!("csi_node scenario took {:?}", t_start.elapsed());
}

/// A 4096-aligned copy of `data` for O_DIRECT.
struct Aligned {
    buf: Vec<u8>,
    at: usize,
    len: usize,
}

impl Aligned {
    fn as_slice(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.len]
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.at..self.at + self.len]
    }
}

fn aligned(data: &[u8]) -> Aligned {
    let mut buf = vec![0u8; data.len() + 4096];
    let at = (4096 - (buf.as_ptr() as usize % 4096)) % 4096;
    buf[at..at + data.len()].copy_from_slice(data);
    Aligned {
        buf,
        at,
        len: data.len(),
    }
}

/// Whether this process may grow a mounted ext4 (CAP_SYS_RESOURCE, bit 24 of CapEff).
fn has_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|m| m & (1 << 24) != 0)
}

/// The node record of `volume` in the state dir `state`.
fn record(state: &Path, volume: &str) -> serde_json::Value {
    let p = state.join("volumes").join(format!("{volume}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// Writes `data` at `offset` of `dev` with O_DIRECT and fsyncs (the write's error, if any).
fn write_direct(dev: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(aligned(data).as_slice())?;
    f.sync_all()
}

fn read_direct(dev: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)?;
    let mut back = aligned(&vec![0u8; len]);
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(back.as_mut_slice())?;
    Ok(back.as_slice().to_vec())
}

/// Node A has the volume staged and writes; A is "lost" (nothing unstages it, its attach
/// keeps its session) and node B stages the volume, as after a ControllerPublish that
/// forced A's attachment away. B's stage preempts A's reservation key: A's writes fail
/// (RESERVATION CONFLICT, EIO through its loop device) and none of A's data lands, A may
/// still read, B reads and writes; with a filesystem, A's fsync fails. A's unstage then
/// leaves B's reservation alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nodes_writes_are_fenced_by_the_next_nodes_stage() {
    if !tools_present() {
        return;
    }
    let t_start = Instant::now();
    let (_api, w) = Work::new("state-a", "a.sock");
    let root = w.root.clone();
    let pool = Pool::new();
    pool.cstor(&["volume", "create", "ip/blk", "--size", "32M"]);
    pool.cstor(&["volume", "create", "ip/fs", "--size", "64M"]);
    let addr = free_addr();
    let (iqn_blk, iqn_fs) = (
        "iqn.2026-12.io.cstor.test:fence-blk",
        "iqn.2026-12.io.cstor.test:fence-fs",
    );
    let _target = pool.serve(
        &addr,
        &[
            "--iqn",
            iqn_blk,
            "--volume",
            "ip/blk",
            "--target",
            &format!("{iqn_fs},volume=ip/fs"),
        ],
    );
    let (state_b, socket_b) = (root.join("state-b"), root.join("b.sock"));
    let _plugin_a = Plugin::start_node(&w, "node-a", &w.socket, &w.state);
    let _plugin_b = Plugin::start_node(&w, "node-b", &socket_b, &state_b);
    let mut a = client_at(&w.socket).await;
    let mut b = client_at(&socket_b).await;

    // Raw block: exactly which writes land.
    let ctx = context(iqn_blk, &addr);
    let (sa, sb) = (w.path("a/blk"), w.path("b/blk"));
    a.node_stage_volume(stage_req("vol-blk", &sa, block_cap(), ctx.clone()))
        .await
        .unwrap();
    let dev_a = PathBuf::from(record(&w.state, "vol-blk")["loop_device"].as_str().unwrap());
    let before = pattern(256 << 10, 31);
    write_direct(&dev_a, 0, &before).unwrap();
    for _ in 0..2 {
        b.node_stage_volume(stage_req("vol-blk", &sb, block_cap(), ctx.clone()))
            .await
            .unwrap_or_else(|e| panic!("B's stage: {e}: {}", w.log()));
    }
    let dev_b = PathBuf::from(record(&state_b, "vol-blk")["loop_device"].as_str().unwrap());
    let after = pattern(256 << 10, 32);
    let e = write_direct(&dev_a, 1 << 20, &after).expect_err("A's write after B's stage");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        read_direct(&dev_a, 0, before.len()).unwrap() == before,
        "a fenced node may still read (Write Exclusive - Registrants Only)"
    );
    assert!(
        read_direct(&dev_b, 1 << 20, after.len()).unwrap() != after,
        "A's write after the preempt landed"
    );
    assert!(read_direct(&dev_b, 0, before.len()).unwrap() == before);
    let mine = pattern(256 << 10, 33);
    write_direct(&dev_b, 2 << 20, &mine).unwrap();
    assert!(read_direct(&dev_b, 2 << 20, mine.len()).unwrap() == mine);
    // A comes back and unstages: its fenced session leaves B's reservation alone.
    a.node_unstage_volume(unstage_req("vol-blk", &sa))
        .await
        .unwrap();
    write_direct(&dev_b, 3 << 20, &mine).unwrap();
    // B's own unstage and a new stage of B (same key): idempotent, B writes again.
    b.node_unstage_volume(unstage_req("vol-blk", &sb))
        .await
        .unwrap();
    b.node_stage_volume(stage_req("vol-blk", &sb, block_cap(), ctx.clone()))
        .await
        .unwrap();
    let dev_b = PathBuf::from(record(&state_b, "vol-blk")["loop_device"].as_str().unwrap());
    write_direct(&dev_b, 4 << 20, &mine).unwrap();
    b.node_unstage_volume(unstage_req("vol-blk", &sb))
        .await
        .unwrap();

    // A filesystem: A's fsync after B's stage fails, B has A's earlier files and writes.
    let ctx = context(iqn_fs, &addr);
    let (sa, sb) = (w.path("a/fs"), w.path("b/fs"));
    a.node_stage_volume(stage_req("vol-fs", &sa, mount_cap("ext4"), ctx.clone()))
        .await
        .unwrap();
    std::fs::write(sa.join("before"), &before).unwrap();
    sync_dir(&sa);
    b.node_stage_volume(stage_req("vol-fs", &sb, mount_cap("ext4"), ctx.clone()))
        .await
        .unwrap_or_else(|e| panic!("B's stage: {e}: {}", w.log()));
    assert!(std::fs::read(sb.join("before")).unwrap() == before);
    let late = (|| {
        let mut f = std::fs::File::create(sa.join("after"))?;
        f.write_all(&after)?;
        f.sync_all()
    })();
    assert!(late.is_err(), "A's fsync after B's stage succeeded");
    std::fs::write(sb.join("mine"), &mine).unwrap();
    sync_dir(&sb);
    let ro = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(sa.to_str().unwrap()) && l.contains(" ro,"));
    eprintln!("A's fsync: {late:?}; A's filesystem read-only afterwards: {ro}");
    a.node_unstage_volume(unstage_req("vol-fs", &sa))
        .await
        .unwrap();
    b.node_unstage_volume(unstage_req("vol-fs", &sb))
        .await
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || w
        .attach_pids()
        .is_empty()));
    eprintln!("fencing scenario took {:?}", t_start.elapsed());
}

/// The staging mount's line of /proc/self/mountinfo: (per-mount options, superblock
/// options).
fn mount_options(p: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.to_str().unwrap();
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        if f.get(4) != Some(&p) {
            return None;
        }
        let sep = f.iter().position(|x| *x == "-")?;
        Some((
            f[5].to_owned(),
            f.get(sep + 3).copied().unwrap_or("").to_owned(),
        ))
    })
}

/// Whether writes to the filesystem at `p` are stopped: `ro`, or ext4's `emergency_ro`
/// (Linux 6.18's errors=remount-ro keeps the mount `rw`) or `shutdown`.
fn read_only(p: &Path) -> bool {
    mount_options(p).is_some_and(|(o, so)| {
        o.split(',').any(|x| x == "ro")
            || so
                .split(',')
                .any(|x| x == "ro" || x == "emergency_ro" || x == "shutdown")
    })
}

/// Whether open-iscsi could work here (the test expects `auto` to choose userspace
/// where it cannot).
fn host_has_iscsi_tcp() -> bool {
    Path::new("/sys/module/iscsi_tcp").exists()
        || std::fs::read_to_string("/proc/sys/kernel/osrelease").is_ok_and(|r| {
            std::fs::read_to_string(format!("/lib/modules/{}/modules.dep", r.trim()))
                .is_ok_and(|d| d.contains("iscsi_tcp.ko"))
        })
}

/// Kills the target and writes through `dir` (files, fsync, syncfs) until the kernel
/// makes the filesystem at `staging` read-only: the initiator fails queued I/O after
/// its replacement timeout, a failed data write only fails its fsync, and the failed
/// journal commit makes ext4 (errors=remount-ro) read-only at its next change. The
/// time that took.
fn outage(target: initiator_support::Target, dir: &Path, staging: &Path, w: &Work) -> Duration {
    let t0 = Instant::now();
    target.kill();
    let mut failed = None;
    for i in 0.. {
        if read_only(staging) {
            break;
        }
        let r = (|| {
            let mut f = std::fs::File::create(dir.join(format!("during-{i}")))?;
            f.write_all(&pattern(64 << 10, 900 + i))?;
            f.sync_all()
        })();
        if let Err(e) = r {
            failed.get_or_insert(e);
            let _ = Command::new("sync").arg("-f").arg(dir).status();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} did not turn read-only (first failure: {failed:?}): {:?}: {}",
            staging.display(),
            mount_options(staging),
            w.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(failed.is_some(), "no write failed, yet read-only");
    t0.elapsed()
}

/// REMOUNT: an ext4 volume staged (with `errors=remount-ro`) and published; the target
/// dies, the initiator fails I/O after its replacement timeout (2 s here), ext4 turns
/// read-only, NodeGetVolumeStats says abnormal and the mount stays read-only while the
/// target is down; the target comes back and, without any CSI call, the staging mount
/// and the publish are read-write again, the files written before the outage intact,
/// and e2fsck finds the volume clean. Then the same outage on a volume staged with
/// volume_context `cstor.openebs.io/remount: "false"`: it stays read-only. And `auto`
/// chose the userspace attach on a host without iscsi_tcp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remount_brings_a_read_only_filesystem_back_after_a_path_outage() {
    if !tools_present() {
        return;
    }
    let t_start = Instant::now();
    let (_api, w) = Work::new("state", "csi.sock");
    let pool = Pool::new();
    pool.cstor(&["volume", "create", "ip/r", "--size", "64M"]);
    let iqn = "iqn.2026-12.io.cstor.test:remount";
    let addr = free_addr();
    let serve = || pool.serve(&addr, &["--iqn", iqn, "--volume", "ip/r"]);
    let target = serve();
    let _plugin = Plugin::start_with(
        &w,
        "node-1",
        &w.socket,
        &w.state,
        &["--replacement-timeout=2s"],
    );
    let mut node = client(&w).await;
    let ctx = context(iqn, &addr);
    let (staging, t1) = (w.path("staging/r"), w.path("pods/p1/r"));
    node.node_stage_volume(stage_req("vol-r", &staging, mount_cap("ext4"), ctx.clone()))
        .await
        .unwrap_or_else(|e| panic!("stage: {e}: {}", w.log()));
    if !host_has_iscsi_tcp() {
        assert!(
            w.log()
                .contains("attach method userspace (auto: open-iscsi is not usable here"),
            "{}",
            w.log()
        );
    }
    let (_, sopts) = mount_options(&staging).unwrap();
    assert!(sopts.contains("errors=remount-ro"), "{sopts}");
    node.node_publish_volume(publish_req(
        "vol-r",
        &staging,
        &t1,
        mount_cap("ext4"),
        false,
    ))
    .await
    .unwrap();
    for (name, data) in files() {
        std::fs::write(t1.join(&name), &data).unwrap();
    }
    sync_dir(&t1);

    let took = outage(target, &t1, &staging, &w);
    let s = node
        .node_get_volume_stats(stats_req("vol-r", &t1))
        .await
        .unwrap()
        .into_inner();
    let cond = s.volume_condition.unwrap();
    assert!(cond.abnormal, "{cond:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(read_only(&staging), "remounted while the target is down");
    let target = serve();
    let t_back = Instant::now();
    let writable = |p: &Path| mount_options(p).is_some() && !read_only(p);
    assert!(
        wait_for(Duration::from_secs(20), || w
            .log()
            .contains("is read-write again")
            && writable(&staging)
            && writable(&t1)),
        "still read-only {:?} after the target came back: {}",
        mount_options(&staging),
        w.log()
    );
    let back = t_back.elapsed();
    assert!(
        w.log().contains("REMOUNT: the filesystem at"),
        "{}",
        w.log()
    );
    for (name, data) in files() {
        assert!(
            std::fs::read(t1.join(&name)).unwrap() == data,
            "{name} after REMOUNT"
        );
    }
    std::fs::write(t1.join("after"), b"written after REMOUNT").unwrap();
    sync_dir(&t1);
    let s = node
        .node_get_volume_stats(stats_req("vol-r", &t1))
        .await
        .unwrap()
        .into_inner();
    assert!(!s.volume_condition.as_ref().unwrap().abnormal, "{s:?}");
    node.node_unpublish_volume(unpublish_req("vol-r", &t1))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req("vol-r", &staging))
        .await
        .unwrap();
    // fsck of the volume through a block publish: clean.
    let (bs, bt) = (w.path("staging/rb"), w.path("pods/p2/dev"));
    node.node_stage_volume(stage_req("vol-r", &bs, block_cap(), ctx.clone()))
        .await
        .unwrap();
    node.node_publish_volume(publish_req("vol-r", &bs, &bt, block_cap(), false))
        .await
        .unwrap();
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&bt)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "e2fsck after REMOUNT: {fsck:?}");
    node.node_unpublish_volume(unpublish_req("vol-r", &bt))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req("vol-r", &bs))
        .await
        .unwrap();

    // REMOUNT off for this volume: it stays read-only after the target is back.
    let mut req = stage_req("vol-r", &staging, mount_cap("ext4"), ctx.clone());
    req.volume_context
        .insert("cstor.openebs.io/remount".into(), "false".into());
    node.node_stage_volume(req).await.unwrap();
    node.node_publish_volume(publish_req(
        "vol-r",
        &staging,
        &t1,
        mount_cap("ext4"),
        false,
    ))
    .await
    .unwrap();
    outage(target, &t1, &staging, &w);
    let _target = serve();
    // The path answers again (the stats' read of the LUN), yet nothing remounts it.
    let t0 = Instant::now();
    loop {
        let s = node
            .node_get_volume_stats(stats_req("vol-r", &t1))
            .await
            .unwrap()
            .into_inner();
        let cond = s.volume_condition.unwrap();
        if cond.message.contains("REMOUNT is off") {
            assert!(cond.abnormal, "{cond:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{cond:?}: {}",
            w.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(read_only(&staging), "REMOUNT off, yet remounted");
    node.node_unpublish_volume(unpublish_req("vol-r", &t1))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req("vol-r", &staging))
        .await
        .unwrap();
    // Which repair the kernel allowed (docs/csi.md "REMOUNT").
    for l in w
        .log()
        .lines()
        .filter(|l| l.contains("REMOUNT") || l.contains("remount,rw"))
    {
        eprintln!("{l}");
    }
    eprintln!(
        "REMOUNT scenario took {:?} (read-only {took:?} after the target died, read-write {back:?} after it came back)",
        t_start.elapsed()
    );
}

/// `--attach-method=iscsiadm` on a host where open-iscsi cannot work (no iscsi_tcp, as
/// where this was built): NodeStageVolume fails at once with FAILED_PRECONDITION naming
/// what is missing, nothing is attached, and NodeGetInfo logs the choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_iscsiadm_attach_without_open_iscsi_fails_at_once() {
    if !tools_present() {
        return;
    }
    if host_has_iscsi_tcp() {
        eprintln!("iscsi_tcp is there: open-iscsi may work on this host, nothing to check");
        return;
    }
    let (_api, w) = Work::new("state", "csi.sock");
    let _plugin = Plugin::start_with(
        &w,
        "node-1",
        &w.socket,
        &w.state,
        &["--attach-method=iscsiadm"],
    );
    let mut node = client(&w).await;
    let t0 = Instant::now();
    let ctx = context("iqn.2026-12.io.cstor.test:nowhere", "127.0.0.1:9");
    for _ in 0..2 {
        let e = node
            .node_stage_volume(stage_req(
                "vol-x",
                &w.path("staging/x"),
                mount_cap("ext4"),
                ctx.clone(),
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        let m = e.message();
        assert!(
            m.contains("--attach-method=iscsiadm") && m.contains("iscsi_tcp"),
            "{m}"
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(w.attach_pids().is_empty() && w.loops_under().is_empty());
    assert!(
        !w.state.join("volumes").exists(),
        "no record of a failed stage"
    );
    node.node_get_info(NodeGetInfoRequest {}).await.unwrap();
    assert!(
        w.log()
            .contains("NodeGetInfo: --attach-method=iscsiadm, but open-iscsi is not usable"),
        "{}",
        w.log()
    );
}

/// The filesystem type of the mount at `p` (/proc/self/mountinfo).
fn fstype_at(p: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.to_str().unwrap();
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        if f.get(4) != Some(&p) {
            return None;
        }
        let sep = f.iter().position(|x| *x == "-")?;
        f.get(sep + 1).map(|t| (*t).to_owned())
    })
}

/// Total bytes of the filesystem at `p` (statvfs, as df).
fn fs_total(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs(3) writes into the struct we pass; `c` is NUL-terminated.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {p:?}");
    st.f_blocks * st.f_frsize
}

/// xfs through the node service: NodeStageVolume with fs_type xfs makes it (mkfs.xfs,
/// only on the blank LUN) and mounts it; a publish takes a file; the served volume
/// grows and NodeExpandVolume grows the mounted filesystem online (xfs_growfs); unstage
/// and stage again make no new filesystem and keep the file and the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_is_made_on_a_blank_lun_grown_online_and_kept_across_stages() {
    let xfs = tools_present() && have("mkfs.xfs", "xfsprogs") && have("xfs_growfs", "xfsprogs");
    if !xfs {
        return;
    }
    let t_start = Instant::now();
    let (_api, w) = Work::new("state", "csi.sock");
    let pool = Pool::new();
    // xfsprogs 6 makes no filesystem below 300 MiB.
    pool.cstor(&["volume", "create", "ip/x", "--size", "320M"]);
    let addr = free_addr();
    let iqn = "iqn.2026-12.io.cstor.test:csi-node-xfs";
    let _target = pool.serve(&addr, &["--iqn", iqn, "--volume", "ip/x"]);
    let _plugin = Plugin::start(&w);
    let mut node = client(&w).await;
    let ctx = context(iqn, &addr);
    let (staging, t) = (w.path("staging/x"), w.path("pods/px/v"));
    let made = |w: &Work| {
        w.log()
            .matches("made a filesystem on the blank volume")
            .count()
    };

    for _ in 0..2 {
        node.node_stage_volume(stage_req("vol-x", &staging, mount_cap("xfs"), ctx.clone()))
            .await
            .unwrap();
    }
    assert_eq!(fstype_at(&staging).as_deref(), Some("xfs"), "{}", w.log());
    assert_eq!(made(&w), 1, "{}", w.log());
    // Another filesystem for the staged volume: ALREADY_EXISTS.
    assert_eq!(
        code(
            node.node_stage_volume(stage_req("vol-x", &staging, mount_cap("ext4"), ctx.clone()))
                .await
        ),
        Code::AlreadyExists
    );
    node.node_publish_volume(publish_req("vol-x", &staging, &t, mount_cap("xfs"), false))
        .await
        .unwrap();
    let data = pattern(3 << 20, 77);
    std::fs::write(t.join("kept.bin"), &data).unwrap();
    sync_dir(&t);
    let before = fs_total(&t);
    // statvfs leaves out the internal log (64 MiB here).
    assert!(before > 200 << 20 && before <= 320 << 20, "{before}");
    eprintln!(
        "xfs: staged, published, written after {:?}",
        t_start.elapsed()
    );

    // Online growth: the served volume grows, NodeExpandVolume runs xfs_growfs.
    pool.cstor(&["volume", "resize", "ip/x", "--size", "416M"]);
    let er = expand_req("vol-x", &t, &staging, 416 << 20, "xfs");
    for _ in 0..2 {
        let got = node
            .node_expand_volume(er.clone())
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", w.log()))
            .into_inner();
        assert_eq!(got.capacity_bytes, 416 << 20);
    }
    let grown = fs_total(&t);
    assert!(
        grown > before + (80 << 20),
        "xfs did not grow: {before} -> {grown}"
    );
    assert_eq!(std::fs::read(t.join("kept.bin")).unwrap(), data);

    // Unstage and stage again: no mkfs, the file and the size are there.
    node.node_unpublish_volume(unpublish_req("vol-x", &t))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req("vol-x", &staging))
        .await
        .unwrap();
    assert!(w.mounts_under().is_empty(), "{:?}", w.mounts_under());
    node.node_stage_volume(stage_req("vol-x", &staging, mount_cap("xfs"), ctx.clone()))
        .await
        .unwrap();
    node.node_publish_volume(publish_req("vol-x", &staging, &t, mount_cap("xfs"), false))
        .await
        .unwrap();
    assert_eq!(
        made(&w),
        1,
        "no new filesystem on the second stage: {}",
        w.log()
    );
    assert!(
        std::fs::read(t.join("kept.bin")).unwrap() == data,
        "the file after unstage and stage"
    );
    assert_eq!(fs_total(&t), grown);
    node.node_unpublish_volume(unpublish_req("vol-x", &t))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req("vol-x", &staging))
        .await
        .unwrap();
    assert!(w.mounts_under().is_empty(), "{:?}", w.mounts_under());
    assert!(
        wait_for(Duration::from_secs(10), || w.loops_under().is_empty()),
        "{:?}",
        w.loops_under()
    );
    assert!(wait_for(Duration::from_secs(10), || w
        .attach_pids()
        .is_empty()));
    eprintln!("xfs through the node service took {:?}", t_start.elapsed());
}
