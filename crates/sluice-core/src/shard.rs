//! Sharding: which stream (Redis) or partition (Kafka) an event goes to.
//!
//! `shard = fnv1a_64(source ++ 0x00 ++ user_key) mod shards`, where `user_key` is `user_id`, else
//! `anonymous_id`, else `event_id`. FNV-1a is fixed and documented (docs/log-format.md) so producers
//! in other languages can route the same way, and so one user's events always stay in one ordered
//! shard.

use crate::Event;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub fn fnv1a_64(parts: &[&[u8]]) -> u64 {
    let mut hash = FNV_OFFSET;
    for (i, part) in parts.iter().enumerate() {
        // A 0x00 byte between parts, so ("ab","c") and ("a","bc") differ.
        let sep: &[u8] = if i > 0 { &[0] } else { &[] };
        for b in sep.iter().chain(part.iter()) {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(FNV_PRIME);
        }
    }
    hash
}

/// The shard of a (source, user key) pair among `shards` shards (`shards` ≥ 1).
pub fn shard_for(source: &str, user_key: &str, shards: u32) -> u32 {
    let shards = u64::from(shards.max(1));
    (fnv1a_64(&[source.as_bytes(), user_key.as_bytes()]) % shards) as u32
}

/// The shard of an event.
pub fn shard_of(event: &Event, shards: u32) -> u32 {
    let key = event.user_key().unwrap_or(&event.event_id);
    shard_for(&event.source, key, shards)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv_known_vector() {
        // Reference value of FNV-1a 64 for "a".
        assert_eq!(fnv1a_64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn separator_distinguishes_concatenations() {
        assert_ne!(shard_for("ab", "c", 1 << 30), shard_for("a", "bc", 1 << 30));
    }

    proptest! {
        #[test]
        fn shard_in_range_and_stable(source in ".{0,20}", user in ".{0,40}", shards in 1u32..256) {
            let s = shard_for(&source, &user, shards);
            prop_assert!(s < shards);
            prop_assert_eq!(s, shard_for(&source, &user, shards));
        }
    }
}
