//! The embedded warehouse's indexes by id, in an LSM tree (fjall) in the data directory beside
//! the SQLite file: the dedupe index (which `(source, event_id)` were stored within the dedupe
//! window) and the user index (the rowids of each user's events, by time).
//!
//! Why not a SQLite table: SDKs send random UUID `messageId`s, so each new id landed on a random
//! leaf page of a B-tree keyed by the id, and once that tree outgrew the page cache every commit
//! wrote back about one 16 KiB page per event (`commit_throughput` with random ids fell from
//! ~50,000 to ~20,000 events/s by a million events, and kept falling). An LSM tree takes
//! inserts in memory and writes them out sorted, and its bloom filters answer "not stored" — the
//! answer for nearly every new event — without reading the disk. Segment's exactly-once
//! pipeline keeps its `messageId`s in RocksDB for the same reason.
//!
//! The user index left SQLite for the same reason: a B-tree keyed by user takes each new event
//! at its user's place, so with thousands of users every commit (or every bulk pass, as
//! migration 6 had it) rewrote pages all over it, and the cost per event grew with the table
//! (`commit_throughput` with random ids: 94,000–103,000 events/s over the first 2M events,
//! 54,000 over 9M; 96,000 over 9M with the user index's passes left out).
//!
//! Both are derived data; SQLite's `events` stay the source of truth:
//! - entries are recorded only after the SQLite transaction that stored their events committed,
//!   in one atomic fjall batch together with `through`, the largest events rowid they cover —
//!   so the index never holds an id whose event is not stored, and a user query reads the index
//!   up to `through` and scans `events` after it;
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
//! The user index is kept exact by retention: it deletes the entries of the events it deletes,
//! after their SQLite transaction committed. An entry whose event is gone (that delete failed,
//! or a crash came in between) is skipped by the query, which checks every event it reads
//! against the entry.
//!
//! Keyspaces: `ids` ([`key`], a 16-byte hash of source and event id → when it was seen, µs),
//! `users` ([`user_entry`], 20 bytes → nothing) and `meta` (`through`, the key layout). A data
//! directory with another layout (an older version's) is emptied at open and indexed again from
//! `events`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fjall::compaction::filter::{self, CompactionFilter, ItemAccessor, Verdict};
use fjall::compaction::Leveled;
use fjall::config::{
    CompressionPolicy, FilterPolicy, FilterPolicyEntry, PartitioningPolicy, PinningPolicy,
};
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use rusqlite::{params, Connection};
use sluice_core::warehouse::StoreError;

use super::{sql, sqlite_error};

