//! Property tests of the request parsers: no input makes them panic, valid messages keep every
//! field, and in a batch exactly the invalid items are rejected, with their indices.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use sluice_core::parse::{build_events, json_depth, parse_body, raw_depth, Context, Shape};
use sluice_core::{EventKind, Limits};

fn received() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0)
        .single()
        .expect("time")
}

fn ctx(limits: &Limits) -> Context<'_> {
    Context {
        source: "src",
        received_at: received(),
        client_ip: Some("198.51.100.9"),
        limits,
    }
}

fn shapes() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::SegmentBatch),
        Just(Shape::Legacy),
        Just(Shape::NativeArray),
        Just(Shape::NativeNdjson),
        prop::sample::select(EventKind::ALL.to_vec()).prop_map(Shape::SegmentSingle),
    ]
}

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid Segment track message and what it must become.
#[derive(Debug, Clone)]
struct Track {
    message_id: String,
    user_id: String,
    event: String,
    properties: Value,
    age_ms: i64,
    skew_s: i64,
}

fn track() -> impl Strategy<Value = Track> {
    (
        "[a-zA-Z0-9-]{1,100}",
        "[a-zA-Z0-9@._-]{1,40}",
        "[a-zA-Z0-9 _:/.-]{1,200}".prop_filter("not blank", |s| !s.trim().is_empty()),
        prop::collection::btree_map("[a-z]{1,8}", json_value(), 0..5),
        0i64..86_400_000,
        -86_400i64..86_400,
    )
        .prop_map(
            |(message_id, user_id, event, props, age_ms, skew_s)| Track {
                message_id,
                user_id,
                event,
                properties: Value::Object(props.into_iter().collect()),
                age_ms,
                skew_s,
            },
        )
}

