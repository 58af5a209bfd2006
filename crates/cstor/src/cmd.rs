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
pub mod up_csinode;
pub mod up_monitors;
pub mod up_prometheus;

/// Runs `body` on a two-worker runtime, handing it a future that completes on SIGINT or
/// SIGTERM (the long-running control-plane commands stop cleanly on either).
pub fn run_until_signal<F, Fut>(body: F) -> anyhow::Result<()>
where
    F: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use anyhow::Context;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let stop = Box::pin(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        body(stop).await
    })
}
