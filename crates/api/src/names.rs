//! Names shared across controllers: API groups, label keys, annotation keys, finalizers
//! and well-known values. One definition here, so the cspc controller that sets a label and
//! the pool manager that selects on it cannot disagree.
//!
//! Values are cStor's own (openebs/api `pkg/apis/types`), so objects created by cStor's
//! operators and by ours select and clean up each other's dependants. Names cstor adds are
//! marked as ours in their docs.

/// API group of cStor's own resources (CSPC, CSPI, CVC, CV, CVR, CVP).
pub const CSTOR_GROUP: &str = "cstor.openebs.io";
/// Version of [`CSTOR_GROUP`] that is served and stored.
pub const CSTOR_VERSION: &str = "v1";
/// `apiVersion` of cStor's own resources.
pub const CSTOR_API_VERSION: &str = "cstor.openebs.io/v1";
/// API group of NDM's resources (BlockDevice, BlockDeviceClaim) and the alpha CSPC.
pub const OPENEBS_GROUP: &str = "openebs.io";
/// Version of [`OPENEBS_GROUP`].
pub const OPENEBS_VERSION: &str = "v1alpha1";
/// `apiVersion` of NDM's resources and the alpha CSPC.
pub const OPENEBS_API_VERSION: &str = "openebs.io/v1alpha1";

/// CSI driver name; StorageClasses name it as `provisioner`.
pub const CSI_DRIVER_NAME: &str = "cstor.csi.openebs.io";
/// Namespace the cstor control plane lives in by default.
pub const DEFAULT_NAMESPACE: &str = "openebs";
/// IQN prefix of every volume target; a volume's IQN is `<prefix>:<pv name>`.
pub const IQN_PREFIX: &str = "iqn.2016-09.com.openebs.cstor";

/// Label keys.
pub mod label {
    /// On CSPIs, pool deployments and BlockDeviceClaims: name of the owning CSPC.
    pub const CSPC: &str = "openebs.io/cstor-pool-cluster";
    /// Older spelling of [`CSPC`] used by cStor before openebs/api (maya's CSPC
    /// operator); set alongside [`CSPC`] so selectors written for either version match.
    pub const CSPC_LEGACY: &str = "cstorpoolcluster.openebs.io/name";
    /// On pool deployments and pods: name of the CSPI they serve.
    pub const CSPI: &str = "openebs.io/cstor-pool-instance";
    /// On CVRs and other pool-dependent objects: name of the CSPI that holds them.
    pub const CSPI_NAME: &str = "cstorpoolinstance.openebs.io/name";
    /// On CVRs: UID of the CSPI that holds them (tells a recreated CSPI apart).
    pub const CSPI_UID: &str = "cstorpoolinstance.openebs.io/uid";
    /// On CVs, CVRs, target deployments and services: name of the PersistentVolume.
    pub const PERSISTENT_VOLUME: &str = "openebs.io/persistent-volume";
    /// On CVs: name of the PersistentVolumeClaim the volume was provisioned for.
    pub const PERSISTENT_VOLUME_CLAIM: &str = "openebs.io/persistent-volume-claim";
    /// On CVRs: name of the CStorVolume they replicate.
    pub const CSTOR_VOLUME: &str = "cstorvolume.openebs.io/name";
    /// Storage engine of a volume; value [`super::value::CAS_TYPE_CSTOR`].
    pub const CAS_TYPE: &str = "openebs.io/cas-type";
    /// Version of cstor that created or last upgraded an object.
    pub const VERSION: &str = "openebs.io/version";
    /// Node name label Kubernetes puts on nodes, NDM on BlockDevices and cStor on CSPIs.
    pub const HOSTNAME: &str = "kubernetes.io/hostname";
    /// On BlockDevices: a tag; tagged devices are used only by CSPCs that allow the tag
    /// with [`super::annotation::ALLOWED_BD_TAGS`].
    pub const BLOCK_DEVICE_TAG: &str = "openebs.io/block-device-tag";
    /// On CVRs of a clone: `"true"`.
    pub const CLONED: &str = "openebs.io/cloned";
    /// On CVRs of a clone: the source volume's name.
    pub const SOURCE_VOLUME: &str = "openebs.io/source-volume";
    /// On CVRs of a clone: the source snapshot's name.
    pub const SNAPSHOT: &str = "openebs.io/snapshot";
    /// On any cStor object: `"true"` stops its controller from reconciling it (an escape
    /// hatch for manual surgery).
    pub const DISABLE_RECONCILE: &str = "reconcile.openebs.io/disable";
    /// On PodDisruptionBudgets cStor creates for volumes of 3+ replicas.
    pub const POD_DISRUPTION_BUDGET: &str = "openebs.io/pod-disruption-budget";
    /// On CVCs and CVs: the CStorVolumePolicy applied.
    pub const VOLUME_POLICY: &str = "openebs.io/volume-policy";
}

