//! CStorSnapshots and restores on the replicated volumes this node's targets serve.
//!
//! Snapshots: the agent whose target runs volume V takes every CStorSnapshot of V
//! (`spec.volumeName`) on the running [`ReplicatedVolume`] under `spec.snapshotName`, and
//! writes its status (phase Ready, readyToUse, io, creationTime, restoreSize). What exists
//! is read from the membership record's snapshot list, never remembered: after a restart
//! a recorded snapshot is only reported, never taken twice. A snapshot that cannot be
//! taken now (the volume not serving, another snapshot in progress) stays Pending with
//! the reason in `status.message` and a Warning Event, and is retried each pass; one the
//! replication layer can never take (a bad name) is Failed.
//!
//! Deletion: the agent puts finalizer [`FINALIZER`] on the snapshots it serves, so a
//! deleted CStorSnapshot stays until its target deleted the replicated snapshot (out of
//! the record, then off the replicas). A delete the volume refuses (a clone of the
//! snapshot still exists) keeps the finalizer and is reported the same way. A snapshot
//! whose CStorVolume is gone (or being deleted) has nothing left to delete: any agent
//! removes the finalizer, so it never blocks the deletion forever.
//!
//! Restores: a volume whose CVRs carry `openebs.io/cloned=true` with
//! `openebs.io/source-volume=S` and `openebs.io/snapshot=N` starts as a clone of S@N.
//! The agent whose target runs S makes it: `ReplicatedVolume::clone_snapshot_on` takes a
//! pool clone on the Current replicas of S on the pools of the restore's CVRs (the
//! controller places a restore's replicas on S's pools, so they are the same replica
//! servers; a restore may have fewer replicas than S) and writes the clone's membership
//! record into the clone's CStorVolume; the clone's target ([`crate::targets`]) waits for
//! that record before its first start, so it never opens empty replicas.
//!
//! Invariants: only the finalizer and `status` of a CStorSnapshot are written, by merge
//! patches and only on change; a clone is made only into an empty record.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cstor_api::names::label;
use cstor_api::v1::{
    CStorPoolInstance, CStorSnapshot, CStorSnapshotPhase, CStorVolume, CStorVolumeReplica,
};
use cstor_replication::membership::SnapshotRec;
use cstor_replication::{ReplicatedVolume, VolumeError};
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::error::Result;
use crate::kubeapi::{merge, merge_status};
use crate::store::{decode, KubeStore};
use crate::{Ctx, CSPI_LABEL, ENDPOINT_ANNOTATION, NAMESPACE, PV_LABEL};

/// Finalizer of a CStorSnapshot whose replicated snapshot the agent still has to delete.
pub const FINALIZER: &str = "cstor.openebs.io/snapshot-protection";

/// One pass: snapshots and clones of the volumes in `running` (name -> volume, the
/// targets serving on this node), and the finalizers of snapshots whose volume is gone.
pub async fn sync(ctx: &Arc<Ctx>, running: &BTreeMap<String, ReplicatedVolume>) -> Result<()> {
    let api: Api<CStorSnapshot> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let snaps = api.list(&ListParams::default()).await?.items;
    let cvs: Api<CStorVolume> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let all_cvs = cvs.list(&ListParams::default()).await?.items;
    let volume_alive = |v: &str| {
        all_cvs
            .iter()
            .any(|c| c.name_any() == v && c.metadata.deletion_timestamp.is_none())
    };
    for s in &snaps {
        let vol = &s.spec.volume_name;
        if s.metadata.deletion_timestamp.is_some() && !volume_alive(vol) {
            if s.finalizers().iter().any(|f| f == FINALIZER) {
                tracing::info!(snapshot = %s.name_any(), volume = %vol, "volume gone: releasing the snapshot");
                drop_finalizer(&api, s).await?;
            }
            continue;
        }
        let Some(v) = running.get(vol) else { continue };
        if let Err(e) = one(ctx, &api, s, v).await {
            tracing::warn!(snapshot = %s.name_any(), error = %e, "snapshot");
        }
    }
    if !running.is_empty() {
        clones(ctx, &cvs, &all_cvs, running).await?;
    }
    Ok(())
}

