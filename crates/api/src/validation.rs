//! Semantic validation of cstor resources: the rules cStor's admission webhook enforced
//! (`cstor-internals.md` §5) plus cstor's bounds ([`crate::limits`]), as pure functions
//! returning [`FieldError`]s with the field paths a 422 names. The structural checks
//! (types, enums, required fields) are the schema's job ([`crate::schema`]);
//! [`validate_custom_resource`] runs both in the order kube-apiserver does.
//!
//! Raid group widths: stripe takes any number of devices; mirror a multiple of 2; raidz
//! 2^n+1 and raidz2 2^n+2 devices (n ≥ 1), so the data columns are a power of two and a
//! block splits evenly without padding. cStor required n ≥ 2 for raidz2; cstor accepts the
//! 4-device raidz2 the seed's capacity table lists, which the pool engine handles.

use crate::field::{render_value, FieldError, FieldPath};
use crate::limits::{
    BLOCK_DEVICES_PER_RAID_GROUP_MAX, CSPC_POOLS_MAX, DNS_SUBDOMAIN_LEN_MAX,
    RAID_GROUPS_PER_POOL_MAX, REPLICAS_PER_VOLUME_MAX, REPLICA_ID_LEN_MAX,
};
use crate::v1::{self, RaidGroup, RaidGroupType};
use crate::v1alpha1;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Checks the width of one raid group of `group_type`; `path` names the group's
/// `blockDevices`.
pub fn validate_raid_group_width(
    group_type: RaidGroupType,
    count: usize,
    path: &FieldPath,
) -> Option<FieldError> {
    let ok = match group_type {
        RaidGroupType::Stripe => count >= 1,
        RaidGroupType::Mirror => count >= 2 && count.is_multiple_of(2),
        RaidGroupType::Raidz => count >= 3 && (count - 1).is_power_of_two(),
        RaidGroupType::Raidz2 => count >= 4 && (count - 2).is_power_of_two(),
    };
    if ok {
        return None;
    }
    let rule = match group_type {
        RaidGroupType::Stripe => "a stripe raid group needs at least 1 block device",
        RaidGroupType::Mirror => {
            "a mirror raid group needs a multiple of 2 block devices (2, 4, 6, ...)"
        }
        RaidGroupType::Raidz => "a raidz raid group needs 2^n+1 block devices (3, 5, 9, 17, ...)",
        RaidGroupType::Raidz2 => {
            "a raidz2 raid group needs 2^n+2 block devices (4, 6, 10, 18, ...)"
        }
    };
    Some(FieldError::invalid(path.clone(), count.to_string(), rule))
}

/// Validates a `cstor.openebs.io/v1` CStorPoolCluster's spec.
pub fn validate_cspc(cspc: &v1::CStorPoolCluster) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let pools_path = FieldPath::new("spec.pools");
    let pools = &cspc.spec.pools;
    if pools.is_empty() {
        errors.push(FieldError::required(
            pools_path.clone(),
            "a CStorPoolCluster needs at least one pool",
        ));
    }
    if pools.len() > CSPC_POOLS_MAX {
        errors.push(FieldError::too_many(
            pools_path.clone(),
            pools.len(),
            CSPC_POOLS_MAX,
        ));
        return errors;
    }
    let mut seen_selectors: BTreeMap<&BTreeMap<String, String>, usize> = BTreeMap::new();
    let mut seen_devices: BTreeSet<&str> = BTreeSet::new();
    for (i, pool) in pools.iter().enumerate() {
        let path = pools_path.index(i);
        let selector_path = path.child("nodeSelector");
        if pool.node_selector.is_empty() {
            errors.push(FieldError::required(
                selector_path,
                "a pool needs a nodeSelector naming its node",
            ));
        } else if let Some(first) = seen_selectors.insert(&pool.node_selector, i) {
            errors.push(FieldError::invalid(
                selector_path,
                render_selector(&pool.node_selector),
                format!("same node as spec.pools[{first}]: one pool per node"),
            ));
        }
        let config = &pool.pool_config;
        errors.extend(validate_groups(
            &pool.data_raid_groups,
            Some(config.data_raid_group_type),
            &path.child("dataRaidGroups"),
            true,
            &mut seen_devices,
        ));
        if let Some(groups) = &pool.write_cache_raid_groups {
            let groups_path = path.child("writeCacheRaidGroups");
            if !groups.is_empty() && config.write_cache_group_type.is_none() {
                errors.push(FieldError::required(
                    path.child("poolConfig").child("writeCacheGroupType"),
                    "write cache raid groups need a writeCacheGroupType",
                ));
            }
            errors.extend(validate_groups(
                groups,
                config.write_cache_group_type,
                &groups_path,
                false,
                &mut seen_devices,
            ));
        }
        if let Some(limit) = config.ro_threshold_limit {
            if !(0..=100).contains(&limit) {
                errors.push(FieldError::invalid(
                    path.child("poolConfig").child("roThresholdLimit"),
                    limit.to_string(),
                    "must be a percentage between 0 and 100",
                ));
            }
        }
    }
    errors
}

