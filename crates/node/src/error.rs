//! Errors of the node agent, with the pool layer's errors kept as sources.

use cstor_pool::spa::error::SpaError;
use cstor_pool::PoolError;

/// Errors of node operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// No pool of that name is known in `$CSTOR_HOME` or open here.
    #[error("pool '{0}' is not known here (create or import it first)")]
    UnknownPool(String),
    /// A pool of that name exists already.
    #[error("pool '{0}' already exists")]
    PoolExists(String),
    /// Refused while another process serves the pool.
    #[error("pool '{pool}' is in use by process {pid}: {what}")]
    PoolInUse {
        /// Pool name.
        pool: String,
        /// Holder's process id.
        pid: u32,
        /// What was refused and why.
        what: String,
    },
    /// Refused while another operation runs (e.g. a second scan).
    #[error("{0}")]
    Busy(String),
    /// Bad argument from the user.
    #[error("{0}")]
    Invalid(String),
    /// The block-tree layer failed.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The device layer failed.
    #[error(transparent)]
    Spa(#[from] SpaError),
    /// `$CSTOR_HOME` could not be read or written.
    #[error("{context}: {source}")]
    Home {
        /// File and operation.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The admin socket peer broke the protocol.
    #[error("admin socket: {0}")]
    Protocol(String),
    /// The process holding the pool answered with an error.
    #[error("{0}")]
    Remote(String),
    /// Reading the request's input or writing its output failed.
    #[error("{context}: {source}")]
    Stream {
        /// What was being moved.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of node operations.
pub type Result<T, E = NodeError> = std::result::Result<T, E>;
