//! Decoding of Redis stream replies (XREADGROUP, XCLAIM, XRANGE, XPENDING, XINFO GROUPS) from raw
//! `redis::Value`s. Tolerant by design: RESP2 and RESP3 shapes are both accepted, a missing
//! payload field gives an empty payload, a deleted entry (nil fields) is reported as such, and
//! nothing here panics on whatever the network sent.

use bytes::Bytes;
use redis::Value;

/// The one field of a log entry that holds the canonical event JSON.
pub(crate) const PAYLOAD_FIELD: &[u8] = b"e";

pub(crate) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        Value::Okay => Some(b"OK"),
        _ => None,
    }
}

pub(crate) fn string(v: &Value) -> Option<String> {
    bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

pub(crate) fn uint(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::Double(d) if *d >= 0.0 => Some(*d as u64),
        _ => bytes(v).and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()),
    }
}

pub(crate) fn array(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        Value::Attribute { data, .. } => array(data),
        _ => &[],
    }
}

/// Key/value pairs of a RESP3 map or a RESP2 flat array `[k1, v1, k2, v2, …]`.
pub(crate) fn pairs(v: &Value) -> Vec<(&Value, &Value)> {
    match v {
        Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        Value::Attribute { data, .. } => pairs(data),
        _ => array(v)
            .chunks_exact(2)
            .map(|kv| (&kv[0], &kv[1]))
            .collect(),
    }
}

/// A stream entry as read: `payload` is `None` when Redis reported the entry as deleted (a
/// pending id whose entry was trimmed or XDEL'd).
#[derive(Debug)]
pub(crate) struct RawEntry {
    pub id: String,
    pub payload: Option<Bytes>,
}

/// The entries of an XRANGE / XCLAIM reply, or of one stream in an XREADGROUP reply.
pub(crate) fn entries(v: &Value) -> Vec<RawEntry> {
    array(v)
        .iter()
        .filter_map(|entry| {
            let parts = array(entry);
            let id = string(parts.first()?)?;
            let payload = match parts.get(1) {
                None | Some(Value::Nil) => None,
                Some(fields) => Some(
                    pairs(fields)
                        .into_iter()
                        .find(|(k, _)| bytes(k) == Some(PAYLOAD_FIELD))
                        .and_then(|(_, v)| bytes(v))
                        .map(Bytes::copy_from_slice)
                        // A foreign producer without our field: an empty payload, which the
                        // worker dead-letters as invalid.
                        .unwrap_or_default(),
                ),
            };
            Some(RawEntry { id, payload })
        })
        .collect()
}

/// The per-stream parts of an XREADGROUP reply (nil on timeout; an array of `[key, entries]` in
/// RESP2, a map in RESP3), as `(key, entries)`.
pub(crate) fn streams(v: &Value) -> Vec<(String, Vec<RawEntry>)> {
    let parts: Vec<(&Value, &Value)> = match v {
        Value::Map(_) => pairs(v),
        _ => array(v)
            .iter()
            .filter_map(|s| {
                let kv = array(s);
                Some((kv.first()?, kv.get(1)?))
            })
            .collect(),
    };
    parts
        .into_iter()
        .filter_map(|(k, e)| Some((string(k)?, entries(e))))
        .collect()
}

/// One row of the extended XPENDING form.
#[derive(Debug)]
pub(crate) struct PendingInfo {
    pub id: String,
    pub consumer: String,
    pub deliveries: u64,
}

pub(crate) fn pending_rows(v: &Value) -> Vec<PendingInfo> {
    array(v)
        .iter()
        .filter_map(|row| {
            let row = array(row);
            Some(PendingInfo {
                id: string(row.first()?)?,
                consumer: string(row.get(1)?)?,
                deliveries: uint(row.get(3)?)?,
            })
        })
        .collect()
}

/// The smallest pending id from the summary form of XPENDING (`[count, smallest, greatest,
/// consumers]`), if anything is pending.
pub(crate) fn pending_smallest(v: &Value) -> Option<String> {
    let parts = array(v);
    if uint(parts.first()?)? == 0 {
        return None;
    }
    string(parts.get(1)?)
}

/// One group of an XINFO GROUPS reply.
#[derive(Debug)]
pub(crate) struct GroupInfo {
    pub name: String,
    pub pending: u64,
    pub last_delivered: String,
    /// Undelivered entries; `None` when Redis cannot tell (nil lag, or Redis < 7).
    pub lag: Option<u64>,
}

pub(crate) fn groups(v: &Value) -> Vec<GroupInfo> {
    array(v)
        .iter()
        .filter_map(|group| {
            let mut info = GroupInfo {
                name: String::new(),
                pending: 0,
                last_delivered: "0-0".to_owned(),
                lag: None,
            };
            let mut named = false;
            for (k, v) in pairs(group) {
                match bytes(k) {
                    Some(b"name") => {
                        info.name = string(v)?;
                        named = true;
                    }
                    Some(b"pending") => info.pending = uint(v).unwrap_or(0),
                    Some(b"last-delivered-id") => {
                        info.last_delivered = string(v).unwrap_or_else(|| "0-0".to_owned());
                    }
                    Some(b"lag") => info.lag = uint(v),
                    _ => {}
                }
            }
            named.then_some(info)
        })
        .collect()
}

/// A stream id `ms-seq` as a comparable pair; `None` if it is not one.
pub(crate) fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entries_with_missing_field_and_deleted() {
        let v = Value::Array(vec![
            Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("e"), bulk("{}")])]),
            Value::Array(vec![bulk("2-0"), Value::Array(vec![bulk("x"), bulk("y")])]),
            Value::Array(vec![bulk("3-0"), Value::Nil]),
            Value::Int(7),
        ]);
        let e = entries(&v);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].payload.as_deref(), Some(&b"{}"[..]));
        assert_eq!(e[1].payload.as_deref(), Some(&b""[..]));
        assert!(e[2].payload.is_none());
    }

    #[test]
    fn streams_resp2_and_resp3() {
        let entries_v = Value::Array(vec![Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("e"), bulk("a")]),
        ])]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("k"), entries_v.clone()])]);
        let resp3 = Value::Map(vec![(bulk("k"), entries_v)]);
        for v in [resp2, resp3] {
            let s = streams(&v);
            assert_eq!(s.len(), 1);
            assert_eq!(s[0].0, "k");
            assert_eq!(s[0].1.len(), 1);
        }
        assert!(streams(&Value::Nil).is_empty());
    }

    #[test]
    fn groups_with_nil_lag() {
        let v = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("g"),
            bulk("pending"),
            Value::Int(2),
            bulk("last-delivered-id"),
            bulk("5-1"),
            bulk("lag"),
            Value::Nil,
        ])]);
        let g = groups(&v);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].name, "g");
        assert_eq!(g[0].pending, 2);
        assert_eq!(g[0].last_delivered, "5-1");
        assert_eq!(g[0].lag, None);
    }

    #[test]
    fn ids_compare() {
        assert!(parse_id("2-0") > parse_id("1-9"));
        assert_eq!(parse_id("x"), None);
    }
}
