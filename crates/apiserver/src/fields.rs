//! Field ownership (`metadata.managedFields`, FieldsV1) and server-side apply.
//!
//! A field set is a set of leaf paths; each path element is `f:<field>`, `k:<json key>`
//! (an element of a keyed list), `v:<json value>` (an element of a set list) or `.` (the
//! keyed element itself). Lists are atomic unless `patch::list_strategy` says otherwise.
//! Invariants: after every write each leaf is owned by the manager that last set it
//! (shared when applies agree on its value); an apply removes exactly the fields its
//! manager applied before, no longer applies, and nobody else owns. Never: owns identity
//! metadata (name, namespace, uid, resourceVersion, generation, timestamps).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::error::{ApiError, FieldCause};
use crate::limits::{MANAGERS_PER_OBJECT_MAX, OBJECT_DEPTH_MAX};
use crate::patch::{list_strategy, ListStrategy};

type Leaf = Vec<String>;
type FieldSet = BTreeSet<Leaf>;

/// Which part of the object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// Everything but status (when the type has a status subresource).
    Main { has_status: bool },
    /// Only status.
    Status,
}

impl Part {
    fn subresource(self) -> &'static str {
        match self {
            Part::Main { .. } => "",
            Part::Status => "status",
        }
    }
    fn includes(self, top: &str) -> bool {
        match self {
            Part::Main { has_status } => !(has_status && top == "status"),
            Part::Status => top == "status",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: String,
    set: FieldSet,
}

fn leaves(v: &Value, part: Part) -> FieldSet {
    let mut out = FieldSet::new();
    let Value::Object(m) = v else { return out };
    for (k, val) in m {
        if k == "apiVersion" || k == "kind" || !part.includes(k) {
            continue;
        }
        if k == "metadata" {
            for mk in ["labels", "annotations", "finalizers", "ownerReferences"] {
                if let Some(x) = val.get(mk) {
                    walk(
                        x,
                        vec!["f:metadata".into(), format!("f:{mk}")],
                        "metadata",
                        mk,
                        &mut out,
                        2,
                    );
                }
            }
            continue;
        }
        walk(val, vec![format!("f:{k}")], "", k, &mut out, 1);
    }
    out
}

fn walk(v: &Value, path: Leaf, parent: &str, name: &str, out: &mut FieldSet, depth: usize) {
    if depth > OBJECT_DEPTH_MAX {
        out.insert(path);
        return;
    }
    let here = if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let mut p = path.clone();
                p.push(format!("f:{k}"));
                walk(x, p, &here, k, out, depth + 1);
            }
        }
        Value::Array(items) => match list_strategy(parent, name) {
            ListStrategy::Atomic => {
                out.insert(path);
            }
            ListStrategy::Set => {
                for i in items {
                    let mut p = path.clone();
                    p.push(format!("v:{i}"));
                    out.insert(p);
                }
                if items.is_empty() {
                    out.insert(path);
                }
            }
            ListStrategy::Keyed(key) => {
                for i in items {
                    let Some(kv) = i.get(key) else { continue };
                    let mut p = path.clone();
                    p.push(format!("k:{}", json!({ key: kv })));
                    let mut dot = p.clone();
                    dot.push(".".into());
                    out.insert(dot);
                    if let Value::Object(m) = i {
                        for (k, x) in m {
                            let mut q = p.clone();
                            q.push(format!("f:{k}"));
                            walk(x, q, &here, k, out, depth + 1);
                        }
                    }
                }
                if items.is_empty() {
                    out.insert(path);
                }
            }
        },
        _ => {
            out.insert(path);
        }
    }
}

/// The value a leaf path points at, if present.
fn get<'a>(v: &'a Value, leaf: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for el in leaf {
        cur = step(cur, el)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, el: &str) -> Option<&'a Value> {
    if el == "." {
        return Some(cur);
    }
    if let Some(f) = el.strip_prefix("f:") {
        return cur.get(f);
    }
    let items = cur.as_array()?;
    if let Some(k) = el.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        return items
            .iter()
            .find(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
    }
    if let Some(v) = el.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        return items.iter().find(|i| **i == want);
    }
    None
}

