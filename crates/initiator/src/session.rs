//! A session to one LUN that survives connection loss, with the retry rules of open-iscsi
//! plus the Linux SCSI midlayer: the API the CSI node service and the FUSE export use.
//!
//! Owns: the current connection (`State::link`), the reconnect task, the capacity and the
//! counters. Invariants: at most one reconnect task runs at a time; an I/O call returns
//! `Ok` only after the target answered GOOD for every command it took; a command whose
//! connection died is re-issued on the next connection (READ, WRITE, SYNCHRONIZE CACHE and
//! UNMAP are idempotent, so a re-issue of one that had already run is harmless); while no
//! connection exists, I/O waits until the replacement timeout (counted from the loss) has
//! passed and then fails with `Error::ReplacementTimeout`; reconnect attempts go on in the
//! background after that, and I/O works again once one succeeds.
//! Never: hold the state lock across an await.
//! Cancellation: dropping an I/O future abandons its command (see conn.rs); dropping the
//! last `Session` handle closes the connection and ends the reconnect task.

use crate::conn::{self, Command, Conn, Failure, Reply};
use crate::error::{Error, ScsiError, Sense, SenseKey};
use crate::login::{LoginSpec, Offer};
use crate::scsi::{self, status, BlockLimits, Capacity};
use bytes::Bytes;
use cstor_iscsi::pdu::Digests;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Logged (once) when a session is fenced off; the CSI node plugin reads an attach's log
/// for it (a fenced-off volume is never remounted read-write).
pub const FENCED_MESSAGE: &str =
    "this initiator is fenced off, its writes are refused (RESERVATION CONFLICT)";

/// Redirects followed in one login.
const MAX_REDIRECTS: usize = 5;
/// Unit attentions in a row after which a command fails (each is reported once per
/// condition, so more than this means something is wrong).
const MAX_UNIT_ATTENTIONS: u32 = 32;
/// Command timeouts in a row (each followed by a new connection) after which it fails.
const MAX_COMMAND_TIMEOUTS: u32 = 5;
/// Largest transfer of one command when the target reports no limit.
const DEFAULT_MAX_TRANSFER_BYTES: u64 = 8 << 20;
/// Reconnect back-off bounds.
const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(100);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);
/// How long a reconnect's login on a preferred portal runs alone before the next portal
/// is tried beside it: a hung portal (a stopped or cut-off node accepts TCP, or drops
/// SYNs, and never answers) costs this much, not the whole login timeout, when the
/// target moved to another portal.
const PORTAL_STAGGER: Duration = Duration::from_secs(2);

/// Tunables of a session; `Default` gives open-iscsi's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// How long I/O is queued while the connection is down before it fails
    /// (open-iscsi `node.session.timeo.replacement_timeout`, 120 s).
    pub replacement_timeout: Duration,
    /// No answer to a command within this drops the connection and re-issues the command
    /// on a new one (the SCSI midlayer's 30 s command timeout).
    pub command_timeout: Duration,
    /// Bound of one login (TCP connect included).
    pub login_timeout: Duration,
    /// How long BUSY, TASK SET FULL and NOT READY (becoming ready) are retried.
    pub busy_timeout: Duration,
    /// Offer CRC32C header digests.
    pub header_digest: bool,
    /// Offer CRC32C data digests.
    pub data_digest: bool,
    /// Ask for InitialR2T=Yes (no unsolicited Data-Out beyond immediate data).
    pub initial_r2t: bool,
    /// Ask for ImmediateData=Yes (write data in the command PDU).
    pub immediate_data: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            replacement_timeout: Duration::from_secs(120),
            command_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(15),
            busy_timeout: Duration::from_secs(60),
            header_digest: false,
            data_digest: false,
            initial_r2t: false,
            immediate_data: true,
        }
    }
}

