//! Guards the storage pool allocator end to end on memory and fault-injecting devices:
//! block round trips on every raid group kind, sync and import (any device order, missing
//! devices, foreign devices), the allocator state surviving reopen with no block both free
//! and in use, healing and scrub of corrupted copies/columns, device failure and hangs
//! within and beyond redundancy, replace + resilver, add, and space accounting.

use std::sync::Arc;
use std::time::Duration;

use cstor_pool::spa::testdev::{FaultyDevice, MemDevice, SeededRng};
use cstor_pool::spa::{Device, GroupKind, GroupSpec, Health, Spa, SpaError, SpaOptions};
use cstor_pool::store::{AllocClass, BlockStore, Dva, StoreError};
use xxhash_rust::xxh3::xxh3_64;

const DEV: u64 = 64 * 1024 * 1024;

fn mems(prefix: &str, n: usize) -> Vec<Arc<MemDevice>> {
    (0..n)
        .map(|i| MemDevice::new(&format!("{prefix}{i}"), DEV))
        .collect()
}

fn dyns<T: Device + 'static>(v: &[Arc<T>]) -> Vec<Arc<dyn Device>> {
    v.iter().map(|d| d.clone() as Arc<dyn Device>).collect()
}

fn group(kind: GroupKind, devs: Vec<Arc<dyn Device>>) -> GroupSpec<Arc<dyn Device>> {
    GroupSpec {
        kind,
        devices: devs,
        log: false,
    }
}

fn opts() -> SpaOptions {
    SpaOptions {
        force: false,
        io_timeout: Duration::from_secs(10),
    }
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SeededRng::new(seed).fill(&mut v);
    v
}

fn check(sum: u64) -> impl Fn(&[u8]) -> bool + Sync {
    move |b: &[u8]| xxh3_64(b) == sum
}

fn write_blocks(spa: &Spa, txg: u64, n: usize, seed: u64) -> Vec<(Dva, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let len = 4096 * (1 + (i % 9));
            let d = data(seed * 1000 + i as u64, len);
            let dva = spa.alloc(len as u32, AllocClass::Data, txg).unwrap();
            spa.write(dva, &d).unwrap();
            (dva, d)
        })
        .collect()
}

fn read_back(spa: &Spa, blocks: &[(Dva, Vec<u8>)]) {
    for (dva, d) in blocks {
        let got = spa.read(*dva, d.len() as u32, &check(xxh3_64(d))).unwrap();
        assert_eq!(&got, d, "block {dva:?}");
    }
}

fn every_kind() -> Vec<(GroupKind, usize)> {
    vec![
        (GroupKind::Stripe, 2),
        (GroupKind::Mirror, 2),
        (GroupKind::Mirror, 3),
        (GroupKind::Raidz, 3),
        (GroupKind::Raidz, 5),
        (GroupKind::Raidz2, 4),
        (GroupKind::Raidz2, 6),
    ]
}

#[test]
fn roundtrip_sync_import_in_any_order_on_every_kind() {
    for (kind, n) in every_kind() {
        let devs = mems("d", n);
        let spa = Spa::create_on("tank", vec![group(kind, dyns(&devs))], opts()).unwrap();
        assert_eq!(spa.last_root(), None);
        let blocks = write_blocks(&spa, 1, 40, 1);
        read_back(&spa, &blocks);
        spa.sync(1, b"root-1").unwrap();
        drop(spa);
        let mut order = dyns(&devs);
        order.reverse();
        let spa = Spa::import_devices("tank", order, opts()).unwrap();
        assert_eq!(spa.last_root(), Some((1, b"root-1".to_vec())), "{kind:?}");
        read_back(&spa, &blocks);
        // New allocations never land on live blocks.
        let more = write_blocks(&spa, 2, 40, 2);
        for (a, _) in &more {
            for (b, _) in &blocks {
                assert!(
                    a.vdev != b.vdev
                        || a.offset + a.asize <= b.offset
                        || b.offset + b.asize <= a.offset,
                    "{a:?} overlaps live {b:?}"
                );
            }
        }
        read_back(&spa, &blocks);
        assert_eq!(spa.status().health, Health::Online);
    }
}

