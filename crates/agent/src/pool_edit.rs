//! Edits of a running pool's CStorPoolInstance spec, applied to the pool (cStor's pool
//! manager, `cstor-internals.md` §5 "Expansion" and "Disk replacement"): a raid group added
//! to the spec is added to the pool (`cstor pool add`); a block device appended to the
//! stripe raid group is added as one more stripe disk (the engine's stripe pool is a set of
//! independent disks, so appending to "the" stripe group and adding a one-disk stripe
//! group are the same operation; `cstor pool status` lists the new disk as its own
//! group); one block device replaced in a mirror/raidz/raidz2 group is replaced in the pool
//! with a resilver of its live data (`cstor pool replace`, in the background). The CSPI's
//! conditions `PoolExpansion` and `DiskReplacement` show it, the latter with the resilver's
//! progress; when the resilver finishes the new device's BlockDeviceClaim loses its
//! `openebs.io/bd-predecessor` annotation, which lets the controller release the old one.
//!
//! Invariants: [`plan`] is a pure function of the spec and the pool's status, so each
//! pass re-derives what is left to do (idempotent, and right after a restart); an edit
//! the pool cannot apply (a device or raid group removed, the raid type changed, devices
//! added to an existing redundant group, two devices of a group replaced at once) changes
//! nothing at all, even the parts of it that could be applied, and is refused with a
//! Warning Event. Never: removes a device or destroys data; runs a replace while another
//! scan holds the pool (it waits for the next pass).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cstor_api::names::annotation;
use cstor_api::v1::{CStorPoolInstance, RaidGroup};
use cstor_api::v1alpha1::{BlockDevice, BlockDeviceClaim};
use cstor_node::admin::{execute, Request};
use cstor_node::{NodeError, OpenPool};
use cstor_pool::spa::pool::{GroupKind, PoolStatus};
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::kubeapi::{event, merge, now, About};
use crate::{Ctx, NAMESPACE};

/// One raid group of the CSPI spec, its devices as (BlockDevice name, path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecGroup {
    /// The raid type of its role (`dataRaidGroupType` or `writeCacheGroupType`).
    pub kind: GroupKind,
    /// A write-cache group.
    pub log: bool,
    /// Its devices, in spec order.
    pub devices: Vec<(String, String)>,
}

/// One thing to do to the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Add a raid group (or stripe disks) of these device paths.
    Add {
        /// Group kind.
        kind: GroupKind,
        /// Device paths.
        devices: Vec<String>,
        /// A write-cache group.
        log: bool,
    },
    /// Replace device `old` (a path in the pool) by `new` and resilver.
    Replace {
        /// Path of the device leaving.
        old: String,
        /// Path of the device coming in.
        new: String,
    },
}

/// What an edit asks of the pool: the steps, or why none of it can be done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The pool has what the spec says.
    Nothing,
    /// Do these, in order.
    Steps(Vec<Step>),
    /// A replace is in progress in the group of a further replace: wait for it.
    Wait(String),
    /// The pool cannot do this; nothing is changed.
    Refuse(String),
}

fn kind_word(k: GroupKind) -> &'static str {
    match k {
        GroupKind::Stripe => "stripe",
        GroupKind::Mirror => "mirror",
        GroupKind::Raidz => "raidz",
        GroupKind::Raidz2 => "raidz2",
    }
}

/// Devices of a pool group that the spec should name (the old device of a replace in
/// progress is on its way out and is not compared).
fn current(g: &cstor_pool::spa::pool::GroupStatus) -> BTreeSet<&str> {
    g.devices
        .iter()
        .filter(|d| !d.being_replaced)
        .map(|d| d.path.as_str())
        .collect()
}

/// Whether a replace is still running in this pool group.
fn replacing(g: &cstor_pool::spa::pool::GroupStatus) -> bool {
    g.devices.iter().any(|d| d.being_replaced || d.resilvering)
}

