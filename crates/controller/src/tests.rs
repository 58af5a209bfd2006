//! Unit tests of the pure reconcile functions on hand-built worlds: the seeds' objects in,
//! the actions out.

use serde_json::{json, Value};

use crate::action::{Action, Kind};
use crate::world::World;
use crate::Ids;

#[derive(Default)]
struct Counter(u32);

impl Ids for Counter {
    fn suffix(&mut self) -> String {
        self.0 += 1;
        format!("s{:03}", self.0)
    }
    fn replica_id(&mut self) -> String {
        self.0 += 1;
        format!("{:032X}", self.0)
    }
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn node(name: &str, ip: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

fn bd(name: &str, node: &str) -> Value {
    json!({"apiVersion": "openebs.io/v1alpha1", "kind": "BlockDevice",
           "metadata": {"name": name, "namespace": "openebs", "uid": format!("uid-{name}"), "labels": {"kubernetes.io/hostname": node}},
           "spec": {"nodeAttributes": {"nodeName": node}, "path": format!("/dev/{name}"), "capacity": {"storage": 1073741824u64}},
           "status": {"claimState": "Unclaimed", "state": "Active"}})
}

fn pool(node: &str, devices: &[&str], kind: &str) -> Value {
    let bds: Vec<Value> = devices
        .iter()
        .map(|d| json!({"blockDeviceName": d}))
        .collect();
    json!({"nodeSelector": {"kubernetes.io/hostname": node},
           "dataRaidGroups": [{"blockDevices": bds}],
           "poolConfig": {"dataRaidGroupType": kind}})
}

fn cspc(name: &str, pools: Vec<Value>) -> Value {
    json!({"apiVersion": "cstor.openebs.io/v1", "kind": "CStorPoolCluster",
           "metadata": {"name": name, "namespace": "openebs", "uid": "cspc-uid", "finalizers": ["cstorpoolcluster.openebs.io/finalizer"]},
           "spec": {"pools": pools}})
}

fn cspi(name: &str, cspc: &str, node: &str, devices: &[&str], phase: &str, free: &str) -> Value {
    let p = pool(node, devices, "stripe");
    json!({"apiVersion": "cstor.openebs.io/v1", "kind": "CStorPoolInstance",
           "metadata": {"name": name, "namespace": "openebs", "uid": format!("uid-{name}"),
                        "labels": {"openebs.io/cstor-pool-cluster": cspc, "kubernetes.io/hostname": node}},
           "spec": {"hostName": node, "nodeSelector": p["nodeSelector"], "poolConfig": p["poolConfig"], "dataRaidGroups": p["dataRaidGroups"]},
           "status": {"phase": phase, "readOnly": false, "capacity": {"free": free, "total": "10Gi", "used": "0"}}})
}

fn three_nodes() -> World {
    World {
        namespace: "openebs".into(),
        nodes: vec![
            from(node("worker-01", "127.0.0.2")),
            from(node("worker-02", "127.0.0.3")),
            from(node("worker-03", "127.0.0.4")),
        ],
        bds: ["a1", "a2", "b1", "b2", "c1", "c2"]
            .iter()
            .map(|d| {
                from(bd(
                    &format!("blockdevice-{d}"),
                    match &d[..1] {
                        "a" => "worker-01",
                        "b" => "worker-02",
                        _ => "worker-03",
                    },
                ))
            })
            .collect(),
        ..World::default()
    }
}

fn creates(actions: &[Action], kind: Kind) -> Vec<&Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Create {
                kind: k, object, ..
            } if *k == kind => Some(object),
            _ => None,
        })
        .collect()
}