/// Annotation keys.
pub mod annotation {
    /// On a BlockDeviceClaim during disk replacement: the BlockDevice being replaced.
    pub const BD_PREDECESSOR: &str = "openebs.io/bd-predecessor";
    /// On a CSPC: `"true"` makes the children it creates carry
    /// [`super::label::DISABLE_RECONCILE`].
    pub const DISABLE_DEPENDANTS_RECONCILE: &str = "reconcile.openebs.io/disable-dependants";
    /// On a CSPC: comma-separated BlockDevice tags this CSPC may use.
    pub const ALLOWED_BD_TAGS: &str = "openebs.io/allowed-bd-tags";
    /// On a CSPI: name of an existing pool on its disks to import and rename.
    pub const EXISTING_POOL_NAME: &str = "import.cspi.cstor.openebs.io/existing-pool-name";
    /// Ours: on a `cstor.openebs.io/v1` CSPC converted from `openebs.io/v1alpha1`, the
    /// alpha-only pool settings (JSON), so converting back loses nothing
    /// ([`crate::conversion`]).
    pub const V1ALPHA1_POOL_CONFIG: &str = "cstor.openebs.io/v1alpha1-pool-config";
    /// Ours: on a `cstor.openebs.io/v1` CSPC mirrored from an `openebs.io/v1alpha1` CSPC,
    /// the name of that alpha object (the mirror is kept in step with it).
    pub const CONVERTED_FROM_V1ALPHA1: &str = "cstor.openebs.io/converted-from-v1alpha1";
    /// Ours: on a CVC the provisioner made for a claim, `<namespace>/<name>` of that
    /// PersistentVolumeClaim (the CSI path may not set it: the PV's claimRef then).
    pub const PVC: &str = "cstor.openebs.io/pvc";
    /// Ours: on a CStorVolume whose target the controller moved off a node it saw dead,
    /// the membership record's holder instance on that node; the new target skips the
    /// takeover gate for that instance only (docs/controller.md, "Target move").
    pub const TAKEOVER_FROM: &str = "cstor.openebs.io/takeover-from";
    /// Ours: on a CVC, the node the CSI driver's ControllerPublish gave the volume to (one
    /// at a time); the target then admits only that node's initiator ([`node_initiator`]).
    pub const PUBLISHED_NODE: &str = "cstor.openebs.io/published-node";
    /// Ours: on a CVC, the driver-owned Secret (in the driver's namespace, keys of
    /// [`crate::chap`]) with the CHAP credentials ControllerPublish was given; the target then
    /// requires them.
    pub const CHAP_SECRET: &str = "cstor.openebs.io/chap-secret";
    /// Ours: on a CStorVolume, `<secret>/<resourceVersion>` of the CHAP Secret its target
    /// requires now (written by the node agent hosting it once applied).
    pub const CHAP_APPLIED: &str = "cstor.openebs.io/chap-applied";
}

/// The iSCSI initiator name of cstor node `node` (its CSI node plugin's and `cstor
/// attach`'s): `iqn.2026-12.io.cstor:<node, lower case>`, what a target's ACL lists.
pub fn node_initiator(node: &str) -> String {
    format!("iqn.2026-12.io.cstor:{}", node.to_ascii_lowercase())
}

