//! Integration tests of the ingest HTTP API: every route with good input, authentication, every
//! kind of bad input, compression, partial batches, exactly-once landing in the log, CORS,
//! backpressure, an unreachable Redis, and slow clients. Each test runs the real app on port 0
//! through the harness in `common/` (real Redis with a fresh prefix, real PostgreSQL with a fresh
//! database).

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener as StdTcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{gzip, zstd, Auth, Resp, TestApp};
use serde_json::{json, Value};
use sluice_core::keys::KeyKind;
use sluice_core::log::{EventLog, StartFrom};
use sluice_core::warehouse::KeyStore;
use sluice_core::{Event, EventKind};
use sluice_server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Allowed distance between a time the server computed and the one the test expects.
const TIME_TOLERANCE_MS: i64 = 2_000;

#[track_caller]
fn assert_close(actual: DateTime<Utc>, expected: DateTime<Utc>, what: &str) {
    let diff = (actual - expected).num_milliseconds().abs();
    assert!(
        diff <= TIME_TOLERANCE_MS,
        "{what}: {actual} is {diff} ms away from {expected}"
    );
}

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test timestamp")
        .with_timezone(&Utc)
}

fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("deflate write");
    e.finish().expect("deflate finish")
}

#[track_caller]
fn assert_ok(resp: &Resp, accepted: u64) {
    assert_eq!(resp.status, 200, "body: {}", resp.text);
    assert_eq!(resp.body["success"], true, "body: {}", resp.text);
    assert_eq!(resp.body["accepted"], accepted, "body: {}", resp.text);
}

/// Poll `f` every `every` until it returns `Some`, panicking with `what` after `within`.
async fn await_condition<T, F, Fut>(within: Duration, every: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(every).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Every route with good input
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn track_lands_with_every_canonical_field() {
    let app = TestApp::spawn().await;
    let before = Utc::now();
    let resp = app
        .post_auth(
            "/v1/track",
            Auth::Basic(&app.write_key),
            &json!({
                "messageId": "track-1",
                "userId": "user-1",
                "anonymousId": "anon-1",
                "event": "Order Completed",
                "properties": {"revenue": 12.5, "items": [{"sku": "a"}]},
                "context": {"locale": "de-DE", "library": {"name": "curl"}},
                "integrations": {"All": true, "Mixpanel": false},
                "timestamp": "2024-03-01T10:00:00.000Z"
            }),
        )
        .await;
    assert_ok(&resp, 1);
    let after = Utc::now();

    let events = app.logged_events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.event_id, "track-1");
    assert_eq!(e.kind, EventKind::Track);
    assert_eq!(e.source, app.source);
    assert_eq!(e.name.as_deref(), Some("Order Completed"));
    assert_eq!(e.user_id.as_deref(), Some("user-1"));
    assert_eq!(e.anonymous_id.as_deref(), Some("anon-1"));
    assert_eq!(e.group_id, None);
    assert_eq!(e.previous_id, None);
    assert_eq!(
        Value::Object(e.properties.to_map()),
        json!({"revenue": 12.5, "items": [{"sku": "a"}]})
    );
    assert!(e.traits.is_empty(), "{:?}", e.traits);
    assert_eq!(
        Value::Object(e.context.to_map()),
        json!({"locale": "de-DE", "library": {"name": "curl"}, "ip": "127.0.0.1"})
    );
    assert_eq!(
        Value::Object(e.integrations.to_map()),
        json!({"All": true, "Mixpanel": false})
    );
    assert!(
        e.received_at >= before && e.received_at <= after,
        "{}",
        e.received_at
    );
    // No sentAt: the client's own time is kept.
    assert_eq!(e.original_timestamp, Some(ts("2024-03-01T10:00:00Z")));
    assert_eq!(e.sent_at, None);
    assert_eq!(e.timestamp, ts("2024-03-01T10:00:00Z"));
}

