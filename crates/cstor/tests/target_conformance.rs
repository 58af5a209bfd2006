//! libiscsi's conformance suite (`iscsi-test-cu -d --test=SCSI,iSCSI`) against `cstor
//! target serve` on a file and on a raidz pool volume: every test must pass except the allowed skips (features that
//! do not apply or are not built) and one known libiscsi 1.19 test bug.
//!
//! Guards: the SCSI command set, iSCSI residuals, CmdSN/DataSN handling and task
//! management as a real, independent initiator sees them.

mod target_common;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;
use target_common::*;

#[derive(Debug, Default)]
struct Outcome {
    passed: BTreeSet<String>,
    skipped: BTreeSet<String>,
    failed: BTreeSet<String>,
}

/// Parses CUnit's verbose output: "Suite: S", then "  Test: T ...passed|FAILED", with
/// "[SKIPPED]" lines printed while a test runs.
fn parse(out: &str) -> Outcome {
    let mut o = Outcome::default();
    let mut suite = String::new();
    let mut current: Option<(String, String)> = None;
    let finish = |cur: &mut Option<(String, String)>, o: &mut Outcome| {
        if let Some((name, text)) = cur.take() {
            let failed = text
                .lines()
                .any(|l| l.trim_end().ends_with("FAILED") && !l.contains("[FAILED]"))
                || text.trim_end().ends_with("FAILED");
            if failed {
                o.failed.insert(name);
            } else if text.contains("[SKIPPED]") {
                o.skipped.insert(name);
            } else if text.contains("passed") {
                o.passed.insert(name);
            } else {
                o.failed.insert(name);
            }
        }
    };
    for line in out.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            finish(&mut current, &mut o);
            suite = s.trim().to_owned();
        } else if let Some(t) = line.trim_start().strip_prefix("Test: ") {
            finish(&mut current, &mut o);
            let name = t.split(" ...").next().unwrap_or(t).trim().to_owned();
            current = Some((format!("{suite}.{name}"), t.to_owned()));
        } else if line.starts_with("Run Summary") {
            finish(&mut current, &mut o);
        } else if let Some((_, text)) = current.as_mut() {
            text.push('\n');
            text.push_str(line);
        }
    }
    finish(&mut current, &mut o);
    o
}

/// Suites whose tests may skip: one portal (MultipathIO), not removable (PreventAllow,
/// StartStopUnit, NoMedia), sanitize not allowed, not write-protected (ReadOnly).
const ALLOWED_SKIP_SUITES: &[&str] = &[
    "MultipathIO",
    "PreventAllow",
    "StartStopUnit",
    "NoMedia",
    "Sanitize",
    "ReadOnly",
];

/// libiscsi 1.19's GetLBAStatus.UnmapSingle expects the first descriptor at LBA
/// i+lbppb after asking for LBA i+1, which only holds with 512-byte physical blocks;
/// SBC-3 requires the requested LBA, which we return. With --physical-block-size 512 it
/// passes (and five tests needing LBPPB > 1 skip instead): see
/// `get_lba_status_unmap_single_passes_with_512_byte_physical_blocks`.
const KNOWN_TEST_BUGS: &[&str] = &["GetLBAStatus.UnmapSingle"];

#[test]
fn iscsi_test_cu_passes_all_but_allowed_skips() {
    if !have("iscsi-test-cu", "libiscsi-bin") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    let iqn = "iqn.2024-01.io.cstor.test:conformance";
    let served = serve_file(iqn, &img, "1G", &[]);
    assert_full_suite_passes(&served.addr, iqn);
}