fn events<'a>(actions: &'a [Action], reason: &str) -> Vec<&'a str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event {
                reason: r, message, ..
            } if r == reason => Some(message.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn stripe_cspc_makes_one_instance_per_pool_and_claims_devices() {
    let mut w = three_nodes();
    w.cspcs = vec![from(cspc(
        "cstor-pool-stripe",
        vec![
            pool("worker-01", &["blockdevice-a1"], "stripe"),
            pool("worker-02", &["blockdevice-b1"], "stripe"),
            pool("worker-03", &["blockdevice-c1"], "stripe"),
        ],
    ))];
    let a = crate::cspc::reconcile(&w, &mut Counter::default());
    let cspis = creates(&a, Kind::Cspi);
    assert_eq!(cspis.len(), 3);
    assert_eq!(cspis[0]["metadata"]["name"], "cstor-pool-stripe-s001");
    assert_eq!(
        cspis[0]["metadata"]["labels"]["openebs.io/cstor-pool-cluster"],
        "cstor-pool-stripe"
    );
    assert_eq!(cspis[1]["spec"]["hostName"], "worker-02");
    assert_eq!(cspis[2]["spec"]["poolConfig"]["roThresholdLimit"], 85);
    let bdcs = creates(&a, Kind::Bdc);
    assert_eq!(bdcs.len(), 3);
    assert_eq!(bdcs[0]["metadata"]["name"], "bdc-cstor-uid-blockdevice-a1");
    assert!(a.iter().any(|x| matches!(x, Action::Patch { kind: Kind::Bd, status: true, patch, .. } if patch["status"]["claimState"] == "Claimed")));
    assert!(a.iter().any(|x| matches!(x, Action::Patch { kind: Kind::Cspc, status: true, patch, .. } if patch["status"]["desiredInstances"] == 3 && patch["status"]["provisionedInstances"] == 0)));
}

#[test]
fn bad_devices_refuse_the_whole_cspc_with_a_reason() {
    let mut w = three_nodes();
    // b1 is on worker-02, named for worker-01; zz does not exist; raidz needs 3 devices.
    w.cspcs = vec![from(cspc(
        "bad",
        vec![
            pool("worker-01", &["blockdevice-b1"], "stripe"),
            pool("worker-03", &["blockdevice-zz"], "stripe"),
        ],
    ))];
    let a = crate::cspc::reconcile(&w, &mut Counter::default());
    assert!(creates(&a, Kind::Cspi).is_empty() && creates(&a, Kind::Bdc).is_empty());
    let msg = events(&a, "FailedValidation").join("\n");
    assert!(
        msg.contains("on node worker-02, the pool on node worker-01"),
        "{msg}"
    );
    assert!(msg.contains("blockdevice-zz"), "{msg}");

    let mut w = three_nodes();
    w.cspcs = vec![from(cspc(
        "raidz",
        vec![pool(
            "worker-01",
            &["blockdevice-a1", "blockdevice-a2"],
            "raidz",
        )],
    ))];
    let a = crate::cspc::reconcile(&w, &mut Counter::default());
    assert!(creates(&a, Kind::Cspi).is_empty());
    assert!(!events(&a, "FailedValidation").is_empty());

    // A device claimed for another CSPC.
    let mut w = three_nodes();
    w.bdcs = vec![from(
        json!({"metadata": {"name": "bdc-cstor-uid-blockdevice-a1", "namespace": "openebs", "labels": {"openebs.io/cstor-pool-cluster": "other"}}, "spec": {"blockDeviceName": "blockdevice-a1"}}),
    )];
    w.bds[0] = from(
        json!({"metadata": {"name": "blockdevice-a1", "namespace": "openebs", "uid": "uid-blockdevice-a1"},
        "spec": {"nodeAttributes": {"nodeName": "worker-01"}, "claimRef": {"name": "bdc-cstor-uid-blockdevice-a1"}},
        "status": {"claimState": "Claimed", "state": "Active"}}),
    );
    w.cspcs = vec![from(cspc(
        "mine",
        vec![pool("worker-01", &["blockdevice-a1"], "stripe")],
    ))];
    let a = crate::cspc::reconcile(&w, &mut Counter::default());
    assert!(creates(&a, Kind::Cspi).is_empty());
    assert!(events(&a, "FailedValidation")[0].contains("other"), "{a:?}");
}

#[test]
fn editing_the_cspc_adds_devices_and_replaces_a_disk() {
    let mut w = three_nodes();
    w.cspcs = vec![from(cspc(
        "c",
        vec![pool(
            "worker-01",
            &["blockdevice-a1", "blockdevice-a2"],
            "stripe",
        )],
    ))];
    w.cspis = vec![from(cspi(
        "c-aaaa",
        "c",
        "worker-01",
        &["blockdevice-a1"],
        "ONLINE",
        "1Gi",
    ))];
    w.bdcs = vec![from(
        json!({"metadata": {"name": "bdc-cstor-uid-blockdevice-a1", "namespace": "openebs", "labels": {"openebs.io/cstor-pool-cluster": "c"}}, "spec": {"blockDeviceName": "blockdevice-a1"}}),
    )];
    let a = crate::cspc::reconcile(&w, &mut Counter::default());
    let patch = a
        .iter()
        .find_map(|x| match x {
            Action::Patch {
                kind: Kind::Cspi,
                patch,
                ..
            } => Some(patch),
            _ => None,
        })
        .expect("the CSPI spec follows the CSPC");
    assert_eq!(
        patch["spec"]["dataRaidGroups"][0]["blockDevices"][1]["blockDeviceName"],
        "blockdevice-a2"
    );
    assert_eq!(creates(&a, Kind::Bdc).len(), 1);
    assert!(creates(&a, Kind::Cspi).is_empty());

    // Mirror a1+a2, a2 replaced by a3 (a new device on the same node).
    let mut w = three_nodes();
    w.bds.push(from(bd("blockdevice-a3", "worker-01")));
    let mut mirror = cspi(
        "c-aaaa",
        "c",
        "worker-01",
        &["blockdevice-a1", "blockdevice-a2"],
        "DEGRADED",
        "1Gi",
    );
    mirror["spec"]["poolConfig"]["dataRaidGroupType"] = json!("mirror");
    w.cspis = vec![from(mirror)];
    w.cspcs = vec![from(cspc(
        "c",
        vec![pool(
            "worker-01",
            &["blockdevice-a1", "blockdevice-a3"],
            "mirror",
        )],
    ))];
    let a = crate::cspc::reconcile(&w, &mut Counter::default());
    let bdc = creates(&a, Kind::Bdc);
    let new = bdc
        .iter()
        .find(|b| b["spec"]["blockDeviceName"] == "blockdevice-a3")
        .expect("claim of the replacement");
    assert_eq!(
        new["metadata"]["annotations"]["openebs.io/bd-predecessor"],
        "blockdevice-a2"
    );
    assert!(events(&a, "Updated")[0].contains("blockdevice-a2 -> blockdevice-a3"));
}

#[test]
fn a_replaced_device_stays_claimed_until_its_successor_claim_drops_the_predecessor() {
    let mut w = three_nodes();
    w.bds.push(from(bd("blockdevice-a3", "worker-01")));
    // The CSPI already follows the edit; the agent has not reported DiskReplacement yet.
    let mut mirror = cspi(
        "c-aaaa",
        "c",
        "worker-01",
        &["blockdevice-a1", "blockdevice-a3"],
        "ONLINE",
        "1Gi",
    );
    mirror["spec"]["poolConfig"]["dataRaidGroupType"] = json!("mirror");
    w.cspis = vec![from(mirror)];
    w.cspcs = vec![from(cspc(
        "c",
        vec![pool(
            "worker-01",
            &["blockdevice-a1", "blockdevice-a3"],
            "mirror",
        )],
    ))];
    let claim = |d: &str, predecessor: Option<&str>| -> cstor_api::v1alpha1::BlockDeviceClaim {
        let mut c = json!({"metadata": {"name": format!("bdc-cstor-uid-{d}"), "namespace": "openebs", "labels": {"openebs.io/cstor-pool-cluster": "c"}}, "spec": {"blockDeviceName": d}});
        if let Some(p) = predecessor {
            c["metadata"]["annotations"] = json!({"openebs.io/bd-predecessor": p});
        }
        from(c)
    };
    w.bdcs = vec![
        claim("blockdevice-a1", None),
        claim("blockdevice-a2", None),
        claim("blockdevice-a3", Some("blockdevice-a2")),
    ];
    let a = crate::cspc::reconcile(&w, &mut Counter::default());
    assert!(deletes(&a, Kind::Bdc).is_empty(), "{a:?}");
    // The resilver finished: the agent cleared the annotation, the old claim goes.
    w.bdcs[2] = claim("blockdevice-a3", None);
    let a = crate::cspc::reconcile(&w, &mut Counter::default());
    assert_eq!(deletes(&a, Kind::Bdc), ["bdc-cstor-uid-blockdevice-a2"]);
}

#[test]
fn an_edit_the_pool_cannot_apply_is_refused_against_the_running_instance() {
    let mut w = three_nodes();
    w.cspis = vec![from(cspi(
        "c-aaaa",
        "c",
        "worker-01",
        &["blockdevice-a1"],
        "ONLINE",
        "1Gi",
    ))];
    // The stripe device swapped for another: nothing could rebuild it.
    w.cspcs = vec![from(cspc(
        "c",
        vec![pool("worker-01", &["blockdevice-a2"], "stripe")],
    ))];
    w.bdcs = vec![from(
        json!({"metadata": {"name": "bdc-cstor-uid-blockdevice-a1", "namespace": "openebs", "labels": {"openebs.io/cstor-pool-cluster": "c"}}, "spec": {"blockDeviceName": "blockdevice-a1"}}),
    )];
    let a = crate::cspc::reconcile(&w, &mut Counter::default());
    let refused = events(&a, "FailedValidation");
    assert!(
        refused[0].contains("cannot be removed or replaced"),
        "{refused:?}"
    );
    assert!(patches_of(&a, Kind::Cspi).is_empty() && creates(&a, Kind::Bdc).is_empty());
    assert!(deletes(&a, Kind::Bdc).is_empty());
}

#[test]
fn deleting_a_cspc_with_volumes_is_refused() {
    let mut w = three_nodes();
    let mut c = cspc("c", vec![pool("worker-01", &["blockdevice-a1"], "stripe")]);
    c["metadata"]["deletionTimestamp"] = json!("2026-12-02T06:00:00Z");
    w.cspcs = vec![from(c)];
    w.cspis = vec![from(cspi(
        "c-aaaa",
        "c",
        "worker-01",
        &["blockdevice-a1"],
        "ONLINE",
        "1Gi",
    ))];
    w.cvrs = vec![from(
        json!({"metadata": {"name": "pvc-1-c-aaaa", "namespace": "openebs", "labels": {"openebs.io/persistent-volume": "pvc-1", "openebs.io/cstor-pool-instance": "c-aaaa"}}, "spec": {}}),
    )];
    let a = crate::cspc::reconcile(&w, &mut Counter::default());
    assert!(events(&a, "DeletionRefused")[0].contains("pvc-1"));
    assert!(!a.iter().any(|x| matches!(
        x,
        Action::Patch {
            kind: Kind::Cspc,
            ..
        }
    )));
    w.cvrs.clear();
    let a = crate::cspc::reconcile(&w, &mut Counter::default());
    assert!(a.iter().any(|x| matches!(x, Action::Patch { kind: Kind::Cspc, patch, .. } if patch["metadata"]["finalizers"] == json!([]))));
}

fn pools_world() -> World {
    let mut w = three_nodes();
    w.cspcs = vec![from(cspc("c", vec![]))];
    w.cspis = vec![
        from(cspi("c-aaaa", "c", "worker-01", &[], "ONLINE", "3Gi")),
        from(cspi("c-bbbb", "c", "worker-02", &[], "ONLINE", "9Gi")),
        from(cspi("c-cccc", "c", "worker-03", &[], "ONLINE", "5Gi")),
    ];
    w
}

#[test]
fn replicas_go_to_healthy_writable_pools_by_free_space() {
    let mut w = pools_world();
    let all: Vec<_> = w.cspis.iter().collect();
    assert_eq!(
        crate::placement::choose_pools(&w, &all, 2, 1 << 30, &[]).unwrap(),
        ["c-bbbb", "c-cccc"]
    );
    let mut ro = cspi("c-bbbb", "c", "worker-02", &[], "ONLINE", "9Gi");
    ro["status"]["readOnly"] = json!(true);
    w.cspis[1] = from(ro);
    w.cspis[2] = from(cspi("c-cccc", "c", "worker-03", &[], "OFFLINE", "5Gi"));
    let all: Vec<_> = w.cspis.iter().collect();
    let err = crate::placement::choose_pools(&w, &all, 3, 1 << 30, &[])
        .unwrap_err()
        .0;
    assert!(err.contains("3 replica(s) asked for but only 1"), "{err}");
    assert!(
        err.contains("c-bbbb (read-only)") && err.contains("c-cccc (OFFLINE)"),
        "{err}"
    );
}

#[test]
fn without_over_provisioning_volumes_count_at_full_size() {
    let mut w = pools_world();
    let mut c = cspc("c", vec![pool("worker-01", &[], "stripe")]);
    c["metadata"]["annotations"] =
        json!({"cstor.openebs.io/v1alpha1-pool-config": "[{\"overProvisioning\":false}]"});
    w.cspcs = vec![from(c)];
    w.cvrs = vec![from(
        json!({"metadata": {"name": "pvc-0-c-aaaa", "namespace": "openebs", "labels": {"openebs.io/persistent-volume": "pvc-0", "openebs.io/cstor-pool-instance": "c-aaaa"}}, "spec": {"capacity": "8Gi"}}),
    )];
    let p = w.cspi("c-aaaa").unwrap();
    assert!(!crate::placement::over_provisioning(&w, p));
    assert_eq!(
        crate::placement::available(&w, p, 3 << 30),
        None,
        "10Gi total - 8Gi promised < 3Gi"
    );
    assert_eq!(crate::placement::available(&w, p, 1 << 30), Some(2 << 30));
    let thin = w.cspi("c-bbbb").unwrap();
    assert_eq!(
        crate::placement::available(&w, thin, 100 << 30),
        Some(9 << 30)
    );
}

fn sc() -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "cstor-csi-3-replicas"},
           "provisioner": "cstor.csi.openebs.io", "allowVolumeExpansion": true, "reclaimPolicy": "Delete",
           "parameters": {"cas-type": "cstor", "cstorPoolCluster": "c", "replicaCount": "3"}})
}

