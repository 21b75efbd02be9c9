//! The embedded warehouse's dedupe index: which `(source, event_id)` were stored within the
//! dedupe window, in an LSM tree (fjall) in the data directory beside the SQLite file.
//!
//! Why not a SQLite table: SDKs send random UUID `messageId`s, so each new id landed on a random
//! leaf page of a B-tree keyed by the id, and once that tree outgrew the page cache every commit
//! wrote back about one 16 KiB page per event (`commit_throughput` with random ids fell from
//! ~50,000 to ~20,000 events/s by a million events, and kept falling). An LSM tree takes
//! inserts in memory and writes them out sorted, and its bloom filters answer "not stored" — the
//! answer for nearly every new event — without reading the disk. Segment's exactly-once
//! pipeline keeps its `messageId`s in RocksDB for the same reason.
//!
//! The index is derived data; SQLite's `events` stay the source of truth:
//! - ids are recorded only after the SQLite transaction that stored their events committed, in
//!   one atomic fjall batch together with `through`, the largest events rowid they cover — so
//!   the index never holds an id whose event is not stored;
//! - that batch is not forced to disk; a crash may lose the last ones, and opening catches up
//!   from `events` after `through` ([`catch_up`]); a failed write marks the index stale and the
//!   next commit catches up first;
//! - retention lowers `through` (durably) before deleting the newest rows, since SQLite hands
//!   their rowids out again;
//! - an index ahead of the database (`through` past the last rowid: commits lost with
//!   `synchronous = NORMAL`, a replaced database file) is rebuilt from `events`.
//!
//! Caught-up ids are seen at their `received_at`; one recorded before a crash and again while
//! catching up is forgotten at the earlier of the two (seconds before the window ends, at most
//! the time between receiving and committing it).
//!
//! Keyspaces: `ids` (key → when it was seen, µs), `seen` (seen-at ‖ key → nothing, for pruning
//! in time order) and `meta` (`through`). A key is the source's length (2 bytes), the source and
//! the event id.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fjall::config::PinningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use rusqlite::{params, Connection};
use sluice_core::warehouse::StoreError;

use super::sqlite_error;

/// Memtable per keyspace: ids are ~60 bytes, so 8 MiB holds ~100,000 of them.
const MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;
/// Block cache (bloom filters and index blocks stay pinned besides).
const CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// Journals kept before the oldest memtables are flushed.
const MAX_JOURNALING_BYTES: u64 = 64 * 1024 * 1024;
/// Rows recorded per fjall batch when catching up.
const CATCH_UP_CHUNK: usize = 10_000;

const THROUGH: &[u8] = b"through";

pub(crate) struct IdIndex {
    db: Database,
    ids: Keyspace,
    seen: Keyspace,
    meta: Keyspace,
    dir: PathBuf,
    /// A write failed after its SQLite commit: the index may lack ids until [`catch_up`] runs.
    stale: AtomicBool,
}

/// The index key of one event.
pub(crate) fn key(source: &str, event_id: &str) -> Vec<u8> {
    let len = u16::try_from(source.len()).unwrap_or(u16::MAX);
    let source = &source.as_bytes()[..usize::from(len)];
    let mut k = Vec::with_capacity(2 + source.len() + event_id.len());
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(source);
    k.extend_from_slice(event_id.as_bytes());
    k
}

