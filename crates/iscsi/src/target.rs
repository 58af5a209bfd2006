//! Targets and the server that hosts them: the registry of targets (added and removed
//! while running), their sessions, and per-target counters.
//!
//! Owns: the target map (a mutex held only for lookups and edits) and, per target, the
//! session map keyed by (initiator name, ISID) used for session reinstatement.
//! Invariants: target names are unique; removing a target ends its sessions before
//! `remove_target` returns; at most one live session per (initiator, ISID) and target.

use crate::backend::{BackendEvent, BlockBackend};
use crate::chap::ChapConfig;
use crate::counters::{CounterSnapshot, Counters};
use crate::limits;
use crate::reservation_store::ReservationStore;
use crate::scsi::xcopy::{CopyPeers, LuHandle};
use crate::scsi::{pr::AptplError, LogicalUnit};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch, Notify};

/// How to serve one target.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// iSCSI qualified name, e.g. `iqn.2016-09.com.openebs.cstor:vol1`.
    pub iqn: String,
    /// The LUN 0 storage.
    pub backend: Arc<dyn BlockBackend>,
    /// CHAP secrets; `None` means no authentication.
    pub chap: Option<ChapConfig>,
    /// Initiator names allowed to log in; `None` allows all.
    pub allowed_initiators: Option<Vec<String>>,
    /// Where persistent reservations are kept when an initiator sets APTPL (a file
    /// store, a pool volume property, a membership record); `None` keeps none.
    pub reservations: Option<Arc<dyn ReservationStore>>,
    /// Deadline of each backend call: past it, work the backend has not started is
    /// refused and answered BUSY (backend.rs).
    pub io_timeout: Duration,
    /// A backend call unsettled this long makes the LU NOT READY until it settles.
    pub settle_bound: Duration,
    /// T_hold: while the backend holds (`BlockBackend::hold`), a command waits this long
    /// before it is answered BUSY (at most `limits::MAX_HOLD_TIMEOUT`).
    pub hold_timeout: Duration,
    /// Logical (512-byte) blocks per physical block as a power of two; 3 means 4 KiB.
    pub phys_block_exponent: u8,
    /// Portals (`ADDR:PORT`, IPv6 in brackets) SendTargets advertises for this target,
    /// e.g. a Service address; empty means the server's portals (`Server::set_portals`),
    /// or the address the discovery connection came in on.
    pub portals: Vec<String>,
    /// `ADDR:PORT` the target moved to: logins are redirected there (temporarily,
    /// status 0x0101); `None` serves it here. Changeable with `Server::set_redirect`.
    pub redirect: Option<String>,
}

impl TargetConfig {
    /// A config with defaults: no CHAP, all initiators, no APTPL file, default timeout.
    pub fn new(iqn: &str, backend: Arc<dyn BlockBackend>) -> Self {
        TargetConfig {
            iqn: iqn.to_owned(),
            backend,
            chap: None,
            allowed_initiators: None,
            reservations: None,
            io_timeout: limits::BACKEND_IO_TIMEOUT,
            settle_bound: limits::BACKEND_SETTLE_BOUND,
            hold_timeout: limits::HOLD_TIMEOUT,
            phys_block_exponent: crate::scsi::PHYS_EXPONENT,
            portals: Vec::new(),
            redirect: None,
        }
    }
}

/// Errors editing the target registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// A target with this name exists.
    #[error("target {0} already exists")]
    Exists(String),
    /// No such target.
    #[error("target {0} not found")]
    NotFound(String),
    /// Not a valid iSCSI name.
    #[error("invalid target name {0:?}: expected iqn.YYYY-MM.domain[:name], eui. or naa.")]
    BadName(String),
    /// Too many targets.
    #[error("too many targets (limit {})", limits::MAX_TARGETS)]
    TooMany,
    /// The persisted reservation file could not be loaded.
    #[error(transparent)]
    Aptpl(#[from] AptplError),
}

