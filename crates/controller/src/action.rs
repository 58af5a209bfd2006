//! What a reconcile pass asks for: creations, merge patches (of the object or its status),
//! deletions and events, as data. The pure reconcile functions return these; [`crate::exec`]
//! carries them out, so every decision is testable without an API server.

use serde_json::Value;

/// The kinds the controller reads or writes, with their API coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// cstor.openebs.io/v1 CStorPoolCluster.
    Cspc,
    /// cstor.openebs.io/v1 CStorPoolInstance.
    Cspi,
    /// openebs.io/v1alpha1 BlockDevice.
    Bd,
    /// openebs.io/v1alpha1 BlockDeviceClaim.
    Bdc,
    /// cstor.openebs.io/v1 CStorVolumeConfig.
    Cvc,
    /// cstor.openebs.io/v1 CStorVolume.
    Cv,
    /// cstor.openebs.io/v1 CStorVolumeReplica.
    Cvr,
    /// cstor.openebs.io/v1 CStorSnapshot.
    Csnap,
    /// v1 PersistentVolume (cluster-scoped).
    Pv,
    /// v1 PersistentVolumeClaim.
    Pvc,
    /// snapshot.storage.k8s.io/v1 VolumeSnapshot.
    Vs,
    /// snapshot.storage.k8s.io/v1 VolumeSnapshotContent (cluster-scoped).
    Vsc,
    /// storage.k8s.io/v1 VolumeAttachment (cluster-scoped; the CSI attacher's).
    Va,
}

impl Kind {
    /// (group, version, kind, plural, namespaced).
    pub fn coordinates(self) -> (&'static str, &'static str, &'static str, &'static str, bool) {
        match self {
            Kind::Cspc => (
                "cstor.openebs.io",
                "v1",
                "CStorPoolCluster",
                "cstorpoolclusters",
                true,
            ),
            Kind::Cspi => (
                "cstor.openebs.io",
                "v1",
                "CStorPoolInstance",
                "cstorpoolinstances",
                true,
            ),
            Kind::Bd => (
                "openebs.io",
                "v1alpha1",
                "BlockDevice",
                "blockdevices",
                true,
            ),
            Kind::Bdc => (
                "openebs.io",
                "v1alpha1",
                "BlockDeviceClaim",
                "blockdeviceclaims",
                true,
            ),
            Kind::Cvc => (
                "cstor.openebs.io",
                "v1",
                "CStorVolumeConfig",
                "cstorvolumeconfigs",
                true,
            ),
            Kind::Cv => (
                "cstor.openebs.io",
                "v1",
                "CStorVolume",
                "cstorvolumes",
                true,
            ),
            Kind::Cvr => (
                "cstor.openebs.io",
                "v1",
                "CStorVolumeReplica",
                "cstorvolumereplicas",
                true,
            ),
            Kind::Csnap => (
                "cstor.openebs.io",
                "v1",
                "CStorSnapshot",
                "cstorsnapshots",
                true,
            ),
            Kind::Pv => ("", "v1", "PersistentVolume", "persistentvolumes", false),
            Kind::Pvc => (
                "",
                "v1",
                "PersistentVolumeClaim",
                "persistentvolumeclaims",
                true,
            ),
            Kind::Vs => (
                "snapshot.storage.k8s.io",
                "v1",
                "VolumeSnapshot",
                "volumesnapshots",
                true,
            ),
            Kind::Vsc => (
                "snapshot.storage.k8s.io",
                "v1",
                "VolumeSnapshotContent",
                "volumesnapshotcontents",
                false,
            ),
            Kind::Va => (
                "storage.k8s.io",
                "v1",
                "VolumeAttachment",
                "volumeattachments",
                false,
            ),
        }
    }

    /// `apiVersion` of the kind.
    pub fn api_version(self) -> String {
        let (group, version, ..) = self.coordinates();
        if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        }
    }

    /// The kind's name, e.g. `CStorVolume`.
    pub fn kind(self) -> &'static str {
        self.coordinates().2
    }
}

/// The object an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regarding {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace (None for cluster-scoped objects).
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Its UID, when known.
    pub uid: Option<String>,
}

/// One step a reconcile pass asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create `object` (a full object with apiVersion, kind and metadata), then, when
    /// `status` is given, write it through the status subresource.
    Create {
        /// The kind.
        kind: Kind,
        /// The object.
        object: Value,
        /// Its first status.
        status: Option<Value>,
    },
    /// JSON merge patch of an object (or of its status subresource when `status`).
    Patch {
        /// The kind.
        kind: Kind,
        /// Its namespace.
        namespace: Option<String>,
        /// Its name.
        name: String,
        /// The merge patch.
        patch: Value,
        /// Patch `/status` instead of the object.
        status: bool,
    },
    /// Delete an object (background propagation: the API server's garbage collector
    /// removes its dependants).
    Delete {
        /// The kind.
        kind: Kind,
        /// Its namespace.
        namespace: Option<String>,
        /// Its name.
        name: String,
    },
    /// Record an Event about an object (repeats are folded into one with a count).
    Event {
        /// What the event is about.
        regarding: Regarding,
        /// Warning (true) or Normal.
        warning: bool,
        /// CamelCase reason.
        reason: String,
        /// The message a user reads in `kubectl describe`.
        message: String,
    },
}

impl Action {
    /// A merge patch of the object itself.
    pub fn patch(kind: Kind, namespace: Option<&str>, name: &str, patch: Value) -> Action {
        Action::Patch {
            kind,
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
            patch,
            status: false,
        }
    }

    /// A merge patch of the status subresource.
    pub fn patch_status(kind: Kind, namespace: Option<&str>, name: &str, patch: Value) -> Action {
        Action::Patch {
            kind,
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
            patch,
            status: true,
        }
    }

    /// A deletion.
    pub fn delete(kind: Kind, namespace: Option<&str>, name: &str) -> Action {
        Action::Delete {
            kind,
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    /// An event about `regarding`.
    pub fn event(regarding: Regarding, warning: bool, reason: &str, message: String) -> Action {
        Action::Event {
            regarding,
            warning,
            reason: reason.to_owned(),
            message,
        }
    }
}

/// Builds a [`Regarding`] from an object's metadata.
pub fn regarding(
    kind: Kind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Regarding {
    Regarding {
        kind,
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone(),
    }
}

/// An owner reference to an object (`controller: true`, so the garbage collector deletes
/// the dependant with its owner).
pub fn owner_ref(
    kind: Kind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Value {
    serde_json::json!({
        "apiVersion": kind.api_version(),
        "kind": kind.kind(),
        "name": meta.name.clone().unwrap_or_default(),
        "uid": meta.uid.clone().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}
