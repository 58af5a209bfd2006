//! cstor-controller: the cluster controller of cstor (`cstor controller`), the part of
//! cStor's cspc-operator, cvc-operator, CSI controller, external-provisioner, -resizer
//! and -snapshotter that decides; the node agents (`cstor node`) act on its objects.
//!
//! Owns: CSPC -> CStorPoolInstances + BlockDeviceClaims ([`cspc`]); StorageClass + PVC ->
//! CStorVolumeConfig -> PV ([`provision`], only with
//! [`Settings::provision_without_csi`]: normally the CSI driver's CreateVolume makes the
//! CVC, called by the external-provisioner or `cstor sidecars`); CVC -> CStorVolume + CStorVolumeReplicas,
//! scale up/down, expansion ([`volume`], placement in [`placement`]); target moves off
//! dead nodes ([`target_move`]); replacement of replicas on dead nodes ([`replace`]);
//! VolumeSnapshot -> CStorSnapshot + VolumeSnapshotContent ([`snapshot`], also only with
//! [`Settings::provision_without_csi`]: normally the snapshot controller and
//! csi-snapshotter, or `cstor sidecars`, bind VolumeSnapshots and the CSI driver's
//! CreateSnapshot makes the CStorSnapshot); leader election ([`leader`]).
//! The objects are the interface with the agents (`/work/notes/contract5.md`, summarised
//! in `docs/controller.md`).
//!
//! Invariants: every decision is a pure function of a listed [`World`] returning
//! [`Action`]s (unit-tested without a server); a pass is idempotent, so running it again
//! on its own result writes nothing new; only the Lease holder acts, so two controllers
//! can run. Never: talks to pools, replicas or targets (the agents do); writes the status
//! of CSPIs, CVRs or CVs after creating them (the agents own those).

pub mod action;
pub mod cspc;
mod error;
pub mod exec;
pub mod leader;
pub mod placement;
pub mod provision;
pub mod replace;
pub mod snapshot;
pub mod target_move;
pub mod volume;
pub mod world;

use std::path::PathBuf;
use std::time::Duration;

pub use action::{Action, Kind};
pub use error::Error;
pub use world::World;

/// Version written in `openebs.io/version` labels.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Source of the random names a pass picks (CSPI suffixes, replica ids); tests use a
/// deterministic one.
pub trait Ids {
    /// 4 lowercase alphanumerics for a CSPI name.
    fn suffix(&mut self) -> String;
    /// A replica id: 32 upper-case hex digits.
    fn replica_id(&mut self) -> String;
}

/// Random ids from UUIDv4s.
#[derive(Debug, Default)]
pub struct RandomIds;

impl Ids for RandomIds {
    fn suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        uuid::Uuid::new_v4()
            .as_bytes()
            .iter()
            .take(4)
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
            .collect()
    }

    fn replica_id(&mut self) -> String {
        uuid::Uuid::new_v4().simple().to_string().to_uppercase()
    }
}

/// Tunables of the decisions a pass makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How long a target's node may be silent (no heartbeat renewal) before the target
    /// moves to another node ([`target_move`]).
    pub target_move_grace: Duration,
    /// How long the node of a pool instance holding a replica may be silent before the
    /// replica is replaced by a new one on another pool instance ([`replace`]).
    pub replica_replace_grace: Duration,
    /// Whether the controller itself does what the CSI sidecars do: turns claims into
    /// CVCs and PVs, expands them and reclaims released PVs ([`provision`]), and binds
    /// VolumeSnapshots to CStorSnapshots and VolumeSnapshotContents ([`snapshot`]).
    /// Only for a controller running without the CSI driver and its sidecars (tests of
    /// the controller alone). Off by default: the external-provisioner, -resizer,
    /// -snapshotter and the snapshot controller (or `cstor sidecars`) do it through the
    /// driver, and two writers of one PV or VolumeSnapshotContent must never run.
    pub provision_without_csi: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            target_move_grace: Duration::from_secs(15),
            replica_replace_grace: Duration::from_secs(600),
            provision_without_csi: false,
        }
    }
}

/// One whole pass with the default [`Settings`].
pub fn reconcile(world: &World, ids: &mut dyn Ids) -> Vec<Action> {
    reconcile_with(world, ids, &Settings::default())
}

/// One whole pass: every reconciler over the same world.
pub fn reconcile_with(world: &World, ids: &mut dyn Ids, settings: &Settings) -> Vec<Action> {
    let mut out = cspc::reconcile(world, ids);
    if settings.provision_without_csi {
        out.extend(provision::reconcile(world));
    }
    out.extend(volume::reconcile(world, ids));
    out.extend(target_move::reconcile(world, settings.target_move_grace));
    out.extend(replace::reconcile(
        world,
        ids,
        settings.replica_replace_grace,
    ));
    if settings.provision_without_csi {
        out.extend(snapshot::reconcile(world));
    }
    out
}

/// Settings of `cstor controller`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Kubeconfig file; None: the in-cluster configuration (a Deployment's pod).
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of cstor's objects and the Lease.
    pub namespace: String,
    /// Leader election identity.
    pub identity: String,
    /// Lease duration.
    pub lease_duration: Duration,
    /// Time between passes.
    pub interval: Duration,
    /// Tunables of the passes.
    pub settings: Settings,
}

/// A kube client from a kubeconfig file.
pub async fn client(path: &std::path::Path) -> Result<kube::Client, Error> {
    let bad = |why: String| Error::Kubeconfig {
        path: path.display().to_string(),
        why,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    kube::Client::try_from(cfg).map_err(|e| bad(e.to_string()))
}

/// A kube client from the in-cluster configuration (the pod's ServiceAccount), falling
/// back as kube does to `$KUBECONFIG` and `~/.kube/config`.
pub async fn in_cluster_client() -> Result<kube::Client, Error> {
    kube::Client::try_default()
        .await
        .map_err(|e| Error::Kubeconfig {
            path: "(none: in-cluster configuration)".to_owned(),
            why: e.to_string(),
        })
}

/// Runs the controller until `stop` resolves.
pub async fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    let client = match config.kubeconfig.as_deref() {
        Some(path) => client(path).await?,
        None => in_cluster_client().await?,
    };
    let mut elector = leader::Elector::new(
        client.clone(),
        &config.namespace,
        leader::LeaderConfig {
            lease: leader::LEASE_NAME.to_owned(),
            identity: config.identity.clone(),
            lease_duration: config.lease_duration,
            renew_every: config.lease_duration / 3,
            renew_deadline: config.lease_duration,
        },
    );
    let mut exec = exec::Executor::default();
    let mut ids = RandomIds;
    let mut was_leading = false;
    let mut last_renew = std::time::Instant::now() - config.lease_duration;
    tokio::pin!(stop);
    loop {
        if last_renew.elapsed() >= config.lease_duration / 3 || !elector.leading() {
            elector.tick().await;
            last_renew = std::time::Instant::now();
        }
        let leading = elector.leading();
        if leading != was_leading {
            tracing::info!(
                "{} {}",
                config.identity,
                if leading { "leads" } else { "does not lead" }
            );
            was_leading = leading;
        }
        if leading {
            match exec::load(&client, &config.namespace).await {
                Ok(world) => {
                    let actions = reconcile_with(&world, &mut ids, &config.settings);
                    if elector.leading() {
                        exec.run(&client, actions).await;
                    }
                }
                Err(e) => tracing::warn!("listing the cluster: {e}"),
            }
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(config.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests;
