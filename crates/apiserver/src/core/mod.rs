//! The object service: every create, update, patch, delete, list and watch goes through
//! `Core`, which owns the in-memory copy of the store, the watch history and the served
//! resource types.
//!
//! Owns: `Inner` (objects, resourceVersion, history, store) under one `RwLock`. Writers
//! take its upgradable read lock (one writer at a time) and hold it across the durable
//! redb commit, so changes are totally ordered by resourceVersion and a reply is only
//! sent after its change is on disk; readers (get, list, watch start) take the shared
//! lock and never wait behind an fsync, only behind the short in-memory apply that
//! follows it (the write lock, taken by upgrading). Lists copy `Arc`s under the lock
//! and clone objects after releasing it.
//! Invariants: resourceVersion only grows (also across restarts); the memory copy equals
//! the store after every commit (on a failed commit neither changes); each change is
//! broadcast to watchers after it is durable, in resourceVersion order; a status write
//! never changes spec and a spec write never changes status; generation moves only when
//! spec (everything but metadata and status) changes.
//! Never: blocks the async runtime outside `tokio::task::block_in_place` (callers wrap
//! writes), or sends a watch event for an uncommitted change.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockUpgradableReadGuard};
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

#[derive(Debug)]
struct Inner {
    store: Store,
    rv: u64,
    floor: u64,
    objects: BTreeMap<String, Arc<Value>>,
    history: VecDeque<Arc<Change>>,
}

/// The object service (see the module doc).
#[derive(Debug)]
pub(crate) struct Core {
    inner: RwLock<Inner>,
    tx: broadcast::Sender<Arc<Change>>,
    registry: RwLock<Arc<Registry>>,
    aliases: Vec<Arc<crate::Alias>>,
    pub(crate) gc_wakeup: Notify,
}

type Pending = Vec<(EventType, String, Value)>;

/// A writer's hold on the state: excludes other writers (and is held across the disk
/// commit) but not readers; `Core::commit` upgrades it briefly to change memory.
type Writer<'a> = RwLockUpgradableReadGuard<'a, Inner>;

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
            inner: RwLock::new(Inner {
                store,
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

    /// Commits `pending` durably, then updates memory and notifies watchers.
    fn commit(
        &self,
        inner: &mut Writer<'_>,
        pending: Pending,
    ) -> Result<Vec<Arc<Change>>, ApiError> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let mut rv = inner.rv;
        let at_ms = time::now_ms();
        let mut changes = Vec::with_capacity(pending.len());
        for (kind, key, mut obj) in pending {
            rv += 1;
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.insert("resourceVersion".into(), json!(rv.to_string()));
            }
            let prev = inner.objects.get(&key).cloned();
            changes.push(Arc::new(Change {
                rv,
                kind,
                key,
                object: Arc::new(obj),
                at_ms,
                prev,
            }));
        }
        let floor = history_floor(
            inner
                .history
                .iter()
                .chain(changes.iter())
                .map(|c| (c.rv, c.at_ms)),
            inner.history.len() + changes.len(),
            inner.floor,
            at_ms,
        );
        // The disk commit (fsync) runs under the upgradable lock only: it keeps other
        // writers out, while reads and watch starts go on against the last committed
        // state. Memory changes afterwards, under the write lock, briefly.
        inner.store.commit(&changes, rv, floor)?;
        let mut crd_changed = false;
        let mut deleted = false;
        inner.with_upgraded(|inner| {
            assert!(rv > inner.rv, "resourceVersion must grow");
            inner.rv = rv;
            inner.floor = floor;
            for c in &changes {
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
        });
        if crd_changed {
            let crds: Vec<Arc<Value>> = inner
                .objects
                .iter()
                .filter(|(k, _)| k.starts_with("apiextensions.k8s.io/customresourcedefinitions/"))
                .map(|(_, v)| v.clone())
                .collect();
            *self.registry.write() = Arc::new(Registry::build(&crds, &self.aliases));
        }
        if deleted
            || changes
                .iter()
                .any(|c| c.object["metadata"].get("deletionTimestamp").is_some())
        {
            self.gc_wakeup.notify_one();
        }
        Ok(changes)
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
}

#[cfg(test)]
mod tests;