/// Counters of a session's recovery actions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Successful logins after a connection loss.
    pub reconnects: u64,
    /// Commands re-issued after a connection loss or timeout.
    pub reissued: u64,
    /// Retries after BUSY, TASK SET FULL or NOT READY.
    pub busy_retries: u64,
    /// Unit attentions seen (each retried).
    pub unit_attentions: u64,
    /// Times READ CAPACITY found a new size.
    pub capacity_changes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    reconnects: AtomicU64,
    reissued: AtomicU64,
    busy_retries: AtomicU64,
    unit_attentions: AtomicU64,
    capacity_changes: AtomicU64,
}

#[derive(Debug)]
enum Link {
    Up { conn: Arc<Conn>, id: u64 },
    Down { since: Instant },
}

#[derive(Debug)]
struct State {
    link: Link,
    reconnecting: bool,
    closed: bool,
    /// Where the last connection went (a redirect target), tried first on reconnect.
    last_addr: String,
    next_id: u64,
}

#[derive(Debug)]
struct Inner {
    spec: LoginSpec,
    /// Other portals that may serve the target after it moves (tried after the last one
    /// reached and `spec.portal`; a portal without the target refuses the login).
    alternates: Vec<String>,
    opts: SessionOptions,
    isid: [u8; 6],
    state: Mutex<State>,
    /// Bumped whenever a connection is installed or the session closes.
    changed: watch::Sender<u64>,
    capacity: Mutex<Capacity>,
    limits: Mutex<BlockLimits>,
    capacity_stale: AtomicBool,
    counters: Counters,
    /// The reservation key this session fences others with and the PR generation after
    /// its last change (crate::pr), if it registered one.
    fence: Mutex<Option<(u64, u32)>>,
    /// Another initiator preempted our key: writes are refused, never registered again.
    fenced: AtomicBool,
}

/// A logged-in session to one LUN. Cheap to clone; all clones share the connection.
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

fn offer(o: &SessionOptions) -> Offer {
    Offer {
        digests: Digests {
            header: o.header_digest,
            data: o.data_digest,
        },
        initial_r2t: o.initial_r2t,
        immediate_data: o.immediate_data,
    }
}

/// Connects and logs in at `start`, following redirects.
async fn establish(
    spec: &LoginSpec,
    opts: &SessionOptions,
    isid: [u8; 6],
    start: &str,
) -> Result<Conn, Error> {
    let mut addr = start.to_owned();
    for _ in 0..=MAX_REDIRECTS {
        let attempt = conn::connect(
            &addr,
            &spec.target_iqn,
            &spec.initiator_iqn,
            spec.chap.as_ref(),
            isid,
            offer(opts),
            spec.lun,
        );
        match tokio::time::timeout(opts.login_timeout, attempt).await {
            Err(_) => return Err(Error::Timeout("login")),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Ok(c))) => return Ok(c),
            Ok(Ok(Err(to))) => {
                tracing::info!(target = %spec.target_iqn, from = %addr, to = %to, "login redirected");
                addr = to;
            }
        }
    }
    Err(Error::TooManyRedirects(MAX_REDIRECTS))
}

impl Session {
    /// Logs in with the default options (replacement timeout 120 s).
    pub async fn login(spec: &LoginSpec) -> Result<Session, Error> {
        Session::login_with(spec, SessionOptions::default()).await
    }

    /// Logs in, clears the power-on unit attention and reads the capacity. A refused
    /// login (wrong CHAP secret, unknown target, not on the ACL) fails here at once.
    pub async fn login_with(spec: &LoginSpec, opts: SessionOptions) -> Result<Session, Error> {
        Session::login_any(spec, opts, &[]).await
    }

