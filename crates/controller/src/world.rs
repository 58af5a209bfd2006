//! One consistent-enough picture of the cluster for a reconcile pass: every object the
//! controller reasons about, listed at the start of the pass, plus the helpers the pure
//! reconcile functions share (labels, phases, sizes, node liveness).
//!
//! Invariant: nothing here does I/O; [`crate::exec::load`] fills it, tests build it by hand.

use std::collections::BTreeMap;

use cstor_api::names::label;
use cstor_api::v1::{
    CStorPoolCluster, CStorPoolInstance, CStorPoolInstancePhase, CStorSnapshot, CStorVolume,
    CStorVolumeConfig, CStorVolumePolicy, CStorVolumeReplica,
};
use cstor_api::v1alpha1::{BlockDevice, BlockDeviceClaim};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

/// Everything a pass looks at. cstor objects are those of the controller's namespace.
#[derive(Clone, Debug, Default)]
pub struct World {
    /// The controller's namespace (where CSPCs, CSPIs, BDs, CVCs, CVs, CVRs live).
    pub namespace: String,
    /// CStorPoolClusters.
    pub cspcs: Vec<CStorPoolCluster>,
    /// CStorPoolInstances.
    pub cspis: Vec<CStorPoolInstance>,
    /// BlockDevices.
    pub bds: Vec<BlockDevice>,
    /// BlockDeviceClaims.
    pub bdcs: Vec<BlockDeviceClaim>,
    /// CStorVolumeConfigs.
    pub cvcs: Vec<CStorVolumeConfig>,
    /// CStorVolumes.
    pub cvs: Vec<CStorVolume>,
    /// CStorVolumeReplicas.
    pub cvrs: Vec<CStorVolumeReplica>,
    /// CStorVolumePolicies.
    pub cvps: Vec<CStorVolumePolicy>,
    /// CStorSnapshots.
    pub csnaps: Vec<CStorSnapshot>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Leases of the controller's namespace (node agents heartbeat `cstor-node-<N>`).
    pub leases: Vec<Lease>,
    /// StorageClasses.
    pub scs: Vec<StorageClass>,
    /// PersistentVolumeClaims of every namespace.
    pub pvcs: Vec<PersistentVolumeClaim>,
    /// PersistentVolumes.
    pub pvs: Vec<PersistentVolume>,
    /// VolumeSnapshots of every namespace (JSON: k8s-openapi has no type for them).
    pub vss: Vec<Value>,
    /// VolumeSnapshotClasses.
    pub vsclasses: Vec<Value>,
    /// VolumeSnapshotContents.
    pub vscontents: Vec<Value>,
    /// The time of the pass.
    pub now: Option<Timestamp>,
}

