//! Parsing and validation of every accepted request shape into canonical events.
//!
//! Three dialects share one validator:
//! - Segment's HTTP Tracking API (`/v1/track` … `/v1/batch`): camelCase fields, `messageId`,
//!   batch-level `context`/`integrations`/`sentAt` merged into each message;
//! - the replaced system's `POST /track` body `{eventName, url, userId?, metadata?}`;
//! - sluice's native `POST /v1/events`: a JSON array or NDJSON of canonical (snake_case) events.
//!
//! Parsing is two steps so the HTTP layer can authenticate between them: [`parse_body`] splits the
//! body into raw items and finds a `writeKey` in it, then [`build_events`] validates each item and
//! builds events for the authenticated source. Every problem is reported with its JSON path; an
//! invalid item never stops the valid ones of the same batch.
//!
//! An item is read as its top-level members with unparsed values: the free-form objects
//! (`properties`, `traits`, `integrations`) are checked to be objects, their depth counted on the
//! text, and kept as the client wrote them ([`crate::JsonObject`]); only `context` and objects
//! sluice adds to (`category`, batch-level `integrations`) are parsed and re-written.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::event::{Event, EventKind};
use crate::json_object::JsonObject;
use crate::limits::Limits;
use crate::skew::corrected_timestamp;

/// One validation problem: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The request shapes sluice accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `POST /v1/{track,identify,page,screen,group,alias}`: one Segment message of that type.
    SegmentSingle(EventKind),
    /// `POST /v1/batch` (also `/v1/import`): `{"batch":[…], "context":…, "integrations":…}`.
    SegmentBatch,
    /// `POST /track` of the replaced system.
    Legacy,
    /// `POST /v1/events` with a JSON array body.
    NativeArray,
    /// `POST /v1/events` with `Content-Type: application/x-ndjson`.
    NativeNdjson,
}

/// A body split into items, not yet validated.
#[derive(Debug)]
pub struct Body<'a> {
    shape: Shape,
    /// `writeKey` found in the body, if any.
    pub write_key: Option<String>,
    batch_context: Option<Map<String, Value>>,
    batch_integrations: Option<Map<String, Value>>,
    batch_sent_at: Option<&'a RawValue>,
    items: Vec<&'a str>,
}

impl Body<'_> {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Per-request facts the events are built with.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub source: &'a str,
    pub received_at: DateTime<Utc>,
    /// The client address, stored as `context.ip` when the event has none.
    pub client_ip: Option<&'a str>,
    pub limits: &'a Limits,
}

/// An item of a batch that was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub index: usize,
    pub errors: Vec<Problem>,
}

/// The result of validating a body: accepted events and rejected items.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: Vec<Event>,
    pub rejected: Vec<Rejection>,
}

impl Outcome {
    /// Every problem of every rejected item, flattened.
    pub fn problems(&self) -> Vec<Problem> {
        self.rejected
            .iter()
            .flat_map(|r| r.errors.iter().cloned())
            .collect()
    }
}

#[derive(Deserialize)]
struct SegmentBatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    #[serde(default)]
    context: Option<Value>,
    #[serde(default)]
    integrations: Option<Value>,
    #[serde(default, rename = "writeKey")]
    write_key: Option<Value>,
    #[serde(default, rename = "sentAt", borrow)]
    sent_at: Option<&'a RawValue>,
}

fn json_error(path: &str, e: &serde_json::Error) -> Problem {
    let message = if e.is_eof() {
        "body is empty or truncated JSON".to_string()
    } else if e.is_data() {
        format!("unexpected JSON shape: {e}")
    } else {
        format!("malformed JSON: {e}")
    };
    Problem::new(path, message)
}

fn object_or_problem(v: Option<Value>, path: &str) -> Result<Option<Map<String, Value>>, Problem> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(Problem::new(path, "must be an object")),
    }
}

fn key_string(v: Option<Value>, path: &str) -> Result<Option<String>, Problem> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(Problem::new(path, "must be a non-empty string")),
    }
}