    /// As [`Session::login_with`], with `alternates`: portals that may serve the target
    /// instead of `spec.portal` (every node's portal, when the target can move between
    /// nodes). The first login tries `spec.portal`, then each alternate in turn; a
    /// reconnect tries the last portal reached, `spec.portal`, then the alternates. When
    /// every portal fails the first login, the error is `spec.portal`'s.
    pub async fn login_any(
        spec: &LoginSpec,
        opts: SessionOptions,
        alternates: &[String],
    ) -> Result<Session, Error> {
        let mut isid = [0x80u8, 0, 0, 0, 0, 0];
        cstor_iscsi::chap::random(&mut isid[1..])?;
        let mut others: Vec<String> = Vec::new();
        for a in alternates {
            if *a != spec.portal && !others.contains(a) {
                others.push(a.clone());
            }
        }
        let alternates = others;
        let conn = match establish(spec, &opts, isid, &spec.portal).await {
            Ok(c) => c,
            Err(first) => {
                let mut found = None;
                for addr in &alternates {
                    match establish(spec, &opts, isid, addr).await {
                        Ok(c) => {
                            found = Some(c);
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(target = %spec.target_iqn, portal = %addr, error = %e, "login failed")
                        }
                    }
                }
                found.ok_or(first)?
            }
        };
        let (changed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            spec: spec.clone(),
            alternates,
            opts,
            isid,
            state: Mutex::new(State {
                link: Link::Down {
                    since: Instant::now(),
                },
                reconnecting: false,
                closed: false,
                last_addr: conn.addr.clone(),
                next_id: 0,
            }),
            changed,
            capacity: Mutex::new(Capacity {
                blocks: 0,
                block_size: 512,
                thin: false,
            }),
            limits: Mutex::new(BlockLimits::default()),
            capacity_stale: AtomicBool::new(false),
            counters: Counters::default(),
            fence: Mutex::new(None),
            fenced: AtomicBool::new(false),
        });
        inner.install(conn);
        let s = Session { inner };
        s.test_unit_ready().await?;
        s.refresh_capacity().await?;
        let vpd = Command {
            cdb: scsi::inquiry_block_limits(),
            read_len: u32::from(scsi::VPD_LEN),
            data: Bytes::new(),
        };
        match s.inner.run(&vpd).await {
            Ok(r) => {
                if let Some(l) = BlockLimits::parse(&r.data) {
                    *s.inner.limits.lock() = l;
                }
            }
            // No Block Limits page: the defaults apply.
            Err(Error::Scsi(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(s)
    }

    /// The spec this session logged in with.
    pub fn spec(&self) -> &LoginSpec {
        &self.inner.spec
    }

    /// Size of the LUN as last read (re-read after CAPACITY DATA HAS CHANGED).
    pub fn capacity(&self) -> Capacity {
        *self.inner.capacity.lock()
    }

    /// Counters of reconnects, re-issues and retries.
    pub fn stats(&self) -> SessionStats {
        let c = &self.inner.counters;
        SessionStats {
            reconnects: c.reconnects.load(Ordering::Relaxed),
            reissued: c.reissued.load(Ordering::Relaxed),
            busy_retries: c.busy_retries.load(Ordering::Relaxed),
            unit_attentions: c.unit_attentions.load(Ordering::Relaxed),
            capacity_changes: c.capacity_changes.load(Ordering::Relaxed),
        }
    }

    /// Whether another initiator removed the registration this session fenced others
    /// with ([`Session::fence_others`]): its writes are refused by the target from then on.
    pub fn fenced(&self) -> bool {
        self.inner.fenced.load(Ordering::Acquire)
    }

    /// Runs one command to GOOD with the retry rules; the data it returned.
    pub(crate) async fn command(
        &self,
        cdb: scsi::Cdb,
        read_len: u32,
        data: Vec<u8>,
    ) -> Result<bytes::BytesMut, Error> {
        let cmd = Command {
            cdb,
            read_len,
            data: Bytes::from(data),
        };
        Ok(self.inner.run(&cmd).await?.data)
    }

    pub(crate) fn remember_fence(&self, key: u64, generation: u32) {
        *self.inner.fence.lock() = Some((key, generation));
    }

    /// Forgets the fence key; true when it was set and not fenced off (so it is still
    /// ours to unregister).
    pub(crate) fn forget_fence(&self) -> bool {
        self.inner.fence.lock().take().is_some() && !self.fenced()
    }

    pub(crate) fn latch_fenced(&self, why: &str) {
        self.inner.latch_fenced(why);
    }

    /// Whether a live connection exists right now.
    pub fn is_connected(&self) -> bool {
        matches!(&self.inner.state.lock().link, Link::Up { conn, .. } if !conn.is_dead())
    }

    /// TEST UNIT READY (retried like every command).
    pub async fn test_unit_ready(&self) -> Result<(), Error> {
        let cmd = Command {
            cdb: scsi::test_unit_ready(),
            read_len: 0,
            data: Bytes::new(),
        };
        self.inner.run(&cmd).await?;
        self.settle_capacity().await
    }

    /// READ CAPACITY(16) now; updates [`Session::capacity`].
    pub async fn refresh_capacity(&self) -> Result<Capacity, Error> {
        for _ in 0..MAX_UNIT_ATTENTIONS {
            self.inner.capacity_stale.store(false, Ordering::Release);
            let cmd = Command {
                cdb: scsi::read_capacity16(),
                read_len: scsi::READ_CAPACITY16_LEN,
                data: Bytes::new(),
            };
            let r = self.inner.run(&cmd).await?;
            let cap = Capacity::parse(&r.data)
                .ok_or_else(|| Error::Protocol("READ CAPACITY(16) data unusable".into()))?;
            let old = std::mem::replace(&mut *self.inner.capacity.lock(), cap);
            if old != cap && old.blocks != 0 {
                self.inner
                    .counters
                    .capacity_changes
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    blocks = cap.blocks,
                    block_size = cap.block_size,
                    "LUN capacity changed"
                );
            }
            if !self.inner.capacity_stale.load(Ordering::Acquire) {
                return Ok(cap);
            }
        }
        Err(ScsiError::UnitAttentionStorm(MAX_UNIT_ATTENTIONS).into())
    }

    async fn settle_capacity(&self) -> Result<(), Error> {
        if self.inner.capacity_stale.load(Ordering::Acquire) {
            self.refresh_capacity().await?;
        }
        Ok(())
    }

    /// Checks that `len` bytes at `lba` are whole blocks inside the LUN (re-reading the
    /// capacity once if not: the LUN may have grown); returns the block size.
    async fn check_range(&self, lba: u64, len: usize) -> Result<u32, Error> {
        for attempt in 0..2 {
            let cap = self.capacity();
            let bs = cap.block_size as usize;
            if !len.is_multiple_of(bs) {
                return Err(Error::Invalid(format!(
                    "{len} bytes is not a whole number of {bs}-byte blocks"
                )));
            }
            let end = lba.checked_add((len / bs) as u64);
            if end.is_some_and(|e| e <= cap.blocks) {
                return Ok(cap.block_size);
            }
            if attempt == 0 {
                self.refresh_capacity().await?;
            } else {
                return Err(Error::Invalid(format!(
                    "blocks {lba}..+{} beyond the LUN's {} blocks",
                    len / bs,
                    cap.blocks
                )));
            }
        }
        Err(Error::Invalid("unreachable range check".into()))
    }

    fn chunk_bytes(&self, block_size: u32) -> usize {
        let l = self.inner.limits.lock().max_transfer_blocks;
        let max = if l == 0 {
            DEFAULT_MAX_TRANSFER_BYTES
        } else {
            (u64::from(l) * u64::from(block_size)).min(DEFAULT_MAX_TRANSFER_BYTES)
        };
        (max as usize / block_size as usize).max(1) * block_size as usize
    }

    /// READ(16) of `buf.len()` bytes (whole blocks) at `lba`.
    pub async fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), Error> {
        let bs = self.check_range(lba, buf.len()).await?;
        let chunk = self.chunk_bytes(bs);
        let mut at = lba;
        for part in buf.chunks_mut(chunk) {
            let blocks = (part.len() / bs as usize) as u32;
            let cmd = Command {
                cdb: scsi::read16(at, blocks),
                read_len: part.len() as u32,
                data: Bytes::new(),
            };
            let r = self.inner.run(&cmd).await?;
            part.copy_from_slice(&r.data[..part.len()]);
            at += u64::from(blocks);
        }
        self.settle_capacity().await
    }