/// The name of an object.
pub fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// A label of an object.
pub fn label_of<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// An annotation of an object.
pub fn annotation_of<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Whether the object is being deleted.
pub fn deleting(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// The value at a JSON path of a JSON object, as a string.
pub fn jstr<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

impl World {
    /// The CSPC named `name`.
    pub fn cspc(&self, name: &str) -> Option<&CStorPoolCluster> {
        self.cspcs
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }

    /// The CSPI named `name`.
    pub fn cspi(&self, name: &str) -> Option<&CStorPoolInstance> {
        self.cspis
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }

    /// The CSPIs of CSPC `cspc`.
    pub fn cspis_of<'a>(
        &'a self,
        cspc: &'a str,
    ) -> impl Iterator<Item = &'a CStorPoolInstance> + 'a {
        self.cspis
            .iter()
            .filter(move |c| label_of(&c.metadata, label::CSPC) == Some(cspc))
    }

    /// The CV named `name`.
    pub fn cv(&self, name: &str) -> Option<&CStorVolume> {
        self.cvs
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }

    /// The CVC named `name`.
    pub fn cvc(&self, name: &str) -> Option<&CStorVolumeConfig> {
        self.cvcs
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }

    /// The PV named `name`.
    pub fn pv(&self, name: &str) -> Option<&PersistentVolume> {
        self.pvs
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }

    /// The StorageClass named `name`.
    pub fn sc(&self, name: &str) -> Option<&StorageClass> {
        self.scs
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }

    /// The PVC `namespace/name`.
    pub fn pvc(&self, namespace: &str, name: &str) -> Option<&PersistentVolumeClaim> {
        self.pvcs.iter().find(|c| {
            c.metadata.namespace.as_deref() == Some(namespace)
                && c.metadata.name.as_deref() == Some(name)
        })
    }

    /// The CVRs of volume `pv`.
    pub fn cvrs_of<'a>(&'a self, pv: &'a str) -> impl Iterator<Item = &'a CStorVolumeReplica> + 'a {
        self.cvrs
            .iter()
            .filter(move |c| label_of(&c.metadata, label::PERSISTENT_VOLUME) == Some(pv))
    }

    /// The CVRs held by pool instance `cspi`.
    pub fn cvrs_on<'a>(
        &'a self,
        cspi: &'a str,
    ) -> impl Iterator<Item = &'a CStorVolumeReplica> + 'a {
        self.cvrs
            .iter()
            .filter(move |c| label_of(&c.metadata, label::CSPI) == Some(cspi))
    }

    /// The InternalIP of node `node`, if the node is registered with one.
    pub fn node_ip(&self, node: &str) -> Option<String> {
        let n = self
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node))?;
        n.status
            .as_ref()?
            .addresses
            .as_ref()?
            .iter()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address.clone())
    }

    /// Whether node `node`'s agent heartbeat (Lease `cstor-node-<node>`) is fresh: renewed
    /// within its lease duration of the pass's time. A node without such a Lease counts
    /// as alive when it is registered (a real cluster's nodes need not run our agent's
    /// heartbeat to be usable for placement).
    pub fn node_alive(&self, node: &str) -> bool {
        let lease_name = format!("cstor-node-{node}");
        let Some(lease) = self
            .leases
            .iter()
            .find(|l| l.metadata.name.as_deref() == Some(lease_name.as_str()))
        else {
            return self
                .nodes
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(node));
        };
        let Some(spec) = lease.spec.as_ref() else {
            return false;
        };
        let (Some(renew), Some(now)) = (spec.renew_time.as_ref(), self.now) else {
            return true;
        };
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15).max(1));
        now.as_second() - renew.0.as_second() <= duration
    }

    /// Seconds since node `node`'s heartbeat was last renewed (None without a lease).
    pub fn node_silent_for(&self, node: &str) -> Option<i64> {
        let lease_name = format!("cstor-node-{node}");
        let lease = self
            .leases
            .iter()
            .find(|l| l.metadata.name.as_deref() == Some(lease_name.as_str()))?;
        let renew = lease.spec.as_ref()?.renew_time.as_ref()?;
        Some(self.now?.as_second() - renew.0.as_second())
    }
}

/// A CSPI's phase.
pub fn cspi_phase(cspi: &CStorPoolInstance) -> Option<CStorPoolInstancePhase> {
    cspi.status.as_ref().and_then(|s| s.phase)
}

/// A CSPI's node.
pub fn cspi_node(cspi: &CStorPoolInstance) -> &str {
    if !cspi.spec.host_name.is_empty() {
        return &cspi.spec.host_name;
    }
    cspi.spec
        .node_selector
        .get(label::HOSTNAME)
        .map(String::as_str)
        .unwrap_or_default()
}

/// Bytes of the `storage` entry of a resource list (0 when absent or unparsable).
pub fn storage_bytes(
    list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> u64 {
    list.and_then(|c| c.get("storage"))
        .and_then(|q| cstor_api::quantity::quantity_bytes(q).ok())
        .unwrap_or(0)
}

/// Bytes of a quantity string, 0 when it does not parse.
pub fn bytes_of(q: &str) -> u64 {
    cstor_api::quantity::parse_bytes(q).unwrap_or(0)
}

/// Labels as a JSON object.
pub fn labels_json(pairs: &[(&str, &str)]) -> Value {
    let m: BTreeMap<&str, &str> = pairs.iter().copied().collect();
    serde_json::to_value(m).unwrap_or(Value::Null)
}
