//! The portal: accepts TCP connections and hands each to its own task; bounds unfinished
//! logins per source address.
//!
//! Invariants: at most `limits::MAX_CONNECTIONS` connections at once (more are closed at
//! accept); a connection's failure or panic never affects another (each is a task); at
//! most the server's cap of connections from one address are still logging in: a new one
//! beyond it closes the oldest of them, so one slow or hostile client cannot hold every
//! login slot while others from elsewhere are never affected.

use crate::connection;
use crate::limits;
use crate::target::Server;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

/// Logins from one address, oldest first: (slot id, its eviction signal).
type Pending = Vec<(u64, Arc<Notify>)>;

/// Connections still logging in, per source address, oldest first.
#[derive(Debug)]
pub(crate) struct LoginSlots {
    cap: usize,
    next: AtomicU64,
    by_source: Mutex<HashMap<IpAddr, Pending>>,
}

impl LoginSlots {
    pub(crate) fn new(cap: usize) -> Self {
        LoginSlots {
            cap,
            next: AtomicU64::new(0),
            by_source: Mutex::new(HashMap::new()),
        }
    }
}

/// One connection's login slot; dropping it (login finished or failed) frees the slot.
#[derive(Debug)]
pub(crate) struct LoginSlot {
    server: Arc<Server>,
    source: IpAddr,
    id: u64,
    /// Notified when a newer login from the same address evicts this one.
    pub(crate) evicted: Arc<Notify>,
}

impl LoginSlot {
    /// Takes a slot for a login from `source`, evicting the oldest beyond the cap.
    pub(crate) fn enter(server: &Arc<Server>, source: IpAddr) -> LoginSlot {
        let slots = &server.logins;
        let id = slots.next.fetch_add(1, Ordering::Relaxed);
        let evicted = Arc::new(Notify::new());
        let mut map = slots.by_source.lock();
        let list = map.entry(source).or_default();
        while list.len() >= slots.cap {
            let (_, oldest) = list.remove(0);
            tracing::info!(%source, "too many unfinished logins from one address; closing the oldest");
            // notify_one keeps the wake-up if the login is not waiting on it yet.
            oldest.notify_one();
        }
        list.push((id, evicted.clone()));
        drop(map);
        LoginSlot {
            server: server.clone(),
            source,
            id,
            evicted,
        }
    }
}

impl Drop for LoginSlot {
    fn drop(&mut self) {
        let mut map = self.server.logins.by_source.lock();
        if let Some(list) = map.get_mut(&self.source) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.source);
            }
        }
    }
}

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
            let login = LoginSlot::enter(&server, peer.ip());
            tokio::spawn(async move {
                connection::serve(stream, server, login).await;
                drop(permit);
            });
        }
    }
}
