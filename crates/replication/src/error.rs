//! Typed errors of the replication crate.

/// A frame could not be read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Socket error.
    #[error("replica connection: {0}")]
    Io(#[source] std::io::Error),
    /// Not a cstor replica frame.
    #[error("bad frame magic {0:#010x} (not a cstor replica protocol peer)")]
    BadMagic(u32),
    /// The header failed its checksum.
    #[error("frame header checksum mismatch")]
    HeaderChecksum,
    /// The body failed its checksum.
    #[error("frame body checksum mismatch (request {id})")]
    BodyChecksum {
        /// Request id of the frame.
        id: u64,
    },
    /// The body is above the limit.
    #[error("frame body of {0} bytes above the limit")]
    TooLarge(usize),
    /// Unknown status byte.
    #[error("unknown frame status {0}")]
    BadStatus(u8),
    /// A body did not decode.
    #[error("malformed frame body: {0}")]
    Malformed(&'static str),
}

/// Why a request to a replica failed (target side).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicaError {
    /// The connection is gone (or never came up).
    #[error("replica {addr}: disconnected: {why}")]
    Disconnected {
        /// Replica address.
        addr: String,
        /// Cause.
        why: String,
    },
    /// The replica speaks another protocol version.
    #[error("replica {addr}: protocol version mismatch: we speak {ours}, it speaks {theirs:?}")]
    VersionMismatch {
        /// Replica address.
        addr: String,
        /// Our version.
        ours: u16,
        /// Its versions.
        theirs: Vec<u16>,
    },
    /// The challenge-response failed (wrong or missing key).
    #[error("replica {addr}: authentication failed: {why}")]
    AuthFailed {
        /// Replica address.
        addr: String,
        /// Cause.
        why: String,
    },
    /// The replica stores a higher epoch: this target instance is fenced.
    #[error("replica {addr}: fenced by epoch {stored} (ours {ours})")]
    Fenced {
        /// Replica address.
        addr: String,
        /// Epoch the replica stores.
        stored: u64,
        /// Our epoch.
        ours: u64,
    },
    /// The replica answered the request with an error.
    #[error("replica {addr}: {status:?}: {msg}")]
    Failed {
        /// Replica address.
        addr: String,
        /// Reply status.
        status: crate::wire::Status,
        /// Message.
        msg: String,
    },
    /// Too much write data sent and unanswered beyond the quickest Current replica's
    /// (the backlog eviction trigger).
    #[error("replica {addr}: {bytes} bytes of writes unanswered, more than {limit} beyond the quickest Current replica")]
    Backlog {
        /// Replica address.
        addr: String,
        /// Its backlog, bytes.
        bytes: u64,
        /// The bound, bytes.
        limit: u64,
    },
    /// No reply within the time allowed.
    #[error("replica {addr}: no reply within {ms} ms")]
    Timeout {
        /// Replica address.
        addr: String,
        /// Time waited.
        ms: u64,
    },
}

/// Failure of the membership store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or written now; the outcome of a CAS is unknown.
    #[error("membership store unavailable: {0}")]
    Unavailable(String),
    /// The stored record does not decode.
    #[error("membership record corrupt: {0}")]
    Corrupt(String),
}

/// Failure of the replicated volume (target side).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A replica failed.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another target instance took the volume over.
    #[error("fenced: the record's epoch {record} is above ours {ours}")]
    Fenced {
        /// Epoch in the record (or a replica).
        record: u64,
        /// Our epoch.
        ours: u64,
    },
    /// Start refused (data would be lost, or no intact Current replica).
    #[error("{0}")]
    Refused(String),
}
