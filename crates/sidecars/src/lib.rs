//! cstor-sidecars: the CSI sidecars of the controller Deployment, embedded (`cstor
//! sidecars`, run by `cstor up` next to `cstor csi --mode controller`): gRPC clients of
//! the driver's socket and Kubernetes API clients with the documented semantics of
//! kubernetes-csi's external-provisioner ([`provisioner`]), external-resizer
//! ([`resizer`]), external-attacher ([`attacher`]), external-snapshotter's
//! csi-snapshotter ([`snapshotter`]) and its common snapshot-controller
//! ([`snapshot_controller`]), so that on a real cluster the real components replace it
//! and nothing else changes (docs/csi.md § Sidecars).
//!
//! Owns: the decisions (pure functions of a listed [`World`], unit-tested) and the loop
//! that carries them out ([`run`]): each pass lists the objects, plans, writes what needs
//! no call and starts the CSI calls that are due, one per object at a time, each retried
//! with exponential backoff while it fails (the sidecars' `--retry-interval-start` 1 s
//! doubling to `--retry-interval-max`). A call's answer is turned into writes by the
//! same pure functions.
//!
//! With `--leader-election` each sidecar acts only while this process holds its Lease
//! ([`leader`]), so two processes can run.
//!
//! Invariants: only the driver creates or deletes volumes (through its gRPC interface);
//! the objects written here are the ones the real sidecars write (PVs, finalizers,
//! events, VolumeSnapshotContents and the VolumeSnapshots' status). Never: reads or
//! writes cstor's own objects (CVCs and friends are the driver's and the controller's);
//! writes the answer of a call made as a sidecar whose Lease it no longer holds.
//! Shutdown: [`run`] returns when `stop` resolves; calls in flight are dropped (the
//! driver's RPCs are idempotent, the next start repeats them).

