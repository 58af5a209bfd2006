//! The replicated volume: a `BlockBackend` over N replicas (design §2.3-2.8).
//!
//! Owns: the membership record as this instance last wrote it, the io sequence (from the
//! record's reserved range), the send set (replicas with an open session), the eviction
//! and readmission paths, and the background ping and catch-up tasks.
//!
//! Invariants:
//! - io numbers are strictly increasing within `(epoch start, ioReserved]`; writes are
//!   sent to every session in io order (the sequencer), so the higher io wins per block
//!   on every replica.
//! - A write completes when every Current replica in the send set at its send acked it,
//!   or the failing ones were demoted by a recorded CAS after a flush barrier on the
//!   survivors (S6). Stale/New sessions receive writes; their acks never count.
//! - Below max(1, minCurrent) Current replicas an eviction is refused and IO answers BUSY;
//!   when the refused members are unreachable (not erring), `away` is raised and
//!   rejoin.rs re-opens them: nothing is sent while it is raised.
//! - With one Current replica it writes through (stable before ack).
//! - A higher epoch in the record or any reply fences this instance: every later call
//!   fails and [`ReplicatedVolume::fenced`] completes.
//!
//! Locks: `seq` (sequencer, send set) and `state` are parking_lot mutexes never held
//! across an await; `evict` (tokio) serialises membership changes.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cstor_iscsi::backend::{
    BackendError, BackendEvent, BackendFuture, BackendIdentity, BlockBackend, Hold, IoCtx,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::auth::AuthKey;
use crate::client::ReplicaConn;
use crate::error::{ReplicaError, StoreError, VolumeError};
use crate::membership::{unix_now, Cas, Holder, MemberState, MembershipStore, Record, Version};
pub(crate) use crate::seq::Seq;
use crate::wire::{self, Op, Status};

/// CAS attempts after unknown outcomes the store showed were not applied.
const UNKNOWN_RETRIES: u32 = 3;

/// Whether two records are equal apart from `renew_time` (which a store may keep
/// elsewhere, e.g. the agent's Lease).
fn same_record(a: &Record, b: &Record) -> bool {
    let mut a = a.clone();
    a.renew_time = b.renew_time;
    a == *b
}

/// io numbers reserved per claim (design §2.11).
pub const IO_CHUNK: u64 = 1 << 32;

/// Settings of a replicated volume.
#[derive(Debug, Clone)]
pub struct VolumeConfig {
    /// Volume name (each replica holds POOL/name).
    pub name: String,
    /// Size, bytes.
    pub size: u64,
    /// Replica addresses.
    pub replicas: Vec<String>,
    /// Shared cluster key.
    pub key: Option<AuthKey>,
    /// TLS to the replicas (their certificates verified against this CA), if set.
    pub tls: Option<crate::tls::ReplicaTlsClient>,
    /// cStor's consistency factor (recorded; acts only with `strict`).
    pub consistency_factor: u32,
    /// minCurrent = CF.
    pub strict: bool,
    /// Allow a start that may lose data (empty record over data, size change).
    pub accept_data_loss: bool,
    /// Eviction lag bound (T_evict).
    pub t_evict: Duration,
    /// Eviction backlog bound (design §2.6): the most write data, in bytes, a member may
    /// have sent and unacknowledged beyond what the quickest Current member has; above
    /// it the member is evicted (a catching-up one leaves the send set) at once instead
    /// of after T_evict. 0 turns the trigger off.
    pub evict_backlog: u64,
    /// Ping interval.
    pub ping: Duration,
    /// Longest a command is held before BUSY (T_hold).
    pub t_hold: Duration,
    /// Lease (T_lease).
    pub t_lease: Duration,
    /// Gather bound at start (T_gather).
    pub t_gather: Duration,
    /// Takeover gate (T_takeover).
    pub t_takeover: Duration,
    /// A holder instance known dead (the cluster controller saw its node stop
    /// heartbeating and moved the target away): the gate lets this start take over from
    /// it without waiting for its renewals to age. The fence and the lease wait still run.
    pub takeover_from: Option<String>,
    /// Catch-up rate limit, bytes/s (None: unlimited).
    pub rebuild_rate: Option<u64>,
    /// Readmission delay after a member's first eviction within 10 min; it doubles per
    /// further eviction in that window (flap damping, cap 5 min).
    pub readmit_delay: Duration,
}

impl VolumeConfig {
    /// Design defaults for `name`, `size` and `replicas`.
    pub fn new(name: &str, size: u64, replicas: Vec<String>) -> VolumeConfig {
        VolumeConfig {
            name: name.into(),
            size,
            replicas,
            key: None,
            tls: None,
            consistency_factor: 1,
            strict: false,
            accept_data_loss: false,
            t_evict: Duration::from_secs(2),
            evict_backlog: DEFAULT_EVICT_BACKLOG,
            ping: Duration::from_secs(1),
            t_hold: Duration::from_secs(4),
            t_lease: Duration::from_secs(8),
            t_gather: Duration::from_secs(20),
            t_takeover: Duration::from_secs(60),
            takeover_from: None,
            rebuild_rate: None,
            readmit_delay: Duration::from_secs(1),
        }
    }

    /// How long a start waits after its first fence before serving: an older instance
    /// stops serving within T_lease of its last renewal (L2), plus a tenth for clock rate
    /// and a second for its in-flight replies.
    pub(crate) fn lease_wait(&self) -> Duration {
        self.t_lease + self.t_lease / 10 + Duration::from_secs(1)
    }

    /// How long a start waits for every Current replica to answer. T_gather only spares
    /// needless evictions (any intact Current replica it fenced holds every acknowledged
    /// write: design §2.1 (5)). When the controller moved the target off a node it saw
    /// dead ([`Self::takeover_from`]), that node's replica is most likely gone with it, so
    /// the start waits no longer than the lease wait it must sit out anyway.
    pub(crate) fn gather_bound(&self) -> Duration {
        match self.takeover_from {
            Some(_) => self.t_gather.min(self.lease_wait()),
            None => self.t_gather,
        }
    }

