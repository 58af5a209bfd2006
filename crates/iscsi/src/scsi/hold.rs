//! Hold-then-BUSY (replication design §2.6, §5 iSCSI (1)): while the backend's [`Hold`]
//! is raised, the LU issues no new backend call; commands queue for up to T_hold and
//! those still waiting then are answered BUSY, so the pause never reaches the initiator's
//! command timeout (whose aborts and LUN resets end in read-only filesystems).
//!
//! Owns: the queue of commands waiting for a hold to end, in the order they reached it.
//! Invariants: after a release, waiting calls are issued one at a time in ticket order
//! (a command's ticket is its arrival order at the target, `arrived`)
//! (the next goes only when the one before has issued its call or left the queue), and
//! a call arriving while others wait queues behind them; an aborted command leaves the
//! queue at once (its cancel signal is raised), so task management answers promptly.
//! Never: hold the queue mutex across an await; cost more than two atomic loads when
//! nothing is held and nothing waits.

use crate::backend::{Cancel, Hold};
use crate::sense::ScsiError;
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The commands of one LU waiting for its backend's hold to end.
#[derive(Debug)]
pub(crate) struct HoldQueue {
    hold: Option<Hold>,
    timeout: Duration,
    next: AtomicU64,
    waiting: Mutex<BTreeSet<u64>>,
    /// `waiting.len()`, read without the mutex on the fast path.
    queued: AtomicUsize,
    /// Woken whenever a ticket leaves the queue: the next one may go.
    turn: Notify,
}

/// A command's place at the head of the queue; dropping it (once the backend call is
/// issued, or on BUSY or abort) lets the next one go.
#[derive(Debug)]
pub(crate) struct Turn<'a> {
    queue: &'a HoldQueue,
    ticket: Option<u64>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket {
            self.queue.waiting.lock().remove(&t);
            self.queue.queued.fetch_sub(1, Ordering::AcqRel);
            self.queue.turn.notify_waiters();
        }
    }
}

impl HoldQueue {
    /// A queue for the backend's `hold` (none: never waits) with T_hold `timeout`.
    pub(crate) fn new(hold: Option<Hold>, timeout: Duration) -> Self {
        HoldQueue {
            hold,
            timeout,
            next: AtomicU64::new(1),
            waiting: Mutex::new(BTreeSet::new()),
            queued: AtomicUsize::new(0),
            turn: Notify::new(),
        }
    }

    /// Gives a command its place in the queue order as it arrives (the reader calls this
    /// in CmdSN order), so held calls go in arrival order however their tasks are
    /// scheduled.
    pub(crate) fn arrived(&self, cancel: &Cancel) {
        if self.hold.is_some() {
            cancel.set_order(self.next.fetch_add(1, Ordering::Relaxed));
        }
    }

    /// The same hold with T_hold `timeout` (nothing may be waiting yet).
    pub(crate) fn with_timeout(&self, timeout: Duration) -> Self {
        HoldQueue::new(self.hold.clone(), timeout)
    }

    /// Waits until a backend call of the command with `cancel` may be issued: at once
    /// when nothing is held or queued; otherwise after the hold ends and every call
    /// queued before it went. BUSY after T_hold, or when the command is aborted meanwhile
    /// (it then sends nothing anyway).
    pub(crate) async fn admit(&self, cancel: &Cancel) -> Result<Turn<'_>, ScsiError> {
        let free = Turn {
            queue: self,
            ticket: None,
        };
        let Some(hold) = &self.hold else {
            return Ok(free);
        };
        if !hold.is_held() && self.queued.load(Ordering::Acquire) == 0 {
            return Ok(free);
        }
        let ticket = cancel
            .order()
            .unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed));
        self.waiting.lock().insert(ticket);
        self.queued.fetch_add(1, Ordering::AcqRel);
        let turn = Turn {
            queue: self,
            ticket: Some(ticket),
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let next = self.turn.notified();
            tokio::pin!(next);
            // Registered before the checks, so a turn passed in between is not missed.
            next.as_mut().enable();
            if cancel.is_raised() {
                return Err(ScsiError::busy());
            }
            let held = hold.is_held();
            if !held && self.waiting.lock().first() == Some(&ticket) {
                return Ok(turn);
            }
            tokio::select! {
                _ = &mut next => {}
                _ = hold.released(), if held => {}
                _ = cancel.raised() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::info!(waited = ?self.timeout, "backend held past T_hold; answering BUSY");
                    return Err(ScsiError::busy());
                }
            }
        }
    }
}
