//! Compatibility with a real Segment client: the official Python SDK (`segment-analytics-python`,
//! pinned in `tests/segment/requirements.txt`) sends identify/track/page/group/alias calls and
//! enough tracks for several multi-message batches through `tests/segment/send_events.py`; every
//! call must land in the log once, with the SDK's `messageId` as `event_id` and the right fields.
//!
//! The Python comes from `SLUICE_TEST_PYTHON`, else `.venv/bin/python` at the repository root.
//! Prepare it with (what `scripts/test.sh` does):
//! `python3 -m venv .venv && .venv/bin/pip install -r tests/segment/requirements.txt`

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::TestApp;
use serde_json::{json, Value};
use sluice_core::{Event, EventKind};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    let python = std::env::var_os("SLUICE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "no Python with the Segment SDK at {}: set SLUICE_TEST_PYTHON, or at the repository root run \
         `python3 -m venv .venv && .venv/bin/pip install -r tests/segment/requirements.txt` \
         (scripts/test.sh does this)",
        python.display()
    );
    python
}

struct Run {
    success: bool,
    stderr: String,
    /// The script's JSON summary: `{"sent": [...], "errors": [...]}`.
    summary: Value,
}

async fn send_events(host: &str, write_key: &str, tag: &str, extra: &[&str]) -> Run {
    let script = repo_root().join("tests/segment/send_events.py");
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(&script)
        .args(["--host", host, "--write-key", write_key, "--tag", tag])
        .args(extra)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("send_events.py did not finish within 120 s")
        .unwrap_or_else(|e| panic!("could not run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let summary = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| {
            panic!("no JSON summary from the script; stdout: {stdout}\nstderr: {stderr}")
        });
    Run {
        success: output.status.success(),
        stderr,
        summary,
    }
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("time string"))
        .unwrap_or_else(|e| panic!("{v} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

fn str_field<'a>(sent: &'a Value, field: &str) -> Option<&'a str> {
    sent.get(field).and_then(Value::as_str)
}

/// Check every call the script reports as sent against the log.
async fn assert_all_landed(app: &TestApp, summary: &Value) {
    let sent = summary["sent"].as_array().expect("sent array");
    let events = app.logged_events().await;
    let by_id: BTreeMap<&str, &Event> = events.iter().map(|e| (e.event_id.as_str(), e)).collect();
    assert_eq!(
        by_id.len(),
        events.len(),
        "an event_id appears twice in the log"
    );
    let sent_ids: BTreeSet<&str> = sent
        .iter()
        .map(|s| s["messageId"].as_str().expect("messageId"))
        .collect();
    assert_eq!(sent_ids.len(), sent.len(), "the SDK reused a messageId");
    assert_eq!(
        by_id.keys().copied().collect::<BTreeSet<_>>(),
        sent_ids,
        "the log must hold exactly the SDK's messageIds"
    );

    for s in sent {
        let id = s["messageId"].as_str().expect("messageId");
        let e = by_id[id];
        let kind = s["kind"].as_str().expect("kind");
        assert_eq!(e.kind, EventKind::parse(kind).expect("known kind"), "{id}");
        assert_eq!(e.source, app.source, "{id}");
        assert_eq!(e.name.as_deref(), str_field(s, "name"), "{id} name");
        assert_eq!(e.user_id.as_deref(), str_field(s, "userId"), "{id} userId");
        assert_eq!(
            e.anonymous_id.as_deref(),
            str_field(s, "anonymousId"),
            "{id} anonymousId"
        );
        assert_eq!(
            e.group_id.as_deref(),
            str_field(s, "groupId"),
            "{id} groupId"
        );
        assert_eq!(
            e.previous_id.as_deref(),
            str_field(s, "previousId"),
            "{id} previousId"
        );
        assert_eq!(
            Value::Object(e.properties.to_map()),
            s.get("properties").cloned().unwrap_or(json!({})),
            "{id} properties"
        );
        assert_eq!(
            Value::Object(e.traits.to_map()),
            s.get("traits").cloned().unwrap_or(json!({})),
            "{id} traits"
        );
        assert_eq!(
            Value::Object(e.context.to_map())["library"]["name"],
            "analytics-python",
            "{id}: {:?}",
            e.context
        );
        assert!(
            Value::Object(e.context.to_map())["library"]["version"].is_string(),
            "{id}: {:?}",
            e.context
        );
        assert_eq!(Value::Object(e.context.to_map())["ip"], "127.0.0.1", "{id}");

        // The SDK's own timestamp, and the batch's sentAt, drive the corrected event time.
        let original = time(&s["timestamp"]);
        assert_eq!(e.original_timestamp, Some(original), "{id}");
        let sent_at = e
            .sent_at
            .unwrap_or_else(|| panic!("{id}: the SDK's sentAt was not used"));
        let in_flight = (e.received_at - sent_at).num_milliseconds().abs();
        assert!(
            in_flight < 10_000,
            "{id}: sentAt {sent_at} vs received {}",
            e.received_at
        );
        assert_eq!(
            e.timestamp,
            e.received_at - (sent_at - original),
            "{id}: skew correction"
        );
    }

    // More than 100 queued calls: the SDK needed several batches, at least one with many
    // messages (events of one batch share its sentAt).
    let mut per_batch: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for e in &events {
        *per_batch.entry(e.sent_at.expect("sent_at")).or_default() += 1;
    }
    assert!(
        per_batch.len() >= 2,
        "expected several batches: {per_batch:?}"
    );
    assert!(
        per_batch.values().any(|&n| n > 1),
        "expected a multi-message batch: {per_batch:?}"
    );
}

