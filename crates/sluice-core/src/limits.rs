//! Request and event size limits, shared by the parsers and the HTTP layer.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest serialized event, in bytes.
    pub max_event_bytes: usize,
    /// Largest request body after decompression, in bytes.
    pub max_body_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Longest `messageId`.
    pub max_message_id_chars: usize,
    /// Longest event name.
    pub max_name_chars: usize,
    /// Deepest JSON nesting of one event.
    pub max_json_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 32 * 1024,
            max_body_bytes: 500 * 1024,
            max_batch_events: 2_500,
            max_message_id_chars: 100,
            max_name_chars: 200,
            max_json_depth: 32,
        }
    }
}
