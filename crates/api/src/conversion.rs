//! Conversion between the alpha CStorPoolCluster (`openebs.io/v1alpha1`) and
//! `cstor.openebs.io/v1`, as pure functions.
//!
//! Mapping: an alpha raid group is a data group unless `isWriteCache`; its `type` (or the
//! pool's `defaultRaidGroupType`) becomes v1's `dataRaidGroupType` /
//! `writeCacheGroupType`, so all groups of one role in a pool must share a type;
//! `compression` carries over. Spare and read-cache groups have no v1 form (cStor's v1
//! dropped them too) and are refused with a field error, never dropped.
//!
//! Lossless round trips: settings only one side has are kept in an annotation on the
//! other side's object — alpha `cacheFile`/`overProvisioning` in
//! [`names::annotation::V1ALPHA1_POOL_CONFIG`] on the v1 object, and v1 resources,
//! tolerations, priority classes, `thickProvision` and `roThresholdLimit` in
//! [`V1_FIELDS_ANNOTATION`] on the alpha object. Hence `v1_to_alpha` then `alpha_to_v1`
//! gives back the same v1 object, and `alpha_to_v1` then `v1_to_alpha` gives back the
//! alpha object in its normal form ([`normalize_alpha`]: explicit group types and flags,
//! data groups before write cache groups). Status is not converted: each object's status
//! is written by the controller that owns it.

use crate::field::{FieldError, FieldPath};
use crate::names;
use crate::v1::{self, BlockDeviceRef, PoolConfig, RaidGroup, RaidGroupType};
use crate::v1alpha1::{self, AlphaBlockDevice, AlphaPoolConfig, AlphaPoolSpec, AlphaRaidGroup};
use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use serde::{Deserialize, Serialize};

/// Annotation on an alpha CSPC converted from v1, holding the v1-only settings (JSON).
pub const V1_FIELDS_ANNOTATION: &str = "cstor.openebs.io/v1-fields";

/// Alpha-only settings of one pool, kept on the v1 object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AlphaOnlyPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    over_provisioning: Option<bool>,
}

/// v1-only settings of one pool, kept on the alpha object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct V1OnlyPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    thick_provision: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aux_resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ro_threshold_limit: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    write_cache_group_type: Option<RaidGroupType>,
    /// v1 had `writeCacheRaidGroups: []` (present but empty).
    #[serde(default)]
    empty_write_cache_groups: bool,
}

/// v1-only settings of a CSPC, kept on the alpha object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct V1Only {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aux_resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    priority_class_name: Option<String>,
    #[serde(default)]
    pools: Vec<V1OnlyPool>,
}

