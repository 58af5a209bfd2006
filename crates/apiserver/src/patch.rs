//! Patch application: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic
//! merge patch with the real patch strategies of the built-in fields kubectl touches
//! (finalizers merge as a set; ownerReferences by uid; conditions by type; containers,
//! env, volumes by name; ports by containerPort; volumeMounts by mountPath) and the
//! directives kubectl sends (`$patch`, `$retainKeys`, `$deleteFromPrimitiveList/`,
//! `$setElementOrder/`). Never panics on any patch; a malformed patch is a BadRequest.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::limits::OBJECT_DEPTH_MAX;

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListStrategy {
    /// Replaced whole (the default, also for every custom resource).
    Atomic,
    /// A set of scalars (finalizers).
    Set,
    /// Elements matched by the named key.
    Keyed(&'static str),
}

/// The strategy of list field `name` whose parent object is at `parent` (dotted path of
/// field names, list indices dropped).
pub(crate) fn list_strategy(parent: &str, name: &str) -> ListStrategy {
    match (parent, name) {
        ("metadata", "finalizers") => ListStrategy::Set,
        ("metadata", "ownerReferences") => ListStrategy::Keyed("uid"),
        (_, "conditions") => ListStrategy::Keyed("type"),
        (
            _,
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "env"
            | "volumes"
            | "imagePullSecrets",
        ) => ListStrategy::Keyed("name"),
        (p, "ports") if p.ends_with("containers") || p.ends_with("initContainers") => {
            ListStrategy::Keyed("containerPort")
        }
        (_, "volumeMounts") => ListStrategy::Keyed("mountPath"),
        (_, "volumeDevices") => ListStrategy::Keyed("devicePath"),
        ("status", "addresses") => ListStrategy::Keyed("type"),
        _ => ListStrategy::Atomic,
    }
}

fn bad(msg: &str) -> ApiError {
    ApiError::BadRequest(msg.to_string())
}

/// RFC 7386 merge patch.
pub(crate) fn merge(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    if !patch.is_object() {
        return Err(bad("merge patch must be a JSON object"));
    }
    json_patch::merge(target, patch);
    Ok(())
}

/// RFC 6902 JSON patch, with the one deviation kube-apiserver (Go's json-patch) makes:
/// a `test` of a missing path against `null` succeeds, so `test /metadata/finalizers ==
/// null` (kube-rs's finalizer helper adding the first finalizer) works on an object that
/// has none. Operations apply in order; the caller patches a copy, so a failing
/// operation leaves nothing half-applied.
pub(crate) fn json(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| bad(&format!("invalid JSON patch: {e}")))?;
    let invalid = |message: String| ApiError::Invalid {
        kind: String::new(),
        group: String::new(),
        name: String::new(),
        causes: vec![crate::error::FieldCause {
            reason: "FieldValueInvalid",
            field: String::new(),
            message: format!(
                "the server rejected our request due to an error in our request: {message}"
            ),
        }],
    };
    for op in ops.0.iter() {
        if let json_patch::PatchOperation::Test(t) = op {
            if target.pointer(t.path.as_str()).is_none() {
                if t.value.is_null() {
                    continue;
                }
                return Err(invalid(format!(
                    "testing value {} failed: path is missing",
                    t.path.as_str()
                )));
            }
        }
        json_patch::patch(target, std::slice::from_ref(op)).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
}

/// Strategic merge patch.
pub(crate) fn strategic(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    if !patch.is_object() {
        return Err(bad("strategic merge patch must be a JSON object"));
    }
    smp_value(target, patch, "", 0)
}

fn smp_value(target: &mut Value, patch: &Value, path: &str, depth: usize) -> Result<(), ApiError> {
    if depth > OBJECT_DEPTH_MAX {
        return Err(bad("patch nested too deeply"));
    }
    let Value::Object(pmap) = patch else {
        *target = strip(patch);
        return Ok(());
    };
    if pmap.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip(patch);
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(tmap) = target else {
        return Ok(());
    };
    if let Some(keep) = pmap.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        tmap.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, pv) in pmap {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (tmap.get_mut(field), pv.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        let sub_path = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match pv {
            Value::Null => {
                tmap.remove(k);
            }
            Value::Object(_) => {
                if pv.get("$patch").and_then(Value::as_str) == Some("delete") {
                    tmap.remove(k);
                } else {
                    let entry = tmap.entry(k.clone()).or_insert(Value::Null);
                    smp_value(entry, pv, &sub_path, depth + 1)?;
                }
            }
            Value::Array(items) => {
                let strategy = list_strategy(path, k);
                let entry = tmap.entry(k.clone()).or_insert(Value::Array(Vec::new()));
                smp_list(entry, items, strategy, &sub_path, depth + 1)?;
            }
            _ => {
                tmap.insert(k.clone(), pv.clone());
            }
        }
    }
    Ok(())
}

fn smp_list(
    target: &mut Value,
    items: &[Value],
    strategy: ListStrategy,
    path: &str,
    depth: usize,
) -> Result<(), ApiError> {
    let replace = items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    if strategy == ListStrategy::Atomic || replace || !target.is_array() {
        *target = Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").is_none() || i.as_object().is_some_and(|m| m.len() > 1))
                .map(strip)
                .collect(),
        );
        return Ok(());
    }
    let Value::Array(list) = target else {
        return Ok(());
    };
    match strategy {
        ListStrategy::Set => {
            for i in items {
                if !list.contains(i) {
                    list.push(i.clone());
                }
            }
        }
        ListStrategy::Keyed(key) => {
            for item in items {
                let Some(kv) = item.get(key) else {
                    return Err(bad(&format!(
                        "map: {item} does not contain declared merge key: {key}"
                    )));
                };
                let pos = list.iter().position(|x| x.get(key) == Some(kv));
                if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(p) = pos {
                        list.remove(p);
                    }
                    continue;
                }
                match pos {
                    Some(p) => smp_value(&mut list[p], item, path, depth)?,
                    None => list.push(strip(item)),
                }
            }
        }
        ListStrategy::Atomic => {}
    }
    Ok(())
}