/// A number (a time in µs, a rowid) as bytes that sort like the numbers (sign bit flipped).
fn sortable(us: i64) -> [u8; 8] {
    ((us as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_sortable(b: &[u8]) -> Option<i64> {
    let b: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

fn seen_key(seen_at: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&sortable(seen_at));
    k.extend_from_slice(key);
    k
}

impl IdIndex {
    /// Open (or create) the index in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<IdIndex, StoreError> {
        let err = |e: fjall::Error| index_error(dir, &e);
        // One background worker, as the embedded log has (more spin on 2 cores in fjall 3.1).
        let db = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(MAX_JOURNALING_BYTES)
            .worker_threads(1)
            .open()
            .map_err(err)?;
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(MEMTABLE_BYTES)
                    .filter_block_pinning_policy(PinningPolicy::all(true))
                    .index_block_pinning_policy(PinningPolicy::all(true))
            })
            .map_err(err)
        };
        let (ids, seen, meta) = (ks("ids")?, ks("seen")?, ks("meta")?);
        Ok(IdIndex {
            db,
            ids,
            seen,
            meta,
            dir: dir.to_path_buf(),
            stale: AtomicBool::new(false),
        })
    }

    /// Whether a write failed since the last [`catch_up`].
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    fn err(&self, e: &fjall::Error) -> StoreError {
        index_error(&self.dir, e)
    }

    pub(crate) fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        self.ids.contains_key(key).map_err(|e| self.err(&e))
    }

    /// The largest events rowid whose event ids are all recorded (0: none).
    pub(crate) fn through(&self) -> Result<i64, StoreError> {
        Ok(self
            .meta
            .get(THROUGH)
            .map_err(|e| self.err(&e))?
            .and_then(|v| from_sortable(&v))
            .unwrap_or(0))
    }

    /// Record `keys`, each with when it was seen, and that rowids up to `through` are covered:
    /// one atomic batch, handed to the journal, and forced to disk only when `durable`.
    pub(crate) fn record<'a>(
        &self,
        keys: impl Iterator<Item = (&'a [u8], i64)>,
        through: i64,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut batch = self
            .db
            .batch()
            .durability(durable.then_some(PersistMode::SyncAll));
        for (k, seen_at) in keys {
            batch.insert(&self.ids, k, &sortable(seen_at)[..]);
            batch.insert(&self.seen, seen_key(seen_at, k), &[][..]);
        }
        batch.insert(&self.meta, THROUGH, &sortable(through)[..]);
        batch.commit().map_err(|e| self.err(&e))
    }

    /// Lower `through` to `rowid` (if above it), durably: before retention deletes the newest
    /// rows, whose rowids SQLite will hand out again.
    pub(crate) fn lower_through(&self, rowid: i64) -> Result<(), StoreError> {
        if self.through()? > rowid {
            self.record(std::iter::empty(), rowid, true)?;
        }
        Ok(())
    }

    /// Forget up to `limit` ids seen before `cutoff` (µs); returns how many.
    pub(crate) fn prune(&self, cutoff: i64, limit: usize) -> Result<usize, StoreError> {
        let mut batch = self.db.batch();
        let mut n = 0;
        for guard in self.seen.range(..sortable(cutoff).to_vec()).take(limit) {
            let k = guard.key().map_err(|e| self.err(&e))?;
            batch.remove(&self.ids, k.get(8..).unwrap_or_default());
            batch.remove(&self.seen, k);
            n += 1;
        }
        batch.commit().map_err(|e| self.err(&e))?;
        Ok(n)
    }

    /// Make every record look `by` older (tests of the dedupe window).
    #[cfg(feature = "testing")]
    pub(crate) fn age(&self, by: Duration) -> Result<(), StoreError> {
        let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        let mut batch = self.db.batch();
        for guard in self.seen.iter() {
            let k = guard.key().map_err(|e| self.err(&e))?;
            let (Some(at), Some(id)) = (from_sortable(&k), k.get(8..)) else {
                continue;
            };
            let older = at.saturating_sub(by);
            batch.remove(&self.seen, k.clone());
            batch.insert(&self.seen, seen_key(older, id), &[][..]);
            batch.insert(&self.ids, id, &sortable(older)[..]);
        }
        batch.commit().map_err(|e| self.err(&e))
    }

    fn clear(&self) -> Result<(), StoreError> {
        for ks in [&self.ids, &self.seen, &self.meta] {
            ks.clear().map_err(|e| self.err(&e))?;
        }
        Ok(())
    }
}

