//! Guards the pool on real files and block devices: sparse-file pools survive export,
//! renames and reordering; an open pool's devices are locked against any second opener;
//! create refuses a device holding a filesystem or pool unless forced; destroy wipes
//! labels; a torn newest uberblock falls back to the previous one; loop devices work
//! (skipped with a message where losetup is not permitted, a failure when `CI` is set).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::process::Command;

use cstor_pool::spa::format::{label_offsets, uberblock_offset};
use cstor_pool::spa::testdev::SeededRng;
use cstor_pool::spa::{FileDevice, GroupKind, GroupSpec, Spa, SpaError, SpaOptions};
use cstor_pool::store::{AllocClass, BlockStore, Dva};
use xxhash_rust::xxh3::xxh3_64;

const SIZE: u64 = 64 * 1024 * 1024;

fn files(dir: &std::path::Path, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("disk{i}.img"));
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            f.set_len(SIZE).unwrap();
            p.to_string_lossy().into_owned()
        })
        .collect()
}

fn spec(kind: GroupKind, paths: &[String]) -> GroupSpec<String> {
    GroupSpec {
        kind,
        devices: paths.to_vec(),
        log: false,
    }
}

fn put(spa: &Spa, txg: u64, seed: u64) -> (Dva, Vec<u8>) {
    let mut d = vec![0u8; 64 * 1024];
    SeededRng::new(seed).fill(&mut d);
    let dva = spa.alloc(d.len() as u32, AllocClass::Data, txg).unwrap();
    spa.write(dva, &d).unwrap();
    (dva, d)
}

fn get(spa: &Spa, b: &(Dva, Vec<u8>)) {
    let sum = xxh3_64(&b.1);
    assert_eq!(
        spa.read(b.0, b.1.len() as u32, &|x: &[u8]| xxh3_64(x) == sum)
            .unwrap(),
        b.1
    );
}

#[test]
fn file_pool_survives_export_rename_and_reorder() {
    let dir = tempfile::tempdir().unwrap();
    let paths = files(dir.path(), 3);
    let spa = Spa::create(
        "tank",
        &[spec(GroupKind::Raidz, &paths)],
        SpaOptions::default(),
    )
    .unwrap();
    let b = put(&spa, 1, 1);
    spa.sync(1, b"root").unwrap();
    spa.export().unwrap();
    let mut renamed = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let np = dir
            .path()
            .join(format!("renamed{}.img", 2 - i))
            .to_string_lossy()
            .into_owned();
        std::fs::rename(p, &np).unwrap();
        renamed.push(np);
    }
    renamed.reverse();
    let spa = Spa::import("tank", &renamed, SpaOptions::default()).unwrap();
    assert_eq!(spa.last_root(), Some((1, b"root".to_vec())));
    get(&spa, &b);
    let st = spa.status();
    assert!(
        st.groups[0]
            .devices
            .iter()
            .all(|d| d.path.contains("renamed")),
        "{st:?}"
    );
    // The new paths were written back to the labels.
    let cfg_paths: Vec<String> = spa.config().vdevs[0]
        .children
        .iter()
        .map(|c| c.path.clone())
        .collect();
    assert!(cfg_paths.iter().all(|p| p.contains("renamed")));
}

#[test]
fn open_pool_devices_are_locked_against_second_openers() {
    let dir = tempfile::tempdir().unwrap();
    let paths = files(dir.path(), 2);
    let spa = Spa::create(
        "tank",
        &[spec(GroupKind::Mirror, &paths)],
        SpaOptions::default(),
    )
    .unwrap();
    let err = Spa::import("tank", &paths, SpaOptions::default()).unwrap_err();
    assert!(matches!(err, SpaError::DeviceBusy { .. }), "{err}");
    let err = Spa::create(
        "other",
        &[spec(GroupKind::Stripe, &paths[..1])],
        SpaOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, SpaError::DeviceBusy { .. }), "{err}");
    // Another process sees the lock too.
    let out = Command::new("flock")
        .args(["-n", "-x", &paths[0], "true"])
        .status();
    match out {
        Ok(st) => assert!(
            !st.success(),
            "flock(1) got the lock of an open pool device"
        ),
        Err(e) => println!("SKIP cross-process lock check: flock(1) not runnable: {e}"),
    }
    spa.export().unwrap();
    let twice = vec![paths[0].clone(), paths[0].clone()];
    let err = Spa::import("tank", &twice, SpaOptions::default()).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    assert!(Spa::import("tank", &paths, SpaOptions::default()).is_ok());
}