/// Validates the raid groups of one role; device names are checked for uniqueness across
/// the whole CSPC through `seen_devices`.
fn validate_groups<'a>(
    groups: &'a [RaidGroup],
    group_type: Option<RaidGroupType>,
    path: &FieldPath,
    required: bool,
    seen_devices: &mut BTreeSet<&'a str>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if groups.is_empty() && required {
        errors.push(FieldError::required(
            path.clone(),
            "a pool needs at least one data raid group",
        ));
    }
    if groups.len() > RAID_GROUPS_PER_POOL_MAX {
        errors.push(FieldError::too_many(
            path.clone(),
            groups.len(),
            RAID_GROUPS_PER_POOL_MAX,
        ));
        return errors;
    }
    if group_type == Some(RaidGroupType::Stripe) && groups.len() > 1 {
        errors.push(FieldError::invalid(
            path.clone(),
            groups.len().to_string(),
            "a stripe pool has exactly one raid group of each role: add block devices to it instead",
        ));
    }
    for (j, group) in groups.iter().enumerate() {
        let devices_path = path.index(j).child("blockDevices");
        let devices = &group.block_devices;
        if devices.len() > BLOCK_DEVICES_PER_RAID_GROUP_MAX {
            errors.push(FieldError::too_many(
                devices_path,
                devices.len(),
                BLOCK_DEVICES_PER_RAID_GROUP_MAX,
            ));
            continue;
        }
        if devices.is_empty() {
            errors.push(FieldError::required(
                devices_path.clone(),
                "a raid group needs block devices",
            ));
        } else if let Some(t) = group_type {
            errors.extend(validate_raid_group_width(t, devices.len(), &devices_path));
        }
        for (k, device) in devices.iter().enumerate() {
            let name_path = devices_path.index(k).child("blockDeviceName");
            let name = device.block_device_name.as_str();
            if let Some(e) = validate_object_name(name, &name_path) {
                errors.push(e);
            } else if !seen_devices.insert(name) {
                errors.push(FieldError::duplicate(
                    name_path,
                    render_value(&Value::String(name.to_owned())),
                ));
            }
        }
    }
    errors
}

/// Validates a change of a CSPC (admission on update): pools are matched by node
/// selector; on a kept pool the raid group types cannot change, raid groups cannot be
/// removed, a stripe group may only grow by appended devices, and a redundant group may
/// only have one device replaced at a time (`cstor-internals.md` §5, expansion and disk
/// replacement). Also runs [`validate_cspc`] on the new object.
pub fn validate_cspc_update(
    old: &v1::CStorPoolCluster,
    new: &v1::CStorPoolCluster,
) -> Vec<FieldError> {
    let mut errors = validate_cspc(new);
    let old_pools: BTreeMap<&BTreeMap<String, String>, &v1::PoolSpec> = old
        .spec
        .pools
        .iter()
        .map(|p| (&p.node_selector, p))
        .collect();
    for (i, pool) in new.spec.pools.iter().enumerate() {
        let Some(before) = old_pools.get(&pool.node_selector) else {
            continue;
        };
        let path = FieldPath::new("spec.pools").index(i);
        let config_path = path.child("poolConfig");
        if before.pool_config.data_raid_group_type != pool.pool_config.data_raid_group_type {
            errors.push(FieldError::forbidden(
                config_path.child("dataRaidGroupType"),
                format!(
                    "the raid group type of an existing pool cannot change (was {})",
                    before.pool_config.data_raid_group_type
                ),
            ));
            continue;
        }
        let before_cache = before
            .write_cache_raid_groups
            .as_deref()
            .unwrap_or_default();
        if !before_cache.is_empty()
            && before.pool_config.write_cache_group_type != pool.pool_config.write_cache_group_type
        {
            errors.push(FieldError::forbidden(
                config_path.child("writeCacheGroupType"),
                "the write cache raid group type of an existing pool cannot change",
            ));
            continue;
        }
        errors.extend(validate_group_changes(
            &before.data_raid_groups,
            &pool.data_raid_groups,
            pool.pool_config.data_raid_group_type,
            &path.child("dataRaidGroups"),
        ));
        if let Some(t) = pool.pool_config.write_cache_group_type {
            errors.extend(validate_group_changes(
                before_cache,
                pool.write_cache_raid_groups.as_deref().unwrap_or_default(),
                t,
                &path.child("writeCacheRaidGroups"),
            ));
        }
    }
    errors
}

fn validate_group_changes(
    before: &[RaidGroup],
    after: &[RaidGroup],
    group_type: RaidGroupType,
    path: &FieldPath,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if after.len() < before.len() {
        errors.push(FieldError::forbidden(
            path.clone(),
            "raid groups cannot be removed from an existing pool",
        ));
        return errors;
    }
    for (j, (old_group, new_group)) in before.iter().zip(after).enumerate() {
        let devices_path = path.index(j).child("blockDevices");
        let old_names: Vec<&str> = old_group
            .block_devices
            .iter()
            .map(|d| d.block_device_name.as_str())
            .collect();
        let new_names: Vec<&str> = new_group
            .block_devices
            .iter()
            .map(|d| d.block_device_name.as_str())
            .collect();
        if group_type == RaidGroupType::Stripe {
            if new_names.len() < old_names.len() || new_names[..old_names.len()] != old_names[..] {
                errors.push(FieldError::forbidden(
                    devices_path,
                    "block devices of a stripe raid group cannot be removed or replaced, only appended",
                ));
            }
            continue;
        }
        if new_names.len() != old_names.len() {
            errors.push(FieldError::forbidden(
                devices_path,
                format!("a {group_type} raid group cannot grow or shrink: add a new raid group to expand the pool"),
            ));
            continue;
        }
        let replaced = old_names
            .iter()
            .zip(&new_names)
            .filter(|(a, b)| a != b)
            .count();
        if replaced > 1 {
            errors.push(FieldError::forbidden(
                devices_path,
                format!("{replaced} block devices replaced at once: replace one block device per raid group at a time"),
            ));
        }
    }
    errors
}

