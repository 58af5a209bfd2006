//! Structural OpenAPI v3 schema handling for objects, as kube-apiserver does for CRDs:
//! pruning of unknown fields (reported so `fieldValidation` can warn or refuse), null
//! removal for non-nullable fields, defaulting, then validation of type, enum, required,
//! bounds and int-or-string. Validation always runs server-side, whatever kubectl's
//! `--validate` says. Never panics; nesting deeper than `OBJECT_DEPTH_MAX` is refused.

use serde_json::{Map, Value};

use crate::error::FieldCause;
use crate::limits::OBJECT_DEPTH_MAX;

/// Result of normalising an object against its schema.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Paths of fields removed because the schema does not know them.
    pub(crate) unknown: Vec<String>,
    /// Invalid fields.
    pub(crate) causes: Vec<FieldCause>,
}

/// Prunes, defaults and validates `obj` in place against the root `schema`.
pub(crate) fn apply(obj: &mut Value, schema: &Value) -> Outcome {
    let mut out = Outcome::default();
    let Value::Object(root) = obj else {
        out.causes.push(cause(
            "FieldValueTypeInvalid",
            "",
            "Invalid value: must be an object".into(),
        ));
        return out;
    };
    let props = schema.get("properties").and_then(Value::as_object);
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    let keys: Vec<String> = root.keys().cloned().collect();
    for k in keys {
        if k == "apiVersion" || k == "kind" || k == "metadata" {
            continue;
        }
        match props.and_then(|p| p.get(&k)) {
            Some(sub) => {
                if let Some(v) = root.get_mut(&k) {
                    walk(v, sub, &k, 1, &mut out);
                }
            }
            None if !preserve => {
                root.remove(&k);
                out.unknown.push(k);
            }
            None => {}
        }
    }
    drop_nulls_and_default(root, schema, "", &mut out);
    required(root, schema, "", &mut out);
    out
}

fn cause(reason: &'static str, field: &str, message: String) -> FieldCause {
    FieldCause {
        reason,
        field: field.to_string(),
        message,
    }
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(77) {
        Some((cut, _)) if s.len() > 80 => format!("{}...", &s[..cut]),
        _ => s,
    }
}

fn type_ok(v: &Value, t: &str, schema: &Value) -> bool {
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return v.is_string() || v.is_i64() || v.is_u64();
    }
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        _ => true,
    }
}

