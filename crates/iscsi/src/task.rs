//! The task registry of one logical unit, shared by every session on it: what task
//! management (ABORT TASK SET, CLEAR TASK SET, LUN RESET, TARGET WARM RESET) and PREEMPT
//! AND ABORT act on.
//!
//! Owns: one entry per running SCSI command of the LU, whatever session it came from.
//! Invariants: an aborted task issues no backend call after it saw the abort (its cancel
//! signal is raised) and sends nothing, except TASK ABORTED when another I_T nexus aborted
//! it and TAS=1 (control mode page, as advertised); an abort "ends" only when the task's
//! command task has finished, which `abort_where` waits for (bounded).
//! Never: hold the registry mutex across an await.

use crate::backend::Cancel;
use crate::scsi::NexusId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// One running command.
#[derive(Debug)]
pub(crate) struct Task {
    /// The I_T nexus it came from.
    pub nexus: NexusId,
    /// Set by task management: the command sends nothing (or TASK ABORTED, see below).
    aborted: AtomicBool,
    /// Aborted by another I_T nexus with TAS=1: the initiator gets TASK ABORTED.
    report_aborted: AtomicBool,
    /// Still gathering Data-Out (logout and aborts need not wait for data that will not come).
    pub collecting: AtomicBool,
    /// Woken on abort (a command waiting for Data-Out stops at once).
    pub abort_wake: Notify,
    /// Seen by the backend calls of the command (raised on abort and at deadlines).
    pub cancel: Cancel,
    done: watch::Sender<bool>,
}

impl Task {
    /// A task of `nexus`, not aborted.
    pub(crate) fn new(nexus: NexusId) -> Arc<Task> {
        Arc::new(Task {
            nexus,
            aborted: AtomicBool::new(false),
            report_aborted: AtomicBool::new(false),
            collecting: AtomicBool::new(false),
            abort_wake: Notify::new(),
            cancel: Cancel::new(),
            done: watch::channel(false).0,
        })
    }

    /// Aborts it; `report` asks for TASK ABORTED status (TAS, other nexus).
    pub(crate) fn abort(&self, report: bool) {
        if report {
            self.report_aborted.store(true, Ordering::Release);
        }
        self.aborted.store(true, Ordering::Release);
        self.cancel.raise();
        self.abort_wake.notify_one();
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    pub(crate) fn reports_aborted(&self) -> bool {
        self.report_aborted.load(Ordering::Acquire)
    }

    /// Marks the command task finished: waiters in `abort_where` and drains return.
    pub(crate) fn finish(&self) {
        // send_replace stores the value even with no receiver yet (`send` would not), so
        // a waiter that subscribes after the end still sees it.
        self.done.send_replace(true);
    }

    /// Waits until the command task finished, at most `bound`; false on timeout.
    pub(crate) async fn ended(&self, bound: Duration) -> bool {
        let mut rx = self.done.subscribe();
        tokio::time::timeout(bound, rx.wait_for(|d| *d))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The running tasks of one LU, across sessions.
#[derive(Debug, Default)]
pub(crate) struct TaskSet {
    next: AtomicU64,
    tasks: Mutex<HashMap<u64, Arc<Task>>>,
}

impl TaskSet {
    /// Registers a task; the id removes it.
    pub(crate) fn insert(&self, t: Arc<Task>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.tasks.lock().insert(id, t);
        id
    }

    pub(crate) fn remove(&self, id: u64) {
        self.tasks.lock().remove(&id);
    }

    /// Aborts every task matching `pred` and waits (at most `bound`) until each ended.
    /// Tasks of other nexuses than `by` report TASK ABORTED when `tas`. Returns whether all
    /// ended within the bound.
    pub(crate) async fn abort_where(
        &self,
        pred: impl Fn(&Task) -> bool,
        by: &NexusId,
        tas: bool,
        bound: Duration,
    ) -> bool {
        let victims: Vec<Arc<Task>> = self
            .tasks
            .lock()
            .values()
            .filter(|t| pred(t))
            .cloned()
            .collect();
        for t in &victims {
            t.abort(tas && &t.nexus != by);
        }
        let deadline = tokio::time::Instant::now() + bound;
        let mut all = true;
        for t in victims {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            all &= t.ended(left).await;
        }
        all
    }
}