fn pvc() -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": "postgres-data", "namespace": "database", "uid": "1234"},
           "spec": {"storageClassName": "cstor-csi-3-replicas", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
           "status": {"phase": "Pending"}})
}

/// A whole pass of a controller running without the CSI driver (it provisions itself).
fn reconcile_provisioning(w: &World) -> Vec<Action> {
    crate::reconcile_with(
        w,
        &mut Counter::default(),
        &crate::Settings {
            provision_without_csi: true,
            ..crate::Settings::default()
        },
    )
}

#[test]
fn a_claim_becomes_a_cvc_then_a_volume_then_a_pv() {
    let mut w = pools_world();
    w.scs = vec![from(sc())];
    w.pvcs = vec![from(pvc())];
    // By default the CSI driver's CreateVolume makes the CVC, not the controller.
    assert!(creates(&crate::reconcile(&w, &mut Counter::default()), Kind::Cvc).is_empty());
    let a = reconcile_provisioning(&w);
    let cvc = creates(&a, Kind::Cvc);
    assert_eq!(cvc.len(), 1);
    assert_eq!(cvc[0]["metadata"]["name"], "pvc-1234");
    assert_eq!(cvc[0]["spec"]["provision"]["replicaCount"], 3);
    assert_eq!(
        cvc[0]["metadata"]["labels"]["openebs.io/cstor-pool-cluster"],
        "c"
    );

    let mut obj = cvc[0].clone();
    obj["status"] = json!({"phase": "Pending"});
    w.cvcs = vec![from(obj)];
    let a = reconcile_provisioning(&w);
    assert_eq!(events(&a, "Provisioning"), ["Waiting for CVC to be bound"]);
    let cvrs = creates(&a, Kind::Cvr);
    assert_eq!(cvrs.len(), 3);
    let names: Vec<&str> = cvrs
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["pvc-1234-c-bbbb", "pvc-1234-c-cccc", "pvc-1234-c-aaaa"]
    );
    assert_eq!(
        cvrs[0]["metadata"]["labels"]["openebs.io/cstor-pool-instance"],
        "c-bbbb"
    );
    let cv = creates(&a, Kind::Cv);
    assert_eq!(cv.len(), 1);
    assert_eq!(
        cv[0]["spec"]["iqn"],
        "iqn.2016-09.com.openebs.cstor:pvc-1234"
    );
    assert_eq!(cv[0]["spec"]["replicationFactor"], 3);
    assert_eq!(cv[0]["spec"]["consistencyFactor"], 2);
    assert_eq!(
        cv[0]["spec"]["replicaDetails"]["knownReplicas"]
            .as_object()
            .unwrap()
            .len(),
        3
    );
    let node = cv[0]["metadata"]["labels"]["cstor.openebs.io/target-node"]
        .as_str()
        .unwrap();
    let ip = cv[0]["spec"]["targetIP"].as_str().unwrap();
    assert_eq!(w.node_ip(node).as_deref(), Some(ip));
    assert_eq!(cv[0]["spec"]["targetPortal"], format!("{ip}:3260"));
    assert_eq!(cvrs[0]["spec"]["targetIP"], ip);

    // Bound: the PV, pre-bound to the claim.
    w.cvcs[0].status = Some(from(
        json!({"phase": "Bound", "capacity": {"storage": "1Gi"}}),
    ));
    let a = crate::provision::reconcile(&w);
    let pv = creates(&a, Kind::Pv);
    assert_eq!(pv[0]["spec"]["claimRef"]["uid"], "1234");
    assert_eq!(pv[0]["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(pv[0]["spec"]["csi"]["driver"], "cstor.csi.openebs.io");

    // More replicas than healthy pools: Pending with the reason on the claim.
    let mut w2 = pools_world();
    w2.cspis[0] = from(cspi("c-aaaa", "c", "worker-01", &[], "OFFLINE", "3Gi"));
    w2.scs = vec![from(sc())];
    w2.pvcs = vec![from(pvc())];
    w2.cvcs = w.cvcs.clone();
    w2.cvcs[0].status = Some(from(json!({"phase": "Pending"})));
    let a = reconcile_provisioning(&w2);
    assert!(creates(&a, Kind::Cv).is_empty());
    let failed = events(&a, "ProvisioningFailed");
    assert_eq!(failed.len(), 2, "on the claim and on the CVC");
    assert!(
        failed[0].contains("3 replica(s) asked for but only 2"),
        "{failed:?}"
    );
}

fn bound_volume(known_spec: Value, known_status: Value, rf: i32, drf: i32) -> World {
    let mut w = pools_world();
    w.cvcs = vec![from(
        json!({"metadata": {"name": "pvc-1", "namespace": "openebs", "labels": {"openebs.io/cstor-pool-cluster": "c"}},
        "spec": {"capacity": {"storage": "1Gi"}, "provision": {"replicaCount": 3}},
        "status": {"phase": "Bound", "poolInfo": ["c-aaaa", "c-bbbb", "c-cccc"], "capacity": {"storage": "1Gi"}}}),
    )];
    w.cvs = vec![from(
        json!({"metadata": {"name": "pvc-1", "namespace": "openebs", "uid": "cv-uid"},
        "spec": {"capacity": "1Gi", "replicationFactor": rf, "consistencyFactor": 2, "desiredReplicationFactor": drf,
                 "replicaDetails": {"knownReplicas": known_spec}, "targetIP": "127.0.0.2"},
        "status": {"phase": "Healthy", "capacity": "1Gi", "replicaDetails": {"knownReplicas": known_status}}}),
    )];
    for (id, p) in [("A", "c-aaaa"), ("B", "c-bbbb"), ("C", "c-cccc")] {
        w.cvrs.push(from(json!({"metadata": {"name": format!("pvc-1-{p}"), "namespace": "openebs", "ownerReferences": [{"apiVersion": "cstor.openebs.io/v1", "kind": "CStorVolume", "name": "pvc-1", "uid": "cv-uid"}],
            "labels": {"openebs.io/persistent-volume": "pvc-1", "openebs.io/cstor-pool-instance": p}},
            "spec": {"replicaid": id, "capacity": "1Gi"}, "status": {"phase": "Healthy"}})));
    }
    w
}

#[test]
fn scale_down_by_editing_the_cv_updates_the_replication_factor_once_applied() {
    // The user removed C and lowered drf; the target has not applied it yet.
    let w = bound_volume(
        json!({"A": "1", "B": "2"}),
        json!({"A": "1", "B": "2", "C": "3"}),
        3,
        2,
    );
    let a = crate::volume::reconcile(&w, &mut Counter::default());
    assert!(events(&a, "Updated").is_empty(), "{a:?}");
    // Applied: RF follows, with the seed's event; the CVR stays for the user to delete.
    let w = bound_volume(
        json!({"A": "1", "B": "2"}),
        json!({"A": "1", "B": "2"}),
        3,
        2,
    );
    let a = crate::volume::reconcile(&w, &mut Counter::default());
    assert_eq!(
        events(&a, "Updated"),
        ["Successfully updated the desiredReplicationFactor to 2"]
    );
    assert!(a.iter().any(|x| matches!(x, Action::Patch { kind: Kind::Cv, patch, .. } if patch["spec"]["replicationFactor"] == 2 && patch["spec"]["consistencyFactor"] == 2)));
    assert!(!a.iter().any(|x| matches!(
        x,
        Action::Delete {
            kind: Kind::Cvr,
            ..
        }
    )));
}

#[test]
fn scale_through_replica_pool_info() {
    // Remove c-cccc: drf 2 and C leaves the desired set.
    let mut w = bound_volume(
        json!({"A": "1", "B": "2", "C": "3"}),
        json!({"A": "1", "B": "2", "C": "3"}),
        3,
        3,
    );
    w.cvcs[0].spec.policy = Some(from(
        json!({"replicaPoolInfo": [{"poolName": "c-aaaa"}, {"poolName": "c-bbbb"}]}),
    ));
    let a = crate::volume::reconcile(&w, &mut Counter::default());
    let p = a
        .iter()
        .find_map(|x| match x {
            Action::Patch {
                kind: Kind::Cv,
                patch,
                ..
            } => Some(patch),
            _ => None,
        })
        .unwrap();
    assert_eq!(p["spec"]["desiredReplicationFactor"], 2);
    assert_eq!(
        p["spec"]["replicaDetails"]["knownReplicas"]["C"],
        Value::Null
    );
    // Applied by the target: the CVR is deleted.
    let mut w = bound_volume(
        json!({"A": "1", "B": "2"}),
        json!({"A": "1", "B": "2"}),
        2,
        2,
    );
    w.cvcs[0].spec.policy = Some(from(
        json!({"replicaPoolInfo": [{"poolName": "c-aaaa"}, {"poolName": "c-bbbb"}]}),
    ));
    let a = crate::volume::reconcile(&w, &mut Counter::default());
    assert!(
        a.iter().any(
            |x| matches!(x, Action::Delete { kind: Kind::Cvr, name, .. } if name == "pvc-1-c-cccc")
        ),
        "{a:?}"
    );

    // Add a fourth pool.
    let mut w = bound_volume(
        json!({"A": "1", "B": "2", "C": "3"}),
        json!({"A": "1", "B": "2", "C": "3"}),
        3,
        3,
    );
    w.nodes.push(from(node("worker-04", "127.0.0.5")));
    w.cspis
        .push(from(cspi("c-dddd", "c", "worker-04", &[], "ONLINE", "5Gi")));
    w.cvcs[0].spec.policy = Some(from(
        json!({"replicaPoolInfo": [{"poolName": "c-aaaa"}, {"poolName": "c-bbbb"}, {"poolName": "c-cccc"}, {"poolName": "c-dddd"}]}),
    ));
    let a = crate::volume::reconcile(&w, &mut Counter::default());
    let cvr = creates(&a, Kind::Cvr);
    assert_eq!(cvr.len(), 1);
    assert_eq!(cvr[0]["metadata"]["name"], "pvc-1-c-dddd");
    assert!(a.iter().any(|x| matches!(x, Action::Patch { kind: Kind::Cv, patch, .. } if patch["spec"]["desiredReplicationFactor"] == 4)));
}

#[test]
fn expansion_flows_from_the_cvc_to_the_cv_and_back() {
    let mut w = bound_volume(
        json!({"A": "1", "B": "2", "C": "3"}),
        json!({"A": "1", "B": "2", "C": "3"}),
        3,
        3,
    );
    w.cvcs[0].spec.capacity = Some(from(json!({"storage": "2Gi"})));
    let a = crate::volume::reconcile(&w, &mut Counter::default());
    assert!(a.iter().any(|x| matches!(x, Action::Patch { kind: Kind::Cv, patch, .. } if patch["spec"]["capacity"] == "2Gi")));
    assert_eq!(a.iter().filter(|x| matches!(x, Action::Patch { kind: Kind::Cvr, patch, .. } if patch["spec"]["capacity"] == "2Gi")).count(), 3);
    // The agent resized: the CVC status follows.
    let mut cv = serde_json::to_value(&w.cvs[0]).unwrap();
    cv["spec"]["capacity"] = json!("2Gi");
    cv["status"]["capacity"] = json!("2Gi");
    w.cvs = vec![from(cv)];
    let a = crate::volume::reconcile(&w, &mut Counter::default());
    assert!(a.iter().any(|x| matches!(x, Action::Patch { kind: Kind::Cvc, status: true, patch, .. } if patch["status"]["capacity"]["storage"] == "2Gi")));
}

#[test]
fn a_volume_snapshot_becomes_a_cstor_snapshot_and_reports_ready() {
    let mut w = bound_volume(json!({"A": "1"}), json!({"A": "1"}), 1, 1);
    let mut claim = pvc();
    claim["spec"]["volumeName"] = json!("pvc-1");
    w.pvcs = vec![from(claim)];
    w.vsclasses = vec![
        json!({"metadata": {"name": "cstor-snapshot-class"}, "driver": "cstor.csi.openebs.io", "deletionPolicy": "Delete"}),
    ];
    w.vss = vec![
        json!({"metadata": {"name": "postgres-snapshot-daily", "namespace": "database", "uid": "vs1"},
        "spec": {"volumeSnapshotClassName": "cstor-snapshot-class", "source": {"persistentVolumeClaimName": "postgres-data"}}}),
    ];
    // By default the snapshot controller and the CSI driver take it, not the controller.
    let all = crate::reconcile(&w, &mut Counter::default());
    assert!(creates(&all, Kind::Csnap).is_empty() && creates(&all, Kind::Vsc).is_empty());
    assert!(!all
        .iter()
        .any(|x| matches!(x, Action::Patch { kind: Kind::Vs, .. })));
    assert_eq!(creates(&reconcile_provisioning(&w), Kind::Csnap).len(), 1);
    let a = crate::snapshot::reconcile(&w);
    let cs = creates(&a, Kind::Csnap);
    assert_eq!(cs[0]["metadata"]["name"], "snapshot-vs1");
    assert_eq!(cs[0]["spec"]["volumeName"], "pvc-1");
    assert_eq!(
        creates(&a, Kind::Vsc)[0]["metadata"]["name"],
        "snapcontent-vs1"
    );
    w.csnaps = vec![from(
        json!({"metadata": {"name": "snapshot-vs1", "namespace": "openebs"}, "spec": {"volumeName": "pvc-1", "snapshotName": "snapshot-vs1"},
        "status": {"phase": "Ready", "readyToUse": true, "restoreSize": "1Gi", "creationTime": "2026-12-02T06:00:00Z"}}),
    )];
    let a = crate::snapshot::reconcile(&w);
    let st = a
        .iter()
        .find_map(|x| match x {
            Action::Patch {
                kind: Kind::Vs,
                patch,
                ..
            } => Some(patch),
            _ => None,
        })
        .unwrap();
    assert_eq!(st["status"]["readyToUse"], true);
    assert_eq!(st["status"]["restoreSize"], "1Gi");
    assert_eq!(
        st["status"]["boundVolumeSnapshotContentName"],
        "snapcontent-vs1"
    );
    // Gone: its CStorSnapshot and content go too (deletionPolicy Delete).
    w.vss.clear();
    w.vscontents = vec![json!({"metadata": {"name": "snapcontent-vs1"}})];
    w.csnaps[0].metadata.annotations = Some(
        [(
            "cstor.openebs.io/volumesnapshot".to_owned(),
            "database/postgres-snapshot-daily".to_owned(),
        )]
        .into(),
    );
    let a = crate::snapshot::reconcile(&w);
    assert!(a.iter().any(|x| matches!(
        x,
        Action::Delete {
            kind: Kind::Csnap,
            ..
        }
    )));
    assert!(a.iter().any(|x| matches!(
        x,
        Action::Delete {
            kind: Kind::Vsc,
            ..
        }
    )));
}

#[test]
fn a_csi_topology_node_hosts_the_target_when_alive() {
    let mut w = pools_world();
    let object = crate::provision::cvc_object(&crate::provision::CvcRequest {
        name: "vol-t",
        namespace: "openebs",
        size_bytes: 1 << 30,
        cspc: "c",
        replica_count: 1,
        policy: None,
        source: None,
        claim: None,
        storage_class: None,
        fs_type: Some("xfs"),
        topology_node: Some("worker-03"),
    });
    w.cvcs = vec![from(object.clone())];
    let cv_node = |w: &World| {
        let actions = crate::volume::reconcile(w, &mut Counter::default());
        creates(&actions, Kind::Cv)[0]["metadata"]["labels"]["cstor.openebs.io/target-node"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Its replica lands on the pool with the most space (worker-02); the target follows
    // the topology to worker-03.
    assert_eq!(cv_node(&w), "worker-03");
    let mut gone = object;
    gone["metadata"]["annotations"]["cstor.openebs.io/topology-node"] = json!("worker-09");
    w.cvcs = vec![from(gone)];
    assert_eq!(cv_node(&w), "worker-02");
}

fn lease(node: &str, renewed: &str) -> Value {
    json!({"metadata": {"name": format!("cstor-node-{node}"), "namespace": "openebs"},
           "spec": {"holderIdentity": node, "leaseDurationSeconds": 15, "renewTime": renewed}})
}

/// The bound 3-replica volume with its target on worker-01 (holder instance "i-old"),
/// at 12:00:00, worker-01 last heard of at `w1_renewed`.
fn hosted_volume(w1_renewed: &str) -> World {
    let mut w = bound_volume(json!({"A": "0", "B": "0", "C": "0"}), json!({}), 3, 3);
    let cv = &mut w.cvs[0];
    cv.metadata.labels = Some(
        [(
            "cstor.openebs.io/target-node".to_owned(),
            "worker-01".to_owned(),
        )]
        .into_iter()
        .collect(),
    );
    cv.spec.target_portal = Some("127.0.0.2:3260".into());
    cv.spec.target_port = Some("3260".into());
    if let Some(s) = cv.status.as_mut() {
        s.replication = Some(
            json!({"record": {"epoch": 3, "holder": {"instance": "i-old", "pid": 7, "node": "h"}}}),
        );
    }
    w.leases = vec![
        from(lease("worker-01", w1_renewed)),
        from(lease("worker-02", "2026-12-03T12:00:00Z")),
        from(lease("worker-03", "2026-12-03T12:00:00Z")),
    ];
    w.now = Some("2026-12-03T12:00:00Z".parse().unwrap());
    w
}

fn patches_of(actions: &[Action], kind: Kind) -> Vec<&Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Patch { kind: k, patch, .. } if *k == kind => Some(patch),
            _ => None,
        })
        .collect()
}

