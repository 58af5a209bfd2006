//! Round trips JSON -> protobuf -> JSON for realistic objects of every kind client-go
//! components read and write, plus the envelope, watch frame, negotiation and hostile
//! bytes. A field with a wrong number, wire type or JSON form comes back different.
//! Every round trip is also cross-checked against k8s-pb's prost types (an independent
//! decoder and encoder generated from the Kubernetes protos): our bytes decode as the
//! typed message, and prost's re-encoding decodes back to the same JSON.

use k8s_pb::api as k8s;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as metapb;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message as _;
use serde_json::{json, Value};

use super::schema::Schema;
use super::*;

fn round_trip(v: &Value) -> Value {
    let bytes = encode_object(v).unwrap_or_else(|e| panic!("encode {}: {e}", v["kind"]));
    assert!(bytes.starts_with(MAGIC));
    decode_body(&bytes).unwrap_or_else(|e| panic!("decode {}: {e}", v["kind"]))
}

fn assert_round_trips(v: Value) {
    assert_eq!(round_trip(&v), v);
    let kind = v["kind"].as_str().unwrap_or("");
    match (v["apiVersion"].as_str().unwrap_or(""), kind) {
        ("v1", "Pod") => prost_agrees::<k8s::core::v1::Pod>(&v),
        ("v1", "Node") => prost_agrees::<k8s::core::v1::Node>(&v),
        ("v1", "PersistentVolume") => prost_agrees::<k8s::core::v1::PersistentVolume>(&v),
        ("v1", "PersistentVolumeClaim") => prost_agrees::<k8s::core::v1::PersistentVolumeClaim>(&v),
        ("v1", "Event") => prost_agrees::<k8s::core::v1::Event>(&v),
        ("v1", "Status") => prost_agrees::<metapb::Status>(&v),
        ("events.k8s.io/v1", "Event") => prost_agrees::<k8s::events::v1::Event>(&v),
        (_, "Lease") => prost_agrees::<k8s::coordination::v1::Lease>(&v),
        (_, "LeaseList") => prost_agrees::<k8s::coordination::v1::LeaseList>(&v),
        (_, "StorageClass") => prost_agrees::<k8s::storage::v1::StorageClass>(&v),
        (_, "CSIDriver") => prost_agrees::<k8s::storage::v1::CSIDriver>(&v),
        (_, "CSINode") => prost_agrees::<k8s::storage::v1::CSINode>(&v),
        (_, "VolumeAttachment") => prost_agrees::<k8s::storage::v1::VolumeAttachment>(&v),
        other => panic!("no prost cross-check for {other:?}"),
    }
}

/// Our bytes decode as prost's typed `M`, and prost's encoding of that decodes back to
/// `v`: the field numbers, wire types and leaf encodings agree with the protos.
fn prost_agrees<M: prost::Message + Default>(v: &Value) {
    let bytes = encode_object(v).unwrap();
    let unknown = Unknown::decode(&bytes[MAGIC.len()..]).unwrap();
    let tm = unknown.type_meta.clone().unwrap_or_default();
    assert_eq!(tm.api_version.as_deref(), v["apiVersion"].as_str());
    assert_eq!(tm.kind.as_deref(), v["kind"].as_str());
    let typed = M::decode(unknown.raw.as_deref().unwrap_or_default()).unwrap();
    let again = Unknown {
        raw: Some(typed.encode_to_vec()),
        ..unknown
    };
    let body = [&MAGIC[..], &again.encode_to_vec()].concat();
    assert_eq!(decode_body(&body).unwrap(), *v, "{}", v["kind"]);
}

fn meta(name: &str, ns: Option<&str>) -> Value {
    let mut m = json!({
        "name": name,
        "uid": "6f1c1f3e-0f55-4a0e-9a8b-2b9c7f0d6a11",
        "resourceVersion": "4711",
        "generation": 3,
        "creationTimestamp": "2026-11-21T13:59:02Z",
        "labels": {"app.kubernetes.io/name": "cstor", "tier": "storage"},
        "annotations": {"pv.kubernetes.io/provisioned-by": "cstor.csi.openebs.io"},
        "finalizers": ["kubernetes.io/pv-protection"],
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                             "uid": "0b7a1f3e-0f55-4a0e-9a8b-2b9c7f0d6a12", "controller": true,
                             "blockOwnerDeletion": false}],
        "managedFields": [{"manager": "csi-provisioner", "operation": "Update", "apiVersion": "v1",
                           "time": "2026-11-21T13:59:02Z", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:tier": {}}}}}]
    });
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m
}

