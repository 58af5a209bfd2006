//! Discovery documents (legacy `/api`, `/apis`, group-version resource lists, and the
//! aggregated `apidiscovery.k8s.io/v2` form kubectl 1.32 asks for) and the OpenAPI v2
//! and v3 documents built from the served types' schemas.

use serde_json::{json, Map, Value};

use crate::registry::{Registry, ResourceType};

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn scope(rt: &ResourceType) -> &'static str {
    if rt.namespaced {
        "Namespaced"
    } else {
        "Cluster"
    }
}

/// `/api`.
pub(crate) fn api_versions(addr: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
           "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}]})
}

fn preferred(versions: &[String]) -> &str {
    versions.first().map_or("v1", String::as_str)
}

/// `/apis`.
pub(crate) fn api_group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
            json!({"name": g, "versions": versions,
                   "preferredVersion": {"groupVersion": format!("{g}/{}", preferred(vs)), "version": preferred(vs)}})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`.
pub(crate) fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    let vs = reg.groups().get(group)?.clone();
    let versions: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    Some(
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions,
                "preferredVersion": {"groupVersion": format!("{group}/{}", preferred(&vs)), "version": preferred(&vs)}}),
    )
}

fn types_in<'a>(
    reg: &'a Registry,
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'a std::sync::Arc<ResourceType>> {
    reg.types
        .iter()
        .filter(move |t| t.group == group && t.versions.iter().any(|v| v == version))
}

/// Verbs of a type: reviews are only created (and never stored).
fn verbs(t: &ResourceType) -> Value {
    if t.special == crate::registry::Special::AccessReview {
        json!(["create"])
    } else {
        json!(VERBS)
    }
}

/// `/api/v1` or `/apis/{group}/{version}`.
pub(crate) fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut resources = Vec::new();
    for t in types_in(reg, group, version) {
        let mut r = json!({"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
                           "kind": t.kind, "verbs": verbs(t)});
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.has_status {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                                  "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2` APIGroupDiscoveryList) for the core
/// group (`legacy`) or every named group.
pub(crate) fn aggregated(reg: &Registry, legacy: bool, api_version: &str) -> Value {
    let mut items = Vec::new();
    for (g, vs) in reg.groups() {
        if g.is_empty() != legacy {
            continue;
        }
        let versions: Vec<Value> = vs
            .iter()
            .map(|v| {
                let resources: Vec<Value> = types_in(reg, &g, v)
                    .map(|t| {
                        let kind = json!({"group": t.group, "version": v, "kind": t.kind});
                        let mut r = json!({"resource": t.plural, "responseKind": kind, "scope": scope(t),
                                           "singularResource": t.singular, "verbs": verbs(t)});
                        if !t.short_names.is_empty() {
                            r["shortNames"] = json!(t.short_names);
                        }
                        if !t.categories.is_empty() {
                            r["categories"] = json!(t.categories);
                        }
                        if t.has_status {
                            r["subresources"] = json!([{"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}]);
                        }
                        r
                    })
                    .collect();
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        items.push(
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions}),
        );
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {}, "items": items})
}

fn reverse_group(group: &str) -> String {
    if group.is_empty() {
        return "io.k8s.api.core".into();
    }
    let mut parts: Vec<&str> = group.split('.').collect();
    parts.reverse();
    parts.join(".")
}

fn schema_name(t: &ResourceType, version: &str) -> String {
    format!("{}.{version}.{}", reverse_group(&t.group), t.kind)
}

fn object_meta_schema() -> Value {
    json!({"description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "type": "object", "properties": {
        "name": {"type": "string", "description": "Name must be unique within a namespace."},
        "generateName": {"type": "string", "description": "Optional prefix used by the server to generate a unique name."},
        "namespace": {"type": "string", "description": "Namespace defines the space within which each name must be unique."},
        "uid": {"type": "string", "description": "UID is the unique in time and space value for this object."},
        "resourceVersion": {"type": "string", "description": "An opaque value that represents the internal version of this object."},
        "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state."},
        "creationTimestamp": {"type": "string", "format": "date-time", "description": "Time when this object was created."},
        "deletionTimestamp": {"type": "string", "format": "date-time", "description": "Time at which this resource will be deleted."},
        "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Map of string keys and values that can be used to organize and categorize objects."},
        "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Annotations is an unstructured key value map."},
        "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "x-kubernetes-list-type": "set", "x-kubernetes-patch-strategy": "merge", "description": "Must be empty before the object is deleted from the registry."},
        "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "x-kubernetes-patch-merge-key": "uid", "x-kubernetes-patch-strategy": "merge"},
        "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}})
}

fn kind_schema(t: &ResourceType, version: &str) -> Value {
    let mut s = t
        .schema(version)
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    if !s.is_object() {
        s = json!({"type": "object"});
    }
    if !s["properties"].is_object() {
        s["properties"] = json!({});
    }
    s["properties"]["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
    s["properties"]["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
    s["properties"]["metadata"] = json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "default": {}});
    s["x-kubernetes-group-version-kind"] =
        json!([{"group": t.group, "version": version, "kind": t.kind}]);
    s
}

fn path_item(t: &ResourceType, version: &str, item: bool) -> Value {
    let gvk = json!({"group": t.group, "version": version, "kind": t.kind});
    let reference = json!({"$ref": format!("#/components/schemas/{}", schema_name(t, version))});
    let body = json!({"schema": reference});
    let mut params =
        vec![json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}})];
    if t.namespaced {
        params.push(json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}}));
    }
    let q = |n: &str| json!({"name": n, "in": "query", "schema": {"type": "string"}, "uniqueItems": true});
    let write_params = vec![q("dryRun"), q("fieldManager"), q("fieldValidation")];
    let op = |action: &str, content: Value| {
        json!({"operationId": format!("{action}{}", t.kind), "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
               "parameters": write_params, "requestBody": {"content": content, "required": true},
               "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}}})
    };
    if item {
        json!({"parameters": params,
               "get": {"operationId": format!("read{}", t.kind), "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk,
                       "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}}},
               "put": op("put", json!({"application/json": body})),
               "patch": op("patch", json!({"application/json-patch+json": body, "application/merge-patch+json": body, "application/apply-patch+yaml": body})),
               "delete": {"operationId": format!("delete{}", t.kind), "x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk,
                          "responses": {"200": {"description": "OK"}}}})
    } else {
        json!({"post": op("post", json!({"application/json": body}))})
    }
}

/// `/openapi/v3/{api/v1 | apis/g/v}`.
pub(crate) fn openapi_v3_gv(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into(),
        object_meta_schema(),
    );
    let base = if group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut any = false;
    for t in types_in(reg, group, version) {
        any = true;
        let coll = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", t.plural)
        } else {
            format!("{base}/{}", t.plural)
        };
        paths.insert(coll.clone(), path_item(t, version, false));
        paths.insert(format!("{coll}/{{name}}"), path_item(t, version, true));
        schemas.insert(schema_name(t, version), kind_schema(t, version));
    }
    if !any {
        return None;
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
                "paths": paths, "components": {"schemas": schemas}}),
    )
}

/// `/openapi/v3`: the index of group-version documents.
pub(crate) fn openapi_v3_root(reg: &Registry, hash: &str) -> Value {
    let mut paths = Map::new();
    for (g, vs) in reg.groups() {
        for v in vs {
            let p = if g.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{g}/{v}")
            };
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v2` (JSON): every served kind's schema as a Swagger 2.0 definition.
pub(crate) fn openapi_v2(reg: &Registry) -> Value {
    let mut defs = Map::new();
    let mut meta = object_meta_schema();
    if let Some(m) = meta.as_object_mut() {
        m.remove("default");
    }
    defs.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into(),
        meta,
    );
    for t in &reg.types {
        for v in &t.versions {
            let mut s = kind_schema(t, v);
            s["properties"]["metadata"] =
                json!({"$ref": "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"});
            defs.insert(schema_name(t, v), s);
        }
    }
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": {}, "definitions": defs})
}