#[tokio::test]
async fn identify_page_screen_group_alias_land_with_their_fields() {
    let app = TestApp::spawn().await;
    let calls = [
        (
            "/v1/identify",
            json!({"messageId": "id-1", "userId": "u1", "traits": {"email": "a@b.c", "plan": "pro"}}),
        ),
        (
            "/v1/page",
            json!({"messageId": "page-1", "anonymousId": "anon-9", "name": "Pricing", "category": "Docs",
                   "properties": {"url": "https://x.test/pricing"}}),
        ),
        (
            "/v1/screen",
            json!({"messageId": "screen-1", "userId": "u1", "name": "Home", "properties": {"tab": 2}}),
        ),
        (
            "/v1/group",
            json!({"messageId": "group-1", "userId": "u1", "groupId": "org-7", "traits": {"name": "Acme"}}),
        ),
        (
            "/v1/alias",
            json!({"messageId": "alias-1", "userId": "u1", "previousId": "anon-9"}),
        ),
    ];
    for (path, body) in &calls {
        let resp = app.post_auth(path, Auth::Basic(&app.write_key), body).await;
        assert_ok(&resp, 1);
    }
    let events = app.logged_events().await;
    assert_eq!(events.len(), 5, "{events:?}");
    let by_id = |id: &str| -> &Event {
        events
            .iter()
            .find(|e| e.event_id == id)
            .unwrap_or_else(|| panic!("{id} not in the log: {events:?}"))
    };

    let identify = by_id("id-1");
    assert_eq!(identify.kind, EventKind::Identify);
    assert_eq!(identify.user_id.as_deref(), Some("u1"));
    assert_eq!(identify.name, None);
    assert_eq!(
        Value::Object(identify.traits.to_map()),
        json!({"email": "a@b.c", "plan": "pro"})
    );

    let page = by_id("page-1");
    assert_eq!(page.kind, EventKind::Page);
    assert_eq!(page.user_id, None);
    assert_eq!(page.anonymous_id.as_deref(), Some("anon-9"));
    assert_eq!(page.name.as_deref(), Some("Pricing"));
    assert_eq!(
        Value::Object(page.properties.to_map()),
        json!({"url": "https://x.test/pricing", "category": "Docs"})
    );

    let screen = by_id("screen-1");
    assert_eq!(screen.kind, EventKind::Screen);
    assert_eq!(screen.name.as_deref(), Some("Home"));
    assert_eq!(Value::Object(screen.properties.to_map())["tab"], 2);

    let group = by_id("group-1");
    assert_eq!(group.kind, EventKind::Group);
    assert_eq!(group.group_id.as_deref(), Some("org-7"));
    assert_eq!(
        Value::Object(group.traits.to_map()),
        json!({"name": "Acme"})
    );

    let alias = by_id("alias-1");
    assert_eq!(alias.kind, EventKind::Alias);
    assert_eq!(alias.user_id.as_deref(), Some("u1"));
    assert_eq!(alias.previous_id.as_deref(), Some("anon-9"));

    for e in &events {
        assert_eq!(e.source, app.source);
        assert_eq!(
            Value::Object(e.context.to_map())["ip"],
            "127.0.0.1",
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn missing_message_id_gets_a_generated_uuid_v7() {
    let app = TestApp::spawn().await;
    let resp = app
        .post_json("/v1/track", &json!({"userId": "u1", "event": "No Id"}))
        .await;
    assert_eq!(resp.0, 200, "{}", resp.1);
    let events = app.logged_events().await;
    assert_eq!(events.len(), 1);
    let id = uuid::Uuid::parse_str(&events[0].event_id)
        .unwrap_or_else(|e| panic!("event_id {:?} is not a UUID: {e}", events[0].event_id));
    assert_eq!(id.get_version_num(), 7, "{id}");
}

#[tokio::test]
async fn clock_skew_is_corrected_with_sent_at() {
    let app = TestApp::spawn().await;
    // The client's clock is one hour ahead; the event happened 5 s before it was sent.
    let client_now = Utc::now() + chrono::Duration::hours(1);
    let sent_at = client_now;
    let original = client_now - chrono::Duration::seconds(5);
    let resp = app
        .post_auth(
            "/v1/track",
            Auth::Basic(&app.write_key),
            &json!({
                "messageId": "skewed",
                "userId": "u1",
                "event": "Skewed",
                "timestamp": original.to_rfc3339(),
                "sentAt": sent_at.to_rfc3339(),
            }),
        )
        .await;
    assert_ok(&resp, 1);
    let e = app.logged_event("skewed").await;
    assert_eq!(e.original_timestamp, Some(original));
    assert_eq!(e.sent_at, Some(sent_at));
    // Exactly Segment's formula, on the server's own receive time …
    assert_eq!(e.timestamp, e.received_at - (sent_at - original));
    // … which puts the event 5 s before now, not an hour into the future.
    assert_close(
        e.timestamp,
        Utc::now() - chrono::Duration::seconds(5),
        "corrected timestamp",
    );
}

#[tokio::test]
async fn batch_merges_batch_context_and_integrations_with_event_keys_winning() {
    let app = TestApp::spawn().await;
    let sent_at = Utc::now() - chrono::Duration::minutes(10); // client clock 10 min behind
    let original = sent_at - chrono::Duration::seconds(30);
    let resp = app
        .post_auth(
            "/v1/batch",
            Auth::Basic(&app.write_key),
            &json!({
                "sentAt": sent_at.to_rfc3339(),
                "context": {"locale": "de-DE", "library": {"name": "batch-lib"}, "ip": "10.1.2.3"},
                "integrations": {"All": false, "Mixpanel": true},
                "batch": [
                    {"type": "track", "messageId": "b-1", "userId": "u1", "event": "A",
                     "timestamp": original.to_rfc3339(),
                     "context": {"locale": "fr-FR"}, "integrations": {"Mixpanel": false}},
                    {"type": "identify", "messageId": "b-2", "userId": "u2", "traits": {"x": 1}},
                    {"type": "page", "messageId": "b-3", "anonymousId": "a3", "name": "Home",
                     "context": {"ip": "192.0.2.1"}}
                ]
            }),
        )
        .await;
    assert_ok(&resp, 3);
    assert!(
        resp.body.get("rejected").is_none(),
        "no rejections expected: {}",
        resp.text
    );

    let b1 = app.logged_event("b-1").await;
    assert_eq!(b1.kind, EventKind::Track);
    assert_eq!(
        Value::Object(b1.context.to_map()),
        json!({"locale": "fr-FR", "library": {"name": "batch-lib"}, "ip": "10.1.2.3"})
    );
    assert_eq!(
        Value::Object(b1.integrations.to_map()),
        json!({"All": false, "Mixpanel": false})
    );
    // Batch-level sentAt applies to each event.
    assert_eq!(b1.sent_at, Some(sent_at));
    assert_eq!(b1.timestamp, b1.received_at - (sent_at - original));
    assert_close(
        b1.timestamp,
        Utc::now() - chrono::Duration::seconds(30),
        "corrected batch timestamp",
    );

    let b2 = app.logged_event("b-2").await;
    assert_eq!(b2.kind, EventKind::Identify);
    assert_eq!(
        Value::Object(b2.context.to_map()),
        json!({"locale": "de-DE", "library": {"name": "batch-lib"}, "ip": "10.1.2.3"})
    );
    assert_eq!(
        Value::Object(b2.integrations.to_map()),
        json!({"All": false, "Mixpanel": true})
    );
    // Without a timestamp the receive time is the event time.
    assert_eq!(b2.timestamp, b2.received_at);

    let b3 = app.logged_event("b-3").await;
    assert_eq!(b3.kind, EventKind::Page);
    assert_eq!(
        Value::Object(b3.context.to_map())["ip"],
        "192.0.2.1",
        "the event's own ip wins: {:?}",
        b3.context
    );
    assert_eq!(Value::Object(b3.context.to_map())["locale"], "de-DE");
}

#[tokio::test]
async fn import_route_takes_a_batch() {
    let app = TestApp::spawn().await;
    let resp = app
        .post_auth(
            "/v1/import",
            Auth::Basic(&app.write_key),
            &json!({"batch": [
                {"type": "track", "messageId": "imp-1", "userId": "u1", "event": "Imported",
                 "timestamp": "2023-01-01T00:00:00Z"},
                {"type": "alias", "messageId": "imp-2", "userId": "u1", "previousId": "old"}
            ]}),
        )
        .await;
    assert_ok(&resp, 2);
    let e = app.logged_event("imp-1").await;
    assert_eq!(e.name.as_deref(), Some("Imported"));
    assert_eq!(e.timestamp, ts("2023-01-01T00:00:00Z"));
    assert_eq!(app.logged_event("imp-2").await.kind, EventKind::Alias);
}

#[tokio::test]
async fn legacy_track_maps_to_a_track_event_with_write_key_in_query() {
    let app = TestApp::spawn().await;
    let url = app.url(&format!("/track?writeKey={}", app.write_key));
    let resp = app
        .send(app.http.post(&url).json(&json!({
            "eventName": "page_view",
            "url": "https://shop.test/cart",
            "userId": "legacy-user",
            "metadata": {"button": "buy", "n": 3}
        })))
        .await;
    assert_ok(&resp, 1);
    // userId and metadata are optional.
    let resp = app
        .send(
            app.http
                .post(&url)
                .json(&json!({"eventName": "click", "url": "https://shop.test/"})),
        )
        .await;
    assert_ok(&resp, 1);

    let events = app.logged_events().await;
    assert_eq!(events.len(), 2, "{events:?}");
    let view = events
        .iter()
        .find(|e| e.name.as_deref() == Some("page_view"))
        .expect("page_view logged");
    assert_eq!(view.kind, EventKind::Track);
    assert_eq!(view.source, app.source);
    assert_eq!(view.user_id.as_deref(), Some("legacy-user"));
    assert_eq!(
        Value::Object(view.context.to_map())["page"]["url"],
        "https://shop.test/cart"
    );
    assert_eq!(Value::Object(view.context.to_map())["ip"], "127.0.0.1");
    assert_eq!(
        Value::Object(view.properties.to_map()),
        json!({"button": "buy", "n": 3})
    );
    let id = uuid::Uuid::parse_str(&view.event_id).expect("generated event id is a UUID");
    assert_eq!(id.get_version_num(), 7);

    let click = events
        .iter()
        .find(|e| e.name.as_deref() == Some("click"))
        .expect("click logged");
    assert_eq!(click.user_id, None);
    assert!(click.properties.is_empty());
    assert_eq!(
        Value::Object(click.context.to_map())["page"]["url"],
        "https://shop.test/"
    );

    // Without the key in the query, the legacy route is closed like every other.
    let resp = app
        .send(
            app.http
                .post(app.url("/track"))
                .json(&json!({"eventName": "x", "url": "u"})),
        )
        .await;
    resp.assert_error(401, "unauthorized");
    // A wrong key in the query.
    let resp = app
        .send(
            app.http
                .post(app.url("/track?writeKey=sk_w_nope"))
                .json(&json!({"eventName": "x", "url": "u"})),
        )
        .await;
    resp.assert_error(401, "unauthorized");
    assert_eq!(app.logged_events().await.len(), 2);
}

#[tokio::test]
async fn native_events_accept_a_json_array_and_ndjson() {
    let app = TestApp::spawn().await;
    let resp = app
        .post_auth(
            "/v1/events",
            Auth::Bearer(&app.write_key),
            &json!([
                {"kind": "track", "event_id": "n-1", "user_id": "u1", "name": "Native A",
                 "properties": {"k": "v"}, "timestamp": "2024-05-05T05:05:05Z"},
                {"kind": "identify", "event_id": "n-2", "anonymous_id": "a2", "traits": {"t": true}}
            ]),
        )
        .await;
    assert_ok(&resp, 2);

    let ndjson = concat!(
        r#"{"kind":"track","event_id":"n-3","user_id":"u3","name":"Native B"}"#,
        "\n\n",
        r#"{"kind":"group","event_id":"n-4","user_id":"u4","group_id":"g4"}"#,
        "\n"
    );
    let resp = app
        .post_bytes(
            "/v1/events",
            &[("content-type", "application/x-ndjson")],
            ndjson.as_bytes().to_vec(),
        )
        .await;
    assert_ok(&resp, 2);

    let n1 = app.logged_event("n-1").await;
    assert_eq!(n1.kind, EventKind::Track);
    assert_eq!(n1.name.as_deref(), Some("Native A"));
    assert_eq!(Value::Object(n1.properties.to_map())["k"], "v");
    assert_eq!(n1.timestamp, ts("2024-05-05T05:05:05Z"));
    assert_eq!(n1.source, app.source);
    let n2 = app.logged_event("n-2").await;
    assert_eq!(n2.kind, EventKind::Identify);
    assert_eq!(n2.anonymous_id.as_deref(), Some("a2"));
    assert_eq!(Value::Object(n2.traits.to_map())["t"], true);
    assert_eq!(
        app.logged_event("n-3").await.name.as_deref(),
        Some("Native B")
    );
    assert_eq!(
        app.logged_event("n-4").await.group_id.as_deref(),
        Some("g4")
    );
    assert_eq!(app.logged_events().await.len(), 4);
}

#[tokio::test]
async fn gzip_zstd_and_deflate_bodies_are_accepted() {
    let app = TestApp::spawn().await;
    let body = |id: &str| {
        serde_json::to_vec(&json!({"messageId": id, "userId": "u", "event": "Compressed"}))
            .expect("json")
    };
    let resp = app
        .post_bytes(
            "/v1/track",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            gzip(&body("gz")),
        )
        .await;
    assert_ok(&resp, 1);
    let resp = app
        .post_bytes(
            "/v1/track",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "zstd"),
            ],
            zstd(&body("zs")),
        )
        .await;
    assert_ok(&resp, 1);
    let resp = app
        .post_bytes(
            "/v1/track",
            &[("content-encoding", "deflate")],
            deflate(&body("df")),
        )
        .await;
    assert_ok(&resp, 1);
    let batch = serde_json::to_vec(&json!({"batch": (0..50).map(|i| json!({
        "type": "track", "messageId": format!("gzb-{i}"), "userId": "u", "event": "Compressed"
    })).collect::<Vec<_>>()}))
    .expect("json");
    let resp = app
        .post_bytes("/v1/batch", &[("content-encoding", "gzip")], gzip(&batch))
        .await;
    assert_ok(&resp, 50);

    let ids: BTreeSet<String> = app
        .logged_events()
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    let mut expected: BTreeSet<String> = (0..50).map(|i| format!("gzb-{i}")).collect();
    expected.insert("gz".into());
    expected.insert("zs".into());
    expected.insert("df".into());
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn healthz_answers_200() {
    let app = TestApp::spawn().await;
    let resp = app.send(app.http.get(app.url("/healthz"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert_eq!(resp.body["status"], "ok");
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

fn track_body(id: &str) -> Value {
    json!({"messageId": id, "userId": "u1", "event": "Auth Test"})
}

#[tokio::test]
async fn missing_key_is_401_json() {
    let app = TestApp::spawn().await;
    for path in ["/v1/track", "/v1/batch", "/v1/events", "/track"] {
        let body = match path {
            "/v1/batch" => json!({"batch": [{"type": "track", "userId": "u", "event": "e"}]}),
            "/v1/events" => json!([{"kind": "track", "user_id": "u", "name": "e"}]),
            "/track" => json!({"eventName": "e", "url": "u"}),
            _ => track_body("no-key"),
        };
        let resp = app.post_auth(path, Auth::None, &body).await;
        resp.assert_error(401, "unauthorized");
        assert!(
            resp.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("write key")),
            "{path}: the message says what is missing: {}",
            resp.text
        );
        assert!(
            resp.header("www-authenticate").is_some(),
            "{path}: {:?}",
            resp.headers
        );
    }
    app.assert_log_empty("requests without a key").await;
}

#[tokio::test]
async fn unknown_key_is_401_and_the_key_is_never_echoed() {
    let app = TestApp::spawn().await;
    let bogus = "sk_w_bogus_key_that_does_not_exist_4242";
    for auth in [Auth::Basic(bogus), Auth::Bearer(bogus)] {
        let resp = app
            .post_auth("/v1/track", auth, &track_body("unknown"))
            .await;
        resp.assert_error(401, "unauthorized");
        assert!(!resp.text.contains(bogus), "key echoed: {}", resp.text);
    }
    // In the body.
    let mut body = track_body("unknown-body");
    body["writeKey"] = json!(bogus);
    let resp = app.post_auth("/v1/track", Auth::None, &body).await;
    resp.assert_error(401, "unauthorized");
    assert!(!resp.text.contains(bogus), "key echoed: {}", resp.text);
    // A read key used for ingest: its message must not echo it either.
    let resp = app
        .post_auth("/v1/track", Auth::Basic(&app.read_key), &track_body("r"))
        .await;
    assert!(
        !resp.text.contains(&app.read_key),
        "key echoed: {}",
        resp.text
    );
    app.assert_log_empty("requests with unknown keys").await;
}

#[tokio::test]
async fn read_key_cannot_ingest() {
    let app = TestApp::spawn().await;
    for auth in [Auth::Basic(&app.read_key), Auth::Bearer(&app.read_key)] {
        let resp = app
            .post_auth("/v1/track", auth, &track_body("read-key"))
            .await;
        resp.assert_error(403, "forbidden");
    }
    let mut body = json!({"batch": [track_body("read-key-body")]});
    body["batch"][0]["type"] = json!("track");
    body["writeKey"] = json!(app.read_key);
    let resp = app.post_auth("/v1/batch", Auth::None, &body).await;
    resp.assert_error(403, "forbidden");
    let url = app.url(&format!("/track?writeKey={}", app.read_key));
    let resp = app
        .send(
            app.http
                .post(&url)
                .json(&json!({"eventName": "e", "url": "u"})),
        )
        .await;
    resp.assert_error(403, "forbidden");
    app.assert_log_empty("requests with a read key").await;
}

#[tokio::test]
async fn basic_bearer_and_body_write_key_all_work() {
    let app = TestApp::spawn().await;
    assert_ok(
        &app.post_auth(
            "/v1/track",
            Auth::Basic(&app.write_key),
            &track_body("basic"),
        )
        .await,
        1,
    );
    assert_ok(
        &app.post_auth(
            "/v1/track",
            Auth::Bearer(&app.write_key),
            &track_body("bearer"),
        )
        .await,
        1,
    );
    let mut single = track_body("body-single");
    single["writeKey"] = json!(app.write_key);
    assert_ok(&app.post_auth("/v1/track", Auth::None, &single).await, 1);
    let batch = json!({"writeKey": app.write_key, "batch": [
        {"type": "track", "messageId": "body-batch", "userId": "u1", "event": "Auth Test"}
    ]});
    assert_ok(&app.post_auth("/v1/batch", Auth::None, &batch).await, 1);
    // A Basic header without the trailing padding or password separator still works.
    {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD.encode(app.write_key.as_bytes());
        let resp = app
            .post_bytes(
                "/v1/track",
                &[("authorization", &format!("Basic {raw}"))],
                serde_json::to_vec(&track_body("basic-no-colon")).expect("json"),
            )
            .await;
        assert_ok(&resp, 1);
    }

    let ids: BTreeSet<String> = app
        .logged_events()
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    let expected: BTreeSet<String> = [
        "basic",
        "bearer",
        "body-single",
        "body-batch",
        "basic-no-colon",
    ]
    .map(String::from)
    .into();
    assert_eq!(ids, expected);
    // The key in the body is not stored in the event.
    for e in app.logged_events().await {
        let json = String::from_utf8(e.to_json()).expect("utf8");
        assert!(
            !json.contains(&app.write_key),
            "key stored in event: {json}"
        );
    }
}

/// The binary refreshes the key cache every 5 s (`KEY_REFRESH` in `sluice serve`/`api`); tests
/// call `refresh` directly instead of waiting for the loop.
#[tokio::test]
async fn key_created_after_start_works_once_the_cache_refreshed() {
    let app = TestApp::spawn().await;
    let (new_key, _) = app
        .store
        .create_key("late-source", KeyKind::Write)
        .await
        .expect("create key");
    let resp = app
        .post_auth("/v1/track", Auth::Basic(&new_key), &track_body("late-1"))
        .await;
    resp.assert_error(401, "unauthorized");
    app.keys.refresh(app.store.as_ref()).await.expect("refresh");
    let resp = app
        .post_auth("/v1/track", Auth::Basic(&new_key), &track_body("late-2"))
        .await;
    assert_ok(&resp, 1);
    let events = app.logged_events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].event_id, "late-2");
    assert_eq!(events[0].source, "late-source", "source comes from the key");
}

#[tokio::test]
async fn revoked_key_stops_working_after_refresh() {
    let app = TestApp::spawn().await;
    assert_ok(
        &app.post_auth(
            "/v1/track",
            Auth::Basic(&app.write_key),
            &track_body("before"),
        )
        .await,
        1,
    );
    app.store.revoke_key(&app.write_key).await.expect("revoke");
    app.keys.refresh(app.store.as_ref()).await.expect("refresh");
    let resp = app
        .post_auth(
            "/v1/track",
            Auth::Basic(&app.write_key),
            &track_body("after"),
        )
        .await;
    resp.assert_error(401, "unauthorized");
    assert!(!resp.text.contains(&app.write_key), "{}", resp.text);
    let events = app.logged_events().await;
    assert_eq!(
        events
            .iter()
            .map(|e| e.event_id.as_str())
            .collect::<Vec<_>>(),
        ["before"]
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input: a 4xx JSON answer naming the problem, and nothing in the log
// ---------------------------------------------------------------------------------------------

struct Bad {
    name: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// Expected `errors[].path` (`None`: the answer carries no `errors`).
    problem_path: Option<&'static str>,
    /// A piece of the message (of `errors[0]` when there are errors, else of `message`).
    message: &'static str,
}

fn bad(name: &'static str, path: &'static str, body: impl Into<Vec<u8>>) -> Bad {
    Bad {
        name,
        path,
        headers: vec![("content-type", "application/json".into())],
        body: body.into(),
        status: 400,
        code: "invalid_request",
        problem_path: Some(""),
        message: "",
    }
}

impl Bad {
    fn expect(mut self, problem_path: &'static str, message: &'static str) -> Bad {
        self.problem_path = Some(problem_path);
        self.message = message;
        self
    }

    fn status(mut self, status: u16, code: &'static str, message: &'static str) -> Bad {
        self.status = status;
        self.code = code;
        self.problem_path = None;
        self.message = message;
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Bad {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.to_string()));
        self
    }
}

fn json_bytes(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).expect("json")
}

/// A value nested `depth` levels deep (objects), counting the outermost.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!({ "n": v });
    }
    v
}

async fn check_bad(app: &TestApp, case: &Bad) {
    let mut req = app
        .http
        .post(app.url(case.path))
        .basic_auth(&app.write_key, Some(""))
        .body(case.body.clone());
    for (k, v) in &case.headers {
        req = req.header(*k, v);
    }
    let resp = app.send(req).await;
    assert_eq!(
        resp.status, case.status,
        "{}: status; body: {}",
        case.name, resp.text
    );
    assert_eq!(resp.body["success"], false, "{}: {}", case.name, resp.text);
    assert_eq!(
        resp.body["error"], case.code,
        "{}: {}",
        case.name, resp.text
    );
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{}: JSON error body expected, headers {:?}",
        case.name,
        resp.headers
    );
    match case.problem_path {
        Some(path) => {
            let problems = resp.problems();
            assert!(
                !problems.is_empty(),
                "{}: errors[] expected: {}",
                case.name,
                resp.text
            );
            assert!(
                problems
                    .iter()
                    .any(|(p, m)| p == path && m.contains(case.message)),
                "{}: expected a problem at {path:?} mentioning {:?}, got {problems:?}",
                case.name,
                case.message
            );
        }
        None => {
            let message = resp.body["message"].as_str().unwrap_or("");
            assert!(
                message.contains(case.message),
                "{}: message {message:?} should mention {:?}",
                case.name,
                case.message
            );
        }
    }
    app.assert_log_empty(case.name).await;
}