fn remove(v: &mut Value, leaf: &[String]) {
    let Some((last, parents)) = leaf.split_last() else {
        return;
    };
    if last == "." {
        // The keyed element itself: remove it from its list.
        remove(v, parents);
        return;
    }
    let mut cur = v;
    for el in parents {
        let next = match el.strip_prefix("f:") {
            Some(f) => cur.get_mut(f),
            None => {
                let idx = position(cur, el);
                match (idx, cur.as_array_mut()) {
                    (Some(i), Some(a)) => a.get_mut(i),
                    _ => None,
                }
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Value::Object(m) = cur {
            m.remove(f);
        }
    } else if let Some(i) = position(cur, last) {
        if let Value::Array(a) = cur {
            a.remove(i);
        }
    }
}

fn position(cur: &Value, el: &str) -> Option<usize> {
    let target = step(cur, el)? as *const Value;
    cur.as_array()?.iter().position(|i| std::ptr::eq(i, target))
}

fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for leaf in set {
        let mut cur = &mut root;
        for el in leaf {
            let next = cur
                .entry(el.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(m) = next else { break };
            cur = m;
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value, prefix: &mut Leaf, out: &mut FieldSet) {
    let Value::Object(m) = v else { return };
    if m.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
        return;
    }
    for (k, x) in m {
        prefix.push(k.clone());
        from_fields_v1(x, prefix, out);
        prefix.pop();
    }
}

fn read_entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj["metadata"]["managedFields"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|e| {
            let mut set = FieldSet::new();
            from_fields_v1(&e["fieldsV1"], &mut Vec::new(), &mut set);
            Entry {
                manager: e["manager"].as_str().unwrap_or("").into(),
                operation: e["operation"].as_str().unwrap_or("Update").into(),
                api_version: e["apiVersion"].as_str().unwrap_or("").into(),
                time: e["time"].as_str().unwrap_or("").into(),
                subresource: e["subresource"].as_str().unwrap_or("").into(),
                set,
            }
        })
        .collect()
}

fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    if entries.len() > MANAGERS_PER_OBJECT_MAX {
        let drop = entries.len() - MANAGERS_PER_OBJECT_MAX;
        entries.drain(..drop);
    }
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.set),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(m) = obj["metadata"].as_object_mut() {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Records that `manager` (operation Update) set the fields that differ between `old`
/// and `new`; they leave every other manager's set.
pub(crate) fn track_update(old: Option<&Value>, new: &mut Value, manager: &str, part: Part) {
    let mut entries = match old {
        Some(o) => read_entries(o),
        None => Vec::new(),
    };
    let changed: FieldSet = leaves(new, part)
        .into_iter()
        .filter(|l| old.is_none_or(|o| get(o, l) != get(new, l)))
        .collect();
    let new_leaves = leaves(new, Part::Main { has_status: false });
    for e in &mut entries {
        // Fields that no longer exist are owned by nobody.
        e.set
            .retain(|l| new_leaves.contains(l) && !changed.contains(l));
    }
    if !changed.is_empty() {
        let sub = part.subresource();
        let api_version = new["apiVersion"].as_str().unwrap_or("").to_string();
        match entries
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == sub)
        {
            Some(e) => {
                e.set.extend(changed);
                e.time = crate::time::now_rfc3339();
                e.api_version = api_version;
            }
            None => entries.push(Entry {
                manager: manager.into(),
                operation: "Update".into(),
                api_version,
                time: crate::time::now_rfc3339(),
                subresource: sub.into(),
                set: changed,
            }),
        }
    }
    write_entries(new, entries);
}

fn leaf_text(leaf: &[String]) -> String {
    let mut s = String::new();
    for el in leaf {
        if let Some(f) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if el != "." {
            s.push('[');
            s.push_str(el.get(2..).unwrap_or(""));
            s.push(']');
        }
    }
    s
}

/// Server-side apply of `applied` by `manager` onto `live` (None: the object is new).
/// Returns the new object, or a 409 naming every conflicting field unless `force`.
pub(crate) fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    part: Part,
    resource: &str,
    name: &str,
) -> Result<Value, ApiError> {
    let new_set = leaves(applied, part);
    let sub = part.subresource();
    let mut entries = live.map(read_entries).unwrap_or_default();
    let mine = |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource == sub;
    let prev: FieldSet = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let base = live.cloned().unwrap_or_else(|| json!({}));
    let mut conflicts: BTreeMap<Leaf, Vec<String>> = BTreeMap::new();
    for e in entries.iter().filter(|e| !mine(e)) {
        for l in e.set.intersection(&new_set) {
            if get(&base, l) != get(applied, l) {
                conflicts
                    .entry(l.clone())
                    .or_default()
                    .push(e.manager.clone());
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let api_version = applied["apiVersion"].as_str().unwrap_or("");
        let causes: Vec<FieldCause> = conflicts
            .iter()
            .flat_map(|(l, ms)| {
                ms.iter().map(move |m| FieldCause {
                    reason: "FieldManagerConflict",
                    field: leaf_text(l),
                    message: format!("conflict with \"{m}\" using {api_version}"),
                })
            })
            .collect();
        let lines: Vec<String> = causes
            .iter()
            .map(|c| format!("- {}: {}", c.message, c.field))
            .collect();
        let n = causes.len();
        return Err(ApiError::Conflict {
            resource: resource.into(),
            name: name.into(),
            message: format!(
                "Apply failed with {n} conflict{}: {}",
                if n == 1 { "" } else { "s" },
                if n == 1 {
                    format!("{}: {}", causes[0].message, causes[0].field)
                } else {
                    format!("\n{}", lines.join("\n"))
                }
            ),
            causes,
        });
    }
    let others: FieldSet = entries
        .iter()
        .filter(|e| !mine(e))
        .flat_map(|e| e.set.iter().cloned())
        .collect();
    let mut result = base;
    for l in prev.difference(&new_set) {
        if !others.contains(l) {
            remove(&mut result, l);
        }
    }
    merge_applied(&mut result, applied, "", 0);
    if force {
        for e in entries.iter_mut().filter(|e| !mine(e)) {
            e.set.retain(|l| !conflicts.contains_key(l));
        }
    }
    let api_version = applied["apiVersion"].as_str().unwrap_or("").to_string();
    entries.retain(|e| !mine(e));
    entries.push(Entry {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version,
        time: crate::time::now_rfc3339(),
        subresource: sub.into(),
        set: new_set,
    });
    write_entries(&mut result, entries);
    Ok(result)
}

/// Merges an applied configuration into an object: maps field by field, keyed lists
/// element by element, set lists as a union, other lists replaced.
fn merge_applied(target: &mut Value, applied: &Value, path: &str, depth: usize) {
    let (Value::Object(t), Value::Object(a)) = (&mut *target, applied) else {
        *target = applied.clone();
        return;
    };
    for (k, av) in a {
        if path == "metadata" && k == "managedFields" {
            continue;
        }
        let sub = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match (t.get_mut(k), av) {
            (Some(tv @ Value::Object(_)), Value::Object(_)) if depth < OBJECT_DEPTH_MAX => {
                merge_applied(tv, av, &sub, depth + 1)
            }
            (Some(Value::Array(tl)), Value::Array(al)) => match list_strategy(path, k) {
                ListStrategy::Atomic => *tl = al.clone(),
                ListStrategy::Set => {
                    for i in al {
                        if !tl.contains(i) {
                            tl.push(i.clone());
                        }
                    }
                }
                ListStrategy::Keyed(key) => {
                    for i in al {
                        match tl
                            .iter_mut()
                            .find(|x| x.get(key).is_some() && x.get(key) == i.get(key))
                        {
                            Some(x) => merge_applied(x, i, &sub, depth + 1),
                            None => tl.push(i.clone()),
                        }
                    }
                }
            },
            _ => {
                t.insert(k.clone(), av.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: Part = Part::Main { has_status: true };

    #[test]
    fn apply_owns_fields_and_removes_dropped_ones() {
        let cfg1 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"a": "1", "b": "2"}});
        let o1 = apply(None, &cfg1, "m1", false, MAIN, "configmaps", "a").unwrap();
        assert_eq!(o1["data"], json!({"a": "1", "b": "2"}));
        assert_eq!(o1["metadata"]["managedFields"][0]["manager"], "m1");
        let cfg2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"a": "1"}});
        let o2 = apply(Some(&o1), &cfg2, "m1", false, MAIN, "configmaps", "a").unwrap();
        assert_eq!(o2["data"], json!({"a": "1"}));
        assert!(o2["metadata"]["labels"].get("x").is_none());
    }

    #[test]
    fn apply_conflicts_with_another_manager_unless_forced() {
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"a": "1"}});
        let o1 = apply(None, &cfg, "m1", false, MAIN, "configmaps", "a").unwrap();
        let cfg2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"a": "2"}});
        let err = apply(Some(&o1), &cfg2, "m2", false, MAIN, "configmaps", "a").unwrap_err();
        assert_eq!(err.code(), 409);
        assert!(err.to_string().contains(".data.a"), "{err}");
        let o2 = apply(Some(&o1), &cfg2, "m2", true, MAIN, "configmaps", "a").unwrap();
        assert_eq!(o2["data"]["a"], "2");
        // Same value: shared, no conflict.
        assert!(apply(Some(&o1), &cfg, "m3", false, MAIN, "configmaps", "a").is_ok());
    }

    #[test]
    fn update_takes_changed_fields_from_others() {
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"a": "1"}});
        let o1 = apply(None, &cfg, "m1", false, MAIN, "configmaps", "a").unwrap();
        let mut o2 = o1.clone();
        o2["data"]["a"] = json!("9");
        track_update(Some(&o1), &mut o2, "editor", MAIN);
        let mf = o2["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 1);
        assert_eq!(mf[0]["manager"], "editor");
        // m1 re-applying its old value now conflicts with the editor.
        assert!(apply(Some(&o2), &cfg, "m1", false, MAIN, "configmaps", "a").is_err());
    }

    #[test]
    fn keyed_lists_track_elements() {
        let o = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let set = leaves(&o, Part::Status);
        assert!(set.contains(&vec![
            "f:status".to_string(),
            "f:conditions".into(),
            "k:{\"type\":\"Ready\"}".into(),
            "f:status".into()
        ]));
        let mut x = o.clone();
        remove(
            &mut x,
            &[
                "f:status".to_string(),
                "f:conditions".into(),
                "k:{\"type\":\"Ready\"}".into(),
                ".".into(),
            ],
        );
        assert_eq!(x["status"]["conditions"], json!([]));
    }
}
