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

/// Creates a test.cstor.io/v1 CRD and returns its objects in namespace default.
async fn crd_api(c: &Client, crd_json: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let crd: CustomResourceDefinition = serde_json::from_str(crd_json).unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let ar = ApiResource {
        group: "test.cstor.io".into(),
        version: "v1".into(),
        api_version: "test.cstor.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::namespaced_with(c.clone(), "default", &ar)
}

async fn widgets(c: &Client) -> Api<DynamicObject> {
    crd_api(c, WIDGET_CRD, "Widget", "widgets").await
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

/// Polls `check` every 50 ms until it returns true; panics with `what` after `deadline`.
async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    while !check().await {
        assert!(tokio::time::Instant::now() < end, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug)]
struct ReconcileError(String);

impl std::fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReconcileError {}

#[derive(Default)]
struct Seen {
    applied: std::sync::Mutex<Vec<String>>,
    cleaned: std::sync::Mutex<Vec<String>>,
}

/// kube-rs's `finalizer()` adds the first finalizer with a JSON patch that tests
/// `/metadata/finalizers` against null, which must succeed on an object without
/// finalizers (422 here made every finalizer-using Controller fail its first reconcile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_with_finalizer_helper_through_create_update_delete() {
    use kube::runtime::controller::{Action, Controller};
    use kube::runtime::finalizer::{finalizer, Event};
    use kube::runtime::watcher;
    use std::sync::Arc;
    const FINALIZER: &str = "test.cstor.openebs.io/cleanup";
    let (_dir, s) = start();
    let c = client(&s).await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let seen = Arc::new(Seen::default());
    let reconcile = {
        let cms = cms.clone();
        move |cm: Arc<ConfigMap>, seen: Arc<Seen>| {
            let cms = cms.clone();
            async move {
                finalizer(&cms, FINALIZER, cm, |ev| async move {
                    match ev {
                        Event::Apply(cm) => {
                            seen.applied.lock().unwrap().push(n_of(&cm).to_string())
                        }
                        Event::Cleanup(cm) => seen
                            .cleaned
                            .lock()
                            .unwrap()
                            .push(cm.metadata.name.clone().unwrap_or_default()),
                    }
                    Ok::<_, ReconcileError>(Action::await_change())
                })
                .await
            }
        }
    };
    let controller = tokio::spawn(
        Controller::new(cms.clone(), watcher::Config::default())
            .run(
                reconcile,
                |_, _, _| Action::requeue(Duration::from_millis(200)),
                seen.clone(),
            )
            .for_each(|_| async {}),
    );
    cms.create(&PostParams::default(), &counter_cm("fin", 1))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "finalizer added and applied",
        || async {
            let cm = cms.get("fin").await.unwrap();
            cm.metadata.finalizers.unwrap_or_default() == [FINALIZER]
                && seen.applied.lock().unwrap().contains(&"1".to_string())
        },
    )
    .await;
    cms.patch(
        "fin",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"n": "2"}})),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(20), "update reconciled", || async {
        seen.applied.lock().unwrap().contains(&"2".to_string())
    })
    .await;
    cms.delete("fin", &Default::default()).await.unwrap();
    eventually(
        Duration::from_secs(20),
        "cleanup ran and object gone",
        || async {
            cms.get_opt("fin").await.unwrap().is_none()
                && seen.cleaned.lock().unwrap().as_slice() == ["fin"]
        },
    )
    .await;
    controller.abort();
}

/// Merge, strategic and apply patches without a resourceVersion are retried inside the
/// server as kube-apiserver's GuaranteedUpdate does: 50 at once, none gets 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_patches_without_resource_version_never_conflict() {
    let (_dir, s) = start();
    let c = client(&s).await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    cms.create(&PostParams::default(), &counter_cm("hot", 0))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let cms = cms.clone();
            tokio::spawn(async move {
                let key = format!("k{i}");
                let patch = json!({"data": {key.clone(): i.to_string()}});
                let r = match i % 3 {
                    0 => {
                        cms.patch("hot", &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                    }
                    1 => {
                        cms.patch("hot", &PatchParams::default(), &Patch::Strategic(&patch))
                            .await
                    }
                    _ => {
                        let applied = json!({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "hot"}, "data": {key: i.to_string()}});
                        cms.patch(
                            "hot",
                            &PatchParams::apply(&format!("m{i}")),
                            &Patch::Apply(&applied),
                        )
                        .await
                    }
                };
                r.map(|_| ()).map_err(|e| format!("patch {i}: {e}"))
            })
        })
        .collect();
    let mut errors = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            errors.push(e);
        }
    }
    assert!(
        errors.is_empty(),
        "{} patches failed, first: {:?}",
        errors.len(),
        errors.first()
    );
    let cm = cms.get("hot").await.unwrap();
    let data = cm.data.unwrap();
    for i in 0..50 {
        assert_eq!(
            data.get(&format!("k{i}")),
            Some(&i.to_string()),
            "patch {i} kept"
        );
    }
}