/// Memtable of `ids` (fjall's count: key, value and ~40 bytes per entry; in memory about
/// twice that): 4 MiB holds ~40,000 ids. Two fjall workers: one rotates and flushes memtables
/// while the other merges (`vendor/fjall/PATCHES.md`). With one, a memtable could neither be
/// sealed nor flushed during a merge into level 1, and at 50,000 events/s the index's memtables
/// held up to 34 MB of the heap at the end of a merge (heap profile, docs/benchmarks.md).
/// Flushed at once, memtables of 2 MiB made twice as many level-0 tables to merge (+3 µs of CPU
/// per event in `sluice serve`); 4 MiB ones cost no more CPU than one worker did
/// (docs/benchmarks.md, session 23).
const MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;
/// Block cache, shared by the index's keyspaces: the filter partitions and block indexes of
/// levels 2 and deeper (see `PINNED_LEVELS`), and data blocks, read only for an id stored
/// before or a false positive.
const CACHE_BYTES: u64 = 2 * 1024 * 1024;
/// Levels whose bloom filters and block indexes stay pinned in memory: level 0 and level 1.
/// The deeper levels, which hold nearly every id, keep their filters on disk in partitions: a
/// look-up reads the one partition it needs through the block cache (mostly from the OS's page
/// cache), and a block index only when the filter lets the id through (an id stored before, or
/// a false positive).
///
/// Pinned, they took ~1.2 bytes per id of the dedupe window (the filters ~10 bits), so the
/// process grew by ~225 MB an hour at 50,000 events/s for as long as the window (7 days by
/// default) kept them: in `sluice serve` at 50,000 events/s, RSS peaked at 226 MB in ten
/// minutes. Unpinned from level 2 on: 195 MB (206 with only the filters unpinned), at 20 µs of
/// CPU per event against 19 (docs/benchmarks.md, session 25; session 23 measured ~1.5 µs more
/// per event on a slower machine). Fixed when a keyspace is created (fjall stores it with the
/// keyspace's options): an older data directory keeps everything pinned.
const PINNED_LEVELS: [bool; 3] = [true, true, false];
/// Size of the tables compactions write (fjall's default 64 MiB). Level 1 holds
/// `TABLE_BYTES × L0_TABLES` (32 MiB), and since the keys are hashes, a merge from level 0
/// rewrites all of it, while flushes wait: with 8 MiB tables (a 128 MiB level 1) merges grew to
/// ~3 s by 90 s at 50,000 events/s and sealed memtables piled up behind them (the index's
/// memtables were up to 39 MB of the heap at the peaks). With 2 MiB, merges from level 1 on
/// down take one table and the ~10 it overlaps below, and no job took over 1.5 s: RSS peak
/// 221 MB against 236–262 MB, the same CPU per event (docs/benchmarks.md, session 22). A
/// compaction also keeps a hash of every key of the table it writes until the table's filter is
/// built (~17 MiB for 64 MiB of ids). Fixed when a keyspace is created.
const TABLE_BYTES: u64 = 2 * 1024 * 1024;
/// Tables flushed to level 0 before they are merged into level 1 (fjall's default 4). The keys
/// are hashes, so every merge rewrites nearly all of level 1: merging many tables at once
/// divides that work (the index's compactions took 0.3 of a core at 50,000 events/s with 4).
/// 16 tables of 2 MiB memtables are as much per merge as 8 of 4 MiB (`commit_throughput`, random
/// ids, 3M events: the same CPU within the runs' spread). Look-ups try each level-0 table's
/// filter, pinned in memory. fjall stalls writes at 20.
const L0_TABLES: u8 = 16;
/// Memtable of `users` (two entries per event with both a user and an anonymous id, 20 bytes
/// each); the same size as `MEMTABLE_BYTES`, for the same reasons.
const USERS_MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;
/// Journals kept before the oldest memtables are flushed.
const MAX_JOURNALING_BYTES: u64 = 64 * 1024 * 1024;
/// Rows recorded per fjall batch when catching up.
const CATCH_UP_CHUNK: usize = 10_000;

const THROUGH: &[u8] = b"through";
/// The layout of the keys, in `meta`: 3 since user entries are 20 bytes (2: 24 bytes; absent:
/// ids by their text, no user index). An index in another layout is rebuilt from `events` at
/// open.
const FORMAT: &[u8] = b"format";
const CURRENT_FORMAT: u32 = 3;
/// The keyspace of ids; the compaction filter applies to it alone.
const IDS: &str = "ids";
/// The keyspace of the user index.
const USERS: &str = "users";
/// A keyspace of earlier versions (ids by time, for pruning), deleted at open.
const OLD_SEEN: &str = "seen";

/// The options `ids` and `users` share (fixed when a keyspace is created): the compaction
/// strategy, and data blocks left uncompressed at every level. fjall compresses them with LZ4
/// from level 2 on, but hashed keys barely compress (the tables came out ~11 % smaller) and
/// every compaction into those levels decompressed and compressed them again: LZ4 was 0.4 % of
/// the index's CPU over its first 4M events, and more as the deeper levels fill (a profile of
/// the index driven alone, docs/benchmarks.md, session 24).
fn index_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .compaction_strategy(Arc::new(
            Leveled::default()
                .with_table_target_size(TABLE_BYTES)
                .with_l0_threshold(L0_TABLES),
        ))
        .data_block_compression_policy(CompressionPolicy::all(CompressionType::None))
}