    /// WRITE(16) of `data` (whole blocks) at `lba`; durable after [`Session::flush`].
    pub async fn write(&self, lba: u64, data: &[u8]) -> Result<(), Error> {
        let bs = self.check_range(lba, data.len()).await?;
        let chunk = self.chunk_bytes(bs);
        let mut at = lba;
        for part in data.chunks(chunk) {
            let blocks = (part.len() / bs as usize) as u32;
            let cmd = Command {
                cdb: scsi::write16(at, blocks),
                read_len: 0,
                data: Bytes::copy_from_slice(part),
            };
            self.inner.run(&cmd).await?;
            at += u64::from(blocks);
        }
        self.settle_capacity().await
    }

    /// SYNCHRONIZE CACHE(16) of the whole LUN: every write answered before is durable.
    pub async fn flush(&self) -> Result<(), Error> {
        let cmd = Command {
            cdb: scsi::synchronize_cache16(),
            read_len: 0,
            data: Bytes::new(),
        };
        self.inner.run(&cmd).await?;
        self.settle_capacity().await
    }

    /// UNMAP `blocks` blocks at `lba` (thin-provisioned LUNs only).
    pub async fn unmap(&self, lba: u64, blocks: u64) -> Result<(), Error> {
        let bs = self.capacity().block_size;
        let len = usize::try_from(blocks.saturating_mul(u64::from(bs)))
            .map_err(|_| Error::Invalid("UNMAP range too large".into()))?;
        self.check_range(lba, len).await?;
        if !self.capacity().thin {
            return Err(Error::Unsupported(
                "UNMAP (the LUN is not thin-provisioned)",
            ));
        }
        let per = match self.inner.limits.lock().max_unmap_blocks {
            0 => return Err(Error::Unsupported("UNMAP (Block Limits allow none)")),
            n => u64::from(n),
        };
        let mut at = lba;
        let end = lba + blocks;
        while at < end {
            let n = (end - at).min(per);
            let (cdb, param) = scsi::unmap(at, n as u32);
            let cmd = Command {
                cdb,
                read_len: 0,
                data: Bytes::from(param),
            };
            self.inner.run(&cmd).await?;
            at += n;
        }
        self.settle_capacity().await
    }