/// Converts an alpha CSPC to `cstor.openebs.io/v1`. Errors name the alpha fields that
/// have no v1 form.
pub fn alpha_to_v1(
    alpha: &v1alpha1::CStorPoolCluster,
) -> Result<v1::CStorPoolCluster, Vec<FieldError>> {
    let mut metadata = alpha.metadata.clone();
    let mut annotations = metadata.annotations.take().unwrap_or_default();
    let v1_only: V1Only = match annotations.remove(V1_FIELDS_ANNOTATION) {
        Some(json) => serde_json::from_str(&json).map_err(|e| {
            vec![FieldError::invalid(
                FieldPath::new("metadata.annotations").key(V1_FIELDS_ANNOTATION),
                "(json)",
                format!("not the JSON cstor writes: {e}"),
            )]
        })?,
        None => V1Only::default(),
    };
    let mut errors = Vec::new();
    let mut pools = Vec::with_capacity(alpha.spec.pools.len());
    let mut alpha_only = Vec::with_capacity(alpha.spec.pools.len());
    for (i, pool) in alpha.spec.pools.iter().enumerate() {
        let extra = v1_only.pools.get(i).cloned().unwrap_or_default();
        match pool_to_v1(pool, extra, &FieldPath::new("spec.pools").index(i)) {
            Ok((p, a)) => {
                pools.push(p);
                alpha_only.push(a);
            }
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if alpha_only.iter().any(|a| *a != AlphaOnlyPool::default()) {
        let json = serde_json::to_string(&alpha_only).map_err(|e| {
            vec![FieldError::invalid(
                FieldPath::new("spec.pools"),
                "(pools)",
                e.to_string(),
            )]
        })?;
        annotations.insert(names::annotation::V1ALPHA1_POOL_CONFIG.to_owned(), json);
    }
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    Ok(v1::CStorPoolCluster {
        metadata,
        spec: v1::CStorPoolClusterSpec {
            pools,
            resources: v1_only.resources,
            aux_resources: v1_only.aux_resources,
            tolerations: v1_only.tolerations,
            priority_class_name: v1_only.priority_class_name,
        },
        status: None,
    })
}

fn pool_to_v1(
    pool: &AlphaPoolSpec,
    extra: V1OnlyPool,
    path: &FieldPath,
) -> Result<(v1::PoolSpec, AlphaOnlyPool), Vec<FieldError>> {
    let mut errors = Vec::new();
    let config = pool.pool_config.clone().unwrap_or_default();
    let default_type = config.default_raid_group_type;
    let mut data_type: Option<RaidGroupType> = None;
    let mut cache_type: Option<RaidGroupType> = None;
    let mut data_groups = Vec::new();
    let mut cache_groups = Vec::new();
    for (j, group) in pool.raid_groups.iter().enumerate() {
        let group_path = path.child("raidGroups").index(j);
        if group.is_spare == Some(true) || group.is_read_cache == Some(true) {
            let flag = if group.is_spare == Some(true) {
                "isSpare"
            } else {
                "isReadCache"
            };
            errors.push(FieldError::forbidden(
                group_path.child(flag),
                "spare and read cache raid groups are not supported (cstor.openebs.io/v1 has no such role)",
            ));
            continue;
        }
        let Some(t) = group.type_.or(default_type) else {
            errors.push(FieldError::required(
                group_path.child("type"),
                "the raid group names no type and poolConfig.defaultRaidGroupType is not set",
            ));
            continue;
        };
        let is_cache = group.is_write_cache == Some(true);
        let (slot, role) = if is_cache {
            (&mut cache_type, "write cache")
        } else {
            (&mut data_type, "data")
        };
        match *slot {
            Some(existing) if existing != t => errors.push(FieldError::invalid(
                group_path.child("type"),
                format!("{:?}", t.as_str()),
                format!("all {role} raid groups of a pool must have one type (cstor.openebs.io/v1 has one per pool); an earlier one is {existing}"),
            )),
            _ => *slot = Some(t),
        }
        let mut block_devices = Vec::with_capacity(group.block_devices.len());
        for (k, device) in group.block_devices.iter().enumerate() {
            match device_to_v1(device) {
                Ok(d) => block_devices.push(d),
                Err(value) => errors.push(FieldError::invalid(
                    group_path.child("blockDevices").index(k).child("capacity"),
                    format!("{value:?}"),
                    "capacity is a number of bytes",
                )),
            }
        }
        let converted = RaidGroup { block_devices };
        if is_cache {
            cache_groups.push(converted);
        } else {
            data_groups.push(converted);
        }
    }
    // A v1 cache group type kept while the pool had no cache groups.
    let cache_type = cache_type.or(extra.write_cache_group_type);
    let Some(data_raid_group_type) = data_type.or(default_type) else {
        errors.push(FieldError::required(
            path.child("poolConfig").child("defaultRaidGroupType"),
            "no data raid group names a type",
        ));
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let write_cache_raid_groups = if cache_groups.is_empty() && !extra.empty_write_cache_groups {
        None
    } else {
        Some(cache_groups)
    };
    let alpha_only = AlphaOnlyPool {
        cache_file: config.cache_file.clone(),
        over_provisioning: config.over_provisioning,
    };
    Ok((
        v1::PoolSpec {
            node_selector: pool.node_selector.clone(),
            data_raid_groups: data_groups,
            write_cache_raid_groups,
            pool_config: PoolConfig {
                data_raid_group_type,
                write_cache_group_type: cache_type,
                thick_provision: extra.thick_provision,
                compression: config.compression,
                resources: extra.resources,
                aux_resources: extra.aux_resources,
                tolerations: extra.tolerations,
                priority_class_name: extra.priority_class_name,
                ro_threshold_limit: extra.ro_threshold_limit,
            },
        },
        alpha_only,
    ))
}

/// Alpha capacities are strings of bytes; v1 keeps a number. Returns the capacity that is
/// not a number.
fn device_to_v1(device: &AlphaBlockDevice) -> Result<BlockDeviceRef, String> {
    let capacity = match device.capacity.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| s.to_owned())?),
    };
    Ok(BlockDeviceRef {
        block_device_name: device.block_device_name.clone(),
        capacity,
        dev_link: device.dev_link.clone(),
    })
}

