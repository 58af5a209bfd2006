//! A target move end to end: `cstor up` with three nodes, the seed's stripe pools and
//! 3-replica claim, attached with `cstor attach` on a node that does not host the target,
//! files written without a pause, then `cstor up node stop <target node>`.
//!
//! Shown: the controller moves the target (CV label and portal change, event "moved
//! target from X to Y"), the initiator finds it at the new portal (one of the portals the
//! publish context listed) and the writes resume well within the 120 s replacement
//! timeout; every file written reads back as written; after the old node starts again the
//! target stays on the new node (the VolumeAttachment's `attachmentMetadata` names its
//! new portal), the volume is Healthy with 3 Healthy replicas, and
//! `xfs_repair -n` through the new portal finds the filesystem clean. The same with the
//! old target's agent SIGSTOPped instead, then continued: it is fenced and breaks nothing.

mod apiserver_support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiserver_support::claim::{
    apply_claim, attach, check_files, fsck_through_portal, target_node, text, wait_healthy,
    write_files, Attached,
};
use apiserver_support::up::{processes_where, Up};
use apiserver_support::{have_kubectl, required};

/// When a file was written (fsync returned), its path and digest.
type Written = (Instant, (PathBuf, u64));

fn cv_field(up: &Up, path: &str) -> String {
    let (ok, v) = up.kubectl(&[
        "get",
        "cv",
        "-n",
        "openebs",
        "-o",
        &format!("jsonpath={{.items[0].{path}}}"),
    ]);
    assert!(ok, "get cv {path}: {v}");
    v
}

/// The claim Healthy, attached on a node that does not host its target.
struct Setup<'a> {
    from: String,
    on: &'static str,
    portal0: String,
    mnt: PathBuf,
    guard: Attached<'a>,
}

fn setup(up: &Up) -> Setup<'_> {
    let long = Duration::from_secs(90);
    up.seed_stripe_pools(long);
    apply_claim(up);
    wait_healthy(up, long);
    let from = target_node(up);
    let portal0 = cv_field(up, "spec.targetPortal");
    let on = ["node-1", "node-2", "node-3"]
        .into_iter()
        .find(|n| *n != from)
        .unwrap();
    let mnt = up.dir.join("work").join("mnt");
    let out = attach(up, on, Some(&mnt));
    assert!(out.status.success(), "attach: {}\n{}", text(&out), up.log());
    Setup {
        from,
        on,
        portal0,
        mnt,
        guard: Attached {
            up,
            node: on.into(),
        },
    }
}