pub mod attacher;
pub mod leader;
pub mod provisioner;
pub mod resizer;
pub mod snapshot_controller;
pub mod snapshotter;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cstor_controller::exec::Executor;
use cstor_controller::{Action, World};
use cstor_csi::pb::controller_client::ControllerClient;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::Client;
use leader::{Leadership, Part};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// What can stop the sidecars.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kubeconfig could not be used.
    #[error(transparent)]
    Kubeconfig(#[from] cstor_controller::Error),
    /// The in-cluster configuration could not be used.
    #[error("in-cluster configuration: {0}")]
    InferConfig(#[source] kube::config::InferConfigError),
    /// The CSI endpoint is not a usable URI.
    #[error("--csi-endpoint {endpoint}: {why}")]
    Endpoint {
        /// The endpoint given.
        endpoint: String,
        /// Why it cannot be used.
        why: String,
    },
    /// A call to the API server failed.
    #[error("{op}: {source}")]
    Api {
        /// The call.
        op: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
}

/// Settings of `cstor sidecars`.
#[derive(Clone, Debug)]
pub struct Config {
    /// The driver's controller socket: `unix:///PATH`.
    pub csi_endpoint: String,
    /// Kubeconfig; None: the in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
    /// Time between passes.
    pub interval: Duration,
    /// First delay after a failed call (doubles per failure).
    pub retry_start: Duration,
    /// Longest delay between attempts.
    pub retry_max: Duration,
    /// How long one CSI call may take (the sidecars' `--timeout`).
    pub timeout: Duration,
    /// How often the attacher compares the VolumeAttachments with the driver's
    /// ListVolumes (the external-attacher's `--reconcile-sync`).
    pub reconcile_sync: Duration,
    /// `--leader-election`; None: this process acts as every sidecar.
    pub leader_election: Option<leader::Settings>,
}

impl Config {
    /// The defaults for `endpoint`.
    pub fn new(csi_endpoint: String) -> Config {
        Config {
            csi_endpoint,
            kubeconfig: None,
            interval: Duration::from_secs(1),
            retry_start: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
            reconcile_sync: Duration::from_secs(60),
            leader_election: None,
        }
    }
}

/// csi-lib-utils' sanitizeName, which the sidecars' Lease names and the attacher's
/// finalizer go through: every character but `[a-zA-Z0-9-]` becomes `-`, and a trailing
/// `-` gets an `X`.
pub fn sanitize_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.ends_with('-') {
        s.push('X');
    }
    s
}

/// A gRPC status as the Go sidecars print it (their events carry this text).
pub fn rpc_error(s: &tonic::Status) -> String {
    format!("rpc error: code = {:?} desc = {}", s.code(), s.message())
}

/// Backoff bookkeeping of the calls: one in flight per key, and after a failure the next
/// attempt only once its delay passed.
#[derive(Debug, Default)]
pub struct Calls {
    inflight: HashSet<String>,
    failures: HashMap<String, (u32, Instant)>,
}

impl Calls {
    /// Whether a call for `key` may start now.
    pub fn due(&self, key: &str, now: Instant) -> bool {
        !self.inflight.contains(key) && self.failures.get(key).is_none_or(|(_, at)| now >= *at)
    }

    /// Records that a call for `key` started.
    pub fn start(&mut self, key: &str) {
        self.inflight.insert(key.to_owned());
    }

    /// Records the end of the call for `key`: success forgets it, a failure delays the
    /// next attempt by `start * 2^(failures-1)`, at most `max`.
    pub fn finish(&mut self, key: &str, ok: bool, now: Instant, start: Duration, max: Duration) {
        self.inflight.remove(key);
        if ok {
            self.failures.remove(key);
            return;
        }
        let n = self.failures.get(key).map_or(0, |(n, _)| *n);
        let delay = start.checked_mul(1u32 << n.min(20)).unwrap_or(max).min(max);
        self.failures.insert(key.to_owned(), (n + 1, now + delay));
    }

    /// Forgets keys no pass asks for any more (their objects are gone or done).
    pub fn retain(&mut self, wanted: &HashSet<String>) {
        self.failures.retain(|k, _| wanted.contains(k));
    }
}

/// The end of a call: its key, the sidecar that made it, whether it succeeded, and the
/// writes it asks for (or the attacher's view of the driver's publishes).
struct Done {
    key: String,
    part: Part,
    ok: bool,
    actions: Vec<Action>,
    published: Option<HashMap<String, Vec<String>>>,
}

async fn list<K>(client: &Client, what: &str) -> Result<Vec<K>, Error>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|e| Error::Api {
            op: format!("list {what}"),
            source: e,
        })
}

/// The snapshot kinds as JSON; none when they are not served (no snapshot CRDs).
async fn list_json(client: &Client, group: &str, kind: &str, plural: &str) -> Vec<Value> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural);
    Api::<DynamicObject>::all_with(client.clone(), &ar)
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The Kubernetes objects the sidecars look at (no cstor objects).
pub async fn load(client: &Client) -> Result<World, Error> {
    let pvcs = Api::<PersistentVolumeClaim>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::Api {
            op: "list persistentvolumeclaims".into(),
            source: e,
        })?
        .items;
    let snap = "snapshot.storage.k8s.io";
    Ok(World {
        pvcs,
        pvs: list::<PersistentVolume>(client, "persistentvolumes").await?,
        scs: list::<StorageClass>(client, "storageclasses").await?,
        vss: list_json(client, snap, "VolumeSnapshot", "volumesnapshots").await,
        vscontents: list_json(
            client,
            snap,
            "VolumeSnapshotContent",
            "volumesnapshotcontents",
        )
        .await,
        vsclasses: list_json(client, snap, "VolumeSnapshotClass", "volumesnapshotclasses").await,
        now: Some(k8s_openapi::jiff::Timestamp::now()),
        ..World::default()
    })
}

