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
//! The window is kept by time, not by deletes: an id counts as stored only while the time it
//! was seen is within the window ([`IdIndex::contains`]), so it is forgotten the moment the
//! window passes it, and a compaction filter drops it from the disk when fjall next rewrites
//! its table (no pruning scan, no second keyspace in time order, no deletes of ours).
//! Caught-up ids are seen at their `received_at`; one recorded before a crash and again while
//! catching up is forgotten at the earlier of the two (seconds before the window ends, at most
//! the time between receiving and committing it).
//!
//! Keyspaces: `ids` (key → when it was seen, µs) and `meta` (`through`). A key is the source's
//! length (2 bytes), the source and the event id.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fjall::compaction::filter::{self, CompactionFilter, ItemAccessor, Verdict};
use fjall::compaction::Leveled;
use fjall::config::PinningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use rusqlite::{params, Connection};
use sluice_core::warehouse::StoreError;

use super::{sql, sqlite_error};

/// Memtable of `ids` (fjall's count: key, value and ~40 bytes per entry; in memory about
/// twice that): ~4 MiB holds ~40,000 ids. Sealed memtables wait in memory for their flush, at
/// most four before fjall holds writes back, so this also bounds those.
const MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;
/// Block cache (bloom filters and index blocks stay pinned besides). Look-ups mostly miss and
/// stop at the filters; data blocks are read only for an id stored before or a false positive.
const CACHE_BYTES: u64 = 2 * 1024 * 1024;
/// Size of the tables compactions write (fjall's default 64 MiB): a compaction keeps a hash of
/// every key of the table it writes until the table's filter is built — ~17 MiB for 64 MiB of
/// ids, 4 MiB for 16.
const TABLE_BYTES: u64 = 16 * 1024 * 1024;
/// Journals kept before the oldest memtables are flushed.
const MAX_JOURNALING_BYTES: u64 = 64 * 1024 * 1024;
/// Rows recorded per fjall batch when catching up.
const CATCH_UP_CHUNK: usize = 10_000;

const THROUGH: &[u8] = b"through";
/// The keyspace of ids; the compaction filter applies to it alone.
const IDS: &str = "ids";
/// A keyspace of earlier versions (ids by time, for pruning), deleted at open.
const OLD_SEEN: &str = "seen";

pub(crate) struct IdIndex {
    db: Database,
    ids: Keyspace,
    meta: Keyspace,
    /// How long an id counts as stored.
    window: Duration,
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

/// Drops the ids seen before the window when a compaction rewrites them.
struct ForgetExpired {
    window: Duration,
}

impl filter::Factory for ForgetExpired {
    fn name(&self) -> &str {
        "forget-expired-ids"
    }

