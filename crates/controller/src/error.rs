//! Errors of the controller: API calls that failed, and configuration that cannot work.

/// What can go wrong running the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {why}")]
    Kubeconfig {
        /// The file given with --kubeconfig.
        path: String,
        /// What was wrong with it.
        why: String,
    },
    /// A call to the API server failed.
    #[error("{op}: {source}")]
    Api {
        /// The call, e.g. `list cstorpoolinstances`.
        op: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// An object from the API server did not have the expected shape.
    #[error("{what}: {why}")]
    Decode {
        /// The object.
        what: String,
        /// The decoding error.
        why: String,
    },
}

impl Error {
    pub(crate) fn api(op: impl Into<String>, source: kube::Error) -> Error {
        Error::Api {
            op: op.into(),
            source,
        }
    }
}
