//! [`JsonObject`]: an event's free-form JSON object (`properties`, `traits`, `context`,
//! `integrations`) kept as its validated text rather than as a tree of `Value`s.
//!
//! The pipeline moves these objects far more often than it looks inside them: the API writes them
//! to the log, the warehouse worker reads them back and stores them as text (SQLite) or `jsonb`
//! (PostgreSQL). As a tree each object is dozens of small allocations, built and torn down at
//! every hop; as text it is one allocation, decoded by a scan and stored as it came. The few
//! readers that need a field ([`Event::ip`](crate::Event::ip), tests) parse it on demand.
//!
//! Equality is by JSON value (key order and whitespace do not matter): PostgreSQL's `jsonb`
//! hands back the same object with its keys reordered.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A JSON object held as its text (always a syntactically valid object).
#[derive(Clone)]
pub struct JsonObject(Box<RawValue>);

impl JsonObject {
    /// `{}`.
    pub fn empty() -> JsonObject {
        JsonObject(RawValue::from_string("{}".to_owned()).expect("{} is JSON"))
    }

    /// The text of a map. Serializing a map of JSON values cannot fail (string keys, finite
    /// numbers).
    pub fn from_map(map: &Map<String, Value>) -> JsonObject {
        match serde_json::value::to_raw_value(map) {
            Ok(raw) => JsonObject(raw),
            Err(_) => JsonObject::empty(),
        }
    }

    /// An owned copy of a JSON value when it is an object.
    pub fn from_raw_value(raw: &RawValue) -> Option<JsonObject> {
        raw.get()
            .trim_start()
            .starts_with('{')
            .then(|| JsonObject(raw.to_owned()))
    }

    /// Validate `text` as a JSON object (stored text read back, a log payload).
    pub fn parse(text: &str) -> Result<JsonObject, serde_json::Error> {
        let raw: Box<RawValue> = serde_json::from_str(text)?;
        JsonObject::from_raw(raw)
    }

    fn from_raw<E: serde::de::Error>(raw: Box<RawValue>) -> Result<JsonObject, E> {
        if raw.get().trim_start().starts_with('{') {
            Ok(JsonObject(raw))
        } else {
            Err(E::custom(format!(
                "expected a JSON object, found {}",
                preview(raw.get())
            )))
        }
    }

    /// The object's JSON text, as received.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Whether the object has no members.
    pub fn is_empty(&self) -> bool {
        // The text is a valid object, so it is empty exactly when only whitespace separates
        // its braces.
        let text = self.as_str().trim_start();
        text.get(1..)
            .is_some_and(|rest| rest.trim_start().starts_with('}'))
    }

    /// The object as a map (parses the text).
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(self.as_str()).unwrap_or_default()
    }

    /// One member, parsed on demand.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.to_map().remove(key)
    }

    /// Set one member (parses and re-writes the whole object: for building events, not for a
    /// hot path). Returns the member's previous value.
    pub fn insert(&mut self, key: String, value: Value) -> Option<Value> {
        let mut map = self.to_map();
        let old = map.insert(key, value);
        *self = JsonObject::from_map(&map);
        old
    }
}

fn preview(text: &str) -> String {
    let mut s: String = text.chars().take(20).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

impl Default for JsonObject {
    fn default() -> JsonObject {
        JsonObject::empty()
    }
}

impl From<Map<String, Value>> for JsonObject {
    fn from(map: Map<String, Value>) -> JsonObject {
        JsonObject::from_map(&map)
    }
}

impl PartialEq for JsonObject {
    fn eq(&self, other: &JsonObject) -> bool {
        self.as_str() == other.as_str() || self.to_map() == other.to_map()
    }
}

impl fmt::Debug for JsonObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for JsonObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JsonObject, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        JsonObject::from_raw(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_the_text_and_compares_by_value() {
        let a = JsonObject::parse(r#"{"b":1,"a":[1,2]}"#).expect("object");
        let b = JsonObject::parse(r#"{ "a": [1, 2], "b": 1 }"#).expect("object");
        assert_eq!(a.as_str(), r#"{"b":1,"a":[1,2]}"#);
        assert_eq!(a, b, "equal as JSON");
        assert_ne!(
            a,
            JsonObject::parse(r#"{"b":2,"a":[1,2]}"#).expect("object")
        );
        assert_eq!(a.get("b"), Some(json!(1)));
        assert_eq!(a.get("c"), None);
    }

    #[test]
    fn only_objects_are_accepted() {
        for bad in ["[]", "1", "\"x\"", "null", "{", "{\"a\":}", ""] {
            assert!(JsonObject::parse(bad).is_err(), "{bad:?} accepted");
        }
        #[derive(Deserialize, Debug)]
        struct Holder {
            #[allow(dead_code)]
            p: JsonObject,
        }
        let err = serde_json::from_str::<Holder>(r#"{"p":[1]}"#).expect_err("array");
        assert!(err.to_string().contains("expected a JSON object"), "{err}");
    }

    #[test]
    fn emptiness_and_round_trips() {
        assert!(JsonObject::empty().is_empty());
        assert!(JsonObject::parse("{ \n }").expect("object").is_empty());
        assert!(!JsonObject::parse(r#"{"a":{}}"#).expect("object").is_empty());
        let mut map = Map::new();
        map.insert("k".into(), json!({"nested": [true, null, 1.5]}));
        let o = JsonObject::from_map(&map);
        assert_eq!(o.to_map(), map);
        #[derive(Serialize, Deserialize)]
        struct Holder {
            p: JsonObject,
        }
        let text = serde_json::to_string(&Holder { p: o.clone() }).expect("serialize");
        assert_eq!(text, r#"{"p":{"k":{"nested":[true,null,1.5]}}}"#);
        let back: Holder = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back.p, o);
    }
}
