//! The storage loops of kube-controller-manager, for the single machine where no
//! kube-controller-manager runs (`Config::storage_controllers`; off on a real cluster,
//! where the real one does this): the PersistentVolume binder and the expansion
//! bookkeeping the CSI external-resizer relies on.
//!
//! What it does, after pkg/controller/volume/persistentvolume (pv_controller.go):
//! - a Pending claim of a StorageClass whose provisioner is not
//!   `kubernetes.io/no-provisioner` gets `volume.kubernetes.io/storage-provisioner` and
//!   `volume.beta.kubernetes.io/storage-provisioner` (the CSI external-provisioner only
//!   provisions claims carrying them); with `WaitForFirstConsumer` only once
//!   `volume.kubernetes.io/selected-node` is set;
//! - a claim binds to the smallest Available volume of its class that fits (capacity,
//!   access modes, volume mode), preferring one pre-bound to it by `claimRef`, or to the
//!   volume it names in `spec.volumeName`: the volume gets `claimRef` and phase Bound, the
//!   claim `volumeName`, the bind annotations, phase Bound, capacity and access modes;
//! - a volume without `claimRef` is Available; one whose claim is gone is Released, and
//!   with reclaim policy Delete it is left to the provisioner named in
//!   `pv.kubernetes.io/provisioned-by` (the external-provisioner deletes it), or Failed
//!   when no provisioner made it (kube-controller-manager has no in-tree deleter here);
//!   Retain keeps it Released for the administrator;
//! - a bound claim whose request exceeds its capacity and whose volume is a CSI volume
//!   gets `volume.kubernetes.io/storage-resizer` (the external-resizer's trigger);
//! - the attach/detach controller's part of the attach flow: a Pod scheduled to a node
//!   (`spec.nodeName`) using a bound claim whose volume is a CSI volume of a driver that
//!   needs attaching (its CSIDriver says `attachRequired`, or there is none) gets a
//!   VolumeAttachment for (driver, volume, node), which the external-attacher acts on;
//!   one no Pod needs any more is deleted.
//!
//! Invariants: every write carries the resourceVersion it was computed from, so a pass
//! racing a client loses with 409 and the next pass recomputes; a pass is idempotent
//! (a second pass over its own result writes nothing), so reacting to its own writes
//! terminates. Never: provisions, attaches or deletes volumes (the CSI sidecars do).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::core::{Core, FieldValidation, Filter, ListAt, WriteCtx};
use crate::error::ApiError;
use crate::fields::Part;
use crate::quantity;

/// Provisioner name meaning "no dynamic provisioning" (static volumes only).
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";
const ANN_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const ANN_PROVISIONER_BETA: &str = "volume.beta.kubernetes.io/storage-provisioner";
const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const ANN_RESIZER: &str = "volume.kubernetes.io/storage-resizer";
/// Field manager of the loops' writes, as on a real cluster.
const MANAGER: &str = "kube-controller-manager";

/// One write a pass wants: replace `object` (with its resourceVersion) of `plural`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Write {
    pub(crate) plural: &'static str,
    pub(crate) part: Part,
    pub(crate) object: Value,
}

fn meta<'a>(o: &'a Value, f: &str) -> &'a str {
    o["metadata"][f].as_str().unwrap_or("")
}

fn ann<'a>(o: &'a Value, a: &str) -> Option<&'a str> {
    o["metadata"]["annotations"][a].as_str()
}

fn set_ann(o: &mut Value, a: &str, v: &str) {
    if !o["metadata"]["annotations"].is_object() {
        o["metadata"]["annotations"] = json!({});
    }
    o["metadata"]["annotations"][a] = json!(v);
}

fn phase(o: &Value) -> &str {
    o["status"]["phase"].as_str().unwrap_or("")
}

fn class_of(o: &Value) -> &str {
    o["spec"]["storageClassName"].as_str().unwrap_or("")
}

fn request(pvc: &Value) -> i128 {
    pvc["spec"]["resources"]["requests"]["storage"]
        .as_str()
        .and_then(quantity::parse_milli)
        .unwrap_or(0)
}

