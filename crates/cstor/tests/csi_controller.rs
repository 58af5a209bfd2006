//! `cstor csi` judged by a CSI client (tonic over its unix socket), as the sidecars and
//! csi-sanity call it.
//!
//! - Without an API server: Identity answers (Probe not ready), the capabilities are
//!   exactly what is implemented, every malformed request is INVALID_ARGUMENT (or the
//!   spec's own code) before any API call (a Node stage too), a socket in use is refused
//!   and a stale one replaced.
//! - Against `cstor up` (two nodes, a pool on each): Probe ready, GetCapacity per node,
//!   CreateVolume (ABORTED until the volume serves I/O, then OK; the repeat idempotent;
//!   an incompatible repeat ALREADY_EXISTS), the topology node hosting the target,
//!   ListVolumes paging and a bad token, ValidateVolumeCapabilities, ControllerGetVolume's
//!   condition, expansion, and DeleteVolume twice.
//! - Snapshots against `cstor up`: CreateSnapshot (INVALID_ARGUMENT, NOT_FOUND for a
//!   missing source, idempotent by name until ready_to_use, ALREADY_EXISTS for the name on
//!   another volume), ListSnapshots (by id, by source, paging, ABORTED for a bad token),
//!   CreateVolume from a snapshot (NOT_FOUND, a volume source refused, the content source
//!   reported, a repeat without it ALREADY_EXISTS) and DeleteSnapshot (idempotent).

mod apiserver_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver_support::up::Up;
use apiserver_support::{free_port, have_kubectl, required};
use cstor_csi::pb::controller_client::ControllerClient;
use cstor_csi::pb::identity_client::IdentityClient;
use cstor_csi::pb::node_client::NodeClient;
use cstor_csi::pb::volume_capability::access_mode::Mode;
use cstor_csi::pb::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use cstor_csi::pb::*;
use tonic::transport::Channel;
use tonic::Code;

/// A running `cstor csi`, stopped (SIGTERM, then SIGKILL) on drop.
struct Driver {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(socket: &Path, kubeconfig: &Path, log: &Path) -> Child {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let out = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_cstor"))
        .arg("csi")
        .arg("--endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args(["--mode", "all", "--node-id", "node-1", "--kubeconfig"])
        .arg(kubeconfig)
        // Hermetic: never the host's /var/lib/cstor/csi.
        .arg("--state-dir")
        .arg(log.with_extension("state"))
        .env("RUST_LOG", "cstor_csi=debug")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

impl Driver {
    fn start(socket: &Path, kubeconfig: &Path) -> Driver {
        let log = socket.with_extension("log");
        let mut d = Driver {
            child: spawn(socket, kubeconfig, &log),
            socket: socket.to_owned(),
            log,
        };
        let t0 = Instant::now();
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("cstor csi exited ({status}): {}", d.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no socket: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("unix://{}", self.socket.display()))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

fn mount(fs: &str, mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs.to_owned(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn block(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn params(cspc: &str, replicas: &str) -> HashMap<String, String> {
    [
        ("cas-type", "cstor"),
        ("cstorPoolCluster", cspc),
        ("replicaCount", replicas),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn create(name: &str, bytes: i64, replicas: &str) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_owned(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount("xfs", Mode::SingleNodeWriter)],
        parameters: params("pools", replicas),
        ..Default::default()
    }
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

const MIB: i64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_checks_requests_before_the_api_and_owns_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    // An API server that is not there: nothing listens on this port.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
            free_port()
        ),
    )
    .unwrap();
    let socket = dir.path().join("plugin/csi.sock");
    let driver = Driver::start(&socket, &kubeconfig);
    let ch = driver.channel().await;
    let mut id = IdentityClient::new(ch.clone());
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);

    let info = id
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "cstor.csi.openebs.io");
    assert!(!info.vendor_version.is_empty());
    let caps = id
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.capabilities.len(), 3, "{caps:?}");
    let probe = id.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(false), "no API server: not ready");

    let caps = ctl
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut types: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .as_ref()
                .map(|controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    types.sort();
    // CREATE_DELETE_VOLUME, PUBLISH_UNPUBLISH_VOLUME, LIST_VOLUMES, GET_CAPACITY,
    // CREATE_DELETE_SNAPSHOT, LIST_SNAPSHOTS, CLONE_VOLUME, PUBLISH_READONLY,
    // EXPAND_VOLUME, LIST_VOLUMES_PUBLISHED_NODES, VOLUME_CONDITION, GET_VOLUME,
    // GET_SNAPSHOT: nothing advertised that answers UNIMPLEMENTED.
    assert_eq!(types, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15]);

    let info = node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "node-1");
    assert_eq!(
        info.accessible_topology.unwrap().segments["topology.cstor.openebs.io/nodeName"],
        "node-1"
    );
    let ncaps = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    // STAGE_UNSTAGE_VOLUME, GET_VOLUME_STATS, EXPAND_VOLUME, VOLUME_CONDITION
    // (crates/cstor/tests/csi_node.rs exercises them).
    assert_eq!(ncaps.capabilities.len(), 4, "{ncaps:?}");
    let staged = node
        .node_stage_volume(NodeStageVolumeRequest {
            volume_id: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(staged.code(), Code::InvalidArgument, "{staged:?}");
    assert_eq!(
        code(ctl.create_snapshot(CreateSnapshotRequest::default()).await),
        Code::InvalidArgument
    );
    // Publish requests are checked before the API server is asked.
    let publish =
        |id: &str, node: &str, cap: Option<VolumeCapability>| ControllerPublishVolumeRequest {
            volume_id: id.into(),
            node_id: node.into(),
            volume_capability: cap,
            ..Default::default()
        };
    let rwo = || Some(mount("ext4", Mode::SingleNodeWriter));
    for (req, want) in [
        (publish("", "node-1", rwo()), Code::InvalidArgument),
        (publish("v", "", rwo()), Code::InvalidArgument),
        (publish("v", "node-1", None), Code::InvalidArgument),
        (
            publish(
                "v",
                "node-1",
                Some(mount("ext4", Mode::MultiNodeMultiWriter)),
            ),
            Code::InvalidArgument,
        ),
        (publish("Not_A_Volume", "node-1", rwo()), Code::NotFound),
    ] {
        assert_eq!(code(ctl.controller_publish_volume(req).await), want);
    }
    assert_eq!(
        code(
            ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest::default())
                .await
        ),
        Code::InvalidArgument
    );
    ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
        volume_id: "Not_A_Volume".into(),
        node_id: "node-1".into(),
        ..Default::default()
    })
    .await
    .expect("an id that names no volume is unpublished");

