//! kube-rs client tests against a `cstor apiserver` process: list, a watch through 1,000
//! updates with none lost, the status subresource (status writes never touch spec, spec
//! writes never touch status, generation moves with spec only, 422 naming the field),
//! server-side apply with field-manager conflicts, 409 on a stale resourceVersion, and a
//! watch resumed from a resourceVersion taken before a kill -9 of the server.

mod apiserver_support;

use std::time::Duration;

use apiserver_support::{free_port, ApiServer};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::Client;
use serde_json::json;

async fn client(s: &ApiServer) -> Client {
    let kc = kube::config::Kubeconfig::read_from(s.kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

fn start() -> (tempfile::TempDir, ApiServer) {
    let dir = tempfile::tempdir().unwrap();
    let s = ApiServer::start(&dir.path().join("data"), free_port());
    (dir, s)
}

fn counter_cm(name: &str, n: u64) -> ConfigMap {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": n.to_string()}})).unwrap()
}

fn n_of(cm: &ConfigMap) -> u64 {
    cm.data
        .as_ref()
        .and_then(|d| d.get("n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Watches `name` from `rv`, re-watching from the last seen resourceVersion whenever a
/// stream ends (as client-go and kube-rs do), until counter `last` is seen; returns
/// every counter value in order. Panics after `deadline`.
async fn watch_counters(
    api: Api<ConfigMap>,
    name: &str,
    mut rv: String,
    last: u64,
    deadline: Duration,
) -> Vec<u64> {
    let mut seen = Vec::new();
    let wp = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(60);
    let work = async {
        loop {
            let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
            while let Some(ev) = stream.try_next().await.unwrap() {
                match ev {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                        rv = o.metadata.resource_version.clone().unwrap();
                        seen.push(n_of(&o));
                        if n_of(&o) >= last {
                            return;
                        }
                    }
                    WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                    WatchEvent::Deleted(_) => {}
                    WatchEvent::Error(e) => panic!("watch error: {e:?}"),
                }
            }
        }
    };
    tokio::time::timeout(deadline, work)
        .await
        .expect("watch did not see every change in time");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_watch_through_1000_updates_loses_none() {
    let (_dir, s) = start();
    let c = client(&s).await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    cms.create(&PostParams::default(), &counter_cm("counter", 0))
        .await
        .unwrap();
    let list = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let rv = list.metadata.resource_version.unwrap();
    let watcher = tokio::spawn(watch_counters(
        cms.clone(),
        "counter",
        rv,
        1000,
        Duration::from_secs(120),
    ));
    let started = std::time::Instant::now();
    for i in 1..=1000u64 {
        cms.patch(
            "counter",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"n": i.to_string()}})),
        )
        .await
        .unwrap();
    }
    let elapsed = started.elapsed();
    let seen = watcher.await.unwrap();
    assert_eq!(
        seen,
        (1..=1000).collect::<Vec<_>>(),
        "every update seen once, in order"
    );
    println!(
        "1000 durable updates in {elapsed:?} ({:.0} writes/s)",
        1000.0 / elapsed.as_secs_f64()
    );
    // Paged list.
    for i in 0..5 {
        cms.create(&PostParams::default(), &counter_cm(&format!("page-{i}"), i))
            .await
            .unwrap();
    }
    let mut names = Vec::new();
    let mut lp = ListParams::default().limit(2);
    loop {
        let page = cms.list(&lp).await.unwrap();
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(
        names,
        ["counter", "page-0", "page-1", "page-2", "page-3", "page-4"]
    );
}

const WIDGET_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "widgets.test.cstor.io"},
  "spec": {"group": "test.cstor.io", "scope": "Namespaced",
    "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
    "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
      "schema": {"openAPIV3Schema": {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {"size": {"type": "integer"}, "mode": {"type": "string"}}},
        "status": {"type": "object", "properties": {"phase": {"type": "string", "enum": ["Pending", "Ready"]}}}}}}}]}}"#;

async fn widgets(c: &Client) -> Api<DynamicObject> {
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let crd: CustomResourceDefinition = serde_json::from_str(WIDGET_CRD).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let ar = ApiResource {
        group: "test.cstor.io".into(),
        version: "v1".into(),
        api_version: "test.cstor.io/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    Api::namespaced_with(c.clone(), "default", &ar)
}

fn widget(name: &str, size: i64) -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": "test.cstor.io/v1", "kind": "Widget", "metadata": {"name": name},
        "spec": {"size": size}, "status": {"phase": "Ready"}}),
    )
    .unwrap()
}