#[test]
fn a_target_moves_off_a_node_silent_past_the_grace() {
    let grace = std::time::Duration::from_secs(15);
    // Silent for 10 s: within the grace, nothing moves.
    let w = hosted_volume("2026-12-03T11:59:50Z");
    assert!(crate::target_move::reconcile(&w, grace).is_empty());
    // Silent for 20 s: the target goes to a replica's live node, by load then name.
    let w = hosted_volume("2026-12-03T11:59:40Z");
    let a = crate::target_move::reconcile(&w, grace);
    let cv = patches_of(&a, Kind::Cv);
    assert_eq!(cv.len(), 1, "{a:?}");
    assert_eq!(
        cv[0]["metadata"]["labels"]["cstor.openebs.io/target-node"],
        "worker-02"
    );
    assert_eq!(
        cv[0]["metadata"]["annotations"]["cstor.openebs.io/takeover-from"],
        "i-old"
    );
    assert_eq!(cv[0]["spec"]["targetIP"], "127.0.0.3");
    assert_eq!(cv[0]["spec"]["targetPortal"], "127.0.0.3:3260");
    let cvrs = patches_of(&a, Kind::Cvr);
    assert_eq!(cvrs.len(), 3, "every CVR's targetIP follows");
    assert!(cvrs.iter().all(|p| p["spec"]["targetIP"] == "127.0.0.3"));
    let ev = events(&a, "TargetMoved");
    assert_eq!(ev.len(), 1);
    assert!(
        ev[0].starts_with(
            "moved target from worker-01 to worker-02 (127.0.0.2:3260 -> 127.0.0.3:3260)"
        ),
        "{}",
        ev[0]
    );
    // The whole pass carries the move too, with its grace from the settings.
    let all = crate::reconcile_with(
        &w,
        &mut Counter::default(),
        &crate::Settings {
            target_move_grace: std::time::Duration::from_secs(60),
            ..crate::Settings::default()
        },
    );
    assert!(
        events(&all, "TargetMoved").is_empty(),
        "60 s grace not over"
    );
    assert_eq!(
        events(
            &crate::reconcile(&w, &mut Counter::default()),
            "TargetMoved"
        )
        .len(),
        1
    );
}