    /// Logs out and closes the session; later calls fail with [`Error::Closed`].
    pub async fn logout(&self) -> Result<(), Error> {
        let conn = {
            let mut st = self.inner.state.lock();
            st.closed = true;
            match &st.link {
                Link::Up { conn, .. } => Some(conn.clone()),
                Link::Down { .. } => None,
            }
        };
        self.inner.changed.send_modify(|g| *g += 1);
        if let Some(c) = conn {
            c.logout().await;
        }
        Ok(())
    }
}

impl Inner {
    /// Latches "fenced off" (once, logged) when this session holds a fence key.
    fn latch_fenced(&self, why: &str) {
        if self.fence.lock().is_some() && !self.fenced.swap(true, Ordering::AcqRel) {
            tracing::error!(target = %self.spec.target_iqn, reason = why, "another node preempted our reservation key: {FENCED_MESSAGE}");
        }
    }

    /// Makes `conn` the session's connection and watches it for its end.
    fn install(self: &Arc<Self>, conn: Conn) {
        let conn = Arc::new(conn);
        let id = {
            let mut st = self.state.lock();
            st.next_id += 1;
            st.last_addr = conn.addr.clone();
            st.link = Link::Up {
                conn: conn.clone(),
                id: st.next_id,
            };
            st.reconnecting = false;
            st.next_id
        };
        self.changed.send_modify(|g| *g += 1);
        let weak = Arc::downgrade(self);
        let dead = conn.dead_signal();
        drop(conn);
        tokio::spawn(async move {
            // Ends without action when the connection is dropped (a newer one replaced it).
            if dead.await {
                if let Some(inner) = weak.upgrade() {
                    inner.lost(id);
                }
            }
        });
    }