/// The same suite against a pool volume on raidz: the engine's block sizes, thin
/// provisioning and LBA status behind the target change nothing an initiator can see.
#[test]
fn iscsi_test_cu_passes_on_a_pool_volume() {
    if !have("iscsi-test-cu", "libiscsi-bin") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut create = vec![
        "pool".to_owned(),
        "create".into(),
        "cp".into(),
        "raidz".into(),
    ];
    for i in 0..3 {
        let p = dir.path().join(format!("d{i}.img"));
        std::fs::File::create(&p).unwrap().set_len(1 << 30).unwrap();
        create.push(p.to_str().unwrap().to_owned());
    }
    for args in [
        create,
        "volume create cp/v --size 1G"
            .split(' ')
            .map(String::from)
            .collect(),
    ] {
        let (ok, out) = run(
            Command::new(env!("CARGO_BIN_EXE_cstor"))
                .env("CSTOR_HOME", &home)
                .args(&args),
            Duration::from_secs(60),
        );
        assert!(ok, "cstor {args:?}: {out}");
    }
    let iqn = "iqn.2024-01.io.cstor.test:conformance-pool";
    let served = serve_in_home(&home, &["--iqn", iqn, "--volume", "cp/v"]);
    assert_full_suite_passes(&served.addr, iqn);
}

/// Runs the whole suite on LUN 0 of `iqn` and checks the outcome.
fn assert_full_suite_passes(addr: &str, iqn: &str) {
    let url = format!("iscsi://{addr}/{iqn}/0");
    let (_, out) = run(
        Command::new("iscsi-test-cu").args(["-d", "--test=SCSI,iSCSI", &url]),
        Duration::from_secs(600),
    );
    let o = parse(&out);
    let total = o.passed.len() + o.skipped.len() + o.failed.len();
    println!(
        "iscsi-test-cu on {iqn}: {total} tests, {} passed, {} skipped, {} failed",
        o.passed.len(),
        o.skipped.len(),
        o.failed.len()
    );
    println!("skipped: {:?}", o.skipped);
    println!("failed: {:?}", o.failed);
    assert_eq!(total, 230, "unexpected test count; output:\n{out}");
    let bad_skips: Vec<&String> = o
        .skipped
        .iter()
        .filter(|t| {
            !ALLOWED_SKIP_SUITES
                .iter()
                .any(|s| t.starts_with(&format!("{s}.")))
        })
        .collect();
    assert!(
        bad_skips.is_empty(),
        "tests skipped that must run: {bad_skips:?}"
    );
    let expected_failures: BTreeSet<String> =
        KNOWN_TEST_BUGS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        o.failed, expected_failures,
        "failures differ from the known libiscsi bugs"
    );
}

/// The one test the default run cannot pass (a libiscsi 1.19 bug that assumes one logical
/// block per physical block) runs and passes with 512-byte physical blocks, so every one
/// of the 230 tests is shown passing in some configuration.
#[test]
fn get_lba_status_unmap_single_passes_with_512_byte_physical_blocks() {
    if !have("iscsi-test-cu", "libiscsi-bin") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("lun0.img");
    let iqn = "iqn.2024-01.io.cstor.test:lbppb1";
    let served = serve_file(iqn, &img, "64M", &["--physical-block-size", "512"]);
    let url = format!("iscsi://{}/{iqn}/0", served.addr);
    let (_, out) = run(
        Command::new("iscsi-test-cu").args(["-d", "--test=SCSI.GetLBAStatus", &url]),
        Duration::from_secs(120),
    );
    let o = parse(&out);
    println!(
        "GetLBAStatus with 512-byte physical blocks: passed {:?}, skipped {:?}, failed {:?}",
        o.passed, o.skipped, o.failed
    );
    assert!(
        o.passed.contains("GetLBAStatus.UnmapSingle"),
        "UnmapSingle must run and pass; output:\n{out}"
    );
    assert!(
        o.failed.is_empty(),
        "failures: {:?}; output:\n{out}",
        o.failed
    );
}

#[test]
fn parser_reads_cunit_output() {
    let out = "Suite: A\n  Test: One ...passed\n  Test: Two ...    [SKIPPED] nope\npassed\n  Test: Three ...FAILED\n    1. x.c:1 - CU_FAIL\nSuite: B\n  Test: Four ...    [FAILED] msg\npassed\nRun Summary: x\n";
    let o = parse(out);
    assert!(o.passed.contains("A.One") && o.passed.contains("B.Four"));
    assert!(o.skipped.contains("A.Two"));
    assert!(o.failed.contains("A.Three"));
}
