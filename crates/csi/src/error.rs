//! Errors of the driver, and their one mapping to gRPC status codes (the CSI spec's
//! per-RPC codes): every RPC returns `Result<_, Error>` and `From<Error> for Status`
//! below is the only place a code is chosen.

use tonic::{Code, Status};

/// What can go wrong serving CSI.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A required field is missing or a field has a value the driver does not accept.
    #[error("{field}: {why}")]
    InvalidArgument {
        /// The request field (or parameter key).
        field: String,
        /// What is wrong with it.
        why: String,
    },
    /// The volume does not exist.
    #[error("volume {volume} does not exist")]
    VolumeNotFound {
        /// Volume id.
        volume: String,
    },
    /// A volume of that name exists and does not fit the request.
    #[error("volume {volume} already exists and is incompatible with the request: {why}")]
    Incompatible {
        /// Volume id.
        volume: String,
        /// The first difference found.
        why: String,
    },
    /// A snapshot of that name exists for another source volume.
    #[error("snapshot {snapshot} already exists for source volume {volume}")]
    SnapshotExists {
        /// The CSI snapshot name.
        snapshot: String,
        /// The volume it is a snapshot of.
        volume: String,
    },
    /// The snapshot does not exist.
    #[error("snapshot {snapshot} does not exist")]
    SnapshotNotFound {
        /// Snapshot id.
        snapshot: String,
    },
    /// The capacity range cannot be met.
    #[error("capacity range (required {required_bytes}, limit {limit_bytes} bytes): {why}")]
    OutOfRange {
        /// `required_bytes` of the request.
        required_bytes: i64,
        /// `limit_bytes` of the request.
        limit_bytes: i64,
        /// Why it cannot be met.
        why: String,
    },
    /// No pools (or no node of the requisite topology) can take the volume.
    #[error("volume {volume} cannot be placed: {why}")]
    NoPlacement {
        /// Volume id.
        volume: String,
        /// What the placement found.
        why: String,
    },
    /// The volume is not ready yet, or is being deleted; a retry continues the work.
    #[error("volume {volume}: {what}")]
    Pending {
        /// Volume id.
        volume: String,
        /// What it waits for.
        what: String,
    },
    /// The node does not exist (no Node object of that name).
    #[error("node {node} does not exist")]
    NodeNotFound {
        /// Node id.
        node: String,
    },
    /// The volume is published to another node, and a volume is attached by one node at
    /// a time.
    #[error("volume {volume} is published to node {node}; unpublish it there first (a volume is attached by one node at a time)")]
    PublishedElsewhere {
        /// Volume id.
        volume: String,
        /// The node holding it.
        node: String,
    },
    /// Another call on the same volume is in flight.
    #[error("an operation on volume {volume} is already in progress")]
    Busy {
        /// Volume id.
        volume: String,
    },
    /// A ListVolumes `starting_token` this driver did not hand out.
    #[error("starting_token {token:?} is not valid: {why}")]
    BadToken {
        /// The token.
        token: String,
        /// Why.
        why: String,
    },
    /// An RPC this driver does not serve (yet).
    #[error("{rpc} is not implemented: {why}")]
    Unimplemented {
        /// The RPC.
        rpc: &'static str,
        /// Why, and what to use instead.
        why: &'static str,
    },
    /// A call to the API server failed.
    #[error("{op}: {source}")]
    Api {
        /// The call, e.g. `create cstorvolumeconfig pvc-1`.
        op: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer in time.
    #[error("{op}: the API server did not answer within {secs} s")]
    ApiTimeout {
        /// The call.
        op: String,
        /// The bound.
        secs: u64,
    },
    /// An object from the API server did not have the expected shape.
    #[error("{what}: {why}")]
    Decode {
        /// The object.
        what: String,
        /// The decoding error.
        why: String,
    },
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[source] cstor_controller::Error),
    /// In-cluster or default kube configuration could not be found.
    #[error("no --kubeconfig given and no in-cluster configuration: {0}")]
    InferConfig(#[source] kube::Error),
    /// The endpoint is not a `unix://` address.
    #[error("endpoint {endpoint:?}: {why}")]
    Endpoint {
        /// As given.
        endpoint: String,
        /// What is wrong.
        why: String,
    },
    /// Another process serves on the socket.
    #[error("socket {path} is in use by another process (a connection to it succeeded); stop that process or choose another --endpoint")]
    SocketInUse {
        /// The socket path.
        path: String,
    },
    /// A file operation on the socket path failed.
    #[error("socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// A node call needs the volume in another state first (staged, unpublished).
    #[error("volume {volume}: {why}")]
    Precondition {
        /// Volume id.
        volume: String,
        /// What is missing.
        why: String,
    },
    /// A node call names a path that is not the volume's (or does not exist).
    #[error("volume {volume}: {path} is not a path of this volume on this node ({why})")]
    PathNotFound {
        /// Volume id.
        volume: String,
        /// The path as given.
        path: String,
        /// Why.
        why: String,
    },
    /// The userspace attach (the `cstor initiator attach` process) failed.
    #[error("volume {volume}: attach failed: {why}")]
    Attach {
        /// Volume id.
        volume: String,
        /// What happened (with the tail of the attach log).
        why: String,
    },
    /// A system call or file operation of the node service failed.
    #[error("{what}: {source}")]
    NodeIo {
        /// The operation and its path.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A tool (losetup, mkfs, mount, resize2fs...) of the node service failed.
    #[error("{what}: {source}")]
    NodeTool {
        /// The operation.
        what: String,
        /// The tool's failure.
        #[source]
        source: cstor_initiator::blockdev::ToolError,
    },
    /// The volume is in a state the node service cannot fix by itself.
    #[error("volume {volume}: {why}")]
    NodeState {
        /// Volume id.
        volume: String,
        /// What is wrong.
        why: String,
    },
}

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, why: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.into(),
            why: why.into(),
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::NodeIo {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn tool(
        what: impl Into<String>,
        source: cstor_initiator::blockdev::ToolError,
    ) -> Error {
        Error::NodeTool {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn api(op: impl Into<String>, source: kube::Error) -> Error {
        Error::Api {
            op: op.into(),
            source,
        }
    }

    /// The gRPC code this error answers with.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::VolumeNotFound { .. }
            | Error::NodeNotFound { .. }
            | Error::SnapshotNotFound { .. } => Code::NotFound,
            Error::PublishedElsewhere { .. } => Code::FailedPrecondition,
            Error::Incompatible { .. } | Error::SnapshotExists { .. } => Code::AlreadyExists,
            Error::OutOfRange { .. } => Code::OutOfRange,
            Error::NoPlacement { .. } => Code::ResourceExhausted,
            Error::Pending { .. } | Error::Busy { .. } | Error::BadToken { .. } => Code::Aborted,
            Error::Unimplemented { .. } => Code::Unimplemented,
            // A rejected write (a conflict, a webhook's refusal) is the server answering:
            // internal. Anything that kept it from answering: unavailable, so the
            // sidecars retry.
            Error::Api {
                source: kube::Error::Api(_),
                ..
            }
            | Error::Decode { .. } => Code::Internal,
            Error::Api { .. } | Error::ApiTimeout { .. } => Code::Unavailable,
            Error::Kubeconfig(_)
            | Error::InferConfig(_)
            | Error::Endpoint { .. }
            | Error::SocketInUse { .. }
            | Error::Socket { .. }
            | Error::Serve(_) => Code::Internal,
            Error::Precondition { .. } => Code::FailedPrecondition,
            Error::PathNotFound { .. } => Code::NotFound,
            Error::Attach { .. }
            | Error::NodeIo { .. }
            | Error::NodeTool { .. }
            | Error::NodeState { .. } => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
