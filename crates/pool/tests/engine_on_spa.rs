//! The block-tree engine over the real allocator (spa) on power-cut devices, raidz of 3:
//! random writes, UNMAPs, flushes, commits and snapshots until the power goes off at a
//! random device operation; every device's crash image is imported, the pool opened (log
//! replay), and: the data is a prefix of the issued writes at or after the last durable
//! one (flush, commit or snapshot that returned), snapshots that returned are intact, and
//! no live block is free in the allocator. Rounds: 6, `CSTOR_CRASH_ROUNDS` for more.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{apply, torn_next, Io};
use cstor_pool::spa::testdev::{FaultyDevice, MemDevice, PowerCutDevice, PowerSwitch, SeededRng};
use cstor_pool::spa::{Device, GroupKind, GroupSpec, Spa, SpaOptions};
use cstor_pool::store::BlockStore;
use cstor_pool::{Compression, Pool, PoolOptions};

const DEV: u64 = 64 << 20;
const VOL: u64 = 1 << 20;

fn popts() -> PoolOptions {
    PoolOptions {
        background_commit: false,
        cache_bytes: 8 << 20,
        dirty_max_bytes: 8 << 20,
        txg_interval: Duration::from_secs(3600),
        ..PoolOptions::default()
    }
}

fn round(seed: u64) {
    let mut rng = SeededRng::new(seed);
    let switch = PowerSwitch::never();
    let devs: Vec<Arc<PowerCutDevice>> = (0..3)
        .map(|i| {
            PowerCutDevice::with_switch(&format!("pc{i}"), vec![0u8; DEV as usize], switch.clone())
        })
        .collect();
    let dyns: Vec<Arc<dyn Device>> = devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect();
    let spa = Arc::new(
        Spa::create_on(
            "tank",
            vec![GroupSpec {
                kind: GroupKind::Raidz,
                devices: dyns,
                log: false,
            }],
            common::spa_opts(),
        )
        .unwrap(),
    );
    let pool = Pool::create(spa.clone(), popts()).unwrap();
    let names = ["v0", "v1"];
    for (i, n) in names.iter().enumerate() {
        let comp = [Compression::Lz4, Compression::Off][i];
        pool.create_volume(
            n,
            VOL,
            Some([4096, 16384][rng.below(2) as usize]),
            Some(comp),
        )
        .unwrap();
    }
    pool.sync().unwrap();
    let mut issued: Vec<Io> = Vec::new();
    let mut snaps: Vec<(usize, String, usize)> = Vec::new();
    let mut durable = 0;
    switch.cut_after(1 + rng.below(600));
    for _ in 0..150 {
        let vol = rng.below(2) as usize;
        let off = rng.below(VOL / 512) * 512;
        let len = (1 + rng.below(64)).min((VOL - off) / 512) * 512;
        let io = if rng.below(6) == 0 {
            Io::Unmap { vol, off, len }
        } else {
            let mut d = vec![0u8; len as usize];
            rng.fill(&mut d);
            Io::Write { vol, off, data: d }
        };
        issued.push(io.clone());
        let v = pool.volume(names[vol]).unwrap();
        let r = match &io {
            Io::Write { off, data, .. } => v.write(*off, data, Some(issued.len() as u64)),
            Io::Unmap { off, len, .. } => v.unmap(*off, *len, Some(issued.len() as u64)),
        };
        if r.is_err() {
            break;
        }
        let call = rng.below(12);
        let r = match call {
            0..=2 => pool.flush(),
            3 => pool.sync().map(|_| ()),
            4 => {
                let name = format!("s{}", issued.len());
                let r = pool.snapshot(names[vol], &name);
                // A power-cut device may swallow writes after the cut and still return
                // Ok, so only a call that returned with the power on counts.
                if r.is_ok() && !switch.is_off() {
                    snaps.push((vol, name, issued.len()));
                }
                r
            }
            _ => Ok(()),
        };
        if r.is_err() || switch.is_off() {
            break;
        }
        if call <= 4 {
            durable = issued.len();
        }
    }
    switch.cut_after(0);
    drop(pool);
    drop(spa);
    let images: Vec<Vec<u8>> = devs.iter().map(|d| d.crash_image(seed ^ 0x5a5a)).collect();
    let dyns: Vec<Arc<dyn Device>> = images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            PowerCutDevice::from_image(&format!("pc{i}"), img.clone()) as Arc<dyn Device>
        })
        .collect();
    let spa = Arc::new(
        Spa::import_devices("tank", dyns, common::spa_opts())
            .unwrap_or_else(|e| panic!("seed {seed}: import: {e}")),
    );
    let pool =
        Pool::open(spa.clone(), popts()).unwrap_or_else(|e| panic!("seed {seed}: open: {e}"));
    let got: Vec<Vec<u8>> = names
        .iter()
        .map(|n| {
            let mut b = vec![0u8; VOL as usize];
            pool.volume(n)
                .unwrap()
                .read(0, &mut b)
                .unwrap_or_else(|e| panic!("seed {seed}: read: {e}"));
            b
        })
        .collect();
    let mut model = vec![vec![0u8; VOL as usize]; 2];
    let mut ok = false;
    for k in 0..=issued.len() {
        if k > 0 {
            apply(&mut model, &issued[k - 1]);
        }
        if k >= durable && (model == got || torn_next(&model, &got, issued.get(k))) {
            ok = true;
            break;
        }
    }
    assert!(
        ok,
        "seed {seed}: recovered data is no prefix at or after {durable} of {}",
        issued.len()
    );
    for (vol, name, k) in &snaps {
        let mut want = vec![vec![0u8; VOL as usize]; 2];
        issued[..*k].iter().for_each(|io| apply(&mut want, io));
        let mut b = vec![0u8; VOL as usize];
        pool.read_snapshot(names[*vol], name, 0, &mut b)
            .unwrap_or_else(|e| panic!("seed {seed}: snapshot {name}: {e}"));
        assert!(b == want[*vol], "seed {seed}: snapshot {name} differs");
    }
    pool.sync().unwrap();
    pool.visit_live_blocks(&mut |dva, psize, verify| {
        assert!(
            spa.is_allocated(dva),
            "seed {seed}: live block {dva:?} is free"
        );
        let b = BlockStore::read(&*spa, dva, psize, verify);
        assert!(b.is_ok(), "seed {seed}: live block {dva:?} unreadable");
        Ok(())
    })
    .unwrap();
}

