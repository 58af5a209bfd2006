//! The driver's I/O with the API server: a bounded view of the cluster and the few
//! writes CSI needs (create, delete, resize and annotate a CStorVolumeConfig; a volume's
//! driver-owned CHAP Secret, [`crate::chap`]). Everything else
//! (replicas, targets, expansion of the CV and CVRs) follows from those through the
//! controller and the node agents, as for a PVC.
//!
//! Never: writes CStorVolumes, CStorVolumeReplicas or pool instances (theirs).
//! Cancellation: a dropped call leaves at most one finished write behind, which the next
//! call of the same RPC finds and continues from (every write here is idempotent).

use std::future::Future;

use cstor_api::v1::{CStorVolume, CStorVolumeConfig, CStorVolumeSpec};
use cstor_controller::action::Kind;
use cstor_controller::exec;
use cstor_controller::World;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

use crate::limits::{API_TIMEOUT, PROBE_TIMEOUT};
use crate::Error;

/// The API server and the namespace of cstor's objects.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    namespace: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

pub(crate) async fn bounded<T>(
    op: &str,
    f: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(API_TIMEOUT, f)
        .await
        .map_err(|_| Error::ApiTimeout {
            op: op.to_owned(),
            secs: API_TIMEOUT.as_secs(),
        })?
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Cluster {
    /// A cluster reached through `client`, cstor's objects in `namespace`.
    pub fn new(client: Client, namespace: String) -> Cluster {
        Cluster { client, namespace }
    }

    /// Namespace of cstor's objects.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The API client (for [`crate::snapshot`]'s CStorSnapshot calls).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Pools, volumes, policies and nodes as the controller sees them.
    pub async fn view(&self) -> Result<World, Error> {
        bounded("list volumes and pools", async {
            exec::load_volumes(&self.client, &self.namespace)
                .await
                .map_err(|e| match e {
                    cstor_controller::Error::Api { op, source } => Error::api(op, source),
                    other => Error::Decode {
                        what: "the cluster's volumes".to_owned(),
                        why: other.to_string(),
                    },
                })
        })
        .await
    }

    /// Creates a CVC (phase Pending, as the PVC path makes them). Ok(false) when one of
    /// that name already exists (a concurrent create won the race).
    pub async fn create_cvc(&self, object: Value) -> Result<bool, Error> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let cvc: CStorVolumeConfig = serde_json::from_value(object).map_err(|e| Error::Decode {
            what: format!("CStorVolumeConfig {name}"),
            why: e.to_string(),
        })?;
        let api = kube::Api::<CStorVolumeConfig>::namespaced(self.client.clone(), &self.namespace);
        let op = format!("create cstorvolumeconfig {name}");
        bounded(&op, async {
            match api.create(&PostParams::default(), &cvc).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => return Ok(false),
                Err(e) => return Err(Error::api(op.clone(), e)),
            }
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Pending"}})),
            )
            .await
            .map_err(|e| Error::api(format!("set the status of cstorvolumeconfig {name}"), e))?;
            Ok(true)
        })
        .await
    }

    /// Deletes a CVC (its CV and CVRs follow by owner references). Ok(false) when there
    /// was none.
    pub async fn delete_cvc(&self, name: &str) -> Result<bool, Error> {
        let api = exec::api(&self.client, Kind::Cvc, Some(&self.namespace));
        let op = format!("delete cstorvolumeconfig {name}");
        bounded(&op, async {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(true),
                Err(e) if not_found(&e) => Ok(false),
                Err(e) => Err(Error::api(op.clone(), e)),
            }
        })
        .await
    }

    /// Asks for a larger volume: the CVC's `spec.capacity.storage` (the controller
    /// carries it to the CV and the CVRs).
    pub async fn resize_cvc(&self, name: &str, quantity: &str) -> Result<(), Error> {
        let api = exec::api(&self.client, Kind::Cvc, Some(&self.namespace));
        let op = format!("resize cstorvolumeconfig {name} to {quantity}");
        bounded(&op, async {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"capacity": {"storage": quantity}}})),
            )
            .await
            .map(|_| ())
            .map_err(|e| {
                if not_found(&e) {
                    Error::VolumeNotFound {
                        volume: name.to_owned(),
                    }
                } else {
                    Error::api(op.clone(), e)
                }
            })
        })
        .await
    }

    /// Applies a metadata merge patch to a CVC; the patch carries the resourceVersion
    /// it was decided on, so a CVC changed meanwhile is answered ABORTED (decide again).
    pub async fn patch_cvc_metadata(&self, name: &str, patch: Value) -> Result<(), Error> {
        debug_assert!(patch["metadata"]["resourceVersion"].is_string());
        let api = exec::api(&self.client, Kind::Cvc, Some(&self.namespace));
        let op = format!("annotate cstorvolumeconfig {name}");
        bounded(&op, async {
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Pending {
                    volume: name.to_owned(),
                    what: "its CStorVolumeConfig changed meanwhile; retry".to_owned(),
                }),
                Err(e) if not_found(&e) => Err(Error::VolumeNotFound {
                    volume: name.to_owned(),
                }),
                Err(e) => Err(Error::api(op.clone(), e)),
            }
        })
        .await
    }

    /// The spec of the CStorVolume `name` (the target's IQN and portal), for a node
    /// stage without a publish_context.
    pub async fn volume_spec(&self, name: &str) -> Result<CStorVolumeSpec, Error> {
        let api = kube::Api::<CStorVolume>::namespaced(self.client.clone(), &self.namespace);
        let op = format!("get cstorvolume {name}");
        bounded(&op, async {
            match api.get(name).await {
                Ok(cv) => Ok(cv.spec),
                Err(e) if not_found(&e) => Err(Error::VolumeNotFound {
                    volume: name.to_owned(),
                }),
                Err(e) => Err(Error::api(op.clone(), e)),
            }
        })
        .await
    }

    /// Sets or removes (`None`) one annotation of a CVC (no resourceVersion: an
    /// annotation of its own, which no other write decides on).
    pub async fn annotate_cvc(
        &self,
        name: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), Error> {
        let api = exec::api(&self.client, Kind::Cvc, Some(&self.namespace));
        let op = format!("annotate cstorvolumeconfig {name}");
        let patch = json!({"metadata": {"annotations": {key: value}}});
        bounded(&op, async {
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if not_found(&e) => Err(Error::VolumeNotFound {
                    volume: name.to_owned(),
                }),
                Err(e) => Err(Error::api(op.clone(), e)),
            }
        })
        .await
    }

    /// Makes Secret `name` in the driver's namespace hold `data` (created owned by the
    /// CVC `owner`, so it goes with the volume); returns its resourceVersion.
    pub async fn put_secret(
        &self,
        name: &str,
        owner: &CStorVolumeConfig,
        data: std::collections::BTreeMap<String, String>,
    ) -> Result<String, Error> {
        let api = kube::Api::<Secret>::namespaced(self.client.clone(), &self.namespace);
        let op = format!("write secret {name}");
        let bytes: std::collections::BTreeMap<String, ByteString> = data
            .into_iter()
            .map(|(k, v)| (k, ByteString(v.into_bytes())))
            .collect();
        bounded(&op, async {
            let err = |e| Error::api(op.clone(), e);
            let existing = api.get_opt(name).await.map_err(err)?;
            if let Some(s) = &existing {
                if s.data.as_ref() == Some(&bytes) {
                    return Ok(s.metadata.resource_version.clone().unwrap_or_default());
                }
            }
            let mut secret: Secret = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/managed-by": cstor_api::names::CSI_DRIVER_NAME},
                             "ownerReferences": [{"apiVersion": cstor_api::names::CSTOR_API_VERSION,
                                 "kind": "CStorVolumeConfig", "name": owner.metadata.name,
                                 "uid": owner.metadata.uid}]},
                "type": "Opaque",
            }))
            .map_err(|e| Error::Decode {
                what: format!("Secret {name}"),
                why: e.to_string(),
            })?;
            secret.data = Some(bytes);
            let written = match existing {
                None => api.create(&PostParams::default(), &secret).await,
                Some(s) => {
                    secret.metadata.resource_version = s.metadata.resource_version;
                    api.replace(name, &PostParams::default(), &secret).await
                }
            };
            match written {
                Ok(s) => Ok(s.metadata.resource_version.unwrap_or_default()),
                Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Pending {
                    volume: owner.metadata.name.clone().unwrap_or_default(),
                    what: format!("its Secret {name} changed meanwhile; retry"),
                }),
                Err(e) => Err(err(e)),
            }
        })
        .await
    }

    /// Deletes Secret `name` of the driver's namespace; Ok when there is none.
    pub async fn delete_secret(&self, name: &str) -> Result<(), Error> {
        let api = kube::Api::<Secret>::namespaced(self.client.clone(), &self.namespace);
        let op = format!("delete secret {name}");
        bounded(&op, async {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(e) if not_found(&e) => Ok(()),
                Err(e) => Err(Error::api(op.clone(), e)),
            }
        })
        .await
    }

    /// Whether the API server answers within [`PROBE_TIMEOUT`].
    pub async fn reachable(&self) -> bool {
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, self.client.apiserver_version()).await,
            Ok(Ok(_))
        )
    }
}
