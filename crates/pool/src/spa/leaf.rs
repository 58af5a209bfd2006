//! A leaf vdev: one device, its worker threads, its health and error counters.
//!
//! Owns: the device handle (shared with its workers), a bounded request queue, the state
//! (ONLINE / FAULTED / UNAVAIL / REMOVED), read/write/checksum error counters and
//! read/write latency histograms (relaxed atomics, for metrics).
//! Invariants: every request waits at most the I/O timeout; a device that does not answer
//! in time, or whose write or flush fails, is latched FAULTED and gets no further I/O
//! (fail-stop: a flush is never retried) until the pool is imported again. Reads that fail
//! count errors; [`READ_ERRORS_MAX`] of them fault the device too.
//! Never: blocks a caller past the timeout; retries a write or flush.
//! Shutdown: [`Leaf::close`] asks workers to stop and joins them with a deadline; a worker
//! stuck in a hung device is left detached (it exits when the device returns).

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use cstor_iostats::{HistogramSnapshot, LatencyHistogram};
use parking_lot::{Condvar, Mutex};

use super::device::Device;
use super::error::SpaError;
use super::limits::{DEVICE_QUEUE_DEPTH, READ_ERRORS_MAX, SPIN_WAIT, WORKERS_PER_DEVICE};

/// Health of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeafState {
    /// Serving I/O.
    Online,
    /// Latched off after a failed write/flush or a hang.
    Faulted(String),
    /// Not found at import.
    Unavail,
    /// Taken out by a replace.
    Removed,
}

impl LeafState {
    /// cStor/ZFS spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            LeafState::Online => "ONLINE",
            LeafState::Faulted(_) => "FAULTED",
            LeafState::Unavail => "UNAVAIL",
            LeafState::Removed => "REMOVED",
        }
    }
}

/// A one-shot reply slot. A mutex and condvar rather than a channel: channels spin
/// before parking, which on small machines costs more than the I/O itself.
struct Slot<T> {
    value: Mutex<Option<io::Result<T>>>,
    done: AtomicBool,
    ready: Condvar,
}

impl<T> Slot<T> {
    fn new() -> Arc<Self> {
        Arc::new(Slot {
            value: Mutex::new(None),
            done: AtomicBool::new(false),
            ready: Condvar::new(),
        })
    }
    fn put(&self, v: io::Result<T>) {
        *self.value.lock() = Some(v);
        self.done.store(true, Ordering::Release);
        self.ready.notify_one();
    }
    /// The reply, or None at the deadline; `spin`: poll for [`SPIN_WAIT`] first.
    fn take_until(&self, deadline: Instant, spin: bool) -> Option<io::Result<T>> {
        // A cached read or write answers in microseconds: spin that long before parking,
        // which costs two scheduler round trips. No `yield_now` in the spin: on a busy
        // machine it returned at once and only added syscalls (two per request).
        let spin_end = Instant::now() + if spin { SPIN_WAIT } else { Duration::ZERO };
        'spin: loop {
            for _ in 0..64 {
                if self.done.load(Ordering::Acquire) {
                    break 'spin;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= spin_end {
                break;
            }
        }
        let mut g = self.value.lock();
        while g.is_none() {
            if self.ready.wait_until(&mut g, deadline).timed_out() {
                break;
            }
        }
        g.take()
    }
}

type Reply<T> = Arc<Slot<T>>;

enum Job {
    Read {
        offset: u64,
        len: usize,
        reply: Reply<Vec<u8>>,
    },
    Write {
        buf: Arc<Vec<u8>>,
        range: Range<usize>,
        offset: u64,
        reply: Reply<()>,
    },
    /// Neighbouring reads in one request (`lens` back to back from `offset`).
    ReadV {
        offset: u64,
        lens: Vec<usize>,
        reply: Reply<Vec<Vec<u8>>>,
    },
    /// Neighbouring writes in one request (the pieces back to back from `offset`).
    WriteV {
        pieces: Vec<(Arc<Vec<u8>>, Range<usize>)>,
        offset: u64,
        reply: Reply<()>,
    },
    Flush {
        reply: Reply<()>,
    },
    Stop,
}

/// Bounded job queue shared by a device's workers.
struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    not_empty: Condvar,
    not_full: Condvar,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queue({} jobs)", self.jobs.lock().len())
    }
}

