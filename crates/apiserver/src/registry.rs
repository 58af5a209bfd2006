//! The resource types the server serves: the built-in kinds (a fixed table) and every
//! CustomResourceDefinition in the store, rebuilt whenever a CRD changes.
//!
//! Invariants: (group, plural) is unique; every served version of a type shares one
//! storage key space (`{group}/{plural}/{namespace}/{name}`), so an object written through
//! one version is read through any other. Never: does IO.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

/// Group name used in storage keys for the core ("") group.
pub(crate) const CORE_KEY_GROUP: &str = "core";

/// One printer column of a type's Table output.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) type_: String,
    pub(crate) format: String,
    pub(crate) description: String,
    pub(crate) priority: i64,
    /// JSONPath (`.status.phase`) or a built-in computed column (`#name`).
    pub(crate) path: String,
}

/// Special server behaviour attached to a built-in kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    None,
    Namespace,
    Crd,
    Pvc,
    Pv,
    ResourceQuota,
    /// Stored only; a warning says no workload runs.
    Workload,
    CoreEvent,
    /// events.k8s.io/v1 view of the core events storage.
    EventsV1,
    /// SelfSubjectAccessReview: answered, never stored.
    AccessReview,
    /// core/v1 Secret: `stringData` folded into `data` ([`crate::builtin::fold_string_data`]).
    Secret,
}

/// A served resource type.
#[derive(Debug, Clone)]
pub(crate) struct ResourceType {
    pub(crate) group: String,
    /// Served versions, storage version first.
    pub(crate) versions: Vec<String>,
    pub(crate) kind: String,
    pub(crate) list_kind: String,
    pub(crate) plural: String,
    pub(crate) singular: String,
    pub(crate) short_names: Vec<String>,
    pub(crate) categories: Vec<String>,
    pub(crate) namespaced: bool,
    pub(crate) has_status: bool,
    /// OpenAPI v3 schema per version (None: anything goes).
    pub(crate) schemas: BTreeMap<String, Value>,
    /// Printer columns per version (without NAME, which is always first).
    pub(crate) columns: BTreeMap<String, Vec<Column>>,
    /// A CRD's `selectableFields` per version, as field-selector paths (`spec.color`).
    pub(crate) selectable: BTreeMap<String, Vec<String>>,
    pub(crate) special: Special,
    /// Group and plural whose storage this type uses (differs only for events.k8s.io).
    pub(crate) storage_group: String,
    pub(crate) storage_plural: String,
    pub(crate) is_crd: bool,
    /// Set when this type is served through another type's storage.
    pub(crate) alias: Option<Arc<crate::Alias>>,
}

impl ResourceType {
    /// `plural.group` as the real server names resources in messages.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub(crate) fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// Storage key prefix of the whole type.
    pub(crate) fn key_prefix(&self) -> String {
        let g = if self.storage_group.is_empty() {
            CORE_KEY_GROUP
        } else {
            &self.storage_group
        };
        format!("{g}/{}/", self.storage_plural)
    }

    pub(crate) fn key(&self, namespace: &str, name: &str) -> String {
        format!("{}{namespace}/{name}", self.key_prefix())
    }

    pub(crate) fn schema(&self, version: &str) -> Option<&Value> {
        self.schemas.get(version)
    }

    /// The list and map types of this type's objects in `version`.
    pub(crate) fn lists(&self, version: &str) -> crate::listtype::Node<'_> {
        crate::listtype::root(self.is_crd, self.schema(version))
    }

    /// The list and map types of this type's stored objects (storage version).
    pub(crate) fn stored_lists(&self) -> crate::listtype::Node<'_> {
        self.lists(self.versions.first().map_or("", String::as_str))
    }

    pub(crate) fn columns(&self, version: &str) -> Vec<Column> {
        self.columns
            .get(version)
            .cloned()
            .unwrap_or_else(|| vec![age_column()])
    }
}

/// All served types.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(crate) types: Vec<Arc<ResourceType>>,
}

