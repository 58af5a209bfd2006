//! Replica data of deleted CStorVolumeReplicas: a pool volume of a hosted pool that no
//! CVR of that pool names any more (its volume deleted under reclaim Delete, a replica
//! removed by a scale-down whose CVR the user deleted, a replaced replica's old CVR) is
//! released by the pool's replica server (its sessions end) and destroyed. One with
//! dependents (a clone made by a restore from one of its snapshots) is kept, with a
//! Warning Event on the CSPI saying why, and destroyed on a later pass once they are gone;
//! that in turn lets the delete of the source's CStorSnapshot finish.
//!
//! No finalizer on the CVR: its delete never waits for a node, so it cannot hang when the
//! node is gone for good; the data goes when the pool's agent runs (its next pass, or
//! after its node returns), because each pass compares the pool's volumes with the CVRs
//! that exist rather than remembering deletions.
//!
//! Only replica data is reclaimed: volumes a target opened (epoch set) and clones made by
//! restores; a volume made by hand on the pool (`cstor volume create`) is left alone.
//!
//! Invariants: a pool's volumes are listed BEFORE the CVRs. A pool volume is only made for
//! a CVR that exists already (the replica server creates it when a target opens the
//! replica of a CVR it found; a restore's clone is made for the restore's CVRs), so a
//! volume listed before a CVR list that lacks its CVR has lost it. A volume is destroyed
//! only after two passes in a row found it without a CVR; a failed CVR list destroys
//! nothing. A CVR being deleted counts as gone.

use std::collections::{BTreeMap, BTreeSet};

use cstor_api::v1::CStorVolumeReplica;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use tokio::sync::Mutex;

use crate::error::Result;
use crate::kubeapi::{event, About};
use crate::pools::Pools;
use crate::replicas::pv_of;
use crate::{Ctx, CSPI_LABEL, NAMESPACE};

/// A pool volume: (cspi, volume).
type PoolVolume = (String, String);

/// Orphaned pool volumes seen so far: passes in a row, and the last message reported.
#[derive(Debug, Default)]
pub struct Reclaim {
    seen: Mutex<BTreeMap<PoolVolume, (u32, Option<String>)>>,
}

impl Reclaim {
    /// One pass over the volumes of every hosted pool.
    pub async fn sync(&self, ctx: &Ctx, pools: &Pools) -> Result<()> {
        let mut listed = Vec::new();
        for name in pools.names().await {
            let Some(h) = pools.get(&name).await else {
                continue;
            };
            let open = h.open.clone();
            let vols = tokio::task::spawn_blocking(move || open.engine().list_volumes())
                .await
                .map_err(|e| crate::AgentError::Invalid(format!("volume list task: {e}")))?;
            listed.push((name, h, vols));
        }
        if listed.is_empty() {
            return Ok(());
        }
        let api: Api<CStorVolumeReplica> = Api::namespaced(ctx.client.clone(), NAMESPACE);
        let live: BTreeSet<PoolVolume> = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .filter_map(|c| {
                let cspi = c.labels().get(CSPI_LABEL)?.clone();
                Some((cspi.clone(), pv_of(c, &cspi)))
            })
            .collect();
        let mut seen = self.seen.lock().await;
        let mut orphans = BTreeSet::new();
        for (cspi, h, vols) in listed {
            for v in vols {
                let key = (cspi.clone(), v.name.clone());
                // Only replica data: a volume a target opened (its epoch is set) or a
                // restore's clone. One an operator made by hand is never touched.
                if live.contains(&key) || (v.epoch == 0 && v.origin.is_none()) {
                    continue;
                }
                orphans.insert(key.clone());
                let entry = seen.entry(key).or_insert((0, None));
                entry.0 += 1;
                if entry.0 < 2 {
                    continue;
                }
                let about = About {
                    kind: "CStorPoolInstance",
                    name: &cspi,
                    uid: None,
                };
                h.release(&v.name);
                let open = h.open.clone();
                let vol = v.name.clone();
                let r = tokio::task::spawn_blocking(move || {
                    open.engine().destroy_volume(&vol)?;
                    open.engine().sync().map(|_| ())
                })
                .await
                .map_err(|e| crate::AgentError::Invalid(format!("volume destroy task: {e}")))?;
                match r {
                    Ok(()) => {
                        let msg = format!(
                            "destroyed pool volume {} of {cspi}: no CStorVolumeReplica names it any more",
                            v.name
                        );
                        tracing::info!(cspi = %cspi, volume = %v.name, "{msg}");
                        event(ctx, about, false, "ReplicaDataDestroyed", &msg).await;
                        orphans.remove(&(cspi.clone(), v.name.clone()));
                    }
                    Err(e) => {
                        let msg = format!(
                            "pool volume {} of {cspi} has no CStorVolumeReplica but is kept: {e}; it is destroyed once that no longer holds",
                            v.name
                        );
                        if entry.1.as_deref() != Some(msg.as_str()) {
                            tracing::warn!(cspi = %cspi, volume = %v.name, "{msg}");
                            event(ctx, about, true, "ReplicaDataKept", &msg).await;
                            entry.1 = Some(msg);
                        }
                    }
                }
            }
        }
        seen.retain(|k, _| orphans.contains(k));
        Ok(())
    }
}
