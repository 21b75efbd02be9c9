//! Ingest routes: Segment's HTTP Tracking API, the replaced system's `/track`, and the native
//! `/v1/events`. Each request is authenticated, decoded, validated, appended to the log, and
//! answered only after the log acknowledged the append.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_core::keys::KeyKind;
use sluice_core::log::Record;
use sluice_core::metrics::OUTCOME_REJECTED;
use sluice_core::parse::{self, Rejection, Shape};
use sluice_core::{shard, Event, EventKind};
use utoipa::ToSchema;

use crate::auth::{authorize, key_from_headers};
use crate::body::{decode, media_type, read_capped, MediaType};
use crate::error::ApiError;
use crate::schema::{
    CanonicalEvent, ErrorResponse, LegacyTrack, RejectionSchema, SegmentBatch, SegmentMessage,
};
use crate::{metrics, AppState};

#[derive(Debug, Default, Deserialize)]
pub struct KeyQuery {
    #[serde(rename = "writeKey")]
    write_key: Option<String>,
}

/// Ingest answer, sent only after the events are durably in the event log.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    success: bool,
    /// Events accepted.
    accepted: usize,
    /// Items rejected, by index (the valid ones of the same request were accepted); absent when
    /// none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Option<Vec<RejectionSchema>>)]
    rejected: Vec<Rejection>,
}

/// Where the request came from, for `context.ip`: the peer address, or the first
/// `X-Forwarded-For` hop when the server is configured to trust its proxy.
fn client_ip(state: &AppState, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<String> {
    if state.config.trust_forwarded_for {
        if let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            return Some(ip.to_string());
        }
    }
    peer.map(|p| p.ip().to_string())
}

/// The log records of `events`: their canonical JSON, written one after another into ONE buffer
/// of the exact size, each record a slice of it. One allocation per request instead of several
/// per event (`serde_json::to_vec` doubles its buffer as it goes), and no spare capacity kept per
/// record while it waits in the log's queue and in the embedded log's memory of the newest
/// entries; the buffer is freed when the last of its records is let go.
fn records(events: Vec<Event>, shards: u32) -> Vec<Record> {
    let mut buf = Vec::new();
    let mut ends = Vec::with_capacity(events.len());
    for e in &events {
        e.write_json(&mut buf);
        ends.push((shard::shard_of(e, shards), buf.len()));
    }
    drop(events);
    buf.shrink_to_fit();
    let buf = Bytes::from(buf);
    let mut start = 0;
    ends.into_iter()
        .map(|(shard, end)| {
            let payload = buf.slice(start..end);
            start = end;
            Record { shard, payload }
        })
        .collect()
}

async fn ingest(
    state: AppState,
    shape: Shape,
    peer: Option<SocketAddr>,
    query_key: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limits = &state.config.limits;
    let route = metrics::ingest_route(shape);
    let media = media_type(&headers)?;
    let shape = match (shape, media) {
        (Shape::NativeArray, MediaType::Ndjson) => Shape::NativeNdjson,
        (Shape::NativeArray, MediaType::Json) => Shape::NativeArray,
        (other, MediaType::Json) => other,
        (_, MediaType::Ndjson) => {
            return Err(ApiError::UnsupportedMediaType(
                "NDJSON is accepted only by /v1/events".into(),
            ))
        }
    };
    // A key in the headers or URL is checked before the body is even read.
    let header_key = key_from_headers(&headers).or(query_key);
    let early = match &header_key {
        Some(k) => Some(authorize(&state.keys, Some(k), KeyKind::Write)?),
        None => None,
    };
    let raw = read_capped(body, limits.max_body_bytes, state.config.body_timeout).await?;
    let decoded = decode(&headers, raw, limits.max_body_bytes)?;
    let parsed = parse::parse_body(shape, &decoded, limits).map_err(ApiError::Invalid)?;
    let principal = match early {
        Some(p) => p,
        None => authorize(&state.keys, parsed.write_key.as_deref(), KeyKind::Write)?,
    };
    let ip = client_ip(&state, &headers, peer);
    let ctx = parse::Context {
        source: &principal.source,
        received_at: chrono::Utc::now(),
        client_ip: ip.as_deref(),
        limits,
    };
    let outcome = parse::build_events(&parsed, &ctx);
    metrics::record_ingest(route, OUTCOME_REJECTED, outcome.rejected.len());
    if outcome.accepted.is_empty() {
        return Err(ApiError::Invalid(outcome.problems()));
    }
    let shards = state.log.shards();
    // The events become their log records here; everything else of the request (body, parsed
    // items, events) is freed before waiting for the append, so a request in flight holds only
    // its records.
    let parse::Outcome { accepted, rejected } = outcome;
    // A fed live view counts the events by name once they are appended.
    let tally = state.live.tally(&accepted);
    let records = records(accepted, shards);
    drop(parsed);
    drop(decoded);
    let accepted = records.len();
    let started = Instant::now();
    let appended = state.log.append(records).await;
    metrics::record_append(route, accepted, started, &appended);
    appended?;
    state.live.record(&principal.source, tally);
    Ok(Json(Accepted {
        success: true,
        accepted,
        rejected,
    })
    .into_response())
}