async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, Error> {
    match kubeconfig {
        Some(p) => Ok(cstor_controller::client(p).await?),
        None => Client::try_default().await.map_err(|e| match e {
            kube::Error::InferConfig(e) => Error::InferConfig(e),
            other => Error::Api {
                op: "in-cluster client".into(),
                source: other,
            },
        }),
    }
}

/// The driver's controller service (connected lazily: a driver starting after us is
/// found by the first call, which answers UNAVAILABLE until then).
pub fn csi_client(endpoint: &str) -> Result<ControllerClient<Channel>, Error> {
    let bad = |why: String| Error::Endpoint {
        endpoint: endpoint.to_owned(),
        why,
    };
    if !endpoint.starts_with("unix://") {
        return Err(bad("must be unix:///PATH".into()));
    }
    let ep = Endpoint::from_shared(endpoint.to_owned()).map_err(|e| bad(e.to_string()))?;
    Ok(ControllerClient::new(ep.connect_lazy()))
}

/// The loop's state: the clients, the event bookkeeping, the calls.
struct Runner {
    config: Config,
    client: Client,
    csi: ControllerClient<Channel>,
    exec: Executor,
    calls: Calls,
    identity: String,
    /// Volumes whose CreateVolume was sent and has not succeeded yet: volume -> claim uid.
    started: HashMap<String, String>,
    tx: mpsc::UnboundedSender<Done>,
    leadership: Leadership,
    /// The attacher's reconcile: when ListVolumes was last asked for, and its answer
    /// (volume -> nodes) until the next pass uses it once.
    reconciled: Option<Instant>,
    published: Option<HashMap<String, Vec<String>>>,
}