impl Registry {
    /// Built-ins plus the given CRD objects (invalid CRDs are skipped; they were
    /// validated when written).
    pub(crate) fn build(crds: &[Arc<Value>], aliases: &[Arc<crate::Alias>]) -> Registry {
        let mut types: Vec<Arc<ResourceType>> = builtins().into_iter().map(Arc::new).collect();
        for crd in crds {
            if let Ok(mut rt) = crd_to_type(crd) {
                if let Some(a) = aliases
                    .iter()
                    .find(|a| a.group == rt.group && a.plural == rt.plural)
                {
                    rt.storage_group = a.storage_group.clone();
                    rt.storage_plural = a.storage_plural.clone();
                    rt.alias = Some(a.clone());
                }
                if !types
                    .iter()
                    .any(|t| t.group == rt.group && t.plural == rt.plural)
                {
                    types.push(Arc::new(rt));
                }
            }
        }
        Registry { types }
    }

    pub(crate) fn find(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| {
                t.group == group && t.plural == plural && t.versions.iter().any(|v| v == version)
            })
            .cloned()
    }

    /// Groups with their versions, in a stable order (core first, then by name).
    pub(crate) fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in &self.types {
            let vs = out.entry(t.group.clone()).or_default();
            for v in &t.versions {
                if !vs.contains(v) {
                    vs.push(v.clone());
                }
            }
        }
        out
    }
}

fn col(name: &str, type_: &str, path: &str, priority: i64) -> Column {
    Column {
        name: name.into(),
        type_: type_.into(),
        format: if name == "Name" {
            "name".into()
        } else {
            String::new()
        },
        description: String::new(),
        priority,
        path: path.into(),
    }
}

pub(crate) fn age_column() -> Column {
    Column {
        name: "Age".into(),
        type_: "date".into(),
        format: String::new(),
        description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(),
        priority: 0,
        path: ".metadata.creationTimestamp".into(),
    }
}

/// Whether a built-in kind is served as `plural` in `group` (a CRD for it is not served).
pub(crate) fn is_builtin(group: &str, plural: &str) -> bool {
    builtins()
        .iter()
        .any(|t| t.group == group && t.plural == plural)
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    short: &[&str],
    namespaced: bool,
    has_status: bool,
    columns: Vec<Column>,
    special: Special,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        versions: vec![version.into()],
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        namespaced,
        has_status,
        schemas: BTreeMap::new(),
        columns: BTreeMap::from([(version.to_string(), columns)]),
        selectable: BTreeMap::new(),
        special,
        storage_group: group.into(),
        storage_plural: plural.into(),
        is_crd: false,
        alias: None,
    }
}

