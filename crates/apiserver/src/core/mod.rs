//! The object service: every create, update, patch, delete, list and watch goes through
//! `Core`, which owns the in-memory copy of the store, the watch history and the served
//! resource types.
//!
//! Owns: `Inner` (the committed objects, resourceVersion and history: what readers see)
//! under an `RwLock`, and `Staged` (the writers' view: committed plus staged changes,
//! the next resourceVersion, the batch waiting for its fsync) under a `Mutex`.
//!
//! Group commit: a writer decides against `Staged` under its mutex (one writer at a
//! time, so changes are totally ordered by resourceVersion), stages its changes there
//! and releases the mutex; then it waits until a commit covering them is durable. The
//! first waiting writer that finds no commit running becomes the leader: it takes the
//! whole batch, commits it in one redb transaction (one fsync) without any lock, then
//! applies it to `Inner` under the write lock, broadcasts it, and wakes the batch's
//! writers. Writers arriving during that fsync stage the next batch, so concurrent
//! writes share fsyncs while each reply still waits for its own data to be durable.
//! Readers (get, list, watch start) take the shared lock of `Inner` and never wait
//! behind an fsync, only behind the short in-memory apply. Lists copy `Arc`s under
//! the lock and clone objects after releasing it.
//! Invariants: resourceVersion only grows (also across restarts); readers and watchers
//! only see durable changes, in resourceVersion order; `Inner` equals the store after
//! every commit. A failed commit fails its batch and every change staged after it
//! (they may depend on it): `Staged` is reset to `Inner` and those writers get the
//! error, so no write that got an error reply is visible and none that got a success
//! is lost. A status write never changes spec and a spec write never changes status;
//! generation moves only when spec (everything but metadata and status) changes.
//! Never: blocks the async runtime outside `tokio::task::block_in_place` (callers wrap
//! writes), sends a watch event for an uncommitted change, or holds the `Staged` mutex
//! or the `Inner` lock across an fsync.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, Notify};

use crate::error::{ApiError, FieldCause};
use crate::fields::{self, Part};
use crate::limits;
use crate::quantity;
use crate::registry::{Registry, ResourceType, Special};
use crate::schema;
use crate::select::{FieldSelector, LabelSelector};
use crate::store::{Change, EventType, Store};
use crate::time;

mod admit;
mod convert;
mod gc;
mod quota;
mod read;
mod write;

pub(crate) use self::convert::*;
pub(crate) use self::read::{watch_event, ListAt};
#[allow(unused_imports)]
use self::{admit::*, gc::*, quota::*, read::*, write::*};

/// How unknown fields are handled (`fieldValidation` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// Who writes and how.
#[derive(Debug, Clone)]
pub(crate) struct WriteCtx {
    pub(crate) rt: Arc<ResourceType>,
    pub(crate) version: String,
    pub(crate) namespace: String,
    pub(crate) manager: String,
    pub(crate) dry_run: bool,
    pub(crate) validation: FieldValidation,
}

/// A successful write: the object as the client's version shows it, and warnings.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) object: Value,
    pub(crate) warnings: Vec<String>,
    pub(crate) created: bool,
}

/// Patch flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply { force: bool },
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOpts {
    pub(crate) precondition_rv: Option<String>,
    pub(crate) precondition_uid: Option<String>,
    pub(crate) orphan: bool,
    /// `propagationPolicy: Foreground`: the object stays (finalizer `foregroundDeletion`)
    /// until its dependents with `blockOwnerDeletion` are gone.
    pub(crate) foreground: bool,
}

/// One page of a list.
#[derive(Debug)]
pub(crate) struct ListPage {
    pub(crate) items: Vec<Value>,
    pub(crate) resource_version: u64,
    pub(crate) continue_token: Option<String>,
    pub(crate) remaining: Option<u64>,
}

/// What a list or watch selects.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) namespace: Option<String>,
    pub(crate) labels: LabelSelector,
    pub(crate) fields: FieldSelector,
}

/// The committed state: what readers and watchers see.
#[derive(Debug)]
struct Inner {
    rv: u64,
    floor: u64,
    objects: BTreeMap<String, Arc<Value>>,
    history: VecDeque<Arc<Change>>,
}

/// Outcome of a staged write, filled in by the commit leader.
#[derive(Debug, Default)]
struct Ticket {
    /// None until its commit finished; then Ok, or the commit's error.
    outcome: Mutex<Option<Result<(), String>>>,
}

/// The writers' view (see the module doc).
#[derive(Debug)]
struct Staged {
    /// Committed objects with the staged changes applied.
    objects: BTreeMap<String, Arc<Value>>,
    /// The newest resourceVersion handed out.
    rv: u64,
    /// Staged changes not yet taken by a leader, in resourceVersion order.
    batch: Vec<Arc<Change>>,
    /// The writers of `batch`.
    tickets: Vec<Arc<Ticket>>,
    /// A leader is committing (outside the mutex).
    committing: bool,
}