impl Runner {
    /// Starts `call` of sidecar `part` under `key` unless one is in flight or backing off.
    fn spawn<F>(&mut self, key: String, wanted: &mut HashSet<String>, part: Part, call: F) -> bool
    where
        F: Future<Output = (bool, Vec<Action>)> + Send + 'static,
    {
        wanted.insert(key.clone());
        if !self.calls.due(&key, Instant::now()) {
            return false;
        }
        self.calls.start(&key);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let (ok, actions) = call.await;
            let _ = tx.send(Done {
                key,
                part,
                ok,
                actions,
                published: None,
            });
        });
        true
    }

    /// A call ended: its bookkeeping, then its writes, unless this process stopped
    /// acting as its sidecar meanwhile (the new holder decides afresh).
    async fn done(&mut self, d: Done) {
        self.finish(&d);
        if !self.leadership.leads(d.part) {
            tracing::info!(
                "{}: not the {:?} any more, its answer is dropped",
                d.key,
                d.part
            );
            return;
        }
        if d.published.is_some() {
            self.published = d.published;
        }
        self.exec.run(&self.client, d.actions).await;
    }

    fn finish(&mut self, d: &Done) {
        if d.ok {
            if let Some(v) = d
                .key
                .strip_prefix("create/")
                .or_else(|| d.key.strip_prefix("abandon/"))
            {
                self.started.remove(v);
            }
        }
        let c = &self.config;
        self.calls
            .finish(&d.key, d.ok, Instant::now(), c.retry_start, c.retry_max);
    }

    async fn pass(&mut self) -> Result<(), Error> {
        let mut wanted = HashSet::new();
        if !self.leadership.any() {
            self.calls.retain(&wanted);
            return Ok(());
        }
        let world = load(&self.client).await?;
        let leads = |p: Part| self.leadership.leads(p);
        let (provision, resize, bind, snapshot, attach) = (
            leads(Part::Provisioner),
            leads(Part::Resizer),
            leads(Part::SnapshotController),
            leads(Part::Snapshotter),
            leads(Part::Attacher),
        );
        if provision {
            self.provision_pass(&world, &mut wanted).await;
        }
        if resize {
            self.resize_pass(&world, &mut wanted).await;
        }
        if bind {
            self.exec
                .run(&self.client, snapshot_controller::plan(&world))
                .await;
        }
        if snapshot {
            self.snapshot_pass(&world, &mut wanted).await;
        }
        if attach {
            self.attach_pass(&world, &mut wanted).await?;
        }
        self.calls.retain(&wanted);
        Ok(())
    }

    /// The external-provisioner's part of a pass.
    async fn provision_pass(&mut self, world: &World, wanted: &mut HashSet<String>) {
        let part = Part::Provisioner;
        let plan = provisioner::plan(world);
        self.exec.run(&self.client, plan.actions).await;
        for req in provisioner::abandoned(world, &self.started) {
            let key = format!("abandon/{}", req.volume_id);
            if self
                .calls
                .inflight
                .contains(&format!("create/{}", req.volume_id))
            {
                continue; // its CreateVolume answers first
            }
            let (mut csi, timeout) = (self.csi.clone(), self.config.timeout);
            self.spawn(key, wanted, part, async move {
                let answer = bounded(timeout, csi.delete_volume(req.clone())).await;
                if let Err(s) = &answer {
                    tracing::warn!(
                        "deleting volume {} of a deleted claim: {}",
                        req.volume_id,
                        crate::rpc_error(s)
                    );
                }
                (answer.is_ok(), Vec::new())
            });
        }
        for p in plan.provisions {
            let key = format!("create/{}", p.request.name);
            self.started.insert(
                p.request.name.clone(),
                p.claim.metadata.uid.clone().unwrap_or_default(),
            );
            let (mut csi, timeout, identity) =
                (self.csi.clone(), self.config.timeout, self.identity.clone());
            let event = provisioner::provisioning(&p.claim);
            let started = self.spawn(key, wanted, part, async move {
                let answer = bounded(timeout, csi.create_volume(p.request.clone()))
                    .await
                    .and_then(|r| {
                        r.volume.ok_or_else(|| {
                            tonic::Status::internal("CreateVolume returned no volume")
                        })
                    });
                let ok = answer.is_ok();
                (ok, provisioner::provisioned(&p, answer, &identity))
            });
            if started {
                self.exec.run(&self.client, vec![event]).await;
            }
        }
        for r in plan.reclaims {
            let key = format!("delete/{}", r.request.volume_id);
            let (mut csi, timeout) = (self.csi.clone(), self.config.timeout);
            self.spawn(key, wanted, part, async move {
                let answer = bounded(timeout, csi.delete_volume(r.request.clone()))
                    .await
                    .map(|_| ());
                let ok = answer.is_ok();
                (ok, provisioner::reclaimed(&r, answer))
            });
        }
    }

    /// The external-resizer's part of a pass.
    async fn resize_pass(&mut self, world: &World, wanted: &mut HashSet<String>) {
        let plan = resizer::plan(world);
        self.exec.run(&self.client, plan.actions).await;
        for e in plan.expansions {
            let key = format!("expand/{}", e.request.volume_id);
            let (mut csi, timeout) = (self.csi.clone(), self.config.timeout);
            let before = resizer::resizing(&e);
            let started = self.spawn(key, wanted, Part::Resizer, async move {
                let answer =
                    bounded(timeout, csi.controller_expand_volume(e.request.clone())).await;
                let ok = answer.is_ok();
                (ok, resizer::expanded(&e, answer))
            });
            if started {
                self.exec.run(&self.client, before).await;
            }
        }
    }

    /// The csi-snapshotter's part of a pass.
    async fn snapshot_pass(&mut self, world: &World, wanted: &mut HashSet<String>) {
        let plan = snapshotter::plan(world);
        self.exec.run(&self.client, plan.actions).await;
        let at = World {
            now: world.now,
            ..World::default()
        };
        for call in plan.calls {
            let (client, mut csi, timeout, at) = (
                self.client.clone(),
                self.csi.clone(),
                self.config.timeout,
                at.clone(),
            );
            self.spawn(call.key(), wanted, Part::Snapshotter, async move {
                let answer = snapshot_call(&client, &mut csi, timeout, &call).await;
                if let Err(s) = &answer {
                    tracing::warn!("{}: {}", call.key(), crate::rpc_error(s));
                }
                let ok = snapshotter::settled(&answer);
                (ok, snapshotter::answered(&at, &call, answer))
            });
        }
    }
}