/// A handle to a live session, for reinstatement and removal.
#[derive(Debug, Clone)]
pub(crate) struct SessionHandle {
    pub tsih: u16,
    pub shutdown: Arc<Notify>,
    /// Asks the session to send the asynchronous "request logout" event.
    pub request_logout: Arc<Notify>,
    pub done: watch::Receiver<bool>,
}

/// One target: its LU, access control and sessions.
#[derive(Debug)]
pub struct Target {
    pub(crate) iqn: String,
    pub(crate) lu: LogicalUnit,
    /// CHAP secrets a login must prove (`None`: no authentication). Changeable with
    /// `Server::set_chap`.
    chap: Mutex<Option<ChapConfig>>,
    /// Initiator names allowed to log in; `None` allows all. Changeable with
    /// `Server::set_allowed_initiators`.
    allowed: Mutex<Option<Vec<String>>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) sessions: Mutex<HashMap<(String, [u8; 6]), SessionHandle>>,
    pub(crate) portals: Vec<String>,
    /// Where logins are redirected, if the target moved.
    redirect: Mutex<Option<String>>,
}

impl Target {
    /// The CHAP secrets a login must prove now.
    pub(crate) fn chap(&self) -> Option<ChapConfig> {
        self.chap.lock().clone()
    }

    /// Whether `initiator` may log in to (and discover) this target.
    pub(crate) fn allows(&self, initiator: &str) -> bool {
        self.allowed
            .lock()
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x == initiator))
    }

    /// Where logins to this target are redirected, if anywhere.
    pub(crate) fn redirect(&self) -> Option<String> {
        self.redirect.lock().clone()
    }

    /// Ends every session: first the asynchronous "request logout" event, so initiators
    /// log out cleanly within `limits::LOGOUT_REQUEST_WAIT`; the sessions still there
    /// then are ended, each waiting (bounded) for its commands to finish.
    async fn close_sessions(&self) {
        let handles: Vec<SessionHandle> = self.sessions.lock().drain().map(|(_, h)| h).collect();
        for h in &handles {
            h.request_logout.notify_one();
        }
        let until = tokio::time::Instant::now() + limits::LOGOUT_REQUEST_WAIT;
        for h in &handles {
            let mut done = h.done.clone();
            let _ = tokio::time::timeout_at(until, done.wait_for(|d| *d)).await;
        }
        for h in handles {
            wait_session_end(h).await;
        }
    }
}

impl LuHandle for Target {
    fn lu(&self) -> &LogicalUnit {
        &self.lu
    }
}

impl CopyPeers for Mutex<BTreeMap<String, Arc<Target>>> {
    fn find(&self, pred: &dyn Fn(&LogicalUnit) -> bool) -> Option<Arc<dyn LuHandle>> {
        let t = self.lock().values().find(|t| pred(&t.lu))?.clone();
        Some(t)
    }
}

/// Acts on a target's backend events until the backend closes its channel or the target
/// is gone (the task holds it weakly). Needs a tokio runtime; without one (a target added
/// outside any runtime) events are not watched and capacity changes are still seen when
/// the next command finds the size changed.
fn watch_events(t: &Arc<Target>, mut rx: broadcast::Receiver<BackendEvent>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(target_name = %t.iqn, "no runtime: backend events not watched");
        return;
    };
    let weak = Arc::downgrade(t);
    rt.spawn(async move {
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                // Missed events: a capacity change may be among them, and a spurious
                // unit attention is harmless where a missed one is not.
                Err(broadcast::error::RecvError::Lagged(_)) => BackendEvent::CapacityChanged,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let Some(t) = weak.upgrade() else { return };
            match ev {
                BackendEvent::CapacityChanged => t.lu.capacity_changed(),
                BackendEvent::Stopping => {
                    tracing::info!(target_name = %t.iqn, "backend stopping: requesting logout");
                    for h in t.sessions.lock().values() {
                        h.request_logout.notify_one();
                    }
                }
            }
        }
    });
}

/// Signals a session to end and waits for it, bounded by the drain timeout.
pub(crate) async fn wait_session_end(h: SessionHandle) {
    h.shutdown.notify_one();
    let mut done = h.done;
    let _ = tokio::time::timeout(limits::TASK_DRAIN_TIMEOUT, done.wait_for(|d| *d)).await;
}