#[test]
fn create_refuses_a_filesystem_unless_forced_and_destroy_wipes_labels() {
    let dir = tempfile::tempdir().unwrap();
    let paths = files(dir.path(), 1);
    match Command::new("mkfs.ext4")
        .args(["-q", "-F", &paths[0]])
        .output()
    {
        Ok(o) if o.status.success() => {
            let err = Spa::create(
                "t",
                &[spec(GroupKind::Stripe, &paths)],
                SpaOptions::default(),
            )
            .unwrap_err();
            assert!(err.to_string().contains("ext2/3/4"), "{err}");
        }
        _ => println!("SKIP mkfs.ext4 check: mkfs.ext4 not available"),
    }
    let spa = Spa::create(
        "t",
        &[spec(GroupKind::Stripe, &paths)],
        SpaOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    spa.destroy().unwrap();
    let err = Spa::import("t", &paths, SpaOptions::default()).unwrap_err();
    assert!(matches!(err, SpaError::PoolNotFound { .. }), "{err}");
    drop(
        Spa::create(
            "t2",
            &[spec(GroupKind::Stripe, &paths)],
            SpaOptions::default(),
        )
        .unwrap(),
    );
}

#[test]
fn torn_newest_uberblock_falls_back_to_the_previous() {
    let dir = tempfile::tempdir().unwrap();
    let paths = files(dir.path(), 2);
    let spa = Spa::create(
        "tank",
        &[spec(GroupKind::Mirror, &paths)],
        SpaOptions::default(),
    )
    .unwrap();
    for txg in 1..=3u64 {
        put(&spa, txg, txg);
        spa.sync(txg, format!("root{txg}").as_bytes()).unwrap();
    }
    spa.export().unwrap();
    // Tear txg 3's slot on every label of every device.
    for p in &paths {
        let f = OpenOptions::new().write(true).open(p).unwrap();
        for lo in label_offsets(SIZE) {
            f.write_all_at(&[0xAB; 100], uberblock_offset(lo, 3) + 50)
                .unwrap();
        }
    }
    let spa = Spa::import("tank", &paths, SpaOptions::default()).unwrap();
    assert_eq!(spa.last_root(), Some((2, b"root2".to_vec())));
    drop(spa);
    // Every label config copy of one device ruined: the other alone imports, degraded.
    let f = OpenOptions::new().write(true).open(&paths[0]).unwrap();
    for lo in label_offsets(SIZE) {
        f.write_all_at(&[0xCD; 64], lo).unwrap();
    }
    let spa = Spa::import("tank", &paths[1..], SpaOptions::default()).unwrap();
    assert_eq!(spa.status().health, cstor_pool::spa::Health::Degraded);
}

struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn loop_device_pool_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let paths = files(dir.path(), 1);
    let out = Command::new("losetup")
        .args(["-f", "--show", &paths[0]])
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "losetup failed and CI is set: loop devices are required"
            );
            println!("SKIP loop device test: losetup not permitted here");
            return;
        }
    };
    let _guard = Loop(dev.clone());
    let fd = FileDevice::open(&dev).unwrap();
    assert_eq!(cstor_pool::spa::Device::size(&fd), SIZE);
    drop(fd);
    let spa = Spa::create(
        "lp",
        &[spec(GroupKind::Stripe, std::slice::from_ref(&dev))],
        SpaOptions::default(),
    )
    .unwrap();
    let b = put(&spa, 1, 5);
    spa.sync(1, b"x").unwrap();
    spa.export().unwrap();
    let spa = Spa::import("lp", &[dev], SpaOptions::default()).unwrap();
    get(&spa, &b);
}

#[test]
fn large_allocator_state_spans_several_space_map_blocks_and_condenses() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.img");
    std::fs::File::create(&p).unwrap().set_len(1 << 30).unwrap();
    let paths = vec![p.to_string_lossy().into_owned()];
    let spa = Spa::create(
        "big",
        &[spec(GroupKind::Stripe, &paths)],
        SpaOptions::default(),
    )
    .unwrap();
    // 120k allocations in one txg: the delta needs several 1 MiB space map blocks.
    let dvas: Vec<Dva> = (0..120_000)
        .map(|_| spa.alloc(4096, AllocClass::Data, 1).unwrap())
        .collect();
    spa.sync(1, b"1").unwrap();
    assert!(spa.space_map_blocks().len() >= 3);
    // Every other block freed: ~60k extents, so the condensed base spans blocks too.
    for d in dvas.iter().step_by(2) {
        spa.free(*d, 2);
    }
    spa.sync(2, b"2").unwrap();
    for txg in 3..80u64 {
        spa.alloc(4096, AllocClass::Data, txg).unwrap();
        spa.sync(txg, b"n").unwrap();
    }
    let chain = spa.space_map_blocks().len();
    assert!(chain < 64, "chain of {chain} blocks was condensed");
    let allocated = spa.space().allocated_bytes;
    spa.export().unwrap();
    let spa = Spa::import("big", &paths, SpaOptions::default()).unwrap();
    assert_eq!(spa.space().allocated_bytes, allocated);
    for (i, d) in dvas.iter().enumerate().step_by(997) {
        // Odd blocks are live, even ones were freed.
        assert_eq!(spa.is_allocated(*d), i % 2 == 1, "block {i}");
    }
    assert_eq!(spa.bad_frees(), 0);
}