#[test]
fn frees_are_reusable_only_after_sync_and_survive_reopen() {
    let devs = mems("f", 2);
    let spa = Spa::create_on("tank", vec![group(GroupKind::Mirror, dyns(&devs))], opts()).unwrap();
    let blocks = write_blocks(&spa, 1, 10, 3);
    spa.sync(1, b"a").unwrap();
    let used = spa.space().allocated_bytes;
    for (dva, _) in &blocks[..5] {
        spa.free(*dva, 2);
    }
    // Not reusable before txg 2 is durable.
    let fresh = write_blocks(&spa, 2, 5, 4);
    for (a, _) in &fresh {
        for (b, _) in &blocks[..5] {
            assert!(a.offset + a.asize <= b.offset || b.offset + b.asize <= a.offset);
        }
    }
    spa.sync(2, b"b").unwrap();
    assert!(spa.space().allocated_bytes < used + fresh.iter().map(|b| b.0.asize).sum::<u64>());
    let before = spa.space();
    drop(spa);
    let spa = Spa::import_devices("tank", dyns(&devs), opts()).unwrap();
    let after = spa.space();
    // Space map blocks of the last sync are the only difference allowed.
    assert!(
        after.allocated_bytes.abs_diff(before.allocated_bytes) < 1024 * 1024,
        "{before:?} vs {after:?}"
    );
    read_back(&spa, &blocks[5..]);
    read_back(&spa, &fresh);
    assert_eq!(spa.bad_frees(), 0);
}

#[test]
fn many_syncs_condense_the_space_map_and_reopen() {
    let devs = mems("c", 3);
    let spa = Spa::create_on("tank", vec![group(GroupKind::Raidz, dyns(&devs))], opts()).unwrap();
    let mut live: Vec<(Dva, Vec<u8>)> = Vec::new();
    let mut rng = SeededRng::new(5);
    for txg in 1..=150u64 {
        live.extend(write_blocks(&spa, txg, 3, txg + 10));
        if live.len() > 20 {
            let i = rng.below(live.len() as u64) as usize;
            let (dva, _) = live.swap_remove(i);
            spa.free(dva, txg);
        }
        spa.sync(txg, &txg.to_le_bytes()).unwrap();
    }
    assert!(spa.space_map_blocks().len() <= 64);
    let allocated = spa.space().allocated_bytes;
    drop(spa);
    let spa = Spa::import_devices("tank", dyns(&devs), opts()).unwrap();
    assert_eq!(spa.last_root().unwrap().0, 150);
    assert_eq!(spa.space().allocated_bytes, allocated);
    read_back(&spa, &live);
    let more = write_blocks(&spa, 151, 50, 99);
    for (a, _) in &more {
        for (b, _) in &live {
            assert!(
                a.offset + a.asize <= b.offset || b.offset + b.asize <= a.offset,
                "{a:?} overlaps live {b:?}"
            );
        }
    }
}

#[test]
fn corrupt_copies_and_columns_are_healed_and_counted() {
    for (kind, n, lose) in [
        (GroupKind::Mirror, 2, 1),
        (GroupKind::Raidz, 4, 1),
        (GroupKind::Raidz2, 5, 2),
    ] {
        let devs = mems("x", n);
        let spa = Spa::create_on("tank", vec![group(kind, dyns(&devs))], opts()).unwrap();
        let blocks = write_blocks(&spa, 1, 30, 7);
        spa.sync(1, b"r").unwrap();
        // Random bytes over the data region of `lose` devices.
        let mut rng = SeededRng::new(9);
        for d in devs.iter().take(lose) {
            let mut junk = vec![0u8; 8 * 1024 * 1024];
            rng.fill(&mut junk);
            d.poke(2 * 1024 * 1024, &junk);
        }
        read_back(&spa, &blocks);
        let st = spa.status();
        let cks: u64 = st.groups[0].devices.iter().map(|d| d.checksum_errors).sum();
        assert!(cks > 0, "{kind:?}: checksum errors counted");
        // Reads check only what they need (one copy, data columns); scrub checks all.
        for (dva, d) in &blocks {
            spa.scrub_block(*dva, d.len() as u32, &check(xxh3_64(d)))
                .unwrap();
        }
        spa.scrub_internal().unwrap();
        for (dva, d) in &blocks {
            assert_eq!(
                spa.scrub_block(*dva, d.len() as u32, &check(xxh3_64(d)))
                    .unwrap(),
                0,
                "{kind:?} clean after scrub"
            );
        }
        // Ruin again; scrub repairs every copy, reading all of them.
        for d in devs.iter().take(lose) {
            let mut junk = vec![0u8; 8 * 1024 * 1024];
            rng.fill(&mut junk);
            d.poke(2 * 1024 * 1024, &junk);
        }
        let mut repaired = 0;
        for (dva, d) in &blocks {
            repaired += spa
                .scrub_block(*dva, d.len() as u32, &check(xxh3_64(d)))
                .unwrap();
        }
        assert!(repaired > 0, "{kind:?}");
        for (dva, d) in &blocks {
            assert_eq!(
                spa.scrub_block(*dva, d.len() as u32, &check(xxh3_64(d)))
                    .unwrap(),
                0,
                "{kind:?} scrub is clean after repair"
            );
        }
    }
}

