//! One module per subcommand family; each exposes an `Args` (clap) and `run`.
pub mod apiserver;
