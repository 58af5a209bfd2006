//! Cross-checks the Rust types against their own CRD schemas: a fully populated object of
//! every kind, serialised by serde, must pass `schema::validate_object` with no error and
//! deserialise back to itself. A field renamed on one side only, or a schema node the
//! validator mishandles (nullable, int-or-string, maps), fails here.

use crate::v1::*;
use crate::v1alpha1::*;
use k8s_openapi::api::core::v1::{ObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;

fn meta() -> ObjectMeta {
    ObjectMeta {
        name: Some("obj".into()),
        namespace: Some("openebs".into()),
        labels: Some([("openebs.io/cstor-pool-cluster".to_owned(), "c".to_owned())].into()),
        ..ObjectMeta::default()
    }
}

fn time() -> Time {
    serde_json::from_value(serde_json::json!("2019-11-12T07:32:38Z")).unwrap()
}

fn storage(q: &str) -> BTreeMap<String, Quantity> {
    [("storage".to_owned(), Quantity(q.into()))].into()
}

fn resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(
            [
                ("memory".to_owned(), Quantity("1Gi".into())),
                ("cpu".to_owned(), Quantity("500m".into())),
            ]
            .into(),
        ),
        limits: Some([("memory".to_owned(), Quantity("2Gi".into()))].into()),
        ..ResourceRequirements::default()
    }
}

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    object: &T,
    crd_name: &str,
) {
    let crd = crate::crds()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(crd_name))
        .unwrap();
    let schema = crate::schema::version_schema(&crd, &crd.spec.versions[0].name).unwrap();
    let value = serde_json::to_value(object).unwrap();
    let errors = crate::schema::validate_object(schema, &value);
    assert!(errors.is_empty(), "{crd_name}: {errors:#?}\n{value:#}");
    let back: T = serde_json::from_value(value).unwrap();
    assert_eq!(&back, object, "{crd_name}");
}

fn groups() -> Vec<RaidGroup> {
    vec![RaidGroup {
        block_devices: vec![
            BlockDeviceRef {
                block_device_name: "bd-1".into(),
                capacity: Some(1 << 40),
                dev_link: Some("/dev/disk/by-id/a".into()),
            },
            BlockDeviceRef {
                block_device_name: "bd-2".into(),
                capacity: None,
                dev_link: None,
            },
        ],
    }]
}

