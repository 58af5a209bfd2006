//! Leader election on a coordination.k8s.io/v1 Lease ([`LEASE_NAME`] in the controller's
//! namespace; the embedded CSI sidecars elect on their own Leases with the same
//! [`Elector`]), as client-go's leaderelection does it: the holder renews
//! `renewTime` every [`LeaderConfig::renew_every`]; another candidate takes the lease over
//! only after it has seen the lease's resourceVersion unchanged for a whole
//! `leaseDurationSeconds` on its own clock (so clock skew between machines does not
//! matter); every write carries the resourceVersion it read, so two candidates racing for
//! a lease cannot both win.
//!
//! Invariant: [`Elector::leading`] is true only until `renew_deadline` (at most
//! `lease_duration`) after the start of the last successful renewal, so a leader cut off
//! from the API server stops acting before another can take over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;

/// Name of the controller's Lease (contract5).
pub const LEASE_NAME: &str = "cstor-controller";

/// Leader election settings.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// The Lease's name.
    pub lease: String,
    /// This candidate's identity (holderIdentity).
    pub identity: String,
    /// leaseDurationSeconds written on the Lease.
    pub lease_duration: Duration,
    /// How often the holder renews (and a candidate retries: client-go's RetryPeriod).
    pub renew_every: Duration,
    /// How long the holder keeps acting after the start of its last successful renewal
    /// (client-go's RenewDeadline); never longer than `lease_duration`.
    pub renew_deadline: Duration,
}

/// One candidate's view of the election.
#[derive(Debug)]
pub struct Elector {
    config: LeaderConfig,
    api: Api<Lease>,
    observed: Option<(String, Instant)>,
    valid_until: Option<Instant>,
}

impl Elector {
    /// A candidate for the Lease in `namespace`.
    pub fn new(client: Client, namespace: &str, config: LeaderConfig) -> Elector {
        Elector {
            config,
            api: Api::namespaced(client, namespace),
            observed: None,
            valid_until: None,
        }
    }

    /// Whether this candidate may act now.
    pub fn leading(&self) -> bool {
        self.valid_until.is_some_and(|t| Instant::now() < t)
    }

    /// Until when this candidate may act (None: it does not lead).
    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until.filter(|t| Instant::now() < *t)
    }

    /// The settings it elects with.
    pub fn config(&self) -> &LeaderConfig {
        &self.config
    }

    fn spec(&self, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round: create, renew or take over the lease. Returns whether this candidate
    /// leads afterwards; API errors count as not renewed.
    pub async fn tick(&mut self) -> bool {
        let started = Instant::now();
        let lease_name = self.config.lease.clone();
        let ok = match self.api.get_opt(&lease_name).await {
            Ok(None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(lease_name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(0, None)),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .is_ok()
            }
            Ok(Some(lease)) => {
                let rv = lease.metadata.resource_version.clone().unwrap_or_default();
                let spec = lease.spec.clone().unwrap_or_default();
                let holder = spec.holder_identity.clone().unwrap_or_default();
                let mine = holder == self.config.identity;
                match &self.observed {
                    Some((seen, _)) if *seen == rv => {}
                    _ => self.observed = Some((rv.clone(), Instant::now())),
                }
                let their_duration =
                    Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
                let expired = holder.is_empty()
                    || self
                        .observed
                        .as_ref()
                        .is_some_and(|(_, at)| at.elapsed() >= their_duration);
                if mine || expired {
                    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
                    let acquire = if mine {
                        spec.acquire_time.clone()
                    } else {
                        None
                    };
                    let mut next = lease.clone();
                    next.spec = Some(self.spec(transitions, acquire));
                    match self
                        .api
                        .replace(&lease_name, &PostParams::default(), &next)
                        .await
                    {
                        Ok(written) => {
                            if !mine {
                                tracing::info!(
                                    "{} took the lease {lease_name} over from {holder:?}",
                                    self.config.identity
                                );
                            }
                            self.observed = written
                                .metadata
                                .resource_version
                                .map(|v| (v, Instant::now()));
                            true
                        }
                        Err(_) => false,
                    }
                } else {
                    false
                }
            }
            Err(e) => {
                tracing::warn!("lease {lease_name}: {e}");
                false
            }
        };
        if ok {
            let deadline = self.config.renew_deadline.min(self.config.lease_duration);
            self.valid_until = Some(started + deadline);
        } else if self.leading() {
            // Not renewed: keep acting only while the last renewal holds.
        } else {
            self.valid_until = None;
        }
        self.leading()
    }
}