fn walk(v: &mut Value, schema: &Value, path: &str, depth: usize, out: &mut Outcome) {
    if depth > OBJECT_DEPTH_MAX {
        out.causes.push(cause(
            "FieldValueInvalid",
            path,
            "Invalid value: nesting too deep".into(),
        ));
        return;
    }
    // A null is either allowed (nullable) or pruned by the parent object before it is
    // stored, as kube-apiserver does; either way it is not a type error.
    if v.is_null() {
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if let Some(t) = schema
        .get("type")
        .and_then(Value::as_str)
        .or(if int_or_string {
            Some("integer-or-string")
        } else {
            None
        })
    {
        if !type_ok(v, t, schema) {
            out.causes.push(cause(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type {t}: \"{}\"",
                    type_name(v),
                    type_name(v)
                ),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            out.causes.push(cause(
                "FieldValueNotSupported",
                path,
                format!(
                    "Unsupported value: {}: supported values: {}",
                    short(v),
                    list.join(", ")
                ),
            ));
        }
    }
    bounds(v, schema, path, out);
    let preserve = schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    let embedded = schema
        .get("x-kubernetes-embedded-resource")
        .and_then(Value::as_bool)
        == Some(true);
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let addl = schema.get("additionalProperties");
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let sub_path = join(path, &k);
                let sub = props.and_then(|p| p.get(&k)).or(match addl {
                    Some(Value::Object(_)) => addl,
                    _ => None,
                });
                match sub {
                    Some(sub) => {
                        if let Some(child) = map.get_mut(&k) {
                            walk(child, sub, &sub_path, depth + 1, out);
                        }
                    }
                    None => {
                        let known_meta =
                            embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata");
                        let open = preserve || addl == Some(&Value::Bool(true)) || known_meta;
                        // A schema with no properties and no type is a free-form value.
                        let free =
                            props.is_none() && addl.is_none() && schema.get("type").is_none();
                        if !open && !free {
                            map.remove(&k);
                            out.unknown.push(sub_path);
                        }
                    }
                }
            }
            drop_nulls_and_default(map, schema, path, out);
            required(map, schema, path, out);
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item, item_schema, &format!("{path}[{i}]"), depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn bounds(v: &Value, schema: &Value, path: &str, out: &mut Outcome) {
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    if let Some(x) = v.as_f64() {
        if let Some(min) = num("minimum") {
            if x < min {
                out.causes.push(cause("FieldValueInvalid", path, format!("Invalid value: {v}: {path} in body should be greater than or equal to {min}")));
            }
        }
        if let Some(max) = num("maximum") {
            if x > max {
                out.causes.push(cause(
                    "FieldValueInvalid",
                    path,
                    format!(
                        "Invalid value: {v}: {path} in body should be less than or equal to {max}"
                    ),
                ));
            }
        }
    }
    if let Some(s) = v.as_str() {
        let n = s.chars().count() as f64;
        if num("minLength").is_some_and(|m| n < m) {
            out.causes.push(cause(
                "FieldValueInvalid",
                path,
                format!(
                    "Invalid value: {}: {path} in body should be at least {} chars long",
                    short(v),
                    num("minLength").unwrap_or(0.0)
                ),
            ));
        }
        if num("maxLength").is_some_and(|m| n > m) {
            out.causes.push(cause(
                "FieldValueTooLong",
                path,
                format!(
                    "Too long: may not be more than {} bytes",
                    num("maxLength").unwrap_or(0.0)
                ),
            ));
        }
        // kube-apiserver's patterns are Go (RE2) regular expressions, which the regex
        // crate implements; an uncompilable pattern is not enforced.
        if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
            if regex::Regex::new(p).is_ok_and(|re| !re.is_match(s)) {
                out.causes.push(cause(
                    "FieldValueInvalid",
                    path,
                    format!(
                        "Invalid value: {}: {path} in body should match '{p}'",
                        short(v)
                    ),
                ));
            }
        }
        if let Some(f) = schema.get("format").and_then(Value::as_str) {
            if !string_format_ok(f, s) {
                out.causes.push(cause(
                    "FieldValueInvalid",
                    path,
                    format!(
                        "Invalid value: {}: {path} in body must be of type {f}: {}",
                        short(v),
                        short(v)
                    ),
                ));
            }
        }
    }
    if let (Some(f), Some(n)) = (schema.get("format").and_then(Value::as_str), v.as_i64()) {
        let fits = match f {
            "int32" => i32::try_from(n).is_ok(),
            _ => true,
        };
        if !fits || (f == "int64" && v.as_u64().is_some_and(|u| u > i64::MAX as u64)) {
            out.causes.push(cause(
                "FieldValueInvalid",
                path,
                format!("Invalid value: {n}: {path} in body must be of type {f}"),
            ));
        }
    }
    if let Some(a) = v.as_array() {
        let n = a.len() as f64;
        if num("minItems").is_some_and(|m| n < m) {
            out.causes.push(cause(
                "FieldValueInvalid",
                path,
                format!(
                    "Invalid value: {n}: {path} in body should have at least {} items",
                    num("minItems").unwrap_or(0.0)
                ),
            ));
        }
        if num("maxItems").is_some_and(|m| n > m) {
            out.causes.push(cause(
                "FieldValueTooMany",
                path,
                format!(
                    "Too many: {n}: must have at most {} items",
                    num("maxItems").unwrap_or(0.0)
                ),
            ));
        }
    }
}

fn drop_nulls_and_default(
    map: &mut Map<String, Value>,
    schema: &Value,
    path: &str,
    out: &mut Outcome,
) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (k, sub) in props {
        let nullable = sub.get("nullable").and_then(Value::as_bool) == Some(true);
        if map.get(k) == Some(&Value::Null) && !nullable {
            map.remove(k);
        }
        if !map.contains_key(k) {
            if let Some(d) = sub.get("default") {
                let mut d = d.clone();
                walk(&mut d, sub, &join(path, k), 1, out);
                map.insert(k.clone(), d);
            }
        }
    }
}

