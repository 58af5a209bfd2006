//! Format compatibility: a pool made by an earlier format version (the committed fixture
//! under tests/fixtures/, made by the code of that version) still imports with its data,
//! snapshots, properties and un-committed intent-log records; a structure of a newer
//! version is refused with an error that names it and says to upgrade.
//!
//! The fixture: a raidz of three 16 MiB devices, zstd-compressed images. Regenerate it
//! only with the code of the version it stands for:
//! `CSTOR_MAKE_FIXTURE=1 cargo test --release -p cstor-pool --test compat -- --ignored`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{pattern, spa_opts, Wrapped};
use cstor_pool::spa::testdev::MemDevice;
use cstor_pool::spa::{Device, GroupKind, GroupSpec, Spa};
use cstor_pool::{Compression, Pool, PoolOptions};

const DEV_BYTES: u64 = 16 << 20;
const VOL_BYTES: u64 = 4 << 20;

fn popts() -> PoolOptions {
    PoolOptions {
        background_commit: false,
        cache_bytes: 4 << 20,
        dirty_max_bytes: 8 << 20,
        txg_interval: Duration::from_secs(3600),
        ..PoolOptions::default()
    }
}

/// The writes of the fixture, in order: (offset, length, seed); then a snapshot after
/// `SNAP_AFTER` of them, a commit after `COMMITTED`, the rest only flushed to the log.
const WRITES: &[(u64, usize, u64)] = &[
    (0, 65536, 1),
    (1 << 20, 16384, 2),
    (3 << 20, 4096, 3),
    (8192, 4096, 4),
    (2 << 20, 32768, 5),
    (512, 1024, 6),
    (VOL_BYTES - 16384, 16384, 7),
];
const SNAP_AFTER: usize = 3;
const COMMITTED: usize = 5;

fn model(n: usize) -> Vec<u8> {
    let mut m = vec![0u8; VOL_BYTES as usize];
    for &(off, len, seed) in &WRITES[..n] {
        m[off as usize..off as usize + len].copy_from_slice(&pattern(seed, len));
    }
    m
}

fn fixture_dir(version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("pool-v{version}"))
}

#[test]
#[ignore]
fn make_fixture() {
    if std::env::var_os("CSTOR_MAKE_FIXTURE").is_none() {
        return;
    }
    let devs: Vec<Arc<MemDevice>> = (0..3)
        .map(|i| MemDevice::new(&format!("fx{i}"), DEV_BYTES))
        .collect();
    let dyns: Vec<Arc<dyn Device>> = devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect();
    let spa = Arc::new(
        Spa::create_on(
            "old",
            vec![GroupSpec {
                kind: GroupKind::Raidz,
                devices: dyns,
                log: false,
            }],
            spa_opts(),
        )
        .unwrap(),
    );
    let pool = Pool::create(spa.clone(), popts()).unwrap();
    let v = pool
        .create_volume("v", VOL_BYTES, Some(16384), Some(Compression::Lz4))
        .unwrap();
    pool.create_volume("w", VOL_BYTES, Some(4096), Some(Compression::Zstd))
        .unwrap();
    pool.set_property("w", "replica-id", "r-1").unwrap();
    for (i, &(off, len, seed)) in WRITES.iter().enumerate() {
        if i == SNAP_AFTER {
            pool.snapshot("v", "s1").unwrap();
        }
        if i == COMMITTED {
            pool.sync().unwrap();
        }
        v.write(off, &pattern(seed, len), Some(100 + i as u64))
            .unwrap();
    }
    pool.flush().unwrap();
    // No commit: the last writes live only in the intent log, as after a power cut.
    std::mem::forget(pool);
    let dir = fixture_dir(1);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, d) in devs.iter().enumerate() {
        let z = zstd::bulk::compress(&d.image(), 19).unwrap();
        std::fs::write(dir.join(format!("d{i}.img.zst")), z).unwrap();
    }
}

fn load_fixture(version: u32) -> Vec<Arc<dyn Device>> {
    let dir = fixture_dir(version);
    (0..3)
        .map(|i| {
            let z = std::fs::read(dir.join(format!("d{i}.img.zst")))
                .unwrap_or_else(|e| panic!("fixture {dir:?} d{i}: {e}"));
            let img = zstd::bulk::decompress(&z, DEV_BYTES as usize).unwrap();
            assert_eq!(img.len() as u64, DEV_BYTES);
            MemDevice::from_image(&format!("fx{i}"), img) as Arc<dyn Device>
        })
        .collect()
}

#[test]
fn pool_of_format_v1_imports_with_data_snapshot_and_log() {
    let spa = Arc::new(Spa::import_devices("old", load_fixture(1), spa_opts()).unwrap());
    let pool = Pool::open(spa.clone(), popts()).unwrap();
    let mut buf = vec![0u8; VOL_BYTES as usize];
    pool.volume("v").unwrap().read(0, &mut buf).unwrap();
    assert!(buf == model(WRITES.len()), "head differs (log replay)");
    pool.read_snapshot("v", "s1", 0, &mut buf).unwrap();
    assert!(buf == model(SNAP_AFTER), "snapshot differs");
    assert_eq!(
        pool.property("w", "replica-id").unwrap().as_deref(),
        Some("r-1")
    );
    // Still writable: the next commit writes the current format over the old one.
    let v = pool.volume("v").unwrap();
    v.write(4096, &[9u8; 4096], None).unwrap();
    pool.close().unwrap();
    drop(spa);
}

#[test]
fn pool_of_a_newer_format_is_refused_with_a_clear_message() {
    let mem = Arc::new(cstor_pool::memstore::MemStore::new(64 << 20));
    Pool::create(mem.clone(), popts()).unwrap().close().unwrap();
    // The root as a newer build would write it.
    let newer = Wrapped {
        edit_root: Some(|root| {
            root[8..12].copy_from_slice(&(cstor_pool::dir::ROOT_VERSION + 1).to_le_bytes())
        }),
        ..Wrapped::new(mem)
    };
    let e = Pool::open(Arc::new(newer), popts()).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, cstor_pool::PoolError::UnsupportedVersion { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("pool root version 3") && msg.contains("upgrade cstor"),
        "{msg}"
    );
}
