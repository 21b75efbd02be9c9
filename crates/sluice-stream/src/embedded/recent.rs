//! The newest entries of every shard, in memory as the writer appended them: consumers reading
//! near the head — both processors, nearly always — take their payloads from here instead of
//! fjall.
//!
//! Why: a shard's memtable holds well under a second of appends at 50,000 events/s, so a consumer
//! a little behind read its entries from blob files, one `pread` and one block-cache insert per
//! entry, and the warehouse and fraud groups each read every entry that way (~10 % of
//! `sluice serve`'s CPU at 50,000 events/s, more as the consumers fell behind and every read went
//! to the disk). Here an entry is the payload the writer was handed, shared (`Bytes`), for the
//! cost of a reference count.
//!
//! Each shard holds a contiguous run of its newest committed entries, at most its part of the
//! byte budget, and remembers the newest entry it does not hold (`before`): a read whose range
//! starts after that entry finds every entry of its range here, any other read goes to fjall.
//! Entries enter only after the batch that wrote them committed (so they are as durable as the
//! append's acknowledgement) and before the writer publishes the new heads.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

use super::keys::Id;

/// Bytes an entry costs besides its payload (its slot, the payload's shared header and
/// allocation rounding), for the budget.
const ENTRY_OVERHEAD: usize = 64;

struct Shard {
    entries: VecDeque<(Id, Bytes)>,
    bytes: usize,
    /// The newest entry of the shard not held here (evicted, or appended before the process
    /// started); `Id::ZERO` when none.
    before: Id,
}

pub(crate) struct Recent {
    /// Each shard's part of the budget.
    budget: usize,
    shards: Mutex<Vec<Shard>>,
}

impl Recent {
    /// Empty, for shards whose newest entries (all in fjall) are `heads`; `budget` bytes in all.
    pub(crate) fn new(heads: impl IntoIterator<Item = Id>, budget: u64) -> Recent {
        let shards: Vec<Shard> = heads
            .into_iter()
            .map(|before| Shard {
                entries: VecDeque::new(),
                bytes: 0,
                before,
            })
            .collect();
        let budget = usize::try_from(budget).unwrap_or(usize::MAX) / shards.len().max(1);
        Recent {
            budget,
            shards: Mutex::new(shards),
        }
    }

    /// Entries just committed, each shard's in id order; the oldest are let go past the budget.
    pub(crate) fn push(&self, appended: impl IntoIterator<Item = (u32, Id, Bytes)>) {
        let mut shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        for (shard, id, payload) in appended {
            let Some(s) = shards.get_mut(shard as usize) else {
                continue;
            };
            s.bytes += payload.len() + ENTRY_OVERHEAD;
            s.entries.push_back((id, payload));
        }
        for s in shards.iter_mut() {
            while s.bytes > self.budget {
                let Some((id, payload)) = s.entries.pop_front() else {
                    break;
                };
                s.bytes -= payload.len() + ENTRY_OVERHEAD;
                s.before = id;
            }
        }
    }

    /// The entries of `shard` with ids in `from..=last`, at most `count` of them, oldest first —
    /// or `None` when some of that range may not be held here (read it from fjall).
    pub(crate) fn read(
        &self,
        shard: u32,
        from: Id,
        last: Id,
        count: usize,
    ) -> Option<Vec<(Id, Bytes)>> {
        let shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        let s = shards.get(shard as usize)?;
        if from <= s.before {
            return None;
        }
        let start = s.entries.partition_point(|(id, _)| *id < from);
        Some(
            s.entries
                .range(start..)
                .take_while(|(id, _)| *id <= last)
                .take(count)
                .cloned()
                .collect(),
        )
    }

    /// Payload bytes held (with the per-entry overhead), for tests.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        let shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        shards.iter().map(|s| s.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> Id {
        Id { ms, seq: 0 }
    }

    fn payload(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    fn ids(read: Option<Vec<(Id, Bytes)>>) -> Option<Vec<u64>> {
        read.map(|v| v.into_iter().map(|(id, _)| id.ms).collect())
    }

    #[test]
    fn entries_after_the_heads_at_start_are_served_and_older_ones_are_not() {
        let recent = Recent::new([id(10), Id::ZERO], 1 << 20);
        recent.push([
            (0, id(11), payload(5)),
            (0, id(12), payload(5)),
            (1, id(3), payload(5)),
        ]);
        assert_eq!(ids(recent.read(0, id(11), id(12), 10)), Some(vec![11, 12]));
        assert_eq!(ids(recent.read(0, id(12), id(12), 10)), Some(vec![12]));
        // Entry 10 and older are in fjall only.
        assert_eq!(ids(recent.read(0, id(10), id(12), 10)), None);
        assert_eq!(ids(recent.read(0, id(5), id(12), 10)), None);
        assert_eq!(ids(recent.read(1, id(1), id(3), 10)), Some(vec![3]));
        // No shard 2.
        assert_eq!(ids(recent.read(2, id(1), id(3), 10)), None);
    }

    #[test]
    fn reads_stop_at_the_last_id_and_the_count() {
        let recent = Recent::new([Id::ZERO], 1 << 20);
        recent.push((1..=5).map(|ms| (0, id(ms), payload(1))));
        assert_eq!(ids(recent.read(0, id(2), id(4), 10)), Some(vec![2, 3, 4]));
        assert_eq!(ids(recent.read(0, id(2), id(5), 2)), Some(vec![2, 3]));
        // A `from` between two ids starts at the next one; past the newest, nothing.
        assert_eq!(
            ids(recent.read(0, Id { ms: 2, seq: 1 }, id(5), 10)),
            Some(vec![3, 4, 5])
        );
        assert_eq!(ids(recent.read(0, id(6), id(9), 10)), Some(vec![]));
    }

    #[test]
    fn the_oldest_entries_are_let_go_past_the_budget_and_then_read_from_fjall() {
        // Two shards, 2 × 150 bytes: each holds one 100-byte entry with its overhead.
        let recent = Recent::new([Id::ZERO, Id::ZERO], 300);
        recent.push([(0, id(1), payload(50)), (0, id(2), payload(50))]);
        assert_eq!(recent.bytes(), 50 + ENTRY_OVERHEAD);
        assert_eq!(ids(recent.read(0, id(1), id(2), 10)), None);
        assert_eq!(ids(recent.read(0, id(2), id(2), 10)), Some(vec![2]));
        // Entry 1 was let go: a reader that has it (position 1) still reads 2 from here.
        assert_eq!(
            ids(recent.read(0, id(1).successor(), id(2), 10)),
            Some(vec![2])
        );
        // An entry larger than the budget is not held at all.
        recent.push([(1, id(7), payload(500))]);
        assert_eq!(ids(recent.read(1, id(7), id(7), 10)), None);
        assert_eq!(ids(recent.read(1, id(8), id(9), 10)), Some(vec![]));
    }

    #[test]
    fn a_zero_budget_holds_nothing() {
        let recent = Recent::new([Id::ZERO], 0);
        recent.push([(0, id(1), payload(1))]);
        assert_eq!(recent.bytes(), 0);
        assert_eq!(ids(recent.read(0, id(1), id(1), 10)), None);
    }
}
