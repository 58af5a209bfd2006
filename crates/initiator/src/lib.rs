//! cstor-initiator: a userspace iSCSI initiator (RFC 7143, error recovery level 0) for
//! nodes without open-iscsi, and the userspace attach path of the CSI node service: a LUN
//! served as a file through FUSE, then a loop device and a filesystem on it
//! (docs/initiator.md).
//!
//! Owns: sessions ([`Session`]: login, SCSI block I/O, retries, reconnect with a
//! replacement timeout), discovery ([`discover`]), the FUSE export ([`FuseExport`]) and the
//! block-device helpers ([`blockdev`]: loop devices, blkid, mkfs, mount).
//! Invariants: an I/O call succeeds only if the target answered GOOD; a connection loss
//! never loses a command silently (it is re-issued or the call fails); every socket read
//! is bounded by the negotiated segment size; errors are typed ([`Error`]).
//! Never: know about CSI, Kubernetes or the target's internals (only the wire protocol);
//! block the async runtime (FUSE callbacks run on their own threads and enter the
//! runtime through a handle).
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod be;
pub mod blockdev;
mod conn;
mod error;
mod fuse;
mod login;
mod pr;
mod scsi;
mod session;

pub use error::{Error, ScsiError, Sense, SenseKey};
pub use fuse::{FuseError, FuseExport, LUN_FILE};
pub use login::{discover, Chap, DiscoveredTarget, LoginSpec};
pub use pr::{Fenced, Holder, Registrations, WRITE_EXCLUSIVE_REGISTRANTS_ONLY};
pub use scsi::Capacity;
pub use session::{Session, SessionOptions, SessionStats, FENCED_MESSAGE};