    // Malformed requests, answered without the API server.
    let mut no_name = create("", 64 * MIB, "1");
    no_name.name.clear();
    assert_eq!(
        code(ctl.create_volume(no_name).await),
        Code::InvalidArgument
    );
    let mut no_caps = create("v1", 64 * MIB, "1");
    no_caps.volume_capabilities.clear();
    assert_eq!(
        code(ctl.create_volume(no_caps).await),
        Code::InvalidArgument
    );
    let mut rwx = create("v1", 64 * MIB, "1");
    rwx.volume_capabilities = vec![block(Mode::MultiNodeMultiWriter)];
    assert_eq!(code(ctl.create_volume(rwx).await), Code::InvalidArgument);
    let mut btrfs = create("v1", 64 * MIB, "1");
    btrfs.volume_capabilities = vec![mount("btrfs", Mode::SingleNodeWriter)];
    assert_eq!(code(ctl.create_volume(btrfs).await), Code::InvalidArgument);
    for bad in ["yes", "", "False"] {
        let mut remount = create("v1", 64 * MIB, "1");
        remount.parameters.insert("remount".into(), bad.into());
        let e = ctl.create_volume(remount).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "remount {bad:?}: {e:?}");
        assert!(e.message().contains("remount"), "{e:?}");
    }
    let mut no_cspc = create("v1", 64 * MIB, "1");
    no_cspc.parameters.remove("cstorPoolCluster");
    assert_eq!(
        code(ctl.create_volume(no_cspc).await),
        Code::InvalidArgument
    );
    let mut range = create("v1", 64 * MIB, "1");
    range.capacity_range = Some(CapacityRange {
        required_bytes: 64 * MIB,
        limit_bytes: 32 * MIB,
    });
    assert_eq!(code(ctl.create_volume(range).await), Code::OutOfRange);
    assert_eq!(
        code(ctl.delete_volume(DeleteVolumeRequest::default()).await),
        Code::InvalidArgument
    );
    // An id that names no volume of ours is deleted without asking anyone.
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: "Not/A Volume".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        code(
            ctl.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest::default())
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.list_volumes(ListVolumesRequest {
                max_entries: -1,
                starting_token: String::new()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: "v1".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.controller_get_volume(ControllerGetVolumeRequest {
                volume_id: "x/y".into()
            })
            .await
        ),
        Code::NotFound
    );
    // A well-formed request needs the API server: unavailable, so the sidecars retry.
    assert_eq!(
        code(ctl.create_volume(create("v1", 64 * MIB, "1")).await),
        Code::Unavailable
    );

    // A second driver on the same socket is refused; the first keeps serving.
    let second = Command::new(env!("CARGO_BIN_EXE_cstor"))
        .arg("csi")
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .args(["--mode", "controller", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use"), "{err}");
    id.get_plugin_info(GetPluginInfoRequest {}).await.unwrap();
    // A node mode without --node-id is refused before binding.
    let no_id = Command::new(env!("CARGO_BIN_EXE_cstor"))
        .arg("csi")
        .arg(format!(
            "--endpoint=unix://{}",
            dir.path().join("n.sock").display()
        ))
        .args(["--mode", "node", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(!no_id.status.success());
    assert!(String::from_utf8_lossy(&no_id.stderr).contains("--node-id"));

    // Stopped, the driver removes its socket; a socket left by a killed one is replaced.
    drop(driver);
    assert!(!socket.exists(), "the socket outlived a clean stop");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let again = Driver::start(&socket, &kubeconfig);
    let mut id = IdentityClient::new(again.channel().await);
    id.get_plugin_info(GetPluginInfoRequest {}).await.unwrap();
}

/// Retries `f` while it answers ABORTED (the volume is on its way), up to `limit`.
async fn until_done<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let t0 = Instant::now();
    loop {
        match f().await {
            Ok(r) => return r.into_inner(),
            Err(s) if s.code() == Code::Aborted && t0.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) => panic!("{what}: {s:?}"),
        }
    }
}

fn cspc_yaml(up: &Up) -> String {
    let mut pools = String::new();
    for n in ["node-1", "node-2"] {
        let bd = up.block_device(n, Duration::from_secs(60));
        pools.push_str(&format!(
            "  - nodeSelector:\n      kubernetes.io/hostname: \"{n}\"\n    dataRaidGroups:\n    - blockDevices:\n      - blockDeviceName: \"{bd}\"\n    poolConfig:\n      dataRaidGroupType: \"stripe\"\n"
        ));
    }
    format!("apiVersion: cstor.openebs.io/v1\nkind: CStorPoolCluster\nmetadata:\n  name: pools\n  namespace: openebs\nspec:\n  pools:\n{pools}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_controller_provisions_lists_expands_and_deletes_through_cvcs() {
    if !required(have_kubectl(), "kubectl") {
        return;
    }
    let up = Up::start(2, "256M");
    let f = up.dir.join("cspc.yaml");
    std::fs::write(&f, cspc_yaml(&up)).unwrap();
    let (ok, out) = up.kubectl(&["apply", "-f", &f.display().to_string()]);
    assert!(ok, "apply cspc: {out}");
    up.wait_for(
        "2 CSPIs ONLINE with free space",
        &[
            "get",
            "cspi",
            "-n",
            "openebs",
            "-o",
            "jsonpath={.items[*].status.phase} {.items[*].status.capacity.free}",
        ],
        |v| v.matches("ONLINE").count() == 2 && !v.contains(" 0"),
        Duration::from_secs(90),
    );
    let socket = up.dir.join("csi/csi.sock");
    let driver = Driver::start(&socket, &up.dir.join("kubeconfig"));
    let ch = driver.channel().await;
    let mut id = IdentityClient::new(ch.clone());
    let mut ctl = ControllerClient::new(ch);
    let t0 = Instant::now();
    while id.probe(ProbeRequest {}).await.unwrap().into_inner().ready != Some(true) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never ready: {}",
            driver.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Capacity: both pools, one node's pool, a node without pools.
    let cap = |node: Option<&str>, replicas: &str| GetCapacityRequest {
        volume_capabilities: vec![mount("ext4", Mode::SingleNodeWriter)],
        parameters: params("pools", replicas),
        accessible_topology: node.map(|n| Topology {
            segments: [(
                "topology.cstor.openebs.io/nodeName".to_owned(),
                n.to_owned(),
            )]
            .into(),
        }),
    };
    let all = ctl.get_capacity(cap(None, "2")).await.unwrap().into_inner();
    let one = ctl
        .get_capacity(cap(Some("node-1"), "2"))
        .await
        .unwrap()
        .into_inner();
    let none = ctl
        .get_capacity(cap(Some("node-9"), "2"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        one.available_capacity > 0 && one.available_capacity < all.available_capacity,
        "{one:?} {all:?}"
    );
    assert_eq!(none.available_capacity, 0);
    let largest = all.maximum_volume_size.unwrap();
    assert!(
        largest > 64 * MIB
            && largest
                <= one
                    .available_capacity
                    .max(all.available_capacity - one.available_capacity),
        "{all:?}"
    );

    // Create: ABORTED until the two replicas serve I/O, then OK, and the target on the
    // node the topology prefers.
    let mut a = create("vol-a", 64 * MIB, "2");
    // The class's REMOUNT (off) goes into the volume context, for NodeStageVolume.
    a.parameters.insert("remount".into(), "false".into());
    a.accessibility_requirements = Some(TopologyRequirement {
        requisite: vec![],
        preferred: vec![Topology {
            segments: [(
                "topology.cstor.openebs.io/nodeName".to_owned(),
                "node-2".to_owned(),
            )]
            .into(),
        }],
    });
    let limit = Duration::from_secs(90);
    let vol = until_done("create vol-a", limit, || {
        let (mut c, r) = (ctl.clone(), a.clone());
        async move { c.create_volume(r).await }
    })
    .await
    .volume
    .unwrap();
    assert_eq!(vol.volume_id, "vol-a");
    assert_eq!(vol.capacity_bytes, 64 * MIB);
    assert_eq!(
        vol.volume_context
            .get("cstor.openebs.io/remount")
            .map(String::as_str),
        Some("false"),
        "{vol:?}"
    );
    let (_, node) = up.kubectl(&[
        "get",
        "cv",
        "-n",
        "openebs",
        "vol-a",
        "-o",
        "jsonpath={.metadata.labels.cstor\\.openebs\\.io/target-node} {.status.phase}",
    ]);
    assert!(node.starts_with("node-2 "), "{node}");
    let again = ctl
        .create_volume(a.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again, vol, "a repeat answers the same volume");
    let mut bigger = a.clone();
    bigger.capacity_range = Some(CapacityRange {
        required_bytes: 128 * MIB,
        limit_bytes: 0,
    });
    assert_eq!(code(ctl.create_volume(bigger).await), Code::AlreadyExists);
    let mut fewer = a.clone();
    fewer.parameters.insert("replicaCount".into(), "1".into());
    assert_eq!(code(ctl.create_volume(fewer).await), Code::AlreadyExists);
    let mut remount_on = a.clone();
    remount_on
        .parameters
        .insert("remount".into(), "true".into());
    assert_eq!(
        code(ctl.create_volume(remount_on).await),
        Code::AlreadyExists
    );
    let mut ext4 = a.clone();
    ext4.volume_capabilities = vec![mount("ext4", Mode::SingleNodeWriter)];
    assert_eq!(code(ctl.create_volume(ext4).await), Code::AlreadyExists);
    let mut three = create("vol-c", 64 * MIB, "3");
    three.volume_capabilities = vec![block(Mode::SingleNodeWriter)];
    assert_eq!(
        code(ctl.create_volume(three).await),
        Code::ResourceExhausted,
        "3 replicas on 2 pools"
    );

    // A name that is not an object name gets a stable hashed id.
    let b = create("Sanity Volume B", 32 * MIB, "1");
    let vb = until_done("create B", limit, || {
        let (mut c, r) = (ctl.clone(), b.clone());
        async move { c.create_volume(r).await }
    })
    .await
    .volume
    .unwrap();
    assert!(vb.volume_id.starts_with("csi-"), "{vb:?}");

    // Paging, one entry a page; a token not handed out is ABORTED.
    let p1 = ctl
        .list_volumes(ListVolumesRequest {
            max_entries: 1,
            starting_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.entries.len(), 1);
    assert_eq!(p1.next_token, "1");
    let p2 = ctl
        .list_volumes(ListVolumesRequest {
            max_entries: 1,
            starting_token: p1.next_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.entries.len(), 1);
    assert_eq!(p2.next_token, "");
    let mut ids: Vec<String> = p1
        .entries
        .iter()
        .chain(&p2.entries)
        .map(|e| e.volume.as_ref().unwrap().volume_id.clone())
        .collect();
    ids.sort();
    let mut want = vec!["vol-a".to_owned(), vb.volume_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert!(p1.entries[0]
        .status
        .as_ref()
        .unwrap()
        .volume_condition
        .is_some());
    for bad in ["invalid-token", "7"] {
        assert_eq!(
            code(
                ctl.list_volumes(ListVolumesRequest {
                    max_entries: 1,
                    starting_token: bad.into()
                })
                .await
            ),
            Code::Aborted,
            "{bad}"
        );
    }

    // Validate.
    let v = |caps: Vec<VolumeCapability>, vol: &str| ValidateVolumeCapabilitiesRequest {
        volume_id: vol.into(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let ok = ctl
        .validate_volume_capabilities(v(
            vec![
                mount("xfs", Mode::SingleNodeWriter),
                block(Mode::SingleNodeReaderOnly),
            ],
            "vol-a",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.confirmed.is_some(), "{ok:?}");
    let no = ctl
        .validate_volume_capabilities(v(vec![block(Mode::MultiNodeMultiWriter)], "vol-a"))
        .await
        .unwrap()
        .into_inner();
    assert!(no.confirmed.is_none() && !no.message.is_empty(), "{no:?}");
    let wrong_fs = ctl
        .validate_volume_capabilities(v(vec![mount("ext4", Mode::SingleNodeWriter)], "vol-a"))
        .await
        .unwrap()
        .into_inner();
    assert!(wrong_fs.confirmed.is_none(), "{wrong_fs:?}");
    assert_eq!(
        code(
            ctl.validate_volume_capabilities(v(vec![block(Mode::SingleNodeWriter)], "vol-zz"))
                .await
        ),
        Code::NotFound
    );

    // The condition turns normal once both replicas are Healthy.
    let t0 = Instant::now();
    loop {
        let g = ctl
            .controller_get_volume(ControllerGetVolumeRequest {
                volume_id: "vol-a".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let c = g.status.unwrap().volume_condition.unwrap();
        if !c.abnormal {
            assert!(c.message.contains("2 of 2"), "{c:?}");
            break;
        }
        assert!(t0.elapsed() < limit, "still abnormal: {c:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        code(
            ctl.controller_get_volume(ControllerGetVolumeRequest {
                volume_id: "vol-zz".into()
            })
            .await
        ),
        Code::NotFound
    );

    // Publish: one node at a time, recorded on the CVC, the target in the context.
    let publish = |node: &str, readonly: bool| ControllerPublishVolumeRequest {
        volume_id: "vol-a".into(),
        node_id: node.into(),
        volume_capability: Some(mount("xfs", Mode::SingleNodeWriter)),
        readonly,
        ..Default::default()
    };
    let unpublish = |node: &str| ControllerUnpublishVolumeRequest {
        volume_id: "vol-a".into(),
        node_id: node.into(),
        ..Default::default()
    };
    let ctx = ctl
        .controller_publish_volume(publish("node-1", false))
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    assert_eq!(ctx["iqn"], "iqn.2016-09.com.openebs.cstor:vol-a", "{ctx:?}");
    assert_eq!(ctx["lun"], "0");
    let (ok, portal) = up.kubectl(&[
        "get",
        "cv",
        "vol-a",
        "-n",
        "openebs",
        "-o",
        "jsonpath={.spec.targetPortal}",
    ]);
    assert!(ok && ctx["portal"] == portal, "{ctx:?} vs {portal}");
    let again = ctl
        .controller_publish_volume(publish("node-1", false))
        .await
        .expect("a repeated publish is idempotent")
        .into_inner();
    assert_eq!(again.publish_context, ctx);
    assert_eq!(
        code(ctl.controller_publish_volume(publish("node-1", true)).await),
        Code::AlreadyExists,
        "same node, readonly differs"
    );
    assert_eq!(
        code(
            ctl.controller_publish_volume(publish("node-2", false))
                .await
        ),
        Code::FailedPrecondition,
        "a second node while the first holds it"
    );
    assert_eq!(
        code(
            ctl.controller_publish_volume(publish("node-9", false))
                .await
        ),
        Code::NotFound,
        "no such node"
    );
    let published = |g: ControllerGetVolumeResponse| g.status.unwrap().published_node_ids;
    let get = || ControllerGetVolumeRequest {
        volume_id: "vol-a".into(),
    };
    assert_eq!(
        published(ctl.controller_get_volume(get()).await.unwrap().into_inner()),
        ["node-1"]
    );
    ctl.controller_unpublish_volume(unpublish("node-2"))
        .await
        .expect("unpublishing a node that does not hold it is a no-op");
    assert_eq!(
        published(ctl.controller_get_volume(get()).await.unwrap().into_inner()),
        ["node-1"]
    );
    for _ in 0..2 {
        ctl.controller_unpublish_volume(unpublish("node-1"))
            .await
            .expect("unpublish, twice");
    }
    assert!(published(ctl.controller_get_volume(get()).await.unwrap().into_inner()).is_empty());
    ctl.controller_publish_volume(publish("node-2", true))
        .await
        .expect("the volume is free again: node-2 takes it, read-only");
    ctl.controller_unpublish_volume(unpublish(""))
        .await
        .expect("an empty node id unpublishes from every node");
    assert!(published(ctl.controller_get_volume(get()).await.unwrap().into_inner()).is_empty());

    // Expansion: the target reports the new size, then OK (ABORTED meanwhile).
    let grow = ControllerExpandVolumeRequest {
        volume_id: "vol-a".into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 128 * MIB,
            limit_bytes: 0,
        }),
        volume_capability: Some(mount("xfs", Mode::SingleNodeWriter)),
        ..Default::default()
    };
    let grown = until_done("expand vol-a", limit, || {
        let (mut c, r) = (ctl.clone(), grow.clone());
        async move { c.controller_expand_volume(r).await }
    })
    .await;
    assert_eq!(grown.capacity_bytes, 128 * MIB);
    // Published nowhere: the next NodeStage grows the filesystem, no node call needed.
    assert!(!grown.node_expansion_required);
    let (_, cap_now) = up.kubectl(&[
        "get",
        "cv",
        "-n",
        "openebs",
        "vol-a",
        "-o",
        "jsonpath={.status.capacity}",
    ]);
    assert_eq!(cap_now, "128Mi");
    let mut smaller = grow.clone();
    smaller.capacity_range = Some(CapacityRange {
        required_bytes: 64 * MIB,
        limit_bytes: 0,
    });
    assert_eq!(
        ctl.controller_expand_volume(smaller)
            .await
            .unwrap()
            .into_inner()
            .capacity_bytes,
        128 * MIB
    );
    let mut gone = grow.clone();
    gone.volume_id = "vol-zz".into();
    assert_eq!(
        code(ctl.controller_expand_volume(gone).await),
        Code::NotFound
    );

    // Delete, twice each; the CVCs go.
    for vid in ["vol-a", vb.volume_id.as_str()] {
        for _ in 0..2 {
            ctl.delete_volume(DeleteVolumeRequest {
                volume_id: vid.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    }
    up.wait_for(
        "the CVCs gone",
        &["get", "cvc", "-n", "openebs", "-o", "name"],
        |v| v.is_empty(),
        Duration::from_secs(60),
    );
    let empty = ctl
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(empty.entries.is_empty(), "{empty:?}");
}

/// `cstor up` with 2 nodes, a stripe pool on each (ONLINE with free space), and a
/// controller-mode driver on its own socket.
async fn with_pools() -> (Up, Driver) {
    let up = Up::start(2, "256M");
    let f = up.dir.join("cspc.yaml");
    std::fs::write(&f, cspc_yaml(&up)).unwrap();
    let (ok, out) = up.kubectl(&["apply", "-f", &f.display().to_string()]);
    assert!(ok, "apply cspc: {out}");
    up.wait_for(
        "2 CSPIs ONLINE with free space",
        &[
            "get",
            "cspi",
            "-n",
            "openebs",
            "-o",
            "jsonpath={.items[*].status.phase} {.items[*].status.capacity.free}",
        ],
        |v| v.matches("ONLINE").count() == 2 && !v.contains(" 0"),
        Duration::from_secs(90),
    );
    let socket = up.dir.join("csi/csi.sock");
    let driver = Driver::start(&socket, &up.dir.join("kubeconfig"));
    (up, driver)
}

fn snapshot_req(name: &str, source: &str) -> CreateSnapshotRequest {
    CreateSnapshotRequest {
        name: name.to_owned(),
        source_volume_id: source.to_owned(),
        ..Default::default()
    }
}

fn from_snapshot(name: &str, snapshot_id: &str) -> CreateVolumeRequest {
    let mut r = create(name, 64 * MIB, "2");
    r.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: snapshot_id.to_owned(),
            },
        )),
    });
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_snapshots_create_list_restore_and_delete() {
    if !required(have_kubectl(), "kubectl") {
        return;
    }
    let (up, driver) = with_pools().await;
    let mut ctl = ControllerClient::new(driver.channel().await);
    let long = Duration::from_secs(60);
    until_done("create the source", long, || {
        let mut c = ctl.clone();
        async move { c.create_volume(create("snap-src", 64 * MIB, "2")).await }
    })
    .await;

    // Requests checked; a missing source volume is NOT_FOUND.
    assert_eq!(
        code(ctl.create_snapshot(snapshot_req("", "snap-src")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ctl.create_snapshot(snapshot_req("s1", "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ctl.create_snapshot(snapshot_req("s1", "no-such-vol")).await),
        Code::NotFound
    );

    // Idempotent by name: repeated until the agent took it.
    let first = ctl
        .create_snapshot(snapshot_req("snap-1", "snap-src"))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(first.snapshot_id, "snap-src@snap-1");
    assert_eq!(first.source_volume_id, "snap-src");
    let t0 = Instant::now();
    let ready = loop {
        let s = ctl
            .create_snapshot(snapshot_req("snap-1", "snap-src"))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(s.snapshot_id, first.snapshot_id);
        if s.ready_to_use {
            break s;
        }
        assert!(t0.elapsed() < long, "never ready: {s:?}\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(ready.size_bytes, 64 * MIB);
    assert!(ready.creation_time.is_some());
    assert_eq!(
        code(
            ctl.create_snapshot(snapshot_req("snap-1", "other-vol"))
                .await
        ),
        Code::AlreadyExists
    );
    ctl.create_snapshot(snapshot_req("snap-2", "snap-src"))
        .await
        .unwrap();

    // ListSnapshots: all, by id, by source, paged, bad token.
    let lister = ctl.clone();
    let list = move |r: ListSnapshotsRequest| {
        let mut c = lister.clone();
        async move { c.list_snapshots(r).await }
    };
    let ids = |r: &ListSnapshotsResponse| -> Vec<String> {
        r.entries
            .iter()
            .map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone())
            .collect()
    };
    let all = list(ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&all), ["snap-src@snap-1", "snap-src@snap-2"]);
    let one = list(ListSnapshotsRequest {
        snapshot_id: "snap-src@snap-1".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(ids(&one), ["snap-src@snap-1"]);
    let none = list(ListSnapshotsRequest {
        snapshot_id: "snap-src@nope".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert!(none.entries.is_empty());
    let by_src = list(ListSnapshotsRequest {
        source_volume_id: "snap-src".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(by_src.entries.len(), 2);
    let other = list(ListSnapshotsRequest {
        source_volume_id: "other-vol".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert!(other.entries.is_empty());
    let p1 = list(ListSnapshotsRequest {
        max_entries: 1,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(ids(&p1), ["snap-src@snap-1"]);
    assert!(!p1.next_token.is_empty());
    let p2 = list(ListSnapshotsRequest {
        max_entries: 1,
        starting_token: p1.next_token.clone(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(ids(&p2), ["snap-src@snap-2"]);
    assert!(p2.next_token.is_empty());
    assert_eq!(
        code(
            list(ListSnapshotsRequest {
                starting_token: "zz".into(),
                ..Default::default()
            })
            .await
        ),
        Code::Aborted
    );
    assert_eq!(
        code(
            list(ListSnapshotsRequest {
                max_entries: -1,
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );

    // CreateVolume from a snapshot.
    assert_eq!(
        code(
            ctl.create_volume(from_snapshot("restored", "snap-src@nope"))
                .await
        ),
        Code::NotFound
    );
    let restored = until_done("restore", long, || {
        let mut c = ctl.clone();
        async move {
            c.create_volume(from_snapshot("restored", "snap-src@snap-1"))
                .await
        }
    })
    .await
    .volume
    .unwrap();
    assert_eq!(
        restored.content_source,
        from_snapshot("x", "snap-src@snap-1").volume_content_source
    );
    let again = ctl
        .create_volume(from_snapshot("restored", "snap-src@snap-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.volume.unwrap().volume_id, restored.volume_id);
    assert_eq!(
        code(ctl.create_volume(create("restored", 64 * MIB, "2")).await),
        Code::AlreadyExists
    );

    // DeleteSnapshot: idempotent, OK for ids naming nothing.
    assert_eq!(
        code(ctl.delete_snapshot(DeleteSnapshotRequest::default()).await),
        Code::InvalidArgument
    );
    for id in [
        "snap-src@snap-2",
        "snap-src@snap-2",
        "not-an-id",
        "snap-src@nope",
    ] {
        ctl.delete_snapshot(DeleteSnapshotRequest {
            snapshot_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // GetSnapshot.
    assert_eq!(
        code(ctl.get_snapshot(GetSnapshotRequest::default()).await),
        Code::InvalidArgument
    );
    let got = ctl
        .get_snapshot(GetSnapshotRequest {
            snapshot_id: "snap-src@snap-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(got.snapshot_id, "snap-src@snap-1");
    assert!(got.ready_to_use);
    assert_eq!(got.size_bytes, 64 * MIB);
    for id in ["snap-src@nope", "not-an-id"] {
        let r = ctl
            .get_snapshot(GetSnapshotRequest {
                snapshot_id: id.into(),
                ..Default::default()
            })
            .await;
        assert_eq!(code(r), Code::NotFound, "{id}");
    }

    up.wait_for(
        "snap-2's CStorSnapshot gone",
        &["get", "cstorsnapshot", "-n", "openebs", "-o", "name"],
        |v| !v.contains("snap-2") && v.contains("snap-1"),
        long,
    );
    let left = list(ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&left), ["snap-src@snap-1"]);
}

fn clone_of(name: &str, source: &str, bytes: i64) -> CreateVolumeRequest {
    let mut r = create(name, bytes, "2");
    r.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: source.to_owned(),
            },
        )),
    });
    r
}

/// The (iqn, portal) of a volume's CStorVolume.
fn target_of(up: &Up, vol: &str) -> (String, String) {
    let (ok, out) = up.kubectl(&[
        "get",
        "cv",
        vol,
        "-n",
        "openebs",
        "-o",
        "jsonpath={.spec.iqn} {.spec.targetPortal}",
    ]);
    let parts: Vec<&str> = out.split_whitespace().collect();
    assert!(ok && parts.len() == 2, "cv {vol}: {out}");
    (parts[0].to_owned(), parts[1].to_owned())
}

/// CreateVolume with a volume content source (CLONE_VOLUME): request checks, NOT_FOUND
/// and OUT_OF_RANGE, ABORTED until the internal snapshot is taken, then a clone holding
/// what the source held when it was asked for (read through the clone's own target),
/// reporting the source volume, idempotent, ALREADY_EXISTS for a repeat with another
/// source; its internal snapshot is hidden from ListSnapshots/GetSnapshot and deleted
/// with the clone. Then ControllerPublish narrows the source's target ACL to node-1's
/// initiator name, and Unpublish widens it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_clones_a_volume_and_publish_narrows_the_target_acl() {
    let have_qemu = Command::new("qemu-io")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !required(have_kubectl() && have_qemu, "kubectl or qemu-io") {
        return;
    }
    let (up, driver) = with_pools().await;
    let mut ctl = ControllerClient::new(driver.channel().await);
    let long = Duration::from_secs(60);
    until_done("create the source", long, || {
        let mut c = ctl.clone();
        async move { c.create_volume(create("clone-src", 64 * MIB, "2")).await }
    })
    .await;
    let (iqn, portal) = target_of(&up, "clone-src");
    let io = |portal: &str, iqn: &str, cmds: &[&str]| {
        let (ok, text) = apiserver_support::seed::qemu_io(portal, iqn, cmds);
        assert!(ok, "qemu-io {cmds:?}: {text}");
    };
    io(&portal, &iqn, &["write -P 0x77 1M 2M"]);

    // Checked before anything is made.
    assert_eq!(
        code(ctl.create_volume(clone_of("cloned", "", 64 * MIB)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.create_volume(clone_of("cloned", "cloned", 64 * MIB))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.create_volume(clone_of("cloned", "no-such-vol", 64 * MIB))
                .await
        ),
        Code::NotFound
    );
    let mut small = clone_of("cloned", "clone-src", 32 * MIB);
    small.capacity_range.as_mut().unwrap().limit_bytes = 32 * MIB;
    assert_eq!(code(ctl.create_volume(small).await), Code::OutOfRange);
    let (_, out) = up.kubectl(&["get", "cstorsnapshot", "-n", "openebs", "-o", "name"]);
    assert!(
        !out.contains("csi-clone"),
        "nothing made by refused calls: {out}"
    );

    // The first call takes the snapshot and answers ABORTED; retries finish the clone.
    assert_eq!(
        code(
            ctl.create_volume(clone_of("cloned", "clone-src", 64 * MIB))
                .await
        ),
        Code::Aborted
    );
    let (_, out) = up.kubectl(&[
        "get",
        "cstorsnapshot",
        "csi-clone-cloned",
        "-n",
        "openebs",
        "-o",
        "jsonpath={.spec.volumeName} {.metadata.annotations.cstor\\.csi\\.openebs\\.io/clone-for}",
    ]);
    assert_eq!(out, "clone-src cloned");
    up.wait_for(
        "the internal snapshot taken",
        &[
            "get",
            "cstorsnapshot",
            "csi-clone-cloned",
            "-n",
            "openebs",
            "-o",
            "jsonpath={.status.readyToUse}",
        ],
        |v| v == "true",
        long,
    );
    // Written after the snapshot was taken: not in the clone.
    io(&portal, &iqn, &["write -P 0x11 4M 1M"]);
    let cloned = until_done("clone", long, || {
        let mut c = ctl.clone();
        async move {
            c.create_volume(clone_of("cloned", "clone-src", 64 * MIB))
                .await
        }
    })
    .await
    .volume
    .unwrap();
    assert_eq!(cloned.volume_id, "cloned");
    assert_eq!(cloned.capacity_bytes, 64 * MIB);
    assert_eq!(
        cloned.content_source,
        clone_of("x", "clone-src", 0).volume_content_source
    );
    let again = ctl
        .create_volume(clone_of("cloned", "clone-src", 64 * MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.volume.unwrap().volume_id, "cloned");
    assert_eq!(
        code(ctl.create_volume(create("cloned", 64 * MIB, "2")).await),
        Code::AlreadyExists
    );
    let (ciqn, cportal) = target_of(&up, "cloned");
    assert_ne!(ciqn, iqn);
    io(
        &cportal,
        &ciqn,
        &["read -P 0x77 1M 2M", "read -P 0 4M 1M", "read -P 0 0 1M"],
    );
    // The source is untouched by the clone's writes.
    io(&cportal, &ciqn, &["write -P 0x22 1M 1M"]);
    io(&portal, &iqn, &["read -P 0x77 1M 2M", "read -P 0x11 4M 1M"]);

    // The internal snapshot is not the CO's.
    let all = ctl
        .list_snapshots(ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.entries.is_empty(), "{all:?}");
    let r = ctl
        .get_snapshot(GetSnapshotRequest {
            snapshot_id: "clone-src@csi-clone-cloned".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(r), Code::NotFound);

    // Published to node-1: the source's target admits only node-1's initiator (a login
    // under another name is refused, discovery hides it); unpublished: everyone again.
    let discover = |name: &str| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_cstor"))
            .args([
                "initiator",
                "discover",
                "--portal",
                &portal,
                "--initiator-name",
                name,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "discover as {name}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(discover("iqn.2026-12.io.cstor:node-2").contains(&iqn));
    ctl.controller_publish_volume(ControllerPublishVolumeRequest {
        volume_id: "clone-src".into(),
        node_id: "node-1".into(),
        volume_capability: Some(mount("xfs", Mode::SingleNodeWriter)),
        ..Default::default()
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    while discover("iqn.2026-12.io.cstor:node-2").contains(&iqn) {
        assert!(t0.elapsed() < long, "the ACL never narrowed\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("ACL narrowed {:?} after ControllerPublish", t0.elapsed());
    assert!(discover("iqn.2026-12.io.cstor:node-1").contains(&iqn));
    let (ok, text) = apiserver_support::seed::qemu_io(&portal, &iqn, &["read 0 4k"]);
    assert!(!ok, "qemu-io's own initiator name must be refused: {text}");
    ctl.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
        volume_id: "clone-src".into(),
        node_id: "node-1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let t0 = Instant::now();
    while !discover("iqn.2026-12.io.cstor:node-2").contains(&iqn) {
        assert!(t0.elapsed() < long, "the ACL never widened\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    io(&portal, &iqn, &["read -P 0x77 1M 1M"]);

    // Deleting the clone deletes its internal snapshot (the agent keeps the replicated
    // one while the clone's replicas depend on it).
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: "cloned".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    up.wait_for(
        "the internal snapshot deleted",
        &[
            "get",
            "cstorsnapshot",
            "csi-clone-cloned",
            "-n",
            "openebs",
            "--ignore-not-found",
            "-o",
            "jsonpath={.metadata.name} {.metadata.deletionTimestamp}",
        ],
        // Gone (empty), or being deleted (name and deletion time).
        |v| v.is_empty() || v.split_whitespace().count() == 2,
        long,
    );
}