pub(crate) struct IdIndex {
    db: Database,
    ids: Keyspace,
    users: Keyspace,
    meta: Keyspace,
    /// How long an id counts as stored.
    window: Duration,
    dir: PathBuf,
    /// A write failed after its SQLite commit: the index may lack ids until [`catch_up`] runs.
    stale: AtomicBool,
}

/// The dedupe index's key of one event: a 128-bit hash (XXH3) of the source (with its length in
/// front) and the event id. The ids themselves (36 characters for a UUID) made the keys, and so
/// what every compaction rewrites, twice as large; two ids of a source share a key with odds of
/// about 10⁻¹⁹ even among 10¹⁰ ids, and anyone able to aim a collision at an event could send
/// its id outright, with the same effect.
pub(crate) type IdKey = [u8; 16];

pub(crate) fn key(source: &str, event_id: &str) -> IdKey {
    let mut k = Vec::with_capacity(2 + source.len() + event_id.len());
    push_part(&mut k, source);
    k.extend_from_slice(event_id.as_bytes());
    xxhash_rust::xxh3::xxh3_128(&k).to_be_bytes()
}

/// Appends `part` with its length (2 bytes) in front: parts of a key never run into each other.
/// A part longer than 65,535 bytes is cut there.
fn push_part(k: &mut Vec<u8>, part: &str) {
    let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(&part.as_bytes()[..usize::from(len)]);
}

/// A user-index entry: [`user_prefix`] (6 bytes), the event's time (µs, 8) and its rowid (6).
/// 20 bytes: fjall keeps keys up to 20 bytes inline, so the memtable and compactions compare
/// and copy them without a heap allocation each. Against 24-byte entries, with the index driven
/// alone (the `index_cost` example) over 16M events: 11 MB less memory, the CPU the same within
/// the runs' spread (docs/benchmarks.md, session 24). Rowids past 2⁴⁸ (2.8 × 10¹⁴: 178 years at
/// 50,000 events/s) wrap: their entries name another row, which the query's check rejects.
pub(crate) type UserEntry = [u8; USER_ENTRY_BYTES];
const USER_ENTRY_BYTES: usize = 20;
const USER_PREFIX_BYTES: usize = 6;
const ROWID_BYTES: usize = 6;

/// The start of every user-index entry of one user: a hash (XXH3, the first 48 bits) of the
/// source, whether the id is an `anonymous_id`, and the id. Fixed and short, where the names
/// are long and share prefixes: memtable inserts compare less and compactions move less. Two
/// users with the same hash share entries; the query checks every event it reads against the
/// user asked.
pub(crate) fn user_prefix(source: &str, anonymous: bool, user: &str) -> [u8; USER_PREFIX_BYTES] {
    let mut k = Vec::with_capacity(5 + source.len() + user.len());
    push_part(&mut k, source);
    k.push(u8::from(anonymous));
    push_part(&mut k, user);
    let hash = xxhash_rust::xxh3::xxh3_64(&k).to_be_bytes();
    let mut prefix = [0u8; USER_PREFIX_BYTES];
    prefix.copy_from_slice(&hash[..USER_PREFIX_BYTES]);
    prefix
}

/// One event's entry in the user index: a user's entries sort by time, then rowid.
pub(crate) fn user_entry(
    source: &str,
    anonymous: bool,
    user: &str,
    ts: i64,
    rowid: i64,
) -> UserEntry {
    const TS: usize = USER_PREFIX_BYTES;
    let mut k = [0u8; USER_ENTRY_BYTES];
    k[..TS].copy_from_slice(&user_prefix(source, anonymous, user));
    k[TS..TS + 8].copy_from_slice(&sortable(ts));
    // SQLite's rowids start at 1: the low 48 bits sort like the rowid below 2⁴⁸.
    k[TS + 8..].copy_from_slice(&(rowid as u64).to_be_bytes()[8 - ROWID_BYTES..]);
    k
}