macro_rules! segment_route {
    ($name:ident, $kind:expr, $path:tt, $summary:tt) => {
        #[doc = $summary]
        #[utoipa::path(
            post,
            path = $path,
            tag = "ingest",
            request_body(content = SegmentMessage, description = "One Segment message (JSON; gzip, zstd or deflate with Content-Encoding)"),
            security(("basic" = []), ("bearer" = [])),
            responses(
                (status = 200, description = "Durably appended to the event log", body = Accepted),
                (status = 400, description = "Invalid message", body = ErrorResponse),
                (status = 401, description = "No, unknown or revoked write key", body = ErrorResponse),
                (status = 403, description = "Not a write key", body = ErrorResponse),
                (status = 413, description = "Body too large (also after decompression)", body = ErrorResponse),
                (status = 415, description = "Unsupported Content-Type or Content-Encoding", body = ErrorResponse),
                (status = 503, description = "Event log unavailable or backlogged (Retry-After)", body = ErrorResponse),
            )
        )]
        pub async fn $name(
            State(state): State<AppState>,
            ConnectInfo(peer): ConnectInfo<SocketAddr>,
            headers: HeaderMap,
            body: Body,
        ) -> Result<Response, ApiError> {
            ingest(
                state,
                Shape::SegmentSingle($kind),
                Some(peer),
                None,
                headers,
                body,
            )
            .await
        }
    };
}

segment_route!(
    track,
    EventKind::Track,
    "/v1/track",
    "Segment `track`: a user did something."
);
segment_route!(
    identify,
    EventKind::Identify,
    "/v1/identify",
    "Segment `identify`: who the user is (traits)."
);
segment_route!(
    page,
    EventKind::Page,
    "/v1/page",
    "Segment `page`: a page view."
);
segment_route!(
    screen,
    EventKind::Screen,
    "/v1/screen",
    "Segment `screen`: a mobile screen view."
);
segment_route!(
    group,
    EventKind::Group,
    "/v1/group",
    "Segment `group`: the user belongs to a group."
);
segment_route!(
    alias,
    EventKind::Alias,
    "/v1/alias",
    "Segment `alias`: two user ids are the same person."
);

/// Segment `batch`: many messages of any type in one request (at most 2,500); invalid items are
/// reported by index while the valid ones are accepted.
#[utoipa::path(
    post,
    path = "/v1/batch",
    tag = "ingest",
    request_body(content = SegmentBatch, description = "Segment batch (JSON; gzip, zstd or deflate with Content-Encoding)"),
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The valid messages are durably appended; `rejected` lists the others", body = Accepted),
        (status = 400, description = "No valid message", body = ErrorResponse),
        (status = 401, description = "No, unknown or revoked write key", body = ErrorResponse),
        (status = 403, description = "Not a write key", body = ErrorResponse),
        (status = 413, description = "Body too large (also after decompression)", body = ErrorResponse),
        (status = 415, description = "Unsupported Content-Type or Content-Encoding", body = ErrorResponse),
        (status = 503, description = "Event log unavailable or backlogged (Retry-After)", body = ErrorResponse),
    )
)]
pub async fn batch(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(state, Shape::SegmentBatch, Some(peer), None, headers, body).await
}