#[test]
fn same_range_ruined_beyond_redundancy_fails_the_read() {
    let devs = mems("y", 3);
    let spa = Spa::create_on("tank", vec![group(GroupKind::Raidz, dyns(&devs))], opts()).unwrap();
    let blocks = write_blocks(&spa, 1, 10, 8);
    let mut rng = SeededRng::new(3);
    for d in devs.iter().take(2) {
        let mut junk = vec![0u8; 4 * 1024 * 1024];
        rng.fill(&mut junk);
        d.poke(2 * 1024 * 1024, &junk);
    }
    let (dva, d) = &blocks[0];
    let err = spa
        .read(*dva, d.len() as u32, &check(xxh3_64(d)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Unrecoverable { .. } | StoreError::NoValidCopy { .. }
        ),
        "{err}"
    );
}

fn faulty(prefix: &str, n: usize) -> (Vec<Arc<MemDevice>>, Vec<Arc<FaultyDevice>>) {
    let m = mems(prefix, n);
    let f = m
        .iter()
        .map(|d| FaultyDevice::new(d.clone() as Arc<dyn Device>))
        .collect();
    (m, f)
}

#[test]
fn failing_devices_within_redundancy_keep_io_going_and_beyond_it_fail_clearly() {
    for (kind, n, p) in [
        (GroupKind::Mirror, 2, 1),
        (GroupKind::Raidz, 3, 1),
        (GroupKind::Raidz2, 4, 2),
    ] {
        let (_m, f) = faulty("z", n);
        let spa = Spa::create_on("tank", vec![group(kind, dyns(&f))], opts()).unwrap();
        let blocks = write_blocks(&spa, 1, 20, 11);
        spa.sync(1, b"r").unwrap();
        for d in f.iter().take(p) {
            d.set_fail_reads(true);
            d.set_fail_writes(true);
        }
        read_back(&spa, &blocks);
        let more = write_blocks(&spa, 2, 20, 12);
        spa.sync(2, b"s").unwrap();
        read_back(&spa, &more);
        let st = spa.status();
        assert_eq!(st.health, Health::Degraded, "{kind:?}");
        assert!(
            st.message.as_deref().unwrap_or("").contains("z0"),
            "{:?}",
            st.message
        );
        // One more device lost: reads of most blocks fail clearly, writes are refused.
        f[p].set_fail_reads(true);
        f[p].set_fail_writes(true);
        let (dva, d) = &more[8];
        assert!(spa.read(*dva, d.len() as u32, &check(xxh3_64(d))).is_err());
        let w = spa
            .alloc(4096, AllocClass::Data, 3)
            .and_then(|dva| spa.write(dva, &[1u8; 4096]));
        assert!(w.is_err(), "{kind:?}");
    }
}

#[test]
fn hung_device_is_faulted_after_the_timeout_and_redundancy_serves() {
    let (_m, f) = faulty("h", 3);
    let o = SpaOptions {
        force: false,
        io_timeout: Duration::from_millis(300),
    };
    let spa = Spa::create_on("tank", vec![group(GroupKind::Raidz, dyns(&f))], o.clone()).unwrap();
    let blocks = write_blocks(&spa, 1, 10, 21);
    spa.sync(1, b"r").unwrap();
    f[1].set_hang(Duration::from_secs(30));
    let t = std::time::Instant::now();
    read_back(&spa, &blocks);
    let more = write_blocks(&spa, 2, 5, 22);
    spa.sync(2, b"s").unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    read_back(&spa, &more);
    let st = spa.status();
    assert_eq!(st.health, Health::Degraded);
    assert_eq!(st.groups[0].devices[1].state, "FAULTED");
    f[1].release_hang();
    drop(spa);
    // Import with a hung device is bounded too. (The same device: it missed the writes of
    // txg 2, so with another device hung those blocks would rightly be lost.)
    f[1].set_hang(Duration::from_secs(30));
    let t = std::time::Instant::now();
    let spa = Spa::import_devices("tank", dyns(&f), o).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "import took {:?}",
        t.elapsed()
    );
    read_back(&spa, &more);
    assert_eq!(spa.status().health, Health::Degraded);
    f[1].release_hang();
}