/// The time and rowid of a user-index entry.
fn parse_user_entry(k: &[u8]) -> Option<(i64, i64)> {
    const TS: usize = USER_PREFIX_BYTES;
    if k.len() != USER_ENTRY_BYTES {
        return None;
    }
    let mut rowid = [0u8; 8];
    rowid[8 - ROWID_BYTES..].copy_from_slice(&k[TS + 8..]);
    Some((from_sortable(&k[TS..TS + 8])?, i64::from_be_bytes(rowid)))
}

/// The user-index entries of one events row: its user id's and its anonymous id's.
pub(crate) fn user_entries(
    source: &str,
    user_id: Option<&str>,
    anonymous_id: Option<&str>,
    ts: i64,
    rowid: i64,
) -> impl Iterator<Item = UserEntry> {
    let user = user_id.map(|u| user_entry(source, false, u, ts, rowid));
    let anonymous = anonymous_id.map(|a| user_entry(source, true, a, ts, rowid));
    user.into_iter().chain(anonymous)
}

/// The user-index entries of an `events` row read as `source, user_id, anonymous_id, ts,
/// rowid` (the first five columns).
pub(crate) fn row_user_entries(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<impl Iterator<Item = UserEntry>> {
    let source: String = r.get(0)?;
    let user_id: Option<String> = r.get(1)?;
    let anonymous_id: Option<String> = r.get(2)?;
    Ok(user_entries(
        &source,
        user_id.as_deref(),
        anonymous_id.as_deref(),
        r.get(3)?,
        r.get(4)?,
    ))
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

/// A batch's keys looked up ([`IdIndex::claim`]).
pub(crate) struct Claims {
    /// The keys' positions in key order.
    by_key: Vec<usize>,
    /// Per key, in the batch's order: whether its event is new.
    pub(crate) claimed: Vec<bool>,
}

impl Claims {
    /// The claimed keys, in key order: what [`IdIndex::record`] takes once their events are
    /// stored.
    pub(crate) fn new_keys<'a>(&'a self, keys: &'a [IdKey]) -> impl Iterator<Item = &'a [u8]> {
        self.by_key
            .iter()
            .filter(|&&i| self.claimed[i])
            .map(move |&i| &keys[i][..])
    }
}

impl IdIndex {
    /// Open (or create) the index in `dir`; compactions forget the ids seen before `window`.
    pub(crate) fn open(dir: &Path, window: Duration) -> Result<IdIndex, StoreError> {
        let err = |e: fjall::Error| index_error(dir, &e);
        let forget: Arc<dyn filter::Factory> = Arc::new(ForgetExpired { window });
        // Two background workers: one flushes while the other merges (see `MEMTABLE_BYTES`).
        let db = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            .max_journaling_size(MAX_JOURNALING_BYTES)
            .worker_threads(2)
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
                index_options()
                    .max_memtable_size(MEMTABLE_BYTES)
                    .filter_block_pinning_policy(PinningPolicy::new(PINNED_LEVELS))
                    .filter_block_partitioning_policy(PartitioningPolicy::new(
                        PINNED_LEVELS.map(|pinned| !pinned),
                    ))
                    .index_block_pinning_policy(PinningPolicy::new(PINNED_LEVELS))
            })
            .map_err(err)
        };
        let (ids, meta) = (ks(IDS)?, ks("meta")?);
        // Only read by prefix (no filters: nothing asks whether one key is there), and not
        // pinned beyond fjall's defaults: user queries are rare next to commits.
        let users = db
            .keyspace(USERS, || {
                index_options()
                    .max_memtable_size(USERS_MEMTABLE_BYTES)
                    .filter_policy(FilterPolicy::all(FilterPolicyEntry::None))
            })
            .map_err(err)?;
        let index = IdIndex {
            db,
            ids,
            users,
            meta,
            window,
            dir: dir.to_path_buf(),
            stale: AtomicBool::new(false),
        };
        let format = index.meta.get(FORMAT).map_err(|e| index.err(&e))?;
        if format.as_deref() != Some(&CURRENT_FORMAT.to_be_bytes()[..]) {
            if index.through()? > 0 {
                // `catch_up`, when the warehouse opens, indexes every event again.
                tracing::info!("the warehouse's indexes have an older layout; rebuilding them");
            }
            index.clear()?;
        }
        Ok(index)
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

    /// Look a batch's `keys` up: a key is claimed when it is not stored within the window and
    /// no earlier key of the batch is the same. Looked up in key order, each search of fjall's
    /// memtables starting near the last one, in cache; the sort is stable, so of two events
    /// with one id the earlier is claimed.
    pub(crate) fn claim(&self, keys: &[IdKey]) -> Result<Claims, StoreError> {
        let mut by_key: Vec<usize> = (0..keys.len()).collect();
        by_key.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        let mut claimed = vec![false; keys.len()];
        let since = self.window_start();
        let mut previous: Option<&IdKey> = None;
        for &i in &by_key {
            let k = &keys[i];
            claimed[i] = previous != Some(k) && !self.contains(k, since)?;
            previous = Some(k);
        }
        Ok(Claims { by_key, claimed })
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

    /// Record `keys`, each with when it was seen, the user-index entries `users`
    /// ([`user_entries`]), and that rowids up to `through` are covered: one atomic batch,
    /// handed to the journal, and forced to disk only when `durable`.
    pub(crate) fn record<'a, U: AsRef<[u8]>>(
        &self,
        keys: impl Iterator<Item = (&'a [u8], i64)>,
        users: impl Iterator<Item = U>,
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
        for k in users {
            batch.insert(&self.users, k.as_ref(), &[][..]);
        }
        batch.insert(&self.meta, THROUGH, &sortable(through)[..]);
        batch.commit().map_err(|e| self.err(&e))
    }

    /// Set `through`, durably.
    fn set_through(&self, through: i64) -> Result<(), StoreError> {
        self.record(
            std::iter::empty(),
            std::iter::empty::<&[u8]>(),
            through,
            true,
        )
    }

    /// Lower `through` to `rowid` (if above it), durably: before retention deletes the newest
    /// rows, whose rowids SQLite will hand out again.
    pub(crate) fn lower_through(&self, rowid: i64) -> Result<(), StoreError> {
        if self.through()? > rowid {
            self.set_through(rowid)?;
        }
        Ok(())
    }

    /// Delete user-index entries (of events retention deleted).
    pub(crate) fn forget_users(&self, entries: &[UserEntry]) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        for k in entries {
            batch.remove(&self.users, &k[..]);
        }
        batch.commit().map_err(|e| self.err(&e))
    }

    /// The (time, rowid) of a user's entries ([`user_prefix`]), newest first.
    pub(crate) fn newest_user_entries(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(i64, i64), StoreError>> + '_ {
        self.users.prefix(prefix).rev().map(move |guard| {
            let k = guard.key().map_err(|e| self.err(&e))?;
            parse_user_entry(&k).ok_or_else(|| {
                StoreError::Other(format!(
                    "a malformed key in the user index {}",
                    self.dir.display()
                ))
            })
        })
    }

    /// Entries in the user index (tests).
    #[cfg(feature = "testing")]
    pub(crate) fn user_entry_count(&self) -> Result<usize, StoreError> {
        self.users.len().map_err(|e| self.err(&e))
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

    /// Empty the index, in the current layout. `through` goes to 0 first, durably: should a
    /// crash come part way, the index left catches up from the first event.
    fn clear(&self) -> Result<(), StoreError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&self.meta, THROUGH, &sortable(0)[..]);
        batch.insert(&self.meta, FORMAT, &CURRENT_FORMAT.to_be_bytes()[..]);
        batch.commit().map_err(|e| self.err(&e))?;
        for ks in [&self.ids, &self.users] {
            ks.clear().map_err(|e| self.err(&e))?;
        }
        Ok(())
    }
}

