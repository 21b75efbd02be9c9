//! `GET /v1/live`: a WebSocket that pushes one small JSON message per second with the live
//! aggregates of the key's source (see `sluice_worker::live` for how they are counted).
//!
//! A plain `GET /v1/live` without an upgrade answers the current message as JSON (history
//! included): a polling fallback, and how the dashboard checks its key before connecting.
//!
//! Authentication: a read key as `Authorization: Bearer <key>`, or as `?key=<key>` because
//! browsers cannot set headers on a WebSocket. The key is checked before the upgrade: a missing
//! or wrong key gets the usual 401/403 JSON answer and no WebSocket. The dashboard keeps its key
//! in the URL fragment and local storage; only the WebSocket URL carries it, so a reverse proxy
//! in front of sluice should not log query strings of `/v1/live`.
//!
//! Message (one per second):
//! `{"ts":UNIX_S,"total":N,"by_name":[{"name":…,"count":N}],"total_5m":N,"by_name_5m":[…],
//!   "last_5m":[N,…],"backlog":{"group":N},"pending":{"group":N},"alerts":[…]}` — `last_5m`
//! (per-second totals, oldest first, ending with `ts`) only in a client's first message and
//! after a second it missed; otherwise the client appends `total` itself.
//!
//! Slow clients: each client reads the latest snapshot from a `watch` channel, so a client that
//! falls behind skips seconds (and gets `last_5m` again) instead of queueing them; a send that
//! does not complete within [`SEND_TIMEOUT`] drops the client. Nothing per client grows.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use sluice_core::keys::KeyKind;
use sluice_core::metrics as names;
use sluice_worker::LiveHub;

use crate::auth::{authorize, key_from_headers};
use crate::error::ApiError;
use crate::AppState;

/// A send (one message, with flush) taking longer than this drops the client.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message accepted from a client (clients have nothing to say but close).
const MAX_CLIENT_MESSAGE: usize = 4 * 1024;

#[derive(Debug, Default, Deserialize)]
pub struct LiveQuery {
    key: Option<String>,
}

/// Live per-second aggregates of the key's source.
#[utoipa::path(
    get,
    path = "/v1/live",
    tag = "live",
    params(("key" = Option<String>, Query, description = "Read key, for browsers (a WebSocket cannot carry headers); or `Authorization: Bearer`")),
    responses(
        (status = 101, description = "WebSocket: one JSON message per second (`ts`, `total`, `by_name`, `last_5m`, `backlog`, `alerts`)"),
        (status = 200, description = "Without an upgrade: the current message, as JSON", content_type = "application/json", body = Object),
        (status = 401, description = "No or unknown read key", body = crate::schema::ErrorResponse),
        (status = 403, description = "A write key", body = crate::schema::ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn live(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<LiveQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let key = key_from_headers(&headers).or_else(|| query.ok().and_then(|Query(q)| q.key));
    let principal = authorize(&state.keys, key.as_deref(), KeyKind::Read)?;
    let upgrade = match upgrade {
        Ok(u) => u,
        // A plain GET (no WebSocket upgrade): the current message, with the window's history, as
        // JSON. The dashboard checks its key this way; it also serves as a polling fallback.
        Err(_) if !headers.contains_key(header::UPGRADE) => {
            let snapshot = state.live.latest();
            let message = snapshot.message(&principal.source, true);
            return Ok(([(header::CACHE_CONTROL, "no-store")], Json(message)).into_response());
        }
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let hub = state.live.clone();
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| client(socket, hub, principal.source)))
}

/// Serve one client until it leaves, falls too far behind, or the server stops.
async fn client(mut socket: WebSocket, hub: LiveHub, source: String) {
    let _counted = hub.client_guard();
    let mut rx = hub.subscribe();
    let mut last_sent: Option<i64> = None;
    // The current snapshot at once (a new client draws its chart without waiting a second).
    let mut pending = true;
    loop {
        if pending {
            pending = false;
            let snapshot = rx.borrow_and_update().clone();
            if snapshot.ts > 0 && last_sent != Some(snapshot.ts) {
                let with_history = last_sent.is_none_or(|t| snapshot.ts != t + 1);
                let text = match serde_json::to_string(&snapshot.message(&source, with_history)) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(error = %e, "live: cannot serialize a message");
                        return;
                    }
                };
                match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into())))
                    .await
                {
                    Ok(Ok(())) => last_sent = Some(snapshot.ts),
                    Ok(Err(_)) => return,
                    Err(_) => {
                        metrics::counter!(names::LIVE_SLOW_CLIENTS_DROPPED_TOTAL).increment(1);
                        tracing::debug!("live: dropping a client that does not keep up");
                        return;
                    }
                }
            }
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    // The aggregator is gone: the server is stopping.
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                pending = true;
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                // Pings are answered by the WebSocket layer; anything else is ignored.
                Some(Ok(_)) => {}
            },
        }
    }
}
