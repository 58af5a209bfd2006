//! EXTENDED COPY with a real initiator: `qemu-img convert -C` (copy offloading) between
//! two targets of one `cstor target serve`, which QEMU's iSCSI driver performs with
//! EXTENDED COPY naming both LUs by their VPD 0x83 designators.
//!
//! Guards: copies between LUs of one process, as initiators that offload copies see them;
//! QEMU falls back to reads and writes silently, so its `iscsi_xcopy` trace events are
//! checked to prove every range went through EXTENDED COPY.

mod target_common;
use std::process::Command;
use std::time::Duration;
use target_common::*;

#[test]
fn qemu_img_copy_offload_between_two_targets_uses_extended_copy() {
    if !have("qemu-img", "qemu-utils") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    let (iqn_a, iqn_b) = (
        "iqn.2024-01.io.cstor.test:xcopy-a",
        "iqn.2024-01.io.cstor.test:xcopy-b",
    );
    let target_a = format!("{iqn_a},file={},size=16M", a.display());
    let target_b = format!("{iqn_b},file={},size=16M", b.display());
    let served = serve(&["--target", &target_a, "--target", &target_b]);
    let url = |iqn: &str| format!("iscsi://{}/{iqn}/0", served.addr);

    let src = dir.path().join("src.raw");
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i / 4096) as u8 ^ (i % 251) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let (ok, out) = run(
        Command::new("qemu-img").args([
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &url(iqn_a),
        ]),
        Duration::from_secs(60),
    );
    assert!(ok, "writing target A failed: {out}");

    let (ok, out) = run(
        Command::new("qemu-img").args([
            "-T",
            "iscsi_xcopy",
            "convert",
            "-C",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            &url(iqn_a),
            &url(iqn_b),
        ]),
        Duration::from_secs(60),
    );
    assert!(ok, "qemu-img convert -C failed: {out}");
    let copies: Vec<&str> = out.lines().filter(|l| l.contains("iscsi_xcopy")).collect();
    assert!(!copies.is_empty(), "no EXTENDED COPY was issued: {out}");
    assert!(
        copies.iter().all(|l| l.trim_end().ends_with("ret 0")),
        "an EXTENDED COPY failed (QEMU then falls back to reads and writes): {out}"
    );
    let copied: u64 = copies
        .iter()
        .filter_map(|l| {
            l.split("bytes ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(
        copied,
        16 << 20,
        "every byte went through EXTENDED COPY: {out}"
    );
    println!(
        "qemu-img convert -C: {} EXTENDED COPY commands",
        copies.len()
    );
    let on_disk = std::fs::read(&b).unwrap();
    assert!(on_disk == data, "target B differs from the source");
}
