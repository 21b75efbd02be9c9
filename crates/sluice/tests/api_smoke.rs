//! Smoke test of the harness: a Segment track call lands in the log exactly once.

mod common;

use serde_json::json;

#[tokio::test]
async fn track_lands_in_the_log_once() {
    let app = common::TestApp::spawn().await;
    let (status, body) = app
        .post_json("/v1/track", &json!({"userId": "u1", "event": "Signed Up", "messageId": "m-1", "properties": {"plan": "pro"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    let events = app.logged_events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_id, "m-1");
    assert_eq!(events[0].name.as_deref(), Some("Signed Up"));
    assert_eq!(events[0].source, app.source);
    assert_eq!(
        events[0].properties.get("plan"),
        Some(serde_json::json!("pro"))
    );
}
