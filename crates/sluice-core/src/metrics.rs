//! The names of every metric sluice exports (Prometheus text format at `/metrics`), in one place,
//! so the server, the workers and the docs cannot drift apart. Only names live here (no metrics
//! library, no IO); the server installs the recorder and describes them, the workers record.
//!
//! Labels are of bounded cardinality only: matched route patterns, HTTP status codes, fixed
//! outcome words, consumer-group names. Never an event name, a user id, a source or a key.

/// Counter: HTTP requests answered, labels `route` (the matched route pattern, `unmatched` for
/// the fallback) and `status` (the numeric code).
pub const HTTP_REQUESTS_TOTAL: &str = "sluice_http_requests_total";
/// Histogram: time to answer an HTTP request, label `route`. For `/v1/live` it is the time to
/// accept the WebSocket upgrade, not the connection's lifetime.
pub const HTTP_REQUEST_SECONDS: &str = "sluice_http_request_seconds";

/// Counter: events seen by the ingest routes, labels `route` and `outcome`
/// ([`OUTCOME_ACCEPTED`], [`OUTCOME_REJECTED`], [`OUTCOME_OVERLOADED`], [`OUTCOME_UNAVAILABLE`],
/// [`OUTCOME_FAILED`]).
pub const INGEST_EVENTS_TOTAL: &str = "sluice_ingest_events_total";
/// Appended to the log and acknowledged with 2xx.
pub const OUTCOME_ACCEPTED: &str = "accepted";
/// Invalid events of a partly valid (or wholly invalid) request: reported back, not appended.
pub const OUTCOME_REJECTED: &str = "rejected";
/// Refused with 503 because the log backlog is above its high-water mark.
pub const OUTCOME_OVERLOADED: &str = "overloaded";
/// Refused with 503 because the log did not answer in time.
pub const OUTCOME_UNAVAILABLE: &str = "unavailable";
/// The append failed for another (non-retryable) reason.
pub const OUTCOME_FAILED: &str = "failed";

/// Histogram: seconds one request's append to the log took, until durably accepted (or failed).
pub const APPEND_SECONDS: &str = "sluice_append_seconds";

/// Gauge: entries a consumer group has not processed yet (undelivered + pending), label `group`.
pub const LOG_BACKLOG: &str = "sluice_log_backlog";
/// Gauge: entries delivered to a group and not acknowledged yet, label `group`.
pub const LOG_PENDING: &str = "sluice_log_pending";

/// Histogram: entries per batch a worker committed, label `group`.
pub const WORKER_BATCH_SIZE: &str = "sluice_worker_batch_size";
/// Histogram: seconds a processor took to commit one batch (one warehouse transaction), label
/// `group`.
pub const WORKER_COMMIT_SECONDS: &str = "sluice_worker_commit_seconds";
/// Counter: events a worker committed, label `group`.
pub const WORKER_EVENTS_TOTAL: &str = "sluice_worker_events_total";
/// Counter: redelivered or retried events the warehouse recognised as already stored, label
/// `group`.
pub const WORKER_DEDUPE_HITS_TOTAL: &str = "sluice_worker_dedupe_hits_total";
/// Counter: commits that failed transiently and were retried, label `group`.
pub const WORKER_RETRIES_TOTAL: &str = "sluice_worker_retries_total";
/// Counter: log entries moved to the dead-letter stream, label `group`.
pub const DEAD_LETTERS_TOTAL: &str = "sluice_dead_letters_total";

/// Gauge: WebSocket clients connected to `/v1/live` in this process.
pub const LIVE_CLIENTS: &str = "sluice_live_clients";
/// Counter: events the live aggregator of this process has counted.
pub const LIVE_EVENTS_TOTAL: &str = "sluice_live_events_total";
/// Counter: live WebSocket clients dropped because they could not keep up.
pub const LIVE_SLOW_CLIENTS_DROPPED_TOTAL: &str = "sluice_live_slow_clients_dropped_total";
/// Counter: alerts pushed to the live view.
pub const ALERTS_TOTAL: &str = "sluice_alerts_total";

/// Gauge: bytes the allocator (jemalloc) has handed out and not had back: the heap in use.
pub const MEMORY_ALLOCATED_BYTES: &str = "sluice_memory_allocated_bytes";
/// Gauge: bytes in the allocator's physically resident pages (heap in use, free space within its
/// pages, pages not yet returned to the kernel, its own metadata): most of the process's RSS.
pub const MEMORY_RESIDENT_BYTES: &str = "sluice_memory_resident_bytes";
/// Gauge: bytes of the allocator's own metadata (part of resident).
pub const MEMORY_METADATA_BYTES: &str = "sluice_memory_metadata_bytes";
