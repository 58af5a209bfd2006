//! One module per subcommand family; each exposes an `Args` (clap) and `run`.

pub mod pool;
pub mod target;
pub mod apiserver;
