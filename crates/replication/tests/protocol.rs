//! The replica protocol against a real replica server over a pool on a temp file: version
//! mismatch and bad keys are refused with clear errors, OPEN fences lower epochs (across
//! a replica restart), pipelined writes and reads round-trip, every reply carries the
//! replica's epoch.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use cstor_replication::client::ReplicaConn;
use cstor_replication::wire::{self, Op, OpenReq, Role};
use cstor_replication::{AuthKey, ReplicaError};

const T: Duration = Duration::from_secs(5);

fn open_req(epoch: u64, instance: &str) -> OpenReq {
    OpenReq {
        volume: VOL.into(),
        size: 8 << 20,
        epoch,
        instance: instance.into(),
        role: Role::Current,
        x0: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_mismatch_and_bad_auth_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let key = AuthKey::from_bytes(b"cluster-key-0123456789").unwrap();
    let rep = Rep::start(pool_on_file(d.path(), "p1"), "r1", Some(key.clone())).await;
    let e = ReplicaConn::connect_as(&rep.addr(), Some(&key), T, 99)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ReplicaError::VersionMismatch { ours: 99, theirs, .. } if theirs == &vec![1]),
        "{e}"
    );
    assert!(e.to_string().contains("version mismatch"), "{e}");
    let e = ReplicaConn::connect(&rep.addr(), None, T)
        .await
        .unwrap_err();
    assert!(matches!(e, ReplicaError::AuthFailed { .. }), "{e}");
    let wrong = AuthKey::from_bytes(b"another-key-0123456789").unwrap();
    let e = ReplicaConn::connect(&rep.addr(), Some(&wrong), T)
        .await
        .unwrap_err();
    assert!(matches!(e, ReplicaError::AuthFailed { .. }), "{e}");
    let c = ReplicaConn::connect(&rep.addr(), Some(&key), T)
        .await
        .unwrap();
    let o = c.open(&open_req(1, "a"), T).await.unwrap();
    assert!(o.created);
    assert_eq!(o.id, "r1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_fences_lower_epochs_durably_and_drops_the_old_session() {
    let d = tempfile::tempdir().unwrap();
    let mut rep = Rep::start(pool_on_file(d.path(), "p1"), "r1", None).await;
    let old = ReplicaConn::connect(&rep.addr(), None, T).await.unwrap();
    old.open(&open_req(5, "a"), T).await.unwrap();
    // Pipelined writes, each acknowledged, then read back.
    let mut started = Vec::new();
    for i in 0..32u64 {
        let s = old
            .start(Op::Write, wire::enc_write(i * BS, 10 + i, &block(i + 1)))
            .unwrap();
        started.push(s);
    }
    for s in started {
        old.finish(s, T).await.unwrap();
    }
    let r = old
        .call(Op::Read, wire::enc_u64s(&[3 * BS, BS]), T)
        .await
        .unwrap();
    assert_eq!(r, block(4));
    // A newer epoch fences: the old session gets no more replies, writes or reads.
    let new = ReplicaConn::connect(&rep.addr(), None, T).await.unwrap();
    let o = new.open(&open_req(6, "b"), T).await.unwrap();
    assert_eq!(o.max_io, 41);
    let e = old
        .call(
            Op::Write,
            wire::enc_write(0, 100, &block(999)),
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ReplicaError::Disconnected { .. } | ReplicaError::Timeout { .. }
        ),
        "{e}"
    );
    let r = new
        .call(Op::Read, wire::enc_u64s(&[0, BS]), T)
        .await
        .unwrap();
    assert_eq!(r, block(1), "a fenced session's write was applied");
    // A lower epoch is refused with the stored one, also after a replica restart.
    rep.restart().await;
    let z = ReplicaConn::connect(&rep.addr(), None, T).await.unwrap();
    match z.open(&open_req(5, "a"), T).await {
        Err(ReplicaError::Fenced { stored: 6, .. }) => {}
        other => panic!("expected FENCED(6), got {other:?}"),
    }
    // The same epoch from another instance is fenced too.
    let z = ReplicaConn::connect(&rep.addr(), None, T).await.unwrap();
    assert!(matches!(
        z.open(&open_req(6, "c"), T).await,
        Err(ReplicaError::Fenced { stored: 6, .. })
    ));
    // Replies carry the replica's epoch: a session at a lower epoch cannot pass.
    let ok = ReplicaConn::connect(&rep.addr(), None, T).await.unwrap();
    ok.open(&open_req(7, "d"), T).await.unwrap();
    let p = ok.call(Op::Ping, Bytes::new(), T).await.unwrap();
    assert_eq!(wire::dec_u64s::<2>(p).unwrap()[0], 0);
}