#[test]
fn import_reports_missing_devices_and_refuses_foreign_ones() {
    let devs = mems("i", 3);
    let spa = Spa::create_on("tank", vec![group(GroupKind::Raidz, dyns(&devs))], opts()).unwrap();
    let blocks = write_blocks(&spa, 1, 10, 31);
    spa.sync(1, b"r").unwrap();
    drop(spa);
    let spa = Spa::import_devices("tank", vec![devs[2].clone(), devs[0].clone()], opts()).unwrap();
    let st = spa.status();
    assert_eq!(st.health, Health::Degraded);
    assert!(st.groups[0]
        .devices
        .iter()
        .any(|d| d.state == "UNAVAIL" && d.path == "i1"));
    read_back(&spa, &blocks);
    drop(spa);
    // Two of three missing: FAULTED, with the devices named.
    let err = Spa::import_devices("tank", vec![devs[0].clone()], opts()).unwrap_err();
    assert!(
        matches!(err, SpaError::PoolFaulted { .. }) && err.to_string().contains("i1"),
        "{err}"
    );
    // A device of another pool is refused.
    let other = mems("o", 2);
    drop(
        Spa::create_on(
            "other",
            vec![group(GroupKind::Mirror, dyns(&other))],
            opts(),
        )
        .unwrap(),
    );
    let err = Spa::import_devices(
        "tank",
        vec![devs[0].clone(), devs[1].clone(), other[0].clone()],
        opts(),
    )
    .unwrap_err();
    assert!(matches!(err, SpaError::ForeignDevice { .. }), "{err}");
    let err = Spa::import_devices("nope", dyns(&other), opts()).unwrap_err();
    assert!(matches!(err, SpaError::ForeignDevice { .. }), "{err}");
    let blank = mems("b", 1);
    let err = Spa::import_devices("tank", dyns(&blank), opts()).unwrap_err();
    assert!(matches!(err, SpaError::PoolNotFound { .. }), "{err}");
}