#[tokio::test]
async fn every_kind_of_bad_input_is_a_4xx_json_and_logs_nothing() {
    let app = TestApp::spawn().await;
    let big_property = "x".repeat(33 * 1024);
    let long_id = "m".repeat(101);
    let long_name = "e".repeat(201);
    let cases = vec![
        bad("malformed JSON", "/v1/track", r#"{"userId":"u","event":"#)
            .expect("", "JSON"),
        bad("malformed JSON in a batch", "/v1/batch", "{batch:[1,2]}").expect("", "malformed JSON"),
        bad("malformed NDJSON-free JSON to /v1/events", "/v1/events", "[{").expect("", "JSON"),
        bad("empty body", "/v1/track", "").expect("", "empty"),
        bad("whitespace body", "/v1/batch", "  \n ").expect("", "empty"),
        bad("array to a single-event route", "/v1/track", "[1,2]").expect("", "JSON object"),
        bad("string to a single-event route", "/v1/identify", r#""hello""#)
            .expect("", "JSON object"),
        bad("object to /v1/events", "/v1/events", json_bytes(json!({"kind": "track"})))
            .expect("", "JSON array"),
        bad("array to /v1/batch", "/v1/batch", "[]").expect("", "unexpected JSON shape"),
        bad("batch is not an array", "/v1/batch", json_bytes(json!({"batch": {"a": 1}})))
            .expect("", "unexpected JSON shape"),
        bad("empty batch", "/v1/batch", json_bytes(json!({"batch": []})))
            .expect("batch", "no events"),
        bad("batch context not an object", "/v1/batch",
            json_bytes(json!({"context": 3, "batch": [{"type": "track", "userId": "u", "event": "e"}]})))
            .expect("context", "must be an object"),
        bad("wrong Content-Type", "/v1/track", json_bytes(track_body("ct")))
            .header("content-type", "application/xml")
            .status(415, "unsupported_media_type", "application/xml"),
        bad("form Content-Type", "/v1/batch", "batch=1")
            .header("content-type", "application/x-www-form-urlencoded")
            .status(415, "unsupported_media_type", "Content-Type"),
        bad("NDJSON to a Segment route", "/v1/track", json_bytes(track_body("nd")))
            .header("content-type", "application/x-ndjson")
            .status(415, "unsupported_media_type", "NDJSON"),
        bad("NDJSON to /v1/batch", "/v1/batch", json_bytes(track_body("nd")))
            .header("content-type", "application/x-ndjson")
            .status(415, "unsupported_media_type", "NDJSON"),
        bad("track without event", "/v1/track", json_bytes(json!({"userId": "u"})))
            .expect("event", "required"),
        bad("track with an empty event", "/v1/track", json_bytes(json!({"userId": "u", "event": " "})))
            .expect("event", "empty"),
        bad("track with a non-string event", "/v1/track", json_bytes(json!({"userId": "u", "event": 5})))
            .expect("event", "string"),
        bad("no userId nor anonymousId", "/v1/track", json_bytes(json!({"event": "e"})))
            .expect("userId", "userId or anonymousId is required"),
        bad("identify without ids", "/v1/identify", json_bytes(json!({"traits": {}})))
            .expect("userId", "userId or anonymousId is required"),
        bad("group without groupId", "/v1/group", json_bytes(json!({"userId": "u"})))
            .expect("groupId", "required"),
        bad("alias without previousId", "/v1/alias", json_bytes(json!({"userId": "u"})))
            .expect("previousId", "required"),
        bad("alias without userId", "/v1/alias", json_bytes(json!({"previousId": "p"})))
            .expect("userId", "required"),
        bad("messageId over 100 chars", "/v1/track",
            json_bytes(json!({"userId": "u", "event": "e", "messageId": long_id})))
            .expect("messageId", "longer than 100"),
        bad("empty messageId", "/v1/track",
            json_bytes(json!({"userId": "u", "event": "e", "messageId": ""})))
            .expect("messageId", "empty"),
        bad("event name over 200 chars", "/v1/track",
            json_bytes(json!({"userId": "u", "event": long_name})))
            .expect("event", "longer than 200"),
        bad("nesting deeper than 32", "/v1/track",
            json_bytes(json!({"userId": "u", "event": "e", "properties": nested(32)})))
            .expect("", "depth"),
        bad("event over 32 KB", "/v1/track",
            json_bytes(json!({"userId": "u", "event": "e", "properties": {"blob": big_property}})))
            .expect("", "bytes"),
        bad("batch over 2,500 events", "/v1/batch",
            json_bytes(json!({"batch": (0..2501).map(|_| json!({"type":"track","userId":"u","event":"e"})).collect::<Vec<_>>()})))
            .expect("batch", "2501 events"),
        bad("native request over 2,500 events", "/v1/events",
            json_bytes(json!((0..2501).map(|_| json!({"kind":"track","user_id":"u","name":"e"})).collect::<Vec<_>>())))
            .expect("", "2501 events"),
        bad("invalid timestamp string", "/v1/track",
            json_bytes(json!({"userId": "u", "event": "e", "timestamp": "yesterday"})))
            .expect("timestamp", "RFC 3339"),
        bad("timestamp without a time zone", "/v1/track",
            json_bytes(json!({"userId": "u", "event": "e", "timestamp": "2024-01-01T00:00:00"})))
            .expect("timestamp", "time zone"),
        bad("invalid sentAt", "/v1/track",
            json_bytes(json!({"userId": "u", "event": "e", "sentAt": 17})))
            .expect("sentAt", "string"),
        bad("properties not an object", "/v1/track",
            json_bytes(json!({"userId": "u", "event": "e", "properties": [1]})))
            .expect("properties", "must be an object"),
        bad("unknown type in a batch", "/v1/batch",
            json_bytes(json!({"batch": [{"type": "purchase", "userId": "u"}]})))
            .expect("batch[0].type", "unknown type"),
        bad("legacy /track without eventName", "/track", json_bytes(json!({"url": "u"})))
            .expect("eventName", "required"),
        bad("garbage gzip", "/v1/track", "this is not gzip")
            .header("content-encoding", "gzip")
            .expect("", "gzip"),
        bad("garbage zstd", "/v1/track", "this is not zstd")
            .header("content-encoding", "zstd")
            .expect("", "zstd"),
        bad("unknown Content-Encoding", "/v1/track", json_bytes(track_body("br")))
            .header("content-encoding", "br")
            .status(415, "unsupported_media_type", "Content-Encoding"),
        bad("body not UTF-8", "/v1/track", vec![0xff, 0xfe, 0x7b])
            .expect("", "UTF-8"),
    ];
    for case in &cases {
        check_bad(&app, case).await;
    }
}

#[tokio::test]
async fn body_over_500_kb_is_413() {
    let app = TestApp::spawn().await;
    // A valid batch just over the limit, so only its size is wrong.
    let mut events = Vec::new();
    let mut body = Vec::new();
    while body.len() <= 500 * 1024 {
        events.push(json!({"type": "track", "userId": "u", "event": "Big",
                           "properties": {"pad": "p".repeat(1000)}}));
        body = json_bytes(json!({ "batch": events }));
    }
    let resp = app
        .post_bytes("/v1/batch", &[("content-type", "application/json")], body)
        .await;
    resp.assert_error(413, "payload_too_large");
    assert!(
        resp.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("512000")),
        "{}",
        resp.text
    );
    app.assert_log_empty("oversize body").await;
}

#[tokio::test]
async fn gzip_bomb_is_413() {
    let app = TestApp::spawn().await;
    // 20 MB of a valid-looking JSON prefix and spaces: ~20 KB compressed.
    let mut inflated = br#"{"batch":[{"type":"track","userId":"u","event":"bomb"}]"#.to_vec();
    inflated.resize(20 * 1024 * 1024, b' ');
    inflated.push(b'}');
    let bomb = gzip(&inflated);
    assert!(bomb.len() < 100 * 1024, "bomb is {} bytes", bomb.len());
    let resp = app
        .post_bytes("/v1/batch", &[("content-encoding", "gzip")], bomb)
        .await;
    resp.assert_error(413, "payload_too_large");
    assert!(
        resp.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("decompression")),
        "{}",
        resp.text
    );
    // Same with zstd.
    let bomb = zstd(&inflated);
    let resp = app
        .post_bytes("/v1/batch", &[("content-encoding", "zstd")], bomb)
        .await;
    resp.assert_error(413, "payload_too_large");
    app.assert_log_empty("decompression bomb").await;
}

