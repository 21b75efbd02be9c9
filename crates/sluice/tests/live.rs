//! `GET /v1/live`: a real WebSocket client (tokio-tungstenite) against the app on port 0, real
//! Redis and PostgreSQL. Events are ingested through the API and the per-second messages must add
//! up to exactly what was ingested, in total and by name, for the key's source only. Waiting is
//! always for a condition with a deadline.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use sluice_core::keys::KeyKind;
use sluice_core::warehouse::KeyStore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use common::TestApp;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const DEADLINE: Duration = Duration::from_secs(20);

fn ws_url(app: &TestApp, query: &str) -> String {
    format!("ws://{}/v1/live{query}", app.addr)
}

async fn connect_query_key(app: &TestApp, key: &str) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(ws_url(app, &format!("?key={key}")))
        .await
        .expect("WebSocket handshake with a read key");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// The next JSON text message, failing after `DEADLINE`.
async fn next_message(ws: &mut Ws) -> Value {
    let started = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(started.elapsed());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .expect("a live message within the deadline")
            .expect("the socket stays open")
            .expect("a WebSocket frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON message"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

fn by_name(v: &Value) -> BTreeMap<String, u64> {
    v.as_array()
        .expect("an array of {name,count}")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().expect("name").to_owned(),
                c["count"].as_u64().expect("count"),
            )
        })
        .collect()
}