/// Bring the index up to date with `events`: record the ids of the rows after `through` that
/// are within the dedupe window (seen at their `received_at`), then `through` = the last rowid,
/// durably. An index ahead of the database is rebuilt. Returns the rows recorded.
pub(crate) fn catch_up(
    conn: &Connection,
    index: &IdIndex,
    window: Duration,
) -> Result<u64, StoreError> {
    let last: i64 = conn
        .query_row("SELECT coalesce(max(rowid), 0) FROM events", [], |r| {
            r.get(0)
        })
        .map_err(sqlite_error)?;
    let mut through = index.through()?;
    if through > last {
        tracing::warn!(
            index = through,
            events = last,
            "the dedupe index is ahead of the warehouse (commits lost?); rebuilding it"
        );
        index.clear()?;
        through = 0;
    }
    if through == last {
        index.stale.store(false, Ordering::Release);
        return Ok(0);
    }
    let cutoff = super::commit::window_start(window);
    let mut stmt = conn
        .prepare(
            "SELECT source, event_id, received_at FROM events
             WHERE rowid > ?1 AND rowid <= ?2 AND received_at >= ?3",
        )
        .map_err(sqlite_error)?;
    let mut rows = stmt
        .query(params![through, last, cutoff])
        .map_err(sqlite_error)?;
    let mut chunk: Vec<(Vec<u8>, i64)> = Vec::with_capacity(CATCH_UP_CHUNK);
    let mut recorded = 0u64;
    let flush = |chunk: &mut Vec<(Vec<u8>, i64)>| -> Result<(), StoreError> {
        // `through` moves only at the end: until then a crash starts over from the same place.
        index.record(
            chunk.iter().map(|(k, at)| (k.as_slice(), *at)),
            through,
            false,
        )?;
        chunk.clear();
        Ok(())
    };
    while let Some(r) = rows.next().map_err(sqlite_error)? {
        let source: String = r.get(0).map_err(sqlite_error)?;
        let event_id: String = r.get(1).map_err(sqlite_error)?;
        chunk.push((key(&source, &event_id), r.get(2).map_err(sqlite_error)?));
        recorded += 1;
        if chunk.len() == CATCH_UP_CHUNK {
            flush(&mut chunk)?;
        }
    }
    flush(&mut chunk)?;
    index.record(std::iter::empty(), last, true)?;
    index.stale.store(false, Ordering::Release);
    if recorded > 0 {
        tracing::info!(
            events = recorded,
            through = last,
            "dedupe index caught up with the warehouse"
        );
    }
    Ok(recorded)
}

fn index_error(dir: &Path, e: &fjall::Error) -> StoreError {
    let shown = dir.display();
    if matches!(e, fjall::Error::Locked) {
        return StoreError::Other(format!(
            "the warehouse's dedupe index {shown} is in use by another sluice process"
        ));
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            let msg = format!("the warehouse's dedupe index {shown}: {io}");
            return match io.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    StoreError::Unavailable(format!("{msg} (the disk is full)"))
                }
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    StoreError::Other(format!("{msg} (the data directory is not writable)"))
                }
                _ => StoreError::Unavailable(msg),
            };
        }
        cause = c.source();
    }
    StoreError::Other(format!("the warehouse's dedupe index {shown}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_sort_as_bytes_like_numbers() {
        let times = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000_000, i64::MAX];
        for w in times.windows(2) {
            assert!(sortable(w[0]) < sortable(w[1]), "{} < {}", w[0], w[1]);
        }
        for t in times {
            assert_eq!(from_sortable(&sortable(t)), Some(t));
        }
    }

    #[test]
    fn keys_keep_source_and_id_apart() {
        assert_ne!(key("ab", "c"), key("a", "bc"));
        assert_eq!(key("s", "id"), b"\x00\x01sid".to_vec());
    }
}