#[tokio::test]
async fn unknown_route_is_404_json_and_get_on_ingest_is_405_json() {
    let app = TestApp::spawn().await;
    let resp = app
        .post_auth("/v1/nope", Auth::Basic(&app.write_key), &track_body("x"))
        .await;
    resp.assert_error(404, "not_found");
    let resp = app.send(app.http.get(app.url("/does/not/exist"))).await;
    resp.assert_error(404, "not_found");
    for path in [
        "/v1/track",
        "/v1/identify",
        "/v1/batch",
        "/v1/events",
        "/track",
    ] {
        let resp = app
            .send(
                app.http
                    .get(app.url(path))
                    .basic_auth(&app.write_key, Some("")),
            )
            .await;
        resp.assert_error(405, "method_not_allowed");
    }
    let resp = app.send(app.http.put(app.url("/v1/track"))).await;
    resp.assert_error(405, "method_not_allowed");
    app.assert_log_empty("404/405").await;
}

// ---------------------------------------------------------------------------------------------
// Partial batches
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn partial_batch_accepts_the_valid_events_and_names_the_rejected() {
    let app = TestApp::spawn().await;
    let body = json!({"batch": [
        {"type": "track", "messageId": "ok-0", "userId": "u", "event": "Good"},
        {"type": "track", "messageId": "bad-1", "userId": "u"},
        {"type": "identify", "messageId": "ok-2", "anonymousId": "a", "traits": {"x": 1}},
        {"type": "track", "messageId": "bad-3", "event": "No User", "timestamp": "not a time"},
        "not an object",
        {"type": "group", "messageId": "ok-5", "userId": "u", "groupId": "g"},
        {"type": "alias", "messageId": "bad-6", "userId": "u"}
    ]});
    let resp = app
        .post_auth("/v1/batch", Auth::Basic(&app.write_key), &body)
        .await;
    assert_ok(&resp, 3);
    let rejected = resp.body["rejected"].as_array().expect("rejected array");
    let summary: Vec<(u64, Vec<String>)> = rejected
        .iter()
        .map(|r| {
            let paths = r["errors"]
                .as_array()
                .expect("errors")
                .iter()
                .map(|p| {
                    assert!(p["message"].as_str().is_some_and(|m| !m.is_empty()), "{p}");
                    p["path"].as_str().expect("path").to_string()
                })
                .collect();
            (r["index"].as_u64().expect("index"), paths)
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, vec!["batch[1].event".to_string()]),
            (
                3,
                vec![
                    "batch[3].timestamp".to_string(),
                    "batch[3].userId".to_string()
                ]
            ),
            (4, vec!["batch[4]".to_string()]),
            (6, vec!["batch[6].previousId".to_string()]),
        ],
        "{}",
        resp.text
    );
    let ids: BTreeSet<String> = app
        .logged_events()
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, ["ok-0", "ok-2", "ok-5"].map(String::from).into());
}

