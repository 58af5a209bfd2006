//! The Controller service's snapshots: CreateSnapshot, DeleteSnapshot, ListSnapshots and
//! the snapshot content source of CreateVolume, as CStorSnapshots (the object the
//! controller makes for a VolumeSnapshot; the node agent hosting the volume's target
//! takes it and writes its status).
//!
//! Ids: a CSI snapshot name maps to the CStorSnapshot name [`request::volume_id`] gives
//! (the name itself when it is a DNS-1123 label, else `csi-<md5>`), which is also the
//! snapshot's name in the replicas. The snapshot id is `<volume>@<snapshot name>`, the
//! VolumeSnapshotContent `snapshotHandle` the controller writes and a restore's
//! `cstorVolumeSource`: one format for every path.
//!
//! Invariants: only CStorSnapshots are written (create, delete); CreateSnapshot answers
//! at once with the snapshot's state (ready_to_use false until the agent took it; the
//! sidecar polls by repeating the call, which is idempotent by name).
//! Not served: volume content sources (CLONE_VOLUME is not advertised); GetSnapshot.

use std::collections::HashMap;

use cstor_api::names::{label, CSTOR_API_VERSION};
use cstor_api::quantity::quantity_bytes;
use cstor_api::v1::{CStorSnapshot, CStorSnapshotPhase};
use cstor_controller::volume::cvc_size;
use cstor_controller::world::{deleting, name};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::cluster::{bounded, Cluster};
use crate::limits::{LIST_PAGE_MAX, SIZE_STEP_BYTES};
use crate::pb::volume_content_source::{SnapshotSource, Type as SourceType};
use crate::pb::*;
use crate::request;
use crate::Error;

/// CStorSnapshot annotation with the name the CO gave CreateSnapshot.
pub const CSI_NAME_ANNOTATION: &str = "cstor.csi.openebs.io/snapshot-name";

/// `<volume>@<snapshot>` of a snapshot id; None when the id cannot name one of ours.
pub fn parse_id(id: &str) -> Option<(&str, &str)> {
    let (v, s) = id.split_once('@')?;
    (request::dns_label(v) && !s.is_empty() && !s.contains('@')).then_some((v, s))
}

/// The snapshot id of a CStorSnapshot.
pub fn snapshot_id(c: &CStorSnapshot) -> String {
    format!("{}@{}", c.spec.volume_name, c.spec.snapshot_name)
}

fn api(cluster: &Cluster) -> Api<CStorSnapshot> {
    Api::namespaced(cluster.client().clone(), cluster.namespace())
}

async fn list(cluster: &Cluster) -> Result<Vec<CStorSnapshot>, Error> {
    let api = api(cluster);
    bounded("list cstorsnapshots", async {
        api.list(&ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(|e| Error::api("list cstorsnapshots", e))
    })
    .await
}

fn timestamp(t: &k8s_openapi::jiff::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.as_second(),
        nanos: t.subsec_nanosecond(),
    }
}

/// The CSI view of a CStorSnapshot; `volume_size` is the size of its volume when known
/// (a snapshot not taken yet has no restore size).
fn view(c: &CStorSnapshot, volume_size: Option<u64>) -> Snapshot {
    let st = c.status.as_ref();
    let ready = st.is_some_and(|s| {
        s.ready_to_use == Some(true) && s.phase != Some(CStorSnapshotPhase::Failed)
    });
    let size = st
        .and_then(|s| s.restore_size.as_ref())
        .and_then(|q| quantity_bytes(q).ok())
        .or(volume_size)
        .unwrap_or(0);
    let created = st
        .and_then(|s| s.creation_time.as_ref())
        .or(c.metadata.creation_timestamp.as_ref())
        .map(|t| timestamp(&t.0));
    Snapshot {
        size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
        snapshot_id: snapshot_id(c),
        source_volume_id: c.spec.volume_name.clone(),
        creation_time: created,
        ready_to_use: ready,
        group_snapshot_id: String::new(),
    }
}

