//! Health: `/healthz` (the process answers) and `/readyz` (the event log and the warehouse
//! answer, each within a bounded time, so a load balancer never waits on a hung dependency).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

/// Bound on each `/readyz` probe.
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process is up and serving HTTP (checks nothing else).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process is up", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `/readyz`: each dependency's state, `ok` or what went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ok")]
    pub log: String,
    #[schema(example = "ok")]
    pub warehouse: String,
}

/// Readiness: 200 only when both the event log and the warehouse answer (each within 1 s).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "The log and the warehouse answer", body = Readiness),
        (status = 503, description = "At least one does not; its field says why", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (log, warehouse) = tokio::join!(
        tokio::time::timeout(READY_TIMEOUT, state.log.ping()),
        tokio::time::timeout(READY_TIMEOUT, state.store.ping()),
    );
    let describe = |r: Result<Result<(), String>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => e,
        Err(_) => format!("no answer within {} ms", READY_TIMEOUT.as_millis()),
    };
    let body = Readiness {
        log: describe(log.map(|r| r.map_err(|e| e.to_string()))),
        warehouse: describe(warehouse.map(|r| r.map_err(|e| e.to_string()))),
    };
    let status = if body.log == "ok" && body.warehouse == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