/// What `targets()` reports about one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// Name.
    pub iqn: String,
    /// Size of LUN 0, bytes.
    pub size_bytes: u64,
    /// Live sessions.
    pub sessions: usize,
    /// Whether CHAP is required.
    pub chap: bool,
    /// Counters.
    pub counters: CounterSnapshot,
}

/// Checks the RFC 7143 §4.2.7 name forms loosely: a type prefix and allowed characters.
pub fn valid_iscsi_name(name: &str) -> bool {
    let ok_prefix =
        name.starts_with("iqn.") || name.starts_with("eui.") || name.starts_with("naa.");
    ok_prefix
        && name.len() <= 223
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b))
}

/// The set of targets one process serves on its portals.
#[derive(Debug)]
pub struct Server {
    /// In an `Arc` so each LU can hold it weakly for copies between targets.
    targets: Arc<Mutex<BTreeMap<String, Arc<Target>>>>,
    next_tsih: AtomicU16,
    /// NOP-In ping interval on idle connections and how long a ping may go unanswered.
    keepalive: (Duration, Duration),
    /// Portals advertised for targets without their own (`set_portals`).
    portals: Mutex<Vec<String>>,
    /// Buffered command data across all sessions, in KiB permits (`set_max_buffered`).
    buffered: Arc<tokio::sync::Semaphore>,
    /// Its current size in KiB.
    buffered_kib: AtomicU64,
    /// Sessions whose window is closed on a low budget (a hint: wake them on releases).
    starved: std::sync::atomic::AtomicI64,
    /// Bumped when budget is released while some session is starved.
    budget_freed: watch::Sender<u64>,
    /// Idle time after which a discovery session is closed.
    discovery_idle: Duration,
    /// Unfinished logins per source address (server.rs).
    pub(crate) logins: crate::server::LoginSlots,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            targets: Arc::new(Mutex::new(BTreeMap::new())),
            next_tsih: AtomicU16::new(1),
            keepalive: (limits::NOP_IN_INTERVAL, limits::NOP_IN_TIMEOUT),
            portals: Mutex::new(Vec::new()),
            buffered: Arc::new(tokio::sync::Semaphore::new(
                (limits::MAX_BUFFERED_BYTES / 1024) as usize,
            )),
            buffered_kib: AtomicU64::new(limits::MAX_BUFFERED_BYTES / 1024),
            starved: std::sync::atomic::AtomicI64::new(0),
            budget_freed: watch::channel(0).0,
            discovery_idle: limits::DISCOVERY_IDLE_TIMEOUT,
            logins: crate::server::LoginSlots::new(limits::MAX_LOGINS_PER_SOURCE),
        }
    }
}

impl Server {
    /// An empty server.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// An empty server with its own NOP-In keep-alive: idle connections are pinged after
    /// `interval` and dropped when a ping stays unanswered for `timeout`.
    pub fn with_keepalive(interval: Duration, timeout: Duration) -> Arc<Self> {
        let interval = interval.max(Duration::from_millis(10));
        Arc::new(Server {
            keepalive: (interval, timeout),
            ..Self::default()
        })
    }

    /// An empty server with its own idle bound for discovery sessions and cap on
    /// unfinished logins per source address (tests use short ones).
    pub fn with_limits(discovery_idle: Duration, logins_per_source: usize) -> Arc<Self> {
        Arc::new(Server {
            discovery_idle,
            logins: crate::server::LoginSlots::new(logins_per_source.max(1)),
            ..Self::default()
        })
    }

    pub(crate) fn keepalive(&self) -> (Duration, Duration) {
        self.keepalive
    }

    pub(crate) fn discovery_idle(&self) -> Duration {
        self.discovery_idle
    }

