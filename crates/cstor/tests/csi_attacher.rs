//! The embedded external-attacher and per-volume CHAP from Secrets, against `cstor up`
//! (docs/csi.md § Sidecars, § Security, § cstor attach): a class with the standard
//! `csi.storage.k8s.io/controller-publish-secret-*` and `node-stage-secret-*`
//! parameters; its PV names both Secrets; `cstor attach` only creates the
//! VolumeAttachment and waits (with the sidecars stopped it times out saying no attacher
//! took it); the attacher puts its finalizers on, publishes with the Secret, records the
//! publish context; the target then refuses a login without the credentials, or with
//! wrong ones, even from the published node's initiator name; a node-stage Secret with a
//! wrong password fails the stage with the target's refusal; `cstor detach` waits until
//! the attacher let the VolumeAttachment go, and CHAP goes with the publish. Last, the
//! volume attached again, `cstor up` stops and takes its attach down: no attach
//! process, loop device or mount under its directory remains.

mod apiserver_support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use apiserver_support::claim::{cstor, text};
use apiserver_support::seed::seed_yaml;
use apiserver_support::up::Up;
use apiserver_support::{have_kubectl, required};

const PASSWORD: &str = "s3cret-of-16-ch";
const FINALIZER: &str = "external-attacher/cstor-csi-openebs-io";