/// Converts a `cstor.openebs.io/v1` CSPC to the alpha layout. Never fails: every v1
/// setting has an alpha field or is kept in [`V1_FIELDS_ANNOTATION`]. A
/// [`names::annotation::V1ALPHA1_POOL_CONFIG`] annotation that is not the JSON cstor
/// writes (someone edited it) is dropped, so `cacheFile`/`overProvisioning` come back
/// unset: cstor's pool engine uses neither, and refusing would block the v1 object.
pub fn v1_to_alpha(cspc: &v1::CStorPoolCluster) -> v1alpha1::CStorPoolCluster {
    let mut metadata = cspc.metadata.clone();
    let mut annotations = metadata.annotations.take().unwrap_or_default();
    let alpha_only: Vec<AlphaOnlyPool> = annotations
        .remove(names::annotation::V1ALPHA1_POOL_CONFIG)
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    let spec = &cspc.spec;
    let mut v1_only = V1Only {
        resources: spec.resources.clone(),
        aux_resources: spec.aux_resources.clone(),
        tolerations: spec.tolerations.clone(),
        priority_class_name: spec.priority_class_name.clone(),
        pools: Vec::with_capacity(spec.pools.len()),
    };
    let mut pools = Vec::with_capacity(spec.pools.len());
    for (i, pool) in spec.pools.iter().enumerate() {
        let config = &pool.pool_config;
        let extra = alpha_only.get(i).cloned().unwrap_or_default();
        let group = |g: &RaidGroup, t: RaidGroupType, cache: bool| AlphaRaidGroup {
            type_: Some(t),
            is_write_cache: Some(cache),
            is_spare: Some(false),
            is_read_cache: Some(false),
            block_devices: g
                .block_devices
                .iter()
                .map(|d| AlphaBlockDevice {
                    block_device_name: d.block_device_name.clone(),
                    capacity: d.capacity.map(|c| c.to_string()),
                    dev_link: d.dev_link.clone(),
                })
                .collect(),
        };
        let mut raid_groups: Vec<AlphaRaidGroup> = pool
            .data_raid_groups
            .iter()
            .map(|g| group(g, config.data_raid_group_type, false))
            .collect();
        let cache_groups = pool.write_cache_raid_groups.as_deref().unwrap_or_default();
        // A cache group always has a type in alpha; v1 validation requires one whenever
        // cache groups exist, and an unvalidated object falls back to the data type.
        let cache_type = config
            .write_cache_group_type
            .unwrap_or(config.data_raid_group_type);
        raid_groups.extend(cache_groups.iter().map(|g| group(g, cache_type, true)));
        v1_only.pools.push(V1OnlyPool {
            thick_provision: config.thick_provision,
            resources: config.resources.clone(),
            aux_resources: config.aux_resources.clone(),
            tolerations: config.tolerations.clone(),
            priority_class_name: config.priority_class_name.clone(),
            ro_threshold_limit: config.ro_threshold_limit,
            write_cache_group_type: config
                .write_cache_group_type
                .filter(|_| cache_groups.is_empty()),
            empty_write_cache_groups: pool
                .write_cache_raid_groups
                .as_ref()
                .is_some_and(Vec::is_empty),
        });
        pools.push(AlphaPoolSpec {
            node_selector: pool.node_selector.clone(),
            raid_groups,
            pool_config: Some(AlphaPoolConfig {
                cache_file: extra.cache_file,
                default_raid_group_type: Some(config.data_raid_group_type),
                over_provisioning: extra.over_provisioning,
                compression: config.compression,
            }),
        });
    }
    let v1_only_is_empty = v1_only.resources.is_none()
        && v1_only.aux_resources.is_none()
        && v1_only.tolerations.is_none()
        && v1_only.priority_class_name.is_none()
        && v1_only.pools.iter().all(|p| *p == V1OnlyPool::default());
    if !v1_only_is_empty {
        if let Ok(json) = serde_json::to_string(&v1_only) {
            annotations.insert(V1_FIELDS_ANNOTATION.to_owned(), json);
        }
    }
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    v1alpha1::CStorPoolCluster {
        metadata,
        spec: v1alpha1::CStorPoolClusterSpec { pools },
        status: None,
    }
}