#[tokio::test]
async fn partial_native_ndjson_names_the_bad_lines() {
    let app = TestApp::spawn().await;
    let ndjson = concat!(
        r#"{"kind":"track","event_id":"nd-0","user_id":"u","name":"A"}"#,
        "\n",
        r#"{"kind":"track","event_id":"nd-1","user_id":"u""#,
        "\n",
        r#"{"kind":"track","event_id":"nd-2","user_id":"u","name":"C"}"#,
        "\n"
    );
    let resp = app
        .post_bytes(
            "/v1/events",
            &[("content-type", "application/x-ndjson")],
            ndjson.into(),
        )
        .await;
    assert_ok(&resp, 2);
    assert_eq!(resp.body["rejected"][0]["index"], 1, "{}", resp.text);
    assert_eq!(
        resp.body["rejected"][0]["errors"][0]["path"], "[1]",
        "{}",
        resp.text
    );
    let ids: BTreeSet<String> = app
        .logged_events()
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, ["nd-0", "nd-2"].map(String::from).into());
}

#[tokio::test]
async fn batch_with_only_invalid_events_is_400() {
    let app = TestApp::spawn().await;
    let body = json!({"batch": [
        {"type": "track", "userId": "u"},
        {"type": "group", "userId": "u"},
        {"type": "track", "event": "e"}
    ]});
    let resp = app
        .post_auth("/v1/batch", Auth::Basic(&app.write_key), &body)
        .await;
    resp.assert_error(400, "invalid_request");
    let paths: Vec<String> = resp.problems().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        ["batch[0].event", "batch[1].groupId", "batch[2].userId"],
        "{}",
        resp.text
    );
    app.assert_log_empty("all-invalid batch").await;
}