/// Writes files without a pause of its own (one 256 KiB file with fsync after another)
/// while `lose` takes the target's node away, until the target moved and three files were
/// written after that. Returns every file written and (time to the move, time to the
/// resumed writes, longest gap between two completed writes), all measured from `lose`.
fn write_through_a_move(
    up: &Up,
    s: &Setup<'_>,
    lose: impl FnOnce(),
) -> (Vec<(PathBuf, u64)>, Duration, Duration, Duration) {
    let mut files = write_files(&s.mnt, 0, 4);
    let stop = Arc::new(AtomicBool::new(false));
    let done: Arc<Mutex<Vec<Written>>> = Arc::default();
    let writer = {
        let (stop, done, mnt) = (stop.clone(), done.clone(), s.mnt.clone());
        std::thread::spawn(move || {
            let mut i = 4;
            while !stop.load(Ordering::SeqCst) {
                let f = write_files(&mnt, i, 1).remove(0);
                done.lock().unwrap().push((Instant::now(), f));
                i += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let lost = Instant::now();
    lose();
    let from = s.from.clone();
    up.wait_for(
        "the target moved off the lost node",
        &[
            "get",
            "cv",
            "-n",
            "openebs",
            "-o",
            "jsonpath={.items[0].metadata.labels.cstor\\.openebs\\.io/target-node}",
        ],
        |n| n.starts_with("node-") && n != from,
        Duration::from_secs(60),
    );
    let moved = lost.elapsed();
    let t0 = Instant::now();
    let resumed = loop {
        let after: usize = done
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t > lost + moved)
            .count();
        if after >= 3 {
            break lost.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(100),
            "writes did not resume after the move\n{}",
            up.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("the writer");
    let times: Vec<Instant> = done.lock().unwrap().iter().map(|(t, _)| *t).collect();
    let pause = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    files.extend(done.lock().unwrap().drain(..).map(|(_, f)| f));
    eprintln!(
        "target moved {moved:?} after the node loss; writes resumed by {resumed:?}; longest pause between two completed writes {pause:?}; {} files",
        files.len()
    );
    assert!(
        pause < Duration::from_secs(120),
        "I/O paused {pause:?}, past the replacement timeout"
    );
    let to = target_node(up);
    assert_ne!(
        cv_field(up, "spec.targetPortal"),
        s.portal0,
        "the CV's portal did not follow the target"
    );
    let (_, events) = up.kubectl(&["get", "events", "-n", "openebs"]);
    assert!(
        events.contains(&format!("moved target from {} to {to}", s.from)),
        "{events}"
    );
    check_files(&files);
    (files, moved, resumed, pause)
}

/// The two tests run one after the other: two `cstor up` at once would share the CPUs
/// and stretch the pauses they measure.
static SERIAL: Mutex<()> = Mutex::new(());

fn tools() -> bool {
    let have_xfs = Command::new("mkfs.xfs").arg("-V").output().is_ok();
    required(have_kubectl() && have_xfs, "kubectl or xfsprogs")
}

#[test]
fn target_moves_off_a_lost_node_and_writes_resume_at_the_new_portal() {
    if !tools() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t_test = Instant::now();
    // A short attacher reconcile: it refreshes the VolumeAttachment's publish context.
    let up = Up::start_with(3, "1G", &["--attacher-reconcile-sync", "3s"]);
    let s = setup(&up);
    let (files, ..) = write_through_a_move(&up, &s, || up.node("stop", &s.from));
    let to = target_node(&up);
    let portal1 = cv_field(&up, "spec.targetPortal");
    // The attach's metadata (what a node stages with) follows the moved target.
    up.wait_for(
        "the VolumeAttachment's portal following the target",
        &[
            "get",
            "volumeattachment",
            "-o",
            "jsonpath={.items[0].status.attachmentMetadata.portal}",
        ],
        |v| v == portal1,
        Duration::from_secs(15),
    );

    // The old node comes back: the target stays where it is, its replica catches up.
    let (on, mnt) = (s.on, s.mnt.clone());
    drop(s.guard);
    up.node("start", &s.from);
    wait_healthy(&up, Duration::from_secs(90));
    assert_eq!(target_node(&up), to, "the target went back to the old node");
    assert_eq!(cv_field(&up, "spec.targetPortal"), portal1);
    fsck_through_portal(&up, &up.dir.join("work"));
    let out = attach(&up, on, Some(&mnt));
    assert!(out.status.success(), "attach again: {}", text(&out));
    let guard = Attached {
        up: &up,
        node: on.into(),
    };
    check_files(&files);
    drop(guard);
    eprintln!("test took {:?}", t_test.elapsed());
}

/// The pid of node `node`'s agent process of this `cstor up` (`cstor node --home
/// DIR/nodes/NODE/home ...`), found in /proc.
fn agent_pid(up: &Up, node: &str) -> i32 {
    let home = up.dir.join("nodes").join(node).join("home");
    let home = home.display().to_string();
    let agents = processes_where(|a| {
        a.get(1).map(String::as_str) == Some("node")
            && a.windows(2).any(|w| w[0] == "--home" && w[1] == home)
    });
    match agents.first() {
        Some(pid) => *pid,
        None => panic!("no agent process of {node}"),
    }
}

/// The old target is not dead but stopped (SIGSTOP of its whole agent: no heartbeat, no
/// renewals, its process alive on this host), then continued after the move: the new
/// target took over without waiting out the takeover gate (the controller named the old
/// holder in `cstor.openebs.io/takeover-from`), and the continued old instance neither
/// takes the volume back nor breaks it: the files written through the new target stay
/// intact, the old node's replica catches up, and the filesystem is clean.
#[test]
fn a_stopped_then_continued_old_target_is_fenced_and_breaks_nothing() {
    if !tools() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t_test = Instant::now();
    let up = Up::start(3, "1G");
    let s = setup(&up);
    let pid = agent_pid(&up, &s.from);
    // SAFETY: kill(2) on a process of this test's own `cstor up`.
    let signal = |sig| unsafe { libc::kill(pid, sig) };
    let (mut files, _, resumed, _) = write_through_a_move(&up, &s, || {
        assert_eq!(signal(libc::SIGSTOP), 0);
    });
    assert!(
        resumed < Duration::from_secs(60 + 15),
        "the takeover waited out the gate: {resumed:?}"
    );
    let to = target_node(&up);
    assert_eq!(signal(libc::SIGCONT), 0);
    // Writes go on through the new target while the old one runs again.
    files.extend(write_files(&s.mnt, 10_000, 40));
    wait_healthy(&up, Duration::from_secs(90));
    assert_eq!(target_node(&up), to, "the old node took the target back");
    let (_, log) = up.kubectl(&["logs", "-n", "openebs", &format!("cstor-{}", s.from)]);
    assert!(
        log.contains("target no longer placed here: stopping it"),
        "the old agent did not stop its target: {log}"
    );
    check_files(&files);
    drop(s.guard);
    fsck_through_portal(&up, &up.dir.join("work"));
    eprintln!("test took {:?}", t_test.elapsed());
}