/// The normal form of an alpha CSPC: what `v1_to_alpha(alpha_to_v1(x))` returns for a
/// convertible `x` — every group's type and flags explicit, data groups before write
/// cache groups, every pool with a poolConfig naming its default type.
pub fn normalize_alpha(
    alpha: &v1alpha1::CStorPoolCluster,
) -> Result<v1alpha1::CStorPoolCluster, Vec<FieldError>> {
    alpha_to_v1(alpha).map(|v1| v1_to_alpha(&v1))
}

/// Maps a field path of the v1 CSPC [`alpha_to_v1`] made from `alpha` back to the alpha
/// field it came from, so validation errors name what the user wrote.
pub fn v1_path_to_alpha(alpha: &v1alpha1::CStorPoolCluster, path: &FieldPath) -> FieldPath {
    let s = path.as_str();
    let Some(rest) = s.strip_prefix("spec.pools[") else {
        return path.clone();
    };
    let Some((index, rest)) = rest.split_once(']') else {
        return path.clone();
    };
    let Ok(i) = index.parse::<usize>() else {
        return path.clone();
    };
    let Some(pool) = alpha.spec.pools.get(i) else {
        return path.clone();
    };
    let pool_path = format!("spec.pools[{i}]");
    if rest == ".poolConfig.dataRaidGroupType" {
        return FieldPath::new(&format!("{pool_path}.poolConfig.defaultRaidGroupType"));
    }
    for (role, cache) in [(".dataRaidGroups", false), (".writeCacheRaidGroups", true)] {
        let Some(after) = rest.strip_prefix(role) else {
            continue;
        };
        let Some(after_open) = after.strip_prefix('[') else {
            return FieldPath::new(&format!("{pool_path}.raidGroups{after}"));
        };
        let Some((j, tail)) = after_open.split_once(']') else {
            return path.clone();
        };
        let Ok(j) = j.parse::<usize>() else {
            return path.clone();
        };
        let alpha_index = pool
            .raid_groups
            .iter()
            .enumerate()
            .filter(|(_, g)| (g.is_write_cache == Some(true)) == cache)
            .nth(j)
            .map(|(k, _)| k);
        if let Some(k) = alpha_index {
            return FieldPath::new(&format!("{pool_path}.raidGroups[{k}]{tail}"));
        }
    }
    path.clone()
}

#[cfg(test)]
mod tests {
    //! Round trips both ways (including a property test over generated v1 CSPCs), the
    //! alpha-only cases that must be refused, and error paths mapped back to alpha fields.

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn alpha(spec: serde_json::Value) -> v1alpha1::CStorPoolCluster {
        serde_json::from_value(json!({"apiVersion": "openebs.io/v1alpha1", "kind": "CStorPoolCluster", "metadata": {"name": "c", "namespace": "openebs"}, "spec": spec})).unwrap()
    }