/// Split a body into items. Errors here concern the whole body (400 for all of it).
pub fn parse_body<'a>(
    shape: Shape,
    body: &'a [u8],
    limits: &Limits,
) -> Result<Body<'a>, Vec<Problem>> {
    if body.len() > limits.max_body_bytes {
        return Err(vec![Problem::new(
            "",
            format!(
                "body is {} bytes, limit {}",
                body.len(),
                limits.max_body_bytes
            ),
        )]);
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| vec![Problem::new("", format!("body is not UTF-8: {e}"))])?;
    if text.trim().is_empty() {
        return Err(vec![Problem::new("", "body is empty")]);
    }
    let mut out = Body {
        shape,
        write_key: None,
        batch_context: None,
        batch_integrations: None,
        batch_sent_at: None,
        items: Vec::new(),
    };
    match shape {
        Shape::SegmentBatch => {
            let parsed: SegmentBatchBody<'a> =
                serde_json::from_str(text).map_err(|e| vec![json_error("", &e)])?;
            let mut problems = Vec::new();
            match object_or_problem(parsed.context, "context") {
                Ok(c) => out.batch_context = c,
                Err(p) => problems.push(p),
            }
            match object_or_problem(parsed.integrations, "integrations") {
                Ok(c) => out.batch_integrations = c,
                Err(p) => problems.push(p),
            }
            match key_string(parsed.write_key, "writeKey") {
                Ok(k) => out.write_key = k,
                Err(p) => problems.push(p),
            }
            if !problems.is_empty() {
                return Err(problems);
            }
            out.batch_sent_at = parsed.sent_at;
            out.items = parsed.batch.into_iter().map(RawValue::get).collect();
        }
        Shape::SegmentSingle(_) | Shape::Legacy => {
            // The item is the whole body; it is parsed (and any JSON error reported) once, when
            // the event is built.
            out.items.push(text.trim());
        }
        Shape::NativeArray => {
            let items: Vec<&'a RawValue> = serde_json::from_str(text).map_err(|e| {
                let mut p = json_error("", &e);
                if e.is_data() {
                    p.message = "expected a JSON array of events (or NDJSON with Content-Type: application/x-ndjson)".into();
                }
                vec![p]
            })?;
            out.items = items.into_iter().map(RawValue::get).collect();
        }
        Shape::NativeNdjson => {
            out.items = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
        }
    }
    if out.items.is_empty() {
        return Err(vec![Problem::new(
            if shape == Shape::SegmentBatch {
                "batch"
            } else {
                ""
            },
            "no events in the request",
        )]);
    }
    if out.items.len() > limits.max_batch_events {
        return Err(vec![Problem::new(
            if shape == Shape::SegmentBatch {
                "batch"
            } else {
                ""
            },
            format!(
                "{} events in one request, limit {}",
                out.items.len(),
                limits.max_batch_events
            ),
        )]);
    }
    if matches!(shape, Shape::SegmentSingle(_) | Shape::Legacy)
        && out.items[0].contains("\"writeKey\"")
    {
        // The key may be in the single message itself (parsed only when it can be there).
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(out.items[0]) {
            if let Some(Value::String(k)) = m.get("writeKey") {
                if !k.is_empty() {
                    out.write_key = Some(k.clone());
                }
            }
        }
    }
    Ok(out)
}

/// Validate every item and build events for the authenticated source.
pub fn build_events(body: &Body<'_>, ctx: &Context<'_>) -> Outcome {
    let mut outcome = Outcome {
        accepted: Vec::with_capacity(body.items.len()),
        rejected: Vec::new(),
    };
    let batch_sent_at = match body.batch_sent_at {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<Value>(raw.get())
            .map_err(|e| e.to_string())
            .and_then(|v| parse_time(&v).map_err(str::to_string)),
    };
    for (index, raw) in body.items.iter().enumerate() {
        let prefix = match body.shape {
            Shape::SegmentBatch => format!("batch[{index}]"),
            Shape::NativeArray | Shape::NativeNdjson => format!("[{index}]"),
            Shape::SegmentSingle(_) | Shape::Legacy => String::new(),
        };
        let mut v = Validator {
            prefix: &prefix,
            problems: Vec::new(),
            limits: ctx.limits,
        };
        if let Err(e) = &batch_sent_at {
            v.problem("sentAt", e.clone());
        }
        let event = v.item(body, raw, ctx, batch_sent_at.clone().ok().flatten());
        match event {
            Some(e) if v.problems.is_empty() => outcome.accepted.push(e),
            _ => outcome.rejected.push(Rejection {
                index,
                errors: v.problems,
            }),
        }
    }
    outcome
}

/// Nesting depth of a JSON value: scalars 0, `{}`/`[]` 1.
pub fn json_depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(json_depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn parse_time(v: &Value) -> Result<Option<DateTime<Utc>>, &'static str> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| "must be an ISO 8601 / RFC 3339 date-time with a time zone"),
        _ => Err("must be an ISO 8601 / RFC 3339 date-time string"),
    }
}

