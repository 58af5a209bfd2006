//! APTPL reservations on a pool volume survive a target restart (issue 9 item 4): they
//! are kept as volume properties, committed with the pool before PERSISTENT RESERVE OUT
//! completes, and a new target over the re-imported pool fences the same initiators.
#![allow(clippy::big_endian_bytes)] // SCSI fields are big-endian.

use bytes::Bytes;
use cstor_iscsi::scsi::{nexus_id, Cdb, LogicalUnit, NexusId};
use cstor_iscsi::{Cancel, ReservationStore};
use cstor_node::volume_backend::PoolVolumeBackend;
use cstor_pool::spa::testdev::MemDevice;
use cstor_pool::spa::{Device, GroupKind, GroupSpec, Spa, SpaOptions};
use cstor_pool::{Compression, Pool, PoolOptions};
use std::sync::Arc;
use std::time::Duration;

fn popts() -> PoolOptions {
    PoolOptions {
        background_commit: false,
        txg_interval: Duration::from_secs(3600),
        ..PoolOptions::default()
    }
}

fn lu_of(pool: Arc<Pool>) -> LogicalUnit {
    let b = Arc::new(PoolVolumeBackend::new(pool, "v").unwrap());
    let store: Arc<dyn ReservationStore> = Arc::new(b.reservation_store());
    LogicalUnit::new(
        b,
        "iqn.2024-01.io.cstor.test:aptpl",
        Duration::from_secs(5),
        Default::default(),
        Some(store),
        3,
    )
    .unwrap()
}

async fn run(lu: &LogicalUnit, nexus: &NexusId, cdb: &[u8], data: Vec<u8>) -> (u8, Bytes) {
    let mut c = cdb.to_vec();
    c.resize(16, 0);
    let r = lu
        .execute(Cdb {
            bytes: &c,
            data_out: Bytes::from(data),
            nexus,
            cancel: Cancel::new(),
        })
        .await;
    (r.status, r.data)
}

fn pr_out(sa: u8, kind: u8, key: u64, sa_key: u64, aptpl: bool) -> ([u8; 10], Vec<u8>) {
    let mut c = [0u8; 10];
    c[0] = 0x5f;
    c[1] = sa;
    c[2] = kind;
    c[8] = 24;
    let mut d = vec![0u8; 24];
    d[..8].copy_from_slice(&key.to_be_bytes());
    d[8..16].copy_from_slice(&sa_key.to_be_bytes());
    d[20] = u8::from(aptpl);
    (c, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aptpl_reservation_on_a_pool_volume_survives_a_target_restart() {
    let mem = MemDevice::new("m0", 64 << 20);
    let devs = || vec![mem.clone() as Arc<dyn Device>];
    let spa = Arc::new(
        Spa::create_on(
            "prpool",
            vec![GroupSpec {
                kind: GroupKind::Stripe,
                devices: devs(),
                log: false,
            }],
            SpaOptions::default(),
        )
        .unwrap(),
    );
    let pool = Pool::create(spa, popts()).unwrap();
    pool.create_volume("v", 4 << 20, None, Some(Compression::Off))
        .unwrap();
    pool.sync().unwrap();
    let pool = Arc::new(pool);
    let holder = nexus_id("iqn.2024-01.io.cstor.test:holder", &[0x80, 0, 0, 0, 0, 1]);
    let other = nexus_id("iqn.2024-01.io.cstor.test:other", &[0x80, 0, 0, 0, 0, 2]);
    {
        let lu = lu_of(pool.clone());
        lu.attach_nexus(&holder);
        let (c, d) = pr_out(0, 0, 0, 0xabc, true);
        assert_eq!(run(&lu, &holder, &c, d).await.0, 0, "REGISTER with APTPL");
        let (c, d) = pr_out(1, 1, 0xabc, 0, true);
        assert_eq!(
            run(&lu, &holder, &c, d).await.0,
            0,
            "RESERVE Write Exclusive"
        );
    }
    // "Restart": the target and the pool go away without another commit, and the pool is
    // imported again from its device.
    drop(pool);
    let spa = Arc::new(Spa::import_devices("prpool", devs(), SpaOptions::default()).unwrap());
    let pool = Arc::new(Pool::open(spa, popts()).unwrap());
    let lu = lu_of(pool);
    lu.attach_nexus(&other);
    lu.attach_nexus(&holder);
    // READ KEYS shows the registration; READ RESERVATION the holder's key.
    let (status, keys) = run(&lu, &other, &[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], vec![]).await;
    assert_eq!(status, 0);
    assert_eq!(&keys[8..16], &0xabcu64.to_be_bytes());
    let (status, res) = run(&lu, &other, &[0x5e, 1, 0, 0, 0, 0, 0, 0x10, 0, 0], vec![]).await;
    assert_eq!(status, 0);
    assert_eq!(
        &res[8..16],
        &0xabcu64.to_be_bytes(),
        "the reservation survived"
    );
    // And it fences: the other initiator's write conflicts, the holder's works.
    let write = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    assert_eq!(run(&lu, &other, &write, vec![1; 512]).await.0, 0x18);
    assert_eq!(run(&lu, &holder, &write, vec![1; 512]).await.0, 0);
}
