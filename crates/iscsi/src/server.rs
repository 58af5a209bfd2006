//! The portal: accepts TCP connections and hands each to its own task.
//!
//! Invariants: at most `limits::MAX_CONNECTIONS` connections at once (more are closed at
//! accept); a connection's failure or panic never affects another (each is a task).

use crate::connection;
use crate::limits;
use crate::target::Server;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

impl Server {
    /// Accepts connections on `listener` until the returned future is dropped or accept
    /// fails persistently. Runs forever by design.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let slots = Arc::new(Semaphore::new(limits::MAX_CONNECTIONS));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and similar are transient: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection limit reached, closing");
                drop(stream);
                continue;
            };
            let server = self.clone();
            tokio::spawn(async move {
                connection::serve(stream, server).await;
                drop(permit);
            });
        }
    }
}