#[test]
fn the_table_parses_and_names_every_kind_it_promises() {
    let s = Schema::get().unwrap();
    for (av, kind) in [
        ("v1", "Pod"),
        ("v1", "PodList"),
        ("v1", "Event"),
        ("v1", "Node"),
        ("v1", "PersistentVolume"),
        ("v1", "PersistentVolumeClaim"),
        ("coordination.k8s.io/v1", "Lease"),
        ("coordination.k8s.io/v1", "LeaseList"),
        ("events.k8s.io/v1", "Event"),
        ("storage.k8s.io/v1", "StorageClass"),
        ("storage.k8s.io/v1", "CSINode"),
        ("storage.k8s.io/v1", "CSIDriver"),
        ("storage.k8s.io/v1", "VolumeAttachment"),
        ("v1", "Status"),
    ] {
        assert!(s.kind(av, kind).is_some(), "{av} {kind}");
    }
    assert!(s.kind("cstor.openebs.io/v1", "CStorPoolCluster").is_none());
    assert!(s.kinds().count() > 40);
    // Spot checks of numbers against the Kubernetes protos.
    let lease_spec = &s.messages[s.message("api.coordination.v1.LeaseSpec").unwrap()];
    let renew = lease_spec.fields.iter().find(|f| f.num == 4).unwrap();
    assert_eq!(renew.json.as_deref(), Some("renewTime"));
    let status = &s.messages[s.message("api.core.v1.PodStatus").unwrap()];
    assert!(status
        .fields
        .iter()
        .any(|f| f.json.as_deref() == Some("podIPs")));
}

#[test]
fn lease_with_micro_times() {
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": meta("external-provisioner-leader-cstor", Some("kube-system")),
        "spec": {"holderIdentity": "node-1_3f2a", "leaseDurationSeconds": 15,
                 "acquireTime": "2026-11-21T13:59:02.123456Z", "renewTime": "2026-11-21T14:00:17.000001Z",
                 "leaseTransitions": 0}
    });
    assert_round_trips(lease.clone());
    let bytes = encode_object(&lease).unwrap();
    let raw = Unknown::decode(&bytes[4..])
        .unwrap()
        .raw
        .unwrap_or_default();
    let typed = k8s::coordination::v1::Lease::decode(&raw[..]).unwrap();
    let spec = typed.spec.unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some("node-1_3f2a"));
    let renew = spec.renew_time.unwrap_or_default();
    assert_eq!(
        (renew.seconds, renew.nanos),
        (Some(1_795_269_617), Some(1_000))
    );
    let meta = typed.metadata.unwrap_or_default();
    assert_eq!(
        meta.creation_timestamp.and_then(|t| t.seconds),
        Some(1_795_269_542)
    );
    // The Go zero time (empty Time message) and empty strings are absent in JSON.
    let mut v = lease;
    v["spec"]["holderIdentity"] = json!("");
    let back = round_trip(&v);
    assert!(back["spec"].get("holderIdentity").is_none());
}

#[test]
fn persistent_volume_with_csi_source_and_node_affinity() {
    assert_round_trips(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": meta("pvc-5a1f", None),
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "cstor-csi",
            "volumeMode": "Filesystem",
            "mountOptions": ["noatime"],
            "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "default", "name": "data-db-0",
                         "uid": "1f1c1f3e-0f55-4a0e-9a8b-2b9c7f0d6a13", "apiVersion": "v1", "resourceVersion": "4700"},
            "csi": {"driver": "cstor.csi.openebs.io", "volumeHandle": "pvc-5a1f", "fsType": "ext4",
                    "readOnly": false,
                    "volumeAttributes": {"openebs.io/cas-type": "cstor", "storage.kubernetes.io/csiProvisionerIdentity": "1700000000000-8081-cstor"},
                    "nodeStageSecretRef": {"name": "chap", "namespace": "openebs"}},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.cstor.openebs.io/nodeName", "operator": "In", "values": ["node-1", "node-2"]}]}]}}
        },
        "status": {"phase": "Bound", "lastPhaseTransitionTime": "2026-11-21T13:59:03Z"}
    }));
}

#[test]
fn persistent_volume_claim_with_resources_and_data_source() {
    assert_round_trips(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": meta("data-db-0", Some("default")),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "5Gi"}, "limits": {"storage": "10Gi"}},
            "storageClassName": "",
            "volumeMode": "Block",
            "volumeName": "pvc-5a1f",
            "selector": {"matchLabels": {"tier": "storage"}},
            "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap-1"},
            "dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap-1"}
        },
        "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "5Gi"},
                   "allocatedResources": {"storage": "5Gi"},
                   "conditions": [{"type": "Resizing", "status": "True", "lastProbeTime": "2026-11-21T13:59:02Z",
                                   "lastTransitionTime": "2026-11-21T13:59:02Z"}]}
    }));
}

