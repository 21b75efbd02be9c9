//! The canonical event: the one shape every request is turned into, written to the log as JSON
//! (see `docs/log-format.md`) and stored by the warehouse.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::JsonObject;

/// The Segment call types, which are also sluice's event kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Track,
        EventKind::Identify,
        EventKind::Page,
        EventKind::Screen,
        EventKind::Group,
        EventKind::Alias,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Track => "track",
            EventKind::Identify => "identify",
            EventKind::Page => "page",
            EventKind::Screen => "screen",
            EventKind::Group => "group",
            EventKind::Alias => "alias",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One analytics event after parsing, validation and clock-skew correction.
///
/// Field names are the log's wire format; adding an optional field is compatible, renaming one is
/// not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Client `messageId` (≤ 100 chars), or a generated UUIDv7.
    pub event_id: String,
    /// The source the write key belongs to.
    pub source: String,
    pub kind: EventKind,
    /// Event name for `track`, page/screen name for `page`/`screen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    /// `group` calls only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// `alias` calls only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_id: Option<String>,
    /// Event time after clock-skew correction.
    #[serde(
        serialize_with = "crate::rfc3339::serialize",
        deserialize_with = "crate::rfc3339::deserialize"
    )]
    pub timestamp: DateTime<Utc>,
    /// The client's own `timestamp`, uncorrected.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::rfc3339::serialize_option",
        deserialize_with = "crate::rfc3339::deserialize_option"
    )]
    pub original_timestamp: Option<DateTime<Utc>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::rfc3339::serialize_option",
        deserialize_with = "crate::rfc3339::deserialize_option"
    )]
    pub sent_at: Option<DateTime<Utc>>,
    #[serde(
        serialize_with = "crate::rfc3339::serialize",
        deserialize_with = "crate::rfc3339::deserialize"
    )]
    pub received_at: DateTime<Utc>,
    /// The free-form objects, kept as JSON text end to end (see [`JsonObject`]).
    #[serde(default)]
    pub properties: JsonObject,
    #[serde(default)]
    pub traits: JsonObject,
    #[serde(default)]
    pub context: JsonObject,
    #[serde(default, skip_serializing_if = "JsonObject::is_empty")]
    pub integrations: JsonObject,
}

impl Event {
    /// The key that identifies the person behind the event: `user_id`, else `anonymous_id`.
    pub fn user_key(&self) -> Option<&str> {
        self.user_id.as_deref().or(self.anonymous_id.as_deref())
    }

    /// The IP the event came from: `context.ip` (set at ingest from the client address when the
    /// client did not send one), when it is a string. Parses `context`.
    pub fn ip(&self) -> Option<String> {
        match self.context.get("ip") {
            Some(Value::String(ip)) => Some(ip),
            _ => None,
        }
    }

    /// Serialize for the log. Serializing this type cannot fail (string keys, finite numbers).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        out
    }

    /// [`Event::to_json`], appended to `out` (one buffer for many events).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let len = out.len();
        if serde_json::to_writer(&mut *out, self).is_err() {
            out.truncate(len);
        }
    }

    pub fn from_json(bytes: &[u8]) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
