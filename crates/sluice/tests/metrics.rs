//! `/metrics`: valid Prometheus text exposition (checked with `promtool check metrics` from
//! Debian's `prometheus` package, which `scripts/test.sh` installs), and counters that move with
//! traffic: HTTP requests by matched route and status, ingest events by outcome, append latency,
//! worker batches, commits, events and dedupe hits, backlog gauges, live clients. Labels never
//! carry event names, user ids or keys.
//!
//! One test function on purpose: the recorder is process-wide, so tests in one binary would see
//! each other's traffic.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_worker::ConsumerConfig;

use common::{Auth, TestApp};

const DEADLINE: Duration = Duration::from_secs(30);
const PROMTOOL: &str = "/usr/bin/promtool";

/// One sample: metric name and its labels.
type Key = (String, BTreeMap<String, String>);

/// Parse the sample lines of a text exposition (the format is validated by promtool).
fn parse(text: &str) -> BTreeMap<Key, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value.parse().expect("a numeric sample value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect("label=\"value\"");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        out.insert((name, labels), value);
    }
    out
}

fn get(samples: &BTreeMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .get(&(name.to_owned(), labels))
        .copied()
        .unwrap_or(0.0)
}

fn promtool_check(text: &str) {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{PROMTOOL} is required (Debian package `prometheus`; scripts/test.sh installs it): {e}")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- metrics ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

async fn scrape(app: &TestApp) -> (String, BTreeMap<Key, f64>) {
    let resp = app.send(app.http.get(app.url("/metrics"))).await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let samples = parse(&resp.text);
    (resp.text, samples)
}

/// Scrape until `ok` holds, failing after the deadline with the last exposition.
async fn scrape_until(
    app: &TestApp,
    what: &str,
    ok: impl Fn(&BTreeMap<Key, f64>) -> bool,
) -> (String, BTreeMap<Key, f64>) {
    let started = Instant::now();
    loop {
        let (text, samples) = scrape(app).await;
        if ok(&samples) {
            return (text, samples);
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: not reached within {DEADLINE:?}; last /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn batch(ids: std::ops::Range<usize>) -> Value {
    let events: Vec<Value> = ids
        .map(|i| {
            json!({"type": "track", "event": "Secret Event Name", "userId": format!("secret-user-{i}"),
                   "messageId": format!("metrics-{i}")})
        })
        .collect();
    json!({ "batch": events })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_and_move_with_traffic() {
    let app = TestApp::spawn().await;
    let (text, before) = scrape(&app).await;
    promtool_check(&text);

    let http = "sluice_http_requests_total";
    let ingest = "sluice_ingest_events_total";
    let batch_route = [("route", "/v1/batch")];
    let b = |name: &str, labels: &[(&str, &str)]| get(&before, name, labels);

    // Traffic: 3 valid batches of 10, one partial batch (8 valid, 2 invalid), one refused
    // request, one unknown path, one live client.
    for i in 0..3 {
        let (status, body) = app
            .post_json("/v1/batch", &batch(i * 10..i * 10 + 10))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut partial = batch(30..40);
    partial["batch"][3]["type"] = json!("nonsense");
    partial["batch"][7]["event"] = json!("");
    let (status, body) = app.post_json("/v1/batch", &partial).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 8, "{body}");
    app.post_auth("/v1/batch", Auth::None, &batch(0..1))
        .await
        .assert_error(401, "unauthorized");
    let nope = app.send(app.http.get(app.url("/no/such/path"))).await;
    assert_eq!(nope.status, 404);
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/live?key={}", app.addr, app.read_key))
            .await
            .expect("live client");

    let (_, after) = scrape_until(&app, "live client counted", |s| {
        get(s, "sluice_live_clients", &[]) >= 1.0
    })
    .await;
    let a = |name: &str, labels: &[(&str, &str)]| get(&after, name, labels);
    let delta = |name: &str, labels: &[(&str, &str)]| a(name, labels) - b(name, labels);
    assert_eq!(
        delta(http, &[("route", "/v1/batch"), ("status", "200")]),
        4.0
    );
    assert_eq!(
        delta(http, &[("route", "/v1/batch"), ("status", "401")]),
        1.0
    );
    assert_eq!(
        delta(http, &[("route", "unmatched"), ("status", "404")]),
        1.0,
        "unknown paths share one label value"
    );
    assert_eq!(
        delta(ingest, &[batch_route[0], ("outcome", "accepted")]),
        38.0
    );
    assert_eq!(
        delta(ingest, &[batch_route[0], ("outcome", "rejected")]),
        2.0
    );
    assert_eq!(delta("sluice_append_seconds_count", &[]), 4.0);
    assert!(a("sluice_append_seconds_sum", &[]) > 0.0);
    assert_eq!(a("sluice_live_clients", &[]), 1.0);

    // A worker commits the 38 events; then the same 10 messageIds again are dedupe hits.
    let mut config = ConsumerConfig::new("metrics-worker");
    config.max_wait = Duration::from_millis(20);
    let (stop, worker) = common::spawn_warehouse_worker(app.log.clone(), app.store.clone(), config);
    let group = [("group", "warehouse")];
    let events = "sluice_worker_events_total";
    scrape_until(&app, "worker committed 38 events", |s| {
        get(s, events, &group) - b(events, &group) >= 38.0
    })
    .await;
    let (status, body) = app.post_json("/v1/batch", &batch(0..10)).await;
    assert_eq!(status, 200, "{body}");
    let dedupe = "sluice_worker_dedupe_hits_total";
    let (text, after) = scrape_until(&app, "10 dedupe hits and an empty backlog", |s| {
        get(s, dedupe, &group) - b(dedupe, &group) >= 10.0
            && get(s, events, &group) - b(events, &group) >= 48.0
            && s.contains_key(&("sluice_log_backlog".to_owned(), labels(&group)))
            && get(s, "sluice_log_backlog", &group) == 0.0
    })
    .await;
    let a = |name: &str, labels: &[(&str, &str)]| get(&after, name, labels);
    assert_eq!(a(dedupe, &group) - b(dedupe, &group), 10.0);
    assert!(a("sluice_worker_batch_size_count", &group) >= 2.0);
    assert!(a("sluice_worker_batch_size_sum", &group) >= 48.0);
    assert!(a("sluice_worker_commit_seconds_count", &group) >= 2.0);
    assert!(after.contains_key(&("sluice_log_pending".to_owned(), labels(&group))));

    // Valid exposition with every kind of metric present, and nothing of high cardinality.
    promtool_check(&text);
    for secret in [
        "Secret Event Name",
        "secret-user",
        app.write_key.as_str(),
        app.read_key.as_str(),
        app.source.as_str(),
    ] {
        assert!(
            !text.contains(secret),
            "/metrics must not expose {secret:?}:\n{text}"
        );
    }

    // The live client leaves: the gauge goes back.
    drop(ws);
    scrape_until(&app, "live client gone", |s| {
        get(s, "sluice_live_clients", &[]) == 0.0
    })
    .await;
    let _ = stop.send(());
    worker.await.expect("worker task");
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