#[test]
fn storage_class_csi_driver_csi_node_and_volume_attachment() {
    assert_round_trips(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": meta("cstor-csi", None),
        "provisioner": "cstor.csi.openebs.io",
        "parameters": {"cstorPoolCluster": "cspc-stripe", "replicaCount": "3"},
        "reclaimPolicy": "Delete", "allowVolumeExpansion": false,
        "volumeBindingMode": "WaitForFirstConsumer",
        "mountOptions": ["discard"],
        "allowedTopologies": [{"matchLabelExpressions": [{"key": "kubernetes.io/hostname", "values": ["node-1"]}]}]
    }));
    assert_round_trips(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": meta("cstor.csi.openebs.io", None),
        "spec": {"attachRequired": false, "podInfoOnMount": true, "volumeLifecycleModes": ["Persistent"],
                 "storageCapacity": false, "fsGroupPolicy": "File", "requiresRepublish": false,
                 "seLinuxMount": false,
                 "tokenRequests": [{"audience": "cstor", "expirationSeconds": 3600}]}
    }));
    assert_round_trips(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
        "metadata": meta("node-1", None),
        "spec": {"drivers": [{"name": "cstor.csi.openebs.io", "nodeID": "node-1",
                              "topologyKeys": ["topology.cstor.openebs.io/nodeName"],
                              "allocatable": {"count": 0}}]}
    }));
    assert_round_trips(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": meta("csi-3b7d", None),
        "spec": {"attacher": "cstor.csi.openebs.io", "nodeName": "node-1",
                 "source": {"persistentVolumeName": "pvc-5a1f"}},
        "status": {"attached": true, "attachmentMetadata": {"iqn": "iqn.2016-09.com.openebs.cstor:pvc-5a1f"},
                   "detachError": {"time": "2026-11-21T13:59:02Z", "message": "timeout", "errorCode": 4}}
    }));
}

#[test]
fn events_of_both_groups_with_series() {
    assert_round_trips(json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": meta("data-db-0.17f9", Some("default")),
        "involvedObject": {"kind": "PersistentVolumeClaim", "namespace": "default", "name": "data-db-0",
                           "uid": "1f1c1f3e-0f55-4a0e-9a8b-2b9c7f0d6a13", "apiVersion": "v1", "resourceVersion": "4700"},
        "reason": "ProvisioningSucceeded", "message": "Successfully provisioned volume pvc-5a1f",
        "source": {"component": "cstor.csi.openebs.io_csi-provisioner"},
        "firstTimestamp": "2026-11-21T13:59:02Z", "lastTimestamp": "2026-11-21T14:09:02Z",
        "count": 4, "type": "Normal",
        "eventTime": "2026-11-21T13:59:02.000123Z",
        "series": {"count": 3, "lastObservedTime": "2026-11-21T14:09:02.654321Z"},
        "action": "Provision", "reportingComponent": "csi-provisioner", "reportingInstance": "node-1"
    }));
    assert_round_trips(json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": meta("cspc-stripe.17f9", Some("openebs")),
        "eventTime": "2026-11-21T13:59:02.000001Z",
        "series": {"count": 2, "lastObservedTime": "2026-11-21T14:00:02.000002Z"},
        "reportingController": "cstor.openebs.io/cspc-operator", "reportingInstance": "cspc-operator-0",
        "action": "Reconcile", "reason": "PoolCreated", "note": "pool cspc-stripe-x7k2 created", "type": "Normal",
        "regarding": {"kind": "CStorPoolCluster", "namespace": "openebs", "name": "cspc-stripe", "apiVersion": "cstor.openebs.io/v1"}
    }));
}

#[test]
fn node_with_status() {
    assert_round_trips(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": meta("node-1", None),
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"], "providerID": "cstor://node-1",
                 "taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule", "timeAdded": "2026-11-21T13:59:02Z"}]},
        "status": {
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            "allocatable": {"cpu": "1900m", "memory": "3.5Gi"},
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-11-21T13:59:02Z",
                            "lastTransitionTime": "2026-11-21T13:00:00Z", "reason": "KubeletReady", "message": "ok"}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.2"}, {"type": "Hostname", "address": "node-1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": "m", "systemUUID": "u", "bootID": "b", "kernelVersion": "6.1",
                         "osImage": "Debian", "containerRuntimeVersion": "none", "kubeletVersion": "v1.32.0-cstor",
                         "operatingSystem": "linux", "architecture": "amd64"},
            "volumesAttached": [{"name": "kubernetes.io/csi/cstor.csi.openebs.io^pvc-5a1f", "devicePath": "/dev/sdb"}]
        }
    }));
}

