//! cstor-iscsi: an iSCSI target (RFC 7143) with the SCSI block command set (SPC-4/SBC-3)
//! over a block-backend trait (ARCHITECTURE.md §2 decision 7).
//!
//! Owns: the wire protocol (pdu.rs, login.rs, connection.rs), the SCSI device model
//! (scsi/), the registry of targets and sessions (target.rs), and the `BlockBackend` seam
//! with a file implementation. Invariants: bad input from the network is answered with a
//! reject, a login failure or SCSI sense, or ends that one connection; it never panics
//! and never touches other sessions; every buffer and queue is bounded (limits.rs).
//! Never: know about replication or pools (backends are adapters in higher layers);
//! block the async runtime on storage (backends hop to blocking threads).
#![warn(missing_docs)]

pub mod backend;
mod be;
pub mod chap;
mod connection;
pub mod counters;
pub mod file_backend;
pub mod limits;
pub mod login;
pub mod pdu;
pub mod reservation_store;
pub mod scsi;
pub mod sense;
mod server;
pub mod target;
mod task;
pub mod text;

pub use backend::{
    BackendError, BackendEvent, BackendFuture, BackendIdentity, BlockBackend, Cancel,
    CompareOutcome, Extent, Hold, IoCtx, Provisioning,
};
pub use chap::ChapConfig;
pub use counters::CounterSnapshot;
pub use file_backend::{FileBackend, FileOpenError};
pub use reservation_store::{FileReservationStore, ReservationStore, StoreError};
pub use target::{Server, TargetConfig, TargetError, TargetInfo};