#[test]
fn a_target_stays_when_no_other_node_could_serve_it() {
    let grace = std::time::Duration::from_secs(15);
    // Every other node silent too: no live node to move to.
    let mut w = hosted_volume("2026-12-03T11:59:00Z");
    w.leases = vec![
        from(lease("worker-01", "2026-12-03T11:59:00Z")),
        from(lease("worker-02", "2026-12-03T11:59:00Z")),
        from(lease("worker-03", "2026-12-03T11:59:00Z")),
    ];
    let a = crate::target_move::reconcile(&w, grace);
    assert!(patches_of(&a, Kind::Cv).is_empty());
    let ev = events(&a, "TargetNotMoved");
    assert!(
        ev[0].contains("none of its 3 replica(s) is on a live node"),
        "{}",
        ev[0]
    );
    // Replicas only on the dead node: a target elsewhere could serve nothing.
    let mut w = hosted_volume("2026-12-03T11:59:00Z");
    w.cvrs
        .retain(|r| r.metadata.name.as_deref() == Some("pvc-1-c-aaaa"));
    let a = crate::target_move::reconcile(&w, grace);
    assert!(patches_of(&a, Kind::Cv).is_empty());
    assert_eq!(events(&a, "TargetNotMoved").len(), 1);
    // A live replica node without an InternalIP and no other: said so.
    let mut w = hosted_volume("2026-12-03T11:59:00Z");
    for n in &mut w.nodes {
        if n.metadata.name.as_deref() != Some("worker-01") {
            n.status = None;
        }
    }
    let a = crate::target_move::reconcile(&w, grace);
    assert!(patches_of(&a, Kind::Cv).is_empty());
    let ev = events(&a, "TargetNotMoved");
    assert!(
        ev[0].contains("no live node with an InternalIP"),
        "{}",
        ev[0]
    );
    // A node without a heartbeat Lease is never judged dead.
    let mut w = hosted_volume("2026-12-03T11:59:00Z");
    w.leases.clear();
    assert!(crate::target_move::reconcile(&w, grace).is_empty());
}

