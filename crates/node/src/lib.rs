//! cstor-node: what one node runs on behalf of the cluster. Today: the pools open on this
//! node ([`host::PoolHost`]), the `$CSTOR_HOME` registry that remembers which devices make
//! which pool ([`registry`]), the admin requests that `cstor pool` / `cstor volume` send
//! ([`admin`]) and the local unix socket that serves them while a process holds a pool
//! open ([`socket`]).
//!
//! Invariants:
//! - A pool is open in at most one process: the pool layer locks its devices; this crate
//!   adds the admin socket so that every other command reaches the process that holds it.
//! - Every admin request runs through [`admin::execute`], in-process or over the socket,
//!   so both paths behave the same.
//!
//! Never: knows of Kubernetes; holds a pool lock across a blocking wait on another process.

pub mod admin;
pub mod error;
pub mod events;
pub mod host;
pub mod limits;
pub mod registry;
pub mod socket;
pub mod volume_backend;
pub mod volume_writer;

pub use error::{NodeError, Result};
pub use host::{OpenPool, PoolHost};