/// Finalizers.
pub mod finalizer {
    /// On a CSPC, its CSPIs and BlockDeviceClaims: the CSPC controller must clean up
    /// before they go.
    pub const CSPC: &str = "cstorpoolcluster.openebs.io/finalizer";
    /// On a CSPI and its BlockDeviceClaims: the pool must be destroyed before they go.
    pub const POOL_PROTECTION: &str = "openebs.io/pool-protection";
    /// On a CVR: the replica must be deleted from its pool before the object goes.
    pub const CVR: &str = "cstorvolumereplica.openebs.io/finalizer";
    /// On a CVC: the volume's target, CV and CVRs must be removed before it goes.
    pub const CVC: &str = "cvc.openebs.io/finalizer";
    /// On a CV: the target must have stopped before it goes.
    pub const CV: &str = "cstorvolume.openebs.io/finalizer";
}

/// Well-known values.
pub mod value {
    /// Value of [`super::label::CAS_TYPE`] and the StorageClass parameter `cas-type`.
    pub const CAS_TYPE_CSTOR: &str = "cstor";
    /// StorageClass parameter naming the CSPC to place replicas on.
    pub const SC_PARAM_CSPC: &str = "cstorPoolCluster";
    /// StorageClass parameter with the replica count (a string, e.g. `"3"`).
    pub const SC_PARAM_REPLICA_COUNT: &str = "replicaCount";
    /// StorageClass parameter naming a CStorVolumePolicy.
    pub const SC_PARAM_VOLUME_POLICY: &str = "cstorVolumePolicy";
    /// StorageClass parameter with the storage engine (`cstor`).
    pub const SC_PARAM_CAS_TYPE: &str = "cas-type";
    /// CSI topology key of the node a volume may be used on.
    pub const TOPOLOGY_NODE_KEY: &str = "topology.cstor.openebs.io/nodeName";
}

/// Names cstor derives from other names, in one place so every controller derives them
/// the same way (`cstor-internals.md` §0, §5, §6).
pub mod derive {
    /// IQN of a volume's target: `iqn.2016-09.com.openebs.cstor:<pv>`.
    pub fn iqn(pv_name: &str) -> String {
        format!("{}:{pv_name}", super::IQN_PREFIX)
    }

    /// Name of a CStorVolumeReplica: `<pv>-<cspi>`.
    pub fn cvr_name(pv_name: &str, cspi_name: &str) -> String {
        format!("{pv_name}-{cspi_name}")
    }

    /// Name of a CStorPoolInstance: `<cspc>-<suffix>`, where the CSPC controller picks
    /// `suffix` as 4 random lowercase alphanumerics (randomness stays out of this crate).
    pub fn cspi_name(cspc_name: &str, suffix: &str) -> String {
        format!("{cspc_name}-{suffix}")
    }

    /// Name of the pool on disk of every CSPI of a CSPC: `cstor-<CSPC UID>`.
    pub fn pool_name(cspc_uid: &str) -> String {
        format!("cstor-{cspc_uid}")
    }

    /// Name of the BlockDeviceClaim the CSPC controller makes for a BlockDevice:
    /// `bdc-cstor-<BlockDevice UID>` (the UID, so a recreated device gets a new claim).
    pub fn bdc_name(block_device_uid: &str) -> String {
        format!("bdc-cstor-{block_device_uid}")
    }

    /// CF for a replication factor: RF/2+1, the smallest majority
    /// (`cstor-internals.md` §2.1).
    pub fn consistency_factor(replication_factor: u32) -> u32 {
        replication_factor / 2 + 1
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn derived_names_match_cstor() {
            assert_eq!(iqn("pvc-1"), "iqn.2016-09.com.openebs.cstor:pvc-1");
            assert_eq!(
                cvr_name("pvc-1", "cstor-disk-pool-c0tw"),
                "pvc-1-cstor-disk-pool-c0tw"
            );
            assert_eq!(cspi_name("cstor-disk-cspc", "7hkl"), "cstor-disk-cspc-7hkl");
            assert_eq!(pool_name("1234"), "cstor-1234");
            assert_eq!(bdc_name("5678"), "bdc-cstor-5678");
            let cf: Vec<u32> = (1..=5).map(consistency_factor).collect();
            assert_eq!(cf, [1, 2, 2, 3, 3]);
        }
    }
}
