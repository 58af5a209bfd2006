//! Validation of objects against a CRD's structural OpenAPI v3 schema, as kube-apiserver
//! does before storing a custom resource: types, required fields, enums, bounds, and
//! fields the schema does not declare. Pure functions over `serde_json::Value`, shared by
//! the API server (422 replies, pruning) and the tests that hold the seeds' YAML against
//! our CRDs.
//!
//! Invariants: the walk is bounded ([`crate::limits::SCHEMA_DEPTH_MAX`] levels,
//! [`crate::limits::FIELD_ERRORS_MAX`] errors), so hostile input cannot exhaust the stack;
//! `apiVersion`, `kind` and `metadata` at the root are left to the caller (Kubernetes
//! validates object metadata by its own rules, not by the CRD schema).
//!
//! Not implemented: `pattern` (no regex engine in this crate; cstor's schemas have none),
//! `format` beyond accepting strings, CEL `x-kubernetes-validations` (cstor's schemas have
//! none), list-type/map-type uniqueness.

use crate::field::{render_value, FieldError, FieldErrorKind, FieldPath};
use crate::limits::{FIELD_ERRORS_MAX, SCHEMA_DEPTH_MAX};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

/// The OpenAPI schema of `version` in `crd`, if that version is defined with a schema.
pub fn version_schema<'a>(
    crd: &'a CustomResourceDefinition,
    version: &str,
) -> Option<&'a JSONSchemaProps> {
    crd.spec
        .versions
        .iter()
        .find(|v| v.name == version)
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
}

/// Validates a whole object (with `apiVersion`, `kind`, `metadata`) against the root
/// schema of its CRD version. Returns every error found, up to
/// [`FIELD_ERRORS_MAX`]; fields unknown to the schema are reported as
/// [`FieldErrorKind::Unknown`] so the caller can reject them (strict) or prune them.
pub fn validate_object(schema: &JSONSchemaProps, object: &Value) -> Vec<FieldError> {
    let mut walk = Walk { errors: Vec::new() };
    match object {
        Value::Object(map) => {
            let root = FieldPath::root();
            walk.required(schema, map, &root);
            for (key, value) in map {
                if is_root_meta(key) {
                    continue;
                }
                walk.property(schema, key, value, &root, 1);
            }
        }
        other => walk.type_invalid(&FieldPath::root(), other, "object"),
    }
    walk.errors
}

/// Validates one value against one schema node; `path` names the value in messages.
pub fn validate_value(
    schema: &JSONSchemaProps,
    value: &Value,
    path: &FieldPath,
) -> Vec<FieldError> {
    let mut walk = Walk { errors: Vec::new() };
    walk.value(schema, value, path, 0);
    walk.errors
}

/// Removes fields the schema does not declare (kube-apiserver's pruning), leaving
/// `apiVersion`, `kind` and `metadata` at the root alone. Returns the paths removed.
pub fn prune_unknown_fields(schema: &JSONSchemaProps, object: &mut Value) -> Vec<FieldPath> {
    let mut removed = Vec::new();
    if let Value::Object(map) = object {
        let root = FieldPath::root();
        let keys: Vec<String> = map.keys().cloned().collect();
        for key in keys {
            if is_root_meta(&key) {
                continue;
            }
            match schema.properties.as_ref().and_then(|p| p.get(&key)) {
                Some(child) => {
                    if let Some(v) = map.get_mut(&key) {
                        prune(child, v, &root.child(&key), &mut removed, 1);
                    }
                }
                None if preserves_unknown(schema) => {}
                None => {
                    map.remove(&key);
                    removed.push(root.child(&key));
                }
            }
        }
    }
    removed
}

fn is_root_meta(key: &str) -> bool {
    matches!(key, "apiVersion" | "kind" | "metadata")
}

fn preserves_unknown(schema: &JSONSchemaProps) -> bool {
    schema.x_kubernetes_preserve_unknown_fields == Some(true)
}