fn required(map: &Map<String, Value>, schema: &Value, path: &str, out: &mut Outcome) {
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for r in req.iter().filter_map(Value::as_str) {
            if !map.contains_key(r) {
                out.causes.push(cause(
                    "FieldValueRequired",
                    &join(path, r),
                    "Required value".into(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["pools"], "properties": {
                "pools": {"type": "array", "items": {"type": "object", "properties": {
                    "type": {"type": "string", "enum": ["stripe", "mirror"]},
                    "size": {"x-kubernetes-int-or-string": true},
                    "n": {"type": "integer", "minimum": 1, "default": 3}}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
            "status": {"type": "object", "properties": {"phase": {"type": "string"}}}}})
    }

    #[test]
    fn bad_enum_and_missing_required_name_the_field() {
        let mut o = json!({"spec": {"pools": [{"type": "raid9"}]}});
        let out = apply(&mut o, &schema());
        assert_eq!(out.causes.len(), 1);
        assert_eq!(out.causes[0].field, "spec.pools[0].type");
        assert!(out.causes[0]
            .message
            .contains("supported values: \"stripe\", \"mirror\""));
        let mut o = json!({"spec": {}});
        let out = apply(&mut o, &schema());
        assert_eq!(out.causes[0].field, "spec.pools");
        assert_eq!(out.causes[0].reason, "FieldValueRequired");
    }

    #[test]
    fn unknown_fields_are_pruned_and_defaults_applied() {
        let mut o = json!({"spec": {"pools": [{"type": "mirror", "bogus": 1, "size": "10Gi"}], "free": {"x": 1}}, "extra": 2});
        let out = apply(&mut o, &schema());
        assert!(out.causes.is_empty(), "{:?}", out.causes);
        assert_eq!(
            out.unknown,
            vec!["extra".to_string(), "spec.pools[0].bogus".to_string()]
        );
        assert_eq!(o["spec"]["pools"][0]["n"], 3);
        assert_eq!(o["spec"]["free"]["x"], 1);
        assert!(o.get("extra").is_none());
    }

    #[test]
    fn long_multibyte_values_are_shortened_without_panicking() {
        let v = Value::String("é".repeat(200));
        assert!(short(&v).ends_with("..."));
    }

    #[test]
    fn nulls_are_pruned_or_kept_when_nullable() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "a": {"type": "string"}, "b": {"type": "string", "nullable": true}}}}});
        let mut o = json!({"spec": {"a": null, "b": null}});
        let out = apply(&mut o, &schema);
        assert!(out.causes.is_empty(), "{:?}", out.causes);
        assert_eq!(o, json!({"spec": {"b": null}}));
    }

    #[test]
    fn wrong_type_and_bounds_are_invalid() {
        let mut o = json!({"spec": {"pools": [{"n": 0, "size": true}]}});
        let out = apply(&mut o, &schema());
        let fields: Vec<&str> = out.causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.pools[0].n"));
        assert!(fields.contains(&"spec.pools[0].size"));
    }
}

/// The string formats kube-apiserver checks (k8s.io/kube-openapi's strfmt registry, the
/// ones CRDs use); unknown formats pass, as there.
fn string_format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" | "datetime" => crate::time::parse_rfc3339(s).is_some(),
        "date" => {
            let b = s.as_bytes();
            b.len() == 10
                && b[4] == b'-'
                && b[7] == b'-'
                && crate::time::parse_rfc3339(&format!("{s}T00:00:00Z")).is_some()
        }
        "byte" => crate::tls::base64_decode(s).is_some() && s.len().is_multiple_of(4),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok()
        }),
        "uuid" => uuid::Uuid::try_parse(s).is_ok() && s.len() == 36,
        "hostname" => {
            !s.is_empty()
                && s.len() <= 253
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
        }
        _ => true,
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pattern_and_format_are_enforced() {
        let schema = json!({"type": "object", "properties": {
            "interval": {"type": "string", "pattern": "^[0-9]+(s|m)$"},
            "at": {"type": "string", "format": "date-time"},
            "n": {"type": "integer", "format": "int32"},
            "ip": {"type": "string", "format": "ipv4"},
        }});
        let mut good =
            json!({"interval": "30s", "at": "2026-01-01T00:00:00Z", "n": 5, "ip": "10.0.0.1"});
        assert!(apply(&mut good, &schema).causes.is_empty());
        let mut bad = json!({"interval": "thirty", "at": "yesterday", "n": 5_000_000_000_i64, "ip": "10.0.0"});
        let causes = apply(&mut bad, &schema).causes;
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(causes.len(), 4, "{fields:?}");
        assert!(causes
            .iter()
            .any(|c| c.message.contains("should match '^[0-9]+(s|m)$'")));
        assert!(causes
            .iter()
            .any(|c| c.message.contains("must be of type date-time")));
    }
}
