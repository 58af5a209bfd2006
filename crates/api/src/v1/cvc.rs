//! CStorVolumeConfig (`cvc`): the request to provision one volume (named after its PV),
//! created by the CSI controller and realised by the volume controller (target, CV, CVRs).

use super::common::ConditionStatus;
use super::cvp::CStorVolumePolicySpec;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::core::object::{HasSpec, HasStatus};
use kube::core::{ApiResource, NamespaceResourceScope, Resource};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A CStorVolumeConfig object. Written by hand rather than by kube's derive (which makes
/// only `metadata`, `spec` and `status`) because cStor's CVC has a fourth top-level field,
/// `publish`; the derived shape still provides names, columns and the spec/status schema.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CStorVolumeConfig {
    /// Object metadata.
    pub metadata: ObjectMeta,
    /// The provisioning request.
    pub spec: CStorVolumeConfigSpec,
    /// Where the volume is used (set by the CSI controller).
    #[serde(default)]
    pub publish: Option<CStorVolumeConfigPublish>,
    /// Observed state.
    #[serde(default)]
    pub status: Option<CStorVolumeConfigStatus>,
}

/// Where a volume is used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeConfigPublish {
    /// The node the volume's application runs on (CSI node id); with replicaAffinity the
    /// volume controller prefers a pool on it.
    #[serde(default, rename = "nodeId", skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

impl CStorVolumeConfig {
    /// A CVC named `name` (the PV name) with `spec`.
    pub fn new(name: &str, spec: CStorVolumeConfigSpec) -> CStorVolumeConfig {
        CStorVolumeConfig {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec,
            publish: None,
            status: None,
        }
    }
}

impl Serialize for CStorVolumeConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "apiVersion")]
            api_version: &'a str,
            kind: &'a str,
            metadata: &'a ObjectMeta,
            spec: &'a CStorVolumeConfigSpec,
            #[serde(skip_serializing_if = "Option::is_none")]
            publish: &'a Option<CStorVolumeConfigPublish>,
            #[serde(skip_serializing_if = "Option::is_none")]
            status: &'a Option<CStorVolumeConfigStatus>,
        }
        Wire {
            api_version: crate::names::CSTOR_API_VERSION,
            kind: "CStorVolumeConfig",
            metadata: &self.metadata,
            spec: &self.spec,
            publish: &self.publish,
            status: &self.status,
        }
        .serialize(serializer)
    }
}

impl Resource for CStorVolumeConfig {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        CStorVolumeConfigShape::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        CStorVolumeConfigShape::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        CStorVolumeConfigShape::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        CStorVolumeConfigShape::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl HasSpec for CStorVolumeConfig {
    type Spec = CStorVolumeConfigSpec;

    fn spec(&self) -> &CStorVolumeConfigSpec {
        &self.spec
    }

    fn spec_mut(&mut self) -> &mut CStorVolumeConfigSpec {
        &mut self.spec
    }
}

impl HasStatus for CStorVolumeConfig {
    type Status = CStorVolumeConfigStatus;

    fn status(&self) -> Option<&CStorVolumeConfigStatus> {
        self.status.as_ref()
    }

    fn status_mut(&mut self) -> &mut Option<CStorVolumeConfigStatus> {
        &mut self.status
    }
}

impl CustomResourceExt for CStorVolumeConfig {
    fn crd() -> CustomResourceDefinition {
        let mut crd = CStorVolumeConfigShape::crd();
        crate::crds::add_top_level_property::<CStorVolumeConfigPublish>(&mut crd, "publish");
        crd
    }

    fn crd_name() -> &'static str {
        CStorVolumeConfigShape::crd_name()
    }

    fn api_resource() -> ApiResource {
        CStorVolumeConfigShape::api_resource()
    }

    fn shortnames() -> &'static [&'static str] {
        CStorVolumeConfigShape::shortnames()
    }
}

/// Desired volume.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cstor.openebs.io",
    version = "v1",
    kind = "CStorVolumeConfig",
    plural = "cstorvolumeconfigs",
    singular = "cstorvolumeconfig",
    shortname = "cvc",
    namespaced,
    status = "CStorVolumeConfigStatus",
    root = "CStorVolumeConfigShape",
    attr = "doc(hidden)",
    derive = "PartialEq",
    doc = "CStorVolumeConfig is the request to provision one cStor volume; it is named after the PersistentVolume.",
    printcolumn(
        name = "Capacity",
        type_ = "string",
        json_path = ".status.capacity.storage",
        description = "Size of the volume"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.phase",
        description = "Provisioning state"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeConfigSpec {
    /// Requested size: `storage: <quantity>`; raising it resizes the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<BTreeMap<String, Quantity>>,
    /// The CStorVolume made for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cstor_volume_ref: Option<ObjectReference>,
    /// For a clone: `<source pv>@<snapshot>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cstor_volume_source: Option<String>,
    /// What was provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision: Option<VolumeProvision>,
    /// The volume policy in force (a copy of the CVP's spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<CStorVolumePolicySpec>,
}

/// What was provisioned; `replicaCount` never changes once set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeProvision {
    /// Size provisioned: `storage: <quantity>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<BTreeMap<String, Quantity>>,
    /// Replicas provisioned (1..=5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub replica_count: Option<i32>,
}