fn builtins() -> Vec<ResourceType> {
    let age = age_column;
    let mut v = vec![
        builtin(
            "",
            "v1",
            "Namespace",
            "namespaces",
            &["ns"],
            false,
            true,
            vec![col("Status", "string", ".status.phase", 0), age()],
            Special::Namespace,
        ),
        builtin(
            "",
            "v1",
            "Node",
            "nodes",
            &["no"],
            false,
            true,
            vec![
                col("Status", "string", "#node-status", 0),
                col("Roles", "string", "#node-roles", 0),
                age(),
                col("Version", "string", ".status.nodeInfo.kubeletVersion", 0),
                col("Internal-IP", "string", "#node-internal-ip", 1),
            ],
            Special::None,
        ),
        builtin(
            "",
            "v1",
            "Secret",
            "secrets",
            &[],
            true,
            false,
            vec![
                col("Type", "string", ".type", 0),
                col("Data", "integer", "#data-count", 0),
                age(),
            ],
            Special::Secret,
        ),
        builtin(
            "",
            "v1",
            "ConfigMap",
            "configmaps",
            &["cm"],
            true,
            false,
            vec![col("Data", "integer", "#data-count", 0), age()],
            Special::None,
        ),
        builtin(
            "",
            "v1",
            "Event",
            "events",
            &["ev"],
            true,
            false,
            vec![
                col("Last Seen", "string", "#event-last-seen", 0),
                col("Type", "string", ".type", 0),
                col("Reason", "string", ".reason", 0),
                col("Object", "string", "#event-object", 0),
                col("Message", "string", ".message", 0),
            ],
            Special::CoreEvent,
        ),
        builtin(
            "",
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            &["pvc"],
            true,
            true,
            vec![
                col("Status", "string", ".status.phase", 0),
                col("Volume", "string", ".spec.volumeName", 0),
                col("Capacity", "string", ".status.capacity.storage", 0),
                col("Access Modes", "string", "#access-modes-status", 0),
                col("StorageClass", "string", ".spec.storageClassName", 0),
                col("VolumeAttributesClass", "string", "#vac", 0),
                age(),
                col("VolumeMode", "string", ".spec.volumeMode", 1),
            ],
            Special::Pvc,
        ),
        builtin(
            "",
            "v1",
            "PersistentVolume",
            "persistentvolumes",
            &["pv"],
            false,
            true,
            vec![
                col("Capacity", "string", ".spec.capacity.storage", 0),
                col("Access Modes", "string", "#access-modes-spec", 0),
                col(
                    "Reclaim Policy",
                    "string",
                    ".spec.persistentVolumeReclaimPolicy",
                    0,
                ),
                col("Status", "string", ".status.phase", 0),
                col("Claim", "string", "#pv-claim", 0),
                col("StorageClass", "string", ".spec.storageClassName", 0),
                col("VolumeAttributesClass", "string", "#vac", 0),
                col("Reason", "string", ".status.reason", 0),
                age(),
                col("VolumeMode", "string", ".spec.volumeMode", 1),
            ],
            Special::Pv,
        ),
        builtin(
            "",
            "v1",
            "ResourceQuota",
            "resourcequotas",
            &["quota"],
            true,
            true,
            vec![
                age(),
                col("Request", "string", "#quota-request", 0),
                col("Limit", "string", "#quota-limit", 0),
            ],
            Special::ResourceQuota,
        ),
        builtin(
            "",
            "v1",
            "Pod",
            "pods",
            &["po"],
            true,
            true,
            vec![
                col("Ready", "string", "#pod-ready", 0),
                col("Status", "string", "#pod-status", 0),
                col("Restarts", "string", "#pod-restarts", 0),
                age(),
                col("IP", "string", ".status.podIP", 1),
                col("Node", "string", ".spec.nodeName", 1),
            ],
            Special::Workload,
        ),
        builtin(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            &["sa"],
            true,
            false,
            vec![col("Secrets", "integer", "#secrets-count", 0), age()],
            Special::None,
        ),
        builtin(
            "apps",
            "v1",
            "StatefulSet",
            "statefulsets",
            &["sts"],
            true,
            true,
            vec![
                col("Ready", "string", "#sts-ready", 0),
                age(),
                col("Containers", "string", "#containers", 1),
                col("Images", "string", "#images", 1),
            ],
            Special::Workload,
        ),
        builtin(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            &["deploy"],
            true,
            true,
            vec![
                col("Ready", "string", "#sts-ready", 0),
                age(),
                col("Containers", "string", "#containers", 1),
                col("Images", "string", "#images", 1),
            ],
            Special::Workload,
        ),
        builtin(
            "apps",
            "v1",
            "DaemonSet",
            "daemonsets",
            &["ds"],
            true,
            true,
            vec![
                age(),
                col("Containers", "string", "#containers", 1),
                col("Images", "string", "#images", 1),
            ],
            Special::Workload,
        ),
        builtin(
            "storage.k8s.io",
            "v1",
            "StorageClass",
            "storageclasses",
            &["sc"],
            false,
            false,
            vec![
                col("Provisioner", "string", ".provisioner", 0),
                col("ReclaimPolicy", "string", "#sc-reclaim", 0),
                col("VolumeBindingMode", "string", "#sc-binding", 0),
                col("AllowVolumeExpansion", "string", "#sc-expansion", 0),
                age(),
            ],
            Special::None,
        ),
        builtin(
            "snapshot.storage.k8s.io",
            "v1",
            "VolumeSnapshotClass",
            "volumesnapshotclasses",
            &["vsclass", "vsclasses"],
            false,
            false,
            vec![
                col("Driver", "string", ".driver", 0),
                col("DeletionPolicy", "string", ".deletionPolicy", 0),
                age(),
            ],
            Special::None,
        ),
        builtin(
            "snapshot.storage.k8s.io",
            "v1",
            "VolumeSnapshot",
            "volumesnapshots",
            &["vs"],
            true,
            true,
            vec![
                col("ReadyToUse", "boolean", ".status.readyToUse", 0),
                col(
                    "SourcePVC",
                    "string",
                    ".spec.source.persistentVolumeClaimName",
                    0,
                ),
                col(
                    "SourceSnapshotContent",
                    "string",
                    ".spec.source.volumeSnapshotContentName",
                    0,
                ),
                col("RestoreSize", "string", ".status.restoreSize", 0),
                col(
                    "SnapshotClass",
                    "string",
                    ".spec.volumeSnapshotClassName",
                    0,
                ),
                col(
                    "SnapshotContent",
                    "string",
                    ".status.boundVolumeSnapshotContentName",
                    0,
                ),
                col("CreationTime", "date", ".status.creationTime", 0),
                age(),
            ],
            Special::None,
        ),
        builtin(
            "snapshot.storage.k8s.io",
            "v1",
            "VolumeSnapshotContent",
            "volumesnapshotcontents",
            &["vsc", "vscs"],
            false,
            true,
            vec![
                col("ReadyToUse", "boolean", ".status.readyToUse", 0),
                col("RestoreSize", "integer", ".status.restoreSize", 0),
                col("DeletionPolicy", "string", ".spec.deletionPolicy", 0),
                col("Driver", "string", ".spec.driver", 0),
                col(
                    "VolumeSnapshotClass",
                    "string",
                    ".spec.volumeSnapshotClassName",
                    0,
                ),
                col(
                    "VolumeSnapshot",
                    "string",
                    ".spec.volumeSnapshotRef.name",
                    0,
                ),
                col(
                    "VolumeSnapshotNamespace",
                    "string",
                    ".spec.volumeSnapshotRef.namespace",
                    0,
                ),
                age(),
            ],
            Special::None,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            &["crd", "crds"],
            false,
            true,
            vec![col("Created At", "date", "#created-at", 0)],
            Special::Crd,
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            &[],
            true,
            false,
            vec![col("Holder", "string", ".spec.holderIdentity", 0), age()],
            Special::None,
        ),
    ];
    // RBAC objects are stored and served so that manifests carrying them (deploy/) apply;
    // nothing here authorizes by them (every client is the admin).
    for (kind, plural, namespaced) in [
        ("Role", "roles", true),
        ("ClusterRole", "clusterroles", false),
        ("RoleBinding", "rolebindings", true),
        ("ClusterRoleBinding", "clusterrolebindings", false),
    ] {
        v.push(builtin(
            "rbac.authorization.k8s.io",
            "v1",
            kind,
            plural,
            &[],
            namespaced,
            false,
            vec![col("Created At", "date", "#created-at", 0)],
            Special::None,
        ));
    }
    v.extend(storage_and_network_builtins());
    for (kind, plural) in [
        (
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
        ),
        (
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
        ),
    ] {
        v.push(builtin(
            "admissionregistration.k8s.io",
            "v1",
            kind,
            plural,
            &[],
            false,
            false,
            vec![age()],
            Special::None,
        ));
    }
    let mut ev = builtin(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        &["ev"],
        true,
        false,
        vec![
            col("Last Seen", "string", "#event-last-seen", 0),
            col("Type", "string", ".type", 0),
            col("Reason", "string", ".reason", 0),
            col("Object", "string", "#event-object", 0),
            col("Message", "string", ".note", 0),
        ],
        Special::EventsV1,
    );
    ev.storage_group = String::new();
    v.push(ev);
    for t in &mut v {
        if t.group == "snapshot.storage.k8s.io" {
            let schema = snapshot_schema(&t.kind);
            t.schemas.insert("v1".into(), schema);
        }
        if t.special == Special::Workload {
            t.categories = vec!["all".into()];
        }
    }
    v
}

