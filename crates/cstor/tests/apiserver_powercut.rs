//! Power loss under the API server, end to end through the real binary: `cstor apiserver`
//! keeps its data dir (store.redb, CA, token, kubeconfig) inside a cstor-powercut mount
//! (unsynced writes live only in memory; a cut keeps or drops each unsynced 4 KiB sector
//! by a seeded draw). Eight kube-rs clients create, merge-patch and delete ConfigMaps of
//! their own, one request at a time each, while the power goes off at a random moment;
//! the server is SIGKILLed (the cut froze its files already), the power comes back and
//! the server restarts on the surviving files (redb recovers its last commit). Then:
//! every write that got a 2xx reply is there (a later, unanswered write of the same object
//! may be there instead), nothing else is; no resourceVersion a client was given is above
//! the server's; the next write's resourceVersion is above all of them. Rounds build on
//! the same data dir, so each restart recovers a store that was itself recovered.
//!
//! CI: `CI_CUTS` cuts (about 30 s); CSTOR_POWERCUT_API_CUTS=N for more. A failure prints
//! the seed; CSTOR_POWERCUT_SEED replays the cut timing and sector draws (not the thread
//! timing).

mod apiserver_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiserver_support::{free_port, ApiServer};
use cstor_powercut::{seed_base, PowerCut, Rng, SEED_ENV};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

const CI_CUTS: u64 = 20;
const CLIENTS: usize = 8;
/// Objects per client at most (creates stop, patches and deletes go on).
const PER_CLIENT: u64 = 12;

/// What the clients were told, per object name: the value the last acknowledged write
/// left (None: absent), and the write in flight when the power went (Some(None): a
/// delete).
#[derive(Debug, Default, Clone)]
struct Obj {
    acked: Option<u64>,
    inflight: Option<Option<u64>>,
}

#[derive(Debug, Default)]
struct Model {
    objects: BTreeMap<String, Obj>,
    /// Highest resourceVersion in any 2xx reply.
    max_rv: u64,
    acked_writes: u64,
}

async fn client(s: &ApiServer) -> Client {
    let kc = kube::config::Kubeconfig::read_from(s.kubeconfig()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

fn value_of(cm: &ConfigMap) -> Option<u64> {
    cm.data.as_ref()?.get("n")?.parse().ok()
}

fn rv_of(cm: &ConfigMap) -> u64 {
    cm.metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// One client's loop over its own objects until `stop`: each op is recorded in flight
/// before it is sent and acknowledged on a 2xx reply.
async fn writer(
    api: Api<ConfigMap>,
    c: usize,
    seed: u64,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng::new(seed ^ ((c as u64 + 1) << 40));
    while !stop.load(Ordering::SeqCst) {
        let n = rng.below(PER_CLIENT);
        let name = format!("c{c}-{n}");
        let current = model
            .lock()
            .unwrap()
            .objects
            .get(&name)
            .and_then(|o| o.acked);
        let next = match current {
            Some(_) if rng.below(6) == 0 => None,
            Some(v) => Some(v + 1),
            None => Some(1),
        };
        model
            .lock()
            .unwrap()
            .objects
            .entry(name.clone())
            .or_default()
            .inflight = Some(next);
        let reply = match (current, next) {
            (None, Some(v)) => {
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": name}, "data": {"n": v.to_string()}
                }))
                .unwrap();
                api.create(&PostParams::default(), &cm)
                    .await
                    .map(|o| rv_of(&o))
            }
            (Some(_), Some(v)) => api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"n": v.to_string()}})),
                )
                .await
                .map(|o| rv_of(&o)),
            (_, None) => api.delete(&name, &DeleteParams::default()).await.map(|_| 0),
        };
        match reply {
            Ok(rv) => {
                let mut m = model.lock().unwrap();
                m.max_rv = m.max_rv.max(rv);
                m.acked_writes += 1;
                let o = m.objects.get_mut(&name).unwrap();
                o.acked = next;
                o.inflight = None;
            }
            // The power is off or the server gone: the op stays in flight, unknown.
            Err(_) => return,
        }
    }
}

