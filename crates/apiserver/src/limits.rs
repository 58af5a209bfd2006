//! Every bound of the API server in one place, each with the reason for its value.

use std::time::Duration;

/// Largest request body accepted: etcd's default request limit is 1.5 MiB, so no object
/// a real cluster would hold is refused, and a runaway client cannot exhaust memory.
pub(crate) const REQUEST_BODY_BYTES_MAX: usize = 3 * 1024 * 1024;

/// How long watch history is kept (in memory and in the store) for resuming watches and
/// paged lists; older resourceVersions get 410. etcd's default compaction in
/// kube-apiserver keeps 5 minutes, which is what clients are written for.
pub(crate) const WATCH_HISTORY_RETENTION: Duration = Duration::from_secs(5 * 60);

/// Hard cap on watch history entries whatever their age: bounds memory and the store
/// under extreme churn (then less than `WATCH_HISTORY_RETENTION` is kept).
#[cfg(not(test))]
pub(crate) const WATCH_HISTORY_EVENTS_MAX: usize = 100_000;
/// Small in unit tests so history trimming and 410 Gone are exercised quickly.
#[cfg(test)]
pub(crate) const WATCH_HISTORY_EVENTS_MAX: usize = 16;

/// Events a watcher may fall behind the live broadcast before its stream is closed; the
/// client then re-watches from its last resourceVersion and is replayed from history.
pub(crate) const WATCH_BROADCAST_EVENTS_MAX: usize = 8_192;

/// Events buffered per watch connection between the fan-out task and the HTTP body.
pub(crate) const WATCH_CONNECTION_BUFFER_EVENTS: usize = 256;

/// How often a watch that asked for bookmarks gets one; kube-rs and client-go use them
/// to move their resume point forward on quiet resources.
pub(crate) const WATCH_BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);

/// Longest a single watch stays open (the client asks for less with timeoutSeconds);
/// kube-apiserver's default min-request-timeout is 30 minutes.
pub(crate) const WATCH_DURATION_MAX: Duration = Duration::from_secs(30 * 60);

/// Largest page a list returns even when the client asks for more or for no limit is
/// not bounded (a list without limit returns everything, like the real server); this
/// caps `limit=` values only.
pub(crate) const LIST_PAGE_ITEMS_MAX: usize = 10_000;

/// Events (core/v1 and events.k8s.io/v1) expire after this, like kube-apiserver's
/// default --event-ttl.
pub(crate) const EVENT_TTL: Duration = Duration::from_secs(3600);

/// How often expired events are swept.
pub(crate) const EVENT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Objects removed per garbage-collection pass; a pass repeats until nothing is left,
/// so this only bounds the time the store lock is held at once.
pub(crate) const GC_BATCH_OBJECTS_MAX: usize = 1_000;

/// Time a TLS handshake may take before the connection is dropped.
pub(crate) const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Validity of the generated CA and serving certificate (days).
pub(crate) const CERT_VALIDITY_DAYS: i64 = 3650;

/// Deepest JSON nesting walked by validation, patching and field tracking; a deeper
/// document is refused instead of risking stack exhaustion.
pub(crate) const OBJECT_DEPTH_MAX: usize = 64;

/// Managed-field entries kept per object (one per manager and operation).
pub(crate) const MANAGERS_PER_OBJECT_MAX: usize = 32;

/// Optimistic attempts of a write without a client resourceVersion before the final one,
/// which builds under the store lock and cannot lose: a few keep building off the lock
/// under light contention, and the bound keeps a hot object from starving a writer.
pub(crate) const UPDATE_RETRIES_MAX: u32 = 4;

/// How often the storage loops (kcm.rs) re-check every volume and claim even without a
/// change, as kube-controller-manager's PV controller resyncs (its default is 15 s).
pub(crate) const STORAGE_RESYNC_INTERVAL: Duration = Duration::from_secs(15);

/// Passes the storage loops make in a row after a change (each pass may enable the next
/// step of a binding); bounded so a flapping object cannot keep the loop busy.
pub(crate) const STORAGE_PASSES_MAX: usize = 8;

/// Concurrent client connections; a connection beyond it is closed at once. Every
/// connection costs a task and TLS buffers; a control plane of one machine has tens of
/// clients (controllers, sidecars, kubectl), each with a few connections.
pub(crate) const CONNECTIONS_MAX: usize = 1024;

/// Concurrent watches; one beyond it gets 429 (client-go and kube-rs back off and retry).
pub(crate) const WATCHES_MAX: usize = 4096;

/// Time a client may take to send a request's headers, also on an idle kept-alive
/// HTTP/1.1 connection (hyper's header read timeout), so idle or stalled connections
/// do not hold a connection slot forever.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// HTTP/2 keep-alive ping interval and timeout: a dead HTTP/2 peer (client-go uses
/// HTTP/2) is detected and its connection closed.
pub(crate) const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// See `H2_KEEPALIVE_INTERVAL`.
pub(crate) const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
