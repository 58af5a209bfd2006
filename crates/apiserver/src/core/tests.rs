//! Unit tests of the object service.

use super::*;

fn open(dir: &tempfile::TempDir) -> Core {
    Core::open(&dir.path().join("s.redb"), Vec::new()).unwrap()
}

fn ctx(core: &Core, group: &str, plural: &str, ns: &str) -> WriteCtx {
    WriteCtx {
        rt: core.registry().find(group, "v1", plural).unwrap(),
        version: "v1".into(),
        namespace: ns.into(),
        manager: "test".into(),
        dry_run: false,
        validation: FieldValidation::Strict,
    }
}

/// A fresh store with namespace `ns`.
fn with_ns(ns: &str) -> (tempfile::TempDir, Core) {
    let dir = tempfile::tempdir().unwrap();
    let core = open(&dir);
    make_ns(&core, ns);
    (dir, core)
}

/// A fresh store with namespace `ns` and a write context for its ConfigMaps.
fn configmaps_in(ns: &str) -> (tempfile::TempDir, Core, WriteCtx) {
    let (dir, core) = with_ns(ns);
    let c = ctx(&core, "", "configmaps", ns);
    (dir, core, c)
}

fn make_ns(core: &Core, name: &str) {
    core.create(
        &ctx(core, "", "namespaces", ""),
        json!({"metadata": {"name": name}}),
    )
    .unwrap();
}

#[test]
fn watch_from_trimmed_history_is_gone_and_the_floor_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let floor;
    {
        let core = open(&dir);
        make_ns(&core, "a");
        let c = ctx(&core, "", "configmaps", "a");
        core.create(&c, json!({"metadata": {"name": "cm"}, "data": {"n": "0"}}))
            .unwrap();
        let start = core.resource_version();
        for i in 0..40 {
            core.patch(
                &c,
                "cm",
                PatchKind::Merge,
                json!({"data": {"n": i.to_string()}}),
                Part::Main { has_status: false },
            )
            .unwrap();
        }
        let rt = c.rt.clone();
        assert!(matches!(
            core.watch(&rt, &Filter::default(), Some(start)),
            Err(ApiError::Gone { .. })
        ));
        let recent = core.resource_version() - 5;
        let (replay, _rx, _) = core.watch(&rt, &Filter::default(), Some(recent)).unwrap();
        assert_eq!(replay.len(), 5);
        floor = core.inner.read().floor;
        assert!(floor > start);
        assert!(core.inner.read().history.len() <= limits::WATCH_HISTORY_EVENTS_MAX);
    }
    let core = open(&dir);
    assert_eq!(core.inner.read().floor, floor);
    let rt = core.registry().find("", "v1", "configmaps").unwrap();
    assert!(matches!(
        core.watch(&rt, &Filter::default(), Some(floor - 1)),
        Err(ApiError::Gone { .. })
    ));
    let (replay, _rx, _) = core.watch(&rt, &Filter::default(), Some(floor)).unwrap();
    assert_eq!(replay.first().map(|c| c.rv), Some(floor + 1));
}

#[test]
fn dependents_go_when_their_owner_goes_unless_orphaned() {
    let (_dir, core, c) = configmaps_in("a");
    let owner = core
        .create(&c, json!({"metadata": {"name": "owner"}}))
        .unwrap()
        .object;
    let uid = owner["metadata"]["uid"].as_str().unwrap().to_string();
    let dep = json!({"metadata": {"name": "dep", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}});
    core.create(&c, dep.clone()).unwrap();
    core.delete(&c, "owner", &DeleteOpts::default()).unwrap();
    while core.collect_garbage().unwrap() {}
    assert!(core.get(&c.rt, "a", "dep").is_err(), "dependent collected");
    let owner = core
        .create(&c, json!({"metadata": {"name": "owner"}}))
        .unwrap()
        .object;
    let mut dep = dep;
    dep["metadata"]["ownerReferences"][0]["uid"] = owner["metadata"]["uid"].clone();
    core.create(&c, dep).unwrap();
    core.delete(
        &c,
        "owner",
        &DeleteOpts {
            orphan: true,
            ..Default::default()
        },
    )
    .unwrap();
    while core.collect_garbage().unwrap() {}
    let kept = core.get(&c.rt, "a", "dep").unwrap();
    assert_eq!(kept["metadata"]["ownerReferences"], json!([]));
}

