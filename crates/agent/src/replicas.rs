//! Pool-side status of the CStorVolumeReplicas on this node's pools (label
//! `openebs.io/cstor-pool-instance=<cspi>`): capacity (bytes it holds on disk and the
//! logical bytes of its data, cStor's ALLOCATED and USED), phase Init before its target first opened it, and Offline while no live
//! target serves its volume (the target's node Lease is stale, or the CV is placed
//! nowhere). While a live target serves it, that target's agent writes the phase and
//! rebuild progress ([`crate::targets`]); the two writers own disjoint cases.
//!
//! The replica volume itself is created by the replica server when the target first
//! opens it, so a fresh replica is known to be New (no history) and is rebuilt in full;
//! it is destroyed once its CVR is gone ([`crate::reclaim`]).

use std::sync::Arc;

use cstor_api::v1::CStorVolume;
use cstor_api::v1::{CStorVolumeReplica, CStorVolumeReplicaPhase};
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use serde_json::json;

use crate::error::Result;
use crate::kubeapi::{merge_status, now};
use crate::pools::Pools;
use crate::{Ctx, CSPI_LABEL, NAMESPACE, PV_LABEL, TARGET_NODE_LABEL};

/// The volume of `cvr` on pool instance `cspi`: its label, else its name less `-<cspi>`.
pub(crate) fn pv_of(cvr: &CStorVolumeReplica, cspi: &str) -> String {
    cvr.labels().get(PV_LABEL).cloned().unwrap_or_else(|| {
        cvr.name_any()
            .trim_end_matches(&format!("-{cspi}"))
            .to_string()
    })
}

/// One pass over the CVRs of this node's pools.
pub async fn sync(ctx: &Arc<Ctx>, pools: &Pools) -> Result<()> {
    let names = pools.names().await;
    if names.is_empty() {
        return Ok(());
    }
    let api: Api<CStorVolumeReplica> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let cvs: Api<CStorVolume> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let sel = format!("{CSPI_LABEL} in ({})", names.join(","));
    for cvr in api.list(&ListParams::default().labels(&sel)).await?.items {
        let Some(cspi) = cvr.labels().get(CSPI_LABEL).cloned() else {
            continue;
        };
        let Some(h) = pools.get(&cspi).await else {
            continue;
        };
        let pv = pv_of(&cvr, &cspi);
        let open = h.open.clone();
        let pv2 = pv.clone();
        let info = tokio::task::spawn_blocking(move || open.engine().volume_info(&pv2).ok())
            .await
            .ok()
            .flatten();
        let cur = cvr.status.clone().unwrap_or_default();
        let mut patch = serde_json::Map::new();
        if let Some(i) = &info {
            // As cStor: `total` is what the replica holds on disk with its snapshots (zfs
            // `used`, the ALLOCATED column), `used` the logical bytes of its current data
            // (zfs `logicalreferenced`, the USED column).
            let logical = (i.referenced as f64 * i.compression_ratio.max(1.0)) as u64;
            let cap = json!({
                "total": cstor_api::quantity::format_bytes_short(i.used),
                "used": cstor_api::quantity::format_bytes_short(logical),
            });
            if cur.capacity.as_ref().map(|c| json!(c)) != Some(cap.clone()) {
                patch.insert("capacity".into(), cap);
            }
        }
        // Is a live target serving this volume? (Its agent owns the phase then.)
        let target_node = cvs
            .get_opt(&pv)
            .await?
            .and_then(|cv| cv.labels().get(TARGET_NODE_LABEL).cloned());
        let live = match &target_node {
            Some(n) => crate::node::alive(&ctx.client, n).await?,
            None => false,
        };
        let phase = cur.phase;
        let want = if info.is_none() && matches!(phase, None | Some(CStorVolumeReplicaPhase::Empty))
        {
            Some((
                "Init",
                "waiting for the volume's target to open the replica".to_string(),
            ))
        } else if !live && info.is_some() && phase != Some(CStorVolumeReplicaPhase::Offline) {
            Some((
                "Offline",
                match target_node {
                    Some(n) => format!("target node {n} is not heartbeating"),
                    None => "the volume's target is placed on no node".to_string(),
                },
            ))
        } else {
            None
        };
        if let Some((p, msg)) = want {
            patch.insert("phase".into(), json!(p));
            patch.insert("message".into(), json!(msg));
            patch.insert("lastTransitionTime".into(), json!(now()));
        }
        if !patch.is_empty() {
            patch.insert("lastUpdateTime".into(), json!(now()));
            merge_status(&api, &cvr.name_any(), serde_json::Value::Object(patch)).await?;
        }
    }
    Ok(())
}