#[test]
fn create_refuses_existing_data_and_bad_layouts_unless_forced() {
    let devs = mems("e", 3);
    drop(Spa::create_on("tank", vec![group(GroupKind::Raidz, dyns(&devs))], opts()).unwrap());
    let err =
        Spa::create_on("tank2", vec![group(GroupKind::Raidz, dyns(&devs))], opts()).unwrap_err();
    assert!(matches!(err, SpaError::DeviceHasData { .. }), "{err}");
    drop(
        Spa::create_on(
            "tank2",
            vec![group(GroupKind::Raidz, dyns(&devs))],
            SpaOptions {
                force: true,
                ..opts()
            },
        )
        .unwrap(),
    );
    // Front labels overwritten, back labels left: still recognised.
    devs[0].poke(0, &vec![0u8; 2 * 1024 * 1024]);
    let err = Spa::create_on(
        "t3",
        vec![group(GroupKind::Stripe, vec![devs[0].clone()])],
        opts(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("pool label"), "{err}");
    let ext4 = MemDevice::new("ext4", DEV);
    ext4.poke(0, &[0u8; 4096]);
    let mut sb = vec![0u8; 4096];
    sb[1080] = 0x53;
    sb[1081] = 0xEF;
    ext4.poke(0, &sb);
    let err = Spa::create_on(
        "t",
        vec![group(GroupKind::Stripe, vec![ext4.clone()])],
        opts(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("ext2/3/4"), "{err}");
    let gpt = MemDevice::new("gpt", DEV);
    gpt.poke(512, b"EFI PART");
    let err = Spa::create_on("t", vec![group(GroupKind::Stripe, vec![gpt])], opts()).unwrap_err();
    assert!(err.to_string().contains("GPT"), "{err}");
    for (kind, n) in [
        (GroupKind::Mirror, 1),
        (GroupKind::Raidz, 2),
        (GroupKind::Raidz2, 3),
    ] {
        let err = Spa::create_on("t", vec![group(kind, dyns(&mems("l", n)))], opts()).unwrap_err();
        assert!(matches!(err, SpaError::InvalidLayout(_)), "{err}");
    }
    let small = MemDevice::new("small", 8 * 1024 * 1024);
    let err = Spa::create_on("t", vec![group(GroupKind::Stripe, vec![small])], opts()).unwrap_err();
    assert!(matches!(err, SpaError::DeviceTooSmall { .. }), "{err}");
    let d = mems("dup", 1);
    let err = Spa::create_on(
        "t",
        vec![group(GroupKind::Mirror, vec![d[0].clone(), d[0].clone()])],
        opts(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
}

#[test]
fn space_reports_usable_bytes_after_redundancy() {
    let data_region = (DEV - 4 * 1024 * 1024) as f64;
    for (kind, n, frac) in [
        (GroupKind::Stripe, 3, 3.0),
        (GroupKind::Mirror, 3, 1.0),
        (GroupKind::Raidz, 4, 3.0),
        (GroupKind::Raidz2, 6, 4.0),
    ] {
        let spa = Spa::create_on("tank", vec![group(kind, dyns(&mems("s", n)))], opts()).unwrap();
        let s = spa.space();
        let want = data_region * frac;
        assert!(
            (s.size_bytes as f64 - want).abs() / want < 0.01,
            "{kind:?}: {} vs {want}",
            s.size_bytes
        );
        assert_eq!(s.allocated_bytes, 0);
        let dva = spa.alloc(128 * 1024, AllocClass::Data, 1).unwrap();
        assert_eq!(spa.asize(dva.vdev, 128 * 1024), dva.asize);
    }
}

#[test]
fn replace_then_resilver_only_live_blocks_then_finish() {
    for (kind, n) in [
        (GroupKind::Mirror, 2),
        (GroupKind::Raidz, 3),
        (GroupKind::Raidz2, 4),
    ] {
        let devs = mems("r", n);
        let spa = Spa::create_on("tank", vec![group(kind, dyns(&devs))], opts()).unwrap();
        let blocks = write_blocks(&spa, 1, 30, 41);
        spa.sync(1, b"r").unwrap();
        let newdev = MemDevice::new("new", DEV);
        spa.replace_device("r0", newdev.clone()).unwrap();
        assert!(spa.is_resilvering());
        read_back(&spa, &blocks);
        let mut written = 0;
        for (dva, d) in &blocks {
            written += spa
                .resilver_block(*dva, d.len() as u32, &check(xxh3_64(d)))
                .unwrap();
        }
        assert!(written > 0);
        spa.sync(2, b"s").unwrap();
        spa.finish_replace().unwrap();
        assert!(!spa.is_resilvering());
        drop(spa);
        // The old device is gone for good; the new one alone carries its columns: lose
        // another device and the data is still there.
        let mut rest: Vec<Arc<dyn Device>> = vec![newdev.clone()];
        rest.extend(devs[2..].iter().map(|d| d.clone() as Arc<dyn Device>));
        if kind == GroupKind::Mirror {
            rest = vec![newdev.clone()];
        }
        let spa = Spa::import_devices("tank", rest, opts()).unwrap();
        read_back(&spa, &blocks);
        assert_eq!(spa.last_root().unwrap().0, 2);
    }
}

#[test]
fn add_group_spreads_new_blocks_and_persists() {
    let devs = mems("a", 2);
    let spa = Spa::create_on("tank", vec![group(GroupKind::Mirror, dyns(&devs))], opts()).unwrap();
    let first = write_blocks(&spa, 1, 10, 51);
    spa.sync(1, b"1").unwrap();
    let size1 = spa.space().size_bytes;
    let added = mems("b", 3);
    spa.add_group(group(GroupKind::Raidz, dyns(&added)))
        .unwrap();
    assert!(spa.space().size_bytes > size1);
    let more = write_blocks(&spa, 2, 40, 52);
    assert!(
        more.iter().any(|(d, _)| d.vdev == 1),
        "new group receives blocks"
    );
    spa.sync(2, b"2").unwrap();
    drop(spa);
    let mut all = dyns(&added);
    all.extend(dyns(&devs));
    let spa = Spa::import_devices("tank", all, opts()).unwrap();
    read_back(&spa, &first);
    read_back(&spa, &more);
    assert_eq!(spa.status().groups.len(), 2);
    // A stripe pool grows by a disk.
    let s = mems("s", 1);
    let spa = Spa::create_on("st", vec![group(GroupKind::Stripe, dyns(&s))], opts()).unwrap();
    spa.add_group(group(GroupKind::Stripe, dyns(&mems("t", 1))))
        .unwrap();
    assert_eq!(spa.config().vdevs.len(), 2);
}

#[test]
fn log_class_goes_to_the_log_group() {
    let devs = mems("m", 2);
    let log = mems("log", 1);
    let spa = Spa::create_on(
        "tank",
        vec![
            group(GroupKind::Mirror, dyns(&devs)),
            GroupSpec {
                kind: GroupKind::Stripe,
                devices: dyns(&log),
                log: true,
            },
        ],
        opts(),
    )
    .unwrap();
    let size = spa.space().size_bytes;
    assert!(size < 64 * 1024 * 1024, "log group not counted in size");
    let d = spa.alloc(4096, AllocClass::Log, 1).unwrap();
    assert_eq!(d.vdev, 1);
    let d = spa.alloc(4096, AllocClass::Data, 1).unwrap();
    assert_eq!(d.vdev, 0);
}

#[test]
fn sync_rejects_old_txgs_and_large_roots() {
    let spa = Spa::create_on(
        "tank",
        vec![group(GroupKind::Stripe, dyns(&mems("q", 1)))],
        opts(),
    )
    .unwrap();
    spa.sync(5, b"x").unwrap();
    assert!(spa.sync(5, b"x").is_err());
    assert!(spa.sync(6, &vec![0u8; 2000]).is_err());
    spa.sync(6, b"y").unwrap();
}

#[test]
fn device_lost_while_running_comes_back_resilvering_and_is_rebuilt() {
    let (_m, f) = faulty("w", 3);
    let spa = Spa::create_on("tank", vec![group(GroupKind::Raidz, dyns(&f))], opts()).unwrap();
    let old = write_blocks(&spa, 1, 10, 61);
    spa.sync(1, b"1").unwrap();
    f[0].set_fail_writes(true);
    let missed = write_blocks(&spa, 2, 10, 62);
    spa.sync(2, b"2").unwrap();
    drop(spa);
    f[0].set_fail_writes(false);
    let spa = Spa::import_devices("tank", dyns(&f), opts()).unwrap();
    assert!(spa.is_resilvering(), "the returning device is marked");
    let st = spa.status();
    assert_eq!(st.health, Health::Degraded);
    assert!(st.groups[0].devices[0].resilvering);
    read_back(&spa, &old);
    read_back(&spa, &missed);
    for (dva, d) in old.iter().chain(&missed) {
        spa.resilver_block(*dva, d.len() as u32, &check(xxh3_64(d)))
            .unwrap();
    }
    spa.sync(3, b"3").unwrap();
    spa.finish_resilver().unwrap();
    assert_eq!(spa.status().health, Health::Online);
    // Now the rebuilt device carries its share: lose another and all blocks are there.
    f[1].set_fail_reads(true);
    read_back(&spa, &old);
    read_back(&spa, &missed);
}

#[test]
fn replacing_a_healthy_device_keeps_redundancy_until_finished_even_across_import() {
    let (m, f) = faulty("k", 3);
    let spa = Spa::create_on("tank", vec![group(GroupKind::Raidz, dyns(&f))], opts()).unwrap();
    let blocks = write_blocks(&spa, 1, 20, 71);
    spa.sync(1, b"1").unwrap();
    let newdev = FaultyDevice::new(MemDevice::new("knew", DEV) as Arc<dyn Device>);
    spa.replace_device("k0", newdev.clone()).unwrap();
    assert!(
        spa.replace_device("k1", MemDevice::new("other", DEV))
            .is_err(),
        "one replace per group"
    );
    let st = spa.status();
    assert_eq!(
        st.health,
        Health::Online,
        "old device still serves: {:?}",
        st.message
    );
    assert!(st.groups[0]
        .devices
        .iter()
        .any(|d| d.being_replaced && d.path == "k0"));
    // Blocks written during the replace reach old and new.
    let during = write_blocks(&spa, 2, 10, 72);
    spa.sync(2, b"2").unwrap();
    drop(spa);
    // Across import, the pair is remembered; losing another device is still survivable.
    let mut all = dyns(&f);
    all.push(newdev.clone());
    let spa = Spa::import_devices("tank", all, opts()).unwrap();
    assert!(spa.is_resilvering());
    f[1].set_fail_reads(true);
    read_back(&spa, &blocks);
    read_back(&spa, &during);
    f[1].set_fail_reads(false);
    for (dva, d) in blocks.iter().chain(&during) {
        spa.resilver_block(*dva, d.len() as u32, &check(xxh3_64(d)))
            .unwrap();
    }
    spa.sync(3, b"3").unwrap();
    spa.finish_replace().unwrap();
    let st = spa.status();
    assert_eq!(st.health, Health::Online);
    assert!(!st.groups[0].devices.iter().any(|d| d.path == "k0"));
    drop(spa);
    // The retired device no longer carries a label; the pool imports without it.
    let err = Spa::import_devices("tank", vec![m[0].clone()], opts()).unwrap_err();
    assert!(matches!(err, SpaError::PoolNotFound { .. }), "{err}");
    let spa = Spa::import_devices(
        "tank",
        vec![newdev.clone(), f[1].clone(), f[2].clone()],
        opts(),
    )
    .unwrap();
    f[2].set_fail_reads(true);
    read_back(&spa, &blocks);
    read_back(&spa, &during);
}

#[test]
fn concurrent_writers_with_pipelined_syncs_stay_consistent() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let devs = mems("cc", 3);
    let spa = Arc::new(
        Spa::create_on("tank", vec![group(GroupKind::Raidz, dyns(&devs))], opts()).unwrap(),
    );
    let open_txg = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let written: Vec<Vec<(Dva, Vec<u8>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let (spa, open_txg, stop) = (spa.clone(), open_txg.clone(), stop.clone());
                s.spawn(move || {
                    let mut mine = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let txg = open_txg.load(Ordering::SeqCst);
                        let d = data(t * 100_000 + i, 4096 * (1 + (i as usize % 4)));
                        let dva = spa.alloc(d.len() as u32, AllocClass::Data, txg).unwrap();
                        spa.write(dva, &d).unwrap();
                        let sum = xxh3_64(&d);
                        assert_eq!(spa.read(dva, d.len() as u32, &check(sum)).unwrap(), d);
                        if i.is_multiple_of(3) {
                            spa.free(dva, txg);
                        } else {
                            mine.push((dva, d));
                        }
                        i += 1;
                    }
                    mine
                })
            })
            .collect();
        for _ in 0..30 {
            let t = open_txg.fetch_add(1, Ordering::SeqCst);
            spa.sync(t, &t.to_le_bytes()).unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let t = open_txg.load(Ordering::SeqCst);
    spa.sync(t, b"final").unwrap();
    let all: Vec<(Dva, Vec<u8>)> = written.into_iter().flatten().collect();
    read_back(&spa, &all);
    assert_eq!(spa.bad_frees(), 0);
    let allocated = spa.space().allocated_bytes;
    drop(spa);
    let spa = Spa::import_devices("tank", dyns(&devs), opts()).unwrap();
    assert_eq!(spa.space().allocated_bytes, allocated);
    read_back(&spa, &all);
    for (dva, _) in &all {
        assert!(
            spa.is_allocated(*dva),
            "live block {dva:?} free after reopen"
        );
    }
}

#[test]
fn claim_protects_unsynced_log_blocks_after_import() {
    let devs = mems("cl", 2);
    let spa = Spa::create_on("tank", vec![group(GroupKind::Mirror, dyns(&devs))], opts()).unwrap();
    spa.sync(1, b"1").unwrap();
    // An intent-log block written and flushed but never synced.
    let d = data(81, 8192);
    let dva = spa.alloc(8192, AllocClass::Log, 2).unwrap();
    spa.write(dva, &d).unwrap();
    BlockStore::flush(&spa).unwrap();
    drop(spa);
    let spa = Spa::import_devices("tank", dyns(&devs), opts()).unwrap();
    assert!(
        !spa.is_allocated(dva),
        "unsynced allocation is free after import"
    );
    spa.claim(dva, 2).unwrap();
    assert!(spa.is_allocated(dva));
    spa.claim(dva, 2).unwrap();
    for _ in 0..50 {
        let other = spa.alloc(8192, AllocClass::Data, 2).unwrap();
        assert!(other.offset + other.asize <= dva.offset || dva.offset + dva.asize <= other.offset);
    }
    read_back(&spa, &[(dva, d)]);
    let bad = Dva {
        vdev: 0,
        offset: dva.offset + 4096,
        asize: 1 << 40,
    };
    assert!(spa.claim(bad, 2).is_err());
}

#[test]
fn a_device_that_shrank_is_faulted_at_import() {
    let devs = mems("sh", 3);
    let spa = Spa::create_on("tank", vec![group(GroupKind::Raidz, dyns(&devs))], opts()).unwrap();
    let blocks = write_blocks(&spa, 1, 10, 91);
    spa.sync(1, b"1").unwrap();
    drop(spa);
    let img = devs[1].image();
    let mut small = img[..(DEV / 2) as usize].to_vec();
    // Keep its front labels; the back ones are gone with the truncation.
    small.truncate((DEV / 2) as usize);
    let shrunk = MemDevice::from_image("sh1", small);
    let spa = Spa::import_devices(
        "tank",
        vec![devs[0].clone(), shrunk, devs[2].clone()],
        opts(),
    )
    .unwrap();
    let st = spa.status();
    assert_eq!(st.health, Health::Degraded);
    assert_eq!(st.groups[0].devices[1].state, "FAULTED");
    read_back(&spa, &blocks);
}

#[test]
fn failed_flush_latches_the_device_and_sync_goes_on_with_redundancy() {
    let (_m, f) = faulty("fl", 2);
    let spa = Spa::create_on("tank", vec![group(GroupKind::Mirror, dyns(&f))], opts()).unwrap();
    let a = write_blocks(&spa, 1, 5, 101);
    f[0].set_fail_flush(true);
    spa.sync(1, b"1").unwrap();
    let st = spa.status();
    assert_eq!(st.groups[0].devices[0].state, "FAULTED");
    assert!(st.groups[0].devices[0]
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("flush"));
    // Fail-stop: no further I/O reaches the device even once it would work again.
    f[0].set_fail_flush(false);
    let writes = f[0].write_count();
    let b = write_blocks(&spa, 2, 5, 102);
    spa.sync(2, b"2").unwrap();
    assert_eq!(f[0].write_count(), writes);
    read_back(&spa, &a);
    read_back(&spa, &b);
}

#[test]
fn stripe_pool_faults_when_a_disk_fails_and_names_it() {
    let (_m, f) = faulty("sp", 2);
    let spa = Spa::create_on("tank", vec![group(GroupKind::Stripe, dyns(&f))], opts()).unwrap();
    write_blocks(&spa, 1, 5, 111);
    spa.sync(1, b"1").unwrap();
    f[1].set_fail_writes(true);
    let r = (0..20).try_for_each(|_| {
        let dva = spa.alloc(4096, AllocClass::Data, 2)?;
        spa.write(dva, &[7u8; 4096])
    });
    assert!(r.is_err());
    let st = spa.status();
    assert_eq!(st.health, Health::Faulted);
    assert!(st.message.unwrap().contains("sp1"));
    let err = spa.sync(2, b"2").unwrap_err();
    assert!(err.to_string().contains("sp1"), "{err}");
}

#[test]
fn raidz2_serves_with_two_hung_devices_and_imports_around_them() {
    let (_m, f) = faulty("h2", 5);
    let o = SpaOptions {
        force: false,
        io_timeout: Duration::from_millis(300),
    };
    let spa = Spa::create_on("tank", vec![group(GroupKind::Raidz2, dyns(&f))], o.clone()).unwrap();
    let blocks = write_blocks(&spa, 1, 10, 121);
    spa.sync(1, b"1").unwrap();
    f[0].set_hang(Duration::from_secs(30));
    f[3].set_hang(Duration::from_secs(30));
    let t = std::time::Instant::now();
    read_back(&spa, &blocks);
    let more = write_blocks(&spa, 2, 10, 122);
    spa.sync(2, b"2").unwrap();
    read_back(&spa, &more);
    assert_eq!(spa.status().health, Health::Degraded);
    drop(spa);
    let spa = Spa::import_devices("tank", dyns(&f), o).unwrap();
    read_back(&spa, &blocks);
    read_back(&spa, &more);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    f[0].release_hang();
    f[3].release_hang();
}

#[test]
fn corrupt_addresses_are_errors_never_panics() {
    for (kind, n) in every_kind() {
        let spa = Spa::create_on("tank", vec![group(kind, dyns(&mems("ca", n)))], opts()).unwrap();
        let ok = |_: &[u8]| true;
        let bad = [
            Dva {
                vdev: 0,
                offset: 1,
                asize: 4096,
            },
            Dva {
                vdev: 0,
                offset: 4096,
                asize: 100,
            },
            Dva {
                vdev: 0,
                offset: u64::MAX - 4095,
                asize: 8192,
            },
            Dva {
                vdev: 0,
                offset: 0,
                asize: 0,
            },
            Dva {
                vdev: 99,
                offset: 0,
                asize: 4096,
            },
            Dva {
                vdev: 0,
                offset: 1 << 50,
                asize: 4096,
            },
        ];
        for dva in bad {
            assert!(spa.read(dva, 4096, &ok).is_err(), "{kind:?} {dva:?}");
            assert!(spa.write(dva, &[0u8; 4096]).is_err(), "{kind:?} {dva:?}");
            assert!(spa.scrub_block(dva, 4096, &ok).is_err(), "{kind:?} {dva:?}");
            assert!(
                spa.resilver_block(dva, 4096, &ok).is_err(),
                "{kind:?} {dva:?}"
            );
            spa.free(dva, 1);
        }
        let good = spa.alloc(8192, AllocClass::Data, 1).unwrap();
        assert!(spa.read(good, 4095, &ok).is_err());
        assert!(spa.scrub_block(good, 1, &ok).is_err());
        assert!(spa.read(good, 1 << 30, &ok).is_err());
        assert!(spa.alloc(100, AllocClass::Data, 1).is_err());
        assert_eq!(spa.bad_frees(), 6);
    }
}

#[test]
fn an_old_copy_of_a_device_put_back_reads_correctly_and_scrub_repairs_it() {
    for (kind, n) in [
        (GroupKind::Mirror, 2),
        (GroupKind::Raidz, 3),
        (GroupKind::Raidz2, 4),
    ] {
        let devs = mems("old", n);
        let spa = Spa::create_on("tank", vec![group(kind, dyns(&devs))], opts()).unwrap();
        let first = write_blocks(&spa, 1, 10, 131);
        spa.sync(1, b"1").unwrap();
        let stale = devs[0].image();
        let second = write_blocks(&spa, 2, 20, 132);
        spa.sync(2, b"2").unwrap();
        drop(spa);
        let mut back = dyns(&devs);
        back[0] = MemDevice::from_image("old0", stale);
        let spa = Spa::import_devices("tank", back, opts()).unwrap();
        assert_eq!(
            spa.last_root().unwrap().0,
            2,
            "{kind:?}: newest uberblock wins"
        );
        read_back(&spa, &first);
        read_back(&spa, &second);
        let mut repaired = 0;
        for (dva, d) in first.iter().chain(&second) {
            repaired += spa
                .scrub_block(*dva, d.len() as u32, &check(xxh3_64(d)))
                .unwrap();
        }
        spa.scrub_internal().unwrap();
        assert!(repaired > 0 || kind == GroupKind::Mirror, "{kind:?}");
        for (dva, d) in first.iter().chain(&second) {
            assert_eq!(
                spa.scrub_block(*dva, d.len() as u32, &check(xxh3_64(d)))
                    .unwrap(),
                0,
                "{kind:?}"
            );
        }
    }
}