/// Checks the block devices a CSPC names against the cluster's BlockDevices and
/// BlockDeviceClaims (cStor's admission rules, `cstor-internals.md` §5): each exists, is
/// Active, is on the pool's node (`kubernetes.io/hostname` of the node selector), carries
/// no filesystem (or only `zfs_member`), is not claimed for another CSPC, and, if tagged
/// with `openebs.io/block-device-tag`, has a tag the CSPC allows in
/// `openebs.io/allowed-bd-tags`. Pure: the caller lists the objects of the CSPC's
/// namespace.
pub fn validate_cspc_devices(
    cspc: &v1::CStorPoolCluster,
    devices: &[v1alpha1::BlockDevice],
    claims: &[v1alpha1::BlockDeviceClaim],
) -> Vec<FieldError> {
    use crate::names::{annotation, label};
    let mut errors = Vec::new();
    let cspc_name = cspc.metadata.name.as_deref().unwrap_or_default();
    let by_name: BTreeMap<&str, &v1alpha1::BlockDevice> = devices
        .iter()
        .filter_map(|d| d.metadata.name.as_deref().map(|n| (n, d)))
        .collect();
    let claim_owner: BTreeMap<&str, Option<&str>> = claims
        .iter()
        .filter_map(|c| {
            let owner = c
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(label::CSPC))
                .map(String::as_str);
            c.metadata.name.as_deref().map(|n| (n, owner))
        })
        .collect();
    let allowed_tags: BTreeSet<&str> = cspc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotation::ALLOWED_BD_TAGS))
        .map(|tags| {
            tags.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect()
        })
        .unwrap_or_default();
    for (i, pool) in cspc.spec.pools.iter().enumerate() {
        let pool_path = FieldPath::new("spec.pools").index(i);
        let node = pool.node_selector.get(label::HOSTNAME).map(String::as_str);
        let roles = [
            ("dataRaidGroups", Some(&pool.data_raid_groups)),
            (
                "writeCacheRaidGroups",
                pool.write_cache_raid_groups.as_ref(),
            ),
        ];
        for (role, groups) in roles {
            for (j, group) in groups.into_iter().flatten().enumerate() {
                for (k, device) in group.block_devices.iter().enumerate() {
                    let path = pool_path
                        .child(role)
                        .index(j)
                        .child("blockDevices")
                        .index(k)
                        .child("blockDeviceName");
                    let name = device.block_device_name.as_str();
                    let quoted = render_value(&Value::String(name.to_owned()));
                    let Some(bd) = by_name.get(name) else {
                        errors.push(FieldError::not_found(path, quoted));
                        continue;
                    };
                    if let Some(problem) =
                        device_problem(bd, node, cspc_name, &claim_owner, &allowed_tags)
                    {
                        errors.push(FieldError::invalid(path, quoted, problem));
                    }
                }
            }
        }
    }
    errors
}

/// Why `bd` cannot be used by a pool on `node` of CSPC `cspc_name`, if it cannot.
fn device_problem(
    bd: &v1alpha1::BlockDevice,
    node: Option<&str>,
    cspc_name: &str,
    claim_owner: &BTreeMap<&str, Option<&str>>,
    allowed_tags: &BTreeSet<&str>,
) -> Option<String> {
    use crate::names::label;
    let state = bd.status.as_ref().and_then(|s| s.state);
    if state != Some(v1alpha1::BlockDeviceState::Active) {
        let shown = state.map_or("of unknown state".to_owned(), |s| format!("{s:?}"));
        return Some(format!("the block device is {shown}, not Active"));
    }
    let bd_node = bd
        .spec
        .node_attributes
        .as_ref()
        .and_then(|n| n.node_name.as_deref())
        .or_else(|| {
            bd.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(label::HOSTNAME))
                .map(String::as_str)
        });
    if let (Some(want), Some(have)) = (node, bd_node) {
        if want != have {
            return Some(format!(
                "the block device is on node {have}, the pool on node {want}"
            ));
        }
    }
    if let Some(fs) = bd
        .spec
        .file_system
        .as_ref()
        .and_then(|f| f.fs_type.as_deref())
    {
        if !fs.is_empty() && fs != "zfs_member" {
            return Some(format!("the block device holds a {fs} filesystem"));
        }
    }
    if bd.status.as_ref().and_then(|s| s.claim_state)
        == Some(v1alpha1::BlockDeviceClaimState::Claimed)
    {
        let claim = bd
            .spec
            .claim_ref
            .as_ref()
            .and_then(|r| r.name.as_deref())
            .unwrap_or_default();
        match claim_owner.get(claim) {
            Some(Some(owner)) if *owner == cspc_name => {}
            Some(Some(owner)) => {
                return Some(format!(
                    "the block device is claimed by {claim:?} for CStorPoolCluster {owner:?}"
                ))
            }
            _ => {
                return Some(format!(
                    "the block device is claimed by {claim:?}, not for this CStorPoolCluster"
                ))
            }
        }
    }
    if let Some(tag) = bd
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(label::BLOCK_DEVICE_TAG))
    {
        if tag.trim().is_empty() {
            return Some("the block device has an empty openebs.io/block-device-tag".to_owned());
        }
        if !allowed_tags.contains(tag.trim()) {
            return Some(format!("the block device is tagged {tag:?}, which the CStorPoolCluster does not list in openebs.io/allowed-bd-tags"));
        }
    }
    None
}

/// Validates an alpha (`openebs.io/v1alpha1`) CStorPoolCluster: the rules of the v1 CSPC
/// it converts to, with the alpha field paths.
pub fn validate_alpha_cspc(cspc: &v1alpha1::CStorPoolCluster) -> Vec<FieldError> {
    match crate::conversion::alpha_to_v1(cspc) {
        Err(errors) => errors,
        Ok(converted) => to_alpha_paths(cspc, validate_cspc(&converted)),
    }
}