/// The object service (see the module doc).
#[derive(Debug)]
pub(crate) struct Core {
    store: Store,
    inner: RwLock<Inner>,
    staged: Mutex<Staged>,
    /// Signalled when a leader finishes a commit.
    committed: Condvar,
    tx: broadcast::Sender<Arc<Change>>,
    registry: RwLock<Arc<Registry>>,
    aliases: Vec<Arc<crate::Alias>>,
    pub(crate) gc_wakeup: Notify,
}

type Pending = Vec<(EventType, String, Value)>;

/// A writer's hold on the staged state: excludes other writers, not readers; released
/// by `Core::commit` before it waits for the fsync.
type Writer<'a> = MutexGuard<'a, Staged>;

/// The new history floor (newest resourceVersion dropped) over the entries `(rv, at_ms)`
/// in order: entries older than `WATCH_HISTORY_RETENTION` go (etcd's and
/// kube-apiserver's 5-minute compaction: watches and continue tokens from before get
/// 410), and beyond `WATCH_HISTORY_EVENTS_MAX` the oldest go too, bounding memory.
fn history_floor(
    entries: impl Iterator<Item = (u64, u64)>,
    len: usize,
    floor: u64,
    now_ms: u64,
) -> u64 {
    let retention_ms =
        u64::try_from(limits::WATCH_HISTORY_RETENTION.as_millis()).unwrap_or(u64::MAX);
    let mut floor = floor;
    let mut left = len;
    for (rv, at_ms) in entries {
        let too_many = left > limits::WATCH_HISTORY_EVENTS_MAX;
        let too_old = at_ms.saturating_add(retention_ms) < now_ms;
        if !(too_many || too_old) {
            break;
        }
        floor = rv;
        left -= 1;
    }
    floor
}

/// A started watch: replayed changes, the live receiver, and the resourceVersion at
/// which the receiver was subscribed.
pub(crate) type WatchStart = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>, u64);

fn conflict(rt: &ResourceType, name: &str) -> ApiError {
    ApiError::Conflict {
        resource: rt.qualified(),
        name: name.into(),
        message: format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            rt.qualified()
        ),
        causes: Vec::new(),
    }
}

fn not_found(rt: &ResourceType, name: &str) -> ApiError {
    ApiError::NotFound {
        resource: rt.qualified(),
        name: name.into(),
    }
}

fn invalid(rt: &ResourceType, name: &str, causes: Vec<FieldCause>) -> ApiError {
    ApiError::Invalid {
        kind: rt.kind.clone(),
        group: rt.group.clone(),
        name: name.into(),
        causes,
    }
}

fn cause(reason: &'static str, field: &str, message: String) -> FieldCause {
    FieldCause {
        reason,
        field: field.into(),
        message,
    }
}

fn meta_str<'a>(o: &'a Value, f: &str) -> Option<&'a str> {
    o["metadata"][f].as_str()
}