/// The index alone, driven the way `commit_batch` drives it, without SQLite: to measure its
/// cost per event as it grows (the `index_cost` example; cargo feature `testing`).
#[cfg(feature = "testing")]
pub struct IndexLoad {
    index: IdIndex,
    rowid: i64,
}

#[cfg(feature = "testing")]
impl IndexLoad {
    /// A fresh or existing index in `dir`, with the default dedupe window.
    pub fn open(dir: &Path) -> Result<IndexLoad, StoreError> {
        let window = super::SqliteOptions::default().dedupe_window;
        Ok(IndexLoad {
            index: IdIndex::open(dir, window)?,
            rowid: 0,
        })
    }

    /// One commit's work on the index for `events` (source, event id, user id), all received
    /// at `now` (µs): the ids looked up in key order, then the new ones recorded with their
    /// user entries, as `commit_batch` does after its SQLite transaction. Returns the new ids.
    pub fn commit(&mut self, events: &[(&str, &str, &str)], now: i64) -> Result<usize, StoreError> {
        let keys: Vec<IdKey> = events.iter().map(|(s, id, _)| key(s, id)).collect();
        let claims = self.index.claim(&keys)?;
        let mut users = Vec::with_capacity(events.len());
        for (source, _, user) in events {
            self.rowid += 1;
            users.extend(user_entries(source, Some(user), None, now, self.rowid));
        }
        users.sort_unstable();
        self.index.record(
            claims.new_keys(&keys).map(|k| (k, now)),
            users.iter(),
            self.rowid,
            false,
        )?;
        Ok(claims.claimed.iter().filter(|&&c| c).count())
    }
}