#[test]
fn engine_on_raidz_survives_power_cuts() {
    let rounds: u64 = std::env::var("CSTOR_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    for seed in 1..=rounds {
        round(seed);
    }
}

/// A commit keeps block writes in flight: when they fail, the commit fails, the pool
/// latches failed, and no root points at the unwritten blocks, so the reopened pool holds
/// the last committed data exactly.
/// `n` fault-injecting devices over memory, named `prefix0`, `prefix1`, ...
fn faulty_devices(prefix: &str, n: usize) -> Vec<Arc<FaultyDevice>> {
    (0..n)
        .map(|i| FaultyDevice::new(MemDevice::new(&format!("{prefix}{i}"), DEV) as Arc<dyn Device>))
        .collect()
}

#[test]
fn failed_in_flight_commit_writes_fail_the_commit_and_keep_the_last_root() {
    for kind in [GroupKind::Stripe, GroupKind::Raidz] {
        let n = if kind == GroupKind::Stripe { 1 } else { 3 };
        let faulty = faulty_devices("f", n);
        let dyns = |v: &[Arc<FaultyDevice>]| -> Vec<Arc<dyn Device>> {
            v.iter().map(|d| d.clone() as Arc<dyn Device>).collect()
        };
        let spa = Arc::new(
            Spa::create_on(
                "tank",
                vec![GroupSpec {
                    kind,
                    devices: dyns(&faulty),
                    log: false,
                }],
                common::spa_opts(),
            )
            .unwrap(),
        );
        let pool = Pool::create(spa.clone(), popts()).unwrap();
        let v = pool
            .create_volume("v", 4 << 20, None, Some(Compression::Off))
            .unwrap();
        let mut a = vec![0u8; 2 << 20];
        SeededRng::new(1).fill(&mut a);
        v.write(0, &a, None).unwrap();
        pool.sync().unwrap();
        // Enough blocks that many writes are in flight when they start failing; on raidz
        // all devices fail, beyond its redundancy.
        for f in &faulty {
            f.set_fail_writes(true);
        }
        let mut b = vec![0u8; 2 << 20];
        SeededRng::new(2).fill(&mut b);
        v.write(0, &b, None).unwrap();
        v.write(1 << 20, &b[..4096], None).unwrap();
        assert!(pool.sync().is_err(), "{kind:?}: commit with failed writes");
        assert!(
            v.write(0, &b[..4096], None).is_err(),
            "{kind:?}: the pool latches failed"
        );
        drop(v);
        drop(pool);
        drop(spa);
        for f in &faulty {
            f.set_fail_writes(false);
        }
        let spa = Arc::new(Spa::import_devices("tank", dyns(&faulty), common::spa_opts()).unwrap());
        let pool = Pool::open(spa, popts()).unwrap();
        let mut got = vec![0u8; 2 << 20];
        pool.volume("v").unwrap().read(0, &mut got).unwrap();
        assert!(got == a, "{kind:?}: the last committed data, exactly");
    }
}