impl Core {
    /// Opens the store at `path` and serves the built-ins, the CRDs in the store and
    /// `initial_crds` (created when missing).
    pub(crate) fn open(path: &Path, aliases: Vec<Arc<crate::Alias>>) -> Result<Core, ApiError> {
        let (store, loaded) = Store::open(path)?;
        let (tx, _) = broadcast::channel(limits::WATCH_BROADCAST_EVENTS_MAX);
        let core = Core {
            store,
            staged: Mutex::new(Staged {
                objects: loaded.objects.clone(),
                rv: loaded.resource_version,
                batch: Vec::new(),
                tickets: Vec::new(),
                committing: false,
            }),
            committed: Condvar::new(),
            inner: RwLock::new(Inner {
                rv: loaded.resource_version,
                floor: loaded.history_floor,
                objects: loaded.objects,
                history: loaded.history,
            }),
            tx,
            registry: RwLock::new(Arc::new(Registry::default())),
            aliases,
            gc_wakeup: Notify::new(),
        };
        core.rebuild_registry();
        Ok(core)
    }

    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.registry.read().clone()
    }

    fn rebuild_registry(&self) {
        let crds: Vec<Arc<Value>> = {
            let inner = self.inner.read();
            inner
                .objects
                .range("apiextensions.k8s.io/customresourcedefinitions/".to_string()..)
                .take_while(|(k, _)| {
                    k.starts_with("apiextensions.k8s.io/customresourcedefinitions/")
                })
                .map(|(_, v)| v.clone())
                .collect()
        };
        *self.registry.write() = Arc::new(Registry::build(&crds, &self.aliases));
    }

    /// A receiver of every committed change from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    /// The current global resourceVersion.
    pub(crate) fn resource_version(&self) -> u64 {
        self.inner.read().rv
    }

    /// The writers' view; hold it from reading the state a write depends on to staging
    /// the write with `commit`.
    fn writer(&self) -> Writer<'_> {
        self.staged.lock()
    }

    /// Stages `pending` (assigning resourceVersions), releases the writer hold and
    /// returns once the changes are durable (leading the commit when no other writer
    /// is), or with the error of the commit that failed them.
    fn commit(
        &self,
        mut staged: Writer<'_>,
        pending: Pending,
    ) -> Result<Vec<Arc<Change>>, ApiError> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let at_ms = time::now_ms();
        let mut changes = Vec::with_capacity(pending.len());
        for (kind, key, mut obj) in pending {
            staged.rv += 1;
            let rv = staged.rv;
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.insert("resourceVersion".into(), json!(rv.to_string()));
            }
            let object = Arc::new(obj);
            let prev = match kind {
                EventType::Deleted => staged.objects.remove(&key),
                _ => staged.objects.insert(key.clone(), object.clone()),
            };
            changes.push(Arc::new(Change {
                rv,
                kind,
                key,
                object,
                at_ms,
                prev,
            }));
        }
        let ticket = Arc::new(Ticket::default());
        staged.batch.extend(changes.iter().cloned());
        staged.tickets.push(ticket.clone());
        loop {
            if let Some(outcome) = ticket.outcome.lock().take() {
                return outcome
                    .map(|()| changes)
                    .map_err(|e| ApiError::Internal(format!("store commit failed: {e}")));
            }
            if staged.committing {
                self.committed.wait(&mut staged);
                continue;
            }
            staged.committing = true;
            let batch = std::mem::take(&mut staged.batch);
            let tickets = std::mem::take(&mut staged.tickets);
            let outcome = MutexGuard::unlocked(&mut staged, || self.commit_batch(batch));
            if outcome.is_err() {
                // Everything staged since depends on the failed batch: drop it all and
                // start again from what is on disk.
                let inner = self.inner.read();
                staged.objects = inner.objects.clone();
                staged.rv = inner.rv;
                staged.batch.clear();
                for t in staged.tickets.drain(..) {
                    *t.outcome.lock() =
                        Some(Err("an earlier write it depended on was not stored".into()));
                }
            }
            let msg = outcome.map_err(|e| e.to_string());
            for t in tickets {
                *t.outcome.lock() = Some(msg.clone());
            }
            staged.committing = false;
            self.committed.notify_all();
        }
    }

    /// The leader's part: one durable redb commit of `batch`, then memory, watchers,
    /// the registry and the garbage collector.
    fn commit_batch(&self, batch: Vec<Arc<Change>>) -> Result<(), ApiError> {
        let Some(last) = batch.last() else {
            return Ok(());
        };
        let rv = last.rv;
        let (floor, old_floor) = {
            let inner = self.inner.read();
            let floor = history_floor(
                inner
                    .history
                    .iter()
                    .chain(batch.iter())
                    .map(|c| (c.rv, c.at_ms)),
                inner.history.len() + batch.len(),
                inner.floor,
                time::now_ms(),
            );
            (floor, inner.floor)
        };
        debug_assert!(floor >= old_floor);
        self.store.commit(&batch, rv, floor)?;
        let mut crd_changed = false;
        let mut deleted = false;
        {
            let mut inner = self.inner.write();
            assert!(rv > inner.rv, "resourceVersion must grow");
            inner.rv = rv;
            inner.floor = floor;
            for c in &batch {
                match c.kind {
                    EventType::Deleted => {
                        inner.objects.remove(&c.key);
                        deleted = true;
                    }
                    _ => {
                        inner.objects.insert(c.key.clone(), c.object.clone());
                    }
                }
                crd_changed |= c
                    .key
                    .starts_with("apiextensions.k8s.io/customresourcedefinitions/");
                inner.history.push_back(c.clone());
                // No receivers is fine: nobody is watching.
                let _ = self.tx.send(c.clone());
            }
            while inner.history.front().is_some_and(|c| c.rv <= floor) {
                inner.history.pop_front();
            }
        }
        if crd_changed {
            self.rebuild_registry();
        }
        if deleted
            || batch
                .iter()
                .any(|c| c.object["metadata"].get("deletionTimestamp").is_some())
        {
            self.gc_wakeup.notify_one();
        }
        Ok(())
    }

    /// Gets one object (stored form).
    pub(crate) fn get(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let key = rt.key(namespace, name);
        self.inner
            .read()
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(rt, name))
    }
}

impl WriteCtx {
    fn namespace_for_key(&self) -> String {
        if self.rt.namespaced {
            self.namespace.clone()
        } else {
            String::new()
        }
    }

    /// This write as a server-side apply of the client's version.
    fn applier<'a>(
        &'a self,
        force: bool,
        part: Part,
        resource: &'a str,
        name: &'a str,
    ) -> fields::Applier<'a> {
        fields::Applier {
            manager: &self.manager,
            force,
            part,
            root: self.rt.lists(&self.version),
            resource,
            name,
        }
    }
}

#[cfg(test)]
mod tests;