/// Removes patch directives from a value that is inserted whole.
fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_test_of_a_missing_path_is_null() {
        let mut o = json!({"metadata": {"name": "a"}});
        let p = json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                       {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]);
        json(&mut o, &p).unwrap();
        assert_eq!(o["metadata"]["finalizers"], json!(["f"]));
        let again = json!([{"op": "test", "path": "/metadata/missing", "value": "x"}]);
        assert!(json(&mut o, &again).is_err());
        let stale = json!([{"op": "test", "path": "/metadata/finalizers", "value": null}]);
        assert!(
            json(&mut o, &stale).is_err(),
            "present non-null value is not null"
        );
    }

    #[test]
    fn finalizers_merge_as_a_set_and_conditions_by_type() {
        let mut o = json!({"metadata": {"finalizers": ["a"]}, "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "X", "status": "True"}]}});
        strategic(&mut o, &json!({"metadata": {"finalizers": ["b", "a"]}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})).unwrap();
        assert_eq!(o["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            o["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "X", "status": "True"}])
        );
        strategic(
            &mut o,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .unwrap();
        assert_eq!(o["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn containers_merge_by_name_and_delete_directive() {
        let mut o = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}}});
        strategic(&mut o, &json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "z"}, {"name": "b", "$patch": "delete"}]}}}})).unwrap();
        assert_eq!(
            o["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "z"}])
        );
    }

    #[test]
    fn unknown_lists_are_replaced_and_nulls_delete() {
        let mut o = json!({"spec": {"args": ["1", "2"], "x": 1}});
        strategic(&mut o, &json!({"spec": {"args": ["3"], "x": null}})).unwrap();
        assert_eq!(o, json!({"spec": {"args": ["3"]}}));
        assert!(strategic(&mut o, &json!([1])).is_err());
    }
}