/// Segment `import`: the same as `batch`.
#[utoipa::path(
    post,
    path = "/v1/import",
    tag = "ingest",
    request_body(content = SegmentBatch, description = "Segment batch (JSON; gzip, zstd or deflate with Content-Encoding)"),
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The valid messages are durably appended; `rejected` lists the others", body = Accepted),
        (status = 400, description = "No valid message", body = ErrorResponse),
        (status = 401, description = "No, unknown or revoked write key", body = ErrorResponse),
        (status = 403, description = "Not a write key", body = ErrorResponse),
        (status = 413, description = "Body too large (also after decompression)", body = ErrorResponse),
        (status = 415, description = "Unsupported Content-Type or Content-Encoding", body = ErrorResponse),
        (status = 503, description = "Event log unavailable or backlogged (Retry-After)", body = ErrorResponse),
    )
)]
pub async fn import(
    state: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    batch(state, peer, headers, body).await
}

/// Native canonical events: a JSON array, or NDJSON (`Content-Type: application/x-ndjson`).
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "ingest",
    request_body(
        description = "Canonical events (`source` and `received_at` are set by the server)",
        content(
            (Vec<CanonicalEvent> = "application/json"),
            (String = "application/x-ndjson"),
        )
    ),
    security(("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The valid events are durably appended; `rejected` lists the others", body = Accepted),
        (status = 400, description = "No valid event", body = ErrorResponse),
        (status = 401, description = "No, unknown or revoked write key", body = ErrorResponse),
        (status = 403, description = "Not a write key", body = ErrorResponse),
        (status = 413, description = "Body too large (also after decompression)", body = ErrorResponse),
        (status = 415, description = "Unsupported Content-Type or Content-Encoding", body = ErrorResponse),
        (status = 503, description = "Event log unavailable or backlogged (Retry-After)", body = ErrorResponse),
    )
)]
pub async fn native(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ingest(state, Shape::NativeArray, Some(peer), None, headers, body).await
}

/// The replaced system's route; its clients only change the URL (adding `?writeKey=`).
#[utoipa::path(
    post,
    path = "/track",
    tag = "ingest",
    params(("writeKey" = Option<String>, Query, description = "The write key, for clients that cannot send headers")),
    request_body(content = LegacyTrack, description = "The replaced event-tracker's body"),
    security(("basic" = []), ("bearer" = []), ()),
    responses(
        (status = 200, description = "Durably appended to the event log", body = Accepted),
        (status = 400, description = "Invalid body", body = ErrorResponse),
        (status = 401, description = "No, unknown or revoked write key", body = ErrorResponse),
        (status = 403, description = "Not a write key", body = ErrorResponse),
        (status = 413, description = "Body too large (also after decompression)", body = ErrorResponse),
        (status = 503, description = "Event log unavailable or backlogged (Retry-After)", body = ErrorResponse),
    )
)]
pub async fn legacy_track(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    query: Result<Query<KeyQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // A malformed query string (e.g. `writeKey` twice) is a 400 in the API's JSON shape, not
    // axum's plain-text rejection. The rejection text names fields, never their values.
    let Query(q) = query.map_err(|e| {
        ApiError::invalid(
            "writeKey",
            format!("invalid query string: {}", e.body_text()),
        )
    })?;
    ingest(state, Shape::Legacy, Some(peer), q.write_key, headers, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Event {
        Event {
            event_id: format!("id-{n}"),
            source: "web".into(),
            kind: EventKind::Track,
            name: Some("Signed Up".into()),
            user_id: Some(format!("user-{n}")),
            anonymous_id: None,
            group_id: None,
            previous_id: None,
            timestamp: chrono::DateTime::from_timestamp(1_700_000_000 + n as i64, 0)
                .expect("valid time"),
            original_timestamp: None,
            sent_at: None,
            received_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid time"),
            properties: Default::default(),
            traits: Default::default(),
            context: Default::default(),
            integrations: Default::default(),
        }
    }

    #[test]
    fn records_are_each_events_json_in_one_shared_buffer() {
        let events: Vec<Event> = (0..50).map(event).collect();
        let made = records(events.clone(), 8);
        assert_eq!(made.len(), events.len());
        for (r, e) in made.iter().zip(&events) {
            assert_eq!(r.payload.as_ref(), e.to_json().as_slice());
            assert_eq!(r.shard, shard::shard_of(e, 8));
            assert_eq!(Event::from_json(&r.payload).expect("decodes"), *e);
        }
        // One after another in one allocation, nothing between them.
        for pair in made.windows(2) {
            let end = pair[0].payload.as_ptr() as usize + pair[0].payload.len();
            assert_eq!(pair[1].payload.as_ptr() as usize, end);
        }
        assert!(records(Vec::new(), 8).is_empty());
    }
}