#[test]
fn selector_watch_sees_objects_enter_and_leave() {
    let (_dir, core, c) = configmaps_in("a");
    core.create(
        &c,
        json!({"metadata": {"name": "cm", "labels": {"tier": "gold"}}}),
    )
    .unwrap();
    let f = Filter {
        labels: LabelSelector::parse("tier=gold").unwrap(),
        ..Default::default()
    };
    let (_, mut rx, _) = core
        .watch(&c.rt, &f, Some(core.resource_version()))
        .unwrap();
    let main = Part::Main { has_status: false };
    core.patch(
        &c,
        "cm",
        PatchKind::Merge,
        json!({"metadata": {"labels": {"tier": "silver"}}}),
        main,
    )
    .unwrap();
    core.patch(
        &c,
        "cm",
        PatchKind::Merge,
        json!({"data": {"x": "1"}}),
        main,
    )
    .unwrap();
    core.patch(
        &c,
        "cm",
        PatchKind::Merge,
        json!({"metadata": {"labels": {"tier": "gold"}}}),
        main,
    )
    .unwrap();
    let kinds: Vec<Option<EventType>> = (0..3)
        .map(|_| watch_event(&c.rt, &f, &rx.try_recv().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [Some(EventType::Deleted), None, Some(EventType::Added)]
    );
}

fn crd(group: &str, version: &str) -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": format!("cstorpoolclusters.{group}")},
           "spec": {"group": group, "scope": "Namespaced",
                    "names": {"kind": "CStorPoolCluster", "plural": "cstorpoolclusters", "shortNames": ["cspc"]},
                    "versions": [{"name": version, "served": true, "storage": true,
                                  "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})
}

#[test]
fn alias_resources_convert_to_and_from_their_storage() {
    let dir = tempfile::tempdir().unwrap();
    // Toy conversion: alpha raidGroups[0].type <-> v1 poolConfig.dataRaidGroupType.
    let to: crate::ConvertFn = Arc::new(|o: &Value| {
        let t = o["spec"]["raidGroups"][0]["type"]
            .as_str()
            .ok_or("raidGroups[0].type is required")?;
        Ok(json!({"spec": {"poolConfig": {"dataRaidGroupType": t}}}))
    });
    let from: crate::ConvertFn = Arc::new(|o: &Value| {
        let t = o["spec"]["poolConfig"]["dataRaidGroupType"].clone();
        Ok(
            json!({"metadata": {"annotations": {"converted": "yes"}}, "spec": {"raidGroups": [{"type": t}]}}),
        )
    });
    let alias = Arc::new(crate::Alias {
        group: "openebs.io".into(),
        plural: "cstorpoolclusters".into(),
        storage_group: "cstor.openebs.io".into(),
        storage_plural: "cstorpoolclusters".into(),
        storage_api_version: "cstor.openebs.io/v1".into(),
        storage_kind: "CStorPoolCluster".into(),
        to_storage: to,
        from_storage: from,
    });
    let core = Core::open(&dir.path().join("s.redb"), vec![alias]).unwrap();
    core.ensure_crds(&[crd("cstor.openebs.io", "v1"), crd("openebs.io", "v1alpha1")])
        .unwrap();
    make_ns(&core, "openebs");
    let alpha = WriteCtx {
        rt: core
            .registry()
            .find("openebs.io", "v1alpha1", "cstorpoolclusters")
            .unwrap(),
        version: "v1alpha1".into(),
        ..ctx(&core, "cstor.openebs.io", "cstorpoolclusters", "openebs")
    };
    let v1 = ctx(&core, "cstor.openebs.io", "cstorpoolclusters", "openebs");
    let w = core
        .create(
            &alpha,
            json!({"metadata": {"name": "p"}, "spec": {"raidGroups": [{"type": "mirror"}]}}),
        )
        .unwrap();
    assert_eq!(w.object["apiVersion"], "openebs.io/v1alpha1");
    let stored = core.get(&v1.rt, "openebs", "p").unwrap();
    assert_eq!(stored["apiVersion"], "cstor.openebs.io/v1");
    assert_eq!(stored["spec"]["poolConfig"]["dataRaidGroupType"], "mirror");
    core.patch(
        &v1,
        "p",
        PatchKind::Merge,
        json!({"spec": {"poolConfig": {"dataRaidGroupType": "raidz"}}}),
        Part::Main { has_status: false },
    )
    .unwrap();
    let seen = to_external(
        &alpha.rt,
        "v1alpha1",
        &core.get(&alpha.rt, "openebs", "p").unwrap(),
    );
    assert_eq!(seen["spec"]["raidGroups"][0]["type"], "raidz");
    assert_eq!(seen["metadata"]["name"], "p");
    assert_eq!(seen["metadata"]["annotations"]["converted"], "yes");
    assert_eq!(seen["metadata"]["uid"], stored["metadata"]["uid"]);
    let err = core
        .create(&alpha, json!({"metadata": {"name": "q"}, "spec": {}}))
        .unwrap_err();
    assert_eq!(err.code(), 422);
}

#[test]
fn bad_continue_tokens_are_bad_requests() {
    assert!(decode_continue("zz").is_err());
    assert!(decode_continue("éé").is_err());
    assert!(decode_continue("abc").is_err());
    assert_eq!(
        decode_continue(&encode_continue(7, "core/x//y")).unwrap(),
        (7, "core/x//y".to_string())
    );
}

#[test]
fn events_expire_after_the_ttl() {
    let (_dir, core) = with_ns("a");
    let c = ctx(&core, "", "events", "a");
    let old = time::format_rfc3339(time::now_secs() - limits::EVENT_TTL.as_secs() as i64 - 60);
    core.create(&c, json!({"metadata": {"name": "old"}, "lastTimestamp": old, "involvedObject": {"kind": "Pod", "name": "p"}})).unwrap();
    core.create(&c, json!({"metadata": {"name": "new"}, "lastTimestamp": time::now_rfc3339(), "involvedObject": {"kind": "Pod", "name": "p"}})).unwrap();
    while core.collect_garbage().unwrap() {}
    assert!(core.get(&c.rt, "a", "old").is_err());
    assert!(core.get(&c.rt, "a", "new").is_ok());
    // The events.k8s.io/v1 view reads the same storage.
    let v1 = ctx(&core, "events.k8s.io", "events", "a");
    let stored = core.get(&v1.rt, "a", "new").unwrap();
    assert_eq!(to_external(&v1.rt, "v1", &stored)["regarding"]["name"], "p");
}

#[test]
fn generate_name_missing_namespace_and_quota() {
    let dir = tempfile::tempdir().unwrap();
    let core = open(&dir);
    let c = ctx(&core, "", "configmaps", "nowhere");
    let err = core
        .create(&c, json!({"metadata": {"name": "x"}}))
        .unwrap_err();
    assert_eq!(err.code(), 404);
    assert!(err.to_string().contains("namespaces \"nowhere\" not found"));
    make_ns(&core, "a");
    let c = ctx(&core, "", "configmaps", "a");
    let w = core
        .create(&c, json!({"metadata": {"generateName": "cm-"}}))
        .unwrap();
    let name = w.object["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("cm-") && name.len() == 8, "{name}");
    let err = core
        .create(&c, json!({"metadata": {"name": "Bad_Name"}}))
        .unwrap_err();
    assert_eq!(err.code(), 422);
    let q = ctx(&core, "", "resourcequotas", "a");
    core.create(&q, json!({"metadata": {"name": "q"}, "spec": {"hard": {"requests.storage": "10Gi", "persistentvolumeclaims": "2"}}})).unwrap();
    let p = ctx(&core, "", "persistentvolumeclaims", "a");
    let pvc = |n: &str, size: &str| json!({"metadata": {"name": n}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}});
    core.create(&p, pvc("p1", "6Gi")).unwrap();
    let err = core.create(&p, pvc("p2", "5Gi")).unwrap_err();
    assert_eq!(err.code(), 403);
    assert!(err.to_string().contains("exceeded quota: q, requested: requests.storage=5Gi, used: requests.storage=6Gi, limited: requests.storage=10Gi"), "{err}");
    core.create(&p, pvc("p2", "4Gi")).unwrap();
    let err = core.create(&p, pvc("p3", "1Mi")).unwrap_err();
    assert!(
        err.to_string().contains("persistentvolumeclaims=1"),
        "{err}"
    );
    let sc = ctx(&core, "storage.k8s.io", "storageclasses", "");
    core.create(
        &sc,
        json!({"metadata": {"name": "sc"}, "provisioner": "x", "allowVolumeExpansion": true}),
    )
    .unwrap();
    let grow = |size: &str| json!({"spec": {"storageClassName": "sc", "resources": {"requests": {"storage": size}}}});
    let main = Part::Main { has_status: true };
    let err = core
        .patch(&p, "p2", PatchKind::Merge, grow("5Gi"), main)
        .unwrap_err();
    assert_eq!(err.code(), 422, "storageClassName is immutable: {err}");
    let p4 = json!({"metadata": {"name": "p4"}, "spec": {"storageClassName": "sc", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "0"}}}});
    assert_eq!(core.create(&p, p4).unwrap_err().code(), 422);
    core.delete(&p, "p2", &DeleteOpts::default()).unwrap();
    let p5 = json!({"metadata": {"name": "p5"}, "spec": {"storageClassName": "sc", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    core.create(&p, p5).unwrap();
    let err = core
        .patch(
            &p,
            "p5",
            PatchKind::Merge,
            json!({"spec": {"resources": {"requests": {"storage": "4Gi"}}}}),
            main,
        )
        .unwrap_err();
    assert_eq!(err.code(), 422, "an unbound claim cannot be resized: {err}");
    core.patch(
        &p,
        "p5",
        PatchKind::Merge,
        json!({"status": {"phase": "Bound"}}),
        Part::Status,
    )
    .unwrap();
    core.patch(
        &p,
        "p5",
        PatchKind::Merge,
        json!({"spec": {"resources": {"requests": {"storage": "4Gi"}}}}),
        main,
    )
    .unwrap();
    let err = core
        .patch(
            &p,
            "p5",
            PatchKind::Merge,
            json!({"spec": {"resources": {"requests": {"storage": "5Gi"}}}}),
            main,
        )
        .unwrap_err();
    assert_eq!(err.code(), 403, "6Gi + 5Gi exceeds 10Gi: {err}");
    core.delete(&p, "p5", &DeleteOpts::default()).unwrap();
    core.create(&p, pvc("p2", "4Gi")).unwrap();
    core.delete(&p, "p1", &DeleteOpts::default()).unwrap();
    let quota = core.get(&q.rt, "a", "q").unwrap();
    assert_eq!(quota["status"]["used"]["requests.storage"], "4Gi");
    assert_eq!(quota["status"]["used"]["persistentvolumeclaims"], "1");
}

#[test]
fn paged_lists_are_a_snapshot_of_the_first_page() {
    let (_dir, core, c) = configmaps_in("a");
    for n in ["c1", "c2", "c3", "c4"] {
        core.create(&c, json!({"metadata": {"name": n}, "data": {"v": "0"}}))
            .unwrap();
    }
    let f = Filter::default();
    let first = core.list(&c.rt, &f, Some(1), None, ListAt::Latest).unwrap();
    let rv = first.resource_version;
    let main = Part::Main { has_status: false };
    core.delete(&c, "c2", &DeleteOpts::default()).unwrap();
    core.patch(
        &c,
        "c3",
        PatchKind::Merge,
        json!({"data": {"v": "1"}}),
        main,
    )
    .unwrap();
    core.create(&c, json!({"metadata": {"name": "c25"}}))
        .unwrap();
    let mut names = vec![first.items[0]["metadata"]["name"].clone()];
    let mut tok = first.continue_token.clone();
    while let Some(t) = tok {
        let page = core
            .list(&c.rt, &f, Some(1), Some(&t), ListAt::Latest)
            .unwrap();
        assert_eq!(
            page.resource_version, rv,
            "every page reports the first page's RV"
        );
        for o in &page.items {
            names.push(o["metadata"]["name"].clone());
            if o["metadata"]["name"] == "c3" {
                assert_eq!(o["data"]["v"], "0", "c3 as of the snapshot");
            }
        }
        tok = page.continue_token;
    }
    assert_eq!(names, [json!("c1"), json!("c2"), json!("c3"), json!("c4")]);
    let exact = core.list(&c.rt, &f, None, None, ListAt::Exact(rv)).unwrap();
    assert_eq!(exact.items.len(), 4);
    let now = core
        .list(&c.rt, &f, None, None, ListAt::NotOlderThan(rv))
        .unwrap();
    assert_eq!(now.items.len(), 4, "c2 gone, c25 added");
    assert!(now.resource_version > rv);
    let too_new = core.list(
        &c.rt,
        &f,
        None,
        None,
        ListAt::Exact(now.resource_version + 10),
    );
    assert_eq!(too_new.unwrap_err().code(), 504);
    // Compacted: the continue token of the first page expires.
    for i in 0..40 {
        core.patch(
            &c,
            "c4",
            PatchKind::Merge,
            json!({"data": {"v": i.to_string()}}),
            main,
        )
        .unwrap();
    }
    let err = core
        .list(
            &c.rt,
            &f,
            Some(1),
            first.continue_token.as_deref(),
            ListAt::Latest,
        )
        .unwrap_err();
    assert_eq!(err.code(), 410);
    assert_eq!(
        core.list(&c.rt, &f, None, None, ListAt::Exact(rv))
            .unwrap_err()
            .code(),
        410
    );
}

#[test]
fn selector_watch_after_reopen_sees_an_object_leave() {
    let dir = tempfile::tempdir().unwrap();
    let f = Filter {
        labels: LabelSelector::parse("tier=gold").unwrap(),
        ..Default::default()
    };
    let from;
    {
        let core = open(&dir);
        make_ns(&core, "a");
        let c = ctx(&core, "", "configmaps", "a");
        core.create(
            &c,
            json!({"metadata": {"name": "cm", "labels": {"tier": "gold"}}}),
        )
        .unwrap();
        from = core.resource_version();
        core.patch(
            &c,
            "cm",
            PatchKind::Merge,
            json!({"metadata": {"labels": {"tier": "silver"}}}),
            Part::Main { has_status: false },
        )
        .unwrap();
    }
    let core = open(&dir);
    let rt = core.registry().find("", "v1", "configmaps").unwrap();
    let (replay, _rx, _) = core.watch(&rt, &f, Some(from)).unwrap();
    let kinds: Vec<Option<EventType>> = replay.iter().map(|c| watch_event(&rt, &f, c)).collect();
    assert_eq!(kinds, [Some(EventType::Deleted)]);
}

#[test]
fn deleting_a_crd_deletes_its_objects_and_a_builtin_clash_is_not_established() {
    let dir = tempfile::tempdir().unwrap();
    let core = open(&dir);
    make_ns(&core, "openebs");
    let crds = ctx(
        &core,
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "",
    );
    let w = core.create(&crds, crd("cstor.openebs.io", "v1")).unwrap();
    assert_eq!(
        w.object["metadata"]["finalizers"],
        json!(["customresourcecleanup.apiextensions.k8s.io"])
    );
    let c = ctx(&core, "cstor.openebs.io", "cstorpoolclusters", "openebs");
    core.create(&c, json!({"metadata": {"name": "plain"}}))
        .unwrap();
    core.create(
        &c,
        json!({"metadata": {"name": "held", "finalizers": ["x.io/y"]}}),
    )
    .unwrap();
    core.delete(
        &crds,
        "cstorpoolclusters.cstor.openebs.io",
        &DeleteOpts::default(),
    )
    .unwrap();
    while core.collect_garbage().unwrap() {}
    assert!(
        core.get(&c.rt, "openebs", "plain").is_err(),
        "plain object deleted"
    );
    let held = core.get(&c.rt, "openebs", "held").unwrap();
    assert!(
        held["metadata"].get("deletionTimestamp").is_some(),
        "held object marked"
    );
    assert!(
        core.get(&crds.rt, "", "cstorpoolclusters.cstor.openebs.io")
            .is_ok(),
        "the CRD waits for its objects"
    );
    core.patch(
        &c,
        "held",
        PatchKind::Merge,
        json!({"metadata": {"finalizers": null}}),
        Part::Main { has_status: false },
    )
    .unwrap();
    while core.collect_garbage().unwrap() {}
    assert!(
        core.get(&crds.rt, "", "cstorpoolclusters.cstor.openebs.io")
            .is_err(),
        "CRD gone"
    );
    core.create(&crds, crd("cstor.openebs.io", "v1")).unwrap();
    let c = ctx(&core, "cstor.openebs.io", "cstorpoolclusters", "openebs");
    let page = core
        .list(&c.rt, &Filter::default(), None, None, ListAt::Latest)
        .unwrap();
    assert!(
        page.items.is_empty(),
        "nothing comes back with the recreated CRD"
    );

    let clash = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "storageclasses.storage.k8s.io"},
        "spec": {"group": "storage.k8s.io", "scope": "Cluster",
                 "names": {"kind": "StorageClass", "plural": "storageclasses"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object"}}}]}});
    let w = core.create(&crds, clash).unwrap();
    let conds = w.object["status"]["conditions"].as_array().unwrap().clone();
    let established = conds.iter().find(|c| c["type"] == "Established").unwrap();
    assert_eq!(established["status"], "False", "{conds:?}");
    let names = conds.iter().find(|c| c["type"] == "NamesAccepted").unwrap();
    assert_eq!(names["status"], "False");
}

#[test]
fn history_is_compacted_by_age_and_count() {
    let min = 60_000;
    let now = 100 * min;
    // Six and four minutes old, then fresh: the six-minute one goes.
    let entries = [(10, now - 6 * min), (11, now - 4 * min), (12, now)];
    assert_eq!(history_floor(entries.iter().copied(), 3, 9, now), 10);
    assert_eq!(
        history_floor(entries[1..].iter().copied(), 2, 10, now),
        10,
        "< 5 minutes kept"
    );
    let many: Vec<(u64, u64)> = (1..=40).map(|rv| (rv, now)).collect();
    let floor = history_floor(many.iter().copied(), 40, 0, now);
    assert_eq!(
        floor,
        40 - limits::WATCH_HISTORY_EVENTS_MAX as u64,
        "count bound"
    );
}

#[test]
fn foreground_deletion_waits_for_blocking_dependents() {
    let (_dir, core, c) = configmaps_in("a");
    let owner = core
        .create(&c, json!({"metadata": {"name": "owner"}}))
        .unwrap()
        .object;
    let oref = |block: bool| {
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
        "uid": owner["metadata"]["uid"], "blockOwnerDeletion": block}])
    };
    core.create(&c, json!({"metadata": {"name": "blocker", "finalizers": ["x.io/y"], "ownerReferences": oref(true)}}))
        .unwrap();
    core.create(
        &c,
        json!({"metadata": {"name": "free", "ownerReferences": oref(false)}}),
    )
    .unwrap();
    let opts = DeleteOpts {
        foreground: true,
        ..Default::default()
    };
    let o = core.delete(&c, "owner", &opts).unwrap();
    assert_eq!(o["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    while core.collect_garbage().unwrap() {}
    assert!(
        core.get(&c.rt, "a", "free").is_err(),
        "non-blocking dependent deleted"
    );
    let blocker = core.get(&c.rt, "a", "blocker").unwrap();
    assert!(blocker["metadata"].get("deletionTimestamp").is_some());
    assert!(
        core.get(&c.rt, "a", "owner").is_ok(),
        "owner waits for the blocking dependent"
    );
    core.patch(
        &c,
        "blocker",
        PatchKind::Merge,
        json!({"metadata": {"finalizers": null}}),
        Part::Main { has_status: false },
    )
    .unwrap();
    while core.collect_garbage().unwrap() {}
    assert!(
        core.get(&c.rt, "a", "owner").is_err(),
        "owner gone after its dependents"
    );
}

#[test]
fn metadata_is_validated_like_kube_apiserver() {
    let dir = tempfile::tempdir().unwrap();
    let core = open(&dir);
    make_ns(&core, "a");
    let c = ctx(&core, "", "configmaps", "a");
    for bad in [
        json!({"metadata": {"name": "x", "labels": {"bad key": "v"}}}),
        json!({"metadata": {"name": "x", "labels": {"k": "-v"}}}),
        json!({"metadata": {"name": "x", "labels": {"Bad_Prefix.io/k": "v"}}}),
        json!({"metadata": {"name": "x", "annotations": {"a/b/c!": "v"}}}),
        json!({"metadata": {"name": "x", "finalizers": ["not a name"]}}),
    ] {
        let err = core.create(&c, bad.clone()).unwrap_err();
        assert_eq!(err.code(), 422, "{bad}: {err}");
    }
    core.create(
        &c,
        json!({"metadata": {"name": "ok", "labels": {"app.kubernetes.io/name": "My_app-1", "e": ""},
        "finalizers": ["cstor.openebs.io/x"]}}),
    )
    .unwrap();
    core.delete(&c, "ok", &DeleteOpts::default()).unwrap();
    let main = Part::Main { has_status: false };
    let err = core
        .patch(
            &c,
            "ok",
            PatchKind::Merge,
            json!({"metadata": {"finalizers": ["cstor.openebs.io/x", "b.io/new"]}}),
            main,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("no new finalizers can be added"),
        "{err}"
    );
    core.patch(
        &c,
        "ok",
        PatchKind::Merge,
        json!({"metadata": {"finalizers": []}}),
        main,
    )
    .unwrap();
    assert!(core.get(&c.rt, "a", "ok").is_err());
}

/// Benchmark (bench/apiserver.sh, never in CI): `BENCH_WRITERS` threads (default 32)
/// each create ConfigMaps for `BENCH_SECS` seconds (default 5) on a store in
/// `BENCH_DIR` (default the temp dir; use a real disk, tmpfs makes fsync free);
/// prints writes/s.
#[test]
#[ignore]
fn bench_concurrent_writers() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let writers = env("BENCH_WRITERS", 32) as usize;
    let secs = env("BENCH_SECS", 5);
    let dir = match std::env::var_os("BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let core = open(&dir);
    make_ns(&core, "bench");
    let c = ctx(&core, "", "configmaps", "bench");
    let stop = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let started = std::time::Instant::now();
    let total: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (core, c) = (&core, c.clone());
                s.spawn(move || {
                    let mut n = 0;
                    while std::time::Instant::now() < stop {
                        core.create(
                            &c,
                            json!({"metadata": {"name": format!("w{w}-{n}")}, "data": {"k": "v"}}),
                        )
                        .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "apiserver store: {writers} concurrent writers: {total} creates in {elapsed:.1} s = {:.0} writes/s",
        total as f64 / elapsed
    );
}

#[test]
fn concurrent_writers_share_fsyncs_and_each_write_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let core = open(&dir);
    make_ns(&core, "a");
    let c = ctx(&core, "", "configmaps", "a");
    let before = core.store.commits();
    const WRITERS: usize = 16;
    const EACH: usize = 15;
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (core, c) = (&core, c.clone());
            s.spawn(move || {
                for n in 0..EACH {
                    let name = format!("w{w}-{n}");
                    let got = core
                        .create(&c, json!({"metadata": {"name": name}}))
                        .unwrap();
                    // The reply comes after the commit: readers see it already.
                    assert!(core.get(&c.rt, "a", &name).is_ok());
                    assert!(got.object["metadata"]["resourceVersion"].is_string());
                }
            });
        }
    });
    let commits = core.store.commits() - before;
    let writes = (WRITERS * EACH) as u64;
    // Serialised fsyncs would make one commit per write.
    assert!(
        commits * 2 <= writes,
        "{commits} commits for {writes} concurrent writes: no group commit"
    );
    let rv = core.resource_version();
    drop(core);
    let core = open(&dir);
    assert_eq!(core.resource_version(), rv);
    let page = core
        .list(&c.rt, &Filter::default(), None, None, ListAt::Latest)
        .unwrap();
    assert_eq!(page.items.len(), WRITERS * EACH);
}

#[test]
fn a_failed_commit_fails_its_write_and_later_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let core = open(&dir);
    make_ns(&core, "a");
    let c = ctx(&core, "", "configmaps", "a");
    let rv = core.resource_version();
    core.store
        .fail_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = core
        .create(&c, json!({"metadata": {"name": "lost"}}))
        .unwrap_err();
    assert_eq!(err.code(), 500, "{err}");
    assert!(core.get(&c.rt, "a", "lost").is_err());
    assert_eq!(core.resource_version(), rv);
    // The staged view was reset: the same name can be created and RVs go on from disk.
    let w = core
        .create(&c, json!({"metadata": {"name": "lost"}}))
        .unwrap();
    assert_eq!(
        w.object["metadata"]["resourceVersion"],
        json!((rv + 1).to_string())
    );
    drop(core);
    let core = open(&dir);
    assert!(core.get(&c.rt, "a", "lost").is_ok());
    assert_eq!(core.resource_version(), rv + 1);
}
