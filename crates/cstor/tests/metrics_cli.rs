//! `--metrics` of `cstor target serve` and `cstor replica serve`, scraped over HTTP while
//! qemu-io writes through iSCSI: counters grow by the bytes written, a pool that turns
//! DEGRADED under a served volume shows status 2 at the next scrape, every member of a
//! replicated volume's record is exported (a dead one as 0), a rebuilding replica shows
//! progress; every exposition passes `promtool check metrics` and the seed's three
//! alerts fire (`promtool test rules`) on series taken from these scrapes.

mod metrics_common;
mod target_common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cstor_powercut::PowerCut;
use metrics_common::*;
use target_common::*;

const T: Duration = Duration::from_secs(60);
const MIB: f64 = 1048576.0;

fn cstor(home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cstor"));
    c.env("CSTOR_HOME", home).env_remove("RUST_LOG");
    c
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = cstor(home).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Spawns a cstor daemon; returns its guard and the address of its first stdout line.
fn spawn(c: Command) -> (Served, String) {
    let s = spawn_with_addr(c, " on ");
    let addr = s.addr.clone();
    (s, addr)
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn tools() -> bool {
    have("qemu-io", "qemu-utils + qemu-block-extra") && have("promtool", "prometheus")
}

#[test]
fn pool_volume_target_counts_io_and_shows_a_degraded_pool_at_the_next_scrape() {
    if !tools() {
        return;
    }
    let Some(pc) = PowerCut::for_test("metrics_degraded_pool") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    // One side of the mirror on the power-cut layer, whose fsync faults turn it FAULTED.
    let d0 = d.path().join("d0.img");
    let d1 = pc.path().join("d1.img");
    for f in [&d0, &d1] {
        std::fs::File::create(f)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
    }
    let (d0s, d1s) = (d0.to_str().unwrap(), d1.to_str().unwrap());
    ok(&home, &["pool", "create", "mp", "mirror", d0s, d1s]);
    ok(&home, &["volume", "create", "mp/vol1", "--size", "64M"]);
    let iqn = "iqn.2016-09.com.openebs.cstor:vol1";
    let maddr = free_addr();
    let mut c = cstor(&home);
    c.args(["target", "serve", "--listen", "127.0.0.1:0", "--iqn", iqn])
        .args(["--volume", "mp/vol1", "--metrics", &maddr]);
    let (_t, taddr) = spawn(c);

    let before = scrape(&maddr);
    promtool_check(&before);
    let v = [("volume_name", "vol1"), ("iqn", iqn)];
    let p = [("pool_name", "mp"), ("pool", "mp")];
    assert_eq!(one(&before, "openebs_pool_status", &p), 1.0);
    assert_eq!(one(&before, "openebs_volume_status", &v), 3.0);
    assert_eq!(one(&before, "openebs_size_of_volume", &v), 64.0 * MIB);
    assert_eq!(
        one(&before, "openebs_pool_used_capacity_percent", &p),
        one(&before, "openebs_used_pool_capacity_percent", &p)
    );
    let w0 = one(&before, "openebs_volume_write_bytes_total", &v);
    let r0 = one(&before, "openebs_volume_read_bytes_total", &v);

    qemu_io(
        &taddr,
        iqn,
        &["write -P 0x5a 0 3M", "flush", "read -P 0x5a 0 1M"],
    );
    let after = scrape(&maddr);
    promtool_check(&after);
    assert_eq!(
        one(&after, "openebs_volume_write_bytes_total", &v) - w0,
        3.0 * MIB
    );
    assert_eq!(one(&after, "openebs_total_write_bytes", &v) - w0, 3.0 * MIB);
    assert!(one(&after, "openebs_volume_read_bytes_total", &v) - r0 >= MIB);
    assert!(one(&after, "openebs_writes", &v) >= 1.0);
    assert!(one(&after, "openebs_write_time", &v) > 0.0);
    let hist = one(&after, "openebs_volume_write_duration_seconds_count", &v);
    assert_eq!(hist, one(&after, "openebs_volume_writes_total", &v));
    // Used space is counted at the txg commit, which follows the intent-log flush.
    assert!(
        wait_for(T, || one(&scrape(&maddr), "openebs_actual_used", &v) > 0.0),
        "openebs_actual_used stayed 0"
    );
    // The pool wrote to both devices (flush committed the txg).
    for dev in [d0s, d1s] {
        let dl = [("pool_name", "mp"), ("device", dev)];
        assert!(
            one(&after, "openebs_pool_write_duration_seconds_count", &dl) > 0.0,
            "{dev}"
        );
        assert_eq!(one(&after, "openebs_pool_device_status", &dl), 1.0);
    }
    assert!(one(&after, "openebs_used_pool_capacity", &p) > 0.0);

    // d1's flushes fail from now on: the next commit faults it and the pool is DEGRADED.
    pc.control()
        .fail_fsyncs(Some(Path::new("d1.img")), 1_000_000);
    qemu_io(&taddr, iqn, &["write -P 0x6b 4M 1M", "flush"]);
    assert!(
        wait_for(T, || {
            ok(&home, &["pool", "status", "mp", "-o", "json"]).contains("\"DEGRADED\"")
        }),
        "the pool did not turn DEGRADED"
    );
    let degraded = scrape(&maddr);
    assert_eq!(one(&degraded, "openebs_pool_status", &p), 2.0, "{degraded}");
    assert_eq!(one(&degraded, "openebs_volume_status", &v), 2.0);
    let dl = [("pool_name", "mp"), ("device", d1s)];
    assert_eq!(one(&degraded, "openebs_pool_device_status", &dl), 3.0);
    assert!(one(&degraded, "openebs_pool_device_write_errors_total", &dl) >= 1.0);
    promtool_check(&degraded);

    // The seed's pool alerts on these series: DEGRADED fires after 5 m; the capacity
    // alert stays quiet at the real fill and fires above 80 %.
    let status = &find(&degraded, "openebs_pool_status", &p)[0];
    let cap = &find(&degraded, "openebs_pool_used_capacity_percent", &p)[0];
    assert!(cap.value < 80.0);
    let tests = [
        alert_case(
            status,
            status.value,
            "CStorPoolDegraded",
            "6m",
            true,
            "cStor pool mp is degraded",
        ),
        alert_case(status, status.value, "CStorPoolDegraded", "4m", false, ""),
        alert_case(status, 1.0, "CStorPoolDegraded", "8m", false, ""),
        alert_case(cap, cap.value, "CStorPoolCapacityHigh", "11m", false, ""),
        alert_case(
            cap,
            85.0,
            "CStorPoolCapacityHigh",
            "11m",
            true,
            "cStor pool mp is over 80% full",
        ),
    ];
    promtool_test_rules(d.path(), &tests.concat());
}

#[test]
fn replicated_target_exports_every_member_and_rebuild_progress() {
    if !tools() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let key = d.path().join("key");
    std::fs::write(&key, "a-shared-cluster-key-for-tests\n").unwrap();
    for p in ["pa", "pb"] {
        let img = d.path().join(format!("{p}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        ok(
            &home,
            &["pool", "create", p, "stripe", img.to_str().unwrap()],
        );
    }
    let replica = |pool: &str, listen: &str, metrics: &str| {
        let mut c = cstor(&home);
        c.args(["replica", "serve", "--pool", pool, "--listen", listen])
            .args(["--metrics", metrics, "--auth-key"])
            .arg(&key);
        spawn(c)
    };
    let (ma, mb) = (free_addr(), free_addr());
    let (ra, a_addr) = replica("pa", "127.0.0.1:0", &ma);
    let (rb, b_addr) = replica("pb", "127.0.0.1:0", &mb);
    let iqn = "iqn.2016-09.com.openebs.cstor:pvc-1";
    let mt = free_addr();
    let mut c = cstor(&home);
    c.args(["target", "serve", "--listen", "127.0.0.1:0", "--iqn", iqn])
        .args(["--volume", "pvc-1", "--size", "64M", "--state-dir"])
        .arg(d.path().join("state"))
        .arg("--auth-key")
        .arg(&key)
        .args(["--replica", &a_addr, "--replica", &b_addr])
        .args(["--rebuild-rate", "4M", "--metrics", &mt]);
    let (_t, taddr) = spawn(c);
    let v = [("volume_name", "pvc-1")];
    assert!(wait_for(T, || try_scrape(&mt).is_some_and(|s| find(
        &s,
        "openebs_volume_status",
        &v
    )
    .first()
    .is_some_and(|x| x.value == 3.0))));
    qemu_io(&taddr, iqn, &["write -P 0x5a 0 1M"]);
    let healthy = scrape(&mt);
    promtool_check(&healthy);
    let members = find(&healthy, "openebs_volume_replica_status", &v);
    assert_eq!(members.len(), 2, "{healthy}");
    assert!(members.iter().all(|m| m.value == 1.0), "{members:?}");
    assert_eq!(one(&healthy, "openebs_total_replica_count", &v), 2.0);
    assert_eq!(one(&healthy, "openebs_healthy_replica_count", &v), 2.0);
    assert_eq!(one(&healthy, "openebs_volume_write_bytes_total", &v), MIB);
    for m in [&ma, &mb] {
        let r = scrape(m);
        promtool_check(&r);
        assert_eq!(find(&r, "openebs_pool_status", &[]).len(), 1, "{r}");
        assert_eq!(
            find(&r, "openebs_volume_replica_used_size", &[("vol", "pvc-1")]).len(),
            1,
            "{r}"
        );
    }
    let b_id = members
        .iter()
        .find(|m| m.label("address") == Some(b_addr.as_str()))
        .unwrap();
    let b_id = b_id.label("replica").unwrap().to_owned();
    let b = [("volume_name", "pvc-1"), ("replica", b_id.as_str())];

    // B dies: still exported, as Offline (0), once the target noticed.
    drop(rb);
    qemu_io(&taddr, iqn, &["write -P 0x6b 1M 16M"]);
    let mut offline = String::new();
    assert!(wait_for(T, || {
        offline = scrape(&mt);
        one(&offline, "openebs_volume_replica_status", &b) == 0.0
    }));
    assert_eq!(one(&offline, "openebs_volume_status", &v), 2.0);
    assert_eq!(one(&offline, "openebs_volume_offline_replicas", &v), 1.0);
    promtool_check(&offline);
    let dead = &find(&offline, "openebs_volume_replica_status", &b)[0];
    let alive = &find(
        &offline,
        "openebs_volume_replica_status",
        &[("address", a_addr.as_str())],
    )[0];
    let tests = [
        alert_case(
            dead,
            dead.value,
            "CStorVolumeReplicaDegraded",
            "6m",
            true,
            "cStor volume replica pvc-1 is unhealthy",
        ),
        alert_case(
            alive,
            alive.value,
            "CStorVolumeReplicaDegraded",
            "6m",
            false,
            "",
        ),
    ];
    promtool_test_rules(d.path(), &tests.concat());

    // B returns on its address: caught up at 4 MiB/s, so the scrapes see it Rebuilding
    // with progress, a rate and an ETA, then Healthy.
    let (_rb, _) = replica("pb", &b_addr, &mb);
    let mut seen_progress = false;
    assert!(
        wait_for(T, || {
            let s = scrape(&mt);
            let status = one(&s, "openebs_volume_replica_status", &b);
            if status == 3.0 {
                let done = one(&s, "openebs_volume_replica_rebuild_done_bytes", &b);
                let pct = one(&s, "openebs_volume_replica_rebuild_progress_percent", &b);
                let total = one(&s, "openebs_volume_replica_rebuild_total_bytes", &b);
                let rate = find(
                    &s,
                    "openebs_volume_replica_rebuild_rate_bytes_per_second",
                    &b,
                );
                if done > 0.0
                    && total > 0.0
                    && pct < 100.0
                    && rate.first().is_some_and(|r| r.value > 0.0)
                {
                    assert_eq!(
                        find(&s, "openebs_volume_replica_rebuild_eta_seconds", &b).len(),
                        1
                    );
                    promtool_check(&s);
                    seen_progress = true;
                }
            }
            status == 1.0
        }),
        "replica B was not readmitted"
    );
    assert!(seen_progress, "no scrape saw the rebuild in progress");
    drop(ra);
}