#[tokio::test]
async fn segment_python_sdk_calls_land_in_the_log() {
    let app = TestApp::spawn().await;
    let run = send_events(&app.base, &app.write_key, "sdk", &[]).await;
    assert!(
        run.success,
        "the SDK reported errors: {}\nstderr: {}",
        run.summary["errors"], run.stderr
    );
    let sent = run.summary["sent"].as_array().expect("sent");
    let kinds: BTreeSet<&str> = sent.iter().filter_map(|s| s["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["alias", "group", "identify", "page", "track"].into(),
        "the script covers every call type"
    );
    assert!(sent.len() > 100, "{} calls", sent.len());
    assert_all_landed(&app, &run.summary).await;

    // The late event (timestamp an hour ago) keeps its age after correction.
    let late = app
        .logged_events()
        .await
        .into_iter()
        .find(|e| e.name.as_deref() == Some("sdk Late Event"))
        .expect("late event");
    let age = (late.received_at - late.timestamp).num_seconds();
    assert!((3590..=3610).contains(&age), "late event age {age} s");
}

#[tokio::test]
async fn segment_python_sdk_gzip_batches_land_in_the_log() {
    let app = TestApp::spawn().await;
    let run = send_events(
        &app.base,
        &app.write_key,
        "gz",
        &["--gzip", "--tracks", "120"],
    )
    .await;
    assert!(
        run.success,
        "the SDK reported errors: {}\nstderr: {}",
        run.summary["errors"], run.stderr
    );
    assert_all_landed(&app, &run.summary).await;
}

#[tokio::test]
async fn segment_python_sdk_reports_a_rejected_write_key() {
    let app = TestApp::spawn().await;
    let run = send_events(&app.base, "sk_w_not_a_real_key", "bad", &["--tracks", "0"]).await;
    assert!(
        !run.success,
        "the script must fail when the SDK's on_error fired"
    );
    let errors = run.summary["errors"].as_array().expect("errors");
    assert!(
        errors
            .iter()
            .any(|e| e["error"].as_str().is_some_and(|m| m.contains("401"))),
        "on_error should report the 401: {errors:?}"
    );
    app.assert_log_empty("calls with a rejected write key")
        .await;
}
