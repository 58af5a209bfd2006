//! Backend events (issue 9 item 5): `CapacityChanged` becomes CAPACITY DATA HAS CHANGED
//! on every I_T nexus of the LU, `Stopping` sends every session the asynchronous
//! "request logout" event.
#![allow(clippy::big_endian_bytes)] // SCSI fields are big-endian.

mod initiator;
use cstor_iscsi::pdu::op;
use cstor_iscsi::{BackendEvent, BackendIdentity, BlockBackend};
use initiator::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

const IQN: &str = "iqn.2024-01.io.cstor.test:events";
const INI: &str = "iqn.2024-01.io.cstor.test:initiator";

/// A LUN of zeros that raises events on request. Its size never changes: the unit
/// attention can only come from the event.
#[derive(Debug)]
struct Eventful {
    id: BackendIdentity,
    events: broadcast::Sender<BackendEvent>,
}

impl BlockBackend for Eventful {
    fixed_lu!();
    fn events(&self) -> Option<broadcast::Receiver<BackendEvent>> {
        Some(self.events.subscribe())
    }
    zero_read!();
    ignored_write!();
    instant_flush!();
    ignored_unmap!();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_change_and_stopping_events_reach_every_session() {
    let b = Arc::new(Eventful {
        id: BackendIdentity {
            id: [7; 16],
            serial: "eventful".into(),
        },
        events: broadcast::channel(16).0,
    });
    let server = cstor_iscsi::Server::new();
    server
        .add_target(cstor_iscsi::TargetConfig::new(IQN, b.clone()))
        .unwrap();
    let addr = listen(&server).await;
    let mut sessions = Vec::new();
    for i in 1..=2u8 {
        let mut ini = login(&addr, IQN, INI, [0x80, 0, 0, 0, 0, i], false)
            .await
            .unwrap();
        let _ = ini.scsi(&[0u8; 6], 0, &[]).await; // the power-on unit attention
        assert_eq!(ini.scsi(&[0u8; 6], 0, &[]).await.status, 0);
        sessions.push(ini);
    }
    b.events.send(BackendEvent::CapacityChanged).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (i, ini) in sessions.iter_mut().enumerate() {
        let r = ini.scsi(&[0u8; 6], 0, &[]).await;
        assert_eq!(
            (r.status, r.sense_key()),
            (2, (6, 0x2a, 0x09)),
            "session {i}: CAPACITY DATA HAS CHANGED"
        );
        assert_eq!(ini.scsi(&[0u8; 6], 0, &[]).await.status, 0, "reported once");
    }
    b.events.send(BackendEvent::Stopping).unwrap();
    for (i, ini) in sessions.iter_mut().enumerate() {
        let p = tokio::time::timeout(Duration::from_secs(2), ini.read())
            .await
            .unwrap_or_else(|_| panic!("session {i}: no async event within 2 s"))
            .expect("connection up");
        assert_eq!(
            p.opcode(),
            op::ASYNC,
            "session {i}: an asynchronous message"
        );
        assert_eq!(p.bhs[36], 1, "session {i}: AsyncEvent 1, request logout");
    }
}