/// Validates a change of an alpha CStorPoolCluster: the update rules of the v1 CSPCs both
/// versions convert to ([`validate_cspc_update`]), with the alpha field paths. An old
/// object that no longer converts is not held against the new one.
pub fn validate_alpha_cspc_update(
    old: &v1alpha1::CStorPoolCluster,
    new: &v1alpha1::CStorPoolCluster,
) -> Vec<FieldError> {
    let converted_new = match crate::conversion::alpha_to_v1(new) {
        Err(errors) => return errors,
        Ok(v) => v,
    };
    let errors = match crate::conversion::alpha_to_v1(old) {
        Ok(converted_old) => validate_cspc_update(&converted_old, &converted_new),
        Err(_) => validate_cspc(&converted_new),
    };
    to_alpha_paths(new, errors)
}

fn to_alpha_paths(alpha: &v1alpha1::CStorPoolCluster, errors: Vec<FieldError>) -> Vec<FieldError> {
    errors
        .into_iter()
        .map(|mut e| {
            e.field = crate::conversion::v1_path_to_alpha(alpha, &e.field);
            e
        })
        .collect()
}

/// Validates a CStorVolumeConfig's spec: replica count within 1..=5.
pub fn validate_cvc(cvc: &v1::CStorVolumeConfig) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(count) = cvc.spec.provision.as_ref().and_then(|p| p.replica_count) {
        if count < 1 || u32::try_from(count).map_or(true, |c| c > REPLICAS_PER_VOLUME_MAX) {
            errors.push(FieldError::invalid(
                FieldPath::new("spec.provision.replicaCount"),
                count.to_string(),
                format!("must be between 1 and {REPLICAS_PER_VOLUME_MAX}"),
            ));
        }
    }
    if let Some(source) = &cvc.spec.cstor_volume_source {
        let ok = source
            .split_once('@')
            .is_some_and(|(vol, snap)| !vol.is_empty() && !snap.is_empty());
        if !ok {
            errors.push(FieldError::invalid(
                FieldPath::new("spec.cstorVolumeSource"),
                render_value(&Value::String(source.clone())),
                "must be <source volume>@<snapshot>",
            ));
        }
    }
    errors
}

/// Validates a change of a CVC: `spec.provision.replicaCount` never changes once set
/// (cStor's webhook rule; replicas are added through `spec.policy.replicaPoolInfo`).
pub fn validate_cvc_update(
    old: &v1::CStorVolumeConfig,
    new: &v1::CStorVolumeConfig,
) -> Vec<FieldError> {
    let mut errors = validate_cvc(new);
    let before = old.spec.provision.as_ref().and_then(|p| p.replica_count);
    let after = new.spec.provision.as_ref().and_then(|p| p.replica_count);
    if before.is_some() && before != after {
        errors.push(FieldError::forbidden(
            FieldPath::new("spec.provision.replicaCount"),
            "field is immutable: scale replicas through spec.policy.replicaPoolInfo",
        ));
    }
    errors
}

/// Validates a CStorVolume: replication factors within 1..=5 with CF ≤ RF, and the
/// known-replica lists well-formed (ids ≤ 32 characters, guids decimal u64, at most 5).
pub fn validate_cv(cv: &v1::CStorVolume) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = &cv.spec;
    let spec_path = FieldPath::new("spec");
    let factor = |name: &str, value: Option<i32>, errors: &mut Vec<FieldError>| {
        if let Some(v) = value {
            if v < 1 || u32::try_from(v).map_or(true, |v| v > REPLICAS_PER_VOLUME_MAX) {
                errors.push(FieldError::invalid(
                    spec_path.child(name),
                    v.to_string(),
                    format!("must be between 1 and {REPLICAS_PER_VOLUME_MAX}"),
                ));
            }
        }
    };
    factor("replicationFactor", spec.replication_factor, &mut errors);
    factor("consistencyFactor", spec.consistency_factor, &mut errors);
    factor(
        "desiredReplicationFactor",
        spec.desired_replication_factor,
        &mut errors,
    );
    if let (Some(rf), Some(cf)) = (spec.replication_factor, spec.consistency_factor) {
        if cf > rf {
            errors.push(FieldError::invalid(
                spec_path.child("consistencyFactor"),
                cf.to_string(),
                format!("must not exceed replicationFactor ({rf})"),
            ));
        }
    }
    if let Some(details) = &spec.replica_details {
        errors.extend(validate_known_replicas(
            details,
            &spec_path.child("replicaDetails").child("knownReplicas"),
        ));
    }
    if let Some(details) = cv.status.as_ref().and_then(|s| s.replica_details.as_ref()) {
        errors.extend(validate_known_replicas(
            details,
            &FieldPath::new("status.replicaDetails.knownReplicas"),
        ));
    }
    errors
}

fn validate_known_replicas(
    details: &v1::CStorVolumeReplicaDetails,
    path: &FieldPath,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(known) = &details.known_replicas else {
        return errors;
    };
    let max = usize::try_from(REPLICAS_PER_VOLUME_MAX).unwrap_or(usize::MAX);
    if known.len() > max {
        errors.push(FieldError::too_many(path.clone(), known.len(), max));
    }
    for (id, guid) in known {
        if let Some(e) = validate_replica_id(id, &path.key(id)) {
            errors.push(e);
        }
        if guid.parse::<u64>().is_err() {
            errors.push(FieldError::invalid(
                path.key(id),
                render_value(&Value::String(guid.clone())),
                "a replica guid is a decimal 64-bit number",
            ));
        }
    }
    errors
}

/// Validates a CStorVolumeReplica: its replica id fits the wire format.
pub fn validate_cvr(cvr: &v1::CStorVolumeReplica) -> Vec<FieldError> {
    cvr.spec
        .replica_id
        .as_deref()
        .and_then(|id| validate_replica_id(id, &FieldPath::new("spec.replicaid")))
        .into_iter()
        .collect()
}