/// A commit reads the old blocks under partial writes in batches, unverified; a batch
/// read that returns bad bytes (one raidz column corrupt on read) must not end up in the
/// new block: each is checked and read again through the healing path.
#[test]
fn partial_writes_over_corrupt_reads_commit_the_true_old_bytes() {
    // Each device in turn: which one holds data columns depends on the allocation.
    for bad in 0..3 {
        let faulty = faulty_devices("c", 3);
        let spa = Arc::new(
            Spa::create_on(
                "tank",
                vec![GroupSpec {
                    kind: GroupKind::Raidz,
                    devices: faulty
                        .iter()
                        .map(|d| d.clone() as Arc<dyn Device>)
                        .collect(),
                    log: false,
                }],
                common::spa_opts(),
            )
            .unwrap(),
        );
        // The indirect blocks stay cached (the commit caches those it writes), so the old
        // data blocks are the only reads: a corrupt one is first met by the batch read.
        let pool = Pool::create(spa.clone(), popts()).unwrap();
        let v = pool
            .create_volume("v", 4 << 20, Some(16384), Some(Compression::Off))
            .unwrap();
        let mut model = vec![0u8; 1 << 20];
        SeededRng::new(3).fill(&mut model);
        v.write(0, &model, None).unwrap();
        pool.sync().unwrap();
        faulty[bad].set_corrupt_reads(true);
        let mut piece = vec![0u8; 4096];
        SeededRng::new(4).fill(&mut piece);
        // One 4 KiB piece into each of 64 blocks: all partial, one batch.
        for b in 0..64u64 {
            let off = b * 16384 + (b % 4) * 4096;
            v.write(off, &piece, None).unwrap();
            model[off as usize..off as usize + 4096].copy_from_slice(&piece);
        }
        pool.sync().unwrap();
        faulty[bad].set_corrupt_reads(false);
        let mut got = vec![0u8; 1 << 20];
        v.read(0, &mut got).unwrap();
        assert!(
            got == model,
            "device {bad} corrupt: a block holds bytes the old block never had"
        );
    }
}

/// Throughput of the engine over spa on sparse files (stripe, mirror, raidz; compression
/// off): `cargo test -p cstor-pool --release --test
/// engine_on_spa -- --ignored --nocapture`.
#[test]
#[ignore]
fn engine_on_spa_files() {
    for (kind, n) in [
        (GroupKind::Stripe, 1usize),
        (GroupKind::Mirror, 2),
        (GroupKind::Raidz, 3),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<String> = (0..n)
            .map(|i| {
                let p = dir.path().join(format!("d{i}"));
                std::fs::File::create(&p).unwrap().set_len(4 << 30).unwrap();
                p.to_string_lossy().into_owned()
            })
            .collect();
        let spa = Arc::new(
            Spa::create(
                "t",
                &[GroupSpec {
                    kind,
                    devices: paths,
                    log: false,
                }],
                SpaOptions::default(),
            )
            .unwrap(),
        );
        let pool = Pool::create(spa, PoolOptions::default()).unwrap();
        let v = pool
            .create_volume("v", 2 << 30, None, Some(Compression::Off))
            .unwrap();
        let mut data = vec![0u8; 1 << 20];
        let mut x = 1u64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let total = 512u64;
        let t = Instant::now();
        for i in 0..total {
            v.write(i << 20, &data, None).unwrap();
        }
        pool.sync().unwrap();
        let w = total as f64 / t.elapsed().as_secs_f64();
        let mut buf = vec![0u8; 1 << 20];
        let t = Instant::now();
        for i in 0..total {
            v.read(i << 20, &mut buf).unwrap();
        }
        let r = total as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let m = 2000u64;
        for i in 0..m {
            let off = (i * 7919 % (total * 256)) * 4096;
            v.write(off, &data[..4096], None).unwrap();
        }
        pool.sync().unwrap();
        let rw = (m * 4096) as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let k = 300u64;
        for i in 0..k {
            v.write(i * 4096, &data[..4096], None).unwrap();
            v.flush().unwrap();
        }
        let lat = t.elapsed().as_secs_f64() * 1e6 / k as f64;
        eprintln!("spa {kind:?} x{n} on files: seq 1MiB write {w:.0} MiB/s read {r:.0} MiB/s; random 4KiB write {rw:.1} MiB/s; 4KiB write+flush {lat:.0} us");
        pool.close().unwrap();
    }
}
