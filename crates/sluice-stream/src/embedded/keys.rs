//! The byte layout of every key and value the embedded log stores in fjall (documented in
//! `docs/log-format.md`, section "Embedded log"). Integers are big-endian so that fjall's
//! lexicographic key order is numeric order, and a range scan over a shard's keys walks its
//! entries by id.
//!
//! Nothing here does IO: it encodes and decodes, and a value that does not decode is reported as
//! corruption by the caller instead of panicking.

use std::fmt;

/// An entry id: `{ms}-{seq}`, the same shape and order as a Redis stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Id {
    pub ms: u64,
    pub seq: u64,
}

impl Id {
    pub const ZERO: Id = Id { ms: 0, seq: 0 };
    pub const MAX: Id = Id {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// The id after `self` for an append at wall-clock time `now_ms` (Redis's rule: the clock
    /// if it moved forward, else the same millisecond with the next sequence number).
    pub fn next(self, now_ms: u64) -> Id {
        if now_ms > self.ms {
            Id { ms: now_ms, seq: 0 }
        } else if self.seq == u64::MAX {
            Id {
                ms: self.ms.saturating_add(1),
                seq: 0,
            }
        } else {
            Id {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }

    /// The smallest id greater than `self`.
    pub fn successor(self) -> Id {
        self.next(0)
    }

    pub fn parse(s: &str) -> Option<Id> {
        let (ms, seq) = s.split_once('-')?;
        Some(Id {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.ms.to_be_bytes());
        out[8..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Id> {
        Some(Id {
            ms: u64_at(b, 0)?,
            seq: u64_at(b, 8)?,
        })
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// `events` keyspace: `shard u32 BE ‖ ms u64 BE ‖ seq u64 BE` → payload bytes.
pub(crate) fn event_key(shard: u32, id: Id) -> [u8; 20] {
    let mut out = [0; 20];
    out[..4].copy_from_slice(&shard.to_be_bytes());
    out[4..].copy_from_slice(&id.to_bytes());
    out
}

pub(crate) fn parse_event_key(k: &[u8]) -> Option<(u32, Id)> {
    if k.len() != 20 {
        return None;
    }
    Some((u32_at(k, 0)?, Id::from_bytes(&k[4..])?))
}

/// A group's key prefix: `len u16 BE ‖ utf8 name`. The length prefix keeps one group's keys
/// apart from another's whose name merely starts with the same bytes.
pub(crate) fn group_prefix(group: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + group.len());
    // Names are validated to be at most u16::MAX bytes.
    out.extend_from_slice(&(group.len() as u16).to_be_bytes());
    out.extend_from_slice(group.as_bytes());
    out
}

pub(crate) fn parse_group_prefix(k: &[u8]) -> Option<(String, &[u8])> {
    let len = usize::from(u16::from_be_bytes(k.get(..2)?.try_into().ok()?));
    let name = std::str::from_utf8(k.get(2..2 + len)?).ok()?;
    Some((name.to_owned(), &k[2 + len..]))
}

/// One shard's position of a group: the last delivered id and how many entries of the shard (ever
/// appended, trimmed ones included) have been delivered up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Position {
    pub last: Id,
    pub delivered: u64,
}

/// `groups` keyspace: `group prefix` → for each shard `last-delivered id (16) ‖ delivered u64`.
pub(crate) fn encode_positions(positions: &[Position]) -> Vec<u8> {
    let mut out = Vec::with_capacity(positions.len() * 24);
    for p in positions {
        out.extend_from_slice(&p.last.to_bytes());
        out.extend_from_slice(&p.delivered.to_be_bytes());
    }
    out
}

pub(crate) fn decode_positions(v: &[u8]) -> Option<Vec<Position>> {
    if !v.len().is_multiple_of(24) {
        return None;
    }
    v.chunks_exact(24)
        .map(|c| {
            Some(Position {
                last: Id::from_bytes(c)?,
                delivered: u64_at(c, 16)?,
            })
        })
        .collect()
}

/// `pending` keyspace: `group prefix ‖ shard u32 BE ‖ id (16)` → `deliveries u64 ‖ delivered-at
/// unix ms u64 ‖ utf8 consumer`.
pub(crate) fn pending_key(group: &str, shard: u32, id: Id) -> Vec<u8> {
    let mut out = group_prefix(group);
    out.extend_from_slice(&shard.to_be_bytes());
    out.extend_from_slice(&id.to_bytes());
    out
}

pub(crate) fn parse_pending_key(k: &[u8]) -> Option<(String, u32, Id)> {
    let (group, rest) = parse_group_prefix(k)?;
    if rest.len() != 20 {
        return None;
    }
    Some((group, u32_at(rest, 0)?, Id::from_bytes(&rest[4..])?))
}

pub(crate) fn encode_pending(deliveries: u64, at_ms: u64, consumer: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + consumer.len());
    out.extend_from_slice(&deliveries.to_be_bytes());
    out.extend_from_slice(&at_ms.to_be_bytes());
    out.extend_from_slice(consumer.as_bytes());
    out
}

pub(crate) fn decode_pending(v: &[u8]) -> Option<(u64, u64, String)> {
    Some((
        u64_at(v, 0)?,
        u64_at(v, 8)?,
        std::str::from_utf8(v.get(16..)?).ok()?.to_owned(),
    ))
}

/// `meta` keyspace keys.
pub(crate) const META_FORMAT: &[u8] = b"format";
pub(crate) const META_SHARDS: &[u8] = b"shards";
/// The on-disk layout version written at creation; bumped on incompatible changes. 2: one
/// keyspace of entries per shard ([`events_keyspace`]); 1 had a single `events` keyspace.
pub(crate) const FORMAT_VERSION: u32 = 2;

/// The keyspace holding one shard's entries (keys [`event_key`]).
pub(crate) fn events_keyspace(shard: u32) -> String {
    format!("events-{shard}")
}

/// `head/{shard}` (written by the append path): `last id (16) ‖ appended u64` — the newest id
/// and how many entries were ever appended to the shard.
pub(crate) fn head_key(shard: u32) -> Vec<u8> {
    let mut out = b"head/".to_vec();
    out.extend_from_slice(&shard.to_be_bytes());
    out
}

/// `tail/{shard}` (written by trim): `trimmed-below id (16) ‖ trimmed u64` — every entry below
/// that id is gone, and how many entries trims removed in total.
/// `meta` key of a group's committed floor (see `Store::confirm`).
pub(crate) fn floor_key(group: &str) -> Vec<u8> {
    let mut out = b"floor/".to_vec();
    out.extend_from_slice(&group_prefix(group));
    out
}

pub(crate) fn encode_ids(ids: &[Id]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_bytes()).collect()
}

pub(crate) fn decode_ids(v: &[u8]) -> Option<Vec<Id>> {
    if !v.len().is_multiple_of(16) {
        return None;
    }
    v.chunks_exact(16).map(Id::from_bytes).collect()
}

pub(crate) fn tail_key(shard: u32) -> Vec<u8> {
    let mut out = b"tail/".to_vec();
    out.extend_from_slice(&shard.to_be_bytes());
    out
}

pub(crate) fn encode_id_count(id: Id, n: u64) -> [u8; 24] {
    let mut out = [0; 24];
    out[..16].copy_from_slice(&id.to_bytes());
    out[16..].copy_from_slice(&n.to_be_bytes());
    out
}

pub(crate) fn decode_id_count(v: &[u8]) -> Option<(Id, u64)> {
    (v.len() == 24).then_some(())?;
    Some((Id::from_bytes(v)?, u64_at(v, 16)?))
}

pub(crate) fn u32_value(v: &[u8]) -> Option<u32> {
    (v.len() == 4).then_some(())?;
    u32_at(v, 0)
}

/// `dead` keyspace: `sequence u64 BE` → `len-prefixed group ‖ shard u32 ‖ len-prefixed id ‖
/// len-prefixed reason ‖ payload (rest)`, every length a u32 BE.
pub(crate) fn encode_dead(
    group: &str,
    shard: u32,
    id: &str,
    reason: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + group.len() + id.len() + reason.len() + payload.len());
    for (i, field) in [group.as_bytes(), id.as_bytes(), reason.as_bytes()]
        .into_iter()
        .enumerate()
    {
        out.extend_from_slice(&(u32::try_from(field.len()).unwrap_or(u32::MAX)).to_be_bytes());
        out.extend_from_slice(field);
        if i == 0 {
            out.extend_from_slice(&shard.to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

pub(crate) struct DeadFields<'a> {
    pub group: &'a str,
    pub shard: u32,
    pub id: &'a str,
    pub reason: &'a str,
    pub payload: &'a [u8],
}

pub(crate) fn decode_dead(v: &[u8]) -> Option<DeadFields<'_>> {
    let mut at = 0;
    let field = |at: &mut usize| -> Option<&str> {
        let len = usize::try_from(u32_at(v, *at)?).ok()?;
        let s = std::str::from_utf8(v.get(*at + 4..*at + 4 + len)?).ok()?;
        *at += 4 + len;
        Some(s)
    };
    let group = field(&mut at)?;
    let shard = u32_at(v, at)?;
    at += 4;
    let id = field(&mut at)?;
    let reason = field(&mut at)?;
    Some(DeadFields {
        group,
        shard,
        id,
        reason,
        payload: &v[at..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_like_their_keys() {
        let ids = [
            Id { ms: 1, seq: 9 },
            Id { ms: 2, seq: 0 },
            Id { ms: 2, seq: 1 },
            Id { ms: 256, seq: 0 },
        ];
        for w in ids.windows(2) {
            assert!(w[0] < w[1]);
            assert!(event_key(3, w[0]) < event_key(3, w[1]));
            assert!(event_key(2, w[1]) < event_key(3, w[0]));
        }
        assert_eq!(Id::parse("256-0"), Some(ids[3]));
        assert_eq!(ids[3].to_string(), "256-0");
        assert_eq!(parse_event_key(&event_key(7, ids[2])), Some((7, ids[2])));
    }

    #[test]
    fn next_id_is_monotonic() {
        let a = Id { ms: 100, seq: 4 };
        assert_eq!(a.next(99), Id { ms: 100, seq: 5 });
        assert_eq!(a.next(100), Id { ms: 100, seq: 5 });
        assert_eq!(a.next(101), Id { ms: 101, seq: 0 });
        assert_eq!(a.successor(), Id { ms: 100, seq: 5 });
    }

    #[test]
    fn round_trips() {
        let k = pending_key("warehouse", 5, Id { ms: 7, seq: 1 });
        assert_eq!(
            parse_pending_key(&k),
            Some(("warehouse".to_owned(), 5, Id { ms: 7, seq: 1 }))
        );
        let v = encode_pending(3, 12345, "host-1");
        assert_eq!(decode_pending(&v), Some((3, 12345, "host-1".to_owned())));
        let ps = vec![
            Position {
                last: Id { ms: 1, seq: 2 },
                delivered: 3,
            },
            Position::default(),
        ];
        assert_eq!(decode_positions(&encode_positions(&ps)), Some(ps));
        let d = encode_dead("g", 4, "1-2", "bad json", b"\xff\x00x");
        let f = decode_dead(&d).expect("decodes");
        assert_eq!(
            (f.group, f.shard, f.id, f.reason, f.payload),
            ("g", 4, "1-2", "bad json", &b"\xff\x00x"[..])
        );
        assert_eq!(
            decode_id_count(&encode_id_count(Id { ms: 9, seq: 8 }, 7)),
            Some((Id { ms: 9, seq: 8 }, 7))
        );
    }
}
