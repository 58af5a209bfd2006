//! The membership record of a replicated volume kept in its CStorVolume's
//! `status.replication` (reference/replication-design.md §2.2): a [`MembershipStore`]
//! over the Kubernetes API. The version is the object's resourceVersion; a CAS is a PUT of
//! the status subresource carrying the version it read, so the API server's optimistic
//! concurrency is the compare (409 = Conflict; a timeout or 5xx = Unavailable, outcome
//! unknown, as the trait says).
//!
//! Lease renewals do not touch the CStorVolume: a CAS whose only change is `renew_time`
//! goes to the Lease `cstor-target-<volume>` (spec.renewTime) and leaves the version as it
//! is, and reads take `renew_time` from that Lease. So a user's `kubectl edit cv` (the
//! alpha seed's scale-down) meets a conflict only when membership really changes.
//!
//! Stored form: `{"magic": "cstor-membership", "format": 1, "record": <Record>}`
//! (docs/node-agent.md). Calls block: the replication crate runs them on blocking threads,
//! where `Handle::block_on` is allowed.

use cstor_api::v1::CStorVolume;
use cstor_replication::membership::{Cas, MembershipStore, Record, Version};
use cstor_replication::StoreError;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::kubeapi::{is_conflict, is_not_found};

/// Magic of the stored record.
pub const MAGIC: &str = "cstor-membership";
/// Format of the stored record.
pub const FORMAT: u64 = 1;

/// The record of CStorVolume `name` in namespace `openebs`.
#[derive(Debug, Clone)]
pub struct KubeStore {
    cvs: Api<CStorVolume>,
    leases: Api<Lease>,
    name: String,
    rt: tokio::runtime::Handle,
    timeout: std::time::Duration,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Name of a volume's target Lease.
pub fn target_lease(volume: &str) -> String {
    format!("cstor-target-{volume}")
}

/// Decodes `status.replication` (None when absent).
pub fn decode(cv: &CStorVolume) -> Result<Option<Record>, StoreError> {
    let Some(v) = cv.status.as_ref().and_then(|s| s.replication.as_ref()) else {
        return Ok(None);
    };
    if v.get("magic").and_then(|m| m.as_str()) != Some(MAGIC) {
        return Err(StoreError::Corrupt("status.replication: bad magic".into()));
    }
    if v.get("format").and_then(|f| f.as_u64()) != Some(FORMAT) {
        return Err(StoreError::Corrupt(format!(
            "status.replication: format {:?}, this build reads {FORMAT}",
            v.get("format")
        )));
    }
    let rec = v
        .get("record")
        .cloned()
        .ok_or_else(|| StoreError::Corrupt("status.replication: no record".into()))?;
    serde_json::from_value(rec)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("status.replication: {e}")))
}

fn version_of(cv: &CStorVolume) -> Result<Version, StoreError> {
    cv.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0)
        .ok_or_else(|| unavailable("the CStorVolume has no numeric resourceVersion"))
}

impl KubeStore {
    /// A store for CStorVolume `name`, using the runtime `rt` for its calls.
    pub fn new(client: kube::Client, name: &str, rt: tokio::runtime::Handle) -> KubeStore {
        KubeStore {
            cvs: Api::namespaced(client.clone(), crate::NAMESPACE),
            leases: Api::namespaced(client, crate::NAMESPACE),
            name: name.to_string(),
            rt,
            timeout: std::time::Duration::from_secs(10),
        }
    }

    fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.rt.block_on(async {
            tokio::time::timeout(self.timeout, f)
                .await
                .map_err(|_| unavailable("API server timed out"))?
        })
    }

    async fn get(&self) -> Result<CStorVolume, StoreError> {
        self.cvs.get(&self.name).await.map_err(|e| {
            if is_not_found(&e) {
                unavailable(format!("cstorvolume {} not found", self.name))
            } else {
                unavailable(e)
            }
        })
    }

    async fn lease_renew(&self) -> Result<Option<u64>, StoreError> {
        let l = self
            .leases
            .get_opt(&target_lease(&self.name))
            .await
            .map_err(unavailable)?;
        Ok(l.and_then(|l| l.spec)
            .and_then(|s| s.renew_time)
            .map(|t| t.0.as_second().max(0) as u64))
    }

    async fn write_lease(&self, r: &Record) -> Result<(), StoreError> {
        let holder = r.holder.as_ref().map(|h| h.instance.clone());
        let renew =
            k8s_openapi::jiff::Timestamp::from_second(r.renew_time as i64).map_err(unavailable)?;
        let spec = json!({
            "holderIdentity": holder,
            "leaseDurationSeconds": 60,
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(renew),
        });
        let name = target_lease(&self.name);
        let lease: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": crate::NAMESPACE},
            "spec": spec,
        }))
        .map_err(unavailable)?;
        match self.leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => {
                let patch = json!({ "spec": spec });
                self.leases
                    .patch(
                        &name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await
                    .map(|_| ())
                    .map_err(unavailable)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

impl MembershipStore for KubeStore {
    fn read(&self) -> Result<(Record, Version), StoreError> {
        self.call(async {
            let cv = self.get().await?;
            let Some(mut rec) = decode(&cv)? else {
                return Ok((Record::default(), 0));
            };
            if let Some(t) = self.lease_renew().await? {
                rec.renew_time = rec.renew_time.max(t);
            }
            Ok((rec, version_of(&cv)?))
        })
    }

    fn cas(&self, v: Version, r: &Record) -> Result<Cas, StoreError> {
        self.call(async {
            let mut cv = self.get().await?;
            let stored = decode(&cv)?;
            let now = version_of(&cv)?;
            match (&stored, v) {
                (Some(_), 0) => return Ok(Cas::Conflict),
                (None, 0) => {}
                (_, v) if v != now => return Ok(Cas::Conflict),
                _ => {}
            }
            if let Some(s) = &stored {
                let mut same = s.clone();
                same.renew_time = r.renew_time;
                if &same == r {
                    // A renewal only: the Lease takes it, the CStorVolume stays as it is.
                    self.write_lease(r).await?;
                    return Ok(Cas::Ok(now));
                }
            }
            let status = cv.status.get_or_insert_with(Default::default);
            status.replication = Some(json!({"magic": MAGIC, "format": FORMAT, "record": r}));
            match self
                .cvs
                .replace_status(&self.name, &PostParams::default(), &cv)
                .await
            {
                Ok(new) => {
                    // Keep the Lease in step so a reader's max(record, lease) is right.
                    let _ = self.write_lease(r).await;
                    Ok(Cas::Ok(version_of(&new)?))
                }
                Err(e) if is_conflict(&e) => Ok(Cas::Conflict),
                Err(e) => Err(unavailable(e)),
            }
        })
    }
}