    /// The connection `id` ended: start counting the replacement timeout and reconnect.
    fn lost(self: &Arc<Self>, id: u64) {
        let mut st = self.state.lock();
        if matches!(&st.link, Link::Up { id: cur, .. } if *cur == id) {
            st.link = Link::Down {
                since: Instant::now(),
            };
        }
        self.spawn_reconnect(&mut st);
    }

    fn spawn_reconnect(self: &Arc<Self>, st: &mut State) {
        if st.reconnecting || st.closed || matches!(st.link, Link::Up { .. }) {
            return;
        }
        st.reconnecting = true;
        tokio::spawn(reconnect(Arc::downgrade(self)));
    }

    /// The live connection, waiting for a reconnect up to the replacement timeout.
    async fn connection(self: &Arc<Self>) -> Result<(Arc<Conn>, u64), Error> {
        loop {
            let mut changed = self.changed.subscribe();
            let wait = {
                let mut st = self.state.lock();
                if st.closed {
                    return Err(Error::Closed);
                }
                if let Link::Up { conn, id } = &st.link {
                    if !conn.is_dead() {
                        return Ok((conn.clone(), *id));
                    }
                    st.link = Link::Down {
                        since: Instant::now(),
                    };
                }
                let Link::Down { since } = st.link else {
                    continue;
                };
                let waited = since.elapsed();
                if waited >= self.opts.replacement_timeout {
                    self.spawn_reconnect(&mut st);
                    return Err(Error::ReplacementTimeout {
                        target: self.spec.target_iqn.clone(),
                        waited,
                    });
                }
                self.spawn_reconnect(&mut st);
                self.opts.replacement_timeout - waited
            };
            let _ = tokio::time::timeout(wait, changed.changed()).await;
        }
    }