/// Field names of a dialect.
struct Names {
    kind: &'static str,
    /// Where a track event's name is: Segment's `event`, the native `name`.
    track_name: &'static str,
    event_id: &'static str,
    user_id: &'static str,
    anonymous_id: &'static str,
    group_id: &'static str,
    previous_id: &'static str,
    timestamp: &'static str,
    original_timestamp: &'static str,
    sent_at: &'static str,
}

const SEGMENT: Names = Names {
    kind: "type",
    track_name: "event",
    event_id: "messageId",
    user_id: "userId",
    anonymous_id: "anonymousId",
    group_id: "groupId",
    previous_id: "previousId",
    timestamp: "timestamp",
    original_timestamp: "originalTimestamp",
    sent_at: "sentAt",
};

const NATIVE: Names = Names {
    kind: "kind",
    track_name: "name",
    event_id: "event_id",
    user_id: "user_id",
    anonymous_id: "anonymous_id",
    group_id: "group_id",
    previous_id: "previous_id",
    timestamp: "timestamp",
    original_timestamp: "original_timestamp",
    sent_at: "sent_at",
};

struct Validator<'p> {
    prefix: &'p str,
    problems: Vec<Problem>,
    limits: &'p Limits,
}

impl Validator<'_> {
    fn path(&self, field: &str) -> String {
        match (self.prefix.is_empty(), field.is_empty()) {
            (true, _) => field.to_string(),
            (false, true) => self.prefix.to_string(),
            (false, false) => format!("{}.{field}", self.prefix),
        }
    }

    fn problem(&mut self, field: &str, message: impl Into<String>) {
        let path = self.path(field);
        self.problems.push(Problem::new(path, message));
    }

    fn item(
        &mut self,
        body: &Body<'_>,
        raw: &str,
        ctx: &Context<'_>,
        batch_sent_at: Option<DateTime<Utc>>,
    ) -> Option<Event> {
        if raw.len() > self.limits.max_event_bytes {
            self.problem(
                "",
                format!(
                    "event is {} bytes, limit {}",
                    raw.len(),
                    self.limits.max_event_bytes
                ),
            );
            return None;
        }
        // Top-level members with their values unparsed; the free-form objects stay text (they
        // go to the log as they came), everything else becomes a `Value` to validate.
        let members: BTreeMap<Key<'_>, &RawValue> = match serde_json::from_str(raw) {
            Ok(m) => m,
            Err(e) if e.is_data() => {
                self.problem("", "each event must be a JSON object");
                return None;
            }
            Err(e) => {
                let p = json_error("", &e);
                self.problem("", p.message);
                return None;
            }
        };
        let mut m = Map::new();
        let mut objects = Objects::default();
        let mut depth = 1;
        for (Key(k), v) in members {
            if let Some(slot) = objects.slot(&k) {
                depth = depth.max(1 + raw_depth(v.get()));
                *slot = Some(v);
            } else {
                // Valid JSON already (the whole item parsed).
                let value: Value = serde_json::from_str(v.get()).unwrap_or(Value::Null);
                depth = depth.max(1 + json_depth(&value));
                m.insert(k.into_owned(), value);
            }
        }
        if depth > self.limits.max_json_depth {
            self.problem(
                "",
                format!(
                    "JSON nesting depth {depth}, limit {}",
                    self.limits.max_json_depth
                ),
            );
            return None;
        }
        m.remove("writeKey");
        match body.shape {
            Shape::Legacy => self.legacy(m, &objects, ctx),
            Shape::SegmentSingle(kind) => {
                self.message(m, &objects, &SEGMENT, Some(kind), body, ctx, batch_sent_at)
            }
            Shape::SegmentBatch => {
                self.message(m, &objects, &SEGMENT, None, body, ctx, batch_sent_at)
            }
            Shape::NativeArray | Shape::NativeNdjson => {
                self.message(m, &objects, &NATIVE, None, body, ctx, None)
            }
        }
    }

    /// An id field: a non-empty string, or a number (analytics.js sends numeric ids), ≤ 200 chars.
    fn id(&mut self, m: &mut Map<String, Value>, field: &str) -> Option<String> {
        match m.remove(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => {
                if s.chars().count() > self.limits.max_name_chars {
                    self.problem(
                        field,
                        format!("longer than {} characters", self.limits.max_name_chars),
                    );
                    return None;
                }
                Some(s)
            }
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => {
                self.problem(field, "must be a string");
                None
            }
        }
    }

    fn name(&mut self, m: &mut Map<String, Value>, field: &str, required: bool) -> Option<String> {
        match m.remove(field) {
            None | Some(Value::Null) => {
                if required {
                    self.problem(field, "is required");
                }
                None
            }
            Some(Value::String(s)) => {
                if s.trim().is_empty() {
                    if required {
                        self.problem(field, "must not be empty");
                    }
                    None
                } else if s.chars().count() > self.limits.max_name_chars {
                    self.problem(
                        field,
                        format!("longer than {} characters", self.limits.max_name_chars),
                    );
                    None
                } else {
                    Some(s)
                }
            }
            Some(_) => {
                self.problem(field, "must be a string");
                None
            }
        }
    }

    /// A free-form object member: absent or `null` is `None`, anything but an object a problem.
    fn object<'r>(&mut self, raw: Option<&'r RawValue>, field: &str) -> Option<&'r RawValue> {
        let raw = raw?;
        if raw.get() == "null" {
            None
        } else if raw.get().starts_with('{') {
            Some(raw)
        } else {
            self.problem(field, "must be an object");
            None
        }
    }

    fn time(&mut self, m: &mut Map<String, Value>, field: &str) -> Option<DateTime<Utc>> {
        let v = m.remove(field)?;
        match parse_time(&v) {
            Ok(t) => t,
            Err(msg) => {
                self.problem(field, msg);
                None
            }
        }
    }

    fn event_id(&mut self, m: &mut Map<String, Value>, field: &str) -> String {
        match m.remove(field) {
            None | Some(Value::Null) => generate_event_id(),
            Some(Value::String(s)) if s.is_empty() => {
                self.problem(field, "must not be empty");
                String::new()
            }
            Some(Value::String(s)) => {
                if s.chars().count() > self.limits.max_message_id_chars {
                    self.problem(
                        field,
                        format!(
                            "longer than {} characters",
                            self.limits.max_message_id_chars
                        ),
                    );
                }
                s
            }
            Some(_) => {
                self.problem(field, "must be a string");
                String::new()
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn message(
        &mut self,
        mut m: Map<String, Value>,
        objects: &Objects<'_>,
        names: &Names,
        route_kind: Option<EventKind>,
        body: &Body<'_>,
        ctx: &Context<'_>,
        batch_sent_at: Option<DateTime<Utc>>,
    ) -> Option<Event> {
        let declared = match m.remove(names.kind) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match EventKind::parse(&s) {
                Some(k) => Some(k),
                None => {
                    self.problem(names.kind, format!("unknown type {s:?}; expected one of track, identify, page, screen, group, alias"));
                    return None;
                }
            },
            Some(_) => {
                self.problem(names.kind, "must be a string");
                return None;
            }
        };
        let kind = match (route_kind, declared) {
            (Some(route), _) => route,
            (None, Some(k)) => k,
            (None, None) => {
                self.problem(names.kind, "is required");
                return None;
            }
        };
        let event_id = self.event_id(&mut m, names.event_id);
        let user_id = self.id(&mut m, names.user_id);
        let anonymous_id = self.id(&mut m, names.anonymous_id);
        let group_id = self.id(&mut m, names.group_id);
        let previous_id = self.id(&mut m, names.previous_id);
        let name = match kind {
            EventKind::Track => {
                let field = names.track_name;
                self.name(&mut m, field, true)
            }
            EventKind::Page | EventKind::Screen => self.name(&mut m, "name", false),
            _ => {
                m.remove("name");
                None
            }
        };
        let properties = self.object(objects.properties, "properties");
        let traits = self.object(objects.traits, "traits");
        let context = self.object(objects.context, "context");
        let integrations = self.object(objects.integrations, "integrations");
        // Objects sluice adds to are parsed; the others go on as the client wrote them.
        let properties = match m.remove("category") {
            Some(Value::String(category)) => {
                let mut map = parse_object(properties);
                map.entry("category").or_insert(Value::String(category));
                JsonObject::from_map(&map)
            }
            _ => owned_object(properties),
        };
        let mut context = parse_object(context);
        let integrations = match &body.batch_integrations {
            Some(batch) if !batch.is_empty() => {
                let mut map = parse_object(integrations);
                for (k, v) in batch {
                    map.entry(k.clone()).or_insert_with(|| v.clone());
                }
                JsonObject::from_map(&map)
            }
            _ => owned_object(integrations),
        };
        let original = match self.time(&mut m, names.timestamp) {
            Some(t) => Some(t),
            None => self.time(&mut m, names.original_timestamp),
        };
        let sent_at = self.time(&mut m, names.sent_at).or(batch_sent_at);

        match kind {
            EventKind::Alias => {
                if user_id.is_none() {
                    self.problem(names.user_id, "is required for alias");
                }
                if previous_id.is_none() {
                    self.problem(names.previous_id, "is required for alias");
                }
            }
            _ => {
                if user_id.is_none() && anonymous_id.is_none() {
                    self.problem(
                        names.user_id,
                        format!("{} or {} is required", names.user_id, names.anonymous_id),
                    );
                }
                if kind == EventKind::Group && group_id.is_none() {
                    self.problem(names.group_id, "is required for group");
                }
            }
        }
        if let Some(batch) = &body.batch_context {
            for (k, v) in batch {
                context.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        if !self.problems.is_empty() {
            return None;
        }
        add_client_ip(&mut context, ctx);
        Some(Event {
            event_id,
            source: ctx.source.to_string(),
            kind,
            name,
            user_id,
            anonymous_id,
            group_id,
            previous_id,
            timestamp: corrected_timestamp(ctx.received_at, sent_at, original),
            original_timestamp: original,
            sent_at,
            received_at: ctx.received_at,
            properties,
            traits: owned_object(traits),
            context: JsonObject::from_map(&context),
            integrations,
        })
    }

    fn legacy(
        &mut self,
        mut m: Map<String, Value>,
        objects: &Objects<'_>,
        ctx: &Context<'_>,
    ) -> Option<Event> {
        let name = self.name(&mut m, "eventName", true);
        let user_id = self.id(&mut m, "userId");
        let properties = owned_object(self.object(objects.metadata, "metadata"));
        let url = match m.remove("url") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                self.problem("url", "must be a string");
                None
            }
        };
        if !self.problems.is_empty() {
            return None;
        }
        let mut context = Map::new();
        if let Some(url) = url {
            let mut page = Map::new();
            page.insert("url".into(), Value::String(url));
            context.insert("page".into(), Value::Object(page));
        }
        add_client_ip(&mut context, ctx);
        Some(Event {
            event_id: generate_event_id(),
            source: ctx.source.to_string(),
            kind: EventKind::Track,
            name,
            user_id,
            anonymous_id: None,
            group_id: None,
            previous_id: None,
            timestamp: ctx.received_at,
            original_timestamp: None,
            sent_at: None,
            received_at: ctx.received_at,
            properties,
            traits: JsonObject::empty(),
            context: JsonObject::from_map(&context),
            integrations: JsonObject::empty(),
        })
    }
}

/// A message member's name: borrowed from the body unless it holds escapes.
#[derive(Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

/// The free-form object members of a message, unparsed (validated as JSON, not yet as objects).
#[derive(Default)]
struct Objects<'a> {
    properties: Option<&'a RawValue>,
    traits: Option<&'a RawValue>,
    context: Option<&'a RawValue>,
    integrations: Option<&'a RawValue>,
    /// The replaced system's `metadata`: its events' properties.
    metadata: Option<&'a RawValue>,
}

