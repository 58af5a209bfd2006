//! cstor-replication: keeps one volume synchronously on N pools behind one target
//! (ARCHITECTURE.md decision 6; the decided design is reference/replication-design.md).
//!
//! Layers:
//! - [`wire`]: the framed, versioned, checksummed replica protocol
//!   (docs/format/replica-protocol.md), [`auth`], its challenge-response handshake, and
//!   [`tls`], optional TLS on the replica port.
//! - [`server`]: the replica side (`cstor replica serve`) over one pool ([`store`] is the
//!   only code that calls the pool).
//! - [`client`]: the target's pipelined connection to one replica.
//! - [`membership`]: the durable record (Current/Stale/New members, epoch, io
//!   reservation) behind the [`membership::MembershipStore`] compare-and-swap seam.
//! - [`volume`]: the replicated backend (`BlockBackend`): io numbers, in-sync writes,
//!   flushes, start-up fencing and reconcile; `evict`: eviction and its cancellation; `read`: reads and read repair; [`catchup`]: the
//!   two-sided diff that brings a Stale or New replica back; [`snapshot`]: snapshots at
//!   one io cut on every replica, missed-snapshot replay, clones; [`members`]: add and
//!   remove replicas, the offline force-promotion; `rejoin`: re-opening the Current
//!   members after all of them were away at once (no eviction could be recorded);
//!   `settle`: making the Current replicas agree on writes that failed half-way.
//!
//! Invariants (design §1): a write completes only when every Current replica acked it;
//! a member leaves the Current set only by a recorded CAS made before any write completes
//! without it; replicas persist the highest epoch and refuse lower ones.
//!
//! Never: this crate knows nothing of Kubernetes; it depends only on pool and iscsi.

pub mod auth;
pub mod catchup;
pub mod client;
pub mod error;
mod evict;
pub mod members;
pub mod membership;
mod read;
mod rejoin;
mod seq;
pub mod server;
mod settle;
pub mod snapshot;
mod start;
pub mod store;
pub mod tls;
pub mod volume;
pub mod wire;

pub use auth::AuthKey;
pub use error::{ReplicaError, StoreError, VolumeError, WireError};
pub use membership::{FileStore, MemberState, MembershipStore, Record};
pub use server::ReplicaServer;
pub use volume::{ReplicatedVolume, VolumeConfig, VolumeStatus};