    /// max(1, minCurrent): the fewest Current replicas the volume may run with.
    pub(crate) fn min_current_n(&self) -> usize {
        self.min_current().max(1) as usize
    }

    fn min_current(&self) -> u32 {
        if self.strict {
            self.consistency_factor.max(1)
        } else {
            1
        }
    }
}

/// Catch-up progress of one member.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) done: AtomicU64,
    pub(crate) total: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) running: AtomicBool,
}

/// Default [`VolumeConfig::evict_backlog`]. Why relative to the quickest Current member
/// and this large: a Current member's backlog is bounded by the iSCSI target's command
/// data budget (512 MiB by default) and every Current member gets the same writes, so
/// only a lag behind its peers says it is slow; a catching-up member's writes are not
/// waited for, so without the bound its backlog grows at the write rate for T_evict.
pub const DEFAULT_EVICT_BACKLOG: u64 = 128 << 20;

/// Per-session counters of writes to a member.
#[derive(Debug, Default)]
pub(crate) struct SessionStats {
    pub(crate) outstanding: AtomicUsize,
    /// Bytes of request bodies of writes sent to it and not yet answered.
    pub(crate) backlog: AtomicU64,
    /// Send time (ms since the instance started) of the latest answered write, or when
    /// the session opened: how long it has made no progress on writes.
    pub(crate) write_answered_ms: AtomicU64,
    pub(crate) failed: AtomicBool,
    /// Send time (ms since the instance started) of the latest answered request: the
    /// lease (design §2.5) runs from it.
    pub(crate) answered_ms: AtomicU64,
}

impl SessionStats {
    /// The counters of a session opened at `now_ms` (ms since the instance started).
    pub(crate) fn opened_at(now_ms: u64) -> SessionStats {
        SessionStats {
            write_answered_ms: now_ms.into(),
            ..SessionStats::default()
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) address: String,
    pub(crate) id: String,
    pub(crate) conn: Arc<ReplicaConn>,
    pub(crate) current: bool,
    pub(crate) stats: Arc<SessionStats>,
    /// The replica volume's block size (its OPEN reply): READ_IO and APPLY work in it.
    pub(crate) block_size: u64,
}

/// How the last start went (design §2.8): what it waited for and what it rewrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartInfo {
    /// Lease wait after an unclean takeover (zero after a clean stop).
    pub lease_wait: Duration,
    /// Bytes rewritten by the reconcile; None when it was skipped (clean stop).
    pub reconciled_bytes: Option<u64>,
    /// From the claim until serving.
    pub took: Duration,
}

/// Phase of the volume (cStor's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Starting: fencing, gathering, reconciling.
    Init,
    /// Every member Current and connected.
    Healthy,
    /// Serving with fewer Current replicas than members.
    Degraded,
    /// Not serving (no intact Current replica, or fenced).
    Offline,
}

/// One replica in [`VolumeStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Replica id.
    pub id: String,
    /// Address.
    pub address: String,
    /// Healthy (Current), Degraded (Stale), Rebuilding (catching up), Offline.
    pub mode: String,
    /// Design state: Current, Stale or New.
    pub state: String,
    /// First io a Stale member may lack.
    pub stale_since_io: u64,
    /// Catch-up progress, percent.
    pub rebuild_percent: u64,
    /// Catch-up bytes done.
    pub rebuild_bytes_done: u64,
    /// Catch-up bytes to do.
    pub rebuild_bytes_total: u64,
}

/// What `cstor target status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// Volume name.
    pub volume: String,
    /// Phase.
    pub phase: Phase,
    /// Our epoch.
    pub epoch: u64,
    /// Every io at or below completed.
    pub io_checkpoint: u64,
    /// Replicas.
    pub replicas: Vec<ReplicaStatus>,
    /// Blocks rewritten on a replica by read repair since this instance started.
    #[serde(default)]
    pub repaired_blocks: u64,
    /// What the Current replicas record as their checkpoint: every io at or below it is
    /// on every one of them (held below a write that failed half-way until it is settled).
    #[serde(default)]
    pub checkpoint: u64,
    /// Evictions cancelled since start: the store was unreachable and the member answered
    /// every request before it came back.
    #[serde(default)]
    pub evictions_cancelled: u64,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) record: Record,
    pub(crate) version: Version,
    pub(crate) phase: Phase,
    /// address -> id learned at OPEN.
    pub(crate) ids: Vec<(String, String)>,
}

/// The replicated volume.
#[derive(Debug, Clone)]
pub struct ReplicatedVolume {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) cfg: VolumeConfig,
    pub(crate) store: Arc<dyn MembershipStore>,
    identity: BackendIdentity,
    pub(crate) instance: String,
    pub(crate) epoch: u64,
    pub(crate) seq: Mutex<Seq>,
    seq_wake: Notify,
    pub(crate) state: Mutex<State>,
    pub(crate) evict: tokio::sync::Mutex<()>,
    fenced: AtomicBool,
    fenced_wake: Notify,
    pub(crate) stopping: AtomicBool,
    pub(crate) ready_wake: Notify,
    pub(crate) progress: Mutex<Vec<(String, Arc<Progress>)>>,
    pub(crate) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Why the start was refused, if it was.
    pub(crate) refused: Mutex<Option<String>>,
    /// Current size in bytes (`cfg.size` until an online grow).
    pub(crate) size: AtomicU64,
    /// Backend events (capacity changes) for the LU.
    events: tokio::sync::broadcast::Sender<BackendEvent>,
    /// Replica addresses added at run time (members.rs), caught up like `cfg.replicas`.
    pub(crate) added: Mutex<Vec<String>>,
    /// Start of this instance: the clock of `SessionStats::answered_ms`.
    pub(crate) t0: Instant,
    pub(crate) start_info: Mutex<StartInfo>,
    /// (address, when) of every eviction in the last 10 min (flap damping).
    pub(crate) evictions: Mutex<Vec<(String, Instant)>>,
    /// The LU's hold (design §2.6): raised while the volume starts and while an eviction
    /// is being recorded, so the LU dispatches no new command (it queues them up to
    /// T_hold, then BUSY) and ABORT TASK / LUN RESET never wait for us. `holders` counts
    /// who raised it.
    hold: Hold,
    holders: Mutex<usize>,
    /// Raised while Current members are away and their eviction cannot be recorded
    /// (rejoin.rs): no command is sent, IO answers BUSY, the LU holds.
    pub(crate) away: AtomicBool,
    pub(crate) outage: Mutex<Option<crate::rejoin::Outage>>,
    /// Blocks rewritten by read repair (read.rs) since start.
    pub(crate) repaired_blocks: AtomicU64,
    /// Evictions cancelled because the member answered before the store (evict.rs).
    pub(crate) evictions_cancelled: AtomicU64,
    /// Members readmitted while the store could not tell whether the CAS was applied
    /// (catchup.rs): Current here, confirmed by the next stored change.
    pub(crate) unconfirmed: Mutex<Vec<String>>,
    /// Member forced Current on this running instance (members.rs): the re-open loop
    /// takes it whatever epoch or tail it comes back with, as the operator accepted.
    pub(crate) forced: Mutex<Option<String>>,
}

