//! The query API (`/v1/query/…`): JSON reads of the warehouse for the read key's source.
//!
//! Every route takes a read key (`Authorization: Bearer`, or the HTTP Basic username as for
//! ingest): a write key is 403, no, unknown or revoked key 401. Parameters are checked here
//! before the warehouse is asked; each bad one is a 400 whose problem `path` is the parameter's
//! name. Time ranges are half-open `[from, to)`, RFC 3339, by default the last 24 hours.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sluice_core::keys::KeyKind;
use sluice_core::warehouse::{Interval, TimeRange, UserRef};
use sluice_core::Event;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{authorize, key_from_headers, Principal};
use crate::error::ApiError;
use crate::schema::{CanonicalEvent, ErrorResponse};
use crate::AppState;

/// Most buckets one count series may have.
pub const MAX_BUCKETS: i64 = 1_500;
/// Bounds of every `limit` parameter.
pub const MAX_LIMIT: u32 = 1_000;
/// The default range: the last 24 hours.
const DEFAULT_SPAN: chrono::Duration = chrono::Duration::hours(24);
/// Longest accepted event name (as at ingest).
const MAX_NAME_CHARS: usize = 200;
/// Longest accepted user id / anonymous id.
const MAX_ID_CHARS: usize = 1_000;

// --- parameters -------------------------------------------------------------------------------

/// Parameters of `GET /v1/query/counts`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CountsParams {
    /// Event name (`track` event name, page/screen name, or the kind for unnamed calls:
    /// `identify`, `page`, …). Absent: all events.
    event: Option<String>,
    /// Start of the range, RFC 3339, inclusive. Default: `to` − 24 h.
    from: Option<String>,
    /// End of the range, RFC 3339, exclusive. Default: now.
    to: Option<String>,
    /// Bucket width: `1m`, `1h` or `1d` (default `1h`); at most 1,500 buckets.
    interval: Option<String>,
}

/// Parameters of `GET /v1/query/top`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopParams {
    /// Start of the range, RFC 3339, inclusive. Default: `to` − 24 h.
    from: Option<String>,
    /// End of the range, RFC 3339, exclusive. Default: now.
    to: Option<String>,
    /// How many names, 1..=1000 (default 10).
    limit: Option<String>,
}

/// Parameters of `GET /v1/query/active-users`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeParams {
    /// Start of the range, RFC 3339, inclusive. Default: `to` − 24 h.
    from: Option<String>,
    /// End of the range, RFC 3339, exclusive. Default: now.
    to: Option<String>,
}

/// Parameters of `GET /v1/query/events`: exactly one of `user_id` and `anonymous_id`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// The user's `userId`.
    user_id: Option<String>,
    /// The visitor's `anonymousId`.
    anonymous_id: Option<String>,
    /// How many events, 1..=1000 (default 100).
    limit: Option<String>,
}

/// Parameters of `GET /v1/query/alerts`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertsParams {
    /// Start of the range, RFC 3339, inclusive. Default: `to` − 24 h.
    from: Option<String>,
    /// End of the range, RFC 3339, exclusive. Default: now.
    to: Option<String>,
    /// How many alerts, 1..=1000 (default 100).
    limit: Option<String>,
}

