//! End-to-end test of `cstor apiserver` with the real kubectl (1.32): the seeds' YAML
//! applied verbatim, `kubectl get` columns (also -o wide), -o yaml, -l, -w, describe
//! with events, patches (merge, strategic, JSON, status subresource), edit through
//! KUBE_EDITOR, replace with a stale resourceVersion (409), delete with a finalizer,
//! wait --for=jsonpath, apply --server-side, bad objects rejected with the field named,
//! namespace deletion, 401 without the token. Skips (with a message) without kubectl.

mod apiserver_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use apiserver_support::{fixture, kubectl_server, ApiServer};

fn setup() -> Option<(tempfile::TempDir, ApiServer)> {
    kubectl_server()
}

fn header_of(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn kubectl_drives_seed_workflow() {
    let Some((dir, s)) = setup() else { return };
    // The real generated CRDs (deploy/crds), applied with kubectl, are served at once.
    s.ok(&["apply", "-f", &real_crds()]);
    let crds = s.ok(&["get", "crd"]);
    assert!(
        crds.contains("cstorpoolclusters.cstor.openebs.io"),
        "{crds}"
    );
    s.ok(&["create", "namespace", "openebs"]);
    s.ok(&["create", "namespace", "database"]);
    s.ok(&[
        "create",
        "secret",
        "generic",
        "postgres-secret",
        "--namespace",
        "database",
        "--from-literal=password=supersecretpassword",
    ]);
    let secret = s.ok(&[
        "get",
        "secret",
        "postgres-secret",
        "-n",
        "database",
        "-o",
        "jsonpath={.data.password} {.type}",
    ]);
    assert_eq!(secret, "c3VwZXJzZWNyZXRwYXNzd29yZA== Opaque");
    s.ok(&["apply", "-f", &fixture("seeds.yaml")]);
    let out = s.kubectl(&["apply", "-f", &fixture("database.yaml")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no workload runs"),
        "statefulset warning missing"
    );

    // Columns.
    let cspc = s.ok(&["get", "cstorpoolclusters.cstor.openebs.io", "-n", "openebs"]);
    assert_eq!(
        header_of(&cspc),
        [
            "NAME",
            "HEALTHYINSTANCES",
            "PROVISIONEDINSTANCES",
            "DESIREDINSTANCES",
            "AGE"
        ]
    );
    assert!(cspc.contains("cstor-pool-stripe"));
    let alpha = s.ok(&[
        "get",
        "cstorpoolclusters.openebs.io",
        "-n",
        "openebs",
        "-o",
        "jsonpath={.items[0].spec.pools[0].raidGroups[0].type}",
    ]);
    assert_eq!(alpha, "stripe");
    let sc = s.ok(&["get", "storageclass"]);
    assert_eq!(
        header_of(&sc),
        [
            "NAME",
            "PROVISIONER",
            "RECLAIMPOLICY",
            "VOLUMEBINDINGMODE",
            "ALLOWVOLUMEEXPANSION",
            "AGE"
        ]
    );
    assert!(sc.contains("cstor-csi-3-replicas") && sc.contains("cstor.csi.openebs.io"));
    let pvc = s.ok(&["-n", "database", "get", "pvc"]);
    assert!(
        pvc.contains("postgres-data")
            && pvc.contains("Pending")
            && pvc.contains("cstor-csi-3-replicas"),
        "{pvc}"
    );
    let vs = s.ok(&["get", "volumesnapshot", "-n", "database"]);
    assert!(
        vs.contains("postgres-snapshot-daily") && vs.contains("postgres-data"),
        "{vs}"
    );
    let quota = s.ok(&["describe", "quota", "storage-quota", "-n", "database"]);
    assert!(
        quota.contains("requests.storage") && quota.contains("50Gi") && quota.contains("500Gi"),
        "{quota}"
    );

    // CSPI printer columns, also -o wide, status subresource patch, -w and wait --for=jsonpath.
    s.ok(&[
        "apply",
        "--server-side",
        "-f",
        &write(&dir, "cspi.yaml", CSPI),
    ]);
    let cspi = s.ok(&["get", "cspi", "-n", "openebs"]);
    assert_eq!(
        header_of(&cspi),
        [
            "NAME",
            "HOSTNAME",
            "FREE",
            "CAPACITY",
            "READONLY",
            "PROVISIONEDREPLICAS",
            "HEALTHYREPLICAS",
            "STATUS",
            "AGE"
        ]
    );
    let wide = s.ok(&["get", "cspi", "-n", "openebs", "-o", "wide"]);
    assert!(
        header_of(&wide).contains(&"ALLOCATED".to_string())
            && header_of(&wide).contains(&"TYPE".to_string()),
        "{wide}"
    );
    let watcher = spawn_kubectl(
        &s,
        &["get", "cspi", "-n", "openebs", "-w", "--request-timeout=8s"],
    );
    let waiter = spawn_kubectl(
        &s,
        &[
            "wait",
            "--for=jsonpath={.status.phase}=ONLINE",
            "cspi/pool-a-1",
            "-n",
            "openebs",
            "--timeout=20s",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    s.ok(&["patch", "cspi", "pool-a-1", "-n", "openebs", "--subresource=status", "--type=merge", "-p",
        r#"{"status":{"phase":"ONLINE","capacity":{"free":"9G","total":"10G","used":"1G"},"readOnly":false,"provisionedReplicas":1,"healthyReplicas":1}}"#]);
    let waited = waiter.wait_with_output().unwrap();
    assert!(
        waited.status.success(),
        "wait failed: {}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let watched = watcher.wait_with_output().unwrap();
    let watched = String::from_utf8_lossy(&watched.stdout);
    assert!(
        watched
            .lines()
            .any(|l| l.contains("pool-a-1") && l.contains("ONLINE") && l.contains("9G")),
        "watch output: {watched}"
    );
    let row = s.ok(&["get", "cspi", "pool-a-1", "-n", "openebs", "--no-headers"]);
    assert!(
        row.contains("worker-01") && row.contains("10G") && row.contains("ONLINE"),
        "{row}"
    );

    // Label selector and -o yaml.
    s.ok(&[
        "label",
        "cstorpoolclusters.cstor.openebs.io",
        "cstor-pool-stripe",
        "-n",
        "openebs",
        "tier=gold",
    ]);
    let labelled = s.ok(&[
        "get",
        "cstorpoolclusters.cstor.openebs.io",
        "-n",
        "openebs",
        "-l",
        "tier=gold",
        "-o",
        "name",
    ]);
    assert_eq!(
        labelled.trim(),
        "cstorpoolcluster.cstor.openebs.io/cstor-pool-stripe"
    );
    assert!(s
        .ok(&[
            "get",
            "cstorpoolclusters.cstor.openebs.io",
            "-n",
            "openebs",
            "-l",
            "tier=silver",
            "-o",
            "name"
        ])
        .trim()
        .is_empty());
    let yaml = s.ok(&[
        "get",
        "cstorpoolclusters.cstor.openebs.io",
        "cstor-pool-stripe",
        "-n",
        "openebs",
        "-o",
        "yaml",
    ]);
    assert!(
        yaml.contains("dataRaidGroupType: stripe")
            && yaml.contains("resourceVersion:")
            && yaml.contains("uid:"),
        "{yaml}"
    );

    // The storage loops: a claim of a CSI StorageClass gets the provisioner annotations
    // the external-provisioner waits for; a volume made for it binds it.
    s.ok(&[
        "wait",
        "--for=jsonpath={.metadata.annotations.volume\\.kubernetes\\.io/storage-provisioner}=cstor.csi.openebs.io",
        "pvc/postgres-data",
        "-n",
        "database",
        "--timeout=10s",
    ]);
    let beta = s.ok(&[
        "get",
        "pvc",
        "postgres-data",
        "-n",
        "database",
        "-o",
        "jsonpath={.metadata.annotations.volume\\.beta\\.kubernetes\\.io/storage-provisioner}",
    ]);
    assert_eq!(beta, "cstor.csi.openebs.io");
    let err = s.fails(&[
        "patch",
        "pvc",
        "postgres-data",
        "-n",
        "database",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"60Gi"}}}}"#,
    ]);
    assert!(
        err.contains("spec is immutable"),
        "an unbound claim cannot be resized: {err}"
    );
    s.ok(&["apply", "-f", &write(&dir, "pv.yaml", CSI_PV)]);
    s.ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Bound",
        "pvc/postgres-data",
        "-n",
        "database",
        "--timeout=10s",
    ]);
    s.ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Bound",
        "pv/pvc-postgres",
        "--timeout=10s",
    ]);
    let pvc = s.ok(&["-n", "database", "get", "pvc", "postgres-data"]);
    assert!(
        pvc.contains("Bound") && pvc.contains("pvc-postgres") && pvc.contains("50Gi"),
        "{pvc}"
    );
    let claim = s.ok(&[
        "get",
        "pv",
        "pvc-postgres",
        "-o",
        "jsonpath={.spec.claimRef.namespace}/{.spec.claimRef.name}",
    ]);
    assert_eq!(claim, "database/postgres-data");
    // A static volume and claim of a class without a provisioner bind too.
    s.ok(&["apply", "-f", &write(&dir, "static.yaml", STATIC_PV_PVC)]);
    s.ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Bound",
        "pvc/static-claim",
        "-n",
        "default",
        "--timeout=10s",
    ]);
    assert_eq!(
        s.ok(&[
            "get",
            "pvc",
            "static-claim",
            "-o",
            "jsonpath={.spec.volumeName}"
        ]),
        "static-pv"
    );

    // Strategic merge on a built-in: finalizers merge as a set; merge and JSON patch on a CR.
    s.ok(&[
        "patch",
        "pvc",
        "postgres-data",
        "-n",
        "database",
        "-p",
        r#"{"metadata":{"finalizers":["a.io/x"]}}"#,
    ]);
    s.ok(&[
        "patch",
        "pvc",
        "postgres-data",
        "-n",
        "database",
        "-p",
        r#"{"metadata":{"finalizers":["b.io/y"]}}"#,
    ]);
    let fins = s.ok(&[
        "get",
        "pvc",
        "postgres-data",
        "-n",
        "database",
        "-o",
        "jsonpath={.metadata.finalizers}",
    ]);
    assert_eq!(fins, r#"["a.io/x","b.io/y"]"#);
    s.ok(&[
        "patch",
        "pvc",
        "postgres-data",
        "-n",
        "database",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"100Gi"}}}}"#,
    ]);
    let quota = s.ok(&["describe", "quota", "storage-quota", "-n", "database"]);
    assert!(
        quota.contains("100Gi"),
        "resize charged to the quota: {quota}"
    );
    s.ok(&[
        "wait",
        "--for=jsonpath={.metadata.annotations.volume\\.kubernetes\\.io/storage-resizer}=cstor.csi.openebs.io",
        "pvc/postgres-data",
        "-n",
        "database",
        "--timeout=10s",
    ]);
    let big = write(&dir, "big.yaml", BIG_PVC);
    let err = s.fails(&["apply", "-f", &big]);
    assert!(
        err.contains("exceeded quota: storage-quota")
            && err.contains("limited: requests.storage=500Gi"),
        "{err}"
    );
    let err = s.fails(&[
        "patch",
        "pvc",
        "postgres-data",
        "-n",
        "database",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"1Gi"}}}}"#,
    ]);
    assert!(err.contains("can not be less than"), "{err}");
    s.ok(&[
        "patch",
        "cstorpoolclusters.cstor.openebs.io",
        "cstor-pool-stripe",
        "-n",
        "openebs",
        "--type=merge",
        "-p",
        r#"{"metadata":{"annotations":{"a":"b"}}}"#,
    ]);
    s.ok(&["patch", "cstorpoolclusters.cstor.openebs.io", "cstor-pool-stripe", "-n", "openebs", "--type=json", "-p",
        r#"[{"op":"replace","path":"/spec/pools/0/poolConfig/dataRaidGroupType","value":"mirror"}]"#]);
    let gen = s.ok(&[
        "get",
        "cstorpoolclusters.cstor.openebs.io",
        "cstor-pool-stripe",
        "-n",
        "openebs",
        "-o",
        "jsonpath={.metadata.generation}",
    ]);
    assert_eq!(gen, "2", "generation moves with spec only");
    let smp = s.fails(&[
        "patch",
        "cstorpoolclusters.cstor.openebs.io",
        "cstor-pool-stripe",
        "-n",
        "openebs",
        "--type=strategic",
        "-p",
        r#"{"spec":{}}"#,
    ]);
    assert!(smp.contains("merge-patch"), "{smp}");

    // Edit through KUBE_EDITOR.
    let editor = write(
        &dir,
        "editor.sh",
        "#!/bin/sh\nsed -i 's/dataRaidGroupType: mirror/dataRaidGroupType: raidz/' \"$1\"\n",
    );
    set_exec(&editor);
    let out = s.kubectl_env(
        &[
            "edit",
            "cstorpoolclusters.cstor.openebs.io",
            "cstor-pool-stripe",
            "-n",
            "openebs",
        ],
        &[("KUBE_EDITOR", &editor)],
    );
    assert!(
        out.status.success(),
        "edit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = s.ok(&[
        "get",
        "cstorpoolclusters.cstor.openebs.io",
        "cstor-pool-stripe",
        "-n",
        "openebs",
        "-o",
        "jsonpath={.spec.pools[0].poolConfig.dataRaidGroupType}",
    ]);
    assert_eq!(t, "raidz");

    // Replace with a stale resourceVersion: 409.
    let stale = s.ok(&[
        "get",
        "cstorpoolclusters.cstor.openebs.io",
        "cstor-pool-stripe",
        "-n",
        "openebs",
        "-o",
        "yaml",
    ]);
    let stale_path = write(&dir, "stale.yaml", &stale);
    s.ok(&[
        "label",
        "cstorpoolclusters.cstor.openebs.io",
        "cstor-pool-stripe",
        "-n",
        "openebs",
        "moved=yes",
    ]);
    let err = s.fails(&["replace", "-f", &stale_path]);
    assert!(
        err.contains("Conflict") && err.contains("the object has been modified"),
        "{err}"
    );

    // Bad objects: bad enum and missing required field, even with --validate=false; unknown field.
    let bad = write(&dir, "bad.yaml", BAD_ENUM);
    let err = s.fails(&["apply", "--validate=false", "-f", &bad]);
    assert!(
        err.contains("spec.pools[0].poolConfig.dataRaidGroupType: Unsupported value: \"raid7\""),
        "{err}"
    );
    let bad = write(&dir, "bad2.yaml", MISSING_REQUIRED);
    let err = s.fails(&["create", "--validate=false", "-f", &bad]);
    assert!(
        err.contains("is invalid: spec.pools[0].nodeSelector: Required value"),
        "{err}"
    );
    let bad = write(&dir, "bad3.yaml", UNKNOWN_FIELD);
    let err = s.fails(&["create", "-f", &bad]);
    assert!(err.contains("unknown field \"spec.bogus\""), "{err}");

    // Events and describe.
    let uid = s.ok(&[
        "get",
        "cspi",
        "pool-a-1",
        "-n",
        "openebs",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    s.ok(&[
        "create",
        "-f",
        &write(&dir, "event.yaml", &EVENT.replace("UID", &uid)),
    ]);
    let described = s.ok(&["describe", "cspi", "pool-a-1", "-n", "openebs"]);
    assert!(
        described.contains("PoolCreated") && described.contains("pool imported"),
        "{described}"
    );
    let evs = s.ok(&[
        "get",
        "events",
        "-n",
        "openebs",
        "--field-selector",
        "involvedObject.name=pool-a-1",
    ]);
    assert!(evs.contains("PoolCreated"), "{evs}");
    // Only the fields a kind supports select, as on kube-apiserver (400 otherwise).
    let err = s.fails(&["get", "configmaps", "-A", "--field-selector", "data.x=1"]);
    assert!(err.contains("field label not supported: data.x"), "{err}");

    // Delete with a finalizer: stays with a deletionTimestamp until the finalizer goes.
    s.ok(&[
        "patch",
        "cspi",
        "pool-a-1",
        "-n",
        "openebs",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["cstor.openebs.io/pool-protection"]}}"#,
    ]);
    s.ok(&[
        "delete",
        "cspi",
        "pool-a-1",
        "-n",
        "openebs",
        "--wait=false",
    ]);
    let ts = s.ok(&[
        "get",
        "cspi",
        "pool-a-1",
        "-n",
        "openebs",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!ts.is_empty());
    s.ok(&[
        "patch",
        "cspi",
        "pool-a-1",
        "-n",
        "openebs",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    s.ok(&[
        "wait",
        "--for=delete",
        "cspi/pool-a-1",
        "-n",
        "openebs",
        "--timeout=10s",
    ]);

    // Namespace deletion removes its objects; the PVC's finalizers hold it in Terminating.
    s.ok(&["delete", "namespace", "database", "--wait=false"]);
    s.ok(&[
        "wait",
        "--for=jsonpath={.status.phase}=Terminating",
        "namespace/database",
        "--timeout=10s",
    ]);
    s.ok(&[
        "wait",
        "--for=delete",
        "statefulset/postgres",
        "-n",
        "database",
        "--timeout=10s",
    ]);
    let err = s.fails(&["create", "configmap", "late", "-n", "database"]);
    assert!(err.contains("is being terminated"), "{err}");
    s.ok(&[
        "patch",
        "pvc",
        "postgres-data",
        "-n",
        "database",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    s.ok(&[
        "wait",
        "--for=delete",
        "namespace/database",
        "--timeout=10s",
    ]);
    let err = s.fails(&["get", "pvc", "postgres-data", "-n", "database"]);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    let err = s.fails(&["get", "namespace", "database"]);
    assert!(err.contains("not found"), "{err}");
}

/// `kubectl auth can-i` (SelfSubjectAccessReview), anonymous health checks and version
/// as a real cluster allows them, and `--chunk-size` lists.
#[test]
fn kubectl_auth_can_i_health_checks_and_chunked_lists() {
    let Some((_dir, s)) = setup() else { return };
    assert_eq!(
        s.ok(&["auth", "can-i", "create", "persistentvolumeclaims"])
            .trim(),
        "yes"
    );
    assert_eq!(
        s.ok(&["auth", "can-i", "delete", "csidrivers.storage.k8s.io"])
            .trim(),
        "yes"
    );
    // Anonymous: no Authorization header at all (kubectl would prompt for a user).
    for path in ["/healthz", "/readyz", "/livez", "/version"] {
        let out = Command::new("curl")
            .args(["-sSfk", &format!("https://127.0.0.1:{}{path}", s.port)])
            .output()
            .expect("curl (scripts/lib.sh ensure_python_clients installs it)");
        assert!(
            out.status.success(),
            "anonymous {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for i in 0..5 {
        s.ok(&["create", "configmap", &format!("chunk-{i}")]);
    }
    let names = s.ok(&["get", "configmaps", "--chunk-size=2", "-o", "name"]);
    let got: Vec<&str> = names.lines().filter(|l| l.contains("chunk-")).collect();
    assert_eq!(got.len(), 5, "{names}");
    let table = s.ok(&["get", "configmaps", "--chunk-size=1"]);
    assert_eq!(
        table.lines().filter(|l| l.starts_with("chunk-")).count(),
        5,
        "{table}"
    );
    // The CSI kinds the sidecars use are served.
    for kind in [
        "csidrivers",
        "csinodes",
        "volumeattachments",
        "csistoragecapacities",
        "services",
        "endpoints",
        "endpointslices",
    ] {
        s.ok(&["get", kind]);
    }
}

#[test]
fn requests_without_the_token_get_401_and_kubeconfig_is_private() {
    let Some((_dir, s)) = setup() else { return };
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.kubeconfig())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let out = Command::new("kubectl")
        .args([
            "--server",
            &format!("https://127.0.0.1:{}", s.port),
            "--insecure-skip-tls-verify",
            "--token",
            "wrong",
            "get",
            "ns",
        ])
        .env("KUBECONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("provide credentials"), "{err}");
    let ns = s.ok(&["get", "ns"]);
    assert!(ns.contains("default") && ns.contains("Active"));
}

fn spawn_kubectl(s: &ApiServer, args: &[&str]) -> std::process::Child {
    Command::new("kubectl")
        .env("KUBECONFIG", s.kubeconfig())
        .arg("--cache-dir")
        .arg(&s.cache_dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The CRDs generated from crates/api, as deployed on a real cluster.
fn real_crds() -> String {
    format!("{}/../../deploy/crds", env!("CARGO_MANIFEST_DIR"))
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn set_exec(path: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const CSPI: &str = "apiVersion: cstor.openebs.io/v1
kind: CStorPoolInstance
metadata:
  name: pool-a-1
  namespace: openebs
  labels: {openebs.io/cstor-pool-cluster: cstor-pool-stripe}
spec:
  hostName: worker-01
  nodeSelector: {kubernetes.io/hostname: worker-01}
  dataRaidGroups:
  - blockDevices: [{blockDeviceName: blockdevice-1a2b3c4d-5e6f-7g8h-9i0j-k1l2m3n4}]
  poolConfig: {dataRaidGroupType: stripe}
";

const CSI_PV: &str = "apiVersion: v1
kind: PersistentVolume
metadata:
  name: pvc-postgres
  annotations: {pv.kubernetes.io/provisioned-by: cstor.csi.openebs.io}
spec:
  storageClassName: cstor-csi-3-replicas
  capacity: {storage: 50Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  csi: {driver: cstor.csi.openebs.io, volumeHandle: pvc-postgres, fsType: ext4}
";

const STATIC_PV_PVC: &str = "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: manual}
provisioner: kubernetes.io/no-provisioner
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: static-pv}
spec:
  storageClassName: manual
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: /tmp/static-pv}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: static-claim, namespace: default}
spec:
  storageClassName: manual
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
";

const BIG_PVC: &str = "apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: too-big, namespace: database}
spec:
  storageClassName: cstor-csi-3-replicas
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 450Gi}}
";

const BAD_ENUM: &str = "apiVersion: cstor.openebs.io/v1
kind: CStorPoolCluster
metadata: {name: bad, namespace: openebs}
spec:
  pools:
  - nodeSelector: {a: b}
    dataRaidGroups: [{blockDevices: [{blockDeviceName: bd-1}]}]
    poolConfig: {dataRaidGroupType: raid7}
";

const MISSING_REQUIRED: &str = "apiVersion: cstor.openebs.io/v1
kind: CStorPoolCluster
metadata: {name: bad2, namespace: openebs}
spec:
  pools:
  - dataRaidGroups: [{blockDevices: [{blockDeviceName: bd-1}]}]
    poolConfig: {dataRaidGroupType: mirror}
";

const UNKNOWN_FIELD: &str = "apiVersion: cstor.openebs.io/v1
kind: CStorPoolCluster
metadata: {name: bad3, namespace: openebs}
spec:
  bogus: 1
  pools:
  - nodeSelector: {a: b}
    dataRaidGroups: [{blockDevices: [{blockDeviceName: bd-1}]}]
";

const EVENT: &str = "apiVersion: v1
kind: Event
metadata: {name: pool-a-1.1, namespace: openebs}
involvedObject: {apiVersion: cstor.openebs.io/v1, kind: CStorPoolInstance, name: pool-a-1, namespace: openebs, uid: UID}
reason: PoolCreated
message: pool imported
type: Normal
source: {component: cstor-pool}
";

/// `kubectl logs` for Pods whose logs are files in the server's pod-log dir: the default
/// file name, an annotation, --tail, --since, -c, --previous, -f until the Pod goes.
#[test]
fn kubectl_logs_reads_pod_log_files() {
    let Some((dir, s)) = setup() else { return };
    let logs = s.data_dir.join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stamp = |secs_ago: u64| {
        let out = Command::new("date")
            .args([
                "-u",
                "-d",
                &format!("@{}", now - secs_ago),
                "+%Y-%m-%dT%H:%M:%SZ",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    std::fs::write(
        logs.join("default_agent_main.log"),
        format!(
            "{} INFO old line\n{} INFO recent one\n{} INFO newest\n",
            stamp(7200),
            stamp(60),
            stamp(5)
        ),
    )
    .unwrap();
    std::fs::write(
        logs.join("default_agent_main.log.1"),
        "before the restart\n",
    )
    .unwrap();
    std::fs::write(logs.join("sidecar-file.log"), "sidecar says hi\n").unwrap();
    let pod = dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: agent\n  annotations:\n    cstor.openebs.io/log-path.side: {}\nspec:\n  containers:\n  - name: main\n    image: cstor\n  - name: side\n    image: cstor\n",
            logs.join("sidecar-file.log").display()
        ),
    )
    .unwrap();
    s.ok(&["apply", "-f", pod.to_str().unwrap()]);
    let all = s.ok(&["logs", "agent", "-c", "main"]);
    assert_eq!(all.lines().count(), 3, "{all}");
    assert_eq!(
        s.ok(&["logs", "agent", "-c", "main", "--tail=1"])
            .trim_end(),
        format!("{} INFO newest", stamp(5))
    );
    let since = s.ok(&["logs", "agent", "-c", "main", "--since=10m"]);
    assert!(
        !since.contains("old line") && since.contains("recent one"),
        "{since}"
    );
    assert_eq!(s.ok(&["logs", "agent", "-c", "side"]), "sidecar says hi\n");
    assert_eq!(
        s.ok(&["logs", "agent", "-c", "main", "--previous"]),
        "before the restart\n"
    );
    let err = s.fails(&["logs", "agent", "-c", "nope"]);
    assert!(
        err.contains("container nope is not valid for pod agent"),
        "{err}"
    );
    // Follow: a line appended shows up; deleting the Pod ends the stream.
    let mut follow = Command::new("kubectl")
        .env("KUBECONFIG", s.kubeconfig())
        .arg("--cache-dir")
        .arg(&s.cache_dir)
        .args(["logs", "-f", "agent", "-c", "main", "--tail=0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = follow.stdout.take().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(logs.join("default_agent_main.log"))
            .unwrap();
        writeln!(f, "{} INFO appended while following", stamp(0)).unwrap();
    }
    let reader = std::thread::spawn(move || {
        let mut got = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut got);
        got
    });
    std::thread::sleep(Duration::from_millis(700));
    s.ok(&["delete", "pod", "agent", "--wait=false"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while follow.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = follow.kill();
            panic!("kubectl logs -f did not end after the Pod was deleted");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = reader.join().unwrap();
    assert!(got.contains("appended while following"), "{got}");
    assert!(
        !got.contains("recent one"),
        "--tail=0 printed old lines: {got}"
    );
}

/// The monitoring.coreos.com CRDs (deploy/monitoring/crds.yaml) are served once
/// installed: a ServiceMonitor and a PrometheusRule are created and listed, by plural
/// and short name, and a rule without its expr is refused with the field named.
#[test]
fn kubectl_serves_servicemonitor_and_prometheusrule() {
    let Some((dir, s)) = setup() else { return };
    let crds = format!(
        "{}/../../deploy/monitoring/crds.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    s.ok(&["apply", "-f", &crds]);
    s.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
        "--timeout=20s",
    ]);
    let objs = dir.path().join("monitoring.yaml");
    std::fs::write(
        &objs,
        "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: cstor-pools\nspec:\n  selector:\n    matchLabels:\n      app: cstor-pool\n  namespaceSelector:\n    any: true\n  endpoints:\n  - port: metrics\n    path: /metrics\n    interval: 30s\n---\napiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: cstor-alerts\nspec:\n  groups:\n  - name: cstor\n    rules:\n    - alert: PoolDegraded\n      expr: cstor_pool_degraded > 0\n      for: 5m\n      labels:\n        severity: warning\n",
    )
    .unwrap();
    s.ok(&["apply", "-f", objs.to_str().unwrap()]);
    let list = s.ok(&["get", "servicemonitors"]);
    assert!(list.contains("cstor-pools"), "{list}");
    assert!(s.ok(&["get", "smon"]).contains("cstor-pools"));
    let rules = s.ok(&[
        "get",
        "prometheusrules",
        "-o",
        "jsonpath={.items[0].spec.groups[0].rules[0].alert}",
    ]);
    assert_eq!(rules, "PoolDegraded");
    assert!(s.ok(&["get", "promrule"]).contains("cstor-alerts"));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: bad\nspec:\n  groups:\n  - name: g\n    rules:\n    - alert: NoExpr\n",
    )
    .unwrap();
    let err = s.fails(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("expr"), "{err}");
    let bad_interval = dir.path().join("bad2.yaml");
    std::fs::write(
        &bad_interval,
        "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: bad\nspec:\n  selector: {}\n  endpoints:\n  - port: metrics\n    interval: thirty\n",
    )
    .unwrap();
    let err = s.fails(&["apply", "-f", bad_interval.to_str().unwrap()]);
    assert!(err.contains("interval"), "{err}");
}

const GADGET_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.test.cstor.io
spec:
  group: test.cstor.io
  scope: Namespaced
  names: {kind: Gadget, plural: gadgets, singular: gadget, listKind: GadgetList}
  versions:
  - name: v1
    served: true
    storage: true
    selectableFields:
    - jsonPath: .spec.color
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              color: {type: string}
              disks:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [node]
                items:
                  type: object
                  required: [node]
                  properties:
                    node: {type: string}
                    size: {type: integer}
"#;

fn gadget_yaml(name: &str, color: &str, disks: &[(&str, u32)]) -> String {
    let disks: Vec<String> = disks
        .iter()
        .map(|(n, s)| format!("  - {{node: {n}, size: {s}}}\n"))
        .collect();
    format!(
        "apiVersion: test.cstor.io/v1\nkind: Gadget\nmetadata: {{name: {name}}}\nspec:\n  color: {color}\n  disks:\n{}",
        disks.concat()
    )
}

#[test]
fn kubectl_server_side_apply_merges_map_lists_and_selects_crd_fields() {
    let Some((dir, s)) = setup() else { return };
    s.ok(&["apply", "-f", &write(&dir, "crd.yaml", GADGET_CRD)]);
    s.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/gadgets.test.cstor.io",
        "--timeout=60s",
    ]);
    let ssa = |manager: &str, file: &str, text: &str, extra: &[&str]| {
        let path = write(&dir, file, text);
        let mut args = vec!["apply", "--server-side", "--field-manager", manager, "-f"];
        args.push(&path);
        args.extend_from_slice(extra);
        s.kubectl(&args)
    };
    let ssa_ok = |manager: &str, file: &str, text: &str, extra: &[&str]| {
        let out = ssa(manager, file, text, extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{manager} {file}: {err}");
    };
    let no_disks =
        |name: &str, color: &str| gadget_yaml(name, color, &[]).replace("  disks:\n", "");
    ssa_ok(
        "alice",
        "a.yaml",
        &gadget_yaml("g", "red", &[("n1", 1)]),
        &[],
    );
    // bob applies another disk and alice's color: the disks merge by node; same color, no
    // conflict.
    ssa_ok("bob", "b.yaml", &gadget_yaml("g", "red", &[("n2", 2)]), &[]);
    let disks = s.ok(&["get", "gadget", "g", "-o", "jsonpath={.spec.disks[*].node}"]);
    assert_eq!(disks, "n1 n2");
    // bob changing the color conflicts with alice (kubectl prints the conflict).
    let blue = gadget_yaml("g", "blue", &[("n2", 2)]);
    let out = ssa("bob", "b2.yaml", &blue, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("conflict") && err.contains("alice") && err.contains(".spec.color"),
        "{err}"
    );
    ssa_ok("bob", "b2.yaml", &blue, &["--force-conflicts"]);
    // alice drops her disk: only bob's remains.
    ssa_ok("alice", "a2.yaml", &no_disks("g", "blue"), &[]);
    let disks = s.ok(&["get", "gadget", "g", "-o", "jsonpath={.spec.disks[*].node}"]);
    assert_eq!(disks, "n2");
    // --field-selector on the CRD's selectable field; an undeclared field is refused.
    ssa_ok("alice", "r.yaml", &no_disks("r", "red"), &[]);
    let blues = s.ok(&[
        "get",
        "gadgets",
        "--field-selector",
        "spec.color=blue",
        "-o",
        "name",
    ]);
    assert_eq!(blues.trim(), "gadget.test.cstor.io/g");
    let err = s.fails(&["get", "gadgets", "--field-selector", "spec.disks=x"]);
    assert!(
        err.contains("field label not supported: spec.disks"),
        "{err}"
    );
}

/// A CHAP Secret as users write one (docs/csi.md § Security): `stringData` over `data`.
fn chap_secret(data: &str, string_data: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: chap\n  namespace: default\n{data}{string_data}"
    )
}

#[test]
fn kubectl_secret_string_data_is_folded_into_data_on_every_write() {
    let Some((dir, s)) = setup() else { return };
    // Each key decoded, and whether stringData is anywhere in the object.
    let shown = || {
        let t = "{{range $k, $v := .data}}{{$k}}={{$v | base64decode}} {{end}}{{if .stringData}}stringData{{end}}";
        s.ok(&["get", "secret", "chap", "-o", &format!("go-template={t}")])
            .trim()
            .to_owned()
    };
    // "b2xk" is "old": stringData's key wins over data's, data's others stay.
    let first = chap_secret(
        "data:\n  node.session.auth.username: b2xk\n  keep: b2xk\n",
        "stringData:\n  node.session.auth.username: app\n  node.session.auth.password: p1\n",
    );
    let dry = s.ok(&[
        "create",
        "--dry-run=server",
        "-o",
        "jsonpath={.data.node\\.session\\.auth\\.username} {.stringData}",
        "-f",
        &write(&dir, "dry.yaml", &first),
    ]);
    assert_eq!(dry.trim(), "YXBw", "a dry run answers folded too");
    s.ok(&["apply", "-f", &write(&dir, "s1.yaml", &first)]);
    assert_eq!(
        shown(),
        "keep=old node.session.auth.password=p1 node.session.auth.username=app"
    );
    // Client-side apply again (a three-way strategic patch), a merge patch, a replace
    // and a server-side apply: each folds, and nothing keeps stringData.
    let second = first.replace("password: p1", "password: p2");
    s.ok(&["apply", "-f", &write(&dir, "s2.yaml", &second)]);
    assert!(shown().contains("password=p2"), "{}", shown());
    s.ok(&[
        "patch",
        "secret",
        "chap",
        "--type=merge",
        "-p",
        r#"{"stringData":{"node.session.auth.password":"p3"}}"#,
    ]);
    assert!(shown().contains("password=p3"), "{}", shown());
    let replaced = chap_secret("", "stringData:\n  node.session.auth.password: p4\n");
    s.ok(&["replace", "-f", &write(&dir, "s3.yaml", &replaced)]);
    assert_eq!(
        shown(),
        "node.session.auth.password=p4",
        "a replace's data is its own"
    );
    let applied = chap_secret("", "stringData:\n  node.session.auth.username: ssa\n");
    s.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &write(&dir, "s4.yaml", &applied),
    ]);
    assert!(shown().contains("username=ssa"), "{}", shown());
    // A value Go cannot decode as a string is refused as kube-apiserver refuses it.
    let bad = chap_secret("", "stringData:\n  port: 3260\n").replace("name: chap", "name: bad");
    let err = s.fails(&["create", "-f", &write(&dir, "bad.yaml", &bad)]);
    assert!(
        err.contains("BadRequest")
            && err.contains(
                "cannot unmarshal number into Go struct field Secret.stringData of type string"
            ),
        "{err}"
    );
}