/// [`hosted_volume`] with a fourth node and pool, worker-03 last heard of at `w3_renewed`.
fn four_pools(w3_renewed: &str) -> World {
    let mut w = hosted_volume("2026-12-03T12:00:00Z");
    w.nodes.push(from(node("worker-04", "127.0.0.5")));
    w.cspis
        .push(from(cspi("c-dddd", "c", "worker-04", &[], "ONLINE", "4Gi")));
    w.leases[2] = from(lease("worker-03", w3_renewed));
    w.leases
        .push(from(lease("worker-04", "2026-12-03T12:00:00Z")));
    w
}

fn deletes(actions: &[Action], kind: Kind) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Delete { kind: k, name, .. } if *k == kind => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_replica_on_a_node_silent_past_the_grace_is_replaced_on_another_pool() {
    let grace = std::time::Duration::from_secs(600);
    let w = four_pools("2026-12-03T11:58:20Z");
    assert!(
        crate::replace::reconcile(&w, &mut Counter::default(), grace).is_empty(),
        "100 s silent is within the grace"
    );
    let w = four_pools("2026-12-03T11:48:20Z");
    let a = crate::replace::reconcile(&w, &mut Counter::default(), grace);
    let cvr = creates(&a, Kind::Cvr);
    assert_eq!(cvr.len(), 1, "{a:?}");
    assert_eq!(
        cvr[0]["metadata"]["labels"]["openebs.io/cstor-pool-instance"],
        "c-dddd"
    );
    let id = cvr[0]["spec"]["replicaid"].as_str().unwrap();
    let cv = patches_of(&a, Kind::Cv);
    assert_eq!(
        cv[0]["spec"]["replicaDetails"]["knownReplicas"],
        json!({"C": null, id: "0"})
    );
    let lost = patches_of(&a, Kind::Cvr);
    assert_eq!(
        lost[0]["metadata"]["annotations"]["cstor.openebs.io/replaced-by"],
        cvr[0]["metadata"]["name"]
    );
    assert!(events(&a, "ReplicaReplaced")[0].contains("on pool instance c-cccc"));
    // The whole pass carries it with the settings' grace.
    let all = crate::reconcile(&w, &mut Counter::default());
    assert_eq!(events(&all, "ReplicaReplaced").len(), 1);
    let all = crate::reconcile_with(
        &w,
        &mut Counter::default(),
        &crate::Settings {
            replica_replace_grace: std::time::Duration::from_secs(3600),
            ..crate::Settings::default()
        },
    );
    assert!(events(&all, "ReplicaReplaced").is_empty());
}