#[test]
fn pod_with_containers_and_volumes() {
    assert_round_trips(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": meta("csi-node-x7k2", Some("openebs")),
        "spec": {
            "containers": [{
                "name": "cstor-csi-plugin", "image": "cstor:dev", "imagePullPolicy": "IfNotPresent",
                "args": ["--endpoint=$(CSI_ENDPOINT)", "--v=5"],
                "env": [{"name": "CSI_ENDPOINT", "value": "unix:///csi/csi.sock"},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}}],
                "ports": [{"name": "metrics", "containerPort": 9505, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
                "volumeMounts": [{"name": "socket-dir", "mountPath": "/csi"},
                                 {"name": "pods", "mountPath": "/var/lib/kubelet/pods", "mountPropagation": "Bidirectional"}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics", "scheme": "HTTP"},
                                  "initialDelaySeconds": 10, "periodSeconds": 5, "failureThreshold": 3},
                "readinessProbe": {"tcpSocket": {"port": 9505}},
                "securityContext": {"privileged": true, "runAsUser": 0, "allowPrivilegeEscalation": false,
                                    "capabilities": {"add": ["SYS_ADMIN"]}}
            }],
            "volumes": [
                {"name": "socket-dir", "hostPath": {"path": "/var/lib/kubelet/plugins/cstor", "type": "DirectoryOrCreate"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0", "readOnly": false}},
                {"name": "config", "configMap": {"name": "cstor-config", "defaultMode": 420,
                                                 "items": [{"key": "a", "path": "a.conf", "mode": 256}]}},
                {"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}},
                {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}
            ],
            "nodeName": "node-1", "serviceAccountName": "cstor-csi-node", "hostNetwork": true,
            "terminationGracePeriodSeconds": 0, "enableServiceLinks": false,
            "tolerations": [{"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [{"key": "role", "operator": "Exists"}]}}]}},
            "securityContext": {"fsGroup": 0, "supplementalGroups": [1000, 2000]},
            "priority": -10
        },
        "status": {
            "phase": "Running", "hostIP": "127.0.0.2", "podIP": "127.0.0.2",
            "podIPs": [{"ip": "127.0.0.2"}], "startTime": "2026-11-21T13:59:02Z", "qosClass": "Burstable",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-21T13:59:05Z"}],
            "containerStatuses": [{"name": "cstor-csi-plugin", "ready": true, "restartCount": 2, "image": "cstor:dev",
                                   "started": true,
                                   "state": {"running": {"startedAt": "2026-11-21T13:59:04Z"}},
                                   "lastState": {"terminated": {"exitCode": -1, "reason": "Error",
                                                                "startedAt": "2026-11-21T13:58:00Z",
                                                                "finishedAt": "2026-11-21T13:59:00Z"}}}]
        }
    }));
}

#[test]
fn lists_status_and_delete_options() {
    let lease = |n: &str| {
        json!({"metadata": {"name": n, "namespace": "kube-system", "resourceVersion": "9"},
                                 "spec": {"holderIdentity": n}})
    };
    assert_round_trips(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList",
        "metadata": {"resourceVersion": "12", "continue": "abc", "remainingItemCount": 3},
        "items": [lease("a"), lease("b")]
    }));
    assert_round_trips(json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": "leases.coordination.k8s.io \"a\" already exists", "reason": "AlreadyExists",
        "details": {"name": "a", "group": "coordination.k8s.io", "kind": "leases",
                    "causes": [{"reason": "FieldValueInvalid", "message": "bad", "field": "spec.x"}],
                    "retryAfterSeconds": 1},
        "code": 409
    }));
    let del = json!({"apiVersion": "storage.k8s.io/v1", "kind": "DeleteOptions",
                     "gracePeriodSeconds": 0, "propagationPolicy": "Foreground",
                     "preconditions": {"uid": "u-1", "resourceVersion": "7"}, "dryRun": ["All"]});
    let back = round_trip(&del);
    assert_eq!(back["propagationPolicy"], "Foreground");
    assert_eq!(back["preconditions"]["resourceVersion"], "7");
    assert_eq!(back["gracePeriodSeconds"], 0);
}