// --- responses --------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct CountsResponse {
    /// Every bucket of the range, oldest first; buckets without events have count 0.
    pub series: Vec<CountBucket>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CountBucket {
    /// Start of the bucket (UTC, RFC 3339).
    pub bucket: DateTime<Utc>,
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopResponse {
    /// Most frequent first (ties by name).
    pub events: Vec<TopEvent>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopEvent {
    pub name: String,
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActiveUsersResponse {
    /// Every UTC day overlapping the range, with its number of active users.
    pub daily: Vec<DailyUsers>,
    /// Distinct users over all those days.
    pub distinct: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DailyUsers {
    /// `YYYY-MM-DD` (UTC).
    #[schema(value_type = String, format = Date, example = "2024-05-01")]
    pub day: NaiveDate,
    pub users: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserEventsResponse {
    /// Newest first.
    #[schema(value_type = Vec<CanonicalEvent>)]
    pub events: Vec<Event>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertsResponse {
    /// Alerts whose window overlaps the range, newest first.
    pub alerts: Vec<AlertView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertView {
    /// Rule name, e.g. `user_rate`, `ip_many_users`, `name_burst`.
    pub rule: String,
    /// The user key or IP the alert is about.
    pub subject: String,
    /// Events (or distinct users) counted in the window.
    pub count: u64,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub first_event_id: String,
    pub last_event_id: String,
    pub created_at: DateTime<Utc>,
    /// Rule-specific facts (threshold, event name, …).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

// --- handlers ---------------------------------------------------------------------------------

/// Event counts over time, from the per-minute rollup.
#[utoipa::path(
    get,
    path = "/v1/query/counts",
    tag = "query",
    params(CountsParams),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, description = "One point per bucket, empty buckets as 0", body = CountsResponse),
        (status = 400, description = "Bad parameter", body = ErrorResponse),
        (status = 401, description = "No, unknown or revoked key", body = ErrorResponse),
        (status = 403, description = "Not a read key", body = ErrorResponse),
        (status = 503, description = "Warehouse unavailable", body = ErrorResponse),
    )
)]
pub async fn counts(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<CountsParams>, QueryRejection>,
) -> Result<Json<CountsResponse>, ApiError> {
    let who = read_key(&state, &headers)?;
    let Query(p) = params(query)?;
    let range = time_range(p.from.as_deref(), p.to.as_deref())?;
    let interval = match p.interval.as_deref() {
        None => Interval::Hour,
        Some(s) => Interval::parse(s)
            .ok_or_else(|| ApiError::invalid("interval", "must be one of 1m, 1h, 1d"))?,
    };
    let buckets = bucket_count(range, interval);
    if buckets > MAX_BUCKETS {
        return Err(ApiError::invalid(
            "interval",
            format!(
                "the range has {buckets} buckets of {}; at most {MAX_BUCKETS}: use a larger interval or a shorter range",
                interval_name(interval)
            ),
        ));
    }
    let event = match p.event.as_deref() {
        Some("") => return Err(ApiError::invalid("event", "must not be empty")),
        Some(name) if name.chars().count() > MAX_NAME_CHARS => {
            return Err(ApiError::invalid(
                "event",
                format!("longer than {MAX_NAME_CHARS} characters"),
            ))
        }
        other => other,
    };
    let series = state
        .store
        .counts(&who.source, event, range, interval)
        .await?;
    Ok(Json(CountsResponse {
        series: series
            .into_iter()
            .map(|p| CountBucket {
                bucket: p.bucket,
                count: p.count,
            })
            .collect(),
    }))
}

/// The most frequent events over a range.
#[utoipa::path(
    get,
    path = "/v1/query/top",
    tag = "query",
    params(TopParams),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, description = "Most frequent first", body = TopResponse),
        (status = 400, description = "Bad parameter", body = ErrorResponse),
        (status = 401, description = "No, unknown or revoked key", body = ErrorResponse),
        (status = 403, description = "Not a read key", body = ErrorResponse),
        (status = 503, description = "Warehouse unavailable", body = ErrorResponse),
    )
)]
pub async fn top(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<TopParams>, QueryRejection>,
) -> Result<Json<TopResponse>, ApiError> {
    let who = read_key(&state, &headers)?;
    let Query(p) = params(query)?;
    let range = time_range(p.from.as_deref(), p.to.as_deref())?;
    let limit = limit(p.limit.as_deref(), 10)?;
    let top = state.store.top_events(&who.source, range, limit).await?;
    Ok(Json(TopResponse {
        events: top
            .into_iter()
            .map(|n| TopEvent {
                name: n.name,
                count: n.count,
            })
            .collect(),
    }))
}