fn prune(
    schema: &JSONSchemaProps,
    value: &mut Value,
    path: &FieldPath,
    removed: &mut Vec<FieldPath>,
    depth: usize,
) {
    if depth > SCHEMA_DEPTH_MAX {
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(props) = &schema.properties {
                let keys: Vec<String> = map.keys().cloned().collect();
                for key in keys {
                    match props.get(&key) {
                        Some(child) => {
                            if let Some(v) = map.get_mut(&key) {
                                prune(child, v, &path.child(&key), removed, depth + 1);
                            }
                        }
                        None if preserves_unknown(schema) => {}
                        None => {
                            map.remove(&key);
                            removed.push(path.child(&key));
                        }
                    }
                }
            } else if let Some(JSONSchemaPropsOrBool::Schema(child)) = &schema.additional_properties
            {
                for (key, v) in map.iter_mut() {
                    prune(child, v, &path.key(key), removed, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(child)) = &schema.items {
                for (i, v) in items.iter_mut().enumerate() {
                    prune(child, v, &path.index(i), removed, depth + 1);
                }
            }
        }
        _ => {}
    }
}

struct Walk {
    errors: Vec<FieldError>,
}

impl Walk {
    fn push(&mut self, error: FieldError) {
        if self.errors.len() < FIELD_ERRORS_MAX {
            self.errors.push(error);
        }
    }

    fn type_invalid(&mut self, path: &FieldPath, value: &Value, expected: &str) {
        self.push(FieldError {
            field: path.clone(),
            kind: FieldErrorKind::TypeInvalid {
                value: json_type(value).to_owned(),
                expected: expected.to_owned(),
            },
        });
    }

    fn required(
        &mut self,
        schema: &JSONSchemaProps,
        map: &serde_json::Map<String, Value>,
        path: &FieldPath,
    ) {
        for name in schema.required.iter().flatten() {
            if !map.contains_key(name) {
                self.push(FieldError::required(path.child(name), ""));
            }
        }
    }

    fn property(
        &mut self,
        parent: &JSONSchemaProps,
        key: &str,
        value: &Value,
        path: &FieldPath,
        depth: usize,
    ) {
        let child_path = path.child(key);
        match parent.properties.as_ref().and_then(|p| p.get(key)) {
            Some(child) => self.value(child, value, &child_path, depth),
            None => match &parent.additional_properties {
                Some(JSONSchemaPropsOrBool::Schema(child)) => {
                    self.value(child, value, &path.key(key), depth)
                }
                Some(JSONSchemaPropsOrBool::Bool(true)) => {}
                _ if preserves_unknown(parent) => {}
                _ => self.push(FieldError {
                    field: child_path,
                    kind: FieldErrorKind::Unknown,
                }),
            },
        }
    }

    fn value(&mut self, schema: &JSONSchemaProps, value: &Value, path: &FieldPath, depth: usize) {
        if self.errors.len() >= FIELD_ERRORS_MAX {
            return;
        }
        if depth > SCHEMA_DEPTH_MAX {
            self.push(FieldError::invalid(
                path.clone(),
                "(nested)",
                format!("nested deeper than {SCHEMA_DEPTH_MAX} levels"),
            ));
            return;
        }
        if value.is_null() {
            if schema.nullable != Some(true) {
                if let Some(t) = &schema.type_ {
                    self.type_invalid(path, value, t);
                }
            }
            return;
        }
        if schema.x_kubernetes_int_or_string == Some(true) {
            if !(value.is_string() || is_integer(value)) {
                self.type_invalid(path, value, "int-or-string");
                return;
            }
        } else if let Some(t) = schema.type_.as_deref() {
            if !type_matches(t, value) {
                self.type_invalid(path, value, t);
                return;
            }
        }
        self.enum_(schema, value, path);
        self.bounds(schema, value, path);
        self.combinators(schema, value, path, depth);
        match value {
            Value::Object(map) => {
                self.required(schema, map, path);
                if schema.properties.is_none() && schema.additional_properties.is_none() {
                    // A map with no declared fields is only valid when unknown fields are
                    // preserved; otherwise every field is unknown.
                    if !preserves_unknown(schema)
                        && schema.x_kubernetes_embedded_resource != Some(true)
                    {
                        for key in map.keys() {
                            self.push(FieldError {
                                field: path.child(key),
                                kind: FieldErrorKind::Unknown,
                            });
                        }
                    }
                    return;
                }
                for (key, v) in map {
                    self.property(schema, key, v, path, depth + 1);
                }
            }
            Value::Array(items) => match &schema.items {
                Some(JSONSchemaPropsOrArray::Schema(child)) => {
                    for (i, v) in items.iter().enumerate() {
                        self.value(child, v, &path.index(i), depth + 1);
                    }
                }
                Some(JSONSchemaPropsOrArray::Schemas(children)) => {
                    for (i, (child, v)) in children.iter().zip(items).enumerate() {
                        self.value(child, v, &path.index(i), depth + 1);
                    }
                }
                None => {}
            },
            _ => {}
        }
    }

    fn enum_(&mut self, schema: &JSONSchemaProps, value: &Value, path: &FieldPath) {
        let Some(allowed) = &schema.enum_ else { return };
        if allowed.iter().any(|a| &a.0 == value) {
            return;
        }
        let supported = allowed
            .iter()
            .filter(|a| !a.0.is_null())
            .map(|a| match &a.0 {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        self.push(FieldError {
            field: path.clone(),
            kind: FieldErrorKind::NotSupported {
                value: render_value(value),
                supported,
            },
        });
    }

    fn bounds(&mut self, schema: &JSONSchemaProps, value: &Value, path: &FieldPath) {
        match value {
            Value::Number(n) => {
                let Some(x) = n.as_f64() else { return };
                if let Some(min) = schema.minimum {
                    let exclusive = schema.exclusive_minimum == Some(true);
                    if x < min || (exclusive && x == min) {
                        let op = if exclusive {
                            "greater than"
                        } else {
                            "greater than or equal to"
                        };
                        self.push(FieldError::invalid(
                            path.clone(),
                            n.to_string(),
                            format!("{path} in body should be {op} {min}"),
                        ));
                    }
                }
                if let Some(max) = schema.maximum {
                    let exclusive = schema.exclusive_maximum == Some(true);
                    if x > max || (exclusive && x == max) {
                        let op = if exclusive {
                            "less than"
                        } else {
                            "less than or equal to"
                        };
                        self.push(FieldError::invalid(
                            path.clone(),
                            n.to_string(),
                            format!("{path} in body should be {op} {max}"),
                        ));
                    }
                }
            }
            Value::String(s) => {
                let len = i64::try_from(s.chars().count()).unwrap_or(i64::MAX);
                if let Some(min) = schema.min_length {
                    if len < min {
                        self.push(FieldError::invalid(
                            path.clone(),
                            render_value(value),
                            format!("{path} in body should be at least {min} chars long"),
                        ));
                    }
                }
                if let Some(max) = schema.max_length {
                    if len > max {
                        self.push(FieldError::invalid(
                            path.clone(),
                            render_value(value),
                            format!("{path} in body may not be longer than {max}"),
                        ));
                    }
                }
            }
            Value::Array(items) => {
                let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
                if let Some(min) = schema.min_items {
                    if len < min {
                        self.push(FieldError::invalid(
                            path.clone(),
                            len.to_string(),
                            format!("{path} in body should have at least {min} items"),
                        ));
                    }
                }
                if let Some(max) = schema.max_items {
                    if len > max {
                        self.push(FieldError::too_many(
                            path.clone(),
                            items.len(),
                            usize::try_from(max).unwrap_or(0),
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    fn combinators(
        &mut self,
        schema: &JSONSchemaProps,
        value: &Value,
        path: &FieldPath,
        depth: usize,
    ) {
        // Structural schemas use these only to add value checks on top of the declared
        // type; a branch's unknown-field reports are not meaningful on their own, so only
        // type, enum and bound errors decide whether a branch matches.
        let passes = |s: &JSONSchemaProps| {
            validate_value(&without_fields(s), value, path).is_empty() || depth > SCHEMA_DEPTH_MAX
        };
        if let Some(all) = &schema.all_of {
            for s in all {
                if !passes(s) {
                    self.push(FieldError::invalid(
                        path.clone(),
                        render_value(value),
                        "does not match every allOf schema",
                    ));
                }
            }
        }
        if let Some(any) = &schema.any_of {
            if !any.iter().any(passes) {
                self.push(FieldError::invalid(
                    path.clone(),
                    render_value(value),
                    "does not match any anyOf schema",
                ));
            }
        }
        if let Some(one) = &schema.one_of {
            if one.iter().filter(|s| passes(s)).count() != 1 {
                self.push(FieldError::invalid(
                    path.clone(),
                    render_value(value),
                    "must match exactly one oneOf schema",
                ));
            }
        }
    }
}

/// A schema node reduced to its value checks (no properties/items), for combinator
/// branches.
fn without_fields(schema: &JSONSchemaProps) -> JSONSchemaProps {
    JSONSchemaProps {
        type_: schema.type_.clone(),
        enum_: schema.enum_.clone(),
        minimum: schema.minimum,
        maximum: schema.maximum,
        exclusive_minimum: schema.exclusive_minimum,
        exclusive_maximum: schema.exclusive_maximum,
        min_length: schema.min_length,
        max_length: schema.max_length,
        min_items: schema.min_items,
        max_items: schema.max_items,
        nullable: schema.nullable,
        x_kubernetes_int_or_string: schema.x_kubernetes_int_or_string,
        x_kubernetes_preserve_unknown_fields: Some(true),
        ..JSONSchemaProps::default()
    }
}

fn is_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_i64() || n.is_u64(),
        _ => false,
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => is_integer(value),
        "number" => value.is_number(),
        _ => true,
    }
}

/// The JSON type name kube-apiserver reports for a value.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    //! The validator against the real cstor CRDs: each kind of error comes out with the
    //! field path and wording kube-apiserver uses, and valid objects pass.

    use super::*;
    use crate::field::invalid_message;
    use serde_json::json;

    fn cspc_schema() -> JSONSchemaProps {
        let crd = crate::crds()
            .into_iter()
            .find(|c| c.metadata.name.as_deref() == Some("cstorpoolclusters.cstor.openebs.io"))
            .unwrap();
        version_schema(&crd, "v1").unwrap().clone()
    }

    fn cspc(pool_config: Value) -> Value {
        json!({
            "apiVersion": "cstor.openebs.io/v1",
            "kind": "CStorPoolCluster",
            "metadata": {"name": "p", "namespace": "openebs", "labels": {"a": "b"}},
            "spec": {"pools": [{
                "nodeSelector": {"kubernetes.io/hostname": "worker-01"},
                "dataRaidGroups": [{"blockDevices": [{"blockDeviceName": "bd-1"}]}],
                "poolConfig": pool_config,
            }]},
        })
    }

    #[test]
    fn valid_object_passes() {
        let errors = validate_object(
            &cspc_schema(),
            &cspc(
                json!({"dataRaidGroupType": "stripe", "compression": "lz4", "roThresholdLimit": 85}),
            ),
        );
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn bad_enum_value_names_field_and_supported_values() {
        let errors = validate_object(
            &cspc_schema(),
            &cspc(json!({"dataRaidGroupType": "striped"})),
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].reason(), "FieldValueNotSupported");
        assert_eq!(
            errors[0].to_string(),
            r#"spec.pools[0].poolConfig.dataRaidGroupType: Unsupported value: "striped": supported values: "stripe", "mirror", "raidz", "raidz2""#
        );
        assert_eq!(
            invalid_message("CStorPoolCluster", "cstor.openebs.io", "p", &errors),
            r#"CStorPoolCluster.cstor.openebs.io "p" is invalid: spec.pools[0].poolConfig.dataRaidGroupType: Unsupported value: "striped": supported values: "stripe", "mirror", "raidz", "raidz2""#
        );
    }

    #[test]
    fn missing_required_field_is_reported_at_its_path() {
        let errors = validate_object(&cspc_schema(), &cspc(json!({"compression": "off"})));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].reason(), "FieldValueRequired");
        assert_eq!(
            errors[0].to_string(),
            "spec.pools[0].poolConfig.dataRaidGroupType: Required value"
        );
        let errors = validate_object(
            &cspc_schema(),
            &json!({"apiVersion": "cstor.openebs.io/v1", "kind": "CStorPoolCluster", "metadata": {}}),
        );
        assert_eq!(errors[0].to_string(), "spec: Required value");
    }

    #[test]
    fn wrong_type_bounds_and_unknown_fields_are_reported() {
        let errors = validate_object(
            &cspc_schema(),
            &cspc(
                json!({"dataRaidGroupType": "stripe", "roThresholdLimit": "85", "thickProvision": true, "bogus": 1}),
            ),
        );
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                r#"unknown field "spec.pools[0].poolConfig.bogus""#,
                r#"spec.pools[0].poolConfig.roThresholdLimit: Invalid value: "string": spec.pools[0].poolConfig.roThresholdLimit in body must be of type integer: "string""#,
            ]
        );
        let errors = validate_object(
            &cspc_schema(),
            &cspc(json!({"dataRaidGroupType": "stripe", "roThresholdLimit": 101})),
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            "spec.pools[0].poolConfig.roThresholdLimit: Invalid value: 101: spec.pools[0].poolConfig.roThresholdLimit in body should be less than or equal to 100"
        );
    }

    #[test]
    fn quantities_are_int_or_string_and_optional_fields_may_be_null() {
        let mut object = cspc(
            json!({"dataRaidGroupType": "stripe", "resources": {"requests": {"memory": "1Gi", "cpu": 2}}, "tolerations": null}),
        );
        assert!(validate_object(&cspc_schema(), &object).is_empty());
        object["spec"]["pools"][0]["poolConfig"]["resources"]["requests"]["cpu"] = json!(true);
        let errors = validate_object(&cspc_schema(), &object);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].field.as_str(),
            "spec.pools[0].poolConfig.resources.requests[cpu]"
        );
    }

    #[test]
    fn prune_removes_only_undeclared_fields() {
        let mut object = cspc(json!({"dataRaidGroupType": "stripe", "bogus": 1}));
        object["spec"]["extra"] = json!({"x": 1});
        object["status"] = json!({"healthyInstances": 1, "made": "up"});
        let removed = prune_unknown_fields(&cspc_schema(), &mut object);
        let removed: Vec<&str> = removed.iter().map(FieldPath::as_str).collect();
        assert_eq!(
            removed,
            [
                "spec.extra",
                "spec.pools[0].poolConfig.bogus",
                "status.made"
            ]
        );
        assert!(validate_object(&cspc_schema(), &object).is_empty());
        assert_eq!(object["metadata"]["labels"]["a"], "b");
        assert_eq!(object["status"]["healthyInstances"], 1);
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused_not_recursed() {
        // Only a user-supplied CRD can nest this deep; the walk must stop at the limit.
        let levels = SCHEMA_DEPTH_MAX + 10;
        let mut schema = JSONSchemaProps {
            type_: Some("integer".into()),
            ..Default::default()
        };
        let mut value = json!(1);
        for _ in 0..levels {
            schema = JSONSchemaProps {
                type_: Some("object".into()),
                properties: Some([("x".to_owned(), schema)].into()),
                ..Default::default()
            };
            value = json!({ "x": value });
        }
        let errors = validate_value(&schema, &value, &FieldPath::new("spec"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains("nested deeper than"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn non_object_root_is_a_type_error() {
        let errors = validate_object(&cspc_schema(), &json!([1, 2]));
        assert_eq!(errors[0].reason(), "FieldValueTypeInvalid");
    }
}