fn pool_config() -> PoolConfig {
    PoolConfig {
        data_raid_group_type: RaidGroupType::Mirror,
        write_cache_group_type: Some(RaidGroupType::Stripe),
        thick_provision: Some(false),
        compression: Some(Compression::Zstd),
        resources: Some(resources()),
        aux_resources: Some(resources()),
        tolerations: Some(vec![Toleration {
            key: Some("k".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        }]),
        priority_class_name: Some("high".into()),
        ro_threshold_limit: Some(85),
    }
}

#[test]
fn cstor_v1_objects_pass_their_schemas() {
    let cspc = crate::v1::CStorPoolCluster {
        metadata: meta(),
        spec: crate::v1::CStorPoolClusterSpec {
            pools: vec![PoolSpec {
                node_selector: [("kubernetes.io/hostname".to_owned(), "worker-01".to_owned())]
                    .into(),
                data_raid_groups: groups(),
                write_cache_raid_groups: Some(groups()),
                pool_config: pool_config(),
            }],
            resources: Some(resources()),
            aux_resources: None,
            tolerations: Some(vec![]),
            priority_class_name: Some("p".into()),
        },
        status: Some(crate::v1::CStorPoolClusterStatus {
            provisioned_instances: Some(3),
            desired_instances: Some(3),
            healthy_instances: Some(2),
            conditions: Some(vec![CStorPoolClusterCondition {
                type_: CStorPoolClusterConditionType::PoolManagerAvailable,
                status: ConditionStatus::True,
                last_update_time: Some(time()),
                last_transition_time: Some(time()),
                reason: Some("MinimumReplicasAvailable".into()),
                message: Some("ok".into()),
            }]),
        }),
    };
    check(&cspc, "cstorpoolclusters.cstor.openebs.io");

    let cspi = CStorPoolInstance {
        metadata: meta(),
        spec: CStorPoolInstanceSpec {
            host_name: "worker-01".into(),
            node_selector: [("kubernetes.io/hostname".to_owned(), "worker-01".to_owned())].into(),
            pool_config: pool_config(),
            data_raid_groups: groups(),
            write_cache_raid_groups: None,
        },
        status: Some(CStorPoolInstanceStatus {
            conditions: Some(vec![CStorPoolInstanceCondition {
                type_: CStorPoolInstanceConditionType::DiskReplacement,
                status: ConditionStatus::False,
                last_update_time: None,
                last_transition_time: Some(time()),
                reason: Some("BlockDeviceReplacementInprogress".into()),
                message: None,
            }]),
            phase: Some(CStorPoolInstancePhase::Online),
            capacity: Some(CStorPoolInstanceCapacity {
                used: Some(Quantity("50K".into())),
                free: Some(Quantity("39.7G".into())),
                total: Some(Quantity("39.8G".into())),
                zfs: Some(ZfsCapacity {
                    logical_used: Some(Quantity("1Gi".into())),
                }),
            }),
            read_only: Some(false),
            provisioned_replicas: Some(1),
            healthy_replicas: Some(1),
        }),
    };
    check(&cspi, "cstorpoolinstances.cstor.openebs.io");

    let cv = CStorVolume {
        metadata: meta(),
        spec: CStorVolumeSpec {
            capacity: Some(Quantity("500Gi".into())),
            target_ip: Some("10.0.70.44".into()),
            target_port: Some("3260".into()),
            iqn: Some(crate::names::derive::iqn("pvc-1")),
            target_portal: Some("10.0.70.44:3260".into()),
            replication_factor: Some(3),
            consistency_factor: Some(2),
            desired_replication_factor: Some(3),
            replica_details: Some(CStorVolumeReplicaDetails {
                known_replicas: Some(
                    [(
                        "2E93FCD50CFA2A0502BE29FF397FA661".to_owned(),
                        "8687568470394952308".to_owned(),
                    )]
                    .into(),
                ),
            }),
            node_base: Some(crate::names::IQN_PREFIX.into()),
            status: Some("Init".into()),
        },
        status: Some(CStorVolumeStatus {
            phase: Some(CStorVolumePhase::Healthy),
            replica_statuses: Some(vec![ReplicaStatus {
                replica_id: Some("2E93FCD50CFA2A0502BE29FF397FA661".into()),
                mode: Some(ReplicaMode::Healthy),
                checkpointed_io_seq: Some("1048576".into()),
                inflight_read: Some("0".into()),
                inflight_write: Some("1".into()),
                inflight_sync: Some("0".into()),
                up_time: Some(3600),
                quorum: Some("1".into()),
            }]),
            capacity: Some(Quantity("500Gi".into())),
            last_transition_time: Some(time()),
            last_update_time: Some(time()),
            message: Some(String::new()),
            conditions: Some(vec![CStorVolumeCondition {
                type_: CStorVolumeConditionType::Resizing,
                status: CStorVolumeConditionStatus::InProgress,
                last_probe_time: None,
                last_transition_time: Some(time()),
                reason: None,
                message: Some("resizing".into()),
            }]),
            replica_details: Some(CStorVolumeReplicaDetails::default()),
            replication: None,
        }),
    };
    check(&cv, "cstorvolumes.cstor.openebs.io");

    let cvr = CStorVolumeReplica {
        metadata: meta(),
        spec: CStorVolumeReplicaSpec {
            target_ip: Some("10.0.70.44".into()),
            capacity: Some("5G".into()),
            zvol_workers: Some("6".into()),
            replica_id: Some("4858867E8F150C533A2CF30A5D5FD8C6".into()),
            compression: Some("lz4".into()),
            block_size: Some(4096),
        },
        status: Some(CStorVolumeReplicaStatus {
            phase: Some(CStorVolumeReplicaPhase::ReconstructingNewReplica),
            capacity: Some(CStorVolumeReplicaCapacity {
                total: Some("2.57M".into()),
                used: Some("37.5M".into()),
            }),
            last_transition_time: Some(time()),
            last_update_time: None,
            message: None,
            snapshots: Some(
                [(
                    "snap1".to_owned(),
                    CStorSnapshotInfo {
                        logical_referenced: 4096,
                    },
                )]
                .into(),
            ),
            pending_snapshots: Some(BTreeMap::new()),
        }),
    };
    check(&cvr, "cstorvolumereplicas.cstor.openebs.io");

    let policy = CStorVolumePolicySpec {
        provision: Some(ProvisionPolicy {
            replica_affinity: Some(true),
            block_size: Some(4096),
        }),
        target: Some(TargetPolicy {
            queue_depth: Some("32".into()),
            lu_workers: Some(6),
            monitor: Some(true),
            replication_factor: Some(3),
            resources: Some(resources()),
            aux_resources: None,
            tolerations: None,
            affinity: Some(Default::default()),
            node_selector: Some([("a".to_owned(), "b".to_owned())].into()),
            priority_class_name: None,
        }),
        replica: Some(ReplicaPolicy {
            zvol_workers: Some("6".into()),
            compression: Some("on".into()),
        }),
        replica_pool_info: Some(vec![ReplicaPoolInfo {
            pool_name: "cstor-disk-pool-c0tw".into(),
        }]),
    };
    let cvp = CStorVolumePolicy {
        metadata: meta(),
        spec: policy.clone(),
        status: Some(CStorVolumePolicyStatus {
            phase: Some("Ready".into()),
        }),
    };
    check(&cvp, "cstorvolumepolicies.cstor.openebs.io");

    let mut cvc = CStorVolumeConfig::new(
        "pvc-1",
        CStorVolumeConfigSpec {
            capacity: Some(storage("5Gi")),
            cstor_volume_ref: Some(ObjectReference {
                name: Some("pvc-1".into()),
                kind: Some("CStorVolume".into()),
                ..ObjectReference::default()
            }),
            cstor_volume_source: Some("pvc-0@snap".into()),
            provision: Some(VolumeProvision {
                capacity: Some(storage("5Gi")),
                replica_count: Some(3),
            }),
            policy: Some(policy),
        },
    );
    cvc.publish = Some(CStorVolumeConfigPublish {
        node_id: Some("worker-01".into()),
    });
    cvc.status = Some(CStorVolumeConfigStatus {
        phase: Some(CStorVolumeConfigPhase::Bound),
        pool_info: Some(vec!["cstor-disk-pool-c0tw".into()]),
        capacity: Some(storage("5Gi")),
        conditions: Some(vec![CStorVolumeConfigCondition {
            type_: CStorVolumeConfigConditionType::VolumeResizeSuccessful,
            status: ConditionStatus::True,
            last_probe_time: Some(time()),
            last_transition_time: None,
            reason: None,
            message: None,
        }]),
    });
    check(&cvc, "cstorvolumeconfigs.cstor.openebs.io");
}

#[test]
fn openebs_v1alpha1_objects_pass_their_schemas() {
    let bd = BlockDevice {
        metadata: meta(),
        spec: BlockDeviceSpec {
            node_attributes: Some(NodeAttributes {
                node_name: Some("worker-01".into()),
            }),
            path: Some("/dev/sdb".into()),
            capacity: Some(BlockDeviceCapacity {
                storage: 536_870_912_000,
                physical_sector_size: Some(4096),
                logical_sector_size: Some(512),
            }),
            details: Some(BlockDeviceDetails {
                device_type: Some("disk".into()),
                drive_type: Some("SSD".into()),
                model: Some("m".into()),
                ..BlockDeviceDetails::default()
            }),
            claim_ref: Some(ObjectReference {
                name: Some("bdc-cstor-1".into()),
                ..ObjectReference::default()
            }),
            dev_links: Some(vec![DevLink {
                kind: Some("by-id".into()),
                links: Some(vec!["/dev/disk/by-id/x".into()]),
            }]),
            file_system: Some(FileSystemInfo {
                fs_type: Some("zfs_member".into()),
                mount_point: None,
            }),
            partitioned: Some("No".into()),
            parent_device: None,
            aggregate_device: None,
        },
        status: Some(BlockDeviceStatus {
            claim_state: Some(BlockDeviceClaimState::Unclaimed),
            state: Some(BlockDeviceState::Active),
        }),
    };
    check(&bd, "blockdevices.openebs.io");

    let bdc = BlockDeviceClaim {
        metadata: meta(),
        spec: BlockDeviceClaimSpec {
            selector: Some(LabelSelector {
                match_labels: Some([("a".to_owned(), "b".to_owned())].into()),
                ..LabelSelector::default()
            }),
            resources: Some(BlockDeviceClaimResources {
                requests: Some(storage("10Gi")),
            }),
            device_type: Some("disk".into()),
            host_name: Some("worker-01".into()),
            device_claim_details: Some(BlockDeviceClaimDetails {
                block_volume_mode: Some("Block".into()),
                format_type: None,
                allow_partition: Some(false),
            }),
            block_device_name: Some("blockdevice-1".into()),
            block_device_node_attributes: Some(BlockDeviceNodeAttributes {
                node_name: Some("worker-01".into()),
                host_name: None,
            }),
        },
        status: Some(BlockDeviceClaimStatus {
            phase: Some(BlockDeviceClaimPhase::InvalidCapacityRequest),
        }),
    };
    check(&bdc, "blockdeviceclaims.openebs.io");

    let alpha = crate::v1alpha1::CStorPoolCluster {
        metadata: meta(),
        spec: crate::v1alpha1::CStorPoolClusterSpec {
            pools: vec![AlphaPoolSpec {
                node_selector: [("kubernetes.io/hostname".to_owned(), "worker-01".to_owned())]
                    .into(),
                raid_groups: vec![AlphaRaidGroup {
                    type_: Some(RaidGroupType::Raidz2),
                    is_write_cache: Some(false),
                    is_spare: Some(false),
                    is_read_cache: Some(false),
                    block_devices: vec![AlphaBlockDevice {
                        block_device_name: "bd".into(),
                        capacity: Some("1024".into()),
                        dev_link: None,
                    }],
                }],
                pool_config: Some(AlphaPoolConfig {
                    cache_file: Some(String::new()),
                    default_raid_group_type: Some(RaidGroupType::Stripe),
                    over_provisioning: Some(false),
                    compression: Some(Compression::Off),
                }),
            }],
        },
        status: Some(crate::v1alpha1::CStorPoolClusterStatus {
            phase: Some("Online".into()),
        }),
    };
    check(&alpha, "cstorpoolclusters.openebs.io");
}