/// Daily active users over a range, and distinct users over the whole range.
#[utoipa::path(
    get,
    path = "/v1/query/active-users",
    tag = "query",
    params(RangeParams),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, description = "DAU per UTC day and distinct users", body = ActiveUsersResponse),
        (status = 400, description = "Bad parameter", body = ErrorResponse),
        (status = 401, description = "No, unknown or revoked key", body = ErrorResponse),
        (status = 403, description = "Not a read key", body = ErrorResponse),
        (status = 503, description = "Warehouse unavailable", body = ErrorResponse),
    )
)]
pub async fn active_users(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RangeParams>, QueryRejection>,
) -> Result<Json<ActiveUsersResponse>, ApiError> {
    let who = read_key(&state, &headers)?;
    let Query(p) = params(query)?;
    let range = time_range(p.from.as_deref(), p.to.as_deref())?;
    let days = bucket_count(range, Interval::Day);
    if days > MAX_BUCKETS {
        return Err(ApiError::invalid(
            "from",
            format!("the range spans {days} days; at most {MAX_BUCKETS}"),
        ));
    }
    let au = state.store.active_users(&who.source, range).await?;
    Ok(Json(ActiveUsersResponse {
        daily: au
            .daily
            .into_iter()
            .map(|d| DailyUsers {
                day: d.day,
                users: d.users,
            })
            .collect(),
        distinct: au.distinct,
    }))
}

/// A user's most recent raw events.
#[utoipa::path(
    get,
    path = "/v1/query/events",
    tag = "query",
    params(EventsParams),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, description = "Canonical events, newest first", body = UserEventsResponse),
        (status = 400, description = "Bad parameter", body = ErrorResponse),
        (status = 401, description = "No, unknown or revoked key", body = ErrorResponse),
        (status = 403, description = "Not a read key", body = ErrorResponse),
        (status = 503, description = "Warehouse unavailable", body = ErrorResponse),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<EventsParams>, QueryRejection>,
) -> Result<Json<UserEventsResponse>, ApiError> {
    let who = read_key(&state, &headers)?;
    let Query(p) = params(query)?;
    let user = match (p.user_id, p.anonymous_id) {
        (Some(id), None) => UserRef::UserId(user_param("user_id", id)?),
        (None, Some(id)) => UserRef::AnonymousId(user_param("anonymous_id", id)?),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "user_id",
                "give either user_id or anonymous_id, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "user_id",
                "user_id or anonymous_id is required",
            ))
        }
    };
    let limit = limit(p.limit.as_deref(), 100)?;
    let events = state.store.user_events(&who.source, &user, limit).await?;
    Ok(Json(UserEventsResponse { events }))
}

/// Alerts raised by the fraud/anomaly processor.
#[utoipa::path(
    get,
    path = "/v1/query/alerts",
    tag = "query",
    params(AlertsParams),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, description = "Alerts whose window overlaps the range, newest first", body = AlertsResponse),
        (status = 400, description = "Bad parameter", body = ErrorResponse),
        (status = 401, description = "No, unknown or revoked key", body = ErrorResponse),
        (status = 403, description = "Not a read key", body = ErrorResponse),
        (status = 503, description = "Warehouse unavailable", body = ErrorResponse),
    )
)]
pub async fn alerts(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AlertsParams>, QueryRejection>,
) -> Result<Json<AlertsResponse>, ApiError> {
    let who = read_key(&state, &headers)?;
    let Query(p) = params(query)?;
    let range = time_range(p.from.as_deref(), p.to.as_deref())?;
    let limit = limit(p.limit.as_deref(), 100)?;
    let alerts = state.store.alerts(&who.source, range, limit).await?;
    Ok(Json(AlertsResponse {
        alerts: alerts
            .into_iter()
            .map(|a| AlertView {
                rule: a.rule,
                subject: a.subject,
                count: a.count,
                window_start: a.window_start,
                window_end: a.window_end,
                first_event_id: a.first_event_id,
                last_event_id: a.last_event_id,
                created_at: a.created_at,
                details: a.details,
            })
            .collect(),
    }))
}

// --- helpers ----------------------------------------------------------------------------------

fn read_key(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    authorize(
        &state.keys,
        key_from_headers(headers).as_deref(),
        KeyKind::Read,
    )
}

/// A malformed query string (a parameter given twice, bad percent-encoding) is a 400 in the
/// API's JSON shape, not axum's plain-text rejection.
fn params<T>(query: Result<Query<T>, QueryRejection>) -> Result<Query<T>, ApiError> {
    query.map_err(|e| ApiError::invalid("", format!("invalid query string: {}", e.body_text())))
}

