//! # meshcore-api
//!
//! The node's HTTP API. Every route is served twice, with the same handler: under `/v1/`
//! and, so that clients written against the Aevov Meshcore specification work unchanged,
//! under `/wp-json/aevov-meshcore/v1/`. The OpenAPI document is generated from the handlers'
//! annotations and served at `GET /v1/openapi.json`.
//!
//! **Architecture invariant:** a client's mistake is never a 5xx. Malformed JSON, wrong
//! types, unknown fields, unknown routes, wrong methods and oversized bodies all answer
//! with a 4xx status and a JSON body `{"error": code, "message": text}`.
//!
//! **API boundary:** [`router`] and [`serve`] are the whole surface; the binary binds the
//! listener and passes a shutdown future, so tests can bind port 0.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod browser;
mod error;
mod openapi;
mod routes;

use std::future::Future;

use axum::Router;
use meshcore_node::Node;

pub use error::{ApiError, ErrorBody};
pub use openapi::openapi_document;

/// Largest request body accepted, in bytes. Larger bodies get `413 payload_too_large`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Largest body of `POST dht/put`: room for the largest value (64 KiB as JSON) and its
/// fields, so that an oversized value gets `400 invalid_value` with its size rather than a
/// bare 413.
pub const MAX_DHT_PUT_BODY_BYTES: usize = 256 * 1024;

/// The path prefixes under which every route is served.
pub const PREFIXES: [&str; 2] = ["/v1", "/wp-json/aevov-meshcore/v1"];

/// Builds the API router for `node`.
pub fn router(node: Node) -> Router {
    routes::router(node)
}

/// Serves the API on `listener` until `shutdown` completes, then finishes the requests in
/// flight and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(node))
        .with_graceful_shutdown(shutdown)
        .await
}
