//! The pool-volume backend over a device that stalls (issue 9 item 1): a FUA write whose
//! intent-log write hangs on the device is never reported failed while it can still land.
//! While it is unsettled past the settle bound the LU answers NOT READY; when the device
//! comes back the write completes GOOD and its data is there.

use bytes::Bytes;
use cstor_iscsi::scsi::{nexus_id, Cdb, LogicalUnit};
use cstor_iscsi::Cancel;
use cstor_node::volume_backend::PoolVolumeBackend;
use cstor_pool::spa::testdev::{FaultyDevice, MemDevice};
use cstor_pool::spa::{Device, GroupKind, GroupSpec, Spa, SpaOptions};
use cstor_pool::{Compression, Pool, PoolOptions};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fua_write_stuck_on_a_stalled_device_is_not_ready_then_good_never_failed() {
    let mem = MemDevice::new("m0", 64 << 20);
    let dev = FaultyDevice::new(mem as Arc<dyn Device>);
    let spa = Arc::new(
        Spa::create_on(
            "stall",
            vec![GroupSpec {
                kind: GroupKind::Stripe,
                devices: vec![dev.clone() as Arc<dyn Device>],
                log: false,
            }],
            SpaOptions {
                force: false,
                // Longer than the stall: the device comes back before the pool gives up.
                io_timeout: Duration::from_secs(30),
            },
        )
        .unwrap(),
    );
    let pool = Pool::create(
        spa,
        PoolOptions {
            background_commit: false,
            txg_interval: Duration::from_secs(3600),
            ..PoolOptions::default()
        },
    )
    .unwrap();
    pool.create_volume("v", 4 << 20, None, Some(Compression::Off))
        .unwrap();
    let backend = Arc::new(PoolVolumeBackend::new(Arc::new(pool), "v").unwrap());
    let mut lu = LogicalUnit::new(
        backend,
        "iqn.2024-01.io.cstor.test:stall",
        Duration::from_millis(100),
        Default::default(),
        None,
        3,
    )
    .unwrap();
    lu.set_settle_bound(Duration::from_millis(400));
    let lu = Arc::new(lu);
    let nexus = nexus_id("iqn.2024-01.io.cstor.test:i", &[0x80, 0, 0, 0, 0, 1]);
    lu.attach_nexus(&nexus);

    dev.set_hang(Duration::from_secs(20));
    // WRITE(10) with FUA of 8 blocks at LBA 16.
    let mut write = vec![0u8; 16];
    write[..10].copy_from_slice(&[0x2a, 0x08, 0, 0, 0, 16, 0, 0, 8, 0]);
    let w = {
        let (lu, nexus) = (lu.clone(), nexus.clone());
        tokio::spawn(async move {
            let cdb = Cdb {
                bytes: &write,
                data_out: Bytes::from(vec![0xc3u8; 4096]),
                nexus: &nexus,
                cancel: Cancel::new(),
            };
            lu.execute(cdb).await
        })
    };
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!w.is_finished(), "the write is still stuck on the device");
    let tur = [0u8; 16];
    let r = lu
        .execute(Cdb {
            bytes: &tur,
            data_out: Bytes::new(),
            nexus: &nexus,
            cancel: Cancel::new(),
        })
        .await;
    let sense = r.sense.expect("NOT READY carries sense");
    assert_eq!(
        (r.status, sense.key, sense.asc, sense.ascq),
        (2, 2, 0x04, 0x01)
    );
    assert_eq!(lu.overdue_calls(), 1);
    dev.release_hang();
    let r = tokio::time::timeout(Duration::from_secs(10), w)
        .await
        .expect("settles once the device is back")
        .unwrap();
    assert_eq!(
        r.status, 0,
        "the write is reported GOOD, never failed: {:?}",
        r.sense
    );
    let mut read = vec![0u8; 16];
    read[..10].copy_from_slice(&[0x28, 0, 0, 0, 0, 16, 0, 0, 8, 0]);
    let r = lu
        .execute(Cdb {
            bytes: &read,
            data_out: Bytes::new(),
            nexus: &nexus,
            cancel: Cancel::new(),
        })
        .await;
    assert_eq!(r.status, 0);
    assert!(r.data.iter().all(|b| *b == 0xc3), "the write landed");
    assert_eq!(lu.overdue_calls(), 0, "ready again");
}
