//! One module per subcommand family; each exposes an `Args` (clap) and `run`.

pub mod apiserver;
pub mod attach;
pub mod controller;
pub mod csi;
pub mod initiator;
pub mod metrics;
pub mod node;
pub mod pool;
pub mod replica;
pub mod sidecars;
pub mod target;
pub mod target_replicated;
pub mod up;
pub mod up_monitors;
pub mod up_prometheus;
