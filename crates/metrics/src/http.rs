//! The `/metrics` HTTP endpoint (axum over hyper): GET /metrics returns one exposition;
//! anything else is 404.
//!
//! Shutdown: dropping [`MetricsServer`] stops accepting and ends the serving task.

use std::net::SocketAddr;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::{Exporter, MetricsError};

/// OpenMetrics text, which Prometheus negotiates and promtool reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running `/metrics` endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn metrics(exporter: Exporter) -> Response {
    // A scrape reads pool and volume state under short blocking locks: off the reactor.
    let rendered = tokio::task::spawn_blocking(move || exporter.render()).await;
    match rendered {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub(crate) async fn serve(exporter: Exporter, addr: &str) -> Result<MetricsServer, MetricsError> {
    let bind_err = |source| MetricsError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let app = Router::new().route("/metrics", get(move || metrics(exporter.clone())));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(MetricsServer { addr: local, task })
}