/// What it takes to make the pool of `status` match `spec`.
pub fn plan(spec: &[SpecGroup], status: &PoolStatus) -> Plan {
    let name_of: BTreeMap<&str, &str> = spec
        .iter()
        .flat_map(|g| g.devices.iter().map(|(n, p)| (p.as_str(), n.as_str())))
        .collect();
    let show = |p: &str| name_of.get(p).copied().unwrap_or(p).to_string();
    let mut steps = Vec::new();
    let mut wait = None;
    for log in [false, true] {
        let role = if log {
            "writeCacheRaidGroups"
        } else {
            "dataRaidGroups"
        };
        let want: Vec<&SpecGroup> = spec.iter().filter(|g| g.log == log).collect();
        let have: Vec<&cstor_pool::spa::pool::GroupStatus> =
            status.groups.iter().filter(|g| g.log == log).collect();
        let Some(kind) = want.first().map(|g| g.kind) else {
            if let Some(g) = have.first() {
                return Plan::Refuse(format!(
                    "{role}: the spec has none but the pool has a {} group of {}; raid groups cannot be removed from a pool",
                    g.kind,
                    current(g).iter().map(|p| show(p)).collect::<Vec<_>>().join(", ")
                ));
            }
            continue;
        };
        for g in &have {
            if GroupKind::parse(&g.kind) != Some(kind) {
                return Plan::Refuse(format!(
                    "{role}: the raid type of an existing pool cannot change (the pool's group is {}, the spec says {})",
                    g.kind,
                    kind_word(kind)
                ));
            }
        }
        if kind == GroupKind::Stripe {
            // One set of independent disks: appended devices are added, none may go.
            let have_all: BTreeSet<&str> = have.iter().flat_map(|g| current(g)).collect();
            let want_all: Vec<&str> = want
                .iter()
                .flat_map(|g| g.devices.iter().map(|(_, p)| p.as_str()))
                .collect();
            if let Some(gone) = have_all.iter().find(|p| !want_all.contains(p)) {
                return Plan::Refuse(format!(
                    "{role}: block device {} left the stripe group; devices of a stripe pool cannot be removed or replaced (no redundancy to rebuild from)",
                    show(gone)
                ));
            }
            let added: Vec<String> = want_all
                .iter()
                .filter(|p| !have_all.contains(*p))
                .map(|p| p.to_string())
                .collect();
            if !added.is_empty() {
                steps.push(Step::Add {
                    kind,
                    devices: added,
                    log,
                });
            }
            continue;
        }
        let mut matched = vec![false; have.len()];
        for w in &want {
            let paths: BTreeSet<&str> = w.devices.iter().map(|(_, p)| p.as_str()).collect();
            let overlapping: Vec<usize> = (0..have.len())
                .filter(|&i| !current(have[i]).is_disjoint(&paths))
                .collect();
            match overlapping[..] {
                [] => steps.push(Step::Add {
                    kind,
                    devices: w.devices.iter().map(|(_, p)| p.clone()).collect(),
                    log,
                }),
                [i] => {
                    matched[i] = true;
                    let cur = current(have[i]);
                    let added: Vec<&str> = paths.difference(&cur).copied().collect();
                    let removed: Vec<&str> = cur.difference(&paths).copied().collect();
                    match (&added[..], &removed[..]) {
                        ([], []) => {}
                        ([new], [old]) if replacing(have[i]) => {
                            wait.get_or_insert(format!(
                                "replacing {} by {} waits: a replace is in progress in its raid group",
                                show(old),
                                show(new)
                            ));
                        }
                        ([new], [old]) => steps.push(Step::Replace {
                            old: old.to_string(),
                            new: new.to_string(),
                        }),
                        _ => {
                            return Plan::Refuse(format!(
                                "{role}: the {} group of {} would gain {} and lose {} device(s); a redundant raid group keeps its width: replace one device at a time, or add a whole new raid group",
                                kind_word(kind),
                                cur.iter().map(|p| show(p)).collect::<Vec<_>>().join(", "),
                                added.len(),
                                removed.len()
                            ))
                        }
                    }
                }
                _ => {
                    return Plan::Refuse(format!(
                        "{role}: one raid group of the spec names devices of {} groups of the pool",
                        overlapping.len()
                    ))
                }
            }
        }
        if let Some(i) = matched.iter().position(|m| !m) {
            return Plan::Refuse(format!(
                "{role}: the pool's {} group of {} is not in the spec; raid groups cannot be removed from a pool",
                have[i].kind,
                current(have[i])
                    .iter()
                    .map(|p| show(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    // Adds first: they are instant; a replace then resilvers onto the grown pool.
    steps.sort_by_key(|s| matches!(s, Step::Replace { .. }));
    match (steps.is_empty(), wait) {
        (true, Some(w)) => Plan::Wait(w),
        (true, None) => Plan::Nothing,
        (false, _) => Plan::Steps(steps),
    }
}

/// A CSPI condition this module keeps, without its times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// `PoolExpansion` or `DiskReplacement`.
    pub type_: &'static str,
    /// `True` or `False`.
    pub status: &'static str,
    /// One word.
    pub reason: &'static str,
    /// Detail.
    pub message: String,
}

/// A replace this agent is following: BlockDevice names (paths when unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Replacement {
    old: String,
    new: String,
    new_bd: Option<String>,
}

/// What the agent remembers of one pool's edits between passes.
#[derive(Debug, Default)]
pub struct EditState {
    /// Conditions to show, by type.
    pub conds: BTreeMap<&'static str, Cond>,
    replacing: Option<Replacement>,
    /// Last refusal or failure reported (each distinct one once).
    reported: Option<String>,
    /// The claims were read once for a replace this process did not start.
    looked: bool,
}

/// `spec` resolved against the node's BlockDevices: (name, path) per device.
pub fn spec_groups(
    cspi: &CStorPoolInstance,
    bds: &[BlockDevice],
) -> std::result::Result<Vec<SpecGroup>, String> {
    let resolve = |g: &RaidGroup| -> std::result::Result<Vec<(String, String)>, String> {
        g.block_devices
            .iter()
            .map(|r| {
                let bd = bds
                    .iter()
                    .find(|b| b.name_any() == r.block_device_name)
                    .ok_or_else(|| format!("blockdevice {} not found", r.block_device_name))?;
                let path =
                    bd.spec.path.clone().or(r.dev_link.clone()).ok_or_else(|| {
                        format!("blockdevice {} has no path", r.block_device_name)
                    })?;
                Ok((r.block_device_name.clone(), path))
            })
            .collect()
    };
    let mut out = Vec::new();
    let data = crate::pools::group_kind(cspi.spec.pool_config.data_raid_group_type);
    for g in &cspi.spec.data_raid_groups {
        out.push(SpecGroup {
            kind: data,
            log: false,
            devices: resolve(g)?,
        });
    }
    let cache = cspi
        .spec
        .pool_config
        .write_cache_group_type
        .map(crate::pools::group_kind)
        .unwrap_or(GroupKind::Stripe);
    for g in cspi.spec.write_cache_raid_groups.iter().flatten() {
        out.push(SpecGroup {
            kind: cache,
            log: true,
            devices: resolve(g)?,
        });
    }
    Ok(out)
}

fn bd_of(bds: &[BlockDevice], path: &str) -> Option<String> {
    bds.iter()
        .find(|b| b.spec.path.as_deref() == Some(path))
        .map(|b| b.name_any())
}

/// Runs an admin request on the pool on a blocking thread.
async fn admin(open: &Arc<OpenPool>, req: Request) -> std::result::Result<Value, NodeError> {
    let open = open.clone();
    tokio::task::spawn_blocking(move || {
        execute(
            &open,
            req,
            &mut std::io::empty(),
            &mut std::io::sink(),
            &mut |_| {},
        )
    })
    .await
    .map_err(|e| NodeError::Invalid(format!("pool admin task: {e}")))?
}

/// One pass: applies what the spec asks that the pool lacks, and follows a replace.
pub async fn apply(
    ctx: &Ctx,
    cspi: &CStorPoolInstance,
    open: &Arc<OpenPool>,
    bds: &[BlockDevice],
    state: &mut EditState,
) {
    let name = cspi.name_any();
    let about = About {
        kind: "CStorPoolInstance",
        name: &name,
        uid: cspi.metadata.uid.as_deref(),
    };
    let report = |state: &mut EditState, msg: String| {
        let new = state.reported.as_deref() != Some(msg.as_str());
        state.reported = Some(msg.clone());
        new.then_some(msg)
    };
    let spec = match spec_groups(cspi, bds) {
        Ok(s) => s,
        Err(e) => {
            if let Some(m) = report(state, format!("the spec cannot be applied: {e}")) {
                tracing::warn!(cspi = %name, "{m}");
                event(ctx, about, true, "PoolEditRefused", &m).await;
            }
            return;
        }
    };
    let status = open.spa().status();
    follow_replace(ctx, about, open, &status, bds, state).await;
    let show = |p: &str| bd_of(bds, p).unwrap_or_else(|| p.to_string());
    let steps = match plan(&spec, &status) {
        Plan::Nothing | Plan::Wait(_) => return,
        Plan::Refuse(why) => {
            if let Some(m) = report(state, format!("the spec edit is not applied: {why}")) {
                tracing::warn!(cspi = %name, "{m}");
                event(ctx, about, true, "PoolEditRefused", &m).await;
            }
            return;
        }
        Plan::Steps(s) => s,
    };
    for step in steps {
        match step {
            Step::Add { kind, devices, log } => {
                let names: Vec<String> = devices.iter().map(|p| show(p)).collect();
                let what = format!(
                    "{} {} group of {}",
                    kind_word(kind),
                    if log { "write-cache" } else { "data" },
                    names.join(", ")
                );
                let req = Request::PoolAdd {
                    kind: kind_word(kind).into(),
                    devices,
                    log,
                };
                match admin(open, req).await {
                    Ok(_) => {
                        let space = open.engine().space();
                        let msg = format!(
                            "Pool expanded by a {what}: {} total",
                            cstor_api::quantity::format_bytes_short(space.allocated + space.free)
                        );
                        tracing::info!(cspi = %name, "{msg}");
                        event(ctx, about, false, "PoolExpansionSuccessful", &msg).await;
                        state.conds.insert(
                            "PoolExpansion",
                            Cond {
                                type_: "PoolExpansion",
                                status: "False",
                                reason: "PoolExpansionSuccessful",
                                message: msg,
                            },
                        );
                        state.reported = None;
                    }
                    Err(e) => {
                        if let Some(m) = report(state, format!("adding a {what}: {e}")) {
                            tracing::warn!(cspi = %name, "{m}");
                            event(ctx, about, true, "PoolExpansionFailed", &m).await;
                        }
                        return;
                    }
                }
            }
            Step::Replace { old, new } => {
                let r = Replacement {
                    old: show(&old),
                    new: show(&new),
                    new_bd: bd_of(bds, &new),
                };
                let req = Request::PoolReplace {
                    old,
                    new,
                    background: true,
                };
                match admin(open, req).await {
                    Ok(_) => {
                        let msg = format!("Resilvering blockdevice {} replacing {}", r.new, r.old);
                        tracing::info!(cspi = %name, "{msg}");
                        event(ctx, about, false, "BlockDeviceReplacementInprogress", &msg).await;
                        state.conds.insert(
                            "DiskReplacement",
                            Cond {
                                type_: "DiskReplacement",
                                status: "True",
                                reason: "BlockDeviceReplacementInprogress",
                                message: msg,
                            },
                        );
                        state.replacing = Some(r);
                        state.reported = None;
                    }
                    // Another scan holds the pool: nothing changed, next pass retries.
                    Err(NodeError::Busy(_)) => return,
                    Err(e) => {
                        let m = format!("replacing {} by {}: {e}", r.old, r.new);
                        if let Some(m) = report(state, m) {
                            tracing::warn!(cspi = %name, "{m}");
                            event(ctx, about, true, "BlockDeviceReplacementFailed", &m).await;
                        }
                        return;
                    }
                }
            }
        }
    }
}

/// Progress and end of the replace in progress (also one found after a restart).
async fn follow_replace(
    ctx: &Ctx,
    about: About<'_>,
    open: &Arc<OpenPool>,
    status: &PoolStatus,
    bds: &[BlockDevice],
    state: &mut EditState,
) {
    let running = status
        .groups
        .iter()
        .any(|g| g.devices.iter().any(|d| d.being_replaced || d.resilvering));
    if state.replacing.is_none() {
        // A replace this process did not start (it restarted): the pool and the claims
        // say which, while a resilver runs, and once after the start for one that ended
        // while no agent ran.
        if !running && state.looked {
            return;
        }
        let predecessors = match predecessors(ctx).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(cspi = %about.name, error = %e, "listing block device claims");
                return;
            }
        };
        state.looked = true;
        let Some(r) = replace_in_pool(status, bds, &predecessors) else {
            return;
        };
        tracing::info!(cspi = %about.name, new = %r.new, old = %r.old, "following a replace in progress");
        state.replacing = Some(r);
    }
    let Some(r) = state.replacing.clone() else {
        return;
    };
    let scan = open.scan().filter(|s| s.kind == "resilver");
    if running {
        let progress = match &scan {
            Some(s) if s.state == "scanning" => format!(
                ": {:.1}% ({} of {} bytes)",
                s.progress_percent, s.examined_bytes, s.total_bytes
            ),
            Some(s) if s.state == "failed" => format!(
                ": the resilver stopped ({}); it restarts when the pool is imported again",
                s.error.as_deref().unwrap_or("no detail")
            ),
            _ => String::new(),
        };
        state.conds.insert(
            "DiskReplacement",
            Cond {
                type_: "DiskReplacement",
                status: "True",
                reason: "BlockDeviceReplacementInprogress",
                message: format!(
                    "Resilvering blockdevice {} replacing {}{progress}",
                    r.new, r.old
                ),
            },
        );
        return;
    }
    let failed = scan
        .as_ref()
        .and_then(|s| s.error.clone())
        .filter(|_| scan.as_ref().is_some_and(|s| s.unrecoverable_blocks > 0));
    let (reason, message) = match &failed {
        None => (
            "BlockDeviceReplacementSucceeded",
            format!(
                "Resilvering is successful: blockdevice {} replaced {}",
                r.new, r.old
            ),
        ),
        Some(e) => (
            "BlockDeviceReplacementFailed",
            format!(
                "blockdevice {} replaced {}, but the resilver found blocks with no good copy: {e}",
                r.new, r.old
            ),
        ),
    };
    tracing::info!(cspi = %about.name, "{message}");
    event(ctx, about, failed.is_some(), reason, &message).await;
    state.conds.insert(
        "DiskReplacement",
        Cond {
            type_: "DiskReplacement",
            status: "False",
            reason,
            message,
        },
    );
    state.replacing = None;
    // The controller keeps the old device claimed while the new device's claim names it
    // as predecessor (cStor's pool manager clears the annotation the same way).
    if let Some(bd) = r.new_bd {
        if let Err(e) = clear_predecessor(ctx, &bd).await {
            tracing::warn!(blockdevice = %bd, error = %e, "clearing bd-predecessor");
        }
    }
}

/// The replace a pool is in the middle of, as an agent that did not start it (after a
/// restart; the engine resumes the resilver at import) finds it: a group with a
/// resilvering device and either the device it replaces still in the group
/// (`being_replaced`: it kept serving) or, when that one had failed and left the pool,
/// the predecessor its BlockDeviceClaim names (`predecessors`: new BlockDevice -> old,
/// the controller's `openebs.io/bd-predecessor`, cleared when the replace ends). A
/// resilvering device with neither came back after missing writes: not a replace. Also
/// one that ended while no agent ran: a device of the pool whose claim still names a
/// predecessor the pool no longer holds.
fn replace_in_pool(
    status: &PoolStatus,
    bds: &[BlockDevice],
    predecessors: &BTreeMap<String, String>,
) -> Option<Replacement> {
    let show = |p: &str| bd_of(bds, p).unwrap_or_else(|| p.to_string());
    let in_pool = |bd: &str| {
        status
            .groups
            .iter()
            .flat_map(|g| &g.devices)
            .any(|d| bd_of(bds, &d.path).as_deref() == Some(bd))
    };
    let running = status.groups.iter().find_map(|g| {
        let new = g.devices.iter().find(|d| d.resilvering)?;
        let new_bd = bd_of(bds, &new.path);
        let old = match g.devices.iter().find(|d| d.being_replaced) {
            Some(o) => show(&o.path),
            None => predecessors.get(new_bd.as_deref()?)?.clone(),
        };
        Some(Replacement {
            old,
            new: show(&new.path),
            new_bd,
        })
    });
    running.or_else(|| {
        status
            .groups
            .iter()
            .flat_map(|g| &g.devices)
            .filter(|d| !d.resilvering)
            .find_map(|d| {
                let bd = bd_of(bds, &d.path)?;
                let old = predecessors.get(&bd).filter(|o| !in_pool(o))?;
                Some(Replacement {
                    old: old.clone(),
                    new: bd.clone(),
                    new_bd: Some(bd),
                })
            })
    })
}

/// BlockDevice -> its predecessor, from the claims annotated `openebs.io/bd-predecessor`.
async fn predecessors(ctx: &Ctx) -> crate::Result<BTreeMap<String, String>> {
    let api: Api<BlockDeviceClaim> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|c| {
            let old = c.annotations().get(annotation::BD_PREDECESSOR)?;
            Some((c.spec.block_device_name.clone()?, old.clone()))
        })
        .filter(|(_, old)| !old.is_empty())
        .collect())
}