    fn make_filter(&self, _: &filter::Context) -> Box<dyn CompactionFilter> {
        Box::new(Expired {
            before: super::commit::window_start(self.window),
        })
    }
}

struct Expired {
    before: i64,
}

impl CompactionFilter for Expired {
    fn filter_item(
        &mut self,
        item: ItemAccessor<'_>,
        ctx: &filter::Context,
    ) -> filter::CompactionFilterResult {
        let seen_at = from_sortable(&item.value()?).unwrap_or(i64::MIN);
        Ok(if seen_at >= self.before {
            Verdict::Keep
        } else if ctx.is_last_level {
            // Nothing older lies below to come back: no tombstone needed.
            Verdict::Destroy
        } else {
            Verdict::Remove
        })
    }
}

impl IdIndex {
    /// Open (or create) the index in `dir`; compactions forget the ids seen before `window`.
    pub(crate) fn open(dir: &Path, window: Duration) -> Result<IdIndex, StoreError> {
        let err = |e: fjall::Error| index_error(dir, &e);
        let forget: Arc<dyn filter::Factory> = Arc::new(ForgetExpired { window });
        // One background worker, as the embedded log has (more spin on 2 cores in fjall 3.1).
        let db = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(MAX_JOURNALING_BYTES)
            .worker_threads(1)
            .with_compaction_filter_factories(Arc::new(move |name: &str| {
                (name == IDS).then(|| Arc::clone(&forget))
            }))
            .open()
            .map_err(err)?;
        if db.keyspace_exists(OLD_SEEN) {
            let old = db
                .keyspace(OLD_SEEN, KeyspaceCreateOptions::default)
                .map_err(err)?;
            db.delete_keyspace(old).map_err(err)?;
        }
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(MEMTABLE_BYTES)
                    .compaction_strategy(Arc::new(
                        Leveled::default().with_table_target_size(TABLE_BYTES),
                    ))
                    .filter_block_pinning_policy(PinningPolicy::all(true))
                    .index_block_pinning_policy(PinningPolicy::all(true))
            })
            .map_err(err)
        };
        let (ids, meta) = (ks(IDS)?, ks("meta")?);
        Ok(IdIndex {
            db,
            ids,
            meta,
            window,
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

    /// The start of the dedupe window now, in µs: ids seen before it are forgotten.
    pub(crate) fn window_start(&self) -> i64 {
        super::commit::window_start(self.window)
    }

    /// Whether `key` was stored at or after `since` ([`IdIndex::window_start`], taken once per
    /// batch of look-ups).
    pub(crate) fn contains(&self, key: &[u8], since: i64) -> Result<bool, StoreError> {
        let seen_at = self.ids.get(key).map_err(|e| self.err(&e))?;
        Ok(seen_at
            .and_then(|v| from_sortable(&v))
            .is_some_and(|at| at >= since))
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

    /// Make every record look `by` older (tests of the dedupe window).
    #[cfg(feature = "testing")]
    pub(crate) fn age(&self, by: Duration) -> Result<(), StoreError> {
        let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        let mut batch = self.db.batch();
        for guard in self.ids.iter() {
            let (k, v) = guard.into_inner().map_err(|e| self.err(&e))?;
            if let Some(at) = from_sortable(&v) {
                batch.insert(&self.ids, k, &sortable(at.saturating_sub(by))[..]);
            }
        }
        batch.commit().map_err(|e| self.err(&e))
    }

    fn clear(&self) -> Result<(), StoreError> {
        for ks in [&self.ids, &self.meta] {
            ks.clear().map_err(|e| self.err(&e))?;
        }
        Ok(())
    }
}

/// Bring the index up to date with `events`: record the ids of the rows after `through` that
/// are within the dedupe window (seen at their `received_at`), then `through` = the last rowid,
/// durably. An index ahead of the database is rebuilt. Returns the rows recorded.
pub(crate) fn catch_up(conn: &Connection, index: &IdIndex) -> Result<u64, StoreError> {
    let last: i64 = conn
        .query_row(sql::LAST_EVENT_ROWID, [], |r| r.get(0))
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
    let cutoff = index.window_start();
    let mut stmt = conn
        .prepare(sql::EVENT_IDS_BETWEEN_ROWIDS)
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

    const HOUR: Duration = Duration::from_secs(3600);

    fn now_us() -> i64 {
        super::super::commit::micros(chrono::Utc::now())
    }

    #[test]
    fn ids_count_as_stored_only_within_the_window() {
        let dir = tempfile::tempdir().expect("temp dir");
        let index = IdIndex::open(dir.path(), HOUR).expect("open");
        let now = now_us();
        let (old, young) = (key("s", "old"), key("s", "young"));
        let old_seen = now - 2 * 3_600_000_000;
        index
            .record(
                [(&old[..], old_seen), (&young[..], now)].into_iter(),
                2,
                false,
            )
            .expect("record");
        let since = index.window_start();
        assert!(index.contains(&young, since).expect("look up"));
        assert!(
            !index.contains(&old, since).expect("look up"),
            "seen 2 h ago, window 1 h"
        );
        assert!(
            index.contains(&old, old_seen).expect("look up"),
            "within a longer window"
        );
        assert!(!index
            .contains(&key("s", "never"), i64::MIN)
            .expect("look up"));
    }

    #[test]
    fn compactions_drop_the_ids_past_the_window_and_keep_the_others() {
        let dir = tempfile::tempdir().expect("temp dir");
        let index = IdIndex::open(dir.path(), HOUR).expect("open");
        let now = now_us();
        let keys: Vec<Vec<u8>> = (0..2_000).map(|i| key("s", &format!("id-{i}"))).collect();
        // Even ids were seen two hours ago, odd ones now.
        let seen = |i: usize| {
            if i.is_multiple_of(2) {
                now - 2 * 3_600_000_000
            } else {
                now
            }
        };
        index
            .record(
                keys.iter().enumerate().map(|(i, k)| (&k[..], seen(i))),
                2_000,
                false,
            )
            .expect("record");
        index.ids.rotate_memtable_and_wait().expect("flush");
        assert_eq!(
            index.ids.len().expect("count"),
            2_000,
            "a flush filters nothing"
        );
        index.ids.major_compact().expect("compact");
        assert_eq!(index.ids.len().expect("count"), 1_000);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(
                index.ids.get(k).expect("get").is_some(),
                i % 2 == 1,
                "id {i}"
            );
        }
        assert_eq!(
            index.through().expect("through"),
            2_000,
            "meta is not filtered"
        );
    }

    #[test]
    fn a_time_ordered_keyspace_of_an_earlier_version_is_deleted_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let db = Database::builder(dir.path()).open().expect("open");
            let old = db
                .keyspace(OLD_SEEN, KeyspaceCreateOptions::default)
                .expect("keyspace");
            old.insert(b"x", b"").expect("insert");
        }
        let index = IdIndex::open(dir.path(), HOUR).expect("open");
        assert!(!index.db.keyspace_exists(OLD_SEEN));
        assert!(index.db.keyspace_exists(IDS));
    }
}