#[test]
fn watch_frames_carry_an_enveloped_object() {
    let obj = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": "c", "namespace": "default", "resourceVersion": "5"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    let frame = watch_frame("MODIFIED", &obj).unwrap();
    #[allow(
        clippy::big_endian_bytes,
        reason = "watch frame lengths are big-endian"
    )]
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(len, frame.len() - 4);
    let (kind, back) = decode_watch_event(&frame[4..]).unwrap();
    assert_eq!(kind, "MODIFIED");
    assert_eq!(back, obj);
}

#[test]
fn special_json_forms() {
    // A number where a Quantity belongs is written as its string, as Go's Quantity
    // accepts it; IntOrString keeps its JSON type.
    let v = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "c"},
                   "spec": {"resources": {"requests": {"storage": 1024}}}});
    assert_eq!(
        round_trip(&v)["spec"]["resources"]["requests"]["storage"],
        "1024"
    );
    // Wrong JSON types are an error naming the field, not a guess.
    let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                     "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "80"}]}]}});
    let e = encode_object(&bad).unwrap_err().to_string();
    assert!(
        e.contains("spec.containers[0].ports[0].containerPort"),
        "{e}"
    );
    let bad_time = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                          "metadata": {"name": "l"}, "spec": {"renewTime": "soon"}});
    assert!(encode_object(&bad_time).is_err());
    // A custom resource has no protobuf form.
    let cr = json!({"apiVersion": "cstor.openebs.io/v1", "kind": "CStorPoolCluster", "metadata": {"name": "x"}});
    assert!(matches!(encode_object(&cr), Err(PbError::NotServed { .. })));
}

#[test]
fn hostile_bodies_are_bad_requests() {
    let good = encode_object(&json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s", "namespace": "d"}, "type": "Opaque",
        "data": {"password": crate::tls::base64_encode(b"supersecret")}}))
    .unwrap();
    let back = decode_body(&good).unwrap();
    assert_eq!(
        back["data"]["password"],
        crate::tls::base64_encode(b"supersecret")
    );
    for cut in 0..good.len() {
        let _ = decode_body(&good[..cut]);
    }
    for bad in [
        &b"nope"[..],
        b"k8s\0\x0a\xff",
        b"k8s\0\x0a\x05ab",
        b"k8s\0\x12\x02\x0a\x00",
    ] {
        let e = decode_body(bad).unwrap_err();
        assert_eq!(e.code(), 400, "{bad:?}: {e}");
    }
    // A kind the table does not have is 415, not 400.
    let mut cr = Vec::new();
    let mut tm = Vec::new();
    wire::put_bytes_field(&mut tm, 1, b"cstor.openebs.io/v1");
    wire::put_bytes_field(&mut tm, 2, b"CStorPoolCluster");
    cr.extend_from_slice(MAGIC);
    wire::put_bytes_field(&mut cr, 1, &tm);
    assert_eq!(decode_body(&cr).unwrap_err().code(), 415);
    // Nesting past the depth bound is refused, not a stack overflow.
    let mut deep = Vec::new();
    for _ in 0..200 {
        let mut outer = Vec::new();
        wire::put_bytes_field(&mut outer, 1, &deep);
        deep = outer;
    }
    let mut body = MAGIC.to_vec();
    let mut tm = Vec::new();
    wire::put_bytes_field(&mut tm, 1, b"v1");
    wire::put_bytes_field(&mut tm, 2, b"Pod");
    wire::put_bytes_field(&mut body, 1, &tm);
    wire::put_bytes_field(&mut body, 2, &deep);
    assert!(decode_body(&body).is_err());
}

#[test]
fn negotiation_follows_q_values_and_order() {
    let pb_json = "application/vnd.kubernetes.protobuf, application/json";
    assert_eq!(negotiate(pb_json, true).unwrap(), Media::Protobuf);
    assert_eq!(negotiate(pb_json, false).unwrap(), Media::Json);
    assert_eq!(negotiate("", true).unwrap(), Media::Json);
    assert_eq!(negotiate("*/*", true).unwrap(), Media::Json);
    assert_eq!(
        negotiate(
            "application/vnd.kubernetes.protobuf;q=0.5, application/json",
            true
        )
        .unwrap(),
        Media::Json
    );
    assert_eq!(
        negotiate(
            "application/json;q=0.9, application/vnd.kubernetes.protobuf",
            true
        )
        .unwrap(),
        Media::Protobuf
    );
    assert_eq!(
        negotiate("application/vnd.kubernetes.protobuf;stream=watch", true).unwrap(),
        Media::Protobuf
    );
    let e = negotiate("application/vnd.kubernetes.protobuf", false).unwrap_err();
    assert_eq!(e.code(), 406);
    assert!(e.to_string().contains("application/json, application/yaml"));
    assert_eq!(negotiate("text/html", true).unwrap_err().code(), 406);
}