    /// Bounds buffered command data across all sessions (`--max-buffered`; default
    /// `limits::MAX_BUFFERED_BYTES`), at least twice one largest transfer (one above the
    /// window's low-water mark). Meant to be called before serving: shrinking only takes
    /// back budget that is not in use.
    pub fn set_max_buffered(&self, bytes: u64) {
        let want = bytes.max(2 * u64::from(limits::MAX_TRANSFER_BYTES)) / 1024;
        let have = self.buffered_kib.swap(want, Ordering::AcqRel);
        if want > have {
            self.buffered.add_permits((want - have) as usize);
        } else {
            self.buffered.forget_permits((have - want) as usize);
        }
    }

    /// The process-wide budget for buffered command data, in KiB permits.
    pub(crate) fn buffer_budget(&self) -> Arc<tokio::sync::Semaphore> {
        self.buffered.clone()
    }

    /// Whether less than `limits::WINDOW_LOW_WATER_BYTES` of the process's budget is free.
    pub(crate) fn buffer_budget_low(&self) -> bool {
        self.buffered.available_permits() < (limits::WINDOW_LOW_WATER_BYTES / 1024) as usize
    }

    /// A session's window closed (`1`) or reopened (`-1`) on the budget.
    pub(crate) fn window_starved(&self, delta: i64) {
        self.starved.fetch_add(delta, Ordering::AcqRel);
    }