/// A reflector listing one object per page while objects it already listed are deleted
/// ends equal to a fresh list: every page is served as of the first page's
/// resourceVersion, so the watch started from the last page replays the deletions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_reflector_across_concurrent_deletes_matches_a_fresh_list() {
    use kube::runtime::{reflector, watcher};
    let (_dir, s) = start();
    let c = client(&s).await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    for i in 0..12 {
        let mut cm = counter_cm(&format!("r-{i:02}"), i);
        cm.metadata.labels = Some([("app".to_string(), "r".to_string())].into());
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let (store, writer) = reflector::store::<ConfigMap>();
    let cfg = watcher::Config::default().labels("app=r").page_size(1);
    let mut stream = reflector::reflector(writer, watcher::watcher(cms.clone(), cfg)).boxed();
    let mut deleted = false;
    let mut listed = false;
    let names = |list: Vec<String>| {
        let mut l = list;
        l.sort();
        l
    };
    let work = async {
        loop {
            let ev = stream.try_next().await.unwrap().unwrap();
            if let watcher::Event::InitApply(o) = &ev {
                // The stream is lazy: the next page is fetched only after this returns,
                // so these deletions land between pages.
                if o.metadata.name.as_deref() == Some("r-03") && !deleted {
                    for n in ["r-00", "r-01", "r-08"] {
                        cms.delete(n, &Default::default()).await.unwrap();
                    }
                    deleted = true;
                }
            }
            listed |= matches!(ev, watcher::Event::InitDone);
            if deleted && listed {
                let fresh: Vec<String> = cms
                    .list(&ListParams::default().labels("app=r"))
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .filter_map(|c| c.metadata.name)
                    .collect();
                let cached: Vec<String> = store
                    .state()
                    .iter()
                    .filter_map(|c| c.metadata.name.clone())
                    .collect();
                if names(cached) == names(fresh) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), work)
        .await
        .expect("the reflector never matched a fresh list (a deletion was lost)");
    assert_eq!(store.state().len(), 9);
}

/// A page-by-page list reports the first page's resourceVersion on every page, and
/// `resourceVersionMatch=Exact` lists as of an older resourceVersion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_resource_version_match_exact_and_not_older_than() {
    use kube::api::VersionMatch;
    let (_dir, s) = start();
    let c = client(&s).await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    cms.create(&PostParams::default(), &counter_cm("v", 1))
        .await
        .unwrap();
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    cms.patch(
        "v",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"n": "2"}})),
    )
    .await
    .unwrap();
    let exact = cms
        .list(&ListParams::default().at(&rv).matching(VersionMatch::Exact))
        .await
        .unwrap();
    assert_eq!(
        exact.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    assert_eq!(n_of(&exact.items[0]), 1, "as of the older resourceVersion");
    let newer = cms
        .list(
            &ListParams::default()
                .at(&rv)
                .matching(VersionMatch::NotOlderThan),
        )
        .await
        .unwrap();
    assert_eq!(n_of(&newer.items[0]), 2);
    // A resourceVersion newer than the server's is 504 (core unit test): kube-rs retries
    // 504s with backoff, so it is not asked here.
}

/// The data directory and the store hold Secrets and credentials: owner only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_and_store_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = ApiServer::start(&data, free_port());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&data.join("store.redb")), 0o600, "store");
    for f in ["kubeconfig", "token", "ca.key"] {
        assert_eq!(mode(&data.join(f)) & 0o077, 0, "{f} readable by others");
    }
    drop(s);
}