    #[test]
    fn alpha_roles_and_default_type_map_to_v1_groups() {
        let a = alpha(
            json!({"pools": [{"nodeSelector": {"h": "n1"}, "raidGroups": [
            {"isWriteCache": true, "type": "mirror", "blockDevices": [{"blockDeviceName": "c1"}, {"blockDeviceName": "c2"}]},
            {"blockDevices": [{"blockDeviceName": "d1", "capacity": "1073741824"}, {"blockDeviceName": "d2"}]}],
            "poolConfig": {"defaultRaidGroupType": "mirror", "compression": "lz4"}}]}),
        );
        let v = alpha_to_v1(&a).unwrap();
        let p = &v.spec.pools[0];
        assert_eq!(p.pool_config.data_raid_group_type, RaidGroupType::Mirror);
        assert_eq!(
            p.pool_config.write_cache_group_type,
            Some(RaidGroupType::Mirror)
        );
        assert_eq!(
            p.data_raid_groups[0].block_devices[0].capacity,
            Some(1 << 30)
        );
        assert_eq!(
            p.write_cache_raid_groups.as_ref().unwrap()[0]
                .block_devices
                .len(),
            2
        );
        assert!(
            v.metadata.annotations.is_none(),
            "nothing alpha-only to keep"
        );
        // Back: explicit types and flags, data groups first.
        let back = v1_to_alpha(&v);
        assert_eq!(back, normalize_alpha(&a).unwrap());
        assert_eq!(
            back.spec.pools[0].raid_groups[0].block_devices[0].block_device_name,
            "d1"
        );
        assert_eq!(back.spec.pools[0].raid_groups[1].is_write_cache, Some(true));
        assert_eq!(alpha_to_v1(&back).unwrap(), v);
    }

    #[test]
    fn alpha_only_settings_survive_a_round_trip() {
        let a = alpha(
            json!({"pools": [{"nodeSelector": {"h": "n1"}, "raidGroups": [{"type": "stripe", "isWriteCache": false, "isSpare": false, "isReadCache": false, "blockDevices": [{"blockDeviceName": "d1"}]}],
            "poolConfig": {"cacheFile": "/tmp/pool.cache", "defaultRaidGroupType": "stripe", "overProvisioning": true, "compression": "off"}}]}),
        );
        let v = alpha_to_v1(&a).unwrap();
        assert!(v
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(names::annotation::V1ALPHA1_POOL_CONFIG));
        assert_eq!(v1_to_alpha(&v), a);
    }