/// `from`/`to` with their defaults (`to` = now, `from` = `to` − 24 h); `from` must be before `to`.
pub fn time_range(from: Option<&str>, to: Option<&str>) -> Result<TimeRange, ApiError> {
    let to = match to {
        Some(s) => timestamp("to", s)?,
        None => Utc::now(),
    };
    let from = match from {
        Some(s) => timestamp("from", s)?,
        None => to - DEFAULT_SPAN,
    };
    if from >= to {
        return Err(ApiError::invalid(
            "from",
            format!(
                "must be before to ({} is not before {})",
                from.to_rfc3339(),
                to.to_rfc3339()
            ),
        ));
    }
    Ok(TimeRange { from, to })
}

/// An RFC 3339 time. A `+` offset sent unencoded arrives as a space; it is read as `+`.
fn timestamp(name: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    let parse = |s: &str| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc));
    parse(s)
        .or_else(|e| {
            if s.contains(' ') {
                parse(&s.replace(' ', "+"))
            } else {
                Err(e)
            }
        })
        .map_err(|e| {
            ApiError::invalid(
                name,
                format!("not an RFC 3339 time ({e}); e.g. 2024-05-01T12:00:00Z"),
            )
        })
}

/// `limit`: default when absent, else an integer in 1..=1000.
pub fn limit(s: Option<&str>, default: u32) -> Result<u32, ApiError> {
    let Some(s) = s else {
        return Ok(default);
    };
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid(
            "limit",
            format!("must be an integer from 1 to {MAX_LIMIT}"),
        )),
    }
}

fn user_param(name: &str, id: String) -> Result<String, ApiError> {
    if id.is_empty() {
        return Err(ApiError::invalid(name, "must not be empty"));
    }
    if id.chars().count() > MAX_ID_CHARS {
        return Err(ApiError::invalid(
            name,
            format!("longer than {MAX_ID_CHARS} characters"),
        ));
    }
    Ok(id)
}

/// How many buckets of `interval` the range has (the first one holds `from`), without listing
/// them.
pub fn bucket_count(range: TimeRange, interval: Interval) -> i64 {
    let first = interval.bucket_of(range.from).timestamp();
    // The last bucket holds the last instant before `to`.
    let last_instant = range.to - chrono::Duration::nanoseconds(1);
    let last = interval.bucket_of(last_instant).timestamp();
    (last - first) / interval.seconds() + 1
}

fn interval_name(interval: Interval) -> &'static str {
    match interval {
        Interval::Minute => "1m",
        Interval::Hour => "1h",
        Interval::Day => "1d",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        timestamp("t", s).expect("valid time")
    }

    #[test]
    fn bucket_count_matches_the_listed_buckets() {
        for (from, to) in [
            ("2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"),
            ("2024-05-01T00:00:30Z", "2024-05-01T01:00:01Z"),
            ("2024-05-01T10:59:59Z", "2024-05-01T11:00:00Z"),
            ("1969-12-31T23:00:00Z", "1970-01-03T00:00:00Z"),
        ] {
            let range = TimeRange {
                from: t(from),
                to: t(to),
            };
            for interval in [Interval::Minute, Interval::Hour, Interval::Day] {
                assert_eq!(
                    bucket_count(range, interval),
                    interval.buckets(range).len() as i64,
                    "{from} {to} {interval:?}"
                );
            }
        }
    }

    #[test]
    fn times_and_limits() {
        assert_eq!(
            t("2024-05-01T12:00:00 02:00"),
            t("2024-05-01T10:00:00Z"),
            "an unencoded + arrives as a space"
        );
        assert!(timestamp("from", "yesterday").is_err());
        assert!(time_range(Some("2024-05-02T00:00:00Z"), Some("2024-05-01T00:00:00Z")).is_err());
        assert!(time_range(Some("2024-05-01T00:00:00Z"), Some("2024-05-01T00:00:00Z")).is_err());
        let r = time_range(None, Some("2024-05-02T00:00:00Z")).expect("default from");
        assert_eq!(r.from, t("2024-05-01T00:00:00Z"));
        assert_eq!(limit(None, 7).expect("default"), 7);
        assert_eq!(limit(Some("1000"), 7).expect("max"), 1000);
        for bad in ["0", "1001", "-1", "x", ""] {
            assert!(limit(Some(bad), 7).is_err(), "{bad}");
        }
    }
}
