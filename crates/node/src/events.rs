//! Events of served volumes (issue 9 item 5): the admin socket raises them (a resize),
//! the volume backends serving the volume in this process pass them to the target as
//! `BackendEvent`s (a resize becomes CAPACITY DATA HAS CHANGED on every I_T nexus).
//!
//! Owns: one broadcast channel per (pool guid, volume name) that some backend listens on.
//! Invariants: raising an event nobody listens to costs a map lookup and keeps nothing;
//! channels without receivers are dropped when next raised. Never: block (sends never
//! wait; a receiver that lags is told so, and the target treats that as a capacity change).

use cstor_iscsi::BackendEvent;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::OnceLock;
use tokio::sync::broadcast;

/// Events buffered per volume for a listener that has not read them yet.
const EVENT_QUEUE: usize = 16;

type Hub = Mutex<HashMap<(u64, String), broadcast::Sender<BackendEvent>>>;

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Listens to the events of volume `volume` of the pool with guid `pool`.
pub fn subscribe(pool: u64, volume: &str) -> broadcast::Receiver<BackendEvent> {
    hub()
        .lock()
        .entry((pool, volume.to_owned()))
        .or_insert_with(|| broadcast::channel(EVENT_QUEUE).0)
        .subscribe()
}

/// Raises `ev` for volume `volume` of pool `pool`, to every backend serving it here.
pub fn raise(pool: u64, volume: &str, ev: BackendEvent) {
    let mut hub = hub().lock();
    let key = (pool, volume.to_owned());
    if let Some(tx) = hub.get(&key) {
        if tx.send(ev).is_err() {
            // Nobody listens any more.
            hub.remove(&key);
        }
    }
}
