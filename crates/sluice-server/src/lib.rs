//! sluice-server: the HTTP surface. The axum router for ingest (Segment API, legacy `/track`,
//! native `/v1/events`), the query API (`/v1/query/…`), authentication, body limits and
//! decompression, CORS, health (`/healthz`, `/readyz`), the live WebSocket (`live.rs`), the
//! dashboard (`dashboard.rs`), Prometheus metrics (`metrics.rs`), and the OpenAPI document
//! (`/openapi.json`, `openapi.rs`: the documented routes are the router's routes).
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so the binary and the tests
//! run the same app (tests on port 0).

pub mod auth;
pub mod body;
pub mod dashboard;
pub mod error;
pub mod health;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod query;
pub mod schema;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::Router;
use sluice_core::log::EventLog;
use sluice_core::warehouse::Warehouse;
use sluice_core::Limits;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use auth::KeyCache;
pub use error::ApiError;

/// Settings of the HTTP surface.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub limits: Limits,
    /// Origins allowed by CORS; empty or `*` allows any.
    pub cors_origins: Vec<String>,
    /// Take the client address from `X-Forwarded-For` (only behind a trusted proxy).
    pub trust_forwarded_for: bool,
    /// Longest a client may take to send its request body (then 408).
    pub body_timeout: std::time::Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            cors_origins: Vec::new(),
            trust_forwarded_for: false,
            body_timeout: body::DEFAULT_BODY_TIMEOUT,
        }
    }
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub log: Arc<dyn EventLog>,
    /// The warehouse the query API reads (and `/readyz` pings).
    pub store: Arc<dyn Warehouse>,
    pub keys: Arc<KeyCache>,
    pub config: Arc<ServerConfig>,
    /// The live aggregator of this process (`/v1/live`, dashboard).
    pub live: sluice_worker::LiveHub,
}

fn cors(config: &ServerConfig) -> CorsLayer {
    let origins: Vec<HeaderValue> = config
        .cors_origins
        .iter()
        .filter(|o| o.as_str() != "*")
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let allow = if origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins)
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            HeaderName::from_static("x-requested-with"),
        ])
        .max_age(Duration::from_secs(86_400))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let cors = cors(&state.config);
    // Every route comes from `openapi::routes()`, so `/openapi.json` lists exactly these.
    let (routes, _document) = openapi::routes().split_for_parts();
    metrics::install();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(metrics::track_http))
        .layer(cors)
        .with_state(state)
}

/// Serve on `listener` until `shutdown` resolves, then finish in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
