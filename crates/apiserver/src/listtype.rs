//! The topology server-side apply merges and tracks by: for each list whether it is
//! atomic, a set or a map keyed by some fields, and for each map whether it is atomic.
//!
//! A custom resource takes it from its OpenAPI schema (`x-kubernetes-list-type`,
//! `x-kubernetes-list-map-keys`, `x-kubernetes-map-type`, with key defaults from the
//! key fields' `default`), as kube-apiserver does; `metadata` is always ObjectMeta. A
//! built-in kind takes it from a table of the `+listType`/`+listMapKey` markers of the
//! Kubernetes types (containers by name, container ports by containerPort and protocol,
//! Service ports by port and protocol, conditions by type, ...). Anything else, and every
//! field outside a schema, is an atomic list and a granular map. Never: does IO.

use serde_json::{Map, Value};

/// How a list merges and is owned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ListType {
    /// Replaced whole, owned as one field.
    Atomic,
    /// Scalars merged as a set, each owned as `v:<value>`.
    Set,
    /// Objects identified by key fields, each owned as `k:{...}`; a key field an element
    /// omits takes the default, if it has one.
    Map(Vec<MapKey>),
}

/// One key field of a map list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MapKey {
    pub(crate) name: String,
    pub(crate) default: Option<Value>,
}

/// Where a value sits in its object, for finding the type of the lists and maps in it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Node<'a> {
    /// Inside a built-in kind (or ObjectMeta); lists are typed by their path.
    Builtin,
    /// A node of a custom resource's schema.
    Schema(&'a Value),
    /// Outside any schema (preserve-unknown-fields, or no schema at all).
    Unknown,
}

/// The root node of an object of a type: its schema for a custom resource, the built-in
/// table otherwise.
pub(crate) fn root(is_crd: bool, schema: Option<&Value>) -> Node<'_> {
    match (is_crd, schema) {
        (false, _) => Node::Builtin,
        (true, Some(s)) => Node::Schema(s),
        (true, None) => Node::Unknown,
    }
}

impl<'a> Node<'a> {
    /// The node of field `name` of this (object) node.
    pub(crate) fn field(self, parent_path: &str, name: &str) -> Node<'a> {
        if parent_path.is_empty() && name == "metadata" {
            return Node::Builtin;
        }
        match self {
            Node::Builtin => Node::Builtin,
            Node::Schema(s) => {
                if let Some(p) = s.get("properties").and_then(|p| p.get(name)) {
                    return Node::Schema(p);
                }
                match s.get("additionalProperties") {
                    Some(a @ Value::Object(_)) => Node::Schema(a),
                    _ => Node::Unknown,
                }
            }
            Node::Unknown => Node::Unknown,
        }
    }

    /// The node of the elements of this (list) node.
    pub(crate) fn items(self) -> Node<'a> {
        match self {
            Node::Schema(s) => match s.get("items") {
                Some(i @ Value::Object(_)) => Node::Schema(i),
                _ => Node::Unknown,
            },
            other => other,
        }
    }

    /// Whether this (object) node is replaced and owned whole.
    pub(crate) fn atomic_map(self) -> bool {
        match self {
            Node::Schema(s) => {
                s.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic")
            }
            _ => false,
        }
    }

    /// The type of list field `name` (this node) whose parent object is at `parent`.
    pub(crate) fn list_type(self, parent: &str, name: &str) -> ListType {
        match self {
            Node::Builtin => builtin(parent, name),
            Node::Schema(s) => schema_list(s),
            Node::Unknown => ListType::Atomic,
        }
    }
}

fn schema_list(s: &Value) -> ListType {
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListType::Set,
        Some("map") => {
            let props = s["items"].get("properties");
            let keys = s
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|k| MapKey {
                            name: k.to_string(),
                            default: props.and_then(|p| p[k].get("default")).cloned(),
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            if keys.is_empty() {
                ListType::Atomic
            } else {
                ListType::Map(keys)
            }
        }
        _ => ListType::Atomic,
    }
}

