//! Bounds of the node agent, one line each on why.

/// Largest frame on the admin socket: volume data moves in 1 MiB frames, big enough to keep
/// a copy loop efficient, small enough that a peer cannot make us allocate much.
pub const ADMIN_FRAME_MAX_BYTES: u32 = 1 << 20;

/// Connections served at once on one pool's admin socket; more wait in the listen backlog.
pub const ADMIN_CONNECTIONS_MAX: usize = 64;

/// How long a client waits to connect to a pool's admin socket before deciding the
/// holder is gone (a live holder accepts at once; a stale socket refuses at once).
pub const ADMIN_CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Progress reports of long operations (scrub, resilver) at most this often.
pub const PROGRESS_INTERVAL_MS: u64 = 500;

/// A closing pool waits this long for its running scan to notice the stop request (it
/// checks between blocks, so a healthy device answers well within it).
pub const SCAN_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Smallest per-pool block cache a user may ask for: two 128 KiB blocks, so a
/// read-modify-write of the largest block always fits.
pub const CACHE_BYTES_MIN: u64 = 256 << 10;