/// The data of Secret `namespace/name` as the sidecars pass secrets to the driver
/// (values as UTF-8 text); each sidecar words a failure as its real counterpart does.
pub(crate) async fn secret_data(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<HashMap<String, String>, kube::Error> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect())
}

/// [`secret_data`] as the snapshotter reports a failure.
async fn read_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<HashMap<String, String>, tonic::Status> {
    secret_data(client, namespace, name).await.map_err(|e| {
        tonic::Status::unavailable(format!(
            "error getting secret {name} in namespace {namespace}: {e}"
        ))
    })
}

/// One snapshotter call: its secrets read, its mark written, then the RPC.
async fn snapshot_call(
    client: &Client,
    csi: &mut ControllerClient<Channel>,
    timeout: Duration,
    call: &snapshotter::Call,
) -> Result<snapshotter::Answer, tonic::Status> {
    use snapshotter::{Answer, Request};
    let call = match &call.secret {
        Some((ns, name)) => call
            .clone()
            .with_secrets(read_secret(client, ns, name).await?),
        None => call.clone(),
    };
    if let Some(mark) = &call.before {
        if Executor::default().run(client, vec![mark.clone()]).await > 0 {
            return Err(tonic::Status::unavailable(
                "failed to add the VolumeSnapshotBeingCreated annotation on the content",
            ));
        }
    }
    match call.request {
        Request::Create(r) => bounded(timeout, csi.create_snapshot(r))
            .await?
            .snapshot
            .map(Answer::Snapshot)
            .ok_or_else(|| tonic::Status::internal("CreateSnapshot returned no snapshot")),
        Request::Status(r) => {
            let id = r.snapshot_id.clone();
            bounded(timeout, csi.list_snapshots(r))
                .await?
                .entries
                .into_iter()
                .find_map(|e| e.snapshot)
                .map(Answer::Snapshot)
                .ok_or_else(|| {
                    tonic::Status::not_found(format!("can not find snapshot for snapshotID {id}"))
                })
        }
        Request::Delete(r) => bounded(timeout, csi.delete_snapshot(r))
            .await
            .map(|_| Answer::Deleted),
    }
}

/// One CSI call, bounded by `timeout` (DEADLINE_EXCEEDED after it).
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {} s",
            timeout.as_secs()
        ))),
    }
}

/// Runs the sidecars until `stop` resolves.
pub async fn run(config: Config, stop: impl Future<Output = ()>) -> Result<(), Error> {
    let csi = csi_client(&config.csi_endpoint)?;
    let client = client(config.kubeconfig.as_deref()).await?;
    let leadership = match &config.leader_election {
        Some(settings) => Leadership::start(&client, settings),
        None => Leadership::always(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut r = Runner {
        identity: format!(
            "{started}-{}-{}",
            uuid::Uuid::new_v4().as_u128() % 10_000,
            cstor_api::names::CSI_DRIVER_NAME
        ),
        config,
        client,
        csi,
        exec: Executor::default(),
        calls: Calls::default(),
        started: HashMap::new(),
        tx,
        leadership,
        reconciled: None,
        published: None,
    };
    tokio::pin!(stop);
    loop {
        if let Err(e) = r.pass().await {
            tracing::warn!("{e}");
        }
        let interval = r.config.interval;
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
            Some(d) = rx.recv() => r.done(d).await,
        }
        while let Ok(d) = rx.try_recv() {
            r.done(d).await;
        }
    }
}

#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
