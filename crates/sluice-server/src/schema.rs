//! OpenAPI schemas of request and response bodies whose Rust types live elsewhere (the parser in
//! `sluice-core` reads bodies as raw JSON, and `Event` has no OpenAPI derive there) or that are
//! serialized by hand. These types only describe JSON for `/openapi.json`; they are never built.
// Never constructed: they exist for their `ToSchema` impls.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Every error answer: `{"success":false,"error":CODE,"message":…,"errors":[{path,message}]}`.
#[derive(ToSchema)]
pub struct ErrorResponse {
    /// Always false.
    success: bool,
    /// Machine-readable code: `invalid_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `payload_too_large`, `unsupported_media_type`, `unavailable`,
    /// `internal_error`.
    #[schema(example = "invalid_request")]
    error: String,
    message: String,
    /// Each problem with its JSON path (a query parameter's name for the query API); only for
    /// `invalid_request`.
    errors: Option<Vec<ProblemSchema>>,
}

/// One validation problem.
#[derive(ToSchema)]
#[schema(as = Problem)]
pub struct ProblemSchema {
    #[schema(example = "batch[3].event")]
    path: String,
    message: String,
}

/// An item of a batch that was not accepted.
#[derive(ToSchema)]
#[schema(as = Rejection)]
pub struct RejectionSchema {
    /// Index of the item in the request.
    index: usize,
    errors: Vec<ProblemSchema>,
}

/// Event kinds.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Kind {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

/// A Segment Tracking API message (`/v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`,
/// `/v1/group`, `/v1/alias`, and each item of `/v1/batch`).
#[derive(ToSchema)]
#[schema(as = SegmentMessage)]
pub struct SegmentMessage {
    /// The call (`track`, …); implied by the route of a single call, required in a batch.
    #[schema(rename = "type")]
    kind: Option<Kind>,
    /// Client message id (≤ 100 chars), used for deduplication; generated when absent.
    #[schema(rename = "messageId")]
    message_id: Option<String>,
    /// `userId` or `anonymousId` is required.
    #[schema(rename = "userId")]
    user_id: Option<String>,
    #[schema(rename = "anonymousId")]
    anonymous_id: Option<String>,
    /// Event name (`track`, required there).
    event: Option<String>,
    /// Page or screen name (`page`, `screen`).
    name: Option<String>,
    #[schema(rename = "groupId")]
    group_id: Option<String>,
    #[schema(rename = "previousId")]
    previous_id: Option<String>,
    /// Client event time; corrected for clock skew with `sentAt`.
    timestamp: Option<DateTime<Utc>>,
    #[schema(rename = "sentAt")]
    sent_at: Option<DateTime<Utc>>,
    properties: Option<Map<String, Value>>,
    traits: Option<Map<String, Value>>,
    context: Option<Map<String, Value>>,
    integrations: Option<Map<String, Value>>,
    /// The write key, when not sent as HTTP Basic username.
    #[schema(rename = "writeKey")]
    write_key: Option<String>,
}

/// `POST /v1/batch` (also `/v1/import`).
#[derive(ToSchema)]
pub struct SegmentBatch {
    /// At most 2,500 messages, each with its `type`.
    batch: Vec<SegmentMessage>,
    /// Merged into every message's context.
    context: Option<Map<String, Value>>,
    /// Merged into every message's integrations.
    integrations: Option<Map<String, Value>>,
    #[schema(rename = "sentAt")]
    sent_at: Option<DateTime<Utc>>,
    #[schema(rename = "writeKey")]
    write_key: Option<String>,
}

/// The replaced system's `POST /track` body.
#[derive(ToSchema)]
pub struct LegacyTrack {
    #[schema(rename = "eventName")]
    event_name: String,
    /// Stored as `context.page.url`.
    url: Option<String>,
    #[schema(rename = "userId")]
    user_id: Option<String>,
    /// Stored as `properties`.
    metadata: Option<Map<String, Value>>,
}

/// The canonical event: what `POST /v1/events` accepts (JSON array or NDJSON; `source` and
/// `received_at` are set by the server) and what the query API returns.
#[derive(ToSchema)]
#[schema(as = Event)]
pub struct CanonicalEvent {
    /// Client `messageId` (≤ 100 chars), or a generated UUIDv7.
    event_id: String,
    /// The source of the write key.
    source: String,
    kind: Kind,
    /// Event name (`track`), page/screen name (`page`/`screen`).
    name: Option<String>,
    user_id: Option<String>,
    anonymous_id: Option<String>,
    group_id: Option<String>,
    previous_id: Option<String>,
    /// Event time after clock-skew correction.
    timestamp: DateTime<Utc>,
    /// The client's own timestamp, uncorrected.
    original_timestamp: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
    properties: Map<String, Value>,
    traits: Map<String, Value>,
    context: Map<String, Value>,
    integrations: Option<Map<String, Value>>,
}
