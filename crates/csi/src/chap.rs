//! Per-volume CHAP from ControllerPublishVolume's `secrets` (the PV's
//! controllerPublishSecretRef, keys of [`cstor_api::chap`]): the driver copies them to a
//! Secret of its own, `cstor-chap-<volume>` in its namespace (owned by the CVC, so it goes
//! with the volume), and names it in the CVC's `cstor.openebs.io/chap-secret`; the node
//! agent hosting the target then requires them and acknowledges the Secret version in the
//! CStorVolume's `cstor.openebs.io/chap-applied`. A publish answers only once the target
//! requires what it was given (ABORTED until then, at most [`CHAP_WAIT`] per call), so no
//! initiator logs in on the publish context before CHAP is enforced; a publish without
//! secrets takes CHAP away the same way, and so does the unpublish of the holder.
//!
//! Why a copy: the target's node agent then reads Secrets of the driver's namespace only,
//! never the users'. Never: logs or returns a secret.

use std::time::{Duration, Instant};

use cstor_api::chap::{secret_name, Credentials};
use cstor_api::names::annotation::{CHAP_APPLIED, CHAP_SECRET};
use cstor_controller::world::annotation_of;
use cstor_controller::World;

use crate::cluster::Cluster;
use crate::limits::POLL_INTERVAL;
use crate::Error;

/// How long one publish waits for the target to apply its CHAP credentials.
pub const CHAP_WAIT: Duration = Duration::from_secs(20);

/// The credentials of a publish request's `secrets` (INVALID_ARGUMENT when malformed).
pub fn credentials(
    secrets: &std::collections::HashMap<String, String>,
) -> Result<Option<Credentials>, Error> {
    Credentials::from_map(secrets).map_err(|why| Error::invalid("secrets", why))
}

/// Makes volume `id`'s target require `creds` (none: no CHAP) and waits until it does;
/// `world` is the cluster as the publish saw it.
pub async fn apply(
    cluster: &Cluster,
    world: World,
    id: &str,
    creds: Option<Credentials>,
) -> Result<(), Error> {
    let missing = || Error::VolumeNotFound {
        volume: id.to_owned(),
    };
    let cvc = world.cvc(id).ok_or_else(missing)?;
    let name = secret_name(id);
    let want = match creds {
        Some(c) => {
            let version = cluster.put_secret(&name, cvc, c.to_map()).await?;
            if annotation_of(&cvc.metadata, CHAP_SECRET) != Some(name.as_str()) {
                cluster.annotate_cvc(id, CHAP_SECRET, Some(&name)).await?;
            }
            Some(format!("{name}/{version}"))
        }
        None => {
            if named(&world, id) {
                remove(cluster, id).await?;
            }
            None
        }
    };
    let deadline = Instant::now() + CHAP_WAIT;
    let mut world = world;
    loop {
        let applied = world
            .cv(id)
            .and_then(|cv| annotation_of(&cv.metadata, CHAP_APPLIED))
            .filter(|a| !a.is_empty());
        if applied == want.as_deref() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Pending {
                volume: id.to_owned(),
                what: if want.is_some() {
                    "waiting for its target to require the CHAP credentials of the publish"
                } else {
                    "waiting for its target to stop requiring CHAP"
                }
                .to_owned(),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        world = cluster.view().await?;
    }
}

/// Whether volume `id`'s CVC names a CHAP Secret.
pub fn named(world: &World, id: &str) -> bool {
    world
        .cvc(id)
        .and_then(|c| annotation_of(&c.metadata, CHAP_SECRET))
        .is_some_and(|s| !s.is_empty())
}

/// Takes CHAP off volume `id` (the unpublish of its holder, a publish without secrets):
/// the CVC's annotation, then the Secret.
pub async fn remove(cluster: &Cluster, id: &str) -> Result<(), Error> {
    match cluster.annotate_cvc(id, CHAP_SECRET, None).await {
        Ok(()) | Err(Error::VolumeNotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    cluster.delete_secret(&secret_name(id)).await
}