/// Checks the restarted server against the model; returns violations and adopts what is
/// there as the new acknowledged state.
async fn check(api: &Api<ConfigMap>, model: &mut Model, seed: u64) -> Vec<String> {
    let list = api.list(&ListParams::default()).await.unwrap();
    let list_rv: u64 = list
        .metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap();
    let mut bad = Vec::new();
    if list_rv < model.max_rv {
        bad.push(format!(
            "seed {seed}: the server's resourceVersion {list_rv} is below an acknowledged {}",
            model.max_rv
        ));
    }
    let mut got: BTreeMap<String, Option<u64>> = BTreeMap::new();
    for cm in &list.items {
        let name = cm.metadata.name.clone().unwrap_or_default();
        if rv_of(cm) > list_rv {
            bad.push(format!(
                "seed {seed}: {name} has a resourceVersion above the list's"
            ));
        }
        got.insert(name, value_of(cm));
    }
    for (name, o) in &mut model.objects {
        let now = got.remove(name).map(|v| v.unwrap_or(0));
        let ok = now == o.acked || o.inflight.is_some_and(|f| f == now);
        if !ok {
            bad.push(format!(
                "seed {seed}: {name} is {now:?}; acknowledged {:?}, in flight {:?}",
                o.acked, o.inflight
            ));
        }
        o.acked = now;
        o.inflight = None;
    }
    for name in got.keys() {
        if name.starts_with('c') {
            bad.push(format!("seed {seed}: {name} exists but was never written"));
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_power_cuts() {
    let Some(pc) = PowerCut::for_test("acknowledged_writes_survive_power_cuts") else {
        return;
    };
    let cuts: u64 = std::env::var("CSTOR_POWERCUT_API_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CI_CUTS);
    let base = seed_base(0xa915_0000);
    let logs = tempfile::tempdir().unwrap();
    let data = pc.path().join("api");
    let mut server = tokio::task::block_in_place(|| {
        ApiServer::start_logged(&data, free_port(), &logs.path().join("api.log"))
    });
    let mut model = Model::default();
    let mut violations = Vec::new();
    for round in 0..cuts {
        let seed = base + round;
        let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
        if round > 0 {
            violations.extend(check(&api, &mut model, seed - 1).await);
            // The next write is ordered after everything acknowledged before the cut.
            let cm: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": format!("probe{round}")}}))
                    .unwrap();
            let rv = rv_of(&api.create(&PostParams::default(), &cm).await.unwrap());
            if rv <= model.max_rv {
                violations.push(format!(
                    "seed {seed}: a write after the restart got resourceVersion {rv}, not above the acknowledged {}",
                    model.max_rv
                ));
            }
            model.max_rv = rv;
        }
        let shared = Arc::new(Mutex::new(std::mem::take(&mut model)));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| tokio::spawn(writer(api.clone(), c, seed, shared.clone(), stop.clone())))
            .collect();
        let mut rng = Rng::new(seed);
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
        let report = pc.cut(seed);
        stop.store(true, Ordering::SeqCst);
        tokio::task::block_in_place(|| server.kill9());
        for t in tasks {
            t.await.unwrap();
        }
        pc.power_on();
        model = Arc::try_unwrap(shared).unwrap().into_inner().unwrap();
        eprintln!(
            "round {round} (seed {seed}): {} acknowledged writes so far, cut {report:?}",
            model.acked_writes
        );
        tokio::task::block_in_place(|| server.restart());
    }
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    violations.extend(check(&api, &mut model, base + cuts - 1).await);
    assert!(
        model.acked_writes > cuts * 10,
        "too few writes were acknowledged ({}): the workload did not run",
        model.acked_writes
    );
    assert!(
        violations.is_empty(),
        "{} violations ({SEED_ENV}={base} replays):\n{}",
        violations.len(),
        violations.join("\n")
    );
}