/// Provisioning state of a CVC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CStorVolumeConfigPhase {
    /// Waiting for target, CV and CVRs.
    Pending,
    /// The volume exists and can be attached.
    Bound,
    /// Provisioning failed.
    Failed,
}

/// Observed state of a CVC.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeConfigStatus {
    /// Provisioning state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CStorVolumeConfigPhase>,
    /// CSPIs holding the volume's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_info: Option<Vec<String>>,
    /// Size the volume has now: `storage: <quantity>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<BTreeMap<String, Quantity>>,
    /// Resize progress. The field is `condition` (singular), as in cStor.
    #[serde(default, rename = "condition", skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<CStorVolumeConfigCondition>>,
}

/// Kinds of CVC condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum CStorVolumeConfigConditionType {
    /// A resize is running.
    Resizing,
    /// The last resize failed.
    VolumeResizeFailed,
    /// The last resize succeeded.
    VolumeResizeSuccessful,
    /// A resize waits for the volume to be ready.
    VolumeResizePending,
}

/// One condition of a CVC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CStorVolumeConfigCondition {
    /// Which condition.
    #[serde(rename = "type")]
    pub type_: CStorVolumeConfigConditionType,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// Last time it was probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// Last time `status` changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// One-word reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    //! The hand-written CVC root must behave like a derived one, plus `publish`.

    use super::*;
    use serde_json::json;

    #[test]
    fn cvc_round_trips_with_publish_and_type_meta() {
        let wire = json!({
            "apiVersion": "cstor.openebs.io/v1",
            "kind": "CStorVolumeConfig",
            "metadata": {"name": "pvc-1", "namespace": "openebs"},
            "spec": {"capacity": {"storage": "5Gi"}, "provision": {"capacity": {"storage": "5Gi"}, "replicaCount": 3}},
            "publish": {"nodeId": "worker-01"},
            "status": {"phase": "Pending"},
        });
        let cvc: CStorVolumeConfig = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(
            cvc.publish.as_ref().unwrap().node_id.as_deref(),
            Some("worker-01")
        );
        assert_eq!(
            cvc.status.as_ref().unwrap().phase,
            Some(CStorVolumeConfigPhase::Pending)
        );
        assert_eq!(serde_json::to_value(&cvc).unwrap(), wire);
        assert_eq!(CStorVolumeConfig::api_version(&()), "cstor.openebs.io/v1");
        assert_eq!(CStorVolumeConfig::plural(&()), "cstorvolumeconfigs");
        assert_eq!(
            CStorVolumeConfig::crd_name(),
            "cstorvolumeconfigs.cstor.openebs.io"
        );
        assert_eq!(CStorVolumeConfig::shortnames(), ["cvc"]);
        let fresh = serde_json::to_value(CStorVolumeConfig::new(
            "pvc-2",
            CStorVolumeConfigSpec::default(),
        ))
        .unwrap();
        assert_eq!(
            fresh,
            json!({"apiVersion": "cstor.openebs.io/v1", "kind": "CStorVolumeConfig", "metadata": {"name": "pvc-2"}, "spec": {}})
        );
    }

    #[test]
    fn cvc_schema_declares_publish_and_version_details() {
        let crd = crate::crds()
            .into_iter()
            .find(|c| c.spec.names.kind == "CStorVolumeConfig")
            .unwrap();
        let schema = crate::schema::version_schema(&crd, "v1").unwrap();
        let object = json!({
            "apiVersion": "cstor.openebs.io/v1", "kind": "CStorVolumeConfig", "metadata": {"name": "pvc-1"},
            "spec": {}, "publish": {"nodeId": "n1"},
            "versionDetails": {"autoUpgrade": false, "desired": "3.5.0", "status": {"current": "3.5.0", "state": "Reconciled", "dependentsUpgraded": true}},
        });
        assert!(crate::schema::validate_object(schema, &object).is_empty());
        let mut bad = object.clone();
        bad["publish"]["nodeID"] = json!("n1");
        let errors = crate::schema::validate_object(schema, &bad);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field.as_str(), "publish.nodeID");
    }
}