fn validate_replica_id(id: &str, path: &FieldPath) -> Option<FieldError> {
    if id.is_empty() || id.len() > REPLICA_ID_LEN_MAX || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(FieldError::invalid(
            path.clone(),
            render_value(&Value::String(id.to_owned())),
            format!("a replica id is 1 to {REPLICA_ID_LEN_MAX} printable ASCII characters"),
        ));
    }
    None
}

/// Validates a CStorVolumePolicy: explicit placements name each pool once.
pub fn validate_cvp_spec(spec: &v1::CStorVolumePolicySpec, path: &FieldPath) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(pools) = &spec.replica_pool_info else {
        return errors;
    };
    let pools_path = path.child("replicaPoolInfo");
    let max = usize::try_from(REPLICAS_PER_VOLUME_MAX).unwrap_or(usize::MAX);
    if pools.len() > max {
        errors.push(FieldError::too_many(pools_path.clone(), pools.len(), max));
    }
    let mut seen = BTreeSet::new();
    for (i, p) in pools.iter().enumerate() {
        let name_path = pools_path.index(i).child("poolName");
        if let Some(e) = validate_object_name(&p.pool_name, &name_path) {
            errors.push(e);
        } else if !seen.insert(p.pool_name.as_str()) {
            errors.push(FieldError::duplicate(
                name_path,
                render_value(&Value::String(p.pool_name.clone())),
            ));
        }
    }
    errors
}

/// Checks that `name` is a valid object name (RFC 1123 subdomain).
pub fn validate_object_name(name: &str, path: &FieldPath) -> Option<FieldError> {
    if name.is_empty() {
        return Some(FieldError::required(path.clone(), ""));
    }
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let valid_ends = name
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
        && name
            .as_bytes()
            .last()
            .is_some_and(u8::is_ascii_alphanumeric);
    if name.len() > DNS_SUBDOMAIN_LEN_MAX || !valid_chars || !valid_ends {
        return Some(FieldError::invalid(
            path.clone(),
            render_value(&Value::String(name.to_owned())),
            format!(
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (at most {DNS_SUBDOMAIN_LEN_MAX} characters)"
            ),
        ));
    }
    None
}

fn render_selector(selector: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{:?}", pairs.join(","))
}

/// Validates cstor custom resources given as JSON, as the API server does on create
/// (`old` = None) and update. Holds the generated CRDs, because generating them takes
/// milliseconds and validation runs on every write.
#[derive(Clone, Debug)]
pub struct Validator {
    crds: Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
}

impl Default for Validator {
    fn default() -> Self {
        Validator::new()
    }
}

impl Validator {
    /// A validator for the CRDs of [`crate::crds`].
    pub fn new() -> Validator {
        Validator {
            crds: crate::crds(),
        }
    }

    /// Checks `new` first against its CRD's schema (types, enums, required fields;
    /// unknown fields are reported too, as [`crate::field::FieldErrorKind::Unknown`]),
    /// then, if that passed, by the rules of its kind ([`validate_semantics`]). Returns
    /// `None` when `api_version`/`kind` is not a cstor kind.
    pub fn validate(
        &self,
        api_version: &str,
        kind: &str,
        new: &Value,
        old: Option<&Value>,
    ) -> Option<Vec<FieldError>> {
        let (group, version) = api_version.split_once('/')?;
        let crd = self.crds.iter().find(|c| {
            c.spec.names.kind == kind
                && c.spec.group == group
                && c.spec.versions.iter().any(|v| v.name == version)
        })?;
        let schema = crate::schema::version_schema(crd, version)?;
        let errors = crate::schema::validate_object(schema, new);
        if !errors.is_empty() {
            return Some(errors);
        }
        Some(validate_semantics(group, kind, new, old))
    }
}

/// One-off form of [`Validator::validate`]; regenerates the CRDs on every call, so hold a
/// [`Validator`] where it runs often.
pub fn validate_custom_resource(
    api_version: &str,
    kind: &str,
    new: &Value,
    old: Option<&Value>,
) -> Option<Vec<FieldError>> {
    Validator::new().validate(api_version, kind, new, old)
}

/// The rules of a cstor kind (no schema check: run [`crate::schema::validate_object`]
/// first, as [`Validator::validate`] does). An object that does not deserialise into its
/// Rust type gives one error at the root; other kinds give no errors.
pub fn validate_semantics(
    group: &str,
    kind: &str,
    new: &Value,
    old: Option<&Value>,
) -> Vec<FieldError> {
    semantic(group, kind, new, old)
}

fn semantic(group: &str, kind: &str, new: &Value, old: Option<&Value>) -> Vec<FieldError> {
    fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, Vec<FieldError>> {
        serde_json::from_value(v.clone()).map_err(|e| {
            vec![FieldError::invalid(
                FieldPath::root(),
                "(object)",
                e.to_string(),
            )]
        })
    }
    let result = (|| -> Result<Vec<FieldError>, Vec<FieldError>> {
        Ok(match (group, kind) {
            (crate::names::CSTOR_GROUP, "CStorPoolCluster") => {
                let new: v1::CStorPoolCluster = parse(new)?;
                match old.map(parse::<v1::CStorPoolCluster>).transpose()? {
                    Some(old) => validate_cspc_update(&old, &new),
                    None => validate_cspc(&new),
                }
            }
            (_, "CStorPoolCluster") => {
                let new: v1alpha1::CStorPoolCluster = parse(new)?;
                match old.map(parse::<v1alpha1::CStorPoolCluster>).transpose()? {
                    Some(old) => validate_alpha_cspc_update(&old, &new),
                    None => validate_alpha_cspc(&new),
                }
            }
            (_, "CStorVolumeConfig") => {
                let new: v1::CStorVolumeConfig = parse(new)?;
                let mut errors = match old.map(parse::<v1::CStorVolumeConfig>).transpose()? {
                    Some(old) => validate_cvc_update(&old, &new),
                    None => validate_cvc(&new),
                };
                if let Some(policy) = &new.spec.policy {
                    errors.extend(validate_cvp_spec(policy, &FieldPath::new("spec.policy")));
                }
                errors
            }
            (_, "CStorVolume") => validate_cv(&parse(new)?),
            (_, "CStorVolumeReplica") => validate_cvr(&parse(new)?),
            (_, "CStorVolumePolicy") => {
                let new: v1::CStorVolumePolicy = parse(new)?;
                validate_cvp_spec(&new.spec, &FieldPath::new("spec"))
            }
            _ => Vec::new(),
        })
    })();
    result.unwrap_or_else(|e| e)
}