impl Queue {
    fn push_until(&self, job: Job, deadline: Instant) -> bool {
        let mut q = self.jobs.lock();
        while q.len() >= DEVICE_QUEUE_DEPTH {
            if self.not_full.wait_until(&mut q, deadline).timed_out()
                && q.len() >= DEVICE_QUEUE_DEPTH
            {
                return false;
            }
        }
        q.push_back(job);
        self.not_empty.notify_one();
        true
    }
    fn pop(&self) -> Job {
        // Parks at once when empty: a worker that polled for the next request first spent
        // about two sched_yield calls per request and kept idle devices' threads runnable.
        let mut q = self.jobs.lock();
        loop {
            if let Some(j) = q.pop_front() {
                self.not_full.notify_one();
                return j;
            }
            self.not_empty.wait(&mut q);
        }
    }
}

/// A request in flight.
pub(crate) struct Pending<T> {
    slot: Reply<T>,
    started: Instant,
    deadline: Instant,
    op: &'static str,
    offset: u64,
}

/// One device of a raid group.
#[derive(Debug)]
pub struct Leaf {
    guid: AtomicU64,
    /// Path at open (or the last known path when unavailable).
    pub path: String,
    dev: Option<Arc<dyn Device>>,
    tx: Option<Arc<Queue>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    state: Mutex<LeafState>,
    untrusted: AtomicBool,
    timeout: Duration,
    read_errors: AtomicU64,
    write_errors: AtomicU64,
    checksum_errors: AtomicU64,
    /// Latency of successful reads (queued and cached) and writes, for metrics.
    read_latency: LatencyHistogram,
    write_latency: LatencyHistogram,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

fn worker(dev: Arc<dyn Device>, queue: Arc<Queue>) {
    // Runs until a Stop job (loop meant to run for the pool's life).
    loop {
        match queue.pop() {
            Job::Read { offset, len, reply } => {
                let mut buf = vec![0u8; len];
                let r = dev.read_at(&mut buf, offset).map(|()| buf);
                reply.put(r);
            }
            Job::Write {
                buf,
                range,
                offset,
                reply,
            } => reply.put(dev.write_at(&buf[range], offset)),
            Job::ReadV {
                offset,
                lens,
                reply,
            } => {
                let mut bufs: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l]).collect();
                let r = {
                    let mut slices: Vec<&mut [u8]> =
                        bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
                    dev.read_vectored_at(&mut slices, offset)
                };
                reply.put(r.map(|()| bufs));
            }
            Job::WriteV {
                pieces,
                offset,
                reply,
            } => {
                let slices: Vec<&[u8]> = pieces.iter().map(|(b, r)| &b[r.clone()]).collect();
                reply.put(dev.write_vectored_at(&slices, offset));
            }
            Job::Flush { reply } => reply.put(dev.flush()),
            Job::Stop => break,
        }
    }
}

impl Leaf {
    /// Start workers for an open device.
    pub fn open(dev: Arc<dyn Device>, guid: u64, timeout: Duration) -> Arc<Leaf> {
        let tx = Arc::new(Queue {
            jobs: Mutex::new(VecDeque::new()),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        });
        let mut workers = Vec::new();
        for i in 0..WORKERS_PER_DEVICE {
            let (d, r) = (dev.clone(), tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("vdev-io-{i}"))
                .spawn(move || worker(d, r));
            if let Ok(h) = spawned {
                workers.push(h);
            }
        }
        let state = if workers.is_empty() {
            LeafState::Faulted("cannot start I/O threads".into())
        } else {
            LeafState::Online
        };
        Arc::new(Leaf {
            guid: AtomicU64::new(guid),
            path: dev.path().to_owned(),
            dev: Some(dev),
            tx: Some(tx),
            workers: Mutex::new(workers),
            state: Mutex::new(state),
            untrusted: AtomicBool::new(false),
            timeout,
            read_errors: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            checksum_errors: AtomicU64::new(0),
            read_latency: LatencyHistogram::default(),
            write_latency: LatencyHistogram::default(),
        })
    }