/// Read messages until `total` events were reported after `after_ts`; return the per-name sums
/// and the last message. Checks on the way that seconds are consecutive and that each message's
/// names add up to its total.
async fn collect_until(
    ws: &mut Ws,
    mut last_ts: i64,
    total: u64,
) -> (u64, BTreeMap<String, u64>, Value) {
    let started = Instant::now();
    let mut sum = 0;
    let mut names: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        assert!(
            started.elapsed() < DEADLINE,
            "live messages reported {sum} of {total} events within {DEADLINE:?}"
        );
        let m = next_message(ws).await;
        let ts = m["ts"].as_i64().expect("ts");
        assert_eq!(ts, last_ts + 1, "one message per second, none skipped: {m}");
        assert!(
            m.get("last_5m").is_none(),
            "the history is sent only first and after a gap: {m}"
        );
        last_ts = ts;
        let n = m["total"].as_u64().expect("total");
        let this: BTreeMap<String, u64> = by_name(&m["by_name"]);
        assert_eq!(
            this.values().sum::<u64>(),
            n,
            "names add up to the total: {m}"
        );
        for (k, v) in this {
            *names.entry(k).or_default() += v;
        }
        sum += n;
        if sum >= total {
            return (sum, names, m);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_messages_add_up_to_what_was_ingested() {
    let app = TestApp::spawn().await;
    let mut ws = connect_query_key(&app, &app.read_key).await;

    // The first message comes at once or within a second, with the 5-minute history.
    let first = next_message(&mut ws).await;
    let last_5m = first["last_5m"]
        .as_array()
        .expect("last_5m in the first message");
    assert_eq!(last_5m.len(), 300);
    assert!(first["ts"].as_i64().expect("ts") > 1_600_000_000);
    assert!(first["backlog"].is_object() && first["pending"].is_object());
    assert!(first["alerts"].is_array());
    let first_ts = first["ts"].as_i64().expect("ts");

    // Ingest 17 events over three requests and three shapes.
    let batch: Vec<Value> = (0..7)
        .map(|i| json!({"type": "track", "event": "Signed Up", "userId": format!("u{i}")}))
        .chain(
            (0..5)
                .map(|i| json!({"type": "track", "event": "Checkout", "userId": format!("u{i}")})),
        )
        .chain((0..2).map(|i| json!({"type": "page", "name": "Home", "userId": format!("u{i}")})))
        .collect();
    let (status, body) = app.post_json("/v1/batch", &json!({ "batch": batch })).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post_json(
            "/v1/identify",
            &json!({"userId": "u1", "traits": {"plan": "pro"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post_json(
            "/v1/events",
            &json!([
                {"kind": "track", "name": "Checkout", "user_id": "u9", "event_id": "n-1"},
                {"kind": "track", "name": "Signed Up", "user_id": "u9", "event_id": "n-2"}
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (sum, names, last) = collect_until(&mut ws, first_ts, 17).await;
    assert_eq!(sum, 17, "exactly what was ingested");
    let expected: BTreeMap<String, u64> = [
        ("Signed Up", 8),
        ("Checkout", 6),
        ("Home", 2),
        ("identify", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(names, expected);
    assert_eq!(last["total_5m"], 17);
    assert_eq!(by_name(&last["by_name_5m"]), expected);

    // Nothing is counted twice: the next seconds report nothing new.
    let (ts, m) = {
        let m = next_message(&mut ws).await;
        (m["ts"].as_i64().expect("ts"), m)
    };
    assert_eq!(ts, last["ts"].as_i64().expect("ts") + 1);
    assert_eq!(m["total"], 0, "{m}");
    assert_eq!(m["total_5m"], 17, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_is_scoped_to_the_keys_source_and_takes_a_bearer_header() {
    let app = TestApp::spawn().await;
    let (other_write, _) = app
        .store
        .create_key("other-source", KeyKind::Write)
        .await
        .expect("create key");
    app.keys
        .refresh(app.store.as_ref() as &dyn KeyStore)
        .await
        .expect("refresh keys");

    let mut req = ws_url(&app, "").into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", app.read_key).parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("handshake with a Bearer read key");
    let first = next_message(&mut ws).await;
    let first_ts = first["ts"].as_i64().expect("ts");

    // Another source's events are not ours.
    let other = app
        .send(
            app.http
                .post(app.url("/v1/track"))
                .basic_auth(&other_write, Some(""))
                .json(&json!({"userId": "x", "event": "Not Ours"})),
        )
        .await;
    assert_eq!(other.status, 200, "{}", other.text);
    let (status, body) = app
        .post_json("/v1/track", &json!({"userId": "u1", "event": "Ours"}))
        .await;
    assert_eq!(status, 200, "{body}");

    let (sum, names, _) = collect_until(&mut ws, first_ts, 1).await;
    assert_eq!(sum, 1);
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [("Ours".to_owned(), 1)]
    );
    // Two more seconds: still nothing from the other source.
    for _ in 0..2 {
        let m = next_message(&mut ws).await;
        assert_eq!(m["total"], 0, "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_refuses_missing_wrong_and_write_keys() {
    let app = TestApp::spawn().await;
    let cases = [
        ("no key", String::new(), 401),
        ("unknown key", "?key=sk_r_not_a_key".to_owned(), 401),
        ("write key", format!("?key={}", app.write_key), 403),
    ];
    for (what, query, status) in cases {
        match tokio_tungstenite::connect_async(ws_url(&app, &query)).await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), status, "{what}");
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                        .unwrap_or(Value::Null);
                assert_eq!(body["success"], false, "{what}: JSON error body");
            }
            Err(e) => panic!("{what}: expected an HTTP refusal, got {e}"),
            Ok(_) => panic!("{what}: the WebSocket was accepted"),
        }
    }
    // A wrong Bearer header is refused too, even with a valid `?key=`: the header wins.
    let mut req = ws_url(&app, &format!("?key={}", app.read_key))
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("authorization", "Bearer nope".parse().expect("header"));
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
}

fn alert(source: &str, subject: &str) -> sluice_core::warehouse::Alert {
    let now = chrono::Utc::now();
    sluice_core::warehouse::Alert {
        source: source.to_owned(),
        rule: "user_rate".to_owned(),
        subject: subject.to_owned(),
        window_start: now - chrono::Duration::seconds(60),
        window_end: now,
        count: 500,
        first_event_id: "e-1".to_owned(),
        last_event_id: "e-500".to_owned(),
        created_at: now,
        details: json!({"threshold": 100}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_alerts_go_out_to_their_source_only() {
    let app = TestApp::spawn().await;
    let mut ws = connect_query_key(&app, &app.read_key).await;
    let first = next_message(&mut ws).await;
    assert_eq!(first["alerts"], json!([]));

    app.live.push_alert(alert("someone-else", "not-ours"));
    app.live.push_alert(alert(&app.source, "user-42"));
    let started = Instant::now();
    let alerts = loop {
        let m = next_message(&mut ws).await;
        let alerts = m["alerts"].as_array().expect("alerts").clone();
        if !alerts.is_empty() {
            break alerts;
        }
        assert!(started.elapsed() < DEADLINE, "the alert never came");
    };
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["subject"], "user-42");
    assert_eq!(alerts[0]["rule"], "user_rate");
    assert_eq!(alerts[0]["count"], 500);

    // Only the newest 50 are kept, newest first.
    for i in 0..60 {
        app.live.push_alert(alert(&app.source, &format!("u-{i}")));
    }
    let started = Instant::now();
    loop {
        let m = next_message(&mut ws).await;
        let alerts = m["alerts"].as_array().expect("alerts");
        if alerts.first().is_some_and(|a| a["subject"] == "u-59") {
            assert_eq!(alerts.len(), 50);
            assert_eq!(alerts[49]["subject"], "u-10");
            break;
        }
        assert!(started.elapsed() < DEADLINE, "the newest alerts never came");
    }
}