#[test]
fn a_replacement_waits_for_healthy_peers_and_a_free_pool_then_removes_the_lost_cvr() {
    let grace = std::time::Duration::from_secs(600);
    // Another replica not Healthy: one replacement at a time.
    let mut w = four_pools("2026-12-03T11:48:20Z");
    w.cvrs[1].status = Some(from(json!({"phase": "ReconstructingNewReplica"})));
    let a = crate::replace::reconcile(&w, &mut Counter::default(), grace);
    assert!(creates(&a, Kind::Cvr).is_empty());
    assert!(events(&a, "ReplicaNotReplaced")[0].contains("one replacement at a time"));
    // No pool without a replica of the volume on a live node.
    let mut w = four_pools("2026-12-03T11:48:20Z");
    w.leases[3] = from(lease("worker-04", "2026-12-03T11:00:00Z"));
    let a = crate::replace::reconcile(&w, &mut Counter::default(), grace);
    assert!(creates(&a, Kind::Cvr).is_empty());
    assert!(events(&a, "ReplicaNotReplaced")[0].contains("no pool instance of c"));
    // Replaced: the lost CVR goes once the target no longer reports it.
    let mut w = four_pools("2026-12-03T11:48:20Z");
    w.cvs[0].spec.replica_details = Some(from(
        json!({"knownReplicas": {"A": "0", "B": "0", "D": "0"}}),
    ));
    w.cvrs[2].metadata.annotations = Some(
        [(
            "cstor.openebs.io/replaced-by".to_owned(),
            "pvc-1-c-dddd".to_owned(),
        )]
        .into_iter()
        .collect(),
    );
    w.cvrs.push(from(json!({"metadata": {"name": "pvc-1-c-dddd", "namespace": "openebs",
        "labels": {"openebs.io/persistent-volume": "pvc-1", "openebs.io/cstor-pool-instance": "c-dddd"}},
        "spec": {"replicaid": "D", "capacity": "1Gi"}, "status": {"phase": "ReconstructingNewReplica"}})));
    let reported = |ids: &[&str]| -> Value {
        json!(ids
            .iter()
            .map(|i| json!({"replicaId": i}))
            .collect::<Vec<_>>())
    };
    if let Some(s) = w.cvs[0].status.as_mut() {
        s.replica_statuses = Some(from(reported(&["A", "B", "C", "D"])));
    }
    let a = crate::replace::reconcile(&w, &mut Counter::default(), grace);
    assert!(deletes(&a, Kind::Cvr).is_empty(), "still a member: {a:?}");
    assert!(creates(&a, Kind::Cvr).is_empty(), "C left the desired set");
    if let Some(s) = w.cvs[0].status.as_mut() {
        s.replica_statuses = Some(from(reported(&["A", "B", "D"])));
    }
    let a = crate::replace::reconcile(&w, &mut Counter::default(), grace);
    assert_eq!(deletes(&a, Kind::Cvr), ["pvc-1-c-cccc"]);
}

