//! The OpenAPI document of the whole HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations and the types' `ToSchema` derives, served at `GET /openapi.json`.
//!
//! [`routes`] is the one list of documented routes: the router is built from it (utoipa-axum
//! registers each handler under the method and path of its annotation), so the document and the
//! router cannot disagree. Add new routes here, not with a plain `Router::route`.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{dashboard, health, ingest, live, metrics, query, AppState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sluice",
        description = "Analytics event pipeline: ingest (Segment HTTP Tracking API, the legacy `/track`, native canonical events) with a write key; queries over the warehouse with a read key."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "ingest", description = "Write key (HTTP Basic username with an empty password, `Authorization: Bearer`, or `writeKey` in the body). A 2xx means the events are durably in the event log."),
        (name = "query", description = "Read key (`Authorization: Bearer`, or HTTP Basic username). Results are scoped to the key's source; time ranges are half-open `[from, to)`, RFC 3339, by default the last 24 hours."),
        (name = "health", description = "Liveness, readiness and Prometheus metrics."),
        (name = "live", description = "Live per-second aggregates over a WebSocket (read key)."),
        (name = "dashboard", description = "The dashboard page and its assets, shipped inside the binary."),
        (name = "meta", description = "This document."),
    )
)]
struct ApiDoc;

/// The two ways of presenting a key.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "The key as the username, empty password (Segment's convention)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer <key>`"))
                    .build(),
            ),
        );
    }
}

/// Every documented route, with the document.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ingest::track))
        .routes(routes!(ingest::identify))
        .routes(routes!(ingest::page))
        .routes(routes!(ingest::screen))
        .routes(routes!(ingest::group))
        .routes(routes!(ingest::alias))
        .routes(routes!(ingest::batch))
        .routes(routes!(ingest::import))
        .routes(routes!(ingest::native))
        .routes(routes!(ingest::legacy_track))
        .routes(routes!(query::counts))
        .routes(routes!(query::top))
        .routes(routes!(query::active_users))
        .routes(routes!(query::events))
        .routes(routes!(query::alerts))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(openapi_json))
        .routes(routes!(live::live))
        .routes(routes!(metrics::render))
        .routes(routes!(dashboard::index))
        .routes(routes!(dashboard::app_js))
        .routes(routes!(dashboard::app_css))
}

/// The document as JSON, built once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| match document().to_pretty_json() {
    Ok(json) => json,
    Err(e) => {
        tracing::error!(error = %e, "serializing the OpenAPI document");
        String::from("{}")
    }
});

/// The OpenAPI document of the whole HTTP API.
pub fn document() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_serializes_with_both_security_schemes() {
        let doc: serde_json::Value = serde_json::from_str(&DOCUMENT).expect("the document is JSON");
        let paths = doc["paths"].as_object().expect("paths");
        assert!(paths.contains_key("/v1/query/counts"));
        assert!(paths.contains_key("/v1/batch"));
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["basic"]["scheme"], "basic");
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        // Every `$ref` points at a schema of the document.
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let text = DOCUMENT.as_str();
        for part in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(schemas.contains_key(name), "dangling $ref to {name}");
        }
    }
}
