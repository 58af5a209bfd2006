//! Errors of the node agent.

use thiserror::Error;

/// What can go wrong in the agent.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {msg}")]
    Kubeconfig {
        /// File.
        path: String,
        /// Why.
        msg: String,
    },
    /// A call to the API server failed.
    #[error("API server: {0}")]
    Kube(#[from] kube::Error),
    /// An object is malformed for what the agent must do with it.
    #[error("{0}")]
    Invalid(String),
    /// Pool hosting failed.
    #[error(transparent)]
    Node(#[from] cstor_node::NodeError),
    /// The pool engine failed.
    #[error(transparent)]
    Pool(#[from] cstor_pool::PoolError),
    /// The replicated volume failed.
    #[error(transparent)]
    Volume(#[from] cstor_replication::VolumeError),
    /// The iSCSI target refused a configuration.
    #[error(transparent)]
    Target(#[from] cstor_iscsi::TargetError),
    /// Local I/O (listeners, device files).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Result of the agent.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    /// An I/O error with context.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> AgentError {
        AgentError::Io {
            what: what.into(),
            source,
        }
    }
}
