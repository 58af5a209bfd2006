//! `--metrics ADDR:PORT` of the serving commands: starts the cstor-metrics endpoint
//! (docs/metrics.md) and says where it listens on stderr (stdout's first line belongs to
//! the iSCSI or replica address, which scripts and tests read).

use anyhow::{Context, Result};
use cstor_metrics::{Exporter, MetricsServer};

/// Port of a node agent's metrics endpoint on its node address by default (cStor's
/// exporter port).
pub const EXPORTER_PORT: u16 = 9500;

/// Serves `exporter` on `addr` if one was given; the endpoint stops when the returned
/// server is dropped.
pub async fn start(addr: Option<&str>, exporter: &Exporter) -> Result<Option<MetricsServer>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let server = exporter
        .serve(addr)
        .await
        .with_context(|| format!("--metrics {addr}"))?;
    eprintln!("metrics on http://{}/metrics", server.local_addr());
    Ok(Some(server))
}