    /// Runs a command to GOOD with the retry rules; any other outcome is an error.
    async fn run(self: &Arc<Self>, cmd: &Command) -> Result<Reply, Error> {
        let mut unit_attentions = 0u32;
        let mut timeouts = 0u32;
        let mut busy_since: Option<Instant> = None;
        let mut delay = Duration::from_millis(5);
        loop {
            let (conn, id) = self.connection().await?;
            let reply = match conn.exec(cmd, self.opts.command_timeout).await {
                Ok(r) => r,
                Err(Failure::Lost(why)) => {
                    tracing::debug!(reason = %why, "command lost with its connection; re-issuing");
                    self.counters.reissued.fetch_add(1, Ordering::Relaxed);
                    self.lost(id);
                    continue;
                }
                Err(Failure::Timeout) => {
                    timeouts += 1;
                    conn.kill("command timed out");
                    self.lost(id);
                    if timeouts >= MAX_COMMAND_TIMEOUTS {
                        return Err(Error::Timeout("command"));
                    }
                    self.counters.reissued.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(Failure::Protocol(why)) => return Err(Error::Protocol(why)),
            };
            if reply.response != 0 {
                return Err(ScsiError::Response(reply.response).into());
            }
            let retry_busy = match reply.status {
                status::GOOD => return Ok(reply),
                status::BUSY | status::TASK_SET_FULL => true,
                status::RESERVATION_CONFLICT => {
                    if !matches!(cmd.cdb[0], crate::pr::PR_IN | crate::pr::PR_OUT) {
                        self.latch_fenced("a command got RESERVATION CONFLICT");
                    }
                    return Err(ScsiError::ReservationConflict.into());
                }
                status::CHECK_CONDITION => {
                    let Some(sense) = Sense::parse(&reply.sense) else {
                        return Err(ScsiError::NoSense.into());
                    };
                    match (sense.key, sense.asc, sense.ascq) {
                        (SenseKey::UnitAttention, asc, ascq) => {
                            self.counters
                                .unit_attentions
                                .fetch_add(1, Ordering::Relaxed);
                            match (asc, ascq) {
                                (0x2a, 0x09) => self.capacity_stale.store(true, Ordering::Release),
                                (0x2a, 0x05) => self.latch_fenced("REGISTRATIONS PREEMPTED"),
                                _ => {}
                            }
                            unit_attentions += 1;
                            if unit_attentions > MAX_UNIT_ATTENTIONS {
                                return Err(ScsiError::UnitAttentionStorm(unit_attentions).into());
                            }
                            tracing::debug!(%sense, "unit attention; retrying");
                            continue;
                        }
                        // Becoming ready, or aborted by the target (e.g. a reset): retry.
                        (SenseKey::NotReady, 0x04, 0x01) | (SenseKey::AbortedCommand, _, _) => true,
                        _ => return Err(ScsiError::Check(sense).into()),
                    }
                }
                other => return Err(ScsiError::Status(other).into()),
            };
            if retry_busy {
                let since = *busy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.opts.busy_timeout {
                    return Err(ScsiError::Busy {
                        status: reply.status,
                        waited: since.elapsed(),
                    }
                    .into());
                }
                self.counters.busy_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// One login over `addrs` in their order of preference: each portal's attempt starts
/// when the one before it failed or has run [`PORTAL_STAGGER`] without an answer, and
/// the first login that succeeds wins (the attempts still running are dropped, which
/// closes their connections before any command went over them). None when all failed.
async fn establish_first(
    spec: &LoginSpec,
    opts: &SessionOptions,
    isid: [u8; 6],
    addrs: &[String],
) -> Option<Conn> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let attempt = |addr: &String| {
        let addr = addr.clone();
        async move {
            let r = establish(spec, opts, isid, &addr).await;
            (addr, r)
        }
    };
    let mut queue = addrs.iter();
    let mut running = FuturesUnordered::new();
    loop {
        if running.is_empty() {
            running.push(attempt(queue.next()?));
        }
        tokio::select! {
            done = running.next() => match done {
                Some((_, Ok(c))) => return Some(c),
                Some((addr, Err(e))) => {
                    tracing::debug!(target = %spec.target_iqn, portal = %addr, error = %e, "reconnect failed");
                    if let Some(a) = queue.next() {
                        running.push(attempt(a));
                    }
                }
                None => {}
            },
            _ = tokio::time::sleep(PORTAL_STAGGER) => {
                if let Some(a) = queue.next() {
                    running.push(attempt(a));
                }
            }
        }
    }
}

/// Logs in again until it works or the session is gone; the last portal reached (a
/// redirect's) first, then the configured one, then the alternates (a moved target).
async fn reconnect(weak: Weak<Inner>) {
    let mut delay = RECONNECT_DELAY_MIN;
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let (closed, last) = {
            let st = inner.state.lock();
            (st.closed, st.last_addr.clone())
        };
        if closed {
            inner.state.lock().reconnecting = false;
            return;
        }
        let mut addrs = vec![last];
        for a in std::iter::once(&inner.spec.portal).chain(&inner.alternates) {
            if !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        if let Some(c) = establish_first(&inner.spec, &inner.opts, inner.isid, &addrs).await {
            if inner.state.lock().closed {
                c.kill("session closed");
                inner.state.lock().reconnecting = false;
                return;
            }
            tracing::info!(target = %inner.spec.target_iqn, portal = %c.addr, "reconnected");
            inner.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            inner.install(c);
            let fence = *inner.fence.lock();
            if let Some((key, generation)) = fence {
                if !inner.fenced.load(Ordering::Acquire) {
                    let s = Session { inner };
                    tokio::spawn(async move { s.recheck_fence(key, generation).await });
                }
            }
            return;
        }
        drop(inner);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_DELAY_MAX);
    }
}