    /// Budget was released: wakes sessions whose window is closed, if any.
    pub(crate) fn budget_released(&self) {
        if self.starved.load(Ordering::Acquire) > 0 {
            self.budget_freed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Changes whenever budget is released while some session's window is closed.
    pub(crate) fn budget_watch(&self) -> watch::Receiver<u64> {
        self.budget_freed.subscribe()
    }

    /// Sets the portals (`ADDR:PORT`) SendTargets advertises for targets that name none
    /// of their own, e.g. the addresses initiators reach this process by; empty (the
    /// default) advertises the address each discovery connection came in on.
    pub fn set_portals(&self, portals: Vec<String>) {
        *self.portals.lock() = portals;
    }

    /// The portals advertised for `t`; empty means the connection's own address.
    pub(crate) fn portals_of(&self, t: &Target) -> Vec<String> {
        if t.portals.is_empty() {
            self.portals.lock().clone()
        } else {
            t.portals.clone()
        }
    }

    /// Adds a target; fails if the name is taken.
    pub fn add_target(&self, cfg: TargetConfig) -> Result<(), TargetError> {
        if !valid_iscsi_name(&cfg.iqn) {
            return Err(TargetError::BadName(cfg.iqn));
        }
        let mut targets = self.targets.lock();
        if targets.contains_key(&cfg.iqn) {
            return Err(TargetError::Exists(cfg.iqn));
        }
        if targets.len() >= limits::MAX_TARGETS {
            return Err(TargetError::TooMany);
        }
        let counters = Arc::new(Counters::default());
        let mut lu = LogicalUnit::new(
            cfg.backend,
            &cfg.iqn,
            cfg.io_timeout,
            counters.clone(),
            cfg.reservations,
            cfg.phys_block_exponent,
        )?;
        lu.set_settle_bound(cfg.settle_bound);
        lu.set_hold_timeout(cfg.hold_timeout.min(limits::MAX_HOLD_TIMEOUT));
        let peers = Arc::downgrade(&self.targets);
        lu.set_copy_peers(peers);
        let events = lu.backend.events();
        let t = Target {
            iqn: cfg.iqn.clone(),
            lu,
            chap: Mutex::new(cfg.chap),
            allowed: Mutex::new(cfg.allowed_initiators),
            counters,
            sessions: Mutex::new(HashMap::new()),
            portals: cfg.portals,
            redirect: Mutex::new(cfg.redirect),
        };
        let t = Arc::new(t);
        if let Some(rx) = events {
            watch_events(&t, rx);
        }
        targets.insert(cfg.iqn, t);
        Ok(())
    }

    /// Removes a target, ending its sessions first.
    pub async fn remove_target(&self, iqn: &str) -> Result<(), TargetError> {
        let t = self
            .targets
            .lock()
            .remove(iqn)
            .ok_or_else(|| TargetError::NotFound(iqn.to_owned()))?;
        t.close_sessions().await;
        Ok(())
    }

    /// Redirects new logins to target `iqn` to `to` (`ADDR:PORT`; a temporary move, RFC
    /// 7143 status 0x0101), or serves them here again with `None`. On a redirect, the
    /// target's sessions get the asynchronous "request logout" event, so their initiators
    /// log in again and follow it.
    pub fn set_redirect(&self, iqn: &str, to: Option<String>) -> Result<(), TargetError> {
        let t = self
            .target(iqn)
            .ok_or_else(|| TargetError::NotFound(iqn.to_owned()))?;
        let moved = to.is_some();
        *t.redirect.lock() = to;
        if moved {
            for h in t.sessions.lock().values() {
                h.request_logout.notify_one();
            }
        }
        Ok(())
    }

    /// Replaces the initiator names allowed on target `iqn` (`None` allows all). The
    /// sessions of initiators no longer allowed are ended at once (not asked to log out:
    /// an initiator that lost its right to the volume must not write another command);
    /// their logins are refused from now on.
    pub fn set_allowed_initiators(
        &self,
        iqn: &str,
        allowed: Option<Vec<String>>,
    ) -> Result<(), TargetError> {
        let t = self
            .target(iqn)
            .ok_or_else(|| TargetError::NotFound(iqn.to_owned()))?;
        *t.allowed.lock() = allowed;
        let mut sessions = t.sessions.lock();
        let refused: Vec<(String, [u8; 6])> = sessions
            .keys()
            .filter(|(initiator, _)| !t.allows(initiator))
            .cloned()
            .collect();
        for k in refused {
            if let Some(h) = sessions.remove(&k) {
                h.shutdown.notify_one();
            }
        }
        Ok(())
    }

    /// Replaces the CHAP secrets of target `iqn` (`None`: no authentication). New
    /// secrets end the target's sessions at once, as they were admitted under the old
    /// ones (or none): their initiators must log in again and prove the new ones. Taking
    /// CHAP away ends nothing. Other targets are untouched.
    pub fn set_chap(&self, iqn: &str, chap: Option<ChapConfig>) -> Result<(), TargetError> {
        let t = self
            .target(iqn)
            .ok_or_else(|| TargetError::NotFound(iqn.to_owned()))?;
        let mut cur = t.chap.lock();
        if *cur == chap {
            return Ok(());
        }
        let tighter = chap.is_some();
        *cur = chap;
        drop(cur);
        if tighter {
            for (_, h) in t.sessions.lock().drain() {
                h.shutdown.notify_one();
            }
        }
        Ok(())
    }

    /// Ends every session of every target (shutdown).
    pub async fn close_all(&self) {
        let all: Vec<Arc<Target>> = self.targets.lock().values().cloned().collect();
        for t in all {
            t.close_sessions().await;
        }
    }

    /// Lists the targets.
    pub fn targets(&self) -> Vec<TargetInfo> {
        self.targets
            .lock()
            .values()
            .map(|t| TargetInfo {
                iqn: t.iqn.clone(),
                size_bytes: t.lu.backend.size_bytes(),
                sessions: t.sessions.lock().len(),
                chap: t.chap().is_some(),
                counters: t.counters.snapshot(),
            })
            .collect()
    }

    /// Counters of one target.
    pub fn counters(&self, iqn: &str) -> Option<CounterSnapshot> {
        self.targets.lock().get(iqn).map(|t| t.counters.snapshot())
    }

    pub(crate) fn target(&self, iqn: &str) -> Option<Arc<Target>> {
        self.targets.lock().get(iqn).cloned()
    }

    pub(crate) fn all_targets(&self) -> Vec<Arc<Target>> {
        self.targets.lock().values().cloned().collect()
    }

    pub(crate) fn new_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_iscsi_name("iqn.2016-09.com.openebs.cstor:vol1"));
        assert!(!valid_iscsi_name("IQN.bad"));
        assert!(!valid_iscsi_name("vol1"));
    }
}
