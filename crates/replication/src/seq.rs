//! The sequencer state of a replicated volume: io numbers drawn, in flight and failed,
//! the send set, and what they imply (the completed watermark, the checkpoint a replica
//! may record, the members the backlog trigger names).
//!
//! Invariants: an io leaves `issued` only when it is sent (into `inflight`) or given up
//! (into `expired`); nothing is sent below an issued io (writes go out in io order); a
//! checkpoint never covers a write that failed after being sent until settle.rs made the
//! Current replicas agree on its blocks. Guarded by the volume's `seq` mutex, never held
//! across an await.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use crate::error::ReplicaError;
use crate::volume::Target;

/// How long a member over the backlog bound must have answered no write before the
/// trigger acts: a burst that a working replica is still draining is not a lag.
const BACKLOG_GRACE_MS: u64 = 250;

#[derive(Debug, Default)]
pub(crate) struct Seq {
    pub(crate) next: u64,
    pub(crate) reserved: u64,
    pub(crate) issued: BTreeSet<u64>,
    pub(crate) inflight: BTreeSet<u64>,
    pub(crate) expired: BTreeSet<u64>,
    pub(crate) max_sent: u64,
    pub(crate) paused: bool,
    pub(crate) targets: Vec<Target>,
    /// Writes below this io were sent before the last Current replica switched to
    /// write-through; they flush before completing.
    pub(crate) wt_from: u64,
    /// A snapshot's io cut being taken (snapshot.rs): no io above it is sent until it
    /// is cleared, and none of those gives up waiting.
    pub(crate) cut: Option<u64>,
    /// Writes and UNMAPs of this instance sent but not acknowledged: io -> (offset, len).
    /// Some replicas may hold them and others not, so no checkpoint may cover the lowest
    /// (a catch-up from such a checkpoint would not list it as suspect and leave the
    /// replicas different) until settle.rs made the Current replicas agree on its blocks.
    pub(crate) failed: BTreeMap<u64, (u64, u64)>,
    /// Lowest failed io that cannot be settled by its range (too many failed writes, or
    /// one too large to re-read): it holds the checkpoint until a restart reconciles.
    pub(crate) failed_pinned: u64,
}

impl Seq {
    /// Every io at or below this completed (or failed).
    pub(crate) fn watermark(&self) -> u64 {
        let lo = [
            self.issued.first(),
            self.inflight.first(),
            self.cut.as_ref(),
        ]
        .into_iter()
        .flatten()
        .min()
        .copied();
        match lo {
            Some(n) => n - 1,
            None => self.next - 1,
        }
    }

    /// What a replica may record as its checkpoint: every io at or below it was
    /// acknowledged (the completed watermark, held below the first failed write).
    pub(crate) fn checkpoint(&self) -> u64 {
        match self.first_failed() {
            0 => self.watermark(),
            f => self.watermark().min(f - 1),
        }
    }

    /// Lowest io of this instance sent but not acknowledged and not settled (0: none).
    pub(crate) fn first_failed(&self) -> u64 {
        let f = self.failed.keys().next().copied().unwrap_or(0);
        match (f, self.failed_pinned) {
            (0, p) | (p, 0) => p,
            (a, b) => a.min(b),
        }
    }

    /// The members whose backlog is more than `limit` bytes beyond the quickest Current
    /// member's (design §2.6's backlog trigger) and that answered no write sent in the
    /// last [`BACKLOG_GRACE_MS`] before `now_ms`, each with the error that ends its
    /// session; empty when `limit` is 0. A Current member is named only while at least
    /// `min_current` Current members would stay within the bound: evicting it otherwise
    /// would be refused, and waiting for it is then the only way on.
    pub(crate) fn lagging(
        &self,
        limit: u64,
        min_current: usize,
        now_ms: u64,
    ) -> Vec<(Target, ReplicaError)> {
        if limit == 0 {
            return Vec::new();
        }
        // A closed session (being evicted) is neither measured nor a yardstick: its
        // failed requests left its backlog, which would make every other member look slow.
        let open = || self.targets.iter().filter(|t| !t.conn.is_closed());
        let backlog = |t: &Target| t.stats.backlog.load(Ordering::SeqCst);
        let Some(quickest) = open().filter(|t| t.current).map(backlog).min() else {
            return Vec::new();
        };
        let over = |t: &Target| {
            backlog(t).saturating_sub(quickest) > limit
                && now_ms.saturating_sub(t.stats.write_answered_ms.load(Ordering::SeqCst))
                    > BACKLOG_GRACE_MS
        };
        let within = open().filter(|t| t.current && !over(t)).count();
        open()
            .filter(|t| over(t) && (!t.current || within >= min_current))
            .map(|t| {
                let e = ReplicaError::Backlog {
                    addr: t.address.clone(),
                    bytes: backlog(t),
                    limit,
                };
                (t.clone(), e)
            })
            .collect()
    }

    /// Records write `io` over `range` as failed after being sent.
    pub(crate) fn note_failed(&mut self, io: u64, range: (u64, u64)) {
        if self.failed.len() >= MAX_FAILED || range.1 > crate::settle::MAX_SETTLE_BYTES {
            if self.failed_pinned == 0 || io < self.failed_pinned {
                self.failed_pinned = io;
            }
        } else {
            self.failed.insert(io, range);
        }
    }
}

/// Failed writes remembered by range for settle.rs; more pin the checkpoint.
const MAX_FAILED: usize = 4096;