impl<'a> Objects<'a> {
    fn slot(&mut self, key: &str) -> Option<&mut Option<&'a RawValue>> {
        match key {
            "properties" => Some(&mut self.properties),
            "traits" => Some(&mut self.traits),
            "context" => Some(&mut self.context),
            "integrations" => Some(&mut self.integrations),
            "metadata" => Some(&mut self.metadata),
            _ => None,
        }
    }
}

/// A validated object member as a map (`{}` when absent).
fn parse_object(raw: Option<&RawValue>) -> Map<String, Value> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or_default()
}

/// A validated object member as the event keeps it, its text unchanged (`{}` when absent).
fn owned_object(raw: Option<&RawValue>) -> JsonObject {
    raw.and_then(JsonObject::from_raw_value).unwrap_or_default()
}

/// Nesting depth of valid JSON text, as [`json_depth`] counts it, without building the value.
pub fn raw_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The client address as `context.ip`, unless the client sent one.
fn add_client_ip(context: &mut Map<String, Value>, ctx: &Context<'_>) {
    if let Some(ip) = ctx.client_ip {
        context
            .entry("ip")
            .or_insert_with(|| Value::String(ip.to_string()));
    }
}

/// A new event id: a UUIDv7, so generated ids sort by time.
pub fn generate_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