/// The kinds the CSI sidecars and kube-rs components read and write besides the basics:
/// storage.k8s.io's CSI objects, Services and their endpoints, access reviews. Columns
/// follow kubectl's server-side printers.
fn storage_and_network_builtins() -> Vec<ResourceType> {
    let age = age_column;
    vec![
        builtin(
            "storage.k8s.io",
            "v1",
            "CSIDriver",
            "csidrivers",
            &[],
            false,
            false,
            vec![
                col("AttachRequired", "boolean", ".spec.attachRequired", 0),
                col("PodInfoOnMount", "boolean", ".spec.podInfoOnMount", 0),
                col("StorageCapacity", "boolean", ".spec.storageCapacity", 0),
                col("Modes", "string", "#csidriver-modes", 0),
                age(),
            ],
            Special::None,
        ),
        builtin(
            "storage.k8s.io",
            "v1",
            "CSINode",
            "csinodes",
            &[],
            false,
            false,
            vec![col("Drivers", "integer", "#csinode-drivers", 0), age()],
            Special::None,
        ),
        builtin(
            "storage.k8s.io",
            "v1",
            "VolumeAttachment",
            "volumeattachments",
            &[],
            false,
            true,
            vec![
                col("Attacher", "string", ".spec.attacher", 0),
                col("PV", "string", ".spec.source.persistentVolumeName", 0),
                col("Node", "string", ".spec.nodeName", 0),
                col("Attached", "boolean", ".status.attached", 0),
                age(),
            ],
            Special::None,
        ),
        builtin(
            "storage.k8s.io",
            "v1",
            "CSIStorageCapacity",
            "csistoragecapacities",
            &[],
            true,
            false,
            vec![
                col("StorageClassName", "string", ".storageClassName", 0),
                col("Capacity", "string", ".capacity", 0),
                age(),
            ],
            Special::None,
        ),
        builtin(
            "",
            "v1",
            "Service",
            "services",
            &["svc"],
            true,
            true,
            vec![
                col("Type", "string", ".spec.type", 0),
                col("Cluster-IP", "string", ".spec.clusterIP", 0),
                col("External-IP", "string", "#service-external-ip", 0),
                col("Port(s)", "string", "#service-ports", 0),
                age(),
                col("Selector", "string", "#service-selector", 1),
            ],
            Special::None,
        ),
        builtin(
            "",
            "v1",
            "Endpoints",
            "endpoints",
            &["ep"],
            true,
            false,
            vec![col("Endpoints", "string", "#endpoints", 0), age()],
            Special::None,
        ),
        builtin(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            &[],
            true,
            false,
            vec![
                col("AddressType", "string", ".addressType", 0),
                col("Ports", "string", "#endpointslice-ports", 0),
                col("Endpoints", "string", "#endpointslice-endpoints", 0),
                age(),
            ],
            Special::None,
        ),
        builtin(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            &[],
            false,
            true,
            Vec::new(),
            Special::AccessReview,
        ),
    ]
}