#[cfg(test)]
mod tests {
    //! cStor's webhook rules, each with a passing and a failing case and the exact path.

    use super::*;
    use serde_json::json;

    fn cspc(pools: Value) -> v1::CStorPoolCluster {
        serde_json::from_value(json!({
            "apiVersion": "cstor.openebs.io/v1", "kind": "CStorPoolCluster",
            "metadata": {"name": "p", "namespace": "openebs"},
            "spec": {"pools": pools},
        }))
        .unwrap()
    }

    fn pool(node: &str, t: &str, groups: &[&[&str]]) -> Value {
        let groups: Vec<Value> = groups
            .iter()
            .map(|g| json!({"blockDevices": g.iter().map(|n| json!({"blockDeviceName": n})).collect::<Vec<_>>()}))
            .collect();
        json!({"nodeSelector": {"kubernetes.io/hostname": node}, "dataRaidGroups": groups, "poolConfig": {"dataRaidGroupType": t}})
    }

    fn texts(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn raid_group_widths_follow_the_parity_rules() {
        let p = FieldPath::new("g");
        let ok = |t, n| validate_raid_group_width(t, n, &p).is_none();
        use RaidGroupType::*;
        assert!(ok(Stripe, 1) && ok(Stripe, 7) && !ok(Stripe, 0));
        assert!(ok(Mirror, 2) && ok(Mirror, 4) && !ok(Mirror, 1) && !ok(Mirror, 3));
        assert!(
            ok(Raidz, 3)
                && ok(Raidz, 5)
                && ok(Raidz, 9)
                && !ok(Raidz, 2)
                && !ok(Raidz, 4)
                && !ok(Raidz, 6)
        );
        assert!(
            ok(Raidz2, 4)
                && ok(Raidz2, 6)
                && ok(Raidz2, 10)
                && !ok(Raidz2, 3)
                && !ok(Raidz2, 5)
                && !ok(Raidz2, 8)
        );
    }

    #[test]
    fn seed_layouts_are_valid() {
        let c = cspc(json!([
            pool("worker-01", "mirror", &[&["bd-1", "bd-2"]]),
            pool("worker-02", "raidz", &[&["bd-3", "bd-4", "bd-5"]]),
            pool("worker-03", "stripe", &[&["bd-6"]]),
        ]));
        assert!(validate_cspc(&c).is_empty(), "{:?}", validate_cspc(&c));
    }

    #[test]
    fn wrong_width_names_the_group() {
        let c = cspc(json!([pool(
            "w1",
            "mirror",
            &[&["a", "b"], &["c", "d", "e"]]
        )]));
        assert_eq!(
            texts(&validate_cspc(&c)),
            ["spec.pools[0].dataRaidGroups[1].blockDevices: Invalid value: 3: a mirror raid group needs a multiple of 2 block devices (2, 4, 6, ...)"]
        );
    }

    #[test]
    fn duplicate_devices_and_nodes_are_rejected() {
        let c = cspc(json!([
            pool("w1", "stripe", &[&["a", "b"]]),
            pool("w1", "stripe", &[&["b"]])
        ]));
        assert_eq!(
            texts(&validate_cspc(&c)),
            [
                r#"spec.pools[1].nodeSelector: Invalid value: "kubernetes.io/hostname=w1": same node as spec.pools[0]: one pool per node"#,
                r#"spec.pools[1].dataRaidGroups[0].blockDevices[0].blockDeviceName: Duplicate value: "b""#,
            ]
        );
    }

    #[test]
    fn empty_and_malformed_parts_are_rejected() {
        let mut p = pool("w1", "stripe", &[&["a"], &["Bad_Name"]]);
        p["poolConfig"]["roThresholdLimit"] = json!(150);
        p["writeCacheRaidGroups"] = json!([{"blockDevices": [{"blockDeviceName": "c"}]}]);
        let c = cspc(
            json!([p, {"nodeSelector": {}, "dataRaidGroups": [], "poolConfig": {"dataRaidGroupType": "mirror"}}]),
        );
        assert_eq!(
            texts(&validate_cspc(&c)),
            [
                "spec.pools[0].dataRaidGroups: Invalid value: 2: a stripe pool has exactly one raid group of each role: add block devices to it instead",
                r#"spec.pools[0].dataRaidGroups[1].blockDevices[0].blockDeviceName: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (at most 253 characters)"#,
                "spec.pools[0].poolConfig.writeCacheGroupType: Required value: write cache raid groups need a writeCacheGroupType",
                "spec.pools[0].poolConfig.roThresholdLimit: Invalid value: 150: must be a percentage between 0 and 100",
                "spec.pools[1].nodeSelector: Required value: a pool needs a nodeSelector naming its node",
                "spec.pools[1].dataRaidGroups: Required value: a pool needs at least one data raid group",
            ]
        );
        assert_eq!(
            texts(&validate_cspc(&cspc(json!([])))),
            ["spec.pools: Required value: a CStorPoolCluster needs at least one pool"]
        );
    }

    #[test]
    fn too_many_devices_is_bounded() {
        let names: Vec<String> = (0..=BLOCK_DEVICES_PER_RAID_GROUP_MAX)
            .map(|i| format!("bd-{i}"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let c = cspc(json!([pool("w1", "stripe", &[&refs])]));
        assert_eq!(texts(&validate_cspc(&c)), ["spec.pools[0].dataRaidGroups[0].blockDevices: Too many: 257: must have at most 256 items"]);
    }

    #[test]
    fn updates_follow_expansion_and_replacement_rules() {
        let old = cspc(json!([
            pool("w1", "stripe", &[&["a"]]),
            pool("w2", "mirror", &[&["m1", "m2"]])
        ]));
        let ok = |new: Value| validate_cspc_update(&old, &cspc(new));
        // Appending to the stripe group, replacing one mirror device, adding a mirror
        // group and adding a pool are all allowed.
        assert!(ok(json!([
            pool("w1", "stripe", &[&["a", "b"]]),
            pool("w2", "mirror", &[&["m1", "m3"], &["m4", "m5"]]),
            pool("w3", "raidz", &[&["r1", "r2", "r3"]]),
        ]))
        .is_empty());
        assert_eq!(
            texts(&ok(json!([pool("w1", "stripe", &[&["b"]]), pool("w2", "mirror", &[&["m3", "m4"]])]))),
            [
                "spec.pools[0].dataRaidGroups[0].blockDevices: Forbidden: block devices of a stripe raid group cannot be removed or replaced, only appended",
                "spec.pools[1].dataRaidGroups[0].blockDevices: Forbidden: 2 block devices replaced at once: replace one block device per raid group at a time",
            ]
        );
        assert_eq!(
            texts(&ok(json!([pool("w1", "mirror", &[&["a", "b"]]), pool("w2", "mirror", &[])]))),
            [
                "spec.pools[1].dataRaidGroups: Required value: a pool needs at least one data raid group",
                "spec.pools[0].poolConfig.dataRaidGroupType: Forbidden: the raid group type of an existing pool cannot change (was stripe)",
                "spec.pools[1].dataRaidGroups: Forbidden: raid groups cannot be removed from an existing pool",
            ]
        );
        assert_eq!(
            texts(&ok(json!([pool("w1", "stripe", &[&["a"]]), pool("w2", "mirror", &[&["m1", "m2", "m3", "m4"]])]))),
            ["spec.pools[1].dataRaidGroups[0].blockDevices: Forbidden: a mirror raid group cannot grow or shrink: add a new raid group to expand the pool"]
        );
    }

    #[test]
    fn cvc_replica_count_is_bounded_and_immutable() {
        let cvc = |count: i32| -> v1::CStorVolumeConfig {
            serde_json::from_value(json!({
                "apiVersion": "cstor.openebs.io/v1", "kind": "CStorVolumeConfig",
                "metadata": {"name": "pvc-1"},
                "spec": {"provision": {"replicaCount": count, "capacity": {"storage": "5Gi"}}, "cstorVolumeSource": "pvc-0@snap"},
            }))
            .unwrap()
        };
        assert!(validate_cvc(&cvc(3)).is_empty());
        assert_eq!(
            texts(&validate_cvc(&cvc(6))),
            ["spec.provision.replicaCount: Invalid value: 6: must be between 1 and 5"]
        );
        assert_eq!(
            texts(&validate_cvc_update(&cvc(3), &cvc(2))),
            ["spec.provision.replicaCount: Forbidden: field is immutable: scale replicas through spec.policy.replicaPoolInfo"]
        );
    }

    #[test]
    fn cv_factors_and_known_replicas_are_checked() {
        let cv = |rf: i32, cf: i32, guid: &str| -> v1::CStorVolume {
            serde_json::from_value(json!({
                "apiVersion": "cstor.openebs.io/v1", "kind": "CStorVolume", "metadata": {"name": "pvc-1"},
                "spec": {"replicationFactor": rf, "consistencyFactor": cf, "desiredReplicationFactor": rf,
                         "replicaDetails": {"knownReplicas": {"2E93FCD50CFA2A0502BE29FF397FA661": guid}}},
            }))
            .unwrap()
        };
        assert!(validate_cv(&cv(3, 2, "8687568470394952308")).is_empty());
        assert_eq!(
            texts(&validate_cv(&cv(2, 3, "x"))),
            [
                "spec.consistencyFactor: Invalid value: 3: must not exceed replicationFactor (2)",
                r#"spec.replicaDetails.knownReplicas[2E93FCD50CFA2A0502BE29FF397FA661]: Invalid value: "x": a replica guid is a decimal 64-bit number"#,
            ]
        );
    }

    #[test]
    fn custom_resource_entry_point_runs_schema_then_rules() {
        let bad_enum = json!({
            "apiVersion": "cstor.openebs.io/v1", "kind": "CStorPoolCluster", "metadata": {"name": "p"},
            "spec": {"pools": [{"nodeSelector": {"h": "1"}, "dataRaidGroups": [{"blockDevices": [{"blockDeviceName": "a"}]}], "poolConfig": {"dataRaidGroupType": "raid5"}}]},
        });
        let errors =
            validate_custom_resource("cstor.openebs.io/v1", "CStorPoolCluster", &bad_enum, None)
                .unwrap();
        assert_eq!(errors[0].reason(), "FieldValueNotSupported");
        let mut bad_width = bad_enum.clone();
        bad_width["spec"]["pools"][0]["poolConfig"]["dataRaidGroupType"] = json!("raidz");
        let errors =
            validate_custom_resource("cstor.openebs.io/v1", "CStorPoolCluster", &bad_width, None)
                .unwrap();
        assert_eq!(texts(&errors), ["spec.pools[0].dataRaidGroups[0].blockDevices: Invalid value: 1: a raidz raid group needs 2^n+1 block devices (3, 5, 9, 17, ...)"]);
        let alpha = json!({
            "apiVersion": "openebs.io/v1alpha1", "kind": "CStorPoolCluster", "metadata": {"name": "p"},
            "spec": {"pools": [{"nodeSelector": {"h": "1"}, "raidGroups": [
                {"type": "stripe", "isWriteCache": true, "blockDevices": [{"blockDeviceName": "c"}]},
                {"type": "mirror", "blockDevices": [{"blockDeviceName": "a"}]}]}]},
        });
        let errors =
            validate_custom_resource("openebs.io/v1alpha1", "CStorPoolCluster", &alpha, None)
                .unwrap();
        assert_eq!(texts(&errors), ["spec.pools[0].raidGroups[1].blockDevices: Invalid value: 1: a mirror raid group needs a multiple of 2 block devices (2, 4, 6, ...)"]);
        assert!(validate_custom_resource("v1", "Pod", &json!({}), None).is_none());
    }

    #[test]
    fn block_devices_are_checked_against_the_cluster() {
        let bd = |name: &str,
                  node: &str,
                  state: &str,
                  fs: Option<&str>,
                  claim: Option<&str>,
                  tag: Option<&str>|
         -> v1alpha1::BlockDevice {
            let mut labels = serde_json::Map::new();
            if let Some(t) = tag {
                labels.insert("openebs.io/block-device-tag".into(), json!(t));
            }
            serde_json::from_value(json!({
                "apiVersion": "openebs.io/v1alpha1", "kind": "BlockDevice",
                "metadata": {"name": name, "namespace": "openebs", "labels": labels},
                "spec": {"nodeAttributes": {"nodeName": node}, "filesystem": {"fsType": fs}, "claimRef": {"name": claim}},
                "status": {"state": state, "claimState": if claim.is_some() { "Claimed" } else { "Unclaimed" }},
            }))
            .unwrap()
        };
        let claim = |name: &str, cspc: &str| -> v1alpha1::BlockDeviceClaim {
            serde_json::from_value(json!({
                "apiVersion": "openebs.io/v1alpha1", "kind": "BlockDeviceClaim",
                "metadata": {"name": name, "labels": {"openebs.io/cstor-pool-cluster": cspc}}, "spec": {},
            }))
            .unwrap()
        };
        let devices = [
            bd("ok", "w1", "Active", None, None, None),
            bd(
                "zfs",
                "w1",
                "Active",
                Some("zfs_member"),
                Some("bdc-mine"),
                Some("fast"),
            ),
            bd("gone", "w1", "Inactive", None, None, None),
            bd("far", "w2", "Active", None, None, None),
            bd("ext4", "w1", "Active", Some("ext4"), None, None),
            bd("taken", "w1", "Active", None, Some("bdc-other"), None),
            bd("tagged", "w1", "Active", None, None, Some("slow")),
        ];
        let claims = [claim("bdc-mine", "p"), claim("bdc-other", "q")];
        let mut c = cspc(json!([pool(
            "w1",
            "stripe",
            &[&["ok", "zfs", "gone", "far", "ext4", "taken", "tagged", "missing"]]
        )]));
        c.metadata.annotations = Some(
            [(
                "openebs.io/allowed-bd-tags".to_owned(),
                "fast, other".to_owned(),
            )]
            .into(),
        );
        let errors = validate_cspc_devices(&c, &devices, &claims);
        let p = "spec.pools[0].dataRaidGroups[0].blockDevices";
        assert_eq!(
            texts(&errors),
            [
                format!(
                    r#"{p}[2].blockDeviceName: Invalid value: "gone": the block device is Inactive, not Active"#
                ),
                format!(
                    r#"{p}[3].blockDeviceName: Invalid value: "far": the block device is on node w2, the pool on node w1"#
                ),
                format!(
                    r#"{p}[4].blockDeviceName: Invalid value: "ext4": the block device holds a ext4 filesystem"#
                ),
                format!(
                    r#"{p}[5].blockDeviceName: Invalid value: "taken": the block device is claimed by "bdc-other" for CStorPoolCluster "q""#
                ),
                format!(
                    r#"{p}[6].blockDeviceName: Invalid value: "tagged": the block device is tagged "slow", which the CStorPoolCluster does not list in openebs.io/allowed-bd-tags"#
                ),
                format!(r#"{p}[7].blockDeviceName: Not found: "missing""#),
            ]
        );
        assert_eq!(errors[5].reason(), "FieldValueNotFound");
    }

    #[test]
    fn alpha_updates_follow_the_v1_rules_with_alpha_paths() {
        let alpha = |devices: &[&str]| {
            json!({
                "apiVersion": "openebs.io/v1alpha1", "kind": "CStorPoolCluster", "metadata": {"name": "p"},
                "spec": {"pools": [{"nodeSelector": {"h": "1"}, "raidGroups": [
                    {"type": "stripe", "isWriteCache": true, "blockDevices": [{"blockDeviceName": "c"}]},
                    {"type": "mirror", "blockDevices": devices.iter().map(|d| json!({"blockDeviceName": d})).collect::<Vec<_>>()}]}]},
            })
        };
        let validator = Validator::new();
        let check = |old: Value, new: Value| {
            texts(
                &validator
                    .validate("openebs.io/v1alpha1", "CStorPoolCluster", &new, Some(&old))
                    .unwrap(),
            )
        };
        assert!(check(alpha(&["a", "b"]), alpha(&["a", "x"])).is_empty());
        assert_eq!(
            check(alpha(&["a", "b"]), alpha(&["x", "y"])),
            ["spec.pools[0].raidGroups[1].blockDevices: Forbidden: 2 block devices replaced at once: replace one block device per raid group at a time"]
        );
    }
}
