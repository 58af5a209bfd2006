//! The object service: every create, update, patch, delete, list and watch goes through
//! `Core`, which owns the in-memory copy of the store, the watch history and the served
//! resource types.
//!
//! Owns: `Inner` (objects, resourceVersion, history, store) under one mutex; writers
//! hold it across the durable redb commit, so changes are totally ordered by
//! resourceVersion and a reply is only sent after its change is on disk.
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

use parking_lot::{Mutex, RwLock};
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
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Change>>,
    registry: RwLock<Arc<Registry>>,
    aliases: Vec<Arc<crate::Alias>>,
    pub(crate) gc_wakeup: Notify,
}

type Pending = Vec<(EventType, String, Value)>;

/// A started watch: replayed changes, the live receiver, and the resourceVersion at
/// which the receiver was subscribed.
pub(crate) type WatchStart = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>, u64);

thread_local! {
    /// Set when an update lost a race (no client precondition), so it is retried.
    static RACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

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

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

/// Everything except metadata and (when separate) status: what generation tracks.
fn spec_part(o: &Value) -> Value {
    let mut c = o.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    c
}

fn random_suffix() -> String {
    // Kubernetes' alphabet for generated names: no vowels (no words), no confusable 0/1/3.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Converts a stored object to the representation of `version` of `rt`.
pub(crate) fn to_external(rt: &ResourceType, version: &str, stored: &Value) -> Value {
    let mut o = stored.clone();
    if rt.special == Special::EventsV1 {
        o = event_core_to_v1(&o);
    }
    if let Some(alias) = &rt.alias {
        match (alias.from_storage)(stored) {
            Ok(mut converted) => {
                converted["metadata"] = carried_metadata(stored, &converted);
                o = converted;
            }
            // Shown in its stored form rather than hidden: nothing is lost, and the
            // log names the object the converter could not handle.
            Err(e) => {
                tracing::warn!(error = %e, key = %rt.qualified(), "conversion from storage failed")
            }
        }
    }
    o["apiVersion"] = json!(rt.api_version(version));
    o["kind"] = json!(rt.kind);
    o
}

fn to_internal(rt: &ResourceType, external: &Value) -> Result<Value, ApiError> {
    let mut o = external.clone();
    if rt.special == Special::EventsV1 {
        o = event_v1_to_core(&o);
        o["apiVersion"] = json!("v1");
        return Ok(o);
    }
    if let Some(alias) = &rt.alias {
        let name = external["metadata"]["name"].as_str().unwrap_or("");
        let mut converted = (alias.to_storage)(external).map_err(|e| {
            invalid(
                rt,
                name,
                vec![cause(
                    "FieldValueInvalid",
                    "",
                    format!("conversion to {} failed: {e}", alias.storage_api_version),
                )],
            )
        })?;
        converted["metadata"] = carried_metadata(external, &converted);
        converted["apiVersion"] = json!(alias.storage_api_version);
        converted["kind"] = json!(alias.storage_kind);
        return Ok(converted);
    }
    o["apiVersion"] = json!(rt.api_version(&rt.versions[0]));
    Ok(o)
}

/// Metadata of a converted object: the source's, except that annotations come from the
/// converter when it returns metadata (converters keep one side's extra settings in an
/// annotation on the other side).
fn carried_metadata(source: &Value, converted: &Value) -> Value {
    let mut meta = source["metadata"].clone();
    if let (Some(conv), Some(m)) = (converted["metadata"].as_object(), meta.as_object_mut()) {
        match conv.get("annotations") {
            Some(a) if a.as_object().is_some_and(|x| !x.is_empty()) => {
                m.insert("annotations".into(), a.clone());
            }
            _ => {
                m.remove("annotations");
            }
        }
    }
    meta
}

const EVENT_RENAMES: [(&str, &str); 7] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename(o: &Value, from_core: bool) -> Value {
    let Value::Object(m) = o else {
        return o.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        let nk = EVENT_RENAMES
            .iter()
            .find(|(c, n)| if from_core { c == k } else { n == k })
            .map_or(k.clone(), |(c, n)| {
                if from_core {
                    n.to_string()
                } else {
                    c.to_string()
                }
            });
        out.insert(nk, v.clone());
    }
    Value::Object(out)
}

fn event_core_to_v1(o: &Value) -> Value {
    rename(o, true)
}

fn event_v1_to_core(o: &Value) -> Value {
    rename(o, false)
}

impl Core {
    /// Opens the store at `path` and serves the built-ins, the CRDs in the store and
    /// `initial_crds` (created when missing).
    pub(crate) fn open(path: &Path, aliases: Vec<Arc<crate::Alias>>) -> Result<Core, ApiError> {
        let (store, loaded) = Store::open(path)?;
        let (tx, _) = broadcast::channel(limits::WATCH_BROADCAST_EVENTS_MAX);
        let core = Core {
            inner: Mutex::new(Inner {
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
            let inner = self.inner.lock();
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

    /// The current global resourceVersion.
    pub(crate) fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }

    /// Commits `pending` durably, then updates memory and notifies watchers.
    fn commit(&self, inner: &mut Inner, pending: Pending) -> Result<Vec<Arc<Change>>, ApiError> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let mut rv = inner.rv;
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
                prev,
            }));
        }
        let retained = inner.history.len() + changes.len();
        let mut floor = inner.floor;
        if retained > limits::WATCH_HISTORY_EVENTS_MAX {
            let drop = retained - limits::WATCH_HISTORY_EVENTS_MAX;
            let all: Vec<u64> = inner
                .history
                .iter()
                .map(|c| c.rv)
                .chain(changes.iter().map(|c| c.rv))
                .collect();
            floor = all[drop - 1];
        }
        inner.store.commit(&changes, rv, floor)?;
        assert!(rv > inner.rv, "resourceVersion must grow");
        inner.rv = rv;
        inner.floor = floor;
        let mut crd_changed = false;
        let mut deleted = false;
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
            .lock()
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(rt, name))
    }

    /// Lists objects (stored form) in key order from after the continue token.
    pub(crate) fn list(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let inner = self.inner.lock();
        let prefix = match &filter.namespace {
            Some(ns) if rt.namespaced => format!("{}{ns}/", rt.key_prefix()),
            _ => rt.key_prefix(),
        };
        let start = match cont {
            Some(tok) => decode_continue(tok)?,
            None => prefix.clone(),
        };
        let limit = limit.map(|l| l.clamp(1, limits::LIST_PAGE_ITEMS_MAX));
        let mut items = Vec::new();
        let mut last_key = None;
        let mut remaining = 0u64;
        let mut more = false;
        for (k, v) in inner
            .objects
            .range(start.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
        {
            if cont.is_some() && *k == start {
                continue;
            }
            if !matches(rt, filter, v) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                remaining += 1;
                continue;
            }
            items.push((**v).clone());
            last_key = Some(k.clone());
        }
        Ok(ListPage {
            items,
            resource_version: inner.rv,
            continue_token: if more {
                last_key.map(|k| encode_continue(&k))
            } else {
                None
            },
            remaining: if more { Some(remaining) } else { None },
        })
    }

    /// Starts a watch: the changes after `from` (or, with None, synthetic ADDED events for
    /// every current object) plus a live receiver subscribed under the same lock, so no
    /// change falls between them.
    pub(crate) fn watch(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        from: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let inner = self.inner.lock();
        let prefix = rt.key_prefix();
        let replay: Vec<Arc<Change>> = match from {
            Some(from) => {
                if from < inner.floor {
                    return Err(ApiError::Gone {
                        requested: from,
                        oldest: inner.floor,
                    });
                }
                inner
                    .history
                    .iter()
                    .filter(|c| c.rv > from && c.key.starts_with(&prefix))
                    .cloned()
                    .collect()
            }
            None => inner
                .objects
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter(|(_, v)| matches(rt, filter, v))
                .map(|(k, v)| {
                    Arc::new(Change {
                        rv: v["metadata"]["resourceVersion"]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                        kind: EventType::Added,
                        key: k.clone(),
                        object: v.clone(),
                        prev: None,
                    })
                })
                .collect(),
        };
        Ok((replay, self.tx.subscribe(), inner.rv))
    }

    fn check_namespace(&self, inner: &Inner, ctx: &WriteCtx, name: &str) -> Result<(), ApiError> {
        if !ctx.rt.namespaced {
            return Ok(());
        }
        let ns_key = format!("core/namespaces//{}", ctx.namespace);
        match inner.objects.get(&ns_key) {
            None => Err(ApiError::NotFound {
                resource: "namespaces".into(),
                name: ctx.namespace.clone(),
            }),
            Some(ns) if ns["metadata"].get("deletionTimestamp").is_some() => Err(ApiError::Forbidden {
                resource: ctx.rt.qualified(),
                name: name.into(),
                message: format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                    ctx.rt.qualified(),
                    ctx.namespace
                ),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Schema pruning and validation; returns warnings for pruned fields.
    fn validate(
        &self,
        ctx: &WriteCtx,
        obj: &mut Value,
        name: &str,
    ) -> Result<Vec<String>, ApiError> {
        let mut causes = Vec::new();
        let mut warnings = Vec::new();
        if let Some(schema) = ctx.rt.schema(&ctx.version) {
            let out = schema::apply(obj, schema);
            if !out.unknown.is_empty() {
                match ctx.validation {
                    FieldValidation::Strict => {
                        let list: Vec<String> = out
                            .unknown
                            .iter()
                            .map(|u| format!("unknown field \"{u}\""))
                            .collect();
                        return Err(ApiError::BadRequest(format!(
                            "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
                            ctx.version,
                            list.join(", "),
                            kind = ctx.rt.kind
                        )));
                    }
                    FieldValidation::Warn => warnings
                        .extend(out.unknown.iter().map(|u| format!("unknown field \"{u}\""))),
                    FieldValidation::Ignore => {}
                }
            }
            causes.extend(out.causes);
        }
        if ctx.rt.special == Special::Crd {
            if let Err(e) = crate::registry::crd_to_type(obj) {
                causes.push(cause("FieldValueInvalid", &e.field, e.message));
            }
        }
        if let Some(labels) = obj["metadata"]["labels"].as_object() {
            for (k, v) in labels {
                if !v.is_string() {
                    causes.push(cause(
                        "FieldValueTypeInvalid",
                        &format!("metadata.labels.{k}"),
                        "Invalid value: must be a string".into(),
                    ));
                }
            }
        }
        if causes.is_empty() {
            Ok(warnings)
        } else {
            Err(invalid(&ctx.rt, name, causes))
        }
    }

    /// Creates an object.
    pub(crate) fn create(&self, ctx: &WriteCtx, obj: Value) -> Result<Written, ApiError> {
        self.create_with(ctx, obj, None)
    }

    /// Creates an object; `apply_managed` carries the managedFields of a server-side
    /// apply that creates it (otherwise the creator owns every field as an Update).
    fn create_with(
        &self,
        ctx: &WriteCtx,
        mut obj: Value,
        apply_managed: Option<Value>,
    ) -> Result<Written, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest(
                "Object 'Kind' is missing in request body".into(),
            ));
        }
        self.check_kind(ctx, &obj)?;
        obj["apiVersion"] = json!(ctx.rt.api_version(&ctx.version));
        obj["kind"] = json!(ctx.rt.kind);
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let body_ns = meta_str(&obj, "namespace").unwrap_or("").to_string();
        if ctx.rt.namespaced {
            if !body_ns.is_empty() && body_ns != ctx.namespace {
                return Err(ApiError::BadRequest("the namespace of the provided object does not match the namespace sent on the request".into()));
            }
            obj["metadata"]["namespace"] = json!(ctx.namespace);
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) if !g.is_empty() => format!("{g}{}", random_suffix()),
            _ => {
                return Err(invalid(
                    &ctx.rt,
                    "",
                    vec![cause(
                        "FieldValueRequired",
                        "metadata.name",
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
        };
        obj["metadata"]["name"] = json!(name);
        self.check_name(ctx, &name)?;
        if ctx.rt.has_status {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        let mut warnings = self.validate(ctx, &mut obj, &name)?;
        let causes = crate::builtin::validate(&ctx.rt, &obj, None);
        if !causes.is_empty() {
            return Err(invalid(&ctx.rt, &name, causes));
        }
        self.prepare_create(ctx, &mut obj, &mut warnings);
        let mut stored = to_internal(&ctx.rt, &obj)?;
        {
            let m = stored["metadata"]
                .as_object_mut()
                .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?;
            m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            m.insert("creationTimestamp".into(), json!(time::now_rfc3339()));
            m.insert("generation".into(), json!(1));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("resourceVersion");
            m.remove("managedFields");
            m.remove("selfLink");
        }
        match apply_managed {
            Some(Value::Array(mut entries)) => {
                for e in &mut entries {
                    e["apiVersion"] = json!(ctx.rt.api_version(&ctx.version));
                }
                stored["metadata"]["managedFields"] = Value::Array(entries);
            }
            _ => fields::track_update(
                None,
                &mut stored,
                &ctx.manager,
                Part::Main { has_status: false },
            ),
        }
        let key = ctx.rt.key(&ctx.namespace_for_key(), &name);
        let mut inner = self.inner.lock();
        self.check_namespace(&inner, ctx, &name)?;
        if inner.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists {
                resource: ctx.rt.qualified(),
                name,
            });
        }
        let mut pending: Pending = Vec::new();
        if ctx.rt.special == Special::Pvc {
            self.charge_quota(&inner, ctx, &stored, &mut pending)?;
        }
        if ctx.dry_run {
            return Ok(Written {
                object: to_external(&ctx.rt, &ctx.version, &stored),
                warnings,
                created: true,
            });
        }
        pending.insert(0, (EventType::Added, key, stored));
        let changes = self.commit(&mut inner, pending)?;
        Ok(Written {
            object: to_external(&ctx.rt, &ctx.version, &changes[0].object),
            warnings,
            created: true,
        })
    }

    fn check_kind(&self, ctx: &WriteCtx, obj: &Value) -> Result<(), ApiError> {
        if let Some(k) = obj["kind"].as_str() {
            if !k.is_empty() && k != ctx.rt.kind {
                return Err(ApiError::BadRequest(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    ctx.rt.kind
                )));
            }
        }
        if let Some(av) = obj["apiVersion"].as_str() {
            let want = ctx.rt.api_version(&ctx.version);
            if !av.is_empty()
                && av != want
                && !ctx.rt.versions.iter().any(|v| ctx.rt.api_version(v) == av)
            {
                return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({av}) does not match the expected API version ({want})"
                )));
            }
        }
        Ok(())
    }

    fn check_name(&self, ctx: &WriteCtx, name: &str) -> Result<(), ApiError> {
        let ok = if ctx.rt.special == Special::Namespace {
            is_dns_label(name)
        } else {
            is_dns_subdomain(name)
        };
        if ok {
            return Ok(());
        }
        let what = if ctx.rt.special == Special::Namespace {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        } else {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        };
        Err(invalid(
            &ctx.rt,
            name,
            vec![cause(
                "FieldValueInvalid",
                "metadata.name",
                format!("Invalid value: \"{name}\": {what}"),
            )],
        ))
    }

    fn prepare_create(&self, ctx: &WriteCtx, obj: &mut Value, warnings: &mut Vec<String>) {
        match ctx.rt.special {
            Special::Namespace => {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
                obj["metadata"]["labels"]["kubernetes.io/metadata.name"] =
                    obj["metadata"]["name"].clone();
            }
            Special::Pvc | Special::Pv => {
                obj["status"] = json!({"phase": "Pending"});
                if obj["spec"].is_object() && obj["spec"]["volumeMode"].is_null() {
                    obj["spec"]["volumeMode"] = json!("Filesystem");
                }
            }
            Special::Crd => {
                obj["status"] = crd_status(obj);
            }
            Special::Workload => warnings.push(format!(
                "{} is stored only: no workload runs on the embedded cstor control plane",
                ctx.rt.kind
            )),
            Special::None
                if ctx.rt.kind == "Secret" && obj["type"].as_str().is_none_or(str::is_empty) =>
            {
                obj["type"] = json!("Opaque");
            }
            Special::EventsV1 if obj["eventTime"].is_null() => {
                obj["eventTime"] = json!(time::now_rfc3339_micro());
            }
            _ => {}
        }
    }

    /// PersistentVolumeClaim admission against the namespace's ResourceQuotas
    /// (`requests.storage`, `persistentvolumeclaims`, and the per-StorageClass forms);
    /// queues the quotas' new `status.used`.
    fn charge_quota(
        &self,
        inner: &Inner,
        ctx: &WriteCtx,
        pvc: &Value,
        pending: &mut Pending,
    ) -> Result<(), ApiError> {
        let prefix = format!("core/resourcequotas/{}/", ctx.namespace);
        let quotas: Vec<(String, Arc<Value>)> = inner
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if quotas.is_empty() {
            return Ok(());
        }
        let name = meta_str(pvc, "name").unwrap_or("").to_string();
        // On a resize the claim's old size is replaced, not added to.
        let mut pvcs: Vec<Value> = self
            .namespace_pvcs(inner, &ctx.namespace)
            .into_iter()
            .filter(|p| meta_str(p, "name") != Some(name.as_str()))
            .collect();
        pvcs.push(pvc.clone());
        for (key, q) in quotas {
            let (used, exceeded) = quota_usage(&q, &pvcs, pvc);
            if !exceeded.is_empty() {
                let qname = meta_str(&q, "name").unwrap_or("");
                let requested: Vec<String> = exceeded
                    .iter()
                    .map(|(r, req, _, _)| format!("{r}={req}"))
                    .collect();
                let used_s: Vec<String> = exceeded
                    .iter()
                    .map(|(r, _, u, _)| format!("{r}={u}"))
                    .collect();
                let limited: Vec<String> = exceeded
                    .iter()
                    .map(|(r, _, _, l)| format!("{r}={l}"))
                    .collect();
                return Err(ApiError::QuotaExceeded {
                    resource: "persistentvolumeclaims".into(),
                    name: name.clone(),
                    message: format!(
                        "persistentvolumeclaims \"{name}\" is forbidden: exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                        requested.join(","),
                        used_s.join(","),
                        limited.join(",")
                    ),
                });
            }
            let mut nq = (*q).clone();
            nq["status"] = json!({"hard": q["spec"]["hard"].clone(), "used": used});
            pending.push((EventType::Modified, key, nq));
        }
        Ok(())
    }

    fn namespace_pvcs(&self, inner: &Inner, ns: &str) -> Vec<Value> {
        let prefix = format!("core/persistentvolumeclaims/{ns}/");
        inner
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| (**v).clone())
            .collect()
    }

    fn refresh_quotas(&self, inner: &Inner, ns: &str, without: &str, pending: &mut Pending) {
        let prefix = format!("core/resourcequotas/{ns}/");
        let pvcs: Vec<Value> = self
            .namespace_pvcs(inner, ns)
            .into_iter()
            .filter(|p| meta_str(p, "name") != Some(without))
            .collect();
        for (k, q) in inner
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
        {
            let (used, _) = quota_usage(q, &pvcs, &Value::Null);
            let mut nq = (**q).clone();
            nq["status"] = json!({"hard": q["spec"]["hard"].clone(), "used": used});
            pending.push((EventType::Modified, k.clone(), nq));
        }
    }

    /// Replaces an object (PUT), or its status with `Part::Status`.
    pub(crate) fn update(
        &self,
        ctx: &WriteCtx,
        name: &str,
        body: Value,
        part: Part,
    ) -> Result<Written, ApiError> {
        self.update_with(ctx, name, part, |_| Ok(body.clone()), false, true)
    }

    /// Patches an object or its status.
    pub(crate) fn patch(
        &self,
        ctx: &WriteCtx,
        name: &str,
        kind: PatchKind,
        patch: Value,
        part: Part,
    ) -> Result<Written, ApiError> {
        if let PatchKind::Apply { force } = kind {
            return self.server_side_apply(ctx, name, patch, part, force);
        }
        if kind == PatchKind::Strategic && ctx.rt.is_crd {
            return Err(ApiError::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
            ));
        }
        self.update_with(
            ctx,
            name,
            part,
            |current| {
                let mut target = current.clone();
                match kind {
                    PatchKind::Json => crate::patch::json(&mut target, &patch),
                    PatchKind::Merge => crate::patch::merge(&mut target, &patch),
                    PatchKind::Strategic => crate::patch::strategic(&mut target, &patch),
                    PatchKind::Apply { .. } => Ok(()),
                }
                .map_err(|e| match e {
                    ApiError::Invalid { causes, .. } => invalid(&ctx.rt, name, causes),
                    other => other,
                })?;
                Ok(target)
            },
            false,
            false,
        )
    }

    fn server_side_apply(
        &self,
        ctx: &WriteCtx,
        name: &str,
        applied: Value,
        part: Part,
        force: bool,
    ) -> Result<Written, ApiError> {
        if !applied.is_object() {
            return Err(ApiError::BadRequest(
                "apply patch must be a JSON object".into(),
            ));
        }
        self.check_kind(ctx, &applied)?;
        if let Some(n) = meta_str(&applied, "name") {
            if n != name {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        let exists = self.get(&ctx.rt, &ctx.namespace_for_key(), name).ok();
        match exists {
            None => {
                if part == Part::Status {
                    return Err(not_found(&ctx.rt, name));
                }
                let mut obj = fields::apply(
                    None,
                    &applied,
                    &ctx.manager,
                    force,
                    part,
                    &ctx.rt.qualified(),
                    name,
                )?;
                let managed = obj["metadata"]["managedFields"].clone();
                obj["metadata"]["name"] = json!(name);
                let mut w = self.create_with(ctx, obj, Some(managed))?;
                w.created = true;
                Ok(w)
            }
            Some(_) => self.update_with(
                ctx,
                name,
                part,
                |current| {
                    let mut merged = fields::apply(
                        Some(current),
                        &applied,
                        &ctx.manager,
                        force,
                        part,
                        &ctx.rt.qualified(),
                        name,
                    )?;
                    merged["metadata"]["resourceVersion"] =
                        current["metadata"]["resourceVersion"].clone();
                    Ok(merged)
                },
                true,
                false,
            ),
        }
    }

    /// The shared update path: `make` builds the new external object from the current
    /// one; preconditions, status/spec separation, generation, managed fields, finalizer
    /// completion and the durable commit happen here.
    fn update_with(
        &self,
        ctx: &WriteCtx,
        name: &str,
        part: Part,
        make: impl Fn(&Value) -> Result<Value, ApiError>,
        managed_by_apply: bool,
        is_put: bool,
    ) -> Result<Written, ApiError> {
        // A write without a resourceVersion precondition that races another writer is
        // rebuilt from the newer object, like kube-apiserver's GuaranteedUpdate.
        let mut attempts = 0;
        loop {
            match self.update_once(ctx, name, part, &make, managed_by_apply, is_put) {
                Err(ApiError::Conflict { .. })
                    if attempts < limits::UPDATE_RETRIES_MAX && self.last_conflict_was_race() =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    fn last_conflict_was_race(&self) -> bool {
        RACE.with(|r| r.replace(false))
    }

    fn update_once(
        &self,
        ctx: &WriteCtx,
        name: &str,
        part: Part,
        make: &impl Fn(&Value) -> Result<Value, ApiError>,
        managed_by_apply: bool,
        is_put: bool,
    ) -> Result<Written, ApiError> {
        let _ = is_put;
        let rt = &ctx.rt;
        let key = rt.key(&ctx.namespace_for_key(), name);
        let current_stored = self
            .inner
            .lock()
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(rt, name))?;
        let current = to_external(rt, &ctx.version, &current_stored);
        let mut body = make(&current)?;
        if !body.is_object() {
            return Err(ApiError::BadRequest("body must be a JSON object".into()));
        }
        self.check_kind(ctx, &body)?;
        if let Some(n) = meta_str(&body, "name") {
            if n != name {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        let precondition = meta_str(&body, "resourceVersion")
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        body["apiVersion"] = json!(rt.api_version(&ctx.version));
        body["kind"] = json!(rt.kind);
        let mut warnings = self.validate(ctx, &mut body, name)?;
        if matches!(rt.special, Special::Workload) {
            warnings.push(format!(
                "{} is stored only: no workload runs on the embedded cstor control plane",
                rt.kind
            ));
        }
        // Assemble the new object from the parts this write may change.
        let mut new = match part {
            Part::Status => {
                let mut n = current.clone();
                n["status"] = body.get("status").cloned().unwrap_or(Value::Null);
                if n["status"].is_null() {
                    if let Some(m) = n.as_object_mut() {
                        m.remove("status");
                    }
                }
                n
            }
            Part::Main { has_status } => {
                let mut n = body.clone();
                if has_status {
                    match current.get("status") {
                        Some(s) => n["status"] = s.clone(),
                        None => {
                            if let Some(m) = n.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                if !n["metadata"].is_object() {
                    n["metadata"] = json!({});
                }
                for f in [
                    "uid",
                    "creationTimestamp",
                    "namespace",
                    "name",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    match current["metadata"].get(f) {
                        Some(v) => n["metadata"][f] = v.clone(),
                        None => {
                            if let Some(m) = n["metadata"].as_object_mut() {
                                m.remove(f);
                            }
                        }
                    }
                }
                if !managed_by_apply {
                    n["metadata"]["managedFields"] = current["metadata"]["managedFields"].clone();
                }
                n
            }
        };
        if part != Part::Status {
            let causes = crate::builtin::validate(rt, &new, Some(&current));
            if !causes.is_empty() {
                return Err(invalid(rt, name, causes));
            }
        }
        if rt.special == Special::Crd && part != Part::Status {
            new["status"] = crd_status(&new);
        }
        if spec_part(&new) != spec_part(&current) && part != Part::Status {
            let g = current["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        let mut new_stored = to_internal(rt, &new)?;
        if !managed_by_apply {
            let old_stored_ext = to_internal(rt, &current)?;
            fields::track_update(Some(&old_stored_ext), &mut new_stored, &ctx.manager, part);
        }
        if new_stored["metadata"]["managedFields"].is_null() {
            if let Some(m) = new_stored["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
        }
        let mut inner = self.inner.lock();
        let live = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(rt, name))?;
        let live_rv = meta_str(&live, "resourceVersion").unwrap_or("").to_string();
        match &precondition {
            Some(p) if *p != live_rv => return Err(conflict(rt, name)),
            // The object moved between building and committing: the caller retries.
            None if !Arc::ptr_eq(&live, &current_stored) => {
                RACE.with(|r| r.set(true));
                return Err(conflict(rt, name));
            }
            _ => {}
        }
        new_stored["metadata"]["resourceVersion"] = json!(live_rv);
        let finishing = new_stored["metadata"].get("deletionTimestamp").is_some()
            && new_stored["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
        let mut quota_pending: Pending = Vec::new();
        let grows = matches!(
            (crate::builtin::pvc_request(&new_stored), crate::builtin::pvc_request(&live)),
            (Some(n), Some(o)) if n > o
        );
        if rt.special == Special::Pvc && part != Part::Status && grows {
            let sc = new_stored["spec"]["storageClassName"]
                .as_str()
                .unwrap_or("");
            let expandable = inner
                .objects
                .get(&format!("storage.k8s.io/storageclasses//{sc}"))
                .is_some_and(|sc| sc["allowVolumeExpansion"].as_bool() == Some(true));
            if !expandable {
                return Err(ApiError::Forbidden {
                    resource: rt.qualified(),
                    name: name.into(),
                    message: format!("persistentvolumeclaims \"{name}\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"),
                });
            }
            self.charge_quota(&inner, ctx, &new_stored, &mut quota_pending)?;
        }
        if *live == new_stored && !finishing {
            return Ok(Written {
                object: to_external(rt, &ctx.version, &live),
                warnings,
                created: false,
            });
        }
        if ctx.dry_run {
            return Ok(Written {
                object: to_external(rt, &ctx.version, &new_stored),
                warnings,
                created: false,
            });
        }
        let kind = if finishing {
            EventType::Deleted
        } else {
            EventType::Modified
        };
        let mut pending = vec![(kind, key, new_stored)];
        pending.extend(quota_pending);
        if finishing && rt.special == Special::Pvc {
            self.refresh_quotas(&inner, &ctx.namespace, name, &mut pending);
        }
        let changes = self.commit(&mut inner, pending)?;
        Ok(Written {
            object: to_external(rt, &ctx.version, &changes[0].object),
            warnings,
            created: false,
        })
    }

    /// Deletes an object: with finalizers it only gets a deletionTimestamp; namespaces are
    /// emptied by the garbage collector before they go.
    pub(crate) fn delete(
        &self,
        ctx: &WriteCtx,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let rt = &ctx.rt;
        let key = rt.key(&ctx.namespace_for_key(), name);
        let mut inner = self.inner.lock();
        let current = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(rt, name))?;
        if let Some(p) = &opts.precondition_rv {
            if meta_str(&current, "resourceVersion") != Some(p.as_str()) {
                return Err(conflict(rt, name));
            }
        }
        if let Some(p) = &opts.precondition_uid {
            if meta_str(&current, "uid") != Some(p.as_str()) {
                return Err(ApiError::Conflict {
                    resource: rt.qualified(),
                    name: name.into(),
                    message: format!(
                        "Precondition failed: UID in precondition: {p}, UID in object meta: {}",
                        meta_str(&current, "uid").unwrap_or("")
                    ),
                    causes: Vec::new(),
                });
            }
        }
        if ctx.dry_run {
            return Ok(to_external(rt, &ctx.version, &current));
        }
        let mut pending: Pending = Vec::new();
        if opts.orphan {
            let uid = meta_str(&current, "uid").unwrap_or("").to_string();
            for (k, v) in inner.objects.iter() {
                if let Some(refs) = v["metadata"]["ownerReferences"].as_array() {
                    if refs.iter().any(|r| r["uid"].as_str() == Some(uid.as_str())) {
                        let mut nv = (**v).clone();
                        let kept: Vec<Value> = refs
                            .iter()
                            .filter(|r| r["uid"].as_str() != Some(uid.as_str()))
                            .cloned()
                            .collect();
                        nv["metadata"]["ownerReferences"] = Value::Array(kept);
                        pending.push((EventType::Modified, k.clone(), nv));
                    }
                }
            }
        }
        let has_finalizers = current["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let terminating_ns = rt.special == Special::Namespace;
        if has_finalizers || terminating_ns {
            if current["metadata"].get("deletionTimestamp").is_some() && pending.is_empty() {
                return Ok(to_external(rt, &ctx.version, &current));
            }
            let mut nv = (*current).clone();
            if nv["metadata"].get("deletionTimestamp").is_none() {
                nv["metadata"]["deletionTimestamp"] = json!(time::now_rfc3339());
                nv["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            if terminating_ns {
                nv["status"]["phase"] = json!("Terminating");
            }
            pending.insert(0, (EventType::Modified, key, nv));
            let changes = self.commit(&mut inner, pending)?;
            self.gc_wakeup.notify_one();
            return Ok(to_external(rt, &ctx.version, &changes[0].object));
        }
        pending.insert(0, (EventType::Deleted, key, (*current).clone()));
        if rt.special == Special::Pvc {
            self.refresh_quotas(&inner, &ctx.namespace, name, &mut pending);
        }
        let changes = self.commit(&mut inner, pending)?;
        Ok(to_external(rt, &ctx.version, &changes[0].object))
    }

    /// One garbage-collection pass: empties terminating namespaces, removes emptied
    /// ones, deletes dependents whose owners are all gone, and expires old events.
    /// Returns whether it changed anything (the caller repeats until it does not).
    pub(crate) fn collect_garbage(&self) -> Result<bool, ApiError> {
        let mut inner = self.inner.lock();
        let now = time::now_secs();
        let uids: HashSet<String> = inner
            .objects
            .values()
            .filter_map(|v| meta_str(v, "uid").map(str::to_string))
            .collect();
        let terminating: BTreeSet<String> = inner
            .objects
            .range("core/namespaces/".to_string()..)
            .take_while(|(k, _)| k.starts_with("core/namespaces/"))
            .filter(|(_, v)| v["metadata"].get("deletionTimestamp").is_some())
            .filter_map(|(_, v)| meta_str(v, "name").map(str::to_string))
            .collect();
        let mut pending: Pending = Vec::new();
        let mut nonempty: BTreeSet<String> = BTreeSet::new();
        let mut touched_quota_ns: BTreeSet<String> = BTreeSet::new();
        for (k, v) in inner.objects.iter() {
            if pending.len() >= limits::GC_BATCH_OBJECTS_MAX {
                break;
            }
            let ns = meta_str(v, "namespace").unwrap_or("");
            let in_terminating =
                !ns.is_empty() && terminating.contains(ns) && !k.starts_with("core/namespaces/");
            if in_terminating {
                nonempty.insert(ns.to_string());
            }
            let orphaned = v["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| {
                    !refs.is_empty()
                        && refs
                            .iter()
                            .all(|r| !r["uid"].as_str().is_some_and(|u| uids.contains(u)))
                });
            let expired = (k.starts_with("core/events/"))
                && event_time(v).is_some_and(|t| now - t > limits::EVENT_TTL.as_secs() as i64);
            if !(in_terminating || orphaned || expired) {
                continue;
            }
            let finalizers = v["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            if finalizers {
                if v["metadata"].get("deletionTimestamp").is_none() {
                    let mut nv = (**v).clone();
                    nv["metadata"]["deletionTimestamp"] = json!(time::now_rfc3339());
                    nv["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    pending.push((EventType::Modified, k.clone(), nv));
                }
            } else {
                if k.starts_with("core/persistentvolumeclaims/") {
                    touched_quota_ns.insert(ns.to_string());
                }
                pending.push((EventType::Deleted, k.clone(), (**v).clone()));
            }
        }
        for ns in &terminating {
            let key = format!("core/namespaces//{ns}");
            if nonempty.contains(ns) {
                continue;
            }
            if let Some(v) = inner.objects.get(&key) {
                if v["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(|f| f.is_empty())
                {
                    pending.push((EventType::Deleted, key, (**v).clone()));
                }
            }
        }
        for ns in touched_quota_ns {
            let gone: BTreeSet<String> = pending
                .iter()
                .filter(|(t, k, _)| {
                    *t == EventType::Deleted
                        && k.starts_with(&format!("core/persistentvolumeclaims/{ns}/"))
                })
                .map(|(_, k, _)| k.clone())
                .collect();
            let prefix = format!("core/resourcequotas/{ns}/");
            let pvcs: Vec<Value> = self
                .namespace_pvcs(&inner, &ns)
                .into_iter()
                .filter(|p| {
                    !gone.contains(&format!(
                        "core/persistentvolumeclaims/{ns}/{}",
                        meta_str(p, "name").unwrap_or("")
                    ))
                })
                .collect();
            let quotas: Vec<(String, Arc<Value>)> = inner
                .objects
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, q) in quotas {
                if pending.iter().any(|(_, pk, _)| *pk == k) {
                    continue;
                }
                let (used, _) = quota_usage(&q, &pvcs, &Value::Null);
                let mut nq = (*q).clone();
                nq["status"] = json!({"hard": q["spec"]["hard"].clone(), "used": used});
                pending.push((EventType::Modified, k, nq));
            }
        }
        let changed = !pending.is_empty();
        self.commit(&mut inner, pending)?;
        Ok(changed)
    }

    /// Creates the given CRDs when missing (or updates them when their spec differs),
    /// as the server's own writes.
    pub(crate) fn ensure_crds(&self, crds: &[Value]) -> Result<(), ApiError> {
        let reg = self.registry();
        let Some(rt) = reg.find("apiextensions.k8s.io", "v1", "customresourcedefinitions") else {
            return Ok(());
        };
        let ctx = WriteCtx {
            rt,
            version: "v1".into(),
            namespace: String::new(),
            manager: "cstor-apiserver".into(),
            dry_run: false,
            validation: FieldValidation::Ignore,
        };
        for crd in crds {
            let name = meta_str(crd, "name").unwrap_or("").to_string();
            match self.get(&ctx.rt, "", &name) {
                Err(_) => {
                    self.create(&ctx, crd.clone())?;
                }
                Ok(cur) if cur["spec"] != crd["spec"] => {
                    let mut body = (*cur).clone();
                    body["spec"] = crd["spec"].clone();
                    self.update(&ctx, &name, body, Part::Main { has_status: true })?;
                }
                Ok(_) => {}
            }
        }
        Ok(())
    }
}

fn event_time(v: &Value) -> Option<i64> {
    for f in ["lastTimestamp", "eventTime", "firstTimestamp"] {
        if let Some(t) = v[f].as_str().and_then(time::parse_rfc3339) {
            return Some(t);
        }
    }
    meta_str(v, "creationTimestamp").and_then(time::parse_rfc3339)
}

fn crd_status(crd: &Value) -> Value {
    let now = time::now_rfc3339();
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|v| v["storage"].as_bool() == Some(true))
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    json!({
        "acceptedNames": crd["spec"]["names"].clone(),
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": storage,
    })
}

/// Usage of a quota over `pvcs` (which include `new` when it is being admitted) and the
/// resources `new` pushes over their limit: (resource, requested, used, limit).
fn quota_usage(
    q: &Value,
    pvcs: &[Value],
    new: &Value,
) -> (Value, Vec<(String, String, String, String)>) {
    let mut used = Map::new();
    let mut exceeded = Vec::new();
    let Some(hard) = q["spec"]["hard"].as_object() else {
        return (Value::Object(used), exceeded);
    };
    let req = |p: &Value| {
        p["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .and_then(quantity::parse_milli)
            .unwrap_or(0)
    };
    let class = |p: &Value| {
        p["spec"]["storageClassName"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    for (res, limit) in hard {
        let Some(limit_m) = limit
            .as_str()
            .map(str::to_string)
            .or_else(|| limit.as_i64().map(|i| i.to_string()))
            .and_then(|s| quantity::parse_milli(&s))
        else {
            continue;
        };
        let (sc, base) = match res.split_once(".storageclass.storage.k8s.io/") {
            Some((sc, base)) => (Some(sc.to_string()), base),
            None => (None, res.as_str()),
        };
        let relevant = |p: &Value| sc.as_ref().is_none_or(|s| *s == class(p));
        let (total, this): (i128, i128) = match base {
            "requests.storage" => (
                pvcs.iter().filter(|p| relevant(p)).map(req).sum(),
                if relevant(new) { req(new) } else { 0 },
            ),
            "persistentvolumeclaims" => (
                pvcs.iter().filter(|p| relevant(p)).count() as i128 * 1000,
                if relevant(new) && !new.is_null() {
                    1000
                } else {
                    0
                },
            ),
            _ => continue,
        };
        used.insert(res.clone(), json!(quantity::format_milli(total)));
        if this > 0 && total > limit_m {
            exceeded.push((
                res.clone(),
                quantity::format_milli(this),
                quantity::format_milli(total - this),
                quantity::format_milli(limit_m),
            ));
        }
    }
    (Value::Object(used), exceeded)
}

fn matches(rt: &ResourceType, filter: &Filter, stored: &Value) -> bool {
    if let Some(ns) = &filter.namespace {
        if rt.namespaced && meta_str(stored, "namespace") != Some(ns.as_str()) {
            return false;
        }
    }
    if !filter.labels.matches(stored) {
        return false;
    }
    if rt.special == Special::EventsV1 {
        filter.fields.matches(&event_core_to_v1(stored))
    } else {
        filter.fields.matches(stored)
    }
}

/// How a change shows in a watch with this filter: an object entering the selection is
/// ADDED, one leaving it is DELETED (like kube-apiserver's watch cache); None when the
/// watch does not see it.
pub(crate) fn watch_event(
    rt: &ResourceType,
    filter: &Filter,
    change: &Change,
) -> Option<EventType> {
    if !change.key.starts_with(&rt.key_prefix()) {
        return None;
    }
    let now = matches(rt, filter, &change.object);
    let before = change.prev.as_ref().map(|p| matches(rt, filter, p));
    match (change.kind, before, now) {
        (EventType::Modified, Some(false), true) => Some(EventType::Added),
        (EventType::Modified, Some(true), false) => Some(EventType::Deleted),
        (_, _, true) => Some(change.kind),
        _ => None,
    }
}

fn encode_continue(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(tok: &str) -> Result<String, ApiError> {
    let bad = || ApiError::BadRequest("continue key is not valid".into());
    if !tok.len().is_multiple_of(2) || !tok.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> = (0..tok.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&tok[i..i + 2], 16))
        .collect();
    String::from_utf8(bytes.map_err(|_| bad())?).map_err(|_| bad())
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
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir) -> Core {
        Core::open(&dir.path().join("s.redb"), Vec::new()).unwrap()
    }

    fn ctx(core: &Core, group: &str, plural: &str, ns: &str) -> WriteCtx {
        WriteCtx {
            rt: core.registry().find(group, "v1", plural).unwrap(),
            version: "v1".into(),
            namespace: ns.into(),
            manager: "test".into(),
            dry_run: false,
            validation: FieldValidation::Strict,
        }
    }

    fn make_ns(core: &Core, name: &str) {
        core.create(
            &ctx(core, "", "namespaces", ""),
            json!({"metadata": {"name": name}}),
        )
        .unwrap();
    }

    #[test]
    fn watch_from_trimmed_history_is_gone_and_the_floor_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let floor;
        {
            let core = open(&dir);
            make_ns(&core, "a");
            let c = ctx(&core, "", "configmaps", "a");
            core.create(&c, json!({"metadata": {"name": "cm"}, "data": {"n": "0"}}))
                .unwrap();
            let start = core.resource_version();
            for i in 0..40 {
                core.patch(
                    &c,
                    "cm",
                    PatchKind::Merge,
                    json!({"data": {"n": i.to_string()}}),
                    Part::Main { has_status: false },
                )
                .unwrap();
            }
            let rt = c.rt.clone();
            assert!(matches!(
                core.watch(&rt, &Filter::default(), Some(start)),
                Err(ApiError::Gone { .. })
            ));
            let recent = core.resource_version() - 5;
            let (replay, _rx, _) = core.watch(&rt, &Filter::default(), Some(recent)).unwrap();
            assert_eq!(replay.len(), 5);
            floor = core.inner.lock().floor;
            assert!(floor > start);
            assert!(core.inner.lock().history.len() <= limits::WATCH_HISTORY_EVENTS_MAX);
        }
        let core = open(&dir);
        assert_eq!(core.inner.lock().floor, floor);
        let rt = core.registry().find("", "v1", "configmaps").unwrap();
        assert!(matches!(
            core.watch(&rt, &Filter::default(), Some(floor - 1)),
            Err(ApiError::Gone { .. })
        ));
        let (replay, _rx, _) = core.watch(&rt, &Filter::default(), Some(floor)).unwrap();
        assert_eq!(replay.first().map(|c| c.rv), Some(floor + 1));
    }

    #[test]
    fn dependents_go_when_their_owner_goes_unless_orphaned() {
        let dir = tempfile::tempdir().unwrap();
        let core = open(&dir);
        make_ns(&core, "a");
        let c = ctx(&core, "", "configmaps", "a");
        let owner = core
            .create(&c, json!({"metadata": {"name": "owner"}}))
            .unwrap()
            .object;
        let uid = owner["metadata"]["uid"].as_str().unwrap().to_string();
        let dep = json!({"metadata": {"name": "dep", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}});
        core.create(&c, dep.clone()).unwrap();
        core.delete(&c, "owner", &DeleteOpts::default()).unwrap();
        while core.collect_garbage().unwrap() {}
        assert!(core.get(&c.rt, "a", "dep").is_err(), "dependent collected");
        let owner = core
            .create(&c, json!({"metadata": {"name": "owner"}}))
            .unwrap()
            .object;
        let mut dep = dep;
        dep["metadata"]["ownerReferences"][0]["uid"] = owner["metadata"]["uid"].clone();
        core.create(&c, dep).unwrap();
        core.delete(
            &c,
            "owner",
            &DeleteOpts {
                orphan: true,
                ..Default::default()
            },
        )
        .unwrap();
        while core.collect_garbage().unwrap() {}
        let kept = core.get(&c.rt, "a", "dep").unwrap();
        assert_eq!(kept["metadata"]["ownerReferences"], json!([]));
    }

    #[test]
    fn selector_watch_sees_objects_enter_and_leave() {
        let dir = tempfile::tempdir().unwrap();
        let core = open(&dir);
        make_ns(&core, "a");
        let c = ctx(&core, "", "configmaps", "a");
        core.create(
            &c,
            json!({"metadata": {"name": "cm", "labels": {"tier": "gold"}}}),
        )
        .unwrap();
        let f = Filter {
            labels: LabelSelector::parse("tier=gold").unwrap(),
            ..Default::default()
        };
        let (_, mut rx, _) = core
            .watch(&c.rt, &f, Some(core.resource_version()))
            .unwrap();
        let main = Part::Main { has_status: false };
        core.patch(
            &c,
            "cm",
            PatchKind::Merge,
            json!({"metadata": {"labels": {"tier": "silver"}}}),
            main,
        )
        .unwrap();
        core.patch(
            &c,
            "cm",
            PatchKind::Merge,
            json!({"data": {"x": "1"}}),
            main,
        )
        .unwrap();
        core.patch(
            &c,
            "cm",
            PatchKind::Merge,
            json!({"metadata": {"labels": {"tier": "gold"}}}),
            main,
        )
        .unwrap();
        let kinds: Vec<Option<EventType>> = (0..3)
            .map(|_| watch_event(&c.rt, &f, &rx.try_recv().unwrap()))
            .collect();
        assert_eq!(
            kinds,
            [Some(EventType::Deleted), None, Some(EventType::Added)]
        );
    }

    fn crd(group: &str, version: &str) -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": format!("cstorpoolclusters.{group}")},
               "spec": {"group": group, "scope": "Namespaced",
                        "names": {"kind": "CStorPoolCluster", "plural": "cstorpoolclusters", "shortNames": ["cspc"]},
                        "versions": [{"name": version, "served": true, "storage": true,
                                      "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})
    }

    #[test]
    fn alias_resources_convert_to_and_from_their_storage() {
        let dir = tempfile::tempdir().unwrap();
        // Toy conversion: alpha raidGroups[0].type <-> v1 poolConfig.dataRaidGroupType.
        let to: crate::ConvertFn = Arc::new(|o: &Value| {
            let t = o["spec"]["raidGroups"][0]["type"]
                .as_str()
                .ok_or("raidGroups[0].type is required")?;
            Ok(json!({"spec": {"poolConfig": {"dataRaidGroupType": t}}}))
        });
        let from: crate::ConvertFn = Arc::new(|o: &Value| {
            let t = o["spec"]["poolConfig"]["dataRaidGroupType"].clone();
            Ok(
                json!({"metadata": {"annotations": {"converted": "yes"}}, "spec": {"raidGroups": [{"type": t}]}}),
            )
        });
        let alias = Arc::new(crate::Alias {
            group: "openebs.io".into(),
            plural: "cstorpoolclusters".into(),
            storage_group: "cstor.openebs.io".into(),
            storage_plural: "cstorpoolclusters".into(),
            storage_api_version: "cstor.openebs.io/v1".into(),
            storage_kind: "CStorPoolCluster".into(),
            to_storage: to,
            from_storage: from,
        });
        let core = Core::open(&dir.path().join("s.redb"), vec![alias]).unwrap();
        core.ensure_crds(&[crd("cstor.openebs.io", "v1"), crd("openebs.io", "v1alpha1")])
            .unwrap();
        make_ns(&core, "openebs");
        let alpha = WriteCtx {
            rt: core
                .registry()
                .find("openebs.io", "v1alpha1", "cstorpoolclusters")
                .unwrap(),
            version: "v1alpha1".into(),
            ..ctx(&core, "cstor.openebs.io", "cstorpoolclusters", "openebs")
        };
        let v1 = ctx(&core, "cstor.openebs.io", "cstorpoolclusters", "openebs");
        let w = core
            .create(
                &alpha,
                json!({"metadata": {"name": "p"}, "spec": {"raidGroups": [{"type": "mirror"}]}}),
            )
            .unwrap();
        assert_eq!(w.object["apiVersion"], "openebs.io/v1alpha1");
        let stored = core.get(&v1.rt, "openebs", "p").unwrap();
        assert_eq!(stored["apiVersion"], "cstor.openebs.io/v1");
        assert_eq!(stored["spec"]["poolConfig"]["dataRaidGroupType"], "mirror");
        core.patch(
            &v1,
            "p",
            PatchKind::Merge,
            json!({"spec": {"poolConfig": {"dataRaidGroupType": "raidz"}}}),
            Part::Main { has_status: false },
        )
        .unwrap();
        let seen = to_external(
            &alpha.rt,
            "v1alpha1",
            &core.get(&alpha.rt, "openebs", "p").unwrap(),
        );
        assert_eq!(seen["spec"]["raidGroups"][0]["type"], "raidz");
        assert_eq!(seen["metadata"]["name"], "p");
        assert_eq!(seen["metadata"]["annotations"]["converted"], "yes");
        assert_eq!(seen["metadata"]["uid"], stored["metadata"]["uid"]);
        let err = core
            .create(&alpha, json!({"metadata": {"name": "q"}, "spec": {}}))
            .unwrap_err();
        assert_eq!(err.code(), 422);
    }

    #[test]
    fn bad_continue_tokens_are_bad_requests() {
        assert!(decode_continue("zz").is_err());
        assert!(decode_continue("éé").is_err());
        assert!(decode_continue("abc").is_err());
        assert_eq!(
            decode_continue(&encode_continue("core/x//y")).unwrap(),
            "core/x//y"
        );
    }

    #[test]
    fn events_expire_after_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let core = open(&dir);
        make_ns(&core, "a");
        let c = ctx(&core, "", "events", "a");
        let old = time::format_rfc3339(time::now_secs() - limits::EVENT_TTL.as_secs() as i64 - 60);
        core.create(&c, json!({"metadata": {"name": "old"}, "lastTimestamp": old, "involvedObject": {"kind": "Pod", "name": "p"}})).unwrap();
        core.create(&c, json!({"metadata": {"name": "new"}, "lastTimestamp": time::now_rfc3339(), "involvedObject": {"kind": "Pod", "name": "p"}})).unwrap();
        while core.collect_garbage().unwrap() {}
        assert!(core.get(&c.rt, "a", "old").is_err());
        assert!(core.get(&c.rt, "a", "new").is_ok());
        // The events.k8s.io/v1 view reads the same storage.
        let v1 = ctx(&core, "events.k8s.io", "events", "a");
        let stored = core.get(&v1.rt, "a", "new").unwrap();
        assert_eq!(to_external(&v1.rt, "v1", &stored)["regarding"]["name"], "p");
    }

    #[test]
    fn generate_name_missing_namespace_and_quota() {
        let dir = tempfile::tempdir().unwrap();
        let core = open(&dir);
        let c = ctx(&core, "", "configmaps", "nowhere");
        let err = core
            .create(&c, json!({"metadata": {"name": "x"}}))
            .unwrap_err();
        assert_eq!(err.code(), 404);
        assert!(err.to_string().contains("namespaces \"nowhere\" not found"));
        make_ns(&core, "a");
        let c = ctx(&core, "", "configmaps", "a");
        let w = core
            .create(&c, json!({"metadata": {"generateName": "cm-"}}))
            .unwrap();
        let name = w.object["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("cm-") && name.len() == 8, "{name}");
        let err = core
            .create(&c, json!({"metadata": {"name": "Bad_Name"}}))
            .unwrap_err();
        assert_eq!(err.code(), 422);
        let q = ctx(&core, "", "resourcequotas", "a");
        core.create(&q, json!({"metadata": {"name": "q"}, "spec": {"hard": {"requests.storage": "10Gi", "persistentvolumeclaims": "2"}}})).unwrap();
        let p = ctx(&core, "", "persistentvolumeclaims", "a");
        let pvc = |n: &str, size: &str| json!({"metadata": {"name": n}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}});
        core.create(&p, pvc("p1", "6Gi")).unwrap();
        let err = core.create(&p, pvc("p2", "5Gi")).unwrap_err();
        assert_eq!(err.code(), 403);
        assert!(err.to_string().contains("exceeded quota: q, requested: requests.storage=5Gi, used: requests.storage=6Gi, limited: requests.storage=10Gi"), "{err}");
        core.create(&p, pvc("p2", "4Gi")).unwrap();
        let err = core.create(&p, pvc("p3", "1Mi")).unwrap_err();
        assert!(
            err.to_string().contains("persistentvolumeclaims=1"),
            "{err}"
        );
        let sc = ctx(&core, "storage.k8s.io", "storageclasses", "");
        core.create(
            &sc,
            json!({"metadata": {"name": "sc"}, "provisioner": "x", "allowVolumeExpansion": true}),
        )
        .unwrap();
        let grow = |size: &str| json!({"spec": {"storageClassName": "sc", "resources": {"requests": {"storage": size}}}});
        let main = Part::Main { has_status: true };
        let err = core
            .patch(&p, "p2", PatchKind::Merge, grow("5Gi"), main)
            .unwrap_err();
        assert_eq!(err.code(), 422, "storageClassName is immutable: {err}");
        let p4 = json!({"metadata": {"name": "p4"}, "spec": {"storageClassName": "sc", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "0"}}}});
        assert_eq!(core.create(&p, p4).unwrap_err().code(), 422);
        core.delete(&p, "p2", &DeleteOpts::default()).unwrap();
        let p5 = json!({"metadata": {"name": "p5"}, "spec": {"storageClassName": "sc", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        core.create(&p, p5).unwrap();
        core.patch(
            &p,
            "p5",
            PatchKind::Merge,
            json!({"spec": {"resources": {"requests": {"storage": "4Gi"}}}}),
            main,
        )
        .unwrap();
        let err = core
            .patch(
                &p,
                "p5",
                PatchKind::Merge,
                json!({"spec": {"resources": {"requests": {"storage": "5Gi"}}}}),
                main,
            )
            .unwrap_err();
        assert_eq!(err.code(), 403, "6Gi + 5Gi exceeds 10Gi: {err}");
        core.delete(&p, "p5", &DeleteOpts::default()).unwrap();
        core.create(&p, pvc("p2", "4Gi")).unwrap();
        core.delete(&p, "p1", &DeleteOpts::default()).unwrap();
        let quota = core.get(&q.rt, "a", "q").unwrap();
        assert_eq!(quota["status"]["used"]["requests.storage"], "4Gi");
        assert_eq!(quota["status"]["used"]["persistentvolumeclaims"], "1");
    }
}