// ---------------------------------------------------------------------------------------------
// Exactly once, concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_answered_event_is_in_the_log_exactly_once_with_its_entry() {
    let app = TestApp::spawn().await;
    assert_ok(
        &app.post_auth(
            "/v1/track",
            Auth::Basic(&app.write_key),
            &track_body("once"),
        )
        .await,
        1,
    );
    let entries = app.read_log().await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert!(
        entry.shard < app.log.shards(),
        "shard {} of {}",
        entry.shard,
        app.log.shards()
    );
    assert_eq!(entry.deliveries, 1);
    let event = Event::from_json(&entry.payload).expect("canonical JSON");
    assert_eq!(event.event_id, "once");
    // The shard follows the documented hash of (source, user).
    assert_eq!(
        entry.shard,
        sluice_core::shard::shard_of(&event, app.log.shards())
    );
    // A second reader group sees the same single entry: nothing was appended twice.
    assert_eq!(app.read_log().await.len(), 1);
}

#[tokio::test]
async fn five_hundred_concurrent_tracks_are_all_answered_and_all_logged_once() {
    let app = TestApp::spawn().await;
    let n = 500;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let http = app.http.clone();
        let url = app.url("/v1/track");
        let key = app.write_key.clone();
        tasks.spawn(async move {
            let id = format!("burst-{i}");
            let resp = http
                .post(url)
                .basic_auth(key, Some(""))
                .json(&json!({"messageId": id, "userId": format!("user-{}", i % 37), "event": "Burst"}))
                .send()
                .await
                .expect("request");
            (id, resp.status().as_u16())
        });
    }
    let mut answered = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, status) = joined.expect("task");
        assert_eq!(status, 200, "{id}");
        answered.insert(id);
    }
    assert_eq!(answered.len(), n);
    let events = app.logged_events().await;
    assert_eq!(events.len(), n, "no event twice, none lost");
    let logged: BTreeSet<String> = events.into_iter().map(|e| e.event_id).collect();
    assert_eq!(logged, answered);
}

