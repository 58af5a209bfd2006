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
use crate::listtype::{element_key, fill_key_defaults, ListType, Node};

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

fn leaves(v: &Value, part: Part, root: Node<'_>) -> FieldSet {
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
                        (Node::Builtin, "metadata", mk),
                        &mut out,
                        2,
                    );
                }
            }
            continue;
        }
        walk(
            val,
            vec![format!("f:{k}")],
            (root.field("", k), "", k),
            &mut out,
            1,
        );
    }
    out
}

/// Adds the leaves of `v` under `path`; `at` is v's node, its parent's dotted path and
/// its field name.
fn walk(v: &Value, path: Leaf, at: (Node<'_>, &str, &str), out: &mut FieldSet, depth: usize) {
    let (node, parent, name) = at;
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
        Value::Object(m) if !m.is_empty() && !node.atomic_map() => {
            for (k, x) in m {
                let mut p = path.clone();
                p.push(format!("f:{k}"));
                walk(x, p, (node.field(&here, k), &here, k), out, depth + 1);
            }
        }
        Value::Array(items) => match node.list_type(parent, name) {
            ListType::Atomic => {
                out.insert(path);
            }
            ListType::Set => {
                for i in items {
                    let mut p = path.clone();
                    p.push(format!("v:{i}"));
                    out.insert(p);
                }
                if items.is_empty() {
                    out.insert(path);
                }
            }
            ListType::Map(keys) => {
                let item_node = node.items();
                for i in items {
                    let Some(kv) = element_key(i, &keys) else {
                        continue;
                    };
                    let mut p = path.clone();
                    p.push(format!("k:{}", Value::Object(kv)));
                    let mut dot = p.clone();
                    dot.push(".".into());
                    out.insert(dot);
                    if let Value::Object(m) = i {
                        for (k, x) in m {
                            let mut q = p.clone();
                            q.push(format!("f:{k}"));
                            walk(x, q, (item_node.field(&here, k), &here, k), out, depth + 1);
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

/// Whether `leaf` has another value in `new` than in `old`. A map-list element itself
/// (`.`) changes only by appearing: what changed inside it is its fields' business.
fn differs(old: &Value, new: &Value, leaf: &[String]) -> bool {
    if leaf.last().is_some_and(|l| l == ".") {
        return get(old, leaf).is_none() && get(new, leaf).is_some();
    }
    get(old, leaf) != get(new, leaf)
}

/// Records that `manager` (operation Update) set the fields that differ between `old`
/// and `new`; they leave every other manager's set. `root` types new's lists.
pub(crate) fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    part: Part,
    root: Node<'_>,
) {
    let mut entries = match old {
        Some(o) => read_entries(o),
        None => Vec::new(),
    };
    // An element that omits a key is not tracked (walk skips it); the write itself is
    // the validator's business, as kube-apiserver only warns about such objects.
    let _ = fill_key_defaults(new, root, "", "", 0);
    let old = old.map(|o| {
        let mut o = o.clone();
        let _ = fill_key_defaults(&mut o, root, "", "", 0);
        o
    });
    let changed: FieldSet = leaves(new, part, root)
        .into_iter()
        .filter(|l| old.as_ref().is_none_or(|o| differs(o, new, l)))
        .collect();
    let new_leaves = leaves(new, Part::Main { has_status: false }, root);
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

/// Who applies what to which object.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Applier<'a> {
    pub(crate) manager: &'a str,
    pub(crate) force: bool,
    pub(crate) part: Part,
    /// Types the object's lists and maps.
    pub(crate) root: Node<'a>,
    /// `plural.group` and name, for the conflict message.
    pub(crate) resource: &'a str,
    pub(crate) name: &'a str,
}

/// Server-side apply of `applied` onto `live` (None: the object is new). Returns the new
/// object, or a 409 naming every conflicting field and manager unless `force`.
pub(crate) fn apply(
    live: Option<&Value>,
    applied: &Value,
    who: Applier<'_>,
) -> Result<Value, ApiError> {
    let Applier {
        manager,
        force,
        part,
        root,
        resource,
        name,
    } = who;
    let mut applied = applied.clone();
    fill_key_defaults(&mut applied, root, "", "", 0).map_err(|e| ApiError::Invalid {
        kind: String::new(),
        group: String::new(),
        name: name.into(),
        causes: vec![FieldCause {
            reason: "FieldValueInvalid",
            field: String::new(),
            message: format!("failed to create typed patch object: {e}"),
        }],
    })?;
    let applied = &applied;
    let new_set = leaves(applied, part, root);
    let sub = part.subresource();
    let mut entries = live.map(read_entries).unwrap_or_default();
    let mine = |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource == sub;
    let prev: FieldSet = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    let mut base = live.cloned().unwrap_or_else(|| json!({}));
    let _ = fill_key_defaults(&mut base, root, "", "", 0);
    let mut conflicts: BTreeMap<Leaf, Vec<String>> = BTreeMap::new();
    for e in entries.iter().filter(|e| !mine(e)) {
        for l in e.set.intersection(&new_set) {
            // Sharing an element of a map or set list never conflicts; its fields may.
            let element = l.last().is_some_and(|x| x == "." || x.starts_with("v:"));
            if !element && get(&base, l) != get(applied, l) {
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
    // An element stays while anyone else owns it or any field in it.
    let owned_by_others = |l: &Leaf| match l.split_last() {
        Some((dot, elem)) if dot == "." => others.iter().any(|o| o.starts_with(elem)),
        _ => others.contains(l),
    };
    let mut result = base;
    for l in prev.difference(&new_set) {
        if !owned_by_others(l) {
            remove(&mut result, l);
        }
    }
    merge_applied(&mut result, applied, (root, "", ""), 0);
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

/// Merges an applied configuration into an object: maps field by field (atomic maps
/// replaced), map lists element by element, set lists as a union, atomic lists replaced.
/// `at` is target's node, its parent's dotted path and its field name.
fn merge_applied(target: &mut Value, applied: &Value, at: (Node<'_>, &str, &str), depth: usize) {
    let (node, parent, name) = at;
    let here = if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    };
    let (Value::Object(t), Value::Object(a)) = (&mut *target, applied) else {
        *target = applied.clone();
        return;
    };
    if node.atomic_map() {
        *t = a.clone();
        return;
    }
    for (k, av) in a {
        if here == "metadata" && k == "managedFields" {
            continue;
        }
        let child = node.field(&here, k);
        match (t.get_mut(k), av) {
            (Some(tv @ Value::Object(_)), Value::Object(_)) if depth < OBJECT_DEPTH_MAX => {
                merge_applied(tv, av, (child, &here, k), depth + 1)
            }
            (Some(Value::Array(tl)), Value::Array(al)) => match child.list_type(&here, k) {
                ListType::Atomic => *tl = al.clone(),
                ListType::Set => {
                    for i in al {
                        if !tl.contains(i) {
                            tl.push(i.clone());
                        }
                    }
                }
                ListType::Map(keys) => {
                    let item_node = child.items();
                    for i in al {
                        let key = element_key(i, &keys);
                        match tl
                            .iter_mut()
                            .find(|x| key.is_some() && element_key(x, &keys) == key)
                        {
                            Some(x) if depth < OBJECT_DEPTH_MAX => {
                                merge_applied(x, i, (item_node, &here, k), depth + 1)
                            }
                            Some(x) => *x = i.clone(),
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

    fn who(manager: &str, force: bool) -> Applier<'_> {
        Applier {
            manager,
            force,
            part: MAIN,
            root: Node::Builtin,
            resource: "configmaps",
            name: "a",
        }
    }

    #[test]
    fn apply_owns_fields_and_removes_dropped_ones() {
        let cfg1 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"a": "1", "b": "2"}});
        let o1 = apply(None, &cfg1, who("m1", false)).unwrap();
        assert_eq!(o1["data"], json!({"a": "1", "b": "2"}));
        assert_eq!(o1["metadata"]["managedFields"][0]["manager"], "m1");
        let cfg2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"a": "1"}});
        let o2 = apply(Some(&o1), &cfg2, who("m1", false)).unwrap();
        assert_eq!(o2["data"], json!({"a": "1"}));
        assert!(o2["metadata"]["labels"].get("x").is_none());
    }

    #[test]
    fn apply_conflicts_with_another_manager_unless_forced() {
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"a": "1"}});
        let o1 = apply(None, &cfg, who("m1", false)).unwrap();
        let cfg2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"a": "2"}});
        let err = apply(Some(&o1), &cfg2, who("m2", false)).unwrap_err();
        assert_eq!(err.code(), 409);
        assert!(err.to_string().contains(".data.a"), "{err}");
        let o2 = apply(Some(&o1), &cfg2, who("m2", true)).unwrap();
        assert_eq!(o2["data"]["a"], "2");
        // Same value: shared, no conflict.
        assert!(apply(Some(&o1), &cfg, who("m3", false)).is_ok());
    }

    #[test]
    fn update_takes_changed_fields_from_others() {
        let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"a": "1"}});
        let o1 = apply(None, &cfg, who("m1", false)).unwrap();
        let mut o2 = o1.clone();
        o2["data"]["a"] = json!("9");
        track_update(Some(&o1), &mut o2, "editor", MAIN, Node::Builtin);
        let mf = o2["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 1);
        assert_eq!(mf[0]["manager"], "editor");
        // m1 re-applying its old value now conflicts with the editor.
        assert!(apply(Some(&o2), &cfg, who("m1", false)).is_err());
    }

    #[test]
    fn keyed_lists_track_elements() {
        let o = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let set = leaves(&o, Part::Status, Node::Builtin);
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

    /// A custom resource schema with one list of each type and an atomic map.
    fn lists_schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "disks": {"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["node", "path"],
                "items": {"type": "object", "properties": {
                    "node": {"type": "string"}, "path": {"type": "string", "default": "/dev/sda"},
                    "size": {"type": "integer"}, "tier": {"type": "string"}}}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "args": {"type": "array", "items": {"type": "string"}},
            "selector": {"type": "object", "x-kubernetes-map-type": "atomic",
                "additionalProperties": {"type": "string"}}}}}})
    }

    fn cr(spec: Value) -> Value {
        json!({"apiVersion": "t.io/v1", "kind": "W", "metadata": {"name": "a"}, "spec": spec})
    }

    fn crd_who<'a>(manager: &'a str, force: bool, schema: &'a Value) -> Applier<'a> {
        Applier {
            root: Node::Schema(schema),
            resource: "ws.t.io",
            ..who(manager, force)
        }
    }

    fn owned(obj: &Value, manager: &str) -> Value {
        obj["metadata"]["managedFields"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["manager"] == manager))
            .map(|e| e["fieldsV1"].clone())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn map_list_elements_are_merged_and_owned_per_key() {
        let schema = lists_schema();
        let a = cr(json!({"disks": [{"node": "n1", "path": "/dev/sdb", "size": 1}]}));
        let o1 = apply(None, &a, crd_who("a", false, &schema)).unwrap();
        // Same node, key path defaulted: a second element, not a replacement.
        let b = cr(json!({"disks": [{"node": "n1", "size": 2}]}));
        let o2 = apply(Some(&o1), &b, crd_who("b", false, &schema)).unwrap();
        assert_eq!(
            o2["spec"]["disks"],
            json!([{"node": "n1", "path": "/dev/sdb", "size": 1},
                   {"node": "n1", "path": "/dev/sda", "size": 2}])
        );
        let k = "k:{\"node\":\"n1\",\"path\":\"/dev/sda\"}";
        assert_eq!(
            owned(&o2, "b")["f:spec"]["f:disks"][k],
            json!({".": {}, "f:node": {}, "f:path": {}, "f:size": {}})
        );
        // b sets another field of a's element: shared element, no conflict.
        let b2 = cr(json!({"disks": [{"node": "n1", "size": 2},
                                     {"node": "n1", "path": "/dev/sdb", "tier": "ssd"}]}));
        let o3 = apply(Some(&o2), &b2, crd_who("b", false, &schema)).unwrap();
        assert_eq!(o3["spec"]["disks"][0]["tier"], "ssd");
        assert_eq!(o3["spec"]["disks"][0]["size"], 1);
        // a drops its element: it stays (b owns a field in it), a's `size` goes.
        let o4 = apply(Some(&o3), &cr(json!({})), crd_who("a", false, &schema)).unwrap();
        assert_eq!(
            o4["spec"]["disks"][0],
            json!({"node": "n1", "path": "/dev/sdb", "tier": "ssd"})
        );
        // b drops the defaulted element: removed, the other stays.
        let b3 = cr(json!({"disks": [{"node": "n1", "path": "/dev/sdb", "tier": "ssd"}]}));
        let o5 = apply(Some(&o4), &b3, crd_who("b", false, &schema)).unwrap();
        assert_eq!(o5["spec"]["disks"].as_array().unwrap().len(), 1);
        // A conflicting value of a shared element's field names the field and the owner.
        let a2 = cr(json!({"disks": [{"node": "n1", "path": "/dev/sdb", "tier": "hdd"}]}));
        let err = apply(Some(&o5), &a2, crd_who("a", false, &schema)).unwrap_err();
        assert_eq!(err.code(), 409);
        let text = err.to_string();
        assert!(
            text.contains("conflict with \"b\"")
                && text.contains(".spec.disks[{\"node\":\"n1\",\"path\":\"/dev/sdb\"}].tier"),
            "{text}"
        );
        let o6 = apply(Some(&o5), &a2, crd_who("a", true, &schema)).unwrap();
        assert_eq!(o6["spec"]["disks"][0]["tier"], "hdd");
        assert!(owned(&o6, "b")["f:spec"]["f:disks"]
            .to_string()
            .contains("/dev/sdb"));
        assert!(!owned(&o6, "b").to_string().contains("f:tier"));
    }

    #[test]
    fn set_lists_union_atomic_lists_and_maps_replace() {
        let schema = lists_schema();
        let a = cr(json!({"tags": ["x", "y"], "args": ["1"], "selector": {"p": "1", "q": "2"}}));
        let o1 = apply(None, &a, crd_who("a", false, &schema)).unwrap();
        let b = cr(json!({"tags": ["y", "z"]}));
        let o2 = apply(Some(&o1), &b, crd_who("b", false, &schema)).unwrap();
        assert_eq!(o2["spec"]["tags"], json!(["x", "y", "z"]));
        assert!(owned(&o2, "b")["f:spec"]["f:tags"].get("v:\"z\"").is_some());
        // a drops its tags: x goes, y stays (b owns it too).
        let a2 = cr(json!({"args": ["1"], "selector": {"p": "1", "q": "2"}}));
        let o3 = apply(Some(&o2), &a2, crd_who("a", false, &schema)).unwrap();
        assert_eq!(o3["spec"]["tags"], json!(["y", "z"]));
        // Atomic list and atomic map: owned whole, so another value conflicts.
        for (field, value) in [("args", json!(["2"])), ("selector", json!({"p": "1"}))] {
            let c = cr(json!({ field: value.clone() }));
            let err = apply(Some(&o3), &c, crd_who("c", false, &schema)).unwrap_err();
            assert_eq!(err.code(), 409, "{field}");
            let o = apply(Some(&o3), &c, crd_who("c", true, &schema)).unwrap();
            assert_eq!(o["spec"][field], value, "{field} replaced whole");
        }
        assert_eq!(
            owned(&o3, "a")["f:spec"]["f:selector"],
            json!({}),
            "an atomic map is one leaf"
        );
    }

    #[test]
    fn map_list_element_without_its_key_is_invalid() {
        let schema = lists_schema();
        let bad = cr(json!({"disks": [{"size": 1}]}));
        let err = apply(None, &bad, crd_who("a", false, &schema)).unwrap_err();
        assert_eq!(err.code(), 422);
        assert!(
            err.to_string().contains("omits key field \"node\""),
            "{err}"
        );
    }

    #[test]
    fn builtin_ports_are_keyed_by_port_and_defaulted_protocol() {
        let pod = |ports: Value| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
                   "spec": {"containers": [{"name": "dns", "image": "i", "ports": ports}]}})
        };
        let o1 = apply(None, &pod(json!([{"containerPort": 53}])), who("a", false)).unwrap();
        let o2 = apply(
            Some(&o1),
            &pod(json!([{"containerPort": 53, "protocol": "UDP"}])),
            who("b", false),
        )
        .unwrap();
        let ports = &o2["spec"]["containers"][0]["ports"];
        assert_eq!(
            *ports,
            json!([{"containerPort": 53, "protocol": "TCP"}, {"containerPort": 53, "protocol": "UDP"}])
        );
        let fields = owned(&o2, "b").to_string();
        assert!(
            fields.contains(r#"k:{\"containerPort\":53,\"protocol\":\"UDP\"}"#),
            "{fields}"
        );
    }
}