/// kube::runtime::events::Recorder creates an events.k8s.io/v1 Event and, for a repeat,
/// patches its series; both views of the event storage show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_events_are_created_and_counted() {
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    use kube::Resource;
    let (_dir, s) = start();
    let c = client(&s).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let cm = cms
        .create(&PostParams::default(), &counter_cm("evented", 1))
        .await
        .unwrap();
    let recorder = Recorder::new(
        c.clone(),
        Reporter {
            controller: "cstor-test".into(),
            instance: Some("i-1".into()),
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Reconciled".into(),
        note: Some("all good".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = cm.object_ref(&());
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let events: Api<K8sEvent> = Api::namespaced(c.clone(), "default");
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1, "{:?}", list.items);
    let e = &list.items[0];
    assert_eq!(
        e.regarding.as_ref().unwrap().name.as_deref(),
        Some("evented")
    );
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(e.reporting_controller.as_deref(), Some("cstor-test"));
    let core_events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c, "default");
    let core_list = core_events.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        core_list.items[0].involved_object.name.as_deref(),
        Some("evented")
    );
}

/// A minimal Lease-based elector (client-go's leaderelection rules: take the lease when
/// it is free or expired, renew while holding it, optimistic concurrency decides races)
/// for two candidates: never two leaders at once, and the second takes over after the
/// first stops renewing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lease_candidates_one_leader_at_a_time() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use std::sync::{Arc, Mutex};
    const TTL_S: i32 = 1;
    let (_dir, s) = start();
    let c = client(&s).await;
    let leases: Api<Lease> = Api::namespaced(c, "kube-system");
    /// One attempt; returns the renew time written when this candidate holds the lease.
    async fn try_lead(leases: &Api<Lease>, me: &str) -> Option<Timestamp> {
        let now = Timestamp::now();
        let spec = |transitions: i32| LeaseSpec {
            holder_identity: Some(me.to_string()),
            lease_duration_seconds: Some(TTL_S),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        match leases.get_opt("cstor-lock").await.unwrap() {
            None => {
                let l = Lease {
                    metadata: kube::api::ObjectMeta {
                        name: Some("cstor-lock".into()),
                        ..Default::default()
                    },
                    spec: Some(spec(0)),
                };
                leases
                    .create(&PostParams::default(), &l)
                    .await
                    .ok()
                    .map(|_| now)
            }
            Some(mut l) => {
                let cur = l.spec.clone().unwrap_or_default();
                let held_by_me = cur.holder_identity.as_deref() == Some(me);
                let expired = cur.renew_time.is_none_or(|r| {
                    r.0 + SignedDuration::from_secs(cur.lease_duration_seconds.unwrap_or(0).into())
                        < now
                });
                if !held_by_me && !expired {
                    return None;
                }
                let mut next = spec(cur.lease_transitions.unwrap_or(0) + i32::from(!held_by_me));
                if held_by_me {
                    next.acquire_time = cur.acquire_time;
                }
                l.spec = Some(next);
                // The resourceVersion read above is the precondition: a racing
                // candidate that wrote first makes this 409.
                leases
                    .replace("cstor-lock", &PostParams::default(), &l)
                    .await
                    .ok()
                    .map(|_| now)
            }
        }
    }
    // Leadership terms as each candidate believes them: [renew, renew + ttl).
    let terms: Arc<Mutex<Vec<(String, Timestamp, Timestamp)>>> = Arc::default();
    let run = |me: &'static str, stop_after: Duration| {
        let leases = leases.clone();
        let terms = terms.clone();
        tokio::spawn(async move {
            let end = tokio::time::Instant::now() + stop_after;
            while tokio::time::Instant::now() < end {
                if let Some(t) = try_lead(&leases, me).await {
                    let until = t + SignedDuration::from_secs(TTL_S.into());
                    terms.lock().unwrap().push((me.to_string(), t, until));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let a = run("a", Duration::from_millis(1500));
    let b = run("b", Duration::from_millis(4000));
    a.await.unwrap();
    b.await.unwrap();
    let terms = terms.lock().unwrap().clone();
    let first = &terms[0].0;
    let other = if first == "a" { "b" } else { "a" };
    assert!(
        terms.iter().any(|t| t.0 == other) || first == "b",
        "{terms:?}"
    );
    for x in &terms {
        for y in terms.iter().filter(|y| y.0 != x.0) {
            assert!(
                x.2 <= y.1 || y.2 <= x.1,
                "two leaders at once: {x:?} and {y:?}"
            );
        }
    }
    assert_eq!(
        terms.last().unwrap().0,
        "b",
        "b leads after a stopped: {terms:?}"
    );
}

/// A CRD with a map list (keys node, path with a default), a set list, and a selectable
/// field, as controller-gen writes them.
const GADGET_CRD: &str = r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "gadgets.test.cstor.io"},
  "spec": {"group": "test.cstor.io", "scope": "Namespaced",
    "names": {"kind": "Gadget", "plural": "gadgets", "singular": "gadget", "listKind": "GadgetList"},
    "versions": [{"name": "v1", "served": true, "storage": true,
      "selectableFields": [{"jsonPath": ".spec.color"}],
      "schema": {"openAPIV3Schema": {"type": "object", "properties": {
        "spec": {"type": "object", "properties": {
          "color": {"type": "string"},
          "disks": {"type": "array", "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["node", "path"],
            "items": {"type": "object", "required": ["node"], "properties": {
              "node": {"type": "string"}, "path": {"type": "string", "default": "/dev/sda"},
              "size": {"type": "integer"}}}},
          "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}}}}}}]}}"#;

async fn gadgets(c: &Client) -> Api<DynamicObject> {
    crd_api(c, GADGET_CRD, "Gadget", "gadgets").await
}

fn gadget(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "test.cstor.io/v1", "kind": "Gadget", "metadata": {"name": name}, "spec": spec})
}

fn fields_of(o: &DynamicObject, manager: &str) -> serde_json::Value {
    let mf = o.metadata.managed_fields.clone().unwrap_or_default();
    let e = mf
        .iter()
        .find(|e| e.manager.as_deref() == Some(manager))
        .unwrap_or_else(|| panic!("no entry for {manager}: {mf:?}"));
    serde_json::to_value(&e.fields_v1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_merges_lists_by_list_type_per_manager() {
    let (_dir, s) = start();
    let c = client(&s).await;
    let api = gadgets(&c).await;
    let apply = |m: &'static str, force: bool| {
        let mut p = PatchParams::apply(m);
        p.force = force;
        p
    };
    let a = gadget(
        "g",
        json!({"disks": [{"node": "n1", "size": 1}], "tags": ["a", "shared"]}),
    );
    api.patch("g", &apply("ctrl-a", false), &Patch::Apply(&a))
        .await
        .unwrap();
    let b = gadget(
        "g",
        json!({"disks": [{"node": "n2", "path": "/dev/sdb", "size": 2}], "tags": ["b", "shared"]}),
    );
    let g = api
        .patch("g", &apply("ctrl-b", false), &Patch::Apply(&b))
        .await
        .unwrap();
    assert_eq!(
        g.data["spec"]["disks"],
        json!([{"node": "n1", "path": "/dev/sda", "size": 1},
               {"node": "n2", "path": "/dev/sdb", "size": 2}]),
        "map list merged by key, the key default filled in"
    );
    assert_eq!(g.data["spec"]["tags"], json!(["a", "shared", "b"]));
    let fa = fields_of(&g, "ctrl-a");
    assert_eq!(
        fa["f:spec"]["f:disks"]["k:{\"node\":\"n1\",\"path\":\"/dev/sda\"}"],
        json!({".": {}, "f:node": {}, "f:path": {}, "f:size": {}}),
        "{fa}"
    );
    assert!(fa["f:spec"]["f:tags"].get("v:\"a\"").is_some(), "{fa}");
    // ctrl-b changing ctrl-a's disk size conflicts, naming ctrl-a; forced, it takes the
    // field over.
    let b2 = gadget(
        "g",
        json!({"disks": [{"node": "n2", "path": "/dev/sdb", "size": 2}, {"node": "n1", "size": 5}],
               "tags": ["b", "shared"]}),
    );
    match api
        .patch("g", &apply("ctrl-b", false), &Patch::Apply(&b2))
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 409);
            assert!(
                e.message.contains("conflict with \"ctrl-a\"") && e.message.contains(".size"),
                "{}",
                e.message
            );
        }
        other => panic!("expected 409, got {other:?}"),
    }
    api.patch("g", &apply("ctrl-b", true), &Patch::Apply(&b2))
        .await
        .unwrap();
    // ctrl-a stops applying its disk and tags: the disk stays (ctrl-b owns its size now),
    // tag "a" goes, "shared" stays (ctrl-b applies it too).
    let a2 = gadget("g", json!({"color": "red"}));
    let g = api
        .patch("g", &apply("ctrl-a", false), &Patch::Apply(&a2))
        .await
        .unwrap();
    assert_eq!(
        g.data["spec"]["disks"],
        json!([{"node": "n1", "path": "/dev/sda", "size": 5},
               {"node": "n2", "path": "/dev/sdb", "size": 2}])
    );
    assert_eq!(g.data["spec"]["tags"], json!(["shared", "b"]));
    // An element that omits a key without a default is refused.
    let bad = gadget("g", json!({"disks": [{"size": 1}]}));
    assert_eq!(
        api_code(
            api.patch("g", &apply("ctrl-c", false), &Patch::Apply(&bad))
                .await
        ),
        422
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_merges_pod_containers_and_ports_by_key() {
    let (_dir, s) = start();
    let c = client(&s).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.clone(), "default");
    let pod = |containers: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
               "spec": {"containers": containers}})
    };
    let a = pod(json!([{"name": "app", "image": "app:1",
                        "ports": [{"containerPort": 53}], "env": [{"name": "A", "value": "1"}]}]));
    pods.patch("p", &PatchParams::apply("ctrl-a"), &Patch::Apply(&a))
        .await
        .unwrap();
    let b = pod(json!([
        {"name": "app", "ports": [{"containerPort": 53, "protocol": "UDP"}], "env": [{"name": "B", "value": "2"}]},
        {"name": "sidecar", "image": "side:1"}]));
    let p = pods
        .patch("p", &PatchParams::apply("ctrl-b"), &Patch::Apply(&b))
        .await
        .unwrap();
    let spec = p.spec.unwrap();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "sidecar"]);
    let app = &spec.containers[0];
    assert_eq!(app.image.as_deref(), Some("app:1"));
    let ports: Vec<(i32, Option<&str>)> = app
        .ports
        .iter()
        .flatten()
        .map(|p| (p.container_port, p.protocol.as_deref()))
        .collect();
    assert_eq!(ports, [(53, Some("TCP")), (53, Some("UDP"))]);
    let env: Vec<&str> = app.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(env, ["A", "B"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_selectable_fields_filter_lists_and_watches() {
    let (_dir, s) = start();
    let c = client(&s).await;
    let api = gadgets(&c).await;
    for (n, color) in [("r1", "red"), ("b1", "blue"), ("r2", "red")] {
        let g = gadget(n, json!({"color": color}));
        api.patch(n, &PatchParams::apply("t"), &Patch::Apply(&g))
            .await
            .unwrap();
    }
    let reds = api
        .list(&ListParams::default().fields("spec.color=red"))
        .await
        .unwrap();
    let names: Vec<String> = reds
        .items
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    assert_eq!(names, ["r1", "r2"]);
    let not_red = api
        .list(&ListParams::default().fields("spec.color!=red"))
        .await
        .unwrap();
    assert_eq!(not_red.items.len(), 1);
    // A field the CRD does not declare selectable is a 400.
    assert_eq!(
        api_code(api.list(&ListParams::default().fields("spec.size=1")).await),
        400
    );
    // A watch sees only objects in the selection, and a DELETED when one leaves it.
    let rv = reds.metadata.resource_version.unwrap();
    let mut w = api
        .watch(&WatchParams::default().fields("spec.color=red"), &rv)
        .await
        .unwrap()
        .boxed();
    for (n, color) in [("b1", "green"), ("r1", "blue"), ("b1", "red")] {
        let g = gadget(n, json!({"color": color}));
        api.patch(n, &PatchParams::apply("t"), &Patch::Apply(&g))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(30), w.try_next())
            .await
            .expect("watch event in time")
            .unwrap()
            .expect("watch open");
        match ev {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => seen.push(format!("MODIFIED {}", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(seen, ["DELETED r1", "ADDED b1"]);
}