// ---------------------------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cors_preflight_is_answered() {
    let app = TestApp::spawn().await;
    let resp = app
        .send(
            app.http
                .request(reqwest::Method::OPTIONS, app.url("/v1/batch"))
                .header("origin", "https://shop.example")
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
        )
        .await;
    assert!(
        resp.status == 200 || resp.status == 204,
        "{} {}",
        resp.status,
        resp.text
    );
    let origin = resp
        .header("access-control-allow-origin")
        .expect("allow-origin");
    assert!(
        origin == "*" || origin == "https://shop.example",
        "{origin}"
    );
    let headers = resp
        .header("access-control-allow-headers")
        .expect("allow-headers")
        .to_ascii_lowercase();
    for needed in ["authorization", "content-type", "content-encoding"] {
        assert!(headers.contains(needed), "{needed} not in {headers}");
    }
    let methods = resp
        .header("access-control-allow-methods")
        .expect("allow-methods");
    assert!(methods.contains("POST"), "{methods}");

    // The actual cross-origin POST carries the allow-origin header too.
    let resp = app
        .send(
            app.http
                .post(app.url("/v1/track"))
                .header("origin", "https://shop.example")
                .basic_auth(&app.write_key, Some(""))
                .json(&track_body("cors")),
        )
        .await;
    assert_ok(&resp, 1);
    assert!(
        resp.header("access-control-allow-origin").is_some(),
        "{:?}",
        resp.headers
    );
}

#[tokio::test]
async fn cors_with_configured_origins_allows_only_those() {
    let config = ServerConfig {
        cors_origins: vec!["https://allowed.example".into()],
        ..ServerConfig::default()
    };
    let app = TestApp::spawn_with(config, |_| {}).await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/v1/track"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
    };
    let resp = app.send(preflight("https://allowed.example")).await;
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("https://allowed.example"),
        "{:?}",
        resp.headers
    );
    let resp = app.send(preflight("https://evil.example")).await;
    assert_eq!(
        resp.header("access-control-allow-origin"),
        None,
        "{:?}",
        resp.headers
    );
}

// ---------------------------------------------------------------------------------------------
// Backpressure and an unreachable Redis
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn backlog_over_the_high_water_mark_answers_503_with_retry_after() {
    const GROUP: &str = "never-consumed";
    let app = TestApp::spawn_with(ServerConfig::default(), |c| {
        c.high_water_mark = 20;
        c.required_groups = vec![GROUP.to_string()];
    })
    .await;
    app.log
        .ensure_group(GROUP, StartFrom::Beginning)
        .await
        .expect("group");
    let batch = json!({"batch": (0..30).map(|i| json!({
        "type": "track", "messageId": format!("bp-{i}"), "userId": format!("u{i}"), "event": "Fill"
    })).collect::<Vec<_>>()});
    assert_ok(
        &app.post_auth("/v1/batch", Auth::Basic(&app.write_key), &batch)
            .await,
        30,
    );

    // The backlog poller refreshes every ~250 ms: await its verdict.
    let mut attempt = 0;
    let refused = await_condition(
        Duration::from_secs(5),
        Duration::from_millis(50),
        "ingest to answer 503 above the high-water mark",
        || {
            attempt += 1;
            let body = track_body(&format!("probe-{attempt}"));
            let app = &app;
            async move {
                let resp = app
                    .post_auth("/v1/track", Auth::Basic(&app.write_key), &body)
                    .await;
                match resp.status {
                    503 => Some(resp),
                    200 => None,
                    other => panic!("unexpected {other}: {}", resp.text),
                }
            }
        },
    )
    .await;
    refused.assert_error(503, "unavailable");
    let retry_after: u64 = refused
        .header("retry-after")
        .expect("Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let lag = app.log.lag().await.expect("lag");
    let group = lag.iter().find(|l| l.group == GROUP).expect("group lag");
    assert!(group.backlog() > 20, "{lag:?}");
    // The refused probe is not in the log.
    let refused_id = format!("probe-{attempt}");
    assert!(
        !app.logged_events()
            .await
            .iter()
            .any(|e| e.event_id == refused_id),
        "a 503'd event must not be in the log"
    );

    // Once the consumer catches up, ingest accepts again.
    loop {
        let entries = app
            .log
            .read_new(GROUP, "c1", 1000, Duration::from_millis(10))
            .await
            .expect("read");
        if entries.is_empty() {
            break;
        }
        app.log.ack(GROUP, &entries).await.expect("ack");
    }
    await_condition(
        Duration::from_secs(5),
        Duration::from_millis(50),
        "ingest to accept again after the group caught up",
        || async {
            let resp = app
                .post_auth(
                    "/v1/track",
                    Auth::Basic(&app.write_key),
                    &track_body("after-drain"),
                )
                .await;
            (resp.status == 200).then_some(())
        },
    )
    .await;
}

/// A `redis-server` child on a fixed port in a temp dir, killed on drop.
struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    async fn start() -> RedisServer {
        let port = StdTcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        server.spawn().await;
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH for this test");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("redis url");
        await_condition(
            Duration::from_secs(10),
            Duration::from_millis(20),
            "the test redis-server to answer PING",
            || {
                let client = client.clone();
                async move {
                    let mut conn = tokio::time::timeout(
                        Duration::from_millis(500),
                        client.get_multiplexed_async_connection(),
                    )
                    .await
                    .ok()?
                    .ok()?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .ok()
                }
            },
        )
        .await;
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn redis_down_answers_503_within_the_bound_then_recovers() {
    /// The log's default append timeout (2 s) plus scheduling slack.
    const BOUND: Duration = Duration::from_millis(2500);
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(ServerConfig::default(), move |c| c.url = url).await;
    assert_ok(
        &app.post_auth(
            "/v1/track",
            Auth::Basic(&app.write_key),
            &track_body("up-1"),
        )
        .await,
        1,
    );
    let ready = |app: &TestApp| {
        let req = app.http.get(app.url("/readyz"));
        async move {
            let resp = req.send().await.expect("readyz");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(ready(&app).await.0, 200);

    redis.kill();
    // Readiness names the log as the failing part, within its bound.
    let started = Instant::now();
    let (status, body) = ready(&app).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["log"].as_str().is_some_and(|s| s != "ok"), "{body}");
    assert_eq!(body["warehouse"], "ok", "{body}");
    assert!(
        started.elapsed() <= BOUND,
        "readyz took {:?}",
        started.elapsed()
    );
    // Several requests in a row, each answered 503 within the bound (never a hang, never a 5xx
    // other than 503).
    for i in 0..3 {
        let started = Instant::now();
        let resp = app
            .post_auth(
                "/v1/track",
                Auth::Basic(&app.write_key),
                &track_body(&format!("down-{i}")),
            )
            .await;
        let took = started.elapsed();
        resp.assert_error(503, "unavailable");
        assert!(resp.header("retry-after").is_some(), "{:?}", resp.headers);
        assert!(took <= BOUND, "503 took {took:?}, bound {BOUND:?}");
    }

    redis.spawn().await;
    await_condition(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "ingest to answer 200 again after Redis came back",
        || async {
            let resp = app
                .post_auth(
                    "/v1/track",
                    Auth::Basic(&app.write_key),
                    &track_body("back"),
                )
                .await;
            match resp.status {
                200 => Some(()),
                503 => None,
                other => panic!("unexpected {other}: {}", resp.text),
            }
        },
    )
    .await;
    await_condition(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "readyz to answer 200 again after Redis came back",
        || async { (ready(&app).await.0 == 200).then_some(()) },
    )
    .await;
    // The consumer side reconnects on its own too: its first command after the restart may fail
    // with a retryable `Unavailable` (the dead connection is dropped, the next call reconnects).
    await_condition(
        Duration::from_secs(5),
        Duration::from_millis(50),
        "the consumer side of the log to answer again",
        || async { app.log.ping().await.ok() },
    )
    .await;
    // The restarted Redis kept nothing (no persistence); the event answered 200 after the
    // restart is there, once, and none of the refused ones.
    let ids: Vec<String> = app
        .logged_events()
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, ["back"], "log after the restart");
}

// ---------------------------------------------------------------------------------------------
// Slow and huge bad requests never block others
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stalled_and_huge_requests_do_not_block_valid_ones() {
    let app = TestApp::spawn().await;
    let auth = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", app.write_key))
    };
    // 20 clients that send headers and a partial body, then stall.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /v1/batch HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: 400000\r\n\r\n{{\"batch\":[",
            app.addr
        );
        s.write_all(head.as_bytes()).await.expect("write");
        s.flush().await.expect("flush");
        stalled.push(s);
    }
    // One client streaming a huge invalid body (10 MB of garbage) while we work.
    let huge = {
        let addr = app.addr;
        let auth = auth.clone();
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let len = 10 * 1024 * 1024;
            let head = format!(
                "POST /v1/batch HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\n\
                 Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.expect("write head");
            let chunk = vec![b'['; 64 * 1024];
            for _ in 0..len / chunk.len() {
                // The server may stop reading and answer early: a failed write is expected.
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let mut answer = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            String::from_utf8_lossy(&answer[..n]).to_string()
        })
    };

    for i in 0..5 {
        let started = Instant::now();
        let resp = app
            .post_auth(
                "/v1/track",
                Auth::Basic(&app.write_key),
                &track_body(&format!("while-stalled-{i}")),
            )
            .await;
        assert_ok(&resp, 1);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a valid request waited {:?}",
            started.elapsed()
        );
    }
    // The huge one is refused as too large (or its connection closed), never accepted.
    let answer = huge.await.expect("task");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 413"),
        "huge body answered: {answer}"
    );

    // A stalled client that finally gives up gets no event into the log; the server closes or
    // keeps its connection, but never answers 2xx to half a body.
    let mut s = stalled.pop().expect("stalled");
    s.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.starts_with("HTTP/1.1 2"),
        "a truncated body was accepted: {answer}"
    );
    drop(stalled);

    let ids: BTreeSet<String> = app
        .logged_events()
        .await
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, (0..5).map(|i| format!("while-stalled-{i}")).collect());
}