/// CreateSnapshot: idempotent by name; ALREADY_EXISTS when the name is taken by a
/// snapshot of another volume; NOT_FOUND when the source volume does not exist.
pub async fn create(
    cluster: &Cluster,
    req: CreateSnapshotRequest,
) -> Result<CreateSnapshotResponse, Error> {
    if req.name.is_empty() {
        return Err(Error::invalid("name", "is required"));
    }
    if req.source_volume_id.is_empty() {
        return Err(Error::invalid("source_volume_id", "is required"));
    }
    let snap = request::volume_id(&req.name)?;
    let missing = || Error::VolumeNotFound {
        volume: req.source_volume_id.clone(),
    };
    let vol = request::existing_id(&req.source_volume_id)?.ok_or_else(missing)?;
    let world = cluster.view().await?;
    let size = world.cvc(vol).map(cvc_size);
    let existing = list(cluster).await?;
    if let Some(c) = existing.iter().find(|c| name(&c.metadata) == snap) {
        if c.spec.volume_name != vol {
            return Err(Error::SnapshotExists {
                snapshot: req.name.clone(),
                volume: c.spec.volume_name.clone(),
            });
        }
        if deleting(&c.metadata) {
            return Err(Error::Pending {
                volume: vol.to_owned(),
                what: format!("snapshot {snap} is being deleted"),
            });
        }
        return Ok(CreateSnapshotResponse {
            snapshot: Some(view(c, size)),
        });
    }
    match world.cvc(vol) {
        Some(c) if !deleting(&c.metadata) => {}
        _ => return Err(missing()),
    }
    let object: CStorSnapshot = serde_json::from_value(json!({
        "apiVersion": CSTOR_API_VERSION,
        "kind": "CStorSnapshot",
        "metadata": {
            "name": snap,
            "namespace": cluster.namespace(),
            "labels": {label::PERSISTENT_VOLUME: vol},
            "annotations": {CSI_NAME_ANNOTATION: req.name},
        },
        "spec": {"volumeName": vol, "snapshotName": snap},
    }))
    .map_err(|e| Error::Decode {
        what: format!("CStorSnapshot {snap}"),
        why: e.to_string(),
    })?;
    let api = api(cluster);
    let op = format!("create cstorsnapshot {snap}");
    let made = bounded(&op, async {
        match api.create(&PostParams::default(), &object).await {
            Ok(c) => Ok(Some(c)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(Error::api(op.clone(), e)),
        }
    })
    .await?;
    let Some(made) = made else {
        // Created meanwhile by another call: answer as a repeat does.
        return Box::pin(create(cluster, req)).await;
    };
    let status = json!({"status": {"phase": "Pending", "readyToUse": false}});
    bounded(&op, async {
        api.patch_status(&snap, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| Error::api(format!("set the status of cstorsnapshot {snap}"), e))
    })
    .await?;
    Ok(CreateSnapshotResponse {
        snapshot: Some(view(&made, size)),
    })
}

/// DeleteSnapshot: OK when the snapshot is gone or its deletion is under way (the agent
/// deletes the replicated snapshot before the object goes); OK for an id naming none.
pub async fn delete(
    cluster: &Cluster,
    req: DeleteSnapshotRequest,
) -> Result<DeleteSnapshotResponse, Error> {
    if req.snapshot_id.is_empty() {
        return Err(Error::invalid("snapshot_id", "is required"));
    }
    let Some((vol, snap)) = parse_id(&req.snapshot_id) else {
        return Ok(DeleteSnapshotResponse {});
    };
    let Some(c) = list(cluster)
        .await?
        .into_iter()
        .find(|c| c.spec.volume_name == vol && c.spec.snapshot_name == snap)
    else {
        return Ok(DeleteSnapshotResponse {});
    };
    let n = name(&c.metadata).to_owned();
    let api = api(cluster);
    let op = format!("delete cstorsnapshot {n}");
    bounded(&op, async {
        match api.delete(&n, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(Error::api(op.clone(), e)),
        }
    })
    .await?;
    Ok(DeleteSnapshotResponse {})
}

/// ListSnapshots: every snapshot (or the one `snapshot_id` names, or those of
/// `source_volume_id`), sorted by id, paged by index tokens (ABORTED for a token this
/// driver did not hand out).
pub async fn list_snapshots(
    cluster: &Cluster,
    req: ListSnapshotsRequest,
) -> Result<ListSnapshotsResponse, Error> {
    if req.max_entries < 0 {
        return Err(Error::invalid("max_entries", "must not be negative"));
    }
    let all = list(cluster).await?;
    let world = cluster.view().await?;
    let sizes: HashMap<&str, u64> = world
        .cvcs
        .iter()
        .map(|c| (name(&c.metadata), cvc_size(c)))
        .collect();
    let mut entries: Vec<Snapshot> = all
        .iter()
        .filter(|c| !deleting(&c.metadata))
        .filter(|c| req.snapshot_id.is_empty() || snapshot_id(c) == req.snapshot_id)
        .filter(|c| req.source_volume_id.is_empty() || c.spec.volume_name == req.source_volume_id)
        .map(|c| view(c, sizes.get(c.spec.volume_name.as_str()).copied()))
        .collect();
    entries.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
    let start = request::start_index(&req.starting_token, entries.len())?;
    let page = match usize::try_from(req.max_entries).unwrap_or(0) {
        0 => LIST_PAGE_MAX,
        n => n.min(LIST_PAGE_MAX),
    };
    let end = (start + page).min(entries.len());
    let next_token = if end < entries.len() {
        end.to_string()
    } else {
        String::new()
    };
    Ok(ListSnapshotsResponse {
        entries: entries
            .drain(start..end)
            .map(|s| list_snapshots_response::Entry { snapshot: Some(s) })
            .collect(),
        next_token,
    })
}

/// The `cstorVolumeSource` (`<volume>@<snapshot>`) and restore size of a CreateVolume's
/// content source: None without one. NOT_FOUND when the snapshot does not exist,
/// ABORTED while it is not ready yet, INVALID_ARGUMENT for a volume source (not served).
pub async fn content_source(
    cluster: &Cluster,
    source: Option<&VolumeContentSource>,
) -> Result<Option<(String, u64)>, Error> {
    let Some(src) = source else { return Ok(None) };
    let id = match &src.r#type {
        Some(SourceType::Snapshot(SnapshotSource { snapshot_id })) => snapshot_id,
        Some(SourceType::Volume(_)) => {
            return Err(Error::invalid(
                "volume_content_source.volume",
                "cloning a volume is not supported (CLONE_VOLUME is not advertised): take a snapshot and restore it",
            ))
        }
        None => return Err(Error::invalid("volume_content_source", "names no source")),
    };
    if id.is_empty() {
        return Err(Error::invalid(
            "volume_content_source.snapshot.snapshot_id",
            "is required",
        ));
    }
    let missing = || Error::SnapshotNotFound {
        snapshot: id.clone(),
    };
    let (vol, snap) = parse_id(id).ok_or_else(missing)?;
    let c = list(cluster)
        .await?
        .into_iter()
        .find(|c| c.spec.volume_name == vol && c.spec.snapshot_name == snap)
        .filter(|c| !deleting(&c.metadata))
        .ok_or_else(missing)?;
    let v = view(&c, None);
    if !v.ready_to_use {
        return Err(Error::Pending {
            volume: vol.to_owned(),
            what: format!("snapshot {id} is not ready to use yet"),
        });
    }
    Ok(Some((id.clone(), u64::try_from(v.size_bytes).unwrap_or(0))))
}