    #[test]
    fn unconvertible_alpha_groups_are_refused_with_their_paths() {
        let a = alpha(
            json!({"pools": [{"nodeSelector": {"h": "n1"}, "raidGroups": [
            {"type": "stripe", "blockDevices": [{"blockDeviceName": "d1"}]},
            {"type": "mirror", "blockDevices": [{"blockDeviceName": "d2"}, {"blockDeviceName": "d3"}]},
            {"isSpare": true, "type": "stripe", "blockDevices": [{"blockDeviceName": "s1"}]},
            {"blockDevices": [{"blockDeviceName": "d4", "capacity": "1G"}]}]}]}),
        );
        let errors: Vec<String> = alpha_to_v1(&a)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                r#"spec.pools[0].raidGroups[1].type: Invalid value: "mirror": all data raid groups of a pool must have one type (cstor.openebs.io/v1 has one per pool); an earlier one is stripe"#,
                "spec.pools[0].raidGroups[2].isSpare: Forbidden: spare and read cache raid groups are not supported (cstor.openebs.io/v1 has no such role)",
                "spec.pools[0].raidGroups[3].type: Required value: the raid group names no type and poolConfig.defaultRaidGroupType is not set",
            ]
        );
    }

    #[test]
    fn v1_paths_map_to_alpha_fields() {
        let a = alpha(
            json!({"pools": [{"nodeSelector": {"h": "n1"}, "raidGroups": [
            {"isWriteCache": true, "type": "stripe", "blockDevices": [{"blockDeviceName": "c1"}]},
            {"type": "stripe", "blockDevices": [{"blockDeviceName": "d1"}]}]}]}),
        );
        let map = |p: &str| v1_path_to_alpha(&a, &FieldPath::new(p)).to_string();
        assert_eq!(
            map("spec.pools[0].dataRaidGroups[0].blockDevices[0].blockDeviceName"),
            "spec.pools[0].raidGroups[1].blockDevices[0].blockDeviceName"
        );
        assert_eq!(
            map("spec.pools[0].writeCacheRaidGroups[0].blockDevices"),
            "spec.pools[0].raidGroups[0].blockDevices"
        );
        assert_eq!(
            map("spec.pools[0].dataRaidGroups"),
            "spec.pools[0].raidGroups"
        );
        assert_eq!(
            map("spec.pools[0].poolConfig.dataRaidGroupType"),
            "spec.pools[0].poolConfig.defaultRaidGroupType"
        );
        assert_eq!(
            map("spec.pools[0].nodeSelector"),
            "spec.pools[0].nodeSelector"
        );
        assert_eq!(
            map("spec.pools[7].dataRaidGroups[0]"),
            "spec.pools[7].dataRaidGroups[0]"
        );
    }

    fn arb_type() -> impl Strategy<Value = RaidGroupType> {
        prop_oneof![
            Just(RaidGroupType::Stripe),
            Just(RaidGroupType::Mirror),
            Just(RaidGroupType::Raidz),
            Just(RaidGroupType::Raidz2)
        ]
    }

    fn arb_groups() -> impl Strategy<Value = Vec<RaidGroup>> {
        prop::collection::vec(
            prop::collection::vec(
                (
                    "[a-z]{1,6}",
                    prop::option::of(any::<u64>()),
                    prop::option::of("/dev/[a-z]{3}"),
                ),
                1..4,
            )
            .prop_map(|devices| RaidGroup {
                block_devices: devices
                    .into_iter()
                    .map(|(name, capacity, dev_link)| BlockDeviceRef {
                        block_device_name: name,
                        capacity,
                        dev_link,
                    })
                    .collect(),
            }),
            0..3,
        )
    }

    fn arb_pool() -> impl Strategy<Value = v1::PoolSpec> {
        (
            prop::collection::btree_map("[a-z]{1,5}", "[a-z0-9]{0,5}", 1..3),
            arb_groups(),
            prop::option::of(arb_groups()),
            arb_type(),
            prop::option::of(arb_type()),
            (
                prop::option::of(any::<bool>()),
                prop::option::of(0i32..=100),
                prop::option::of("[a-z]{1,8}"),
            ),
            prop::option::of(prop_oneof![
                Just(v1::Compression::Default),
                Just(v1::Compression::On),
                Just(v1::Compression::Off),
                Just(v1::Compression::Lz4),
                Just(v1::Compression::Zstd)
            ]),
        )
            .prop_map(
                |(
                    node_selector,
                    data,
                    cache,
                    data_type,
                    cache_type,
                    (thick, ro, priority),
                    compression,
                )| {
                    // v1 validation requires a cache type whenever cache groups exist; the
                    // round trip is promised for such objects.
                    let cache_type = if cache.as_ref().is_some_and(|c| !c.is_empty()) {
                        Some(cache_type.unwrap_or(data_type))
                    } else {
                        cache_type
                    };
                    v1::PoolSpec {
                        node_selector,
                        data_raid_groups: data,
                        write_cache_raid_groups: cache,
                        pool_config: PoolConfig {
                            data_raid_group_type: data_type,
                            write_cache_group_type: cache_type,
                            thick_provision: thick,
                            compression,
                            resources: None,
                            aux_resources: None,
                            tolerations: ro.map(|_| {
                                vec![Toleration {
                                    key: Some("k".into()),
                                    ..Default::default()
                                }]
                            }),
                            priority_class_name: priority,
                            ro_threshold_limit: ro,
                        },
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn v1_to_alpha_to_v1_is_identity(pools in prop::collection::vec(arb_pool(), 0..4), priority in prop::option::of("[a-z]{1,8}")) {
            let v = v1::CStorPoolCluster {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta { name: Some("c".into()), namespace: Some("openebs".into()), ..Default::default() },
                spec: v1::CStorPoolClusterSpec { pools, resources: None, aux_resources: None, tolerations: None, priority_class_name: priority },
                status: None,
            };
            let a = v1_to_alpha(&v);
            prop_assert_eq!(alpha_to_v1(&a).unwrap(), v);
            // The alpha form is already normal.
            prop_assert_eq!(normalize_alpha(&a).unwrap(), a);
        }
    }
}