#[test]
fn a_cvc_without_claim_and_pv_is_deleted_only_if_its_pv_was_never_written() {
    let mut w = pools_world();
    w.scs = vec![from(sc())];
    w.pvcs = vec![from(pvc())];
    w.cvcs = vec![from(json!({
        "metadata": {"name": "pvc-1234", "namespace": "openebs",
                     "annotations": {},
                     "labels": {"openebs.io/cstor-pool-cluster": "c"}},
        "spec": {"capacity": {"storage": "1Gi"}, "provision": {"replicaCount": 3}},
        "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}}))];
    w.cvcs[0].metadata.annotations.as_mut().unwrap().insert(
        crate::volume::PVC_ANNOTATION.to_owned(),
        "database/postgres-data".to_owned(),
    );
    // The PV written marks the CVC.
    let a = crate::provision::reconcile(&w);
    assert_eq!(creates(&a, Kind::Pv).len(), 1);
    let marked = a.iter().any(|x| {
        matches!(x, Action::Patch { kind: Kind::Cvc, name, patch, .. }
        if name == "pvc-1234"
            && patch["metadata"]["annotations"][crate::provision::PV_WRITTEN_ANNOTATION] == "true")
    });
    assert!(marked, "{a:?}");
    let deletes_cvc = |w: &World| {
        crate::provision::reconcile(w).iter().any(|x| {
            matches!(
                x,
                Action::Delete {
                    kind: Kind::Cvc,
                    ..
                }
            )
        })
    };
    // The claim gone before its PV was written: the CVC goes.
    w.pvcs.clear();
    assert!(deletes_cvc(&w));
    // Its PV was written (then deleted by hand under Retain): the volume stays.
    w.cvcs[0].metadata.annotations.as_mut().unwrap().insert(
        crate::provision::PV_WRITTEN_ANNOTATION.to_owned(),
        "true".to_owned(),
    );
    assert!(!deletes_cvc(&w));
}
