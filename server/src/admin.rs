//! The admin endpoint: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (sources listed, checkpoint restored, workers running, every readiness
//! condition met — served views caught up), for orchestrators and scrapers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use sluice_runtime::metrics::Metrics;
use tokio::sync::watch;

use crate::{ServerError, ServerHandle, bind, spawn};

/// The content type of the Prometheus text format.
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the admin endpoint for `metrics` on `addr` (port 0 picks a free one).
pub fn start_admin(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<ServerHandle, ServerError> {
    let (listener, local) = bind(addr)?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let scrape = Arc::clone(&metrics);
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = Arc::clone(&scrape);
                async move { ([(header::CONTENT_TYPE, PROMETHEUS)], m.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let m = Arc::clone(&metrics);
                async move {
                    match m.readiness() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
                    }
                }
            }),
        );
    let thread = spawn(None, Some((listener, router)), None, shutdown)?;
    tracing::info!(addr = %local, "admin endpoint listening (/metrics, /healthz, /readyz)");
    Ok(ServerHandle {
        grpc_addr: None,
        http_addr: Some(local),
        shutdown: shutdown_tx,
        thread: Some(thread),
    })
}