/// A raised [`Inner::hold`], lowered on drop when nobody else holds it.
pub(crate) struct HoldGuard(Arc<Inner>);

impl Inner {
    pub(crate) fn hold_enter(self: &Arc<Self>) -> HoldGuard {
        let mut n = self.holders.lock();
        *n += 1;
        self.hold.hold();
        HoldGuard(self.clone())
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let mut n = self.0.holders.lock();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.hold.release();
        }
    }
}

pub(crate) fn other(msg: impl std::fmt::Display) -> BackendError {
    BackendError::Other(std::io::Error::other(msg.to_string()))
}

/// How long a write waits for earlier io numbers to be sent before giving them up.
const SEQ_GAP: Duration = Duration::from_millis(200);

impl ReplicatedVolume {
    /// Claims the volume (epoch + 1 by CAS), then fences, gathers and reconciles in the
    /// background; IO is answered BUSY until [`ReplicatedVolume::ready`].
    pub async fn start(
        mut cfg: VolumeConfig,
        store: Arc<dyn MembershipStore>,
    ) -> Result<ReplicatedVolume, VolumeError> {
        let instance = wire::hex(&crate::auth::nonce()[..8]);
        let (mut rec, mut ver) = read_store(&store).await?;
        if rec.size != 0 && rec.size != cfg.size && !cfg.accept_data_loss {
            return Err(VolumeError::Refused(format!(
                "--size {} differs from the recorded size {} (give --accept-data-loss to override)",
                cfg.size, rec.size
            )));
        }
        // Takeover gate (design §2.8 step 1).
        let gate_start = Instant::now();
        loop {
            let free = match &rec.holder {
                None => true,
                Some(h) => {
                    let dead_local = h.node == host_name() && !pid_alive(h.pid);
                    let expired =
                        unix_now().saturating_sub(rec.renew_time) >= cfg.t_takeover.as_secs();
                    let known_dead = cfg.takeover_from.as_deref() == Some(h.instance.as_str());
                    dead_local || expired || known_dead
                }
            };
            if free {
                break;
            }
            if gate_start.elapsed() > cfg.t_takeover + Duration::from_secs(15) {
                return Err(VolumeError::Refused(format!(
                    "volume held by {:?} and its lease is renewed",
                    rec.holder
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            (rec, ver) = read_store(&store).await?;
        }
        let prev_clean = rec.clean_shutdown;
        let prev_holder = rec.holder.clone();
        // A dead holder named by the controller that is not this record's holder (an
        // annotation left from an earlier move) says nothing about this start's replicas:
        // keep the full gather bound.
        if cfg.takeover_from.as_deref() != prev_holder.as_ref().map(|h| h.instance.as_str()) {
            cfg.takeover_from = None;
        }
        // Claim (design §2.8 step 2).
        let (rec, ver, io_base) = loop {
            let mut r = rec.clone();
            r.epoch += 1;
            r.holder = Some(Holder {
                instance: instance.clone(),
                pid: std::process::id(),
                node: host_name(),
            });
            r.renew_time = unix_now();
            r.clean_shutdown = false;
            let base = r.io_reserved + 1;
            r.io_reserved += IO_CHUNK;
            r.size = cfg.size;
            r.cf = cfg.consistency_factor;
            r.min_current = cfg.min_current();
            r.rf = r.rf.max(cfg.replicas.len() as u32);
            r.drf = r.drf.max(cfg.replicas.len() as u32);
            match cas_store(&store, ver, &r).await? {
                Cas::Ok(v) => break (r, v, base),
                Cas::Conflict => (rec, ver) = read_store(&store).await?,
            }
        };
        let epoch = rec.epoch;
        let mut id = [0u8; 16];
        let h = crc32c::crc32c(cfg.name.as_bytes());
        id[..4].copy_from_slice(&h.to_le_bytes());
        id[4..8].copy_from_slice(&crc32c::crc32c_append(h, b"cstor").to_le_bytes());
        id[8] = 0x52;
        let serial: String = cfg
            .name
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(32)
            .collect();
        let inner = Arc::new(Inner {
            identity: BackendIdentity { id, serial },
            instance,
            epoch,
            seq: Mutex::new(Seq {
                next: io_base,
                reserved: rec.io_reserved,
                max_sent: io_base - 1,
                wt_from: 0,
                ..Seq::default()
            }),
            seq_wake: Notify::new(),
            state: Mutex::new(State {
                record: rec,
                version: ver,
                phase: Phase::Init,
                ids: Vec::new(),
            }),
            evict: tokio::sync::Mutex::new(()),
            fenced: AtomicBool::new(false),
            fenced_wake: Notify::new(),
            stopping: AtomicBool::new(false),
            ready_wake: Notify::new(),
            progress: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
            refused: Mutex::new(None),
            size: AtomicU64::new(cfg.size),
            events: tokio::sync::broadcast::channel(16).0,
            added: Mutex::new(Vec::new()),
            t0: Instant::now(),
            start_info: Mutex::new(StartInfo::default()),
            evictions: Mutex::new(Vec::new()),
            hold: Hold::new(),
            holders: Mutex::new(0),
            away: AtomicBool::new(false),
            outage: Mutex::new(None),
            repaired_blocks: AtomicU64::new(0),
            evictions_cancelled: AtomicU64::new(0),
            unconfirmed: Mutex::new(Vec::new()),
            forced: Mutex::new(None),
            cfg,
            store,
        });
        let v = ReplicatedVolume { inner };
        let me = v.clone();
        // Commands wait in the LU until start-up recovery ends (then BUSY after T_hold).
        let starting = v.inner.hold_enter();
        let t = tokio::spawn(async move {
            let _starting = starting;
            let lease_wait = !prev_clean
                && prev_holder
                    .as_ref()
                    .is_some_and(|h| h.instance != me.inner.instance);
            me.recover(prev_clean, lease_wait).await;
        });
        v.inner.tasks.lock().push(t);
        Ok(v)
    }

    /// Completes when the volume serves (or is fenced / offline for good).
    pub async fn ready(&self) -> Phase {
        loop {
            let wait = self.inner.ready_wake.notified();
            tokio::pin!(wait);
            wait.as_mut().enable();
            let p = self.inner.state.lock().phase;
            if p != Phase::Init || self.inner.fenced.load(Ordering::SeqCst) {
                return p;
            }
            wait.await;
        }
    }

    /// Completes when this instance is fenced by a newer one.
    pub async fn fenced(&self) {
        loop {
            let wait = self.inner.fenced_wake.notified();
            tokio::pin!(wait);
            wait.as_mut().enable();
            if self.inner.fenced.load(Ordering::SeqCst) {
                return;
            }
            wait.await;
        }
    }

    /// How the last start went (lease wait, reconcile).
    pub fn start_info(&self) -> StartInfo {
        self.inner.start_info.lock().clone()
    }

    /// Milliseconds since this instance started (the lease clock).
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.t0.elapsed().as_millis() as u64
    }

    /// The lease (design §2.5): IO is served only while every Current replica in the send
    /// set answered a request sent within T_lease (the others' evictions are recorded).
    /// A target cut off from a Current replica and from the store, which therefore cannot
    /// record the eviction, stops reads within T_lease, before a new instance that fenced
    /// that replica and waited T_lease serves.
    fn lease_expired(&self) -> Vec<String> {
        let now = self.now_ms();
        let lease = self.inner.cfg.t_lease.as_millis() as u64;
        self.inner
            .seq
            .lock()
            .targets
            .iter()
            .filter(|t| t.current)
            .filter(|t| now.saturating_sub(t.stats.answered_ms.load(Ordering::SeqCst)) >= lease)
            .map(|t| t.id.clone())
            .collect()
    }

    /// True while the lease holds; else the silent Current replicas are evicted first
    /// (held up to T_hold while the store is unreachable), so IO resumes once the store
    /// records it.
    pub(crate) async fn lease_held(&self) -> bool {
        let expired = self.lease_expired();
        if expired.is_empty() {
            return true;
        }
        for id in expired {
            if let Err(e) = self.evict(&id, "no answer within T_lease").await {
                tracing::warn!(replica = %id, error = %e, "lease expired, eviction not recorded");
            }
        }
        self.lease_expired().is_empty()
    }

    /// The delay before member `address` may be readmitted: zero without an eviction in
    /// the last 10 min, else `readmit_delay` doubled per further eviction there (cap 5
    /// min), counted from the latest one.
    pub(crate) fn readmit_wait(&self, address: &str) -> Duration {
        let window = Duration::from_secs(600);
        let mut ev = self.inner.evictions.lock();
        ev.retain(|(_, at)| at.elapsed() < window);
        let mine: Vec<Instant> = ev
            .iter()
            .filter(|(a, _)| a == address)
            .map(|(_, at)| *at)
            .collect();
        let Some(last) = mine.iter().max() else {
            return Duration::ZERO;
        };
        let n = mine.len().min(20) as u32;
        let delay = self
            .inner
            .cfg
            .readmit_delay
            .saturating_mul(1 << (n - 1))
            .min(Duration::from_secs(300));
        delay.saturating_sub(last.elapsed())
    }

    /// Why the start was refused (the volume then stays Offline).
    pub fn refusal(&self) -> Option<String> {
        self.inner.refused.lock().clone()
    }

    /// Whether this instance was fenced.
    pub fn is_fenced(&self) -> bool {
        self.inner.fenced.load(Ordering::SeqCst)
    }

    /// Our epoch.
    /// Current size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size.load(Ordering::SeqCst)
    }

    /// Grows the volume online: every Current replica grows (a failure aborts before the
    /// record changes; a replica grown alone only has unused space), then the record's
    /// size is changed by CAS, then initiators get CAPACITY DATA HAS CHANGED. Members not
    /// Current grow here if connected, else at their next OPEN (which carries the size).
    /// Shrinking is refused.
    pub async fn resize(&self, new_size: u64) -> Result<(), VolumeError> {
        let inner = &self.inner;
        let bs: u64 = 4096;
        if new_size < self.size() {
            return Err(VolumeError::Refused(format!(
                "cannot shrink from {} to {new_size} bytes (shrinking loses data)",
                self.size()
            )));
        }
        if !new_size.is_multiple_of(bs) {
            return Err(VolumeError::Refused(format!(
                "size {new_size} is not a multiple of {bs}"
            )));
        }
        // One membership change at a time (as evictions and readmissions).
        let _g = inner.evict.lock().await;
        let targets: Vec<Target> = inner.seq.lock().targets.clone();
        let t = inner.cfg.t_evict * 5;
        for x in targets.iter().filter(|x| x.current) {
            x.conn
                .call(Op::Resize, wire::enc_u64s(&[new_size]), t)
                .await
                .map_err(|e| VolumeError::Refused(format!("replica {} did not grow: {e}", x.id)))?;
        }
        for x in targets.iter().filter(|x| !x.current) {
            let _ = x
                .conn
                .call(Op::Resize, wire::enc_u64s(&[new_size]), t)
                .await;
        }
        self.change_record(|r| {
            r.size = new_size;
            Ok(())
        })
        .await?;
        inner.size.store(new_size, Ordering::SeqCst);
        let _ = inner.events.send(BackendEvent::CapacityChanged);
        tracing::info!(volume = %inner.cfg.name, size = new_size, "grown online");
        Ok(())
    }

    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// The record as last written or read by this instance.
    pub fn record(&self) -> Record {
        self.inner.state.lock().record.clone()
    }

    /// Status for `cstor target status`.
    pub fn status(&self) -> VolumeStatus {
        let inner = &self.inner;
        let (record, phase) = {
            let s = inner.state.lock();
            (s.record.clone(), s.phase)
        };
        let (targets, wm, checkpoint) = {
            let q = inner.seq.lock();
            (q.targets.clone(), q.watermark(), q.checkpoint())
        };
        let progress = inner.progress.lock().clone();
        let mut replicas = Vec::new();
        for m in &record.members {
            let connected = targets.iter().any(|t| t.id == m.id && !t.conn.is_closed());
            let prog = progress.iter().find(|(id, _)| *id == m.id).map(|(_, p)| p);
            let running = prog.is_some_and(|p| p.running.load(Ordering::SeqCst));
            let mode = match (m.state, connected, running) {
                (_, false, _) => "Offline",
                (MemberState::Current, true, _) => "Healthy",
                (_, true, true) => "Rebuilding",
                (_, true, false) => "Degraded",
            };
            let (done, total) = prog.map_or((0, 0), |p| {
                (
                    p.done.load(Ordering::SeqCst),
                    p.total.load(Ordering::SeqCst),
                )
            });
            let pct = match (m.state, total) {
                (MemberState::Current, _) => 100,
                (_, 0) => 0,
                _ => (done * 100 / total).min(100),
            };
            replicas.push(ReplicaStatus {
                id: m.id.clone(),
                address: m.address.clone(),
                mode: mode.into(),
                state: format!("{:?}", m.state),
                stale_since_io: m.stale_since_io,
                rebuild_percent: pct,
                rebuild_bytes_done: done,
                rebuild_bytes_total: total,
            });
        }
        VolumeStatus {
            volume: inner.cfg.name.clone(),
            phase: if self.is_fenced() {
                Phase::Offline
            } else {
                phase
            },
            epoch: inner.epoch,
            io_checkpoint: wm,
            replicas,
            repaired_blocks: inner.repaired_blocks.load(Ordering::Relaxed),
            evictions_cancelled: inner.evictions_cancelled.load(Ordering::Relaxed),
            checkpoint,
        }
    }

    /// Ends this instance as a crash would (no drain, no flush, no record change): every
    /// task stops and every replica session is dropped. For tests of restart recovery.
    pub fn crash(&self) {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::SeqCst);
        for t in inner.tasks.lock().drain(..) {
            t.abort();
        }
        inner.state.lock().phase = Phase::Offline;
        let targets = std::mem::take(&mut inner.seq.lock().targets);
        for t in targets {
            t.conn.close("target crashed");
        }
    }

    /// Clean stop: drains IO, flushes every Current replica, records cleanShutdown and
    /// releases the holder.
    pub async fn shutdown(&self) -> Result<(), VolumeError> {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::SeqCst);
        for t in inner.tasks.lock().drain(..) {
            t.abort();
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let busy = {
                let q = inner.seq.lock();
                !q.inflight.is_empty()
            };
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _g = inner.evict.lock().await;
        if inner.fenced.load(Ordering::SeqCst) {
            return Ok(());
        }
        let targets = inner.seq.lock().targets.clone();
        let mut all_flushed = true;
        for t in targets.iter().filter(|t| t.current) {
            if let Err(e) = t
                .conn
                .call(Op::Flush, Bytes::new(), inner.cfg.t_evict)
                .await
            {
                tracing::warn!(error = %e, "flush at stop");
                all_flushed = false;
            }
            let wm = inner.seq.lock().checkpoint();
            let _ = t
                .conn
                .call(Op::Checkpoint, wire::enc_u64s(&[wm]), inner.cfg.t_evict)
                .await;
        }
        // After a write that failed half-way the replicas may differ: the next start
        // must reconcile them, so the stop is not recorded clean.
        let diverged = inner.seq.lock().first_failed() != 0;
        if all_flushed && !diverged {
            self.change_record(|r| {
                r.clean_shutdown = true;
                r.holder = None;
                Ok(())
            })
            .await?;
        }
        for t in &targets {
            t.conn.close("target stopped");
        }
        Ok(())
    }

    /// Changes the record by CAS (re-reading on conflict), failing when fenced. A CAS
    /// whose outcome is unknown (the store timed out, perhaps after applying it) is
    /// resolved by re-reading (design §2.2): the record as we wrote it means applied,
    /// the old version means not applied (and the CAS is tried again, at most
    /// [`UNKNOWN_RETRIES`] times); a store that cannot be read leaves it unknown and
    /// the error goes to the caller. Members readmitted with an unknown outcome
    /// (`unconfirmed`) are written Current again by every change until one is stored.
    pub(crate) async fn change_record(
        &self,
        f: impl Fn(&mut Record) -> Result<(), VolumeError>,
    ) -> Result<Record, VolumeError> {
        let inner = &self.inner;
        let (mut rec, mut ver) = {
            let s = inner.state.lock();
            (s.record.clone(), s.version)
        };
        let mut unknown = 0u32;
        loop {
            if rec.epoch != inner.epoch {
                self.fence(rec.epoch);
                return Err(VolumeError::Fenced {
                    record: rec.epoch,
                    ours: inner.epoch,
                });
            }
            let mut r = rec.clone();
            let confirming = self.confirm_unconfirmed(&mut r);
            f(&mut r)?;
            let outcome = match cas_store(&inner.store, ver, &r).await {
                Ok(c) => c,
                Err(StoreError::Unavailable(m)) => match self.resolve_unknown(&r).await {
                    Some((stored, v, true)) => {
                        tracing::warn!(volume = %inner.cfg.name, "the store answered late but the change was applied: {m}");
                        debug_assert!(same_record(&stored, &r));
                        Cas::Ok(v)
                    }
                    Some((stored, v, false)) if unknown < UNKNOWN_RETRIES => {
                        unknown += 1;
                        (rec, ver) = (stored, v);
                        continue;
                    }
                    _ => return Err(VolumeError::Store(StoreError::Unavailable(m))),
                },
                Err(e) => return Err(e.into()),
            };
            match outcome {
                Cas::Ok(v) => {
                    {
                        let mut s = inner.state.lock();
                        s.record = r.clone();
                        s.version = v;
                    }
                    if !confirming.is_empty() {
                        inner
                            .unconfirmed
                            .lock()
                            .retain(|id| !confirming.contains(id));
                        tracing::info!(volume = %inner.cfg.name, members = ?confirming, "readmission recorded");
                    }
                    return Ok(r);
                }
                Cas::Conflict => (rec, ver) = read_store(&inner.store).await?,
            }
        }
    }

    /// After a CAS with an unknown outcome: the stored record and version, and whether
    /// it is the one we tried to write. None while the store cannot be read.
    async fn resolve_unknown(&self, ours: &Record) -> Option<(Record, Version, bool)> {
        for _ in 0..3 {
            if let Ok((stored, v)) = read_store(&self.inner.store).await {
                let applied = same_record(&stored, ours);
                return Some((stored, v, applied));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Writes the members readmitted with an unknown outcome, still Current here, as
    /// Current into `r`; returns their ids.
    fn confirm_unconfirmed(&self, r: &mut Record) -> Vec<String> {
        let ids: Vec<String> = self.inner.unconfirmed.lock().clone();
        if ids.is_empty() {
            return ids;
        }
        let current: Vec<String> = {
            let q = self.inner.seq.lock();
            q.targets
                .iter()
                .filter(|t| t.current && ids.contains(&t.id))
                .map(|t| t.id.clone())
                .collect()
        };
        for id in &current {
            if let Some(m) = r.member_mut(id) {
                if m.state != MemberState::Current {
                    m.state = MemberState::Current;
                    m.stale_since_io = 0;
                    m.reason = String::new();
                    m.at = unix_now();
                    m.epoch = self.inner.epoch;
                }
            }
        }
        // Ones no longer Current here (evicted meanwhile) need no confirmation.
        ids
    }

    /// Whether member `t` may serve reads and be a catch-up source: Current, and not
    /// readmitted with an unknown outcome (it counts for completion meanwhile, so its
    /// failure is recorded, but a change counts only once stored).
    pub(crate) fn serves(&self, t: &Target) -> bool {
        t.current && !self.inner.unconfirmed.lock().contains(&t.id)
    }

    pub(crate) fn fence(&self, by: u64) {
        if !self.inner.fenced.swap(true, Ordering::SeqCst) {
            tracing::error!(
                volume = %self.inner.cfg.name,
                ours = self.inner.epoch,
                by,
                "fenced by a newer target instance: stopping"
            );
            let targets = std::mem::take(&mut self.inner.seq.lock().targets);
            for t in targets {
                t.conn.close("fenced");
            }
            self.inner.state.lock().phase = Phase::Offline;
            self.inner.fenced_wake.notify_waiters();
            self.inner.ready_wake.notify_waiters();
        }
    }

    pub(crate) fn inner_wake(&self) {
        self.inner.seq_wake.notify_waiters();
    }

    pub(crate) fn refresh_phase(&self) {
        self.set_phase();
    }

    pub(crate) fn set_phase(&self) {
        let s = {
            let rec = self.inner.state.lock().record.clone();
            let q = self.inner.seq.lock();
            let cur = q.targets.iter().filter(|t| t.current).count();
            if cur == 0 || self.inner.away.load(Ordering::SeqCst) {
                Phase::Offline
            } else if rec.members.iter().all(|m| m.state == MemberState::Current)
                && cur == rec.members.len()
            {
                Phase::Healthy
            } else {
                Phase::Degraded
            }
        };
        self.inner.state.lock().phase = s;
        self.inner.ready_wake.notify_waiters();
    }

    pub(crate) async fn ping_loop(&self) {
        let inner = &self.inner;
        let mut tick = 0u64;
        loop {
            tokio::time::sleep(inner.cfg.ping).await;
            if self.is_fenced() || inner.stopping.load(Ordering::SeqCst) {
                return;
            }
            tick += 1;
            let (targets, wm, lagging) = {
                let q = inner.seq.lock();
                let lagging = q.lagging(
                    inner.cfg.evict_backlog,
                    inner.cfg.min_current_n(),
                    self.now_ms(),
                );
                (q.targets.clone(), q.checkpoint(), lagging)
            };
            // The backlog trigger for members whose writers all wait on them (no new
            // write comes to find them over the bound).
            for (t, e) in lagging {
                t.conn.close(&e.to_string());
                let me = self.clone();
                tokio::spawn(async move {
                    me.member_failed(&t, &e).await;
                });
            }
            let away = self.is_away();
            // While away the Current sessions are closed; rejoin.rs re-opens them.
            for t in targets.into_iter().filter(|t| !(away && t.current)) {
                let me = self.clone();
                tokio::spawn(async move {
                    let sent = me.now_ms();
                    let r = t
                        .conn
                        .call(Op::Ping, Bytes::new(), me.inner.cfg.t_evict)
                        .await;
                    if r.is_ok() {
                        t.stats.answered_ms.fetch_max(sent, Ordering::SeqCst);
                    }
                    let r = match r {
                        Ok(_) if t.current => t
                            .conn
                            .call(Op::Checkpoint, wire::enc_u64s(&[wm]), me.inner.cfg.t_evict)
                            .await
                            .map(|_| ()),
                        Ok(_) => Ok(()),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = r {
                        me.member_failed(&t, &e).await;
                    }
                });
            }
            if !away {
                self.settle_failed().await;
            }
            // Fencing through the record; a store outage changes nothing (L6).
            if let Ok((rec, _)) = read_store(&inner.store).await {
                if rec.epoch > inner.epoch {
                    self.fence(rec.epoch);
                    return;
                }
            }
            if tick.is_multiple_of(10) {
                let _ = self
                    .change_record(|r| {
                        r.renew_time = unix_now();
                        Ok(())
                    })
                    .await;
            }
            // Extend the io reservation at half use.
            let need = {
                let q = inner.seq.lock();
                q.reserved.saturating_sub(q.next) < IO_CHUNK / 2
            };
            if need {
                if let Ok(r) = self
                    .change_record(|r| {
                        r.io_reserved += IO_CHUNK;
                        Ok(())
                    })
                    .await
                {
                    inner.seq.lock().reserved = r.io_reserved;
                }
            }
        }
    }

    /// Sends a modifying request in io order to every session and waits for the Current
    /// replicas (evicting the failing ones).
    async fn replicate(
        &self,
        ctx: &IoCtx,
        op: Op,
        range: (u64, u64),
        body: impl Fn(u64) -> Bytes,
    ) -> Result<(), BackendError> {
        let inner = &self.inner;
        if self.is_fenced() {
            return Err(other("fenced by a newer target instance"));
        }
        if inner.state.lock().phase == Phase::Init {
            return Err(BackendError::NotStarted);
        }
        if self.is_away() || !self.lease_held().await {
            self.give_up_io(ctx.io);
            return Err(BackendError::Busy);
        }
        let io = match ctx.io {
            Some(io) => io,
            None => self.draw_io().ok_or(BackendError::Busy)?,
        };
        // The sequencer: wait for every earlier issued io to be sent.
        let t0 = Instant::now();
        let (started, sent_at, len) = loop {
            let wait = inner.seq_wake.notified();
            tokio::pin!(wait);
            wait.as_mut().enable();
            {
                let mut q = inner.seq.lock();
                if q.expired.remove(&io) {
                    return Err(BackendError::NotStarted);
                }
                if inner.away.load(Ordering::SeqCst) {
                    // Nothing goes out while Current members are away (rejoin.rs).
                    q.issued.remove(&io);
                    drop(q);
                    inner.seq_wake.notify_waiters();
                    return Err(BackendError::Busy);
                }
                let held = q.paused || q.cut.is_some_and(|c| c < io);
                let blocked = held || q.issued.range(..io).next().is_some();
                if blocked && ctx.must_not_start() {
                    q.issued.remove(&io);
                    q.expired.remove(&io);
                    drop(q);
                    inner.seq_wake.notify_waiters();
                    return Err(BackendError::NotStarted);
                }
                if blocked && !held && t0.elapsed() >= SEQ_GAP {
                    // Numbers drawn but never used: give them up (late calls get BUSY).
                    let gaps: Vec<u64> = q.issued.range(..io).copied().collect();
                    for g in gaps {
                        q.issued.remove(&g);
                        q.expired.insert(g);
                    }
                }
                let blocked = held || q.issued.range(..io).next().is_some();
                if !blocked {
                    if q.targets.iter().all(|t| !t.current) {
                        return Err(BackendError::Busy);
                    }
                    q.issued.remove(&io);
                    q.inflight.insert(io);
                    q.max_sent = q.max_sent.max(io);
                    let b = body(io);
                    let len = b.len() as u64;
                    let lagging = q.lagging(
                        inner.cfg.evict_backlog,
                        inner.cfg.min_current_n(),
                        self.now_ms(),
                    );
                    let mut started = Vec::new();
                    for t in q.targets.iter() {
                        if let Some(e) = lagging
                            .iter()
                            .find(|(l, _)| Arc::ptr_eq(&l.conn, &t.conn))
                            .map(|(_, e)| e.clone())
                        {
                            // As a lost connection: its session ends (no eviction
                            // cancel: it misses this write) and the write does not
                            // complete before its eviction is recorded.
                            t.conn.close(&e.to_string());
                            started.push((t.clone(), Err(e)));
                            continue;
                        }
                        match t.conn.start(op, b.clone()) {
                            Ok(s) => {
                                t.stats.outstanding.fetch_add(1, Ordering::SeqCst);
                                t.stats.backlog.fetch_add(len, Ordering::SeqCst);
                                started.push((t.clone(), Ok(s)));
                            }
                            Err(e) => started.push((t.clone(), Err(e))),
                        }
                    }
                    let wt = q.wt_from;
                    break (started, (Instant::now(), wt), len);
                }
            }
            tokio::time::timeout(SEQ_GAP, wait).await.ok();
        };
        inner.seq_wake.notify_waiters();
        let t_evict = inner.cfg.t_evict;
        let sent_ms = sent_at.0.duration_since(inner.t0).as_millis() as u64;
        let mut current_waits = Vec::new();
        for (t, s) in started {
            let me = self.clone();
            let is_current = t.current;
            let sent = s.is_ok();
            let fut = async move {
                let r = match s {
                    Ok(s) => {
                        let left = t_evict.saturating_sub(sent_at.0.elapsed());
                        t.conn.finish(s, left).await
                    }
                    Err(e) => Err(e),
                };
                if r.is_ok() {
                    t.stats.answered_ms.fetch_max(sent_ms, Ordering::SeqCst);
                    t.stats
                        .write_answered_ms
                        .fetch_max(sent_ms, Ordering::SeqCst);
                }
                if sent {
                    t.stats.backlog.fetch_sub(len, Ordering::SeqCst);
                    t.stats.outstanding.fetch_sub(1, Ordering::SeqCst);
                }
                (t, r, me)
            };
            if is_current {
                current_waits.push(fut);
            } else {
                // A Stale/New member's ack never counts, so the write does not wait for
                // it: a member stalled mid catch-up costs no write latency (one stall
                // per eviction, §4). Its failure ends the catch-up.
                tokio::spawn(async move {
                    let (t, r, me) = fut.await;
                    if let Err(e) = r {
                        me.member_failed(&t, &e).await;
                    }
                });
            }
        }
        let results = join_all(current_waits).await;
        let mut outcome: Result<(), BackendError> = Ok(());
        let mut failed_current: Vec<(Target, ReplicaError)> = Vec::new();
        let mut ok_current = 0usize;
        for (t, r, me) in results {
            match r {
                Ok(_) if t.current => ok_current += 1,
                Ok(_) => {}
                Err(e) if t.current => failed_current.push((t, e)),
                Err(e) => {
                    me.member_failed(&t, &e).await;
                }
            }
        }
        for (t, e) in &failed_current {
            if let ReplicaError::Fenced { stored, .. } = e {
                self.fence(*stored);
                outcome = Err(other("fenced by a newer target instance"));
                continue;
            }
            match self.evict(&t.id, &e.to_string()).await {
                Ok(()) => {}
                Err(VolumeError::Fenced { .. }) => {
                    outcome = Err(other("fenced by a newer target instance"))
                }
                Err(err) => {
                    tracing::warn!(error = %err, "eviction not possible");
                    outcome = Err(match e {
                        ReplicaError::Failed {
                            status: Status::NoSpace,
                            ..
                        } if ok_current == 0 => BackendError::NoSpace,
                        ReplicaError::Failed {
                            status: Status::ReadOnly,
                            ..
                        } if ok_current == 0 => BackendError::ReadOnly,
                        _ => BackendError::Busy,
                    });
                }
            }
        }
        if outcome.is_ok() && io < sent_at.1 {
            // Sent before the switch to single-copy write-through: make it stable now.
            outcome = self.flush_all().await;
        }
        if outcome.is_ok() && ctx.fua {
            outcome = self.flush_all().await;
        }
        {
            let mut q = inner.seq.lock();
            q.inflight.remove(&io);
            if outcome.is_err() {
                q.note_failed(io, range);
            }
        }
        outcome
    }

    /// Releases an io number drawn for a write that will not be sent, so later ones do
    /// not wait for it in the sequencer.
    fn give_up_io(&self, io: Option<u64>) {
        if let Some(io) = io {
            let removed = self.inner.seq.lock().issued.remove(&io);
            if removed {
                self.inner.seq_wake.notify_waiters();
            }
        }
    }

    /// Whether Current members are away (IO answers BUSY until they are re-opened).
    pub(crate) fn is_away(&self) -> bool {
        self.inner.away.load(Ordering::SeqCst)
    }

    fn draw_io(&self) -> Option<u64> {
        let mut q = self.inner.seq.lock();
        if q.next > q.reserved {
            return None;
        }
        let io = q.next;
        q.next += 1;
        q.issued.insert(io);
        Some(io)
    }

    /// FLUSH on every Current replica (evicting a failing one).
    async fn flush_all(&self) -> Result<(), BackendError> {
        let inner = &self.inner;
        if self.is_fenced() {
            return Err(other("fenced by a newer target instance"));
        }
        if self.is_away() {
            return Err(BackendError::Busy);
        }
        let targets: Vec<Target> = inner
            .seq
            .lock()
            .targets
            .iter()
            .filter(|t| t.current)
            .cloned()
            .collect();
        if targets.is_empty() {
            return Err(BackendError::Busy);
        }
        let fl = targets.iter().map(|t| {
            let t = t.clone();
            async move {
                let r = t
                    .conn
                    .call(Op::Flush, Bytes::new(), inner.cfg.t_evict)
                    .await;
                (t, r)
            }
        });
        for (t, r) in join_all(fl).await {
            if let Err(e) = r {
                if !self.member_failed(&t, &e).await {
                    return Err(BackendError::Busy);
                }
            }
        }
        Ok(())
    }
}

impl BlockBackend for ReplicatedVolume {
    fn identity(&self) -> &BackendIdentity {
        &self.inner.identity
    }

    fn size_bytes(&self) -> u64 {
        self.size()
    }

    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<BackendEvent>> {
        Some(self.inner.events.subscribe())
    }

    fn read_only(&self) -> bool {
        false
    }

    fn next_io(&self) -> Option<u64> {
        self.draw_io()
    }

    fn hold(&self) -> Option<Hold> {
        Some(self.inner.hold.clone())
    }

    fn read(&self, _ctx: &IoCtx, offset: u64, len: u32) -> BackendFuture<'_, Bytes> {
        Box::pin(self.read_any(offset, len))
    }

    fn write(&self, ctx: &IoCtx, offset: u64, data: Bytes) -> BackendFuture<'_, ()> {
        let ctx = ctx.clone();
        Box::pin(async move {
            let range = (offset, data.len() as u64);
            self.replicate(&ctx, Op::Write, range, |io| {
                wire::enc_write(offset, io, &data)
            })
            .await
        })
    }

    fn flush(&self, _ctx: &IoCtx) -> BackendFuture<'_, ()> {
        Box::pin(self.flush_all())
    }

    fn unmap(&self, ctx: &IoCtx, offset: u64, len: u64) -> BackendFuture<'_, ()> {
        let ctx = ctx.clone();
        Box::pin(async move {
            self.replicate(&ctx, Op::Unmap, (offset, len), |io| {
                wire::enc_u64s(&[offset, len, io])
            })
            .await
        })
    }
}

pub(crate) async fn read_store(
    s: &Arc<dyn MembershipStore>,
) -> Result<(Record, Version), StoreError> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || s.read())
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
}

pub(crate) async fn cas_store(
    s: &Arc<dyn MembershipStore>,
    v: Version,
    r: &Record,
) -> Result<Cas, StoreError> {
    let s = s.clone();
    let r = r.clone();
    tokio::task::spawn_blocking(move || s.cas(v, &r))
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
}

/// Runs futures concurrently and collects their outputs in order.
pub(crate) async fn join_all<F: std::future::Future>(
    fs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let fs: Vec<F> = fs.into_iter().collect();
    let mut out = Vec::with_capacity(fs.len());
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