    /// A placeholder for a device missing at import.
    pub fn missing(guid: u64, path: &str, state: LeafState) -> Arc<Leaf> {
        Arc::new(Leaf {
            guid: AtomicU64::new(guid),
            path: path.to_owned(),
            dev: None,
            tx: None,
            workers: Mutex::new(Vec::new()),
            state: Mutex::new(state),
            untrusted: AtomicBool::new(false),
            timeout: Duration::ZERO,
            read_errors: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            checksum_errors: AtomicU64::new(0),
            read_latency: LatencyHistogram::default(),
            write_latency: LatencyHistogram::default(),
        })
    }

    /// Device guid.
    pub fn guid(&self) -> u64 {
        self.guid.load(Ordering::SeqCst)
    }
    /// Set the guid once the label is known (import) or assigned (create).
    pub fn set_guid(&self, guid: u64) {
        self.guid.store(guid, Ordering::SeqCst);
    }
    /// Current state.
    pub fn state(&self) -> LeafState {
        self.state.lock().clone()
    }
    /// True if I/O may be sent.
    pub fn is_online(&self) -> bool {
        *self.state.lock() == LeafState::Online
    }
    /// True while resilvering: its columns are not trusted for reads.
    pub fn is_untrusted(&self) -> bool {
        self.untrusted.load(Ordering::SeqCst)
    }
    /// Mark (un)trusted.
    pub fn set_untrusted(&self, on: bool) {
        self.untrusted.store(on, Ordering::SeqCst);
    }
    /// Size of the device (0 when missing).
    pub fn size(&self) -> u64 {
        self.dev.as_ref().map_or(0, |d| d.size())
    }
    /// (read, write, checksum) error counts.
    pub fn errors(&self) -> (u64, u64, u64) {
        (
            self.read_errors.load(Ordering::Relaxed),
            self.write_errors.load(Ordering::Relaxed),
            self.checksum_errors.load(Ordering::Relaxed),
        )
    }
    /// Latency histograms of successful (read, write) requests since open.
    pub fn latency(&self) -> (HistogramSnapshot, HistogramSnapshot) {
        (self.read_latency.snapshot(), self.write_latency.snapshot())
    }
    /// Count a block copy or column that failed verification.
    pub fn count_checksum_error(&self) {
        self.checksum_errors.fetch_add(1, Ordering::Relaxed);
    }
    /// Latch FAULTED with a reason (first reason wins).
    pub fn fault(&self, reason: String) {
        let mut st = self.state.lock();
        if *st == LeafState::Online {
            *st = LeafState::Faulted(reason);
        }
    }
    /// Mark removed.
    pub fn set_removed(&self) {
        *self.state.lock() = LeafState::Removed;
    }

    fn not_online(&self) -> SpaError {
        let reason = match self.state() {
            LeafState::Faulted(r) => r,
            other => other.as_str().to_lowercase(),
        };
        SpaError::DeviceFaulted {
            path: self.path.clone(),
            reason,
        }
    }