fn keys(names: &[&str]) -> ListType {
    ListType::Map(
        names
            .iter()
            .map(|n| MapKey {
                name: (*n).to_string(),
                // Protocol is defaulted on every built-in port before it is keyed.
                default: (*n == "protocol").then(|| Value::String("TCP".into())),
            })
            .collect(),
    )
}

/// The markers of the built-in types (k8s.io/api, 1.32) for the lists cStor's
/// components and the CSI sidecars write.
fn builtin(parent: &str, name: &str) -> ListType {
    let last = parent.rsplit('.').next().unwrap_or("");
    match (parent, name) {
        ("metadata", "finalizers") => ListType::Set,
        ("metadata", "ownerReferences") => keys(&["uid"]),
        (_, "conditions") => keys(&["type"]),
        (_, "containers" | "initContainers" | "ephemeralContainers") => keys(&["name"]),
        (_, "env" | "volumes" | "imagePullSecrets") => keys(&["name"]),
        (_, "ports") if matches!(last, "containers" | "initContainers") => {
            keys(&["containerPort", "protocol"])
        }
        ("spec", "ports") => keys(&["port", "protocol"]),
        (_, "volumeMounts") => keys(&["mountPath"]),
        (_, "volumeDevices") => keys(&["devicePath"]),
        (_, "hostAliases") => keys(&["ip"]),
        (_, "topologySpreadConstraints") => keys(&["topologyKey", "whenUnsatisfiable"]),
        (_, "resourceClaims") => keys(&["name"]),
        ("status", "addresses") => keys(&["type"]),
        _ => ListType::Atomic,
    }
}

/// The identity of a map-list element: its key fields (defaults filled in), as the JSON
/// object a `k:` path element carries. None when a key without a default is missing.
pub(crate) fn element_key(item: &Value, keys: &[MapKey]) -> Option<Map<String, Value>> {
    let mut out = Map::new();
    for k in keys {
        let v = item.get(&k.name).or(k.default.as_ref())?;
        out.insert(k.name.clone(), v.clone());
    }
    Some(out)
}

/// Fills the defaults of missing map-list keys into `v` (whose node is `node`, at dotted
/// path `path`), as kube-apiserver's defaulting does before it merges. Returns the path
/// of the first element that omits a key without a default.
pub(crate) fn fill_key_defaults(
    v: &mut Value,
    node: Node<'_>,
    parent: &str,
    name: &str,
    depth: usize,
) -> Result<(), String> {
    if depth > crate::limits::OBJECT_DEPTH_MAX {
        return Ok(());
    }
    let here = if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    };
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if depth == 0 && k == "metadata" {
                    // Only the lists of ObjectMeta are typed; managedFields is not merged.
                    if let Value::Object(meta) = x {
                        if let Some(o) = meta.get_mut("ownerReferences") {
                            fill_key_defaults(o, Node::Builtin, "metadata", "ownerReferences", 2)?;
                        }
                    }
                    continue;
                }
                fill_key_defaults(x, node.field(&here, k), &here, k, depth + 1)?;
            }
        }
        Value::Array(items) => {
            let lt = node.list_type(parent, name);
            let item_node = node.items();
            for (i, item) in items.iter_mut().enumerate() {
                if let (ListType::Map(keys), Value::Object(m)) = (&lt, &mut *item) {
                    for k in keys {
                        if m.contains_key(&k.name) {
                            continue;
                        }
                        match &k.default {
                            Some(d) => {
                                m.insert(k.name.clone(), d.clone());
                            }
                            None => {
                                return Err(format!(
                                    ".{here}: element {i}: associative list with keys has an element that omits key field {:?} (and doesn't have default value)",
                                    k.name
                                ))
                            }
                        }
                    }
                }
                fill_key_defaults(item, item_node, parent, name, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}
