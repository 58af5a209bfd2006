//! A target move end to end: `cstor up` with three nodes, the seed's stripe pools and
//! 3-replica claim, attached with `cstor attach` on a node that does not host the target,
//! files written without a pause, then `cstor up node stop <target node>`.
//!
//! Shown: the controller moves the target (CV label and portal change, event "moved
//! target from X to Y"), the initiator finds it at the new portal (one of the portals the
//! publish context listed) and the writes resume well within the 120 s replacement
//! timeout; every file written reads back as written; after the old node starts again the
//! target stays on the new node, the volume is Healthy with 3 Healthy replicas, and
//! `xfs_repair -n` through the new portal finds the filesystem clean.

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
use apiserver_support::up::Up;
use apiserver_support::{have_kubectl, required};

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

#[test]
fn target_moves_off_a_lost_node_and_writes_resume_at_the_new_portal() {
    let have_xfs = Command::new("mkfs.xfs").arg("-V").output().is_ok();
    if !required(have_kubectl() && have_xfs, "kubectl or xfsprogs") {
        return;
    }
    let t_test = Instant::now();
    let up = Up::start(3, "1G");
    let long = Duration::from_secs(90);
    up.seed_stripe_pools(long);
    apply_claim(&up);
    wait_healthy(&up, long);
    let from = target_node(&up);
    let portal0 = cv_field(&up, "spec.targetPortal");
    let on = ["node-1", "node-2", "node-3"]
        .into_iter()
        .find(|n| *n != from)
        .unwrap();

    let work = up.dir.join("work");
    let mnt = work.join("mnt");
    let out = attach(&up, on, Some(&mnt));
    assert!(out.status.success(), "attach: {}\n{}", text(&out), up.log());
    let guard = Attached {
        up: &up,
        node: on.into(),
    };
    let mut files = write_files(&mnt, 0, 4);

    // A writer that never pauses on its own: one 256 KiB file with fsync after another,
    // each completion's time recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let done: Arc<Mutex<Vec<(Instant, (PathBuf, u64))>>> = Arc::default();
    let writer = {
        let (stop, done, mnt) = (stop.clone(), done.clone(), mnt.clone());
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
    up.node("stop", &from);

    // The controller moves the target; the writes resume through the new portal.
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
    let to = target_node(&up);
    let portal1 = cv_field(&up, "spec.targetPortal");
    assert_ne!(
        portal1, portal0,
        "the CV's portal did not follow the target"
    );
    let (_, events) = up.kubectl(&["get", "events", "-n", "openebs"]);
    assert!(
        events.contains(&format!("moved target from {from} to {to}")),
        "{events}"
    );
    check_files(&files);

    // The old node comes back: the target stays where it is, its replica catches up.
    drop(guard);
    up.node("start", &from);
    wait_healthy(&up, long);
    assert_eq!(target_node(&up), to, "the target went back to the old node");
    assert_eq!(cv_field(&up, "spec.targetPortal"), portal1);
    fsck_through_portal(&up, &work);
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