    fn submit<T>(
        &self,
        op: &'static str,
        offset: u64,
        make: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<Pending<T>, SpaError> {
        let Some(tx) = self.tx.as_ref().filter(|_| self.is_online()) else {
            return Err(self.not_online());
        };
        let started = Instant::now();
        let deadline = started + self.timeout;
        let slot = Slot::new();
        if tx.push_until(make(slot.clone()), deadline) {
            Ok(Pending {
                slot,
                started,
                deadline,
                op,
                offset,
            })
        } else {
            self.fault(format!(
                "{op} queue stalled for {} ms (device hung)",
                self.timeout.as_millis()
            ));
            Err(self.timeout_error(op, offset))
        }
    }

    fn timeout_error(&self, op: &'static str, offset: u64) -> SpaError {
        SpaError::DeviceTimeout {
            path: self.path.clone(),
            op,
            offset,
            timeout_ms: self.timeout.as_millis() as u64,
        }
    }

    /// Queue a read of `len` bytes at device `offset`.
    pub(crate) fn submit_read(
        &self,
        offset: u64,
        len: usize,
    ) -> Result<Pending<Vec<u8>>, SpaError> {
        self.submit("read", offset, |reply| Job::Read { offset, len, reply })
    }
    /// Queue a write of `buf[range]` at device `offset`.
    pub(crate) fn submit_write(
        &self,
        buf: Arc<Vec<u8>>,
        range: Range<usize>,
        offset: u64,
    ) -> Result<Pending<()>, SpaError> {
        self.submit("write", offset, |reply| Job::Write {
            buf,
            range,
            offset,
            reply,
        })
    }
    /// Queue reads of `lens` bytes back to back from device `offset` (one request).
    pub(crate) fn submit_read_v(
        &self,
        offset: u64,
        lens: Vec<usize>,
    ) -> Result<Pending<Vec<Vec<u8>>>, SpaError> {
        self.submit("read", offset, |reply| Job::ReadV {
            offset,
            lens,
            reply,
        })
    }
    /// Read `lens` bytes back to back from device `offset` on the caller's thread if the
    /// device can answer without I/O ([`Device::read_cached_at`]); `None` otherwise (then
    /// [`Self::submit_read_v`]). Only while ONLINE: a faulted device is never read.
    pub(crate) fn read_cached(&self, offset: u64, lens: &[usize]) -> Option<Vec<Vec<u8>>> {
        let dev = self.dev.as_ref().filter(|_| self.is_online())?;
        let started = Instant::now();
        let bufs = dev.read_cached_owned(lens, offset)?;
        self.read_latency.record(started.elapsed());
        Some(bufs)
    }
    /// Queue writes of `pieces` back to back from device `offset` (one request).
    pub(crate) fn submit_write_v(
        &self,
        pieces: Vec<(Arc<Vec<u8>>, Range<usize>)>,
        offset: u64,
    ) -> Result<Pending<()>, SpaError> {
        self.submit("write", offset, |reply| Job::WriteV {
            pieces,
            offset,
            reply,
        })
    }
    /// Queue a flush.
    pub(crate) fn submit_flush(&self) -> Result<Pending<()>, SpaError> {
        self.submit("flush", 0, |reply| Job::Flush { reply })
    }

    /// Wait for a request; counts errors and latches faults.
    pub(crate) fn wait<T>(&self, p: Pending<T>) -> Result<T, SpaError> {
        let is_read = p.op == "read";
        // A flush waits for the device, never microseconds: no spin.
        match p.slot.take_until(p.deadline, p.op != "flush") {
            Some(Ok(v)) => {
                match p.op {
                    "read" => self.read_latency.record(p.started.elapsed()),
                    "write" => self.write_latency.record(p.started.elapsed()),
                    _ => {}
                }
                Ok(v)
            }
            Some(Err(e)) => {
                if is_read {
                    let n = self.read_errors.fetch_add(1, Ordering::Relaxed) + 1;
                    if n >= READ_ERRORS_MAX {
                        self.fault(format!("too many read errors ({n}), last: {e}"));
                    }
                } else {
                    self.write_errors.fetch_add(1, Ordering::Relaxed);
                    self.fault(format!("{} failed: {e}", p.op));
                }
                Err(SpaError::io(&self.path, p.op, p.offset, e))
            }
            None => {
                if is_read {
                    self.read_errors.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.write_errors.fetch_add(1, Ordering::Relaxed);
                }
                self.fault(format!(
                    "{} did not answer within {} ms (device hung)",
                    p.op,
                    self.timeout.as_millis()
                ));
                Err(self.timeout_error(p.op, p.offset))
            }
        }
    }

    /// Read synchronously.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, SpaError> {
        let p = self.submit_read(offset, len)?;
        self.wait(p)
    }
    /// Write synchronously.
    pub fn write(&self, buf: &[u8], offset: u64) -> Result<(), SpaError> {
        let len = buf.len();
        let p = self.submit_write(Arc::new(buf.to_vec()), 0..len, offset)?;
        self.wait(p)
    }
    /// Flush synchronously.
    pub fn flush(&self) -> Result<(), SpaError> {
        let p = self.submit_flush()?;
        self.wait(p)
    }

    /// Stop workers, waiting up to `deadline` for them.
    pub fn close(&self, deadline: Duration) {
        let Some(tx) = self.tx.as_ref() else { return };
        // A faulted device may be hung: do not wait for its workers at all.
        let deadline = if self.is_online() {
            deadline
        } else {
            Duration::ZERO
        };
        let end = Instant::now() + deadline;
        let mut workers = self.workers.lock();
        for _ in 0..workers.len() {
            if !tx.push_until(Job::Stop, end) {
                break;
            }
        }
        for h in workers.drain(..) {
            // A worker stuck in a hung device cannot be joined; leave it detached.
            while !h.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(1));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Leaf {
    fn drop(&mut self) {
        self.close(super::limits::CLOSE_TIMEOUT);
    }
}