/// `cstor attach|detach data -n database --node NODE [--mount DIR] EXTRA...`.
/// Sets the node-stage CHAP Secret's password.
fn set_stage_password(up: &Up, password: &str) {
    let patch = format!(r#"{{"stringData":{{"node.session.auth.password":"{password}"}}}}"#);
    let (ok, out) = up.kubectl(&[
        "patch",
        "secret",
        "-n",
        "database",
        "chap-stage",
        "--type=merge",
        "-p",
        &patch,
    ]);
    assert!(ok, "{out}");
}

fn attach(up: &Up, node: &str, mount: Option<&Path>, extra: &[&str]) -> Output {
    let dir = up.dir.display().to_string();
    let m = mount.map(|m| m.display().to_string());
    let mut args = vec![
        if m.is_some() { "attach" } else { "detach" },
        "data",
        "-n",
        "database",
        "--node",
        node,
        "--dir",
        &dir,
    ];
    if let Some(m) = &m {
        args.extend(["--mount", m]);
    }
    args.extend(extra);
    cstor(&args)
}

/// A normal-session login to the volume's target as node-1's initiator, with optional
/// CHAP `(user, secret)`: `cstor initiator attach`, stopped at once if it got in.
fn login(up: &Up, chap: Option<(&str, &str)>) -> (bool, String) {
    let (_, cv) = up.kubectl(&[
        "get",
        "cv",
        "-n",
        "openebs",
        "-o",
        "jsonpath={.items[0].spec.iqn} {.items[0].spec.targetPortal}",
    ]);
    let parts: Vec<&str> = cv.split_whitespace().collect();
    let [iqn, portal] = parts[..] else {
        panic!("CV iqn/portal: {cv:?}");
    };
    let work = up.dir.join("login");
    let _ = std::fs::create_dir_all(&work);
    let secret = up.dir.join("login-secret");
    let mut args = vec![
        "initiator".to_owned(),
        "attach".into(),
        "--portal".into(),
        portal.into(),
        "--target".into(),
        iqn.into(),
        "--initiator-name".into(),
        "iqn.2026-12.io.cstor:node-1".into(),
        "--file-dir".into(),
        work.display().to_string(),
    ];
    if let Some((user, pass)) = chap {
        std::fs::write(&secret, format!("{pass}\n")).unwrap();
        args.extend([
            "--chap-user".into(),
            user.into(),
            "--chap-secret-file".into(),
            secret.display().to_string(),
        ]);
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cstor"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            return (false, text(&out));
        }
        if t0.elapsed() > Duration::from_secs(20) {
            // Logged in and serving: take it down again.
            let _ = cstor(&[
                "initiator",
                "detach",
                "--file-dir",
                &work.display().to_string(),
            ]);
            let out = child.wait_with_output().unwrap();
            return (true, text(&out));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_attacher_publishes_with_the_classes_chap_secret_and_the_target_requires_it() {
    if !required(have_kubectl(), "kubectl") {
        return;
    }
    let t0 = Instant::now();
    let mut up = Up::start_with(3, "1G", &["--attacher-reconcile-sync", "1s"]);
    let long = Duration::from_secs(90);
    up.seed_stripe_pools(long);
    up.kubectl(&["create", "namespace", "database"]);
    // `stringData`, as users write CHAP Secrets: the API server folds it into `data`,
    // which is what the attacher and the node stage read.
    let secret = |name: &str, pass: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: database\n\
             stringData:\n  node.session.auth.username: app\n  node.session.auth.password: {pass}\n"
        )
    };
    up.apply("publish.yaml", &secret("chap-publish", PASSWORD));
    up.apply("stage.yaml", &secret("chap-stage", PASSWORD));
    let sc = seed_yaml("name: cstor-csi-1-replica").replace(
        "parameters:\n",
        "parameters:\n  csi.storage.k8s.io/fstype: xfs\n  \
         csi.storage.k8s.io/controller-publish-secret-name: chap-publish\n  \
         csi.storage.k8s.io/controller-publish-secret-namespace: ${pvc.namespace}\n  \
         csi.storage.k8s.io/node-stage-secret-name: chap-stage\n  \
         csi.storage.k8s.io/node-stage-secret-namespace: ${pvc.namespace}\n",
    );
    up.apply("sc.yaml", &sc);
    up.apply(
        "pvc.yaml",
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n  namespace: database\n\
         spec:\n  storageClassName: cstor-csi-1-replica\n  accessModes: [ReadWriteOnce]\n  \
         resources:\n    requests:\n      storage: 512Mi\n",
    );
    let v = up.wait_for(
        "the claim Bound",
        &[
            "get",
            "pvc",
            "-n",
            "database",
            "data",
            "-o",
            "jsonpath={.status.phase} {.spec.volumeName}",
        ],
        |v| v.starts_with("Bound pvc-"),
        long,
    );
    let pv = v.split_whitespace().nth(1).unwrap().to_owned();
    let refs = up.get(&["get", "pv", &pv, "-o", "jsonpath={.spec.csi.controllerPublishSecretRef.namespace}/{.spec.csi.controllerPublishSecretRef.name} {.spec.csi.nodeStageSecretRef.namespace}/{.spec.csi.nodeStageSecretRef.name}"]);
    assert_eq!(refs, "database/chap-publish database/chap-stage");
    // The kubelet's plugin registration (cstor up plays it): node-1's CSINode.
    up.wait_for(
        "node-1's CSINode",
        &[
            "get",
            "csinode",
            "node-1",
            "-o",
            "jsonpath={.spec.drivers[0].name} {.spec.drivers[0].nodeID}",
        ],
        |v| v == "cstor.csi.openebs.io node-1",
        long,
    );

    // The sidecars stopped: `cstor attach` creates the VolumeAttachment and waits, then
    // says nobody took it.
    let work = up.dir.join("work");
    let mnt = work.join("mnt");
    let pid = up.sidecars_pid();
    // SAFETY: signalling a process of this test's own `cstor up`.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let t1 = Instant::now();
    let out = attach(&up, "node-1", Some(&mnt), &["--timeout", "4s"]);
    let waited = t1.elapsed();
    let va = up.get(&[
        "get",
        "volumeattachment",
        "-o",
        "jsonpath={.items[0].spec.nodeName} {.items[0].metadata.finalizers}",
    ]);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert_eq!(va, "node-1", "created, not taken: {va}");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no attacher has taken it"),
        "{}",
        text(&out)
    );
    assert!(waited < Duration::from_secs(30), "{waited:?}");

    // Resumed: the attacher takes it; attach goes on to stage and publish.
    let out = attach(&up, "node-1", Some(&mnt), &[]);
    assert!(out.status.success(), "attach: {}\n{}", text(&out), up.log());
    let va = up.get(&["get", "volumeattachment", "-o", "jsonpath={.items[0].metadata.finalizers} {.items[0].metadata.annotations.csi\\.alpha\\.kubernetes\\.io/node-id} {.items[0].status.attached} {.items[0].status.attachmentMetadata.iqn}"]);
    assert!(
        va.starts_with(&format!("[\"{FINALIZER}\"] node-1 true iqn.")),
        "{va}"
    );
    let pvf = up.get(&["get", "pv", &pv, "-o", "jsonpath={.metadata.finalizers}"]);
    assert!(pvf.contains(FINALIZER), "{pvf}");
    std::fs::write(mnt.join("hello"), b"through CHAP").unwrap();
    let chap_applied_of = "jsonpath={.metadata.annotations.cstor\\.openebs\\.io/chap-applied}";
    let chap_applied = ["get", "cv", "-n", "openebs", &pv, "-o", chap_applied_of];
    let applied = up.get(&chap_applied);
    assert!(
        applied.starts_with(&format!("cstor-chap-{pv}/")),
        "{applied}"
    );
    let copy = up.get(&[
        "get",
        "secret",
        "-n",
        "openebs",
        &format!("cstor-chap-{pv}"),
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(copy, "CStorVolumeConfig");

    // The target requires the credentials, even from the published node's name.
    let (ok, out) = login(&up, None);
    assert!(!ok && out.contains("authentication failed"), "{out}");
    let (ok, out) = login(&up, Some(("app", "wrong-password-16")));
    assert!(!ok && out.contains("authentication failed"), "{out}");
    // The attached volume is untouched by those attempts.
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"through CHAP");

    // The publish record lost (the VA still says attached): the attacher's reconcile
    // sees ListVolumes disagree and publishes again.
    let record = "jsonpath={.metadata.annotations.cstor\\.openebs\\.io/published-node}";
    let published = ["get", "cvc", "-n", "openebs", &pv, "-o", record];
    let unset = "cstor.openebs.io/published-node-";
    let (ok, out) = up.kubectl(&["annotate", "cvc", "-n", "openebs", &pv, unset]);
    assert!(ok, "{out}");
    let t1 = Instant::now();
    up.wait_for("published again", &published, |v| v == "node-1", long);
    eprintln!(
        "csi_attacher: re-published {:?} after the record went",
        t1.elapsed()
    );
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"through CHAP");

    // Detach with the attacher stopped: the VolumeAttachment stays, deleted with the
    // attacher's finalizer; the attacher killed and restarted (by `cstor up`) unpublishes
    // it and lets it go, and CHAP goes with the publish (the driver's copy of the Secret
    // too).
    let pid = up.sidecars_pid();
    // SAFETY: signalling a process of this test's own `cstor up`.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let out = attach(&up, "node-1", None, &["--timeout", "3s"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("still there at the timeout"),
        "{}",
        text(&out)
    );
    let va = up.get(&[
        "get",
        "volumeattachment",
        "-o",
        "jsonpath={.items[0].metadata.deletionTimestamp} {.items[0].metadata.finalizers}",
    ]);
    assert!(va.ends_with(&format!("[\"{FINALIZER}\"]")), "{va}");
    // SAFETY: as above; a stopped process dies of SIGKILL too.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    up.wait_for(
        "the VolumeAttachment let go after the restart",
        &["get", "volumeattachment", "-o", "name"],
        str::is_empty,
        long,
    );
    assert_ne!(up.sidecars_pid(), pid, "restarted");
    up.wait_for("unpublished", &published, str::is_empty, long);
    up.wait_for(
        "CHAP gone with the publish",
        &chap_applied,
        |v| v.is_empty(),
        long,
    );
    let (ok, _) = up.kubectl(&[
        "get",
        "secret",
        "-n",
        "openebs",
        &format!("cstor-chap-{pv}"),
    ]);
    assert!(!ok, "the driver's copy of the Secret is deleted");

    // A wrong node-stage Secret: the stage fails with the target's refusal.
    set_stage_password(&up, "not-the-password");
    let out = attach(&up, "node-1", Some(&mnt), &["--timeout", "60s"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("NodeStageVolume") && text(&out).contains("authentication failed"),
        "{}",
        text(&out)
    );
    let out = attach(&up, "node-1", None, &[]);
    assert!(out.status.success(), "detach: {}", text(&out));

    // Attached again with the right Secret, then `cstor up` stops: its stop takes the
    // attach down (the volume's loop device, FUSE mount and `cstor initiator attach`
    // process, the publish and staging mounts), says so, and leaves nothing behind.
    set_stage_password(&up, PASSWORD);
    let out = attach(&up, "node-1", Some(&mnt), &["--timeout", "60s"]);
    assert!(out.status.success(), "attach: {}\n{}", text(&out), up.log());
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"through CHAP");
    let dir = up.dir.clone();
    let before = leftovers(&dir);
    assert!(
        !before.0.is_empty() && !before.1.is_empty() && !before.2.is_empty(),
        "attached: {before:?}"
    );
    let t1 = Instant::now();
    up.stop();
    eprintln!("csi_attacher: cstor up stopped in {:?}", t1.elapsed());
    assert_eq!(
        leftovers(&dir),
        (vec![], vec![], vec![]),
        "after cstor up stopped\n{}",
        up.log()
    );
    let log = up.log();
    for l in log.lines().filter(|l| l.contains("attach taken down")) {
        eprintln!("{l}");
    }
    assert!(
        log.contains(&format!(
            "node-1: attach taken down: volume {pv}: unmounted"
        )) && log.contains("attach process"),
        "{log}"
    );

    // Resumed, attached again, then `cstor up` is SIGKILLed: it cannot take the attach
    // down itself; its node plugins, stopped by their parent-death signal, do.
    up.resume();
    // The resumed node agent serves the target again after its first passes (the CV's
    // status may still say Healthy from before the stop): until then the login is refused.
    let t_resumed = Instant::now();
    let mut out = attach(&up, "node-1", Some(&mnt), &["--timeout", "60s"]);
    while !out.status.success()
        && text(&out).contains("target not found")
        && t_resumed.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_secs(1));
        out = attach(&up, "node-1", Some(&mnt), &["--timeout", "60s"]);
    }
    eprintln!(
        "csi_attacher: attached {:?} after the resume",
        t_resumed.elapsed()
    );
    assert!(
        out.status.success(),
        "attach after the resume: {}\n{}",
        text(&out),
        up.log()
    );
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"through CHAP");
    let before = leftovers(&dir);
    assert!(
        !before.0.is_empty() && !before.1.is_empty(),
        "attached: {before:?}"
    );
    up.kill();
    let t2 = Instant::now();
    let mut left = leftovers(&dir);
    while left != (vec![], vec![], vec![]) && t2.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
        left = leftovers(&dir);
    }
    let plugin_log = std::fs::read_to_string(
        dir.join("logs/openebs_openebs-cstor-csi-node-node-1_cstor-csi-plugin.log"),
    )
    .unwrap_or_default();
    assert_eq!(
        left,
        (vec![], vec![], vec![]),
        "after a SIGKILL of cstor up\n{plugin_log}"
    );
    assert!(
        plugin_log.contains("cstor csi: attach taken down: volume"),
        "{plugin_log}"
    );
    eprintln!(
        "csi_attacher: the attach of a SIGKILLed cstor up was gone after {:?}",
        t2.elapsed()
    );
    eprintln!("csi_attacher: {:?}", t0.elapsed());
}

/// What attachments under `dir` hold: (`cstor initiator attach` pids, loop devices over
/// files there, mount points there).
fn leftovers(dir: &Path) -> (Vec<i32>, Vec<String>, Vec<String>) {
    let root = dir.display().to_string();
    let pids = apiserver_support::up::processes_where(|a| {
        a.get(1).map(String::as_str) == Some("initiator")
            && a.get(2).map(String::as_str) == Some("attach")
            && a.iter().any(|x| x.starts_with(&root))
    });
    let mut loops = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            if b.starts_with(&root) {
                loops.push(format!("{}: {}", e.file_name().to_string_lossy(), b.trim()));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&root))
        .collect();
    (pids, loops, mounts)
}