/// The parts of the external-snapshotter CRD schemas that reject bad objects.
fn snapshot_schema(kind: &str) -> Value {
    let deletion = json!({"type": "string", "enum": ["Delete", "Retain"]});
    let props = match kind {
        "VolumeSnapshotClass" => json!({
            "required": ["deletionPolicy", "driver"],
            "properties": {"driver": {"type": "string"}, "deletionPolicy": deletion,
                           "parameters": {"type": "object", "additionalProperties": {"type": "string"}}}}),
        "VolumeSnapshot" => json!({
            "required": ["spec"],
            "properties": {"spec": {"type": "object", "required": ["source"], "x-kubernetes-preserve-unknown-fields": true,
                "properties": {"source": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                    "properties": {"persistentVolumeClaimName": {"type": "string"}, "volumeSnapshotContentName": {"type": "string"}}},
                    "volumeSnapshotClassName": {"type": "string"}}}}}),
        _ => json!({
            "required": ["spec"],
            "properties": {"spec": {"type": "object", "required": ["deletionPolicy", "driver", "source", "volumeSnapshotRef"],
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {"deletionPolicy": deletion, "driver": {"type": "string"}}}}}),
    };
    let mut s = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    if let (Some(obj), Some(extra)) = (s.as_object_mut(), props.as_object()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    s
}

