//! Leader election of the embedded sidecars, as the real ones do it with
//! `--leader-election`: each sidecar campaigns for its own coordination.k8s.io/v1 Lease,
//! named as kubernetes-csi names it ([`Part::lease`]), with the controller's
//! [`Elector`] (client-go's algorithm). A `cstor sidecars` process acts as a sidecar only
//! while it holds that sidecar's Lease, so two processes (or one of ours beside a real
//! sidecar of the same driver) never both act; a standby takes over once the holder
//! stopped renewing for a whole lease duration.
//!
//! Invariants: each Lease has its own background task, so renewals do not wait for a
//! pass; [`Leadership::leads`] compares the last renewal's deadline with the clock, so a
//! task stuck on an unanswered API call cannot keep a stale leadership alive. Unlike the
//! real sidecars, which exit when they lose their Lease, we stop acting as that sidecar
//! and drop the answers of its calls in flight, and campaign again.

use std::time::{Duration, Instant};

use cstor_api::names::CSI_DRIVER_NAME;
use cstor_controller::leader::{Elector, LeaderConfig};

use crate::sanitize_name;
use kube::Client;
use tokio::sync::watch;

/// The sidecars one `cstor sidecars` process embeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// external-provisioner.
    Provisioner,
    /// external-resizer.
    Resizer,
    /// external-attacher.
    Attacher,
    /// external-snapshotter's csi-snapshotter.
    Snapshotter,
    /// external-snapshotter's snapshot-controller.
    SnapshotController,
}

impl Part {
    /// Every part, in the order a pass runs them.
    pub const ALL: [Part; 5] = [
        Part::Provisioner,
        Part::Resizer,
        Part::SnapshotController,
        Part::Snapshotter,
        Part::Attacher,
    ];

    /// The Lease the real sidecar of this driver elects on (csi-lib-utils sanitizes the
    /// lock name): the provisioner's is the driver name alone.
    pub fn lease(self) -> String {
        let driver = CSI_DRIVER_NAME;
        sanitize_name(&match self {
            Part::Provisioner => driver.to_owned(),
            Part::Resizer => format!("external-resizer-{}", sanitize_name(driver)),
            Part::Attacher => format!("external-attacher-leader-{driver}"),
            Part::Snapshotter => format!("external-snapshotter-leader-{driver}"),
            Part::SnapshotController => "snapshot-controller-leader".to_owned(),
        })
    }
}

/// `--leader-election*` settings (the real sidecars' defaults: 15 s, 10 s, 5 s).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace of the Leases.
    pub namespace: String,
    /// This process's holderIdentity (sanitized as csi-lib-utils does).
    pub identity: String,
    /// leaseDurationSeconds: how long a standby waits for a silent holder.
    pub lease_duration: Duration,
    /// How long the holder acts on after its last successful renewal started.
    pub renew_deadline: Duration,
    /// Time between renewals, and between a standby's attempts.
    pub retry_period: Duration,
}

/// Which sidecars this process may act as now.
#[derive(Debug)]
pub struct Leadership {
    /// Per part: the deadline its task last published (None: not elected at all).
    until: Option<Vec<(Part, watch::Receiver<Option<Instant>>)>>,
}

impl Leadership {
    /// Without leader election: every part acts.
    pub fn always() -> Leadership {
        Leadership { until: None }
    }

    /// Starts one campaign task per part; they end when this is dropped.
    pub fn start(client: &Client, settings: &Settings) -> Leadership {
        let until = Part::ALL
            .iter()
            .map(|&part| {
                let (tx, rx) = watch::channel(None);
                let elector = Elector::new(
                    client.clone(),
                    &settings.namespace,
                    LeaderConfig {
                        lease: part.lease(),
                        identity: sanitize_name(&settings.identity),
                        lease_duration: settings.lease_duration,
                        renew_every: settings.retry_period,
                        renew_deadline: settings.renew_deadline,
                    },
                );
                tokio::spawn(campaign(elector, tx));
                (part, rx)
            })
            .collect();
        Leadership { until: Some(until) }
    }

    /// Whether this process acts as `part` now.
    pub fn leads(&self, part: Part) -> bool {
        let Some(until) = &self.until else {
            return true;
        };
        until
            .iter()
            .find(|(p, _)| *p == part)
            .and_then(|(_, rx)| *rx.borrow())
            .is_some_and(|t| Instant::now() < t)
    }

    /// Whether this process acts as any sidecar now.
    pub fn any(&self) -> bool {
        Part::ALL.iter().any(|p| self.leads(*p))
    }
}

/// One Lease's election, until the [`Leadership`] is dropped: a round every retry
/// period, each publishing until when this process may act.
async fn campaign(mut elector: Elector, tx: watch::Sender<Option<Instant>>) {
    let lease = elector.config().lease.clone();
    let identity = elector.config().identity.clone();
    let mut was = false;
    loop {
        let now = elector.tick().await;
        if now != was {
            tracing::info!(
                "{identity} {} lease {lease}",
                if now { "holds" } else { "lost" }
            );
            was = now;
        }
        if tx.send(elector.valid_until()).is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(elector.config().renew_every) => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_named_as_the_real_sidecars_name_them() {
        let names: Vec<String> = Part::ALL.iter().map(|p| p.lease()).collect();
        assert_eq!(
            names,
            [
                "cstor-csi-openebs-io",
                "external-resizer-cstor-csi-openebs-io",
                "snapshot-controller-leader",
                "external-snapshotter-leader-cstor-csi-openebs-io",
                "external-attacher-leader-cstor-csi-openebs-io",
            ]
        );
    }

    #[test]
    fn without_election_every_part_leads() {
        let l = Leadership::always();
        assert!(Part::ALL.iter().all(|p| l.leads(*p)) && l.any());
    }
}
