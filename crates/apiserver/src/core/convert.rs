//! Conversion between the stored form of an object and the form a served version
//! shows (the events.k8s.io/v1 renames, CRD aliases served through another resource's
//! storage). Never: touches the store or the lock.

use super::*;

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

pub(super) fn to_internal(rt: &ResourceType, external: &Value) -> Result<Value, ApiError> {
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
pub(super) fn carried_metadata(source: &Value, converted: &Value) -> Value {
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

pub(super) const EVENT_RENAMES: [(&str, &str); 7] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

pub(super) fn rename(o: &Value, from_core: bool) -> Value {
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

pub(super) fn event_core_to_v1(o: &Value) -> Value {
    rename(o, true)
}

pub(super) fn event_v1_to_core(o: &Value) -> Value {
    rename(o, false)
}