/// Bring the index up to date with `events`: record the ids of the rows after `through` that
/// are within the dedupe window (seen at their `received_at`) and the users of them all, then
/// `through` = the last rowid, durably. An index ahead of the database is rebuilt. Returns the
/// rows indexed.
pub(crate) fn catch_up(conn: &Connection, index: &IdIndex) -> Result<u64, StoreError> {
    let last: i64 = conn
        .query_row(sql::LAST_EVENT_ROWID, [], |r| r.get(0))
        .map_err(sqlite_error)?;
    let mut through = index.through()?;
    if through > last {
        tracing::warn!(
            index = through,
            events = last,
            "the warehouse's indexes are ahead of its events (commits lost?); rebuilding them"
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
        .prepare(sql::EVENTS_BETWEEN_ROWIDS)
        .map_err(sqlite_error)?;
    let mut rows = stmt.query(params![through, last]).map_err(sqlite_error)?;
    let mut ids: Vec<(IdKey, i64)> = Vec::with_capacity(CATCH_UP_CHUNK);
    let mut users: Vec<UserEntry> = Vec::with_capacity(2 * CATCH_UP_CHUNK);
    let mut indexed = 0u64;
    let flush = |ids: &mut Vec<(IdKey, i64)>, users: &mut Vec<UserEntry>| {
        // `through` moves only at the end: until then a crash starts over from the same place.
        index.record(
            ids.iter().map(|(k, at)| (&k[..], *at)),
            users.drain(..),
            through,
            false,
        )?;
        ids.clear();
        Ok::<_, StoreError>(())
    };
    while let Some(r) = rows.next().map_err(sqlite_error)? {
        users.extend(row_user_entries(r).map_err(sqlite_error)?);
        let received_at: i64 = r.get(6).map_err(sqlite_error)?;
        if received_at >= cutoff {
            let (source, event_id) = r
                .get_ref(0)
                .and_then(|s| Ok((s.as_str()?, r.get_ref(5)?.as_str()?)))
                .map_err(sqlite_error)?;
            ids.push((key(source, event_id), received_at));
        }
        indexed += 1;
        if indexed.is_multiple_of(CATCH_UP_CHUNK as u64) {
            flush(&mut ids, &mut users)?;
        }
    }
    flush(&mut ids, &mut users)?;
    index.set_through(last)?;
    index.stale.store(false, Ordering::Release);
    if indexed > 0 {
        tracing::info!(
            events = indexed,
            through = last,
            "the warehouse's indexes caught up with its events"
        );
    }
    Ok(indexed)
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
    fn a_users_entries_share_a_prefix_and_sort_by_time_then_rowid() {
        let prefix = user_prefix("s", false, "u1");
        let entries = [
            user_entry("s", false, "u1", -5, 9),
            user_entry("s", false, "u1", 0, 3),
            user_entry("s", false, "u1", 0, 4),
            user_entry("s", false, "u1", 1_700_000_000_000_000, 1),
        ];
        for w in entries.windows(2) {
            assert!(w[0] < w[1]);
        }
        for e in &entries {
            assert!(e.starts_with(&prefix));
        }
        assert_eq!(parse_user_entry(&entries[0]), Some((-5, 9)));
        assert_eq!(parse_user_entry(&entries[0][..19]), None, "too short");
        // Another user, the same id as an anonymous id, another source, parts run together.
        for other in [
            user_prefix("s", false, "u2"),
            user_prefix("s", true, "u1"),
            user_prefix("t", false, "u1"),
            user_prefix("su", false, "1"),
        ] {
            assert_ne!(other, prefix);
        }
        let both: Vec<UserEntry> = user_entries("s", Some("u1"), Some("a1"), 7, 8).collect();
        assert_eq!(
            both,
            [
                user_entry("s", false, "u1", 7, 8),
                user_entry("s", true, "a1", 7, 8)
            ]
        );
        assert_eq!(user_entries("s", None, None, 7, 8).count(), 0);
    }

    #[test]
    fn users_entries_are_listed_newest_first_by_prefix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let index = IdIndex::open(dir.path(), HOUR).expect("open");
        let mine = [(5, 1), (9, 2), (9, 3), (7, 4)];
        let entries: Vec<UserEntry> = mine
            .iter()
            .map(|&(ts, rowid)| user_entry("s", false, "me", ts, rowid))
            .chain([user_entry("s", false, "you", 8, 5)])
            .collect();
        index
            .record(std::iter::empty(), entries.iter(), 5, false)
            .expect("record");
        let newest = |index: &IdIndex| -> Vec<(i64, i64)> {
            index
                .newest_user_entries(&user_prefix("s", false, "me"))
                .collect::<Result<_, _>>()
                .expect("entries")
        };
        assert_eq!(newest(&index), [(9, 3), (9, 2), (7, 4), (5, 1)]);
        index.forget_users(&entries[1..2]).expect("forget");
        assert_eq!(newest(&index), [(9, 3), (7, 4), (5, 1)]);
        assert_eq!(index.through().expect("through"), 5);
    }

    #[test]
    fn keys_keep_source_and_id_apart() {
        assert_ne!(key("ab", "c"), key("a", "bc"));
        // The layout on disk: changing it needs a new CURRENT_FORMAT.
        assert_eq!(
            key("s", "id"),
            xxhash_rust::xxh3::xxh3_128(b"\x00\x01sid").to_be_bytes()
        );
        assert_eq!(
            &user_prefix("s", true, "u")[..],
            &xxhash_rust::xxh3::xxh3_64(b"\x00\x01s\x01\x00\x01u").to_be_bytes()[..6]
        );
        let entry = user_entry("s", true, "u", -1, 0x0102_0304_0506);
        assert_eq!(&entry[..6], &user_prefix("s", true, "u")[..]);
        assert_eq!(&entry[6..14], &sortable(-1)[..]);
        assert_eq!(&entry[14..], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(parse_user_entry(&entry), Some((-1, 0x0102_0304_0506)));
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
                std::iter::empty::<UserEntry>(),
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
        let keys: Vec<IdKey> = (0..2_000).map(|i| key("s", &format!("id-{i}"))).collect();
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
                std::iter::empty::<UserEntry>(),
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
