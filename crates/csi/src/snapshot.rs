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
//! Clones (a volume content source): a restore from an internal snapshot of the source
//! volume, taken for the clone and named after it ([`clone_snapshot_name`]), annotated
//! [`CLONE_ANNOTATION`] with the clone's id; ListSnapshots does not show it, and the
//! clone's DeleteVolume deletes it (the agent keeps it while a pool clone depends on it).
//! CreateVolume answers ABORTED until that snapshot is ready, so the CO's retries drive
//! it, as for any volume that is not ready yet.
//!
//! Invariants: only CStorSnapshots are written (create, delete); CreateSnapshot answers
//! at once with the snapshot's state (ready_to_use false until the agent took it; the
//! sidecar polls by repeating the call, which is idempotent by name).

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
use crate::pb::volume_content_source::{SnapshotSource, Type as SourceType, VolumeSource};
use crate::pb::*;
use crate::request;
use crate::Error;

/// CStorSnapshot annotation with the name the CO gave CreateSnapshot.
pub const CSI_NAME_ANNOTATION: &str = "cstor.csi.openebs.io/snapshot-name";

/// CStorSnapshot annotation of a clone's internal snapshot: the clone's volume id.
pub const CLONE_ANNOTATION: &str = "cstor.csi.openebs.io/clone-for";

/// The name of the internal snapshot the clone `volume` is restored from.
pub fn clone_snapshot_name(volume: &str) -> Result<String, Error> {
    request::volume_id(&format!("csi-clone-{volume}"))
}

fn is_clone_snapshot(c: &CStorSnapshot) -> bool {
    c.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CLONE_ANNOTATION))
}

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
        if c.spec.volume_name != vol || is_clone_snapshot(c) {
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
    let Some(made) = create_object(cluster, &snap, vol, (CSI_NAME_ANNOTATION, &req.name)).await?
    else {
        // Created meanwhile by another call: answer as a repeat does.
        return Box::pin(create(cluster, req)).await;
    };
    Ok(CreateSnapshotResponse {
        snapshot: Some(view(&made, size)),
    })
}

