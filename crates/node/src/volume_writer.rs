//! One writer thread per served pool volume: applies the volume's writes and UNMAPs in
//! the order the LU dispatched them, draining whatever queued while it worked.
//!
//! Why (issue 8 item 3): each write used to take its own `spawn_blocking` hop. At queue
//! depth 16 that kept about 16 blocking threads each waking for a few microseconds of
//! work (a copy into the open txg), contending on the volume's locks, and every command
//! paid a thread wake-up on the way in; on the 2-core bench machine the scheduler's
//! switches were the largest cost left in `cstor target serve` after the commit (perf,
//! session 13: `finish_task_switch` 15 % of the target's samples on 4 KiB random writes).
//! A thread that keeps draining a queue pays a wake-up only when it was idle, and the
//! commands reach the engine in dispatch order (the io numbers the LU drew in that order
//! are applied in it; with one hop each, two writes to a block could land in either
//! order).
//!
//! Owns: the queue and the thread's lifetime (started on the first job, ends after
//! [`WRITER_IDLE`] without work, started again by the next job).
//! Invariants: a job whose command was cancelled or passed its deadline before the
//! thread took it up is answered `None` and never reaches the engine (the settlement
//! rule of `volume_backend`); a job taken up runs to its end. Only the `_unsettled`
//! engine calls run here: waiting for the log (crash-safe and write-through modes, FUA)
//! happens on the caller's blocking thread afterwards, so the writer never waits for a
//! device except through the dirty-data throttle, which every writer of the volume would
//! wait on anyway.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cstor_iscsi::backend::IoCtx;
use cstor_pool::{PoolError, VolumeHandle};
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

/// How long an idle writer thread waits for work before it ends: long enough that a
/// steady stream of commands never pays the thread's start, short enough that thousands
/// of idle served volumes hold no threads.
pub const WRITER_IDLE: Duration = Duration::from_secs(2);

/// A modifying call for the writer thread.
#[derive(Debug)]
pub enum WriteOp {
    /// `VolumeHandle::write_unsettled` of `data` at `offset`.
    Write { offset: u64, data: Bytes },
    /// `VolumeHandle::unmap_unsettled` of `len` bytes at `offset`.
    Unmap { offset: u64, len: u64 },
}

/// What the writer answers: `None` when the job was refused unstarted (cancelled or
/// past its deadline), else the engine call's result.
pub type WriteReply = Option<Result<(), PoolError>>;

struct Job {
    ctx: IoCtx,
    op: WriteOp,
    reply: oneshot::Sender<WriteReply>,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// A writer thread is running (it takes every queued job before it ends).
    running: bool,
}

/// The writer queue of one volume.
pub struct VolumeWriter {
    vol: VolumeHandle,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
}

impl std::fmt::Debug for VolumeWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.state.lock();
        write!(
            f,
            "VolumeWriter({}: {} queued, running {})",
            self.vol.name(),
            s.jobs.len(),
            s.running
        )
    }
}

impl VolumeWriter {
    /// A writer for `vol`; no thread runs until the first job.
    pub fn new(vol: VolumeHandle) -> Self {
        VolumeWriter {
            vol,
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                work: Condvar::new(),
            }),
        }
    }

    /// Queue `op` behind every job queued before it. Call it in the LU's dispatch order
    /// (inside `BlockBackend::write`/`unmap`, not in their futures): that is the order
    /// the engine sees. The receiver yields the [`WriteReply`]; it errs only when the
    /// writer thread could not start or died (then the job may have been under way).
    pub fn submit(&self, ctx: &IoCtx, op: WriteOp) -> oneshot::Receiver<WriteReply> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            ctx: ctx.clone(),
            op,
            reply: tx,
        };
        let mut s = self.shared.state.lock();
        s.jobs.push_back(job);
        if s.running {
            drop(s);
            self.shared.work.notify_one();
            return rx;
        }
        s.running = true;
        drop(s);
        let (vol, shared) = (self.vol.clone(), self.shared.clone());
        let spawned = std::thread::Builder::new()
            .name("vol-writer".into())
            .spawn(move || run(&vol, &shared));
        if spawned.is_err() {
            // No thread: drop the queued jobs (their receivers see the writer gone,
            // nothing reached the engine) so the next submit tries again.
            let mut s = self.shared.state.lock();
            s.running = false;
            s.jobs.clear();
        }
        rx
    }
}

/// On a panic of the writer thread, clears `running` and drops what is still queued:
/// the waiting commands then fail instead of waiting for a thread that is gone, and the
/// next submit starts a new one. (A normal end clears `running` itself, under the lock
/// that decided it: doing it here too could undo a thread started since.)
struct Exit<'a>(&'a Shared);

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut s = self.0.state.lock();
            s.running = false;
            s.jobs.clear();
        }
    }
}

fn run(vol: &VolumeHandle, shared: &Shared) {
    let _exit = Exit(shared);
    loop {
        let batch: Vec<Job> = {
            let mut s = shared.state.lock();
            if s.jobs.is_empty() {
                shared.work.wait_for(&mut s, WRITER_IDLE);
                if s.jobs.is_empty() {
                    // Under the lock: a submit after this sees `running` false and
                    // starts a new thread.
                    s.running = false;
                    return;
                }
            }
            s.jobs.drain(..).collect()
        };
        for job in batch {
            // The settlement rule: a command given up before it began never writes.
            if job.ctx.must_not_start() {
                let _ = job.reply.send(None);
                continue;
            }
            let r = apply(vol, job.ctx.io, job.op);
            // The command may have gone (connection closed): nothing to answer then.
            let _ = job.reply.send(Some(r));
        }
    }
}

fn apply(vol: &VolumeHandle, drawn: Option<u64>, op: WriteOp) -> Result<(), PoolError> {
    // The io number the LU drew, or (reservation used up at dispatch) one drawn now, on
    // this thread, where waiting for the reservation's commit is fine.
    let io = match drawn {
        Some(n) => n,
        None => vol.next_io()?,
    };
    match op {
        WriteOp::Write { offset, data } => vol.write_unsettled(offset, &data, Some(io)),
        WriteOp::Unmap { offset, len } => vol.unmap_unsettled(offset, len, Some(io)),
    }
}