/// The size of a restore: what the range asks for, at least the snapshot's size (rounded
/// up to whole MiB); OUT_OF_RANGE when the limit is below that.
pub fn restore_size(
    range: Option<&CapacityRange>,
    asked: u64,
    snapshot: u64,
) -> Result<u64, Error> {
    let need = snapshot.div_ceil(SIZE_STEP_BYTES) * SIZE_STEP_BYTES;
    let limit = range.map_or(0, |r| r.limit_bytes);
    let required = range.map_or(0, |r| r.required_bytes);
    let size = if required == 0 { need } else { asked.max(need) };
    if limit > 0 && size > limit as u64 {
        return Err(Error::OutOfRange {
            required_bytes: required,
            limit_bytes: limit,
            why: format!("the snapshot needs {need} bytes"),
        });
    }
    Ok(size)
}

/// The content source a volume reports: the snapshot it was restored from.
pub fn source_of(cvc: &cstor_api::v1::CStorVolumeConfig) -> Option<VolumeContentSource> {
    let s = cvc.spec.cstor_volume_source.as_deref()?;
    parse_id(s)?;
    Some(VolumeContentSource {
        r#type: Some(SourceType::Snapshot(SnapshotSource {
            snapshot_id: s.to_owned(),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_volume_at_snapshot() {
        assert_eq!(parse_id("pvc-1@snapshot-2"), Some(("pvc-1", "snapshot-2")));
        assert_eq!(parse_id("pvc-1"), None);
        assert_eq!(parse_id("Bad Vol@s"), None);
        assert_eq!(parse_id("v@"), None);
        assert_eq!(parse_id("v@a@b"), None);
    }

    #[test]
    fn a_restore_is_at_least_its_snapshot() {
        let r = |req, lim| CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        };
        let mib = 1u64 << 20;
        assert_eq!(restore_size(None, 1 << 30, 64 * mib).unwrap(), 64 * mib);
        assert_eq!(
            restore_size(Some(&r(0, 0)), 1 << 30, 64 * mib + 1).unwrap(),
            65 * mib
        );
        assert_eq!(
            restore_size(Some(&r(128 << 20, 0)), 128 * mib, 64 * mib).unwrap(),
            128 * mib
        );
        assert_eq!(
            restore_size(Some(&r(32 << 20, 0)), 32 * mib, 64 * mib).unwrap(),
            64 * mib
        );
        assert!(matches!(
            restore_size(Some(&r(32 << 20, 48 << 20)), 32 * mib, 64 * mib),
            Err(Error::OutOfRange { .. })
        ));
    }
}