#[tokio::test]
async fn legacy_track_with_a_malformed_query_is_a_json_400() {
    let app = TestApp::spawn().await;
    let url = app.url(&format!(
        "/track?writeKey={k}&writeKey={k}",
        k = app.write_key
    ));
    let resp = app
        .send(
            app.http
                .post(url)
                .json(&json!({"eventName": "e", "url": "u"})),
        )
        .await;
    resp.assert_error(400, "invalid_request");
    assert_eq!(resp.problems()[0].0, "writeKey", "{}", resp.text);
    assert!(!resp.text.contains(&app.write_key), "{}", resp.text);
    app.assert_log_empty("malformed query").await;
}

#[tokio::test]
async fn x_forwarded_for_is_used_only_when_trusted() {
    let untrusting = TestApp::spawn().await;
    let body = json!({"messageId": "xff", "userId": "u", "event": "e"});
    let resp = untrusting
        .send(
            untrusting
                .http
                .post(untrusting.url("/v1/track"))
                .basic_auth(&untrusting.write_key, Some(""))
                .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
                .json(&body),
        )
        .await;
    assert_ok(&resp, 1);
    assert_eq!(
        Value::Object(untrusting.logged_event("xff").await.context.to_map())["ip"],
        "127.0.0.1",
        "a client must not choose its own context.ip"
    );

    let config = ServerConfig {
        trust_forwarded_for: true,
        ..ServerConfig::default()
    };
    let trusting = TestApp::spawn_with(config, |_| {}).await;
    let resp = trusting
        .send(
            trusting
                .http
                .post(trusting.url("/v1/track"))
                .basic_auth(&trusting.write_key, Some(""))
                .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
                .json(&body),
        )
        .await;
    assert_ok(&resp, 1);
    assert_eq!(
        Value::Object(trusting.logged_event("xff").await.context.to_map())["ip"],
        "203.0.113.9"
    );
}

#[tokio::test]
async fn values_exactly_at_the_limits_are_accepted() {
    let app = TestApp::spawn().await;
    let id_100 = "i".repeat(100);
    let name_200 = "n".repeat(200);
    // properties nested 31 deep: the event object is 32 deep.
    let resp = app
        .post_auth(
            "/v1/track",
            Auth::Basic(&app.write_key),
            &json!({"messageId": id_100, "userId": "u", "event": name_200, "properties": nested(31)}),
        )
        .await;
    assert_ok(&resp, 1);
    let e = app.logged_event(&id_100).await;
    assert_eq!(e.name.as_deref(), Some(name_200.as_str()));
    assert_eq!(
        sluice_core::parse::json_depth(&Value::Object(e.properties.to_map())),
        31
    );

    // An event just under 32 KB.
    let mut event =
        json!({"messageId": "big-ok", "userId": "u", "event": "e", "properties": {"blob": ""}});
    let overhead = json_bytes(event.clone()).len();
    event["properties"]["blob"] = json!("b".repeat(32 * 1024 - overhead));
    assert_eq!(json_bytes(event.clone()).len(), 32 * 1024);
    assert_ok(
        &app.post_auth("/v1/track", Auth::Basic(&app.write_key), &event)
            .await,
        1,
    );

    // 2,500 events in one batch.
    let batch = json!({"batch": (0..2500).map(|i| json!({
        "type": "track", "messageId": format!("max-{i}"), "userId": "u", "event": "e"
    })).collect::<Vec<_>>()});
    assert_ok(
        &app.post_auth("/v1/batch", Auth::Basic(&app.write_key), &batch)
            .await,
        2500,
    );
    assert_eq!(app.logged_events().await.len(), 2502);
}

#[tokio::test]
async fn a_stalled_upload_is_answered_408_and_its_connection_freed() {
    let config = ServerConfig {
        body_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let app = TestApp::spawn_with(config, |_| {}).await;
    let auth = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", app.write_key))
    };
    let mut s = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/track HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"userId\":",
        app.addr
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
        .await
        .expect("the server answers a stalled upload")
        .expect("read");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    app.assert_log_empty("a stalled upload").await;
}
