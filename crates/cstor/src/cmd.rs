//! One module per subcommand family; each exposes an `Args` (clap) and `run`.

pub mod apiserver;
pub mod pool;
pub mod target;