impl Track {
    fn to_json(&self) -> Value {
        let true_time = received() - Duration::milliseconds(self.age_ms);
        let skew = Duration::seconds(self.skew_s);
        json!({
            "type": "track",
            "messageId": self.message_id,
            "userId": self.user_id,
            "event": self.event,
            "properties": self.properties,
            "timestamp": (true_time + skew).to_rfc3339(),
            "sentAt": (received() + skew).to_rfc3339(),
        })
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The depth limit reads free-form objects as text: it must count as the tree does, whatever
    /// the strings hold (brackets, quotes, backslashes) and however the text is laid out.
    #[test]
    fn raw_depth_counts_as_json_depth(value in json_value()) {
        let compact = serde_json::to_string(&value).expect("serialize");
        let pretty = serde_json::to_string_pretty(&value).expect("serialize");
        prop_assert_eq!(raw_depth(&compact), json_depth(&value));
        prop_assert_eq!(raw_depth(&pretty), json_depth(&value));
    }

    #[test]
    fn arbitrary_bytes_never_panic(shape in shapes(), body in prop::collection::vec(any::<u8>(), 0..512)) {
        let limits = Limits::default();
        if let Ok(parsed) = parse_body(shape, &body, &limits) {
            let outcome = build_events(&parsed, &ctx(&limits));
            prop_assert_eq!(outcome.accepted.len() + outcome.rejected.len(), parsed.len());
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_every_problem_has_a_message(shape in shapes(), value in json_value()) {
        let limits = Limits::default();
        let body = serde_json::to_vec(&value).expect("serialize");
        match parse_body(shape, &body, &limits) {
            Ok(parsed) => {
                let outcome = build_events(&parsed, &ctx(&limits));
                prop_assert_eq!(outcome.accepted.len() + outcome.rejected.len(), parsed.len());
                for r in &outcome.rejected {
                    prop_assert!(!r.errors.is_empty());
                    prop_assert!(r.errors.iter().all(|p| !p.message.is_empty()));
                }
            }
            Err(problems) => prop_assert!(!problems.is_empty()),
        }
    }

    #[test]
    fn valid_track_keeps_its_fields_and_corrects_skew(t in track()) {
        let limits = Limits::default();
        let body = serde_json::to_vec(&t.to_json()).expect("serialize");
        let parsed = parse_body(Shape::SegmentSingle(EventKind::Track), &body, &limits).expect("valid body");
        let outcome = build_events(&parsed, &ctx(&limits));
        prop_assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
        let e = &outcome.accepted[0];
        prop_assert_eq!(&e.event_id, &t.message_id);
        prop_assert_eq!(e.user_id.as_deref(), Some(t.user_id.as_str()));
        prop_assert_eq!(e.name.as_deref(), Some(t.event.as_str()));
        prop_assert_eq!(Value::Object(e.properties.to_map()), t.properties.clone());
        prop_assert_eq!(e.source.as_str(), "src");
        prop_assert_eq!(e.context.get("ip"), Some(json!("198.51.100.9")));
        // RFC 3339 keeps the client's sub-second digits, so the true time comes back exactly.
        prop_assert_eq!(e.timestamp, received() - Duration::milliseconds(t.age_ms));
        // The canonical JSON round-trips.
        prop_assert_eq!(&sluice_core::Event::from_json(&e.to_json()).expect("round trip"), e);
    }

    #[test]
    fn a_batch_rejects_exactly_its_invalid_items(items in prop::collection::vec((track(), any::<bool>()), 1..40)) {
        let limits = Limits::default();
        let batch: Vec<Value> = items
            .iter()
            .map(|(t, valid)| {
                let mut v = t.to_json();
                if !valid {
                    v.as_object_mut().expect("object").remove("event");
                }
                v
            })
            .collect();
        let body = serde_json::to_vec(&json!({ "batch": batch, "context": {"app": {"name": "p"}} })).expect("serialize");
        let parsed = parse_body(Shape::SegmentBatch, &body, &limits).expect("valid body");
        let outcome = build_events(&parsed, &ctx(&limits));
        let expected_rejected: Vec<usize> = items.iter().enumerate().filter(|(_, (_, v))| !v).map(|(i, _)| i).collect();
        let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
        prop_assert_eq!(&rejected, &expected_rejected);
        for r in &outcome.rejected {
            prop_assert_eq!(&r.errors[0].path, &format!("batch[{}].event", r.index));
        }
        prop_assert_eq!(outcome.accepted.len(), items.len() - expected_rejected.len());
        for e in &outcome.accepted {
            prop_assert_eq!(e.context.get("app"), Some(json!({"name": "p"})));
        }
    }
}

/// Free-form objects sluice does not add to reach the log as the client wrote them (number
/// spelling, escapes, key order), and those it adds to are still objects with the additions.
#[test]
fn free_form_objects_keep_their_text_unless_sluice_adds_to_them() {
    let limits = Limits::default();
    let props = r#"{"z":1.50,"a":"\u00e9\"]}","n":[{"d":{}}]}"#;
    let traits = r#"{ "plan" : "pro" }"#;
    let body = format!(
        r#"{{"batch":[
            {{"type":"identify","userId":"u1","traits":{traits},"properties":{props}}},
            {{"type":"page","userId":"u1","category":"Docs","properties":{props}}},
            {{"type":"track","userId":"u1","event":"E","properties":null,"context":{{"ip":"203.0.113.1"}}}},
            {{"type":"track","userId":"u1","event":"E","properties":[1]}}
        ],"integrations":{{"All":false}}}}"#
    );
    let parsed = parse_body(Shape::SegmentBatch, body.as_bytes(), &limits).expect("valid body");
    let outcome = build_events(&parsed, &ctx(&limits));
    assert_eq!(outcome.accepted.len(), 3, "{:?}", outcome.rejected);
    let [identify, page, track] = &outcome.accepted[..] else {
        unreachable!()
    };
    assert_eq!(identify.properties.as_str(), props);
    assert_eq!(identify.traits.as_str(), traits);
    assert_eq!(
        identify.properties.get("a"),
        Some(json!("\u{e9}\"]}")),
        "escapes still mean what they meant"
    );
    // `category` goes into the page's properties; batch integrations and the client address
    // into every event (a client's own `context.ip` wins).
    assert_eq!(page.properties.get("category"), Some(json!("Docs")));
    assert_eq!(page.properties.get("z"), Some(json!(1.5)));
    assert_eq!(identify.integrations.get("All"), Some(json!(false)));
    assert_eq!(identify.context.get("ip"), Some(json!("198.51.100.9")));
    assert!(track.properties.is_empty());
    assert_eq!(track.context.get("ip"), Some(json!("203.0.113.1")));
    let rejected = &outcome.rejected[0];
    assert_eq!(rejected.index, 3);
    assert_eq!(rejected.errors[0].path, "batch[3].properties");
    assert_eq!(rejected.errors[0].message, "must be an object");
}