fn api_code<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> u16 {
    match r {
        Err(kube::Error::Api(s)) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_keeps_spec_and_status_apart() {
    let (_dir, s) = start();
    let c = client(&s).await;
    let api = widgets(&c).await;
    let w = api
        .create(&PostParams::default(), &widget("w1", 1))
        .await
        .unwrap();
    assert!(
        w.data.get("status").is_none(),
        "status is not set on create"
    );
    assert_eq!(w.metadata.generation, Some(1));
    let w = api
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}, "spec": {"size": 99}})),
        )
        .await
        .unwrap();
    assert_eq!(w.data["status"]["phase"], "Ready");
    assert_eq!(
        w.data["spec"]["size"], 1,
        "a status write never changes spec"
    );
    assert_eq!(
        w.metadata.generation,
        Some(1),
        "generation moves only with spec"
    );
    let w = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}, "status": {"phase": "Pending"}})),
        )
        .await
        .unwrap();
    assert_eq!(w.data["spec"]["size"], 2);
    assert_eq!(
        w.data["status"]["phase"], "Ready",
        "a spec write never changes status"
    );
    assert_eq!(w.metadata.generation, Some(2));
    let err = api
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bogus"}})),
        )
        .await;
    match err {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message
                    .contains("status.phase: Unsupported value: \"Bogus\""),
                "{}",
                s.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }
    assert_eq!(api_code(api.get("missing").await), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_tracks_managers_and_conflicts() {
    let (_dir, s) = start();
    let c = client(&s).await;
    let api = widgets(&c).await;
    let applied = json!({"apiVersion": "test.cstor.io/v1", "kind": "Widget", "metadata": {"name": "w2"}, "spec": {"size": 3, "mode": "fast"}});
    let w = api
        .patch("w2", &PatchParams::apply("ctrl-a"), &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(w.data["spec"]["size"], 3);
    let managers: Vec<String> = w
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["ctrl-a"]);
    let other = json!({"apiVersion": "test.cstor.io/v1", "kind": "Widget", "metadata": {"name": "w2"}, "spec": {"size": 4}});
    assert_eq!(
        api_code(
            api.patch("w2", &PatchParams::apply("ctrl-b"), &Patch::Apply(&other))
                .await
        ),
        409
    );
    let w = api
        .patch(
            "w2",
            &PatchParams::apply("ctrl-b").force(),
            &Patch::Apply(&other),
        )
        .await
        .unwrap();
    assert_eq!(w.data["spec"]["size"], 4);
    // ctrl-a drops `mode` from its configuration: the field goes, `size` (now ctrl-b's) stays.
    let less = json!({"apiVersion": "test.cstor.io/v1", "kind": "Widget", "metadata": {"name": "w2"}, "spec": {}});
    let w = api
        .patch("w2", &PatchParams::apply("ctrl-a"), &Patch::Apply(&less))
        .await
        .unwrap();
    assert!(w.data["spec"].get("mode").is_none(), "{:?}", w.data);
    assert_eq!(w.data["spec"]["size"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_resource_version_conflicts() {
    let (_dir, s) = start();
    let c = client(&s).await;
    let api = widgets(&c).await;
    let w = api
        .create(&PostParams::default(), &widget("w3", 1))
        .await
        .unwrap();
    let mut first = w.clone();
    first.data["spec"]["size"] = json!(5);
    api.replace("w3", &PostParams::default(), &first)
        .await
        .unwrap();
    let mut stale = w.clone();
    stale.data["spec"]["size"] = json!(6);
    assert_eq!(
        api_code(api.replace("w3", &PostParams::default(), &stale).await),
        409
    );
    assert_eq!(api.get("w3").await.unwrap().data["spec"]["size"], 5);
    assert_eq!(
        api_code(api.create(&PostParams::default(), &widget("w3", 1)).await),
        409
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_kill_9() {
    let (_dir, mut s) = start();
    let c = client(&s).await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    cms.create(&PostParams::default(), &counter_cm("survivor", 0))
        .await
        .unwrap();
    let rv0 = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut last_rv = 0u64;
    for i in 1..=20u64 {
        let o = cms
            .patch(
                "survivor",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"n": i.to_string()}})),
            )
            .await
            .unwrap();
        last_rv = o.metadata.resource_version.unwrap().parse().unwrap();
    }
    s.kill9();
    s.restart();
    let c = client(&s).await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    assert_eq!(
        n_of(&cms.get("survivor").await.unwrap()),
        20,
        "every acknowledged change survives kill -9"
    );
    for i in 21..=25u64 {
        let o = cms
            .patch(
                "survivor",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"n": i.to_string()}})),
            )
            .await
            .unwrap();
        let rv: u64 = o.metadata.resource_version.unwrap().parse().unwrap();
        assert!(rv > last_rv, "resourceVersion only grows across restarts");
        last_rv = rv;
    }
    let seen = watch_counters(cms, "survivor", rv0, 25, Duration::from_secs(30)).await;
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watch_ends_initial_events_and_sends_bookmarks() {
    let (_dir, s) = start();
    let c = client(&s).await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    for i in 0..3 {
        let mut cm = counter_cm(&format!("s-{i}"), i);
        cm.metadata.labels = Some([("app".to_string(), "x".to_string())].into());
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    cms.create(&PostParams::default(), &counter_cm("unlabelled", 9))
        .await
        .unwrap();
    let wp = WatchParams::streaming_lists().labels("app=x").timeout(60);
    let mut stream = cms.watch(&wp, "").await.unwrap().boxed();
    let mut added = Vec::new();
    let mut initial_end = false;
    let mut periodic = false;
    // Bookmarks come every WATCH_BOOKMARK_INTERVAL (10 s) on a quiet stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !periodic {
        let ev = tokio::time::timeout_at(deadline, stream.try_next())
            .await
            .expect("no bookmark in time")
            .unwrap()
            .unwrap();
        match ev {
            WatchEvent::Added(o) => added.push(o.metadata.name.unwrap()),
            WatchEvent::Bookmark(b)
                if b.metadata
                    .annotations
                    .get("k8s.io/initial-events-end")
                    .map(String::as_str)
                    == Some("true") =>
            {
                initial_end = true
            }
            WatchEvent::Bookmark(b) => {
                assert!(initial_end, "the initial-events-end bookmark comes first");
                assert!(!b.metadata.resource_version.is_empty());
                periodic = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, ["s-0", "s-1", "s-2"]);
}