fn capacity(pv: &Value) -> i128 {
    pv["spec"]["capacity"]["storage"]
        .as_str()
        .and_then(quantity::parse_milli)
        .unwrap_or(0)
}

fn modes(o: &Value) -> Vec<&str> {
    o["spec"]["accessModes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn volume_mode(o: &Value) -> &str {
    o["spec"]["volumeMode"].as_str().unwrap_or("Filesystem")
}

/// Whether `pv`'s claimRef names `pvc` (a claimRef without uid is a pre-binding by name).
fn claim_ref_is(pv: &Value, pvc: &Value) -> bool {
    let r = &pv["spec"]["claimRef"];
    r["name"].as_str() == Some(meta(pvc, "name"))
        && r["namespace"].as_str() == Some(meta(pvc, "namespace"))
        && r["uid"]
            .as_str()
            .is_none_or(|u| u.is_empty() || u == meta(pvc, "uid"))
}

fn fits(pv: &Value, pvc: &Value) -> bool {
    let have = modes(pv);
    class_of(pv) == class_of(pvc)
        && capacity(pv) >= request(pvc)
        && volume_mode(pv) == volume_mode(pvc)
        && modes(pvc).iter().all(|m| have.contains(m))
        && pv["metadata"].get("deletionTimestamp").is_none()
}

/// The writes one pass makes over the current volumes, claims and classes (pure, so the
/// rules are tested without a server).
pub(crate) fn plan(pvs: &[Value], pvcs: &[Value], classes: &[Value]) -> Vec<Write> {
    let mut out = Vec::new();
    let mut pvs: BTreeMap<String, Value> = pvs
        .iter()
        .map(|p| (meta(p, "name").to_string(), p.clone()))
        .collect();
    let claims: BTreeMap<(String, String), &Value> = pvcs
        .iter()
        .map(|c| ((meta(c, "namespace").into(), meta(c, "name").into()), c))
        .collect();
    for pvc in pvcs {
        if pvc["metadata"].get("deletionTimestamp").is_some() {
            continue;
        }
        let volume_name = pvc["spec"]["volumeName"].as_str().unwrap_or("");
        if volume_name.is_empty() {
            let class = classes.iter().find(|c| meta(c, "name") == class_of(pvc));
            if let Some(w) = class.and_then(|c| provisioner_annotations(pvc, c)) {
                out.push(w);
            }
            let chosen = pvs
                .values()
                .filter(|pv| {
                    let free = pv["spec"]["claimRef"].is_null() && phase(pv) != "Released";
                    (free || claim_ref_is(pv, pvc)) && fits(pv, pvc)
                })
                .min_by_key(|pv| (!claim_ref_is(pv, pvc), capacity(pv)))
                .map(|pv| meta(pv, "name").to_string());
            if let Some(name) = chosen {
                if let Some(pv) = pvs.get_mut(&name) {
                    out.extend(bind(pv, pvc));
                }
            }
            continue;
        }
        match pvs.get_mut(volume_name) {
            None => {
                if phase(pvc) == "Bound" {
                    let mut c = pvc.clone();
                    c["status"]["phase"] = json!("Lost");
                    out.push(claim_status(c));
                }
            }
            Some(pv) if pv["spec"]["claimRef"].is_null() || claim_ref_is(pv, pvc) => {
                out.extend(bind(pv, pvc));
                out.extend(resizer_annotation(pv, pvc));
            }
            // Bound to another claim: this one stays Pending.
            Some(_) => {}
        }
    }
    for pv in pvs.values() {
        out.extend(volume_phase(pv, &claims));
    }
    out
}

fn claim_status(object: Value) -> Write {
    Write {
        plural: "persistentvolumeclaims",
        part: Part::Status,
        object,
    }
}

fn provisioner_annotations(pvc: &Value, class: &Value) -> Option<Write> {
    let provisioner = class["provisioner"].as_str().unwrap_or("");
    if provisioner.is_empty() || provisioner == NO_PROVISIONER {
        return None;
    }
    let delayed = class["volumeBindingMode"].as_str() == Some("WaitForFirstConsumer");
    if delayed && ann(pvc, ANN_SELECTED_NODE).is_none() {
        return None;
    }
    if ann(pvc, ANN_PROVISIONER) == Some(provisioner)
        && ann(pvc, ANN_PROVISIONER_BETA) == Some(provisioner)
    {
        return None;
    }
    let mut c = pvc.clone();
    set_ann(&mut c, ANN_PROVISIONER, provisioner);
    set_ann(&mut c, ANN_PROVISIONER_BETA, provisioner);
    Some(Write {
        plural: "persistentvolumeclaims",
        part: Part::Main { has_status: true },
        object: c,
    })
}

/// Completes the binding of `pv` and `pvc` in kube-controller-manager's order: the
/// volume's claimRef, its phase, the claim's volumeName, the claim's status. Updates
/// `pv` in place so later claims of the pass see it taken.
fn bind(pv: &mut Value, pvc: &Value) -> Vec<Write> {
    let mut out = Vec::new();
    let claim_ref = json!({"kind": "PersistentVolumeClaim", "apiVersion": "v1",
        "namespace": meta(pvc, "namespace"), "name": meta(pvc, "name"),
        "uid": meta(pvc, "uid"), "resourceVersion": meta(pvc, "resourceVersion")});
    let ref_done = pv["spec"]["claimRef"]["uid"].as_str() == Some(meta(pvc, "uid"));
    if !ref_done {
        let mut v = pv.clone();
        if v["spec"]["claimRef"].is_null() {
            set_ann(&mut v, ANN_BOUND_BY_CONTROLLER, "yes");
        }
        v["spec"]["claimRef"] = claim_ref;
        out.push(Write {
            plural: "persistentvolumes",
            part: Part::Main { has_status: true },
            object: v.clone(),
        });
        *pv = v;
    }
    if phase(pv) != "Bound" {
        let mut v = pv.clone();
        v["status"]["phase"] = json!("Bound");
        out.push(Write {
            plural: "persistentvolumes",
            part: Part::Status,
            object: v.clone(),
        });
        *pv = v;
    }
    let mut c = pvc.clone();
    let named = c["spec"]["volumeName"].as_str() == Some(meta(pv, "name"));
    if !named || ann(&c, ANN_BIND_COMPLETED) != Some("yes") {
        if !named {
            c["spec"]["volumeName"] = json!(meta(pv, "name"));
            set_ann(&mut c, ANN_BOUND_BY_CONTROLLER, "yes");
        }
        set_ann(&mut c, ANN_BIND_COMPLETED, "yes");
        out.push(Write {
            plural: "persistentvolumeclaims",
            part: Part::Main { has_status: true },
            object: c.clone(),
        });
    }
    let status_done = phase(&c) == "Bound"
        && c["status"]["capacity"].get("storage").is_some()
        && c["status"]["accessModes"].is_array();
    if !status_done {
        c["status"]["phase"] = json!("Bound");
        c["status"]["capacity"] = pv["spec"]["capacity"].clone();
        c["status"]["accessModes"] = pv["spec"]["accessModes"].clone();
        out.push(claim_status(c));
    }
    out
}

/// A bound claim asking for more than it has, on a CSI volume: names the resizer.
fn resizer_annotation(pv: &Value, pvc: &Value) -> Option<Write> {
    let driver = pv["spec"]["csi"]["driver"].as_str()?;
    let have = pvc["status"]["capacity"]["storage"]
        .as_str()
        .and_then(quantity::parse_milli)?;
    if phase(pvc) != "Bound" || request(pvc) <= have || ann(pvc, ANN_RESIZER) == Some(driver) {
        return None;
    }
    let mut c = pvc.clone();
    set_ann(&mut c, ANN_RESIZER, driver);
    Some(Write {
        plural: "persistentvolumeclaims",
        part: Part::Main { has_status: true },
        object: c,
    })
}

fn volume_phase(pv: &Value, claims: &BTreeMap<(String, String), &Value>) -> Option<Write> {
    let r = &pv["spec"]["claimRef"];
    let (want, message) = if r.is_null() {
        ("Available", None)
    } else {
        let key = (
            r["namespace"].as_str().unwrap_or("").to_string(),
            r["name"].as_str().unwrap_or("").to_string(),
        );
        let uid = r["uid"].as_str().unwrap_or("");
        let claim = claims.get(&key);
        let gone = match claim {
            None => !uid.is_empty(),
            Some(c) => !uid.is_empty() && meta(c, "uid") != uid,
        };
        if !gone {
            // Pre-bound (no uid yet) or bound: the claim side of `plan` completes it.
            return None;
        }
        let policy = pv["spec"]["persistentVolumeReclaimPolicy"]
            .as_str()
            .unwrap_or("Retain");
        match policy {
            "Delete" if ann(pv, ANN_PROVISIONED_BY).is_some() => ("Released", None),
            "Delete" | "Recycle" => (
                "Failed",
                Some(format!(
                    "error getting deleter volume plugin for volume \"{}\": no deletable volume plugin matched",
                    meta(pv, "name")
                )),
            ),
            _ => ("Released", None),
        }
    };
    if phase(pv) == want {
        return None;
    }
    let mut v = pv.clone();
    v["status"]["phase"] = json!(want);
    if let Some(m) = message {
        v["status"]["message"] = json!(m);
    }
    Some(Write {
        plural: "persistentvolumes",
        part: Part::Status,
        object: v,
    })
}

/// One pass over the store; returns how many writes succeeded.
pub(crate) fn run_once(core: &Core) -> Result<usize, ApiError> {
    let reg = core.registry();
    let (Some(pv_rt), Some(pvc_rt), Some(sc_rt)) = (
        reg.find("", "v1", "persistentvolumes"),
        reg.find("", "v1", "persistentvolumeclaims"),
        reg.find("storage.k8s.io", "v1", "storageclasses"),
    ) else {
        return Ok(0);
    };
    let all = Filter::default();
    let pvs = core.list(&pv_rt, &all, None, None, ListAt::Latest)?.items;
    let pvcs = core.list(&pvc_rt, &all, None, None, ListAt::Latest)?.items;
    let classes = core.list(&sc_rt, &all, None, None, ListAt::Latest)?.items;
    let mut done = 0;
    // A pass may write one object twice (spec, then status): the second write carries
    // the resourceVersion the first produced.
    let mut moved: BTreeMap<(&'static str, String, String), Value> = BTreeMap::new();
    for mut w in plan(&pvs, &pvcs, &classes) {
        let id = (
            w.plural,
            meta(&w.object, "namespace").to_string(),
            meta(&w.object, "name").to_string(),
        );
        if let Some(rv) = moved.get(&id) {
            w.object["metadata"]["resourceVersion"] = rv.clone();
        }
        let rt = if w.plural == "persistentvolumes" {
            pv_rt.clone()
        } else {
            pvc_rt.clone()
        };
        let ctx = WriteCtx {
            rt,
            version: "v1".into(),
            namespace: meta(&w.object, "namespace").to_string(),
            manager: MANAGER.into(),
            dry_run: false,
            validation: FieldValidation::Ignore,
        };
        let name = meta(&w.object, "name").to_string();
        match core.update(&ctx, &name, w.object, w.part) {
            Ok(written) => {
                moved.insert(id, written.object["metadata"]["resourceVersion"].clone());
                done += 1;
            }
            // Someone else moved the object: the next pass works from the new one.
            Err(ApiError::Conflict { .. }) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A VolumeAttachment to create or delete.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Attach {
    Create(Value),
    Delete(String),
}

/// The name kube-controller-manager would give (its is `csi-` + SHA-256 hex of the
/// handle, driver and node; here two CRC32Cs, as no SHA-256 is at hand: only
/// uniqueness on one machine matters, nobody parses it).
fn attachment_name(handle: &str, driver: &str, node: &str) -> String {
    let s = format!("{handle}{driver}{node}");
    let r: String = s.chars().rev().collect();
    format!(
        "csi-{:08x}{:08x}",
        crc32c::crc32c(s.as_bytes()),
        crc32c::crc32c(r.as_bytes())
    )
}

/// The VolumeAttachments the Pods need, against those that exist (pure).
pub(crate) fn attach_plan(
    pods: &[Value],
    pvcs: &[Value],
    pvs: &[Value],
    drivers: &[Value],
    attachments: &[Value],
) -> Vec<Attach> {
    let mut want: BTreeMap<String, Value> = BTreeMap::new();
    for pod in pods {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
        let done = matches!(phase(pod), "Succeeded" | "Failed");
        if node.is_empty() || done || pod["metadata"].get("deletionTimestamp").is_some() {
            continue;
        }
        for vol in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let Some(claim) = vol["persistentVolumeClaim"]["claimName"].as_str() else {
                continue;
            };
            let Some(pvc) = pvcs.iter().find(|c| {
                meta(c, "name") == claim && meta(c, "namespace") == meta(pod, "namespace")
            }) else {
                continue;
            };
            let volume = pvc["spec"]["volumeName"].as_str().unwrap_or("");
            let Some(pv) = pvs
                .iter()
                .find(|p| !volume.is_empty() && meta(p, "name") == volume)
            else {
                continue;
            };
            let (Some(driver), Some(handle)) = (
                pv["spec"]["csi"]["driver"].as_str(),
                pv["spec"]["csi"]["volumeHandle"].as_str(),
            ) else {
                continue;
            };
            let required = drivers
                .iter()
                .find(|d| meta(d, "name") == driver)
                .is_none_or(|d| d["spec"]["attachRequired"].as_bool() != Some(false));
            if !required {
                continue;
            }
            let name = attachment_name(handle, driver, node);
            want.entry(name.clone()).or_insert_with(|| {
                json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
                       "metadata": {"name": name},
                       "spec": {"attacher": driver, "nodeName": node,
                                "source": {"persistentVolumeName": volume}}})
            });
        }
    }
    let mut out = Vec::new();
    for (name, va) in &want {
        if !attachments.iter().any(|a| meta(a, "name") == name.as_str()) {
            out.push(Attach::Create(va.clone()));
        }
    }
    for a in attachments {
        // Only the names this loop gives (csi- and 16 hex digits): a VolumeAttachment
        // another client made (`cstor attach`, an operator) is that client's to delete.
        let ours = meta(a, "name")
            .strip_prefix("csi-")
            .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if ours
            && !want.contains_key(meta(a, "name"))
            && a["metadata"].get("deletionTimestamp").is_none()
        {
            out.push(Attach::Delete(meta(a, "name").to_string()));
        }
    }
    out
}

/// One attach/detach pass; returns how many writes succeeded.
fn run_attach_once(core: &Core) -> Result<usize, ApiError> {
    let reg = core.registry();
    let find = |g: &str, p: &str| reg.find(g, "v1", p);
    let (Some(pods), Some(pvcs), Some(pvs), Some(drivers), Some(vas)) = (
        find("", "pods"),
        find("", "persistentvolumeclaims"),
        find("", "persistentvolumes"),
        find("storage.k8s.io", "csidrivers"),
        find("storage.k8s.io", "volumeattachments"),
    ) else {
        return Ok(0);
    };
    let all = Filter::default();
    let list = |rt: &crate::registry::ResourceType| {
        core.list(rt, &all, None, None, ListAt::Latest)
            .map(|p| p.items)
    };
    let plan = attach_plan(
        &list(&pods)?,
        &list(&pvcs)?,
        &list(&pvs)?,
        &list(&drivers)?,
        &list(&vas)?,
    );
    let ctx = WriteCtx {
        rt: vas,
        version: "v1".into(),
        namespace: String::new(),
        manager: MANAGER.into(),
        dry_run: false,
        validation: FieldValidation::Ignore,
    };
    let mut done = 0;
    for a in plan {
        let r = match a {
            Attach::Create(va) => core.create(&ctx, va).map(|_| ()),
            Attach::Delete(name) => core.delete(&ctx, &name, &Default::default()).map(|_| ()),
        };
        match r {
            Ok(()) => done += 1,
            Err(ApiError::AlreadyExists { .. }) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Runs passes whenever a volume, claim or class changes, and every resync interval
/// (runs until the server is dropped).
pub(crate) async fn storage_loop(core: Arc<Core>) {
    let mut changes = core.subscribe();
    let mut tick = tokio::time::interval(crate::limits::STORAGE_RESYNC_INTERVAL);
    loop {
        tokio::select! {
            c = changes.recv() => match c {
                Ok(c) if !is_storage_key(&c.key) => continue,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {}
        }
        // Coalesce a burst of changes into one pass.
        while changes.try_recv().is_ok() {}
        for _ in 0..crate::limits::STORAGE_PASSES_MAX {
            match tokio::task::block_in_place(|| {
                Ok::<_, ApiError>(run_once(&core)? + run_attach_once(&core)?)
            }) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "storage controller pass failed");
                    break;
                }
            }
        }
    }
}

fn is_storage_key(key: &str) -> bool {
    key.starts_with("core/pods/")
        || key.starts_with("storage.k8s.io/csidrivers/")
        || key.starts_with("storage.k8s.io/volumeattachments/")
        || key.starts_with("core/persistentvolumes/")
        || key.starts_with("core/persistentvolumeclaims/")
        || key.starts_with("storage.k8s.io/storageclasses/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(name: &str, size: &str, class: &str) -> Value {
        json!({"metadata": {"name": name, "resourceVersion": "1"},
               "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                        "storageClassName": class, "persistentVolumeReclaimPolicy": "Retain"},
               "status": {"phase": "Pending"}})
    }

    fn pvc(name: &str, size: &str, class: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "d", "uid": format!("uid-{name}"), "resourceVersion": "2"},
               "spec": {"resources": {"requests": {"storage": size}}, "accessModes": ["ReadWriteOnce"],
                        "storageClassName": class},
               "status": {"phase": "Pending"}})
    }

    /// Applies writes the way the server would (status writes touch status only).
    fn apply(objs: &mut [Value], plural: &str, writes: &[Write]) {
        for w in writes.iter().filter(|w| w.plural == plural) {
            let o = objs
                .iter_mut()
                .find(|o| meta(o, "name") == meta(&w.object, "name"))
                .unwrap();
            match w.part {
                Part::Status => o["status"] = w.object["status"].clone(),
                _ => {
                    let status = o["status"].clone();
                    *o = w.object.clone();
                    o["status"] = status;
                }
            }
        }
    }

    #[test]
    fn a_claim_binds_the_smallest_fitting_volume_and_a_second_pass_writes_nothing() {
        let mut pvs = vec![
            pv("big", "10Gi", "manual"),
            pv("small", "2Gi", "manual"),
            pv("tiny", "1Gi", "manual"),
        ];
        let mut pvcs = vec![pvc("c", "2Gi", "manual")];
        for _ in 0..3 {
            let w = plan(&pvs, &pvcs, &[]);
            apply(&mut pvs, "persistentvolumes", &w);
            apply(&mut pvcs, "persistentvolumeclaims", &w);
        }
        assert_eq!(pvcs[0]["spec"]["volumeName"], "small");
        assert_eq!(pvcs[0]["status"]["phase"], "Bound");
        assert_eq!(pvcs[0]["status"]["capacity"]["storage"], "2Gi");
        let small = pvs.iter().find(|p| meta(p, "name") == "small").unwrap();
        assert_eq!(small["spec"]["claimRef"]["uid"], "uid-c");
        assert_eq!(small["status"]["phase"], "Bound");
        for p in pvs.iter().filter(|p| meta(p, "name") != "small") {
            assert_eq!(p["status"]["phase"], "Available");
        }
        assert!(plan(&pvs, &pvcs, &[]).is_empty(), "idempotent");
        // The claim goes: Retain releases the volume, Delete without a provisioner fails it.
        let w = plan(&pvs, &[], &[]);
        apply(&mut pvs, "persistentvolumes", &w);
        let small = pvs.iter().find(|p| meta(p, "name") == "small").unwrap();
        assert_eq!(small["status"]["phase"], "Released");
        let mut gone = small.clone();
        gone["spec"]["persistentVolumeReclaimPolicy"] = json!("Delete");
        let w = plan(&[gone.clone()], &[], &[]);
        assert_eq!(w[0].object["status"]["phase"], "Failed");
        set_ann(&mut gone, ANN_PROVISIONED_BY, "cstor.csi.openebs.io");
        assert!(
            plan(&[gone], &[], &[]).is_empty(),
            "left Released for the provisioner"
        );
    }

    #[test]
    fn claims_of_an_external_provisioner_get_its_annotations() {
        let classes = [
            json!({"metadata": {"name": "csi"}, "provisioner": "cstor.csi.openebs.io"}),
            json!({"metadata": {"name": "late"}, "provisioner": "cstor.csi.openebs.io", "volumeBindingMode": "WaitForFirstConsumer"}),
            json!({"metadata": {"name": "manual"}, "provisioner": NO_PROVISIONER}),
        ];
        let claims = [
            pvc("a", "1Gi", "csi"),
            pvc("b", "1Gi", "late"),
            pvc("c", "1Gi", "manual"),
        ];
        let w = plan(&[], &claims, &classes);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(meta(&w[0].object, "name"), "a");
        assert_eq!(
            ann(&w[0].object, ANN_PROVISIONER),
            Some("cstor.csi.openebs.io")
        );
        assert_eq!(
            ann(&w[0].object, ANN_PROVISIONER_BETA),
            Some("cstor.csi.openebs.io")
        );
    }

    #[test]
    fn a_volume_bound_to_another_claim_is_not_taken() {
        let mut v = pv("v", "5Gi", "");
        v["spec"]["claimRef"] = json!({"namespace": "d", "name": "other"});
        let w = plan(&[v], &[pvc("c", "1Gi", "")], &[]);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn a_scheduled_pod_gets_a_volume_attachment_until_it_goes() {
        let mut v = pv("pv-1", "1Gi", "csi");
        v["spec"]["csi"] = json!({"driver": "cstor.csi.openebs.io", "volumeHandle": "pv-1"});
        let mut c = pvc("c", "1Gi", "csi");
        c["spec"]["volumeName"] = json!("pv-1");
        let pod = json!({"metadata": {"name": "p", "namespace": "d"},
            "spec": {"nodeName": "n1", "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}]}});
        let (pods, pvcs, pvs) = (vec![pod], vec![c], vec![v]);
        let plan = attach_plan(&pods, &pvcs, &pvs, &[], &[]);
        let [Attach::Create(va)] = plan.as_slice() else {
            panic!("{plan:?}")
        };
        assert_eq!(va["spec"]["attacher"], "cstor.csi.openebs.io");
        assert_eq!(va["spec"]["nodeName"], "n1");
        assert_eq!(va["spec"]["source"]["persistentVolumeName"], "pv-1");
        let existing = [va.clone()];
        assert!(attach_plan(&pods, &pvcs, &pvs, &[], &existing).is_empty());
        let no_attach = json!({"metadata": {"name": "cstor.csi.openebs.io"}, "spec": {"attachRequired": false}});
        assert!(attach_plan(&pods, &pvcs, &pvs, &[no_attach], &[]).is_empty());
        let plan = attach_plan(&[], &pvcs, &pvs, &[], &existing);
        assert_eq!(plan, [Attach::Delete(meta(va, "name").to_string())]);
        // One another client named (as Kubernetes names them, sha256) is left alone.
        let theirs = json!({"metadata": {"name": format!("csi-{}", "ab".repeat(32))}});
        assert!(attach_plan(&[], &pvcs, &pvs, &[], &[theirs]).is_empty());
    }
}