/// Creates CStorSnapshot `snap` of volume `vol` (status Pending) with one annotation;
/// None when one of that name exists already.
async fn create_object(
    cluster: &Cluster,
    snap: &str,
    vol: &str,
    (key, value): (&str, &str),
) -> Result<Option<CStorSnapshot>, Error> {
    let object: CStorSnapshot = serde_json::from_value(json!({
        "apiVersion": CSTOR_API_VERSION,
        "kind": "CStorSnapshot",
        "metadata": {
            "name": snap,
            "namespace": cluster.namespace(),
            "labels": {label::PERSISTENT_VOLUME: vol},
            "annotations": {key: value},
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
    if made.is_none() {
        return Ok(None);
    }
    let status = json!({"status": {"phase": "Pending", "readyToUse": false}});
    bounded(&op, async {
        api.patch_status(snap, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map_err(|e| Error::api(format!("set the status of cstorsnapshot {snap}"), e))
    })
    .await?;
    Ok(made)
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
        .filter(|c| !deleting(&c.metadata) && !is_clone_snapshot(c))
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

/// The `cstorVolumeSource` (`<volume>@<snapshot>`) and size ([`restore_size`] of
/// `(range, asked)`) of the content source of CreateVolume `volume`: None without one.
/// A snapshot: NOT_FOUND when it does not exist, ABORTED while it is not ready yet. A
/// volume: see [`clone_source`].
pub async fn content_source(
    cluster: &Cluster,
    source: Option<&VolumeContentSource>,
    volume: &str,
    (range, asked): (Option<&CapacityRange>, u64),
) -> Result<Option<(String, u64)>, Error> {
    let Some(src) = source else { return Ok(None) };
    let id = match &src.r#type {
        Some(SourceType::Snapshot(SnapshotSource { snapshot_id })) => snapshot_id,
        Some(SourceType::Volume(VolumeSource { volume_id })) => {
            return clone_source(cluster, volume_id, volume, (range, asked))
                .await
                .map(Some)
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
    let size = restore_size(range, asked, u64::try_from(v.size_bytes).unwrap_or(0))?;
    Ok(Some((id.clone(), size)))
}

/// The source of clone `volume` of volume `source`: its internal snapshot, taken on the
/// first call; NOT_FOUND when the source does not exist, ABORTED until the snapshot is
/// ready, ALREADY_EXISTS when an earlier request of this name cloned another volume,
/// OUT_OF_RANGE (before anything is made) when the range cannot hold the source.
async fn clone_source(
    cluster: &Cluster,
    source: &str,
    volume: &str,
    (range, asked): (Option<&CapacityRange>, u64),
) -> Result<(String, u64), Error> {
    if source.is_empty() {
        return Err(Error::invalid(
            "volume_content_source.volume.volume_id",
            "is required",
        ));
    }
    let missing = || Error::VolumeNotFound {
        volume: source.to_owned(),
    };
    let src = request::existing_id(source)?.ok_or_else(missing)?;
    if src == volume {
        return Err(Error::invalid(
            "volume_content_source.volume.volume_id",
            "a volume cannot be cloned into itself",
        ));
    }
    let world = cluster.view().await?;
    let source_size = world
        .cvc(src)
        .filter(|c| !deleting(&c.metadata))
        .map(cvc_size)
        .ok_or_else(missing)?;
    let size = restore_size(range, asked, source_size)?;
    let snap = clone_snapshot_name(volume)?;
    let pending = |what: String| Error::Pending {
        volume: volume.to_owned(),
        what,
    };
    let existing = list(cluster).await?;
    let Some(c) = existing.iter().find(|c| name(&c.metadata) == snap) else {
        create_object(cluster, &snap, src, (CLONE_ANNOTATION, volume)).await?;
        return Err(pending(format!("taking snapshot {snap} of {src} to clone")));
    };
    if c.spec.volume_name != src {
        return Err(Error::Incompatible {
            volume: volume.to_owned(),
            why: format!("it is a clone of volume {}", c.spec.volume_name),
        });
    }
    if deleting(&c.metadata) {
        return Err(pending(format!(
            "snapshot {snap} of {src} is being deleted"
        )));
    }
    if !view(c, None).ready_to_use {
        let why = c.status.as_ref().and_then(|s| s.message.as_deref());
        return Err(pending(format!(
            "snapshot {snap} of {src} to clone is not ready yet{}",
            why.map(|w| format!(": {w}")).unwrap_or_default()
        )));
    }
    Ok((format!("{src}@{snap}"), size))
}

/// Deletes the internal snapshot clone `volume` was made from (when it was one); the
/// agent deletes the replicated snapshot once no pool clone depends on it.
pub async fn delete_clone_snapshot(cluster: &Cluster, volume: &str) -> Result<(), Error> {
    let snap = clone_snapshot_name(volume)?;
    let ours = list(cluster).await?.into_iter().any(|c| {
        name(&c.metadata) == snap
            && !deleting(&c.metadata)
            && c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CLONE_ANNOTATION))
                .is_some_and(|v| v == volume)
    });
    if !ours {
        return Ok(());
    }
    let api = api(cluster);
    let op = format!("delete cstorsnapshot {snap}");
    bounded(&op, async {
        match api.delete(&snap, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(Error::api(op.clone(), e)),
        }
    })
    .await
}

/// The size of a restore or clone: what the range asks for, at least the source's size (rounded
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

/// The content source a volume reports: the snapshot it was restored from, or the
/// volume it is a clone of (restored from the internal snapshot named after it).
pub fn source_of(cvc: &cstor_api::v1::CStorVolumeConfig) -> Option<VolumeContentSource> {
    let s = cvc.spec.cstor_volume_source.as_deref()?;
    let (vol, snap) = parse_id(s)?;
    let r#type = if clone_snapshot_name(name(&cvc.metadata)).is_ok_and(|c| c == snap) {
        SourceType::Volume(VolumeSource {
            volume_id: vol.to_owned(),
        })
    } else {
        SourceType::Snapshot(SnapshotSource {
            snapshot_id: s.to_owned(),
        })
    };
    Some(VolumeContentSource {
        r#type: Some(r#type),
    })
}

/// GetSnapshot: the snapshot `snapshot_id` names; NOT_FOUND when there is none (a
/// clone's internal snapshot included: the CO never made it).
pub async fn get(cluster: &Cluster, req: GetSnapshotRequest) -> Result<GetSnapshotResponse, Error> {
    if req.snapshot_id.is_empty() {
        return Err(Error::invalid("snapshot_id", "is required"));
    }
    let missing = || Error::SnapshotNotFound {
        snapshot: req.snapshot_id.clone(),
    };
    let (vol, snap) = parse_id(&req.snapshot_id).ok_or_else(missing)?;
    let c = list(cluster)
        .await?
        .into_iter()
        .find(|c| c.spec.volume_name == vol && c.spec.snapshot_name == snap)
        .filter(|c| !deleting(&c.metadata) && !is_clone_snapshot(c))
        .ok_or_else(missing)?;
    let world = cluster.view().await?;
    let size = world.cvc(vol).map(cvc_size);
    Ok(GetSnapshotResponse {
        snapshot: Some(view(&c, size)),
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