fn recorded(v: &ReplicatedVolume, name: &str) -> Option<SnapshotRec> {
    v.record().snapshots.into_iter().find(|s| s.name == name)
}

async fn one(
    ctx: &Arc<Ctx>,
    api: &Api<CStorSnapshot>,
    s: &CStorSnapshot,
    v: &ReplicatedVolume,
) -> Result<()> {
    let name = s.name_any();
    let snap = s.spec.snapshot_name.as_str();
    if s.metadata.deletion_timestamp.is_some() {
        if !s.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(());
        }
        if recorded(v, snap).is_some() {
            if let Err(e) = v.delete_snapshot(snap).await {
                let msg = format!(
                    "deleting snapshot {snap} of volume {}: {e}",
                    s.spec.volume_name
                );
                report(
                    ctx,
                    api,
                    s,
                    CStorSnapshotPhase::Ready,
                    &msg,
                    "SnapshotDeleteFailed",
                )
                .await?;
                return Ok(());
            }
            tracing::info!(snapshot = %name, volume = %s.spec.volume_name, "replicated snapshot deleted");
        }
        return drop_finalizer(api, s).await;
    }
    if !s.finalizers().iter().any(|f| f == FINALIZER) {
        let mut f: Vec<String> = s.finalizers().to_vec();
        f.push(FINALIZER.to_owned());
        merge(api, &name, json!({"metadata": {"finalizers": f}})).await?;
    }
    let rec = match recorded(v, snap) {
        Some(r) => r,
        None => match v.snapshot(snap).await {
            Ok(r) => {
                event(
                    ctx,
                    s,
                    false,
                    "SnapshotTaken",
                    &format!(
                        "snapshot {snap} of volume {} taken at io {}",
                        s.spec.volume_name, r.io
                    ),
                )
                .await;
                r
            }
            Err(e) => {
                let msg = format!(
                    "taking snapshot {snap} of volume {}: {e}",
                    s.spec.volume_name
                );
                let phase = match e {
                    VolumeError::Refused(ref m) if m.starts_with("bad snapshot name") => {
                        CStorSnapshotPhase::Failed
                    }
                    _ => CStorSnapshotPhase::Pending,
                };
                return report(ctx, api, s, phase, &msg, "SnapshotFailed").await;
            }
        },
    };
    let created = k8s_openapi::jiff::Timestamp::from_second(rec.at as i64)
        .map(|t| json!(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t)))
        .unwrap_or(Value::Null);
    let want = json!({
        "phase": "Ready",
        "readyToUse": true,
        "io": rec.io,
        "creationTime": created,
        "restoreSize": cstor_api::quantity::format_bytes(rec.size),
        "message": Value::Null,
    });
    if !covers(s, &want) {
        merge_status(api, &name, want).await?;
    }
    Ok(())
}

/// Whether the status already says everything `want` does (a null in `want`: absent).
fn covers(s: &CStorSnapshot, want: &Value) -> bool {
    let have = serde_json::to_value(&s.status).unwrap_or(Value::Null);
    want.as_object().is_some_and(|w| {
        w.iter().all(|(k, v)| match v {
            Value::Null => have.get(k).is_none_or(Value::is_null),
            v => have.get(k) == Some(v),
        })
    })
}

/// Writes a failure (phase and message) and a Warning Event, once per distinct message.
async fn report(
    ctx: &Arc<Ctx>,
    api: &Api<CStorSnapshot>,
    s: &CStorSnapshot,
    phase: CStorSnapshotPhase,
    msg: &str,
    reason: &str,
) -> Result<()> {
    let cur = s.status.as_ref();
    if cur.and_then(|c| c.message.as_deref()) == Some(msg)
        && cur.and_then(|c| c.phase) == Some(phase)
    {
        return Ok(());
    }
    tracing::warn!(snapshot = %s.name_any(), "{msg}");
    // A snapshot once Ready stays usable while its delete is refused.
    let ready = phase == CStorSnapshotPhase::Ready;
    merge_status(
        api,
        &s.name_any(),
        json!({"phase": phase, "readyToUse": ready, "message": msg}),
    )
    .await?;
    event(ctx, s, true, reason, msg).await;
    Ok(())
}

