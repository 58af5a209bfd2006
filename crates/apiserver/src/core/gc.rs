//! Garbage collection: terminating namespaces emptied, dependents whose owners are all
//! gone removed, expired events swept, a deleted CRD's objects removed (while the CRD
//! waits on its `customresourcecleanup` finalizer, as kube-apiserver's finalizer
//! controller does; objects of a resource nobody serves any more are removed too); and
//! the CRDs the server is started with.
//! Each pass is bounded by `GC_BATCH_OBJECTS_MAX`; the caller repeats.

use super::*;

impl Core {
    /// One garbage-collection pass: empties terminating namespaces, removes emptied
    /// ones, deletes dependents whose owners are all gone, and expires old events.
    /// Returns whether it changed anything (the caller repeats until it does not).
    pub(crate) fn collect_garbage(&self) -> Result<bool, ApiError> {
        let inner = self.writer();
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
        self.clean_up_crds(&inner, &mut pending);
        self.foreground_deletions(&inner, &mut pending);
        let served: HashSet<String> = self
            .registry()
            .types
            .iter()
            .map(|t| t.key_prefix())
            .collect();
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
            if !served.contains(key_type_prefix(k)) {
                // Its CRD is gone: nobody can reach it, not even to drop a finalizer.
                if !pending.iter().any(|(_, pk, _)| pk == k) {
                    pending.push((EventType::Deleted, k.clone(), (**v).clone()));
                }
                continue;
            }
            let expired = (k.starts_with("core/events/"))
                && event_time(v).is_some_and(|t| now - t > limits::EVENT_TTL.as_secs() as i64);
            if !(in_terminating || orphaned || expired) {
                continue;
            }
            if delete_or_mark(k, v, &mut pending) && k.starts_with("core/persistentvolumeclaims/") {
                touched_quota_ns.insert(ns.to_string());
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
        self.commit(inner, pending)?;
        Ok(changed)
    }

    /// Terminating CRDs holding the cleanup finalizer: their objects are deleted (those
    /// with finalizers only marked, so their controllers still finish them); once none
    /// is left the finalizer goes, and with it the CRD.
    fn clean_up_crds(&self, inner: &Staged, pending: &mut Pending) {
        const PREFIX: &str = "apiextensions.k8s.io/customresourcedefinitions/";
        for (key, crd) in inner
            .objects
            .range(PREFIX.to_string()..)
            .take_while(|(k, _)| k.starts_with(PREFIX))
        {
            let finalizers = crd["metadata"]["finalizers"].as_array();
            let holds = finalizers
                .is_some_and(|f| f.iter().any(|x| x.as_str() == Some(CRD_CLEANUP_FINALIZER)));
            if crd["metadata"].get("deletionTimestamp").is_none() || !holds {
                continue;
            }
            let prefix = format!(
                "{}/{}/",
                crd["spec"]["group"].as_str().unwrap_or(""),
                crd["spec"]["names"]["plural"].as_str().unwrap_or("")
            );
            let mut left = 0usize;
            for (k, v) in inner
                .objects
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
            {
                left += 1;
                if pending.len() >= limits::GC_BATCH_OBJECTS_MAX {
                    break;
                }
                delete_or_mark(k, v, pending);
            }
            if left > 0 {
                continue;
            }
            drop_finalizer(key, crd, CRD_CLEANUP_FINALIZER, pending);
        }
    }

    /// Owners deleted in the foreground: their dependents are deleted (those with
    /// finalizers only marked); once no dependent with `blockOwnerDeletion: true` is
    /// left, the `foregroundDeletion` finalizer goes (and with it the owner, when it
    /// held no other finalizer), as kube-controller-manager's garbage collector does.
    fn foreground_deletions(&self, inner: &Staged, pending: &mut Pending) {
        let owners: Vec<(&String, &Arc<Value>)> = inner
            .objects
            .iter()
            .filter(|(_, v)| {
                v["metadata"].get("deletionTimestamp").is_some()
                    && v["metadata"]["finalizers"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|x| x == FOREGROUND_FINALIZER))
            })
            .collect();
        for (key, owner) in owners {
            let uid = meta_str(owner, "uid").unwrap_or("");
            let mut blocked = false;
            for (k, v) in inner.objects.iter() {
                let Some(r) = v["metadata"]["ownerReferences"]
                    .as_array()
                    .and_then(|refs| refs.iter().find(|r| r["uid"].as_str() == Some(uid)))
                else {
                    continue;
                };
                blocked |= r["blockOwnerDeletion"].as_bool() == Some(true);
                if pending.len() >= limits::GC_BATCH_OBJECTS_MAX
                    || pending.iter().any(|(_, pk, _)| pk == k)
                {
                    continue;
                }
                delete_or_mark(k, v, pending);
            }
            if blocked {
                continue;
            }
            drop_finalizer(key, owner, FOREGROUND_FINALIZER, pending);
        }
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

/// Deletes an object the collector removes, or, when it holds finalizers, marks it
/// deleting (once) so its controllers finish it. Returns whether it was deleted.
fn delete_or_mark(key: &str, v: &Arc<Value>, pending: &mut Pending) -> bool {
    let has_finalizers = v["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if !has_finalizers {
        pending.push((EventType::Deleted, key.to_string(), (**v).clone()));
        return true;
    }
    if v["metadata"].get("deletionTimestamp").is_none() {
        let mut nv = (**v).clone();
        nv["metadata"]["deletionTimestamp"] = json!(time::now_rfc3339());
        nv["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        pending.push((EventType::Modified, key.to_string(), nv));
    }
    false
}

/// Removes `finalizer` from a deleting object; without finalizers left, it goes.
fn drop_finalizer(key: &str, v: &Value, finalizer: &str, pending: &mut Pending) {
    let mut nv = v.clone();
    let kept: Vec<Value> = v["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x.as_str() != Some(finalizer))
        .cloned()
        .collect();
    let kind = if kept.is_empty() {
        EventType::Deleted
    } else {
        EventType::Modified
    };
    nv["metadata"]["finalizers"] = Value::Array(kept);
    pending.push((kind, key.to_string(), nv));
}

pub(super) fn event_time(v: &Value) -> Option<i64> {
    for f in ["lastTimestamp", "eventTime", "firstTimestamp"] {
        if let Some(t) = v[f].as_str().and_then(time::parse_rfc3339) {
            return Some(t);
        }
    }
    meta_str(v, "creationTimestamp").and_then(time::parse_rfc3339)
}

/// The finalizer of an object deleted with `propagationPolicy: Foreground`.
pub(super) const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// The finalizer kube-apiserver puts on every CRD so its objects go before it does.
pub(super) const CRD_CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// `{group}/{plural}/` of a storage key.
fn key_type_prefix(key: &str) -> &str {
    let mut slashes = key.match_indices('/');
    match (slashes.next(), slashes.next()) {
        (Some(_), Some((i, _))) => &key[..=i],
        _ => key,
    }
}

/// A CRD's status. One whose group and plural a built-in already serves is not served
/// (the built-in is), and says so: NamesAccepted and Established are False, as
/// kube-apiserver reports a names conflict.
pub(super) fn crd_status(crd: &Value) -> Value {
    let now = time::now_rfc3339();
    let group = crd["spec"]["group"].as_str().unwrap_or("");
    let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or("");
    if crate::registry::is_builtin(group, plural) {
        let message =
            format!("\"{plural}\" is already in use by the built-in resource {plural}.{group}");
        return json!({
            "acceptedNames": {"kind": "", "plural": ""},
            "conditions": [
                {"type": "NamesAccepted", "status": "False", "reason": "PluralConflict", "message": message, "lastTransitionTime": now},
                {"type": "Established", "status": "False", "reason": "NotAccepted", "message": "not all names are accepted", "lastTransitionTime": now},
            ],
            "storedVersions": [],
        });
    }
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