async fn clear_predecessor(ctx: &Ctx, bd: &str) -> crate::Result<()> {
    let api: Api<BlockDeviceClaim> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    for c in api.list(&ListParams::default()).await?.items {
        if c.spec.block_device_name.as_deref() == Some(bd)
            && c.annotations().contains_key(annotation::BD_PREDECESSOR)
        {
            merge(
                &api,
                &c.name_any(),
                json!({"metadata": {"annotations": {annotation::BD_PREDECESSOR: null}}}),
            )
            .await?;
        }
    }
    Ok(())
}

/// The CSPI's conditions with `state`'s in place of theirs (times kept while a condition
/// is unchanged); None when nothing changes.
pub fn merged_conditions(cspi: &CStorPoolInstance, state: &EditState) -> Option<Value> {
    let current: Vec<Value> = cspi
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| {
            cs.iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect()
        })
        .unwrap_or_default();
    let mut changed = false;
    let mut out: Vec<Value> = current
        .iter()
        .filter(|c| {
            !state
                .conds
                .contains_key(c.get("type").and_then(Value::as_str).unwrap_or_default())
        })
        .cloned()
        .collect();
    for c in state.conds.values() {
        let old = current
            .iter()
            .find(|o| o.get("type").and_then(Value::as_str) == Some(c.type_));
        let field = |o: &Value, k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
        let same = old.is_some_and(|o| {
            field(o, "status").as_deref() == Some(c.status)
                && field(o, "reason").as_deref() == Some(c.reason)
                && field(o, "message").as_deref() == Some(c.message.as_str())
        });
        if same {
            out.extend(old.cloned());
            continue;
        }
        changed = true;
        let transition = match old {
            Some(o) if field(o, "status").as_deref() == Some(c.status) => {
                o.get("lastTransitionTime").cloned()
            }
            _ => None,
        }
        .unwrap_or_else(|| json!(now()));
        out.push(json!({
            "type": c.type_,
            "status": c.status,
            "reason": c.reason,
            "message": c.message,
            "lastUpdateTime": now(),
            "lastTransitionTime": transition,
        }));
    }
    changed.then_some(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cstor_pool::spa::pool::{DeviceStatus, GroupStatus};
    use cstor_pool::spa::Health;

    fn dev(path: &str, being_replaced: bool) -> DeviceStatus {
        DeviceStatus {
            path: path.into(),
            guid: 1,
            state: "ONLINE".into(),
            reason: None,
            resilvering: false,
            being_replaced,
            read_errors: 0,
            write_errors: 0,
            checksum_errors: 0,
        }
    }

    fn pool(groups: &[(&str, &[&str])]) -> PoolStatus {
        PoolStatus {
            name: "p".into(),
            guid: 1,
            health: Health::Online,
            message: None,
            groups: groups
                .iter()
                .map(|(k, ds)| GroupStatus {
                    kind: k.to_string(),
                    log: false,
                    health: "ONLINE".into(),
                    devices: ds.iter().map(|d| dev(d, false)).collect(),
                })
                .collect(),
            size_bytes: 0,
            allocated_bytes: 0,
            free_bytes: 0,
            txg: None,
        }
    }

    fn spec(kind: GroupKind, groups: &[&[&str]]) -> Vec<SpecGroup> {
        groups
            .iter()
            .map(|ds| SpecGroup {
                kind,
                log: false,
                devices: ds
                    .iter()
                    .map(|d| (format!("bd-{d}"), d.to_string()))
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn appended_stripe_devices_and_new_groups_are_added() {
        let p = pool(&[("stripe", &["a"])]);
        assert_eq!(plan(&spec(GroupKind::Stripe, &[&["a"]]), &p), Plan::Nothing);
        assert_eq!(
            plan(&spec(GroupKind::Stripe, &[&["a", "b", "c"]]), &p),
            Plan::Steps(vec![Step::Add {
                kind: GroupKind::Stripe,
                devices: vec!["b".into(), "c".into()],
                log: false
            }])
        );
        // After the add the pool lists the new disk as its own group: nothing more to do.
        let grown = pool(&[("stripe", &["a"]), ("stripe", &["b"])]);
        assert_eq!(
            plan(&spec(GroupKind::Stripe, &[&["a", "b"]]), &grown),
            Plan::Nothing
        );
        let m = pool(&[("mirror", &["a", "b"])]);
        assert_eq!(
            plan(&spec(GroupKind::Mirror, &[&["a", "b"], &["c", "d"]]), &m),
            Plan::Steps(vec![Step::Add {
                kind: GroupKind::Mirror,
                devices: vec!["c".into(), "d".into()],
                log: false
            }])
        );
    }

    #[test]
    fn one_replaced_device_of_a_redundant_group_is_replaced_then_waited_for() {
        let m = pool(&[("mirror", &["a", "b"]), ("mirror", &["c", "d"])]);
        let edited = spec(GroupKind::Mirror, &[&["a", "e"], &["c", "d"], &["f", "g"]]);
        assert_eq!(
            plan(&edited, &m),
            Plan::Steps(vec![
                Step::Add {
                    kind: GroupKind::Mirror,
                    devices: vec!["f".into(), "g".into()],
                    log: false
                },
                Step::Replace {
                    old: "b".into(),
                    new: "e".into()
                },
            ])
        );
        // While replacing: the old device is on its way out, the new one resilvers.
        let mut during = pool(&[("mirror", &["a", "e"])]);
        during.groups[0].devices[1].resilvering = true;
        during.groups[0].devices.push(dev("b", true));
        assert_eq!(
            plan(&spec(GroupKind::Mirror, &[&["a", "e"]]), &during),
            Plan::Nothing
        );
        assert!(matches!(
            plan(&spec(GroupKind::Mirror, &[&["h", "e"]]), &during),
            Plan::Wait(_)
        ));
    }

    #[test]
    fn what_the_pool_cannot_do_is_refused_whole() {
        let s = pool(&[("stripe", &["a"]), ("stripe", &["b"])]);
        for bad in [&["a", "c"][..], &["a"][..]] {
            let Plan::Refuse(msg) = plan(&spec(GroupKind::Stripe, &[bad]), &s) else {
                panic!("stripe {bad:?} not refused");
            };
            assert!(msg.contains("bd-") || msg.contains("b"), "{msg}");
        }
        let m = pool(&[("mirror", &["a", "b"]), ("mirror", &["c", "d"])]);
        let refused = [
            // A group removed, a device added to a group, two replaced at once, a group
            // removed while a valid new one is added, the raid type changed.
            spec(GroupKind::Mirror, &[&["a", "b"]]),
            spec(GroupKind::Mirror, &[&["a", "b", "x"], &["c", "d"]]),
            spec(GroupKind::Mirror, &[&["a", "b"], &["x", "y"]]),
            spec(GroupKind::Mirror, &[&["a", "b"], &["c"]]),
            spec(GroupKind::Raidz, &[&["a", "b"], &["c", "d"]]),
        ];
        for r in refused {
            assert!(
                matches!(plan(&r, &m), Plan::Refuse(_)),
                "{r:?}: {:?}",
                plan(&r, &m)
            );
        }
    }

    #[test]
    fn a_replace_in_progress_is_found_after_a_restart_even_when_the_old_device_left() {
        let bds: Vec<BlockDevice> = ["a", "b", "c", "n"]
            .iter()
            .map(|d| {
                serde_json::from_value(json!({
                    "apiVersion": "openebs.io/v1alpha1", "kind": "BlockDevice",
                    "metadata": {"name": format!("bd-{d}")},
                    "spec": {"path": d}
                }))
                .unwrap()
            })
            .collect();
        let none = BTreeMap::new();
        let claims = BTreeMap::from([("bd-n".to_owned(), "bd-a".to_owned())]);
        let mut p = pool(&[("mirror", &["n", "b"]), ("mirror", &["c"])]);
        // Nothing resilvers and no claim names a predecessor: no replace.
        assert_eq!(replace_in_pool(&p, &bds, &none), None);
        p.groups[0].devices[0].resilvering = true;
        let want = Some(Replacement {
            old: "bd-a".into(),
            new: "bd-n".into(),
            new_bd: Some("bd-n".into()),
        });
        // The failed old device left the pool: its successor's claim names it.
        assert_eq!(replace_in_pool(&p, &bds, &claims), want);
        // Without that annotation it is a device back after missing writes.
        assert_eq!(replace_in_pool(&p, &bds, &none), None);
        // The old device still serving is in the group, being replaced.
        p.groups[0].devices.push(dev("a", true));
        assert_eq!(replace_in_pool(&p, &bds, &none), want);
        // Ended while no agent ran: the claim still names the predecessor, gone now.
        p.groups[0].devices.pop();
        p.groups[0].devices[0].resilvering = false;
        assert_eq!(replace_in_pool(&p, &bds, &claims), want);
        // A predecessor still in the pool (the replace not started): nothing.
        p.groups[1].devices.push(dev("a", false));
        assert_eq!(replace_in_pool(&p, &bds, &claims), None);
    }
}
