//! Server-side Table output (`meta.k8s.io/v1` Table) for `kubectl get`: NAME, then the
//! type's printer columns (priority > 0 columns are shown by kubectl only with `-o
//! wide`), date columns rendered as ages like kube-apiserver does.

use serde_json::{json, Value};

use crate::jsonpath;
use crate::registry::{Column, ResourceType};
use crate::time;

fn column_def(c: &Column) -> Value {
    json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority})
}

/// A Table of `objects` (external form). `include_object` is kubectl's
/// `includeObject` (None: PartialObjectMetadata, Object: the whole object).
pub(crate) fn table(
    rt: &ResourceType,
    version: &str,
    objects: &[Value],
    include_object: &str,
    resource_version: u64,
    cont: Option<&str>,
) -> Value {
    let cols = rt.columns(version);
    let mut defs = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names", "priority": 0})];
    defs.extend(cols.iter().map(column_def));
    let now = time::now_secs();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| row(rt, &cols, o, include_object, now))
        .collect();
    let mut meta = json!({"resourceVersion": resource_version.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}

/// One row (also used for each watch event of a Table watch).
pub(crate) fn row(
    rt: &ResourceType,
    cols: &[Column],
    o: &Value,
    include_object: &str,
    now: i64,
) -> Value {
    let mut name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
    if rt.kind == "StorageClass"
        && o["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"].as_str()
            == Some("true")
    {
        name.push_str(" (default)");
    }
    let mut cells = vec![json!(name)];
    for c in cols {
        cells.push(cell(c, o, now));
    }
    let object = match include_object {
        "Object" => o.clone(),
        "None" => Value::Null,
        _ => {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"].clone()})
        }
    };
    json!({"cells": cells, "object": object})
}

fn cell(c: &Column, o: &Value, now: i64) -> Value {
    if let Some(special) = c.path.strip_prefix('#') {
        return computed(special, o, now);
    }
    let vals = jsonpath::eval(&c.path, o);
    let Some(first) = vals.first() else {
        return Value::Null;
    };
    match c.type_.as_str() {
        "date" => first
            .as_str()
            .and_then(time::parse_rfc3339)
            .map_or(Value::Null, |t| json!(time::short_age(now - t))),
        "integer" | "number" | "boolean" if vals.len() == 1 => (*first).clone(),
        _ => {
            if vals.len() == 1 {
                match first {
                    Value::String(_) | Value::Number(_) | Value::Bool(_) => (*first).clone(),
                    other => json!(other.to_string()),
                }
            } else {
                json!(vals
                    .iter()
                    .map(|v| jsonpath::scalar_text(v))
                    .collect::<Vec<_>>()
                    .join(","))
            }
        }
    }
}

fn abbreviate_modes(modes: &Value) -> Value {
    let Some(a) = modes.as_array() else {
        return json!("");
    };
    let s: Vec<&str> = a
        .iter()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect();
    json!(s.join(","))
}

fn computed(name: &str, o: &Value, now: i64) -> Value {
    let none = || json!("<none>");
    match name {
        "data-count" => json!(
            o["data"].as_object().map_or(0, |m| m.len())
                + o["binaryData"].as_object().map_or(0, |m| m.len())
        ),
        "secrets-count" => json!(o["secrets"].as_array().map_or(0, Vec::len)),
        "access-modes-status" => abbreviate_modes(&o["status"]["accessModes"]),
        "access-modes-spec" => abbreviate_modes(&o["spec"]["accessModes"]),
        "vac" => o["spec"]["volumeAttributesClassName"]
            .as_str()
            .map_or_else(|| json!("<unset>"), |s| json!(s)),
        "pv-claim" => match (
            o["spec"]["claimRef"]["namespace"].as_str(),
            o["spec"]["claimRef"]["name"].as_str(),
        ) {
            (Some(ns), Some(n)) => json!(format!("{ns}/{n}")),
            _ => json!(""),
        },
        "sc-reclaim" => json!(o["reclaimPolicy"].as_str().unwrap_or("Delete")),
        "sc-binding" => json!(o["volumeBindingMode"].as_str().unwrap_or("Immediate")),
        "sc-expansion" => json!(o["allowVolumeExpansion"]
            .as_bool()
            .unwrap_or(false)
            .to_string()),
        "created-at" => o["metadata"]["creationTimestamp"].clone(),
        "node-status" => {
            let ready = o["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|x| x["type"] == "Ready"))
                .map(|x| x["status"] == "True");
            json!(match ready {
                Some(true) => "Ready",
                Some(false) | None => "NotReady",
            })
        }
        "node-roles" => {
            let roles: Vec<String> = o["metadata"]["labels"]
                .as_object()
                .map(|m| {
                    m.keys()
                        .filter_map(|k| {
                            k.strip_prefix("node-role.kubernetes.io/")
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            if roles.is_empty() {
                none()
            } else {
                json!(roles.join(","))
            }
        }
        "node-internal-ip" => o["status"]["addresses"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
            .map_or_else(none, |x| x["address"].clone()),
        "event-last-seen" => {
            let t = ["lastTimestamp", "deprecatedLastTimestamp", "eventTime"]
                .iter()
                .find_map(|f| o[*f].as_str().and_then(time::parse_rfc3339))
                .or_else(|| {
                    o["metadata"]["creationTimestamp"]
                        .as_str()
                        .and_then(time::parse_rfc3339)
                });
            t.map_or_else(|| json!("<unknown>"), |t| json!(time::short_age(now - t)))
        }
        "event-object" => {
            let r = if o.get("regarding").is_some() {
                &o["regarding"]
            } else {
                &o["involvedObject"]
            };
            json!(format!(
                "{}/{}",
                r["kind"].as_str().unwrap_or("").to_lowercase(),
                r["name"].as_str().unwrap_or("")
            ))
        }
        "quota-request" | "quota-limit" => {
            let hard = o["status"]["hard"]
                .as_object()
                .or(o["spec"]["hard"].as_object());
            let used = &o["status"]["used"];
            let want_limit = name == "quota-limit";
            let parts: Vec<String> = hard
                .map(|h| {
                    h.iter()
                        .filter(|(k, _)| k.starts_with("limits.") == want_limit)
                        .map(|(k, v)| {
                            format!(
                                "{k}: {}/{}",
                                used[k].as_str().unwrap_or("0"),
                                jsonpath::scalar_text(v)
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!(parts.join(", "))
        }
        "pod-ready" => {
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = o["status"]["containerStatuses"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|c| c["ready"] == true).count());
            json!(format!("{ready}/{total}"))
        }
        "pod-status" => json!(o["status"]["phase"].as_str().unwrap_or("Pending")),
        "pod-restarts" => json!(o["status"]["containerStatuses"]
            .as_array()
            .map_or(0, |a| a
                .iter()
                .filter_map(|c| c["restartCount"].as_i64())
                .sum::<i64>())
            .to_string()),
        "sts-ready" => json!(format!(
            "{}/{}",
            o["status"]["readyReplicas"].as_i64().unwrap_or(0),
            o["spec"]["replicas"].as_i64().unwrap_or(1)
        )),
        "containers" | "images" => {
            let field = if name == "containers" {
                "name"
            } else {
                "image"
            };
            let v: Vec<&str> = o["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c[field].as_str()).collect())
                .unwrap_or_default();
            json!(v.join(","))
        }
        "csidriver-modes" => join_or_none(&o["spec"]["volumeLifecycleModes"], |m| {
            m.as_str().map(str::to_string)
        }),
        "csinode-drivers" => json!(o["spec"]["drivers"].as_array().map_or(0, Vec::len)),
        "service-external-ip" => join_or_none(&o["spec"]["externalIPs"], |m| {
            m.as_str().map(str::to_string)
        }),
        "service-ports" => join_or_none(&o["spec"]["ports"], |p| {
            let port = p["port"].as_i64()?;
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            Some(match p["nodePort"].as_i64() {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            })
        }),
        "service-selector" => match o["spec"]["selector"].as_object() {
            Some(m) if !m.is_empty() => json!(m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")),
            _ => none(),
        },
        "endpoints" => {
            let mut out = Vec::new();
            for sub in o["subsets"].as_array().into_iter().flatten() {
                let ports: Vec<i64> = sub["ports"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p["port"].as_i64()).collect())
                    .unwrap_or_default();
                for a in sub["addresses"].as_array().into_iter().flatten() {
                    let ip = a["ip"].as_str().unwrap_or("");
                    if ports.is_empty() {
                        out.push(ip.to_string());
                    }
                    out.extend(ports.iter().map(|p| format!("{ip}:{p}")));
                }
            }
            if out.is_empty() {
                none()
            } else {
                json!(out.join(","))
            }
        }
        "endpointslice-ports" => {
            join_or_none(&o["ports"], |p| p["port"].as_i64().map(|p| p.to_string()))
        }
        "endpointslice-endpoints" => join_or_none(&o["endpoints"], |e| {
            e["addresses"].as_array().map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
        }),
        _ => Value::Null,
    }
}

/// Items of a list field, rendered and joined with commas; `<none>` when empty.
fn join_or_none(list: &Value, item: impl Fn(&Value) -> Option<String>) -> Value {
    let parts: Vec<String> = list
        .as_array()
        .map(|a| a.iter().filter_map(&item).collect())
        .unwrap_or_default();
    if parts.is_empty() {
        json!("<none>")
    } else {
        json!(parts.join(","))
    }
}