/// Why a CRD object cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CrdError {
    pub(crate) field: String,
    pub(crate) message: String,
}

fn crd_err(field: &str, message: &str) -> CrdError {
    CrdError {
        field: field.into(),
        message: message.into(),
    }
}

/// Turns a CustomResourceDefinition object into a served type.
pub(crate) fn crd_to_type(crd: &Value) -> Result<ResourceType, CrdError> {
    let spec = &crd["spec"];
    let group = spec["group"]
        .as_str()
        .filter(|g| !g.is_empty())
        .ok_or_else(|| crd_err("spec.group", "Required value"))?;
    let names = &spec["names"];
    let plural = names["plural"]
        .as_str()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| crd_err("spec.names.plural", "Required value"))?;
    let kind = names["kind"]
        .as_str()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| crd_err("spec.names.kind", "Required value"))?;
    let expected = format!("{plural}.{group}");
    if crd["metadata"]["name"].as_str() != Some(expected.as_str()) {
        return Err(crd_err(
            "metadata.name",
            &format!(
                "Invalid value: {}: must be spec.names.plural+\".\"+spec.group",
                crd["metadata"]["name"]
            ),
        ));
    }
    let scope = spec["scope"].as_str().unwrap_or("");
    let namespaced = match scope {
        "Namespaced" => true,
        "Cluster" => false,
        _ => {
            return Err(crd_err(
                "spec.scope",
                "Unsupported value: must be Namespaced or Cluster",
            ))
        }
    };
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions = spec["versions"]
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| crd_err("spec.versions", "Required value"))?;
    let mut served = Vec::new();
    let mut schemas = BTreeMap::new();
    let mut columns = BTreeMap::new();
    let mut selectable = BTreeMap::new();
    let mut has_status = false;
    let mut storage_count = 0;
    for (i, v) in versions.iter().enumerate() {
        let name = v["name"]
            .as_str()
            .ok_or_else(|| crd_err(&format!("spec.versions[{i}].name"), "Required value"))?;
        if v["storage"].as_bool() == Some(true) {
            storage_count += 1;
            served.insert(0, name.to_string());
        } else if v["served"].as_bool() != Some(false) {
            served.push(name.to_string());
        }
        let schema = v["schema"].get("openAPIV3Schema");
        if let Some(schema) = schema {
            schemas.insert(name.to_string(), schema.clone());
        }
        let fields = selectable_fields(&v["selectableFields"], schema, i)?;
        if !fields.is_empty() {
            selectable.insert(name.to_string(), fields);
        }
        if v["subresources"].get("status").is_some() {
            has_status = true;
        }
        let cols: Vec<Column> = v["additionalPrinterColumns"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| Column {
                        name: c["name"].as_str().unwrap_or("").to_string(),
                        type_: c["type"].as_str().unwrap_or("string").to_string(),
                        format: c["format"].as_str().unwrap_or("").to_string(),
                        description: c["description"].as_str().unwrap_or("").to_string(),
                        priority: c["priority"].as_i64().unwrap_or(0),
                        path: c["jsonPath"].as_str().unwrap_or("").to_string(),
                    })
                    .collect()
            })
            .unwrap_or_else(|| vec![age_column()]);
        columns.insert(name.to_string(), cols);
    }
    if storage_count != 1 {
        return Err(crd_err(
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    Ok(ResourceType {
        group: group.into(),
        versions: served,
        kind: kind.into(),
        list_kind: names["listKind"]
            .as_str()
            .map_or_else(|| format!("{kind}List"), str::to_string),
        plural: plural.into(),
        singular: names["singular"]
            .as_str()
            .map_or_else(|| kind.to_lowercase(), str::to_string),
        short_names: strs(&names["shortNames"]),
        categories: strs(&names["categories"]),
        namespaced,
        has_status,
        schemas,
        columns,
        selectable,
        special: Special::None,
        storage_group: group.into(),
        storage_plural: plural.into(),
        is_crd: true,
        alias: None,
    })
}

/// At most this many selectable fields per version (apiextensions' limit).
const SELECTABLE_FIELDS_MAX: usize = 8;

/// Validates a version's `selectableFields` as kube-apiserver does (a simple JSONPath
/// outside metadata to a string, integer or boolean field of the schema, unique, at most
/// 8) and returns them as field-selector paths.
fn selectable_fields(
    list: &Value,
    schema: Option<&Value>,
    version_index: usize,
) -> Result<Vec<String>, CrdError> {
    let Some(items) = list.as_array() else {
        return Ok(Vec::new());
    };
    let at = |i: usize| format!("spec.versions[{version_index}].selectableFields[{i}].jsonPath");
    if items.len() > SELECTABLE_FIELDS_MAX {
        return Err(crd_err(
            &format!("spec.versions[{version_index}].selectableFields"),
            &format!(
                "Too many: {}: must have at most {SELECTABLE_FIELDS_MAX} items",
                items.len()
            ),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = item["jsonPath"].as_str().unwrap_or("");
        let Some(dotted) = path.strip_prefix('.') else {
            return Err(crd_err(
                &at(i),
                "Required value: must be a simple JSONPath starting with '.'",
            ));
        };
        let parts: Vec<&str> = dotted.split('.').collect();
        let simple = parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
        if !simple {
            return Err(crd_err(
                &at(i),
                &format!("Invalid value: {path:?}: must be a simple JSONPath of field names"),
            ));
        }
        if parts[0] == "metadata" {
            return Err(crd_err(
                &at(i),
                &format!("Invalid value: {path:?}: fields under metadata may not be selected"),
            ));
        }
        let mut node = schema;
        for p in &parts {
            node = node
                .and_then(|n| n.get("properties"))
                .and_then(|n| n.get(*p));
        }
        let ty = node.and_then(|n| n["type"].as_str());
        if !matches!(ty, Some("string" | "integer" | "boolean")) {
            return Err(crd_err(
                &at(i),
                &format!(
                    "Invalid value: {path:?}: must point to a field of type string, boolean or integer in the schema"
                ),
            ));
        }
        if out.contains(&dotted.to_string()) {
            return Err(crd_err(&at(i), &format!("Duplicate value: {path:?}")));
        }
        out.push(dotted.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd_with(selectable: Value) -> Value {
        json!({"metadata": {"name": "gs.t.io"}, "spec": {"group": "t.io", "scope": "Namespaced",
            "names": {"kind": "G", "plural": "gs"},
            "versions": [{"name": "v1", "served": true, "storage": true, "selectableFields": selectable,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object",
                    "properties": {"color": {"type": "string"}, "n": {"type": "integer"},
                                   "sub": {"type": "object"}}}}}}}]}})
    }

    #[test]
    fn selectable_fields_are_validated_like_apiextensions() {
        let ok = crd_to_type(&crd_with(
            json!([{"jsonPath": ".spec.color"}, {"jsonPath": ".spec.n"}]),
        ))
        .unwrap();
        assert_eq!(ok.selectable["v1"], ["spec.color", "spec.n"]);
        for (bad, why) in [
            (json!([{"jsonPath": "spec.color"}]), "starting with '.'"),
            (
                json!([{"jsonPath": ".spec.sub"}]),
                "string, boolean or integer",
            ),
            (
                json!([{"jsonPath": ".spec.missing"}]),
                "string, boolean or integer",
            ),
            (json!([{"jsonPath": ".metadata.name"}]), "under metadata"),
            (json!([{"jsonPath": ".spec[0]"}]), "simple JSONPath"),
            (
                json!([{"jsonPath": ".spec.color"}, {"jsonPath": ".spec.color"}]),
                "Duplicate",
            ),
            (
                Value::Array(vec![json!({"jsonPath": ".spec.color"}); 9]),
                "at most 8",
            ),
        ] {
            let err = crd_to_type(&crd_with(bad.clone())).unwrap_err();
            assert!(err.message.contains(why), "{bad}: {err:?}");
            assert!(err.field.contains("selectableFields"), "{err:?}");
        }
    }
}