async fn drop_finalizer(api: &Api<CStorSnapshot>, s: &CStorSnapshot) -> Result<()> {
    let rest: Vec<&String> = s.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    match merge(
        api,
        &s.name_any(),
        json!({"metadata": {"finalizers": rest}}),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(crate::AgentError::Kube(e)) if crate::kubeapi::is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A core/v1 Event about `s`; failing to write one is logged, never fatal.
async fn event(ctx: &Arc<Ctx>, s: &CStorSnapshot, warning: bool, reason: &str, msg: &str) {
    let about = crate::kubeapi::About {
        kind: "CStorSnapshot",
        name: &s.name_any(),
        uid: s.metadata.uid.as_deref(),
    };
    crate::kubeapi::event(ctx, about, warning, reason, msg).await;
}

/// Makes the clones of snapshots of `running` volumes that restores wait for.
async fn clones(
    ctx: &Arc<Ctx>,
    cvs: &Api<CStorVolume>,
    all_cvs: &[CStorVolume],
    running: &BTreeMap<String, ReplicatedVolume>,
) -> Result<()> {
    let cvrs: Api<CStorVolumeReplica> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let sel = format!("{}=true", label::CLONED);
    // Each restore and the pool instances of its replicas: the clone is made on those
    // only (a restore may ask for fewer replicas than its source has).
    let mut wanted: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for r in cvrs.list(&ListParams::default().labels(&sel)).await?.items {
        let l = r.labels();
        if let (Some(pv), Some(src), Some(snap), Some(cspi)) = (
            l.get(PV_LABEL),
            l.get(label::SOURCE_VOLUME),
            l.get(label::SNAPSHOT),
            l.get(CSPI_LABEL),
        ) {
            if running.contains_key(src) && r.metadata.deletion_timestamp.is_none() {
                wanted
                    .entry((pv.clone(), src.clone(), snap.clone()))
                    .or_default()
                    .insert(cspi.clone());
            }
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let cspis: Api<CStorPoolInstance> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let all_cspis = cspis.list(&ListParams::default()).await?.items;
    for ((pv, src, snap), pools) in wanted {
        // The replica servers of the restore's pools; one not serving yet: next pass.
        let on: Option<Vec<String>> = pools
            .iter()
            .map(|p| {
                all_cspis
                    .iter()
                    .find(|c| c.name_any() == *p)
                    .and_then(|c| c.annotations().get(ENDPOINT_ANNOTATION).cloned())
            })
            .collect();
        let Some(on) = on else {
            tracing::debug!(volume = %pv, "restore: a replica's pool has no endpoint yet");
            continue;
        };
        let Some(cv) = all_cvs
            .iter()
            .find(|c| c.name_any() == pv && c.metadata.deletion_timestamp.is_none())
        else {
            continue;
        };
        let empty = match decode(cv) {
            Ok(r) => r.is_none_or(|r| r.members.is_empty() && r.epoch == 0),
            Err(e) => {
                tracing::warn!(volume = %pv, error = %e, "membership record of a restore");
                false
            }
        };
        if !empty {
            continue;
        }
        let Some(v) = running.get(&src) else { continue };
        if recorded(v, &snap).is_none() {
            tracing::warn!(volume = %pv, source = %src, snapshot = %snap, "restore of a snapshot the source does not hold");
            let msg = format!("restore source {src}@{snap}: no such snapshot in the source volume");
            if cv.status.as_ref().and_then(|s| s.message.as_deref()) != Some(msg.as_str()) {
                merge_status(cvs, &pv, json!({"message": msg})).await?;
            }
            continue;
        }
        let store = Arc::new(KubeStore::new(
            ctx.client.clone(),
            &pv,
            tokio::runtime::Handle::current(),
        ));
        match v
            .clone_snapshot_on(&snap, &pv, store, Some(on.as_slice()))
            .await
        {
            Ok(rec) => {
                tracing::info!(volume = %pv, source = %src, snapshot = %snap, members = rec.members.len(), "restore cloned")
            }
            Err(e) => {
                let msg = format!("cloning {src}@{snap}: {e}");
                tracing::warn!(volume = %pv, "{msg}");
                if cv.status.as_ref().and_then(|s| s.message.as_deref()) != Some(msg.as_str()) {
                    merge_status(cvs, &pv, json!({"message": msg})).await?;
                }
            }
        }
    }
    Ok(())
}
