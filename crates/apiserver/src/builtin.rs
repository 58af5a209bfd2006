//! Validation of built-in kinds that have no OpenAPI schema here, with kube-apiserver's
//! messages: PersistentVolumeClaim (access modes, storage request, immutable spec, no
//! shrinking) and StorageClass (provisioner, enums, immutable parameters); and the one
//! decoding rule of a built-in kind that changes what is stored: a Secret's write-only
//! `stringData` ([`fold_string_data`]).

use serde_json::Value;

use crate::error::{ApiError, FieldCause};
use crate::quantity;
use crate::registry::{ResourceType, Special};

const ACCESS_MODES: [&str; 4] = [
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

fn cause(reason: &'static str, field: &str, message: String) -> FieldCause {
    FieldCause {
        reason,
        field: field.into(),
        message,
    }
}

fn quoted(list: &[&str]) -> String {
    list.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The storage request of a PVC in milli-units, if present and valid.
pub(crate) fn pvc_request(o: &Value) -> Option<i128> {
    o["spec"]["resources"]["requests"]["storage"]
        .as_str()
        .and_then(quantity::parse_milli)
}

/// Field errors of `obj` (external form); `old` is the current object on update.
pub(crate) fn validate(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> Vec<FieldCause> {
    match (rt.special, rt.kind.as_str()) {
        (Special::Pvc, _) => pvc(obj, old),
        (_, "StorageClass") if rt.group == "storage.k8s.io" => storage_class(obj, old),
        _ => Vec::new(),
    }
}

/// Go's name of a JSON value's type in a decoding error.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// kube-apiserver's v1 -> internal conversion of a Secret, which every create, update,
/// patch and apply body goes through before admission: each `stringData` entry
/// replaces `data`'s key with its base64 form, and `stringData` (write-only) is neither
/// stored nor returned. A body Go could not decode is a 400, in its words.
pub(crate) fn fold_string_data(
    rt: &ResourceType,
    version: &str,
    obj: &mut Value,
) -> Result<(), ApiError> {
    if rt.special != Special::Secret {
        return Ok(());
    }
    let Some(m) = obj.as_object_mut() else {
        return Ok(());
    };
    let string_data = match m.remove("stringData") {
        None | Some(Value::Null) => return Ok(()),
        Some(v) => v,
    };
    let undecodable = |got: &Value, field: &str, go_type: &str| {
        ApiError::BadRequest(format!(
            "Secret in version \"{version}\" cannot be handled as a Secret: json: cannot unmarshal {} into Go struct field Secret.{field} of type {go_type}",
            json_type(got)
        ))
    };
    let Value::Object(entries) = string_data else {
        return Err(undecodable(&string_data, "stringData", "map[string]string"));
    };
    let data = m
        .entry("data")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if data.is_null() {
        *data = Value::Object(serde_json::Map::new());
    }
    let Value::Object(data) = data else {
        return Err(undecodable(data, "data", "map[string][]uint8"));
    };
    for (k, v) in entries {
        let Value::String(text) = &v else {
            return Err(undecodable(&v, "stringData", "string"));
        };
        data.insert(k, Value::String(crate::tls::base64_encode(text.as_bytes())));
    }
    Ok(())
}

fn pvc(o: &Value, old: Option<&Value>) -> Vec<FieldCause> {
    let mut c = Vec::new();
    let modes = o["spec"]["accessModes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if modes.is_empty() {
        c.push(cause(
            "FieldValueRequired",
            "spec.accessModes",
            "Required value: at least 1 access mode is required".into(),
        ));
    }
    for m in &modes {
        if !m.as_str().is_some_and(|m| ACCESS_MODES.contains(&m)) {
            c.push(cause(
                "FieldValueNotSupported",
                "spec.accessModes",
                format!(
                    "Unsupported value: {m}: supported values: {}",
                    quoted(&ACCESS_MODES)
                ),
            ));
        }
    }
    let raw = &o["spec"]["resources"]["requests"]["storage"];
    match (raw.as_str(), pvc_request(o)) {
        (None, _) if raw.is_null() => c.push(cause("FieldValueRequired", "spec.resources[storage]", "Required value".into())),
        (_, Some(q)) if q > 0 => {}
        (_, Some(_)) => c.push(cause("FieldValueInvalid", "spec.resources[storage]", format!("Invalid value: {raw}: must be greater than zero"))),
        _ => c.push(cause("FieldValueInvalid", "spec.resources.requests[storage]", format!("Invalid value: {raw}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))),
    }
    if let Some(old) = old {
        let mut a = o["spec"].clone();
        let mut b = old["spec"].clone();
        // Only a bound claim may be resized (kube-apiserver's PVC update validation).
        let bound = old["status"]["phase"].as_str() == Some("Bound");
        for s in [&mut a, &mut b] {
            if let Some(m) = s.as_object_mut() {
                if bound {
                    m.remove("resources");
                }
                m.remove("volumeAttributesClassName");
            }
        }
        // Binding fills volumeName once.
        if b["volumeName"].as_str().is_none_or(str::is_empty) {
            if let (Some(x), Some(y)) = (a.as_object_mut(), b.as_object_mut()) {
                x.remove("volumeName");
                y.remove("volumeName");
            }
        }
        if a != b {
            c.push(cause(
                "FieldValueForbidden",
                "spec",
                "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".into(),
            ));
        }
        if let (Some(new_q), Some(old_q)) = (pvc_request(o), pvc_request(old)) {
            if new_q < old_q {
                c.push(cause(
                    "FieldValueForbidden",
                    "spec.resources.requests.storage",
                    "Forbidden: field can not be less than status.capacity".into(),
                ));
            }
        }
    }
    c
}

fn storage_class(o: &Value, old: Option<&Value>) -> Vec<FieldCause> {
    let mut c = Vec::new();
    if o["provisioner"].as_str().is_none_or(str::is_empty) {
        c.push(cause(
            "FieldValueRequired",
            "provisioner",
            "Required value".into(),
        ));
    }
    for (field, allowed) in [
        ("reclaimPolicy", &["Delete", "Retain"][..]),
        (
            "volumeBindingMode",
            &["Immediate", "WaitForFirstConsumer"][..],
        ),
    ] {
        if let Some(v) = o.get(field).filter(|v| !v.is_null()) {
            if !v.as_str().is_some_and(|s| allowed.contains(&s)) {
                c.push(cause(
                    "FieldValueNotSupported",
                    field,
                    format!(
                        "Unsupported value: {v}: supported values: {}",
                        quoted(allowed)
                    ),
                ));
            }
        }
    }
    if let Some(old) = old {
        for field in [
            "parameters",
            "provisioner",
            "reclaimPolicy",
            "volumeBindingMode",
        ] {
            if o.get(field) != old.get(field) {
                c.push(cause(
                    "FieldValueForbidden",
                    field,
                    "Forbidden: updates to ".to_string() + field + " are forbidden.",
                ));
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pvc_obj(size: &str) -> Value {
        json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}, "storageClassName": "sc"}})
    }

    #[test]
    fn pvc_rules_match_kube_apiserver() {
        assert!(pvc(&pvc_obj("1Gi"), None).is_empty());
        let c = pvc(&json!({"spec": {}}), None);
        assert_eq!(c[0].field, "spec.accessModes");
        assert_eq!(c[1].field, "spec.resources[storage]");
        assert_eq!(
            pvc(&pvc_obj("0"), None)[0].message,
            "Invalid value: \"0\": must be greater than zero"
        );
        let bound = |size: &str| {
            let mut o = pvc_obj(size);
            o["status"] = json!({"phase": "Bound"});
            o
        };
        assert!(
            pvc(&pvc_obj("2Gi"), Some(&bound("1Gi"))).is_empty(),
            "expansion of a bound claim is allowed"
        );
        assert_eq!(
            pvc(&pvc_obj("2Gi"), Some(&pvc_obj("1Gi")))[0].field,
            "spec",
            "an unbound claim cannot be resized"
        );
        assert_eq!(
            pvc(&pvc_obj("1Gi"), Some(&bound("2Gi")))[0].field,
            "spec.resources.requests.storage"
        );
        let mut moved = pvc_obj("1Gi");
        moved["spec"]["storageClassName"] = json!("other");
        assert_eq!(pvc(&moved, Some(&pvc_obj("1Gi")))[0].field, "spec");
    }

    #[test]
    fn string_data_is_folded_into_data_and_dropped() {
        let rt = crate::registry::Registry::build(&[], &[])
            .find("", "v1", "secrets")
            .expect("secrets are served");
        let mut s = json!({"data": {"a": "b2xk", "keep": "eA=="},
                           "stringData": {"a": "new", "b": "two"}});
        fold_string_data(&rt, "v1", &mut s).unwrap();
        assert_eq!(
            s,
            json!({"data": {"a": "bmV3", "keep": "eA==", "b": "dHdv"}})
        );
        let mut s = json!({"data": null, "stringData": {"u": "x"}});
        fold_string_data(&rt, "v1", &mut s).unwrap();
        assert_eq!(s, json!({"data": {"u": "eA=="}}));
        let e = fold_string_data(&rt, "v1", &mut json!({"stringData": {"n": 1}})).unwrap_err();
        assert!(
            matches!(&e, ApiError::BadRequest(m) if m.ends_with("cannot unmarshal number into Go struct field Secret.stringData of type string")),
            "{e:?}"
        );
        let e = fold_string_data(&rt, "v1", &mut json!({"stringData": ["x"]})).unwrap_err();
        assert!(
            matches!(&e, ApiError::BadRequest(m) if m.contains("array into Go struct field Secret.stringData of type map[string]string")),
            "{e:?}"
        );
    }

    #[test]
    fn storage_class_rules() {
        let sc = json!({"provisioner": "cstor.csi.openebs.io", "reclaimPolicy": "Delete"});
        assert!(storage_class(&sc, None).is_empty());
        assert_eq!(
            storage_class(&json!({"reclaimPolicy": "Keep"}), None).len(),
            2
        );
        let mut changed = sc.clone();
        changed["parameters"] = json!({"replicaCount": "1"});
        assert_eq!(storage_class(&changed, Some(&sc))[0].field, "parameters");
    }
}
