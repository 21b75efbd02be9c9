//! `/metrics` in Prometheus text format, and the HTTP metrics middleware.
//!
//! The `metrics` facade records everywhere (server, worker runtime, live aggregator); this module
//! installs the process-wide Prometheus recorder once ([`install`], idempotent: tests start many
//! apps in one process) without its own HTTP listener, and renders it in an axum handler. Metric
//! names are the constants of `sluice_core::metrics`; labels are of bounded cardinality only.
//!
//! `/metrics` needs no key (scrapers rarely carry one); it exposes counts, latencies and group
//! names, never keys, sources, event names or user ids.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sluice_core::metrics as names;

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Route label of requests no route matched (404s of unknown paths): one value, not the path.
pub const UNMATCHED_ROUTE: &str = "unmatched";

const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 25_000.0, 100_000.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the Prometheus recorder for this process (once; later calls return the same handle).
/// If another recorder was installed first (an embedding program's), sluice's metrics go there
/// and `/metrics` renders an empty registry.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = [
            names::HTTP_REQUEST_SECONDS,
            names::APPEND_SECONDS,
            names::WORKER_COMMIT_SECONDS,
        ]
        .into_iter()
        .try_fold(PrometheusBuilder::new(), |b, name| {
            b.set_buckets_for_metric(Matcher::Full(name.to_owned()), LATENCY_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(names::WORKER_BATCH_SIZE.to_owned()),
                BATCH_BUCKETS,
            )
        });
        let handle = match builder {
            Ok(b) => b.install_recorder().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics will be empty");
                PrometheusBuilder::new().build_recorder().handle()
            }),
            // Only with empty bucket lists, which the constants above are not.
            Err(e) => {
                tracing::error!(error = %e, "invalid metrics configuration; /metrics will be empty");
                PrometheusBuilder::new().build_recorder().handle()
            }
        };
        describe();
        handle
    })
}

fn describe() {
    describe_counter!(
        names::HTTP_REQUESTS_TOTAL,
        "HTTP requests answered, by matched route and status code"
    );
    describe_histogram!(
        names::HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "Time to answer an HTTP request, by matched route"
    );
    describe_counter!(
        names::INGEST_EVENTS_TOTAL,
        "Events seen by the ingest routes, by route and outcome"
    );
    describe_histogram!(
        names::APPEND_SECONDS,
        Unit::Seconds,
        "Time one request's append to the event log took"
    );
    describe_gauge!(
        names::LOG_BACKLOG,
        "Log entries not yet processed by a consumer group"
    );
    describe_gauge!(
        names::LOG_PENDING,
        "Log entries delivered to a consumer group and not yet acknowledged"
    );
    describe_histogram!(
        names::WORKER_BATCH_SIZE,
        "Entries per batch committed by a worker"
    );
    describe_histogram!(
        names::WORKER_COMMIT_SECONDS,
        Unit::Seconds,
        "Time a processor took to commit one batch"
    );
    describe_counter!(names::WORKER_EVENTS_TOTAL, "Events committed by a worker");
    describe_counter!(
        names::WORKER_DEDUPE_HITS_TOTAL,
        "Redelivered or retried events recognised as already stored"
    );
    describe_counter!(
        names::WORKER_RETRIES_TOTAL,
        "Batch commits that failed transiently and were retried"
    );
    describe_counter!(
        names::DEAD_LETTERS_TOTAL,
        "Log entries moved to the dead-letter stream"
    );
    describe_gauge!(
        names::MEMORY_ALLOCATED_BYTES,
        Unit::Bytes,
        "Heap in use: bytes allocated and not yet freed"
    );
    describe_gauge!(
        names::MEMORY_RESIDENT_BYTES,
        Unit::Bytes,
        "Resident pages of the allocator: heap in use, free space within its pages, pages not yet returned, metadata"
    );
    describe_gauge!(
        names::MEMORY_METADATA_BYTES,
        Unit::Bytes,
        "The allocator's own metadata"
    );
    describe_gauge!(
        names::LIVE_CLIENTS,
        "WebSocket clients connected to /v1/live"
    );
    describe_counter!(
        names::LIVE_EVENTS_TOTAL,
        "Events counted by the live aggregator"
    );
    describe_counter!(
        names::LIVE_SLOW_CLIENTS_DROPPED_TOTAL,
        "Live clients dropped because they did not keep up"
    );
    describe_counter!(names::ALERTS_TOTAL, "Alerts pushed to the live view");
}

/// Prometheus text exposition of the process's metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
pub(crate) async fn render() -> Response {
    let handle = install();
    handle.run_upkeep();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], handle.render()).into_response()
}

/// Middleware: count every request by matched route pattern and status, and time it.
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::counter!(
        names::HTTP_REQUESTS_TOTAL,
        "route" => route.clone(),
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!(names::HTTP_REQUEST_SECONDS, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The `route` label of the ingest metrics for a request shape (the route pattern that accepts
/// it; `/v1/import` counts as `/v1/batch`).
pub(crate) fn ingest_route(shape: sluice_core::parse::Shape) -> &'static str {
    use sluice_core::parse::Shape;
    use sluice_core::EventKind;
    match shape {
        Shape::SegmentSingle(EventKind::Track) => "/v1/track",
        Shape::SegmentSingle(EventKind::Identify) => "/v1/identify",
        Shape::SegmentSingle(EventKind::Page) => "/v1/page",
        Shape::SegmentSingle(EventKind::Screen) => "/v1/screen",
        Shape::SegmentSingle(EventKind::Group) => "/v1/group",
        Shape::SegmentSingle(EventKind::Alias) => "/v1/alias",
        Shape::SegmentBatch => "/v1/batch",
        Shape::Legacy => "/track",
        Shape::NativeArray | Shape::NativeNdjson => "/v1/events",
    }
}

/// Count `n` events of one ingest request with their outcome.
pub(crate) fn record_ingest(route: &'static str, outcome: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!(names::INGEST_EVENTS_TOTAL, "route" => route, "outcome" => outcome)
            .increment(n as u64);
    }
}

/// Time and count one append of `n` events to the log.
pub(crate) fn record_append(
    route: &'static str,
    n: usize,
    started: Instant,
    result: &Result<(), sluice_core::log::LogError>,
) {
    use sluice_core::log::LogError;
    metrics::histogram!(names::APPEND_SECONDS).record(started.elapsed().as_secs_f64());
    let outcome = match result {
        Ok(()) => names::OUTCOME_ACCEPTED,
        Err(LogError::Overloaded { .. }) => names::OUTCOME_OVERLOADED,
        Err(LogError::Unavailable(_)) => names::OUTCOME_UNAVAILABLE,
        Err(LogError::Other(_)) => names::OUTCOME_FAILED,
    };
    record_ingest(route, outcome, n);
}
