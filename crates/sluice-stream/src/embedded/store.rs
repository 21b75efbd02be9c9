//! The embedded log's state: the fjall database and its keyspaces (`events`, `groups`,
//! `pending`, `dead`, `meta`; layout in `keys`), recovery of the in-memory state at open, and every
//! consumer-side operation (groups, reads, pending entries, acks, dead letters, trimming, lag).
//!
//! Everything here is blocking (fjall does file IO) and is called from `spawn_blocking` or the
//! writer thread, never directly on the async runtime.
//!
//! In memory we keep only small things: per shard the published head (newest id, entries ever
//! appended) and tail (trimmed-below id, entries ever trimmed); per group its position on each
//! shard and its pending entries (like Redis's PEL: one small record per delivered, unacked
//! entry). Entries themselves stay on disk; reads are range scans limited by `count`. Every
//! change is written to fjall in one atomic batch before the in-memory copy is updated.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fjall::config::{FilterPolicy, FilterPolicyEntry};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use sluice_core::log::{DeadLetter, Entry, GroupLag, LogError, StartFrom};
use tokio::sync::Notify;

/// Largest in-memory table of a keyspace before it is flushed to disk.
const MAX_MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;
/// Memtables of the shards' event keyspaces, all together. Consumers read the newest entries
/// from `recent`, not from here: the memtable only holds appends until their flush (~0.15 s at
/// 50,000 events/s with one shard), and smaller ones wait less memory behind a flush.
const EVENTS_MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;
/// Smallest memtable of one shard's keyspace.
const MIN_SHARD_MEMTABLE_BYTES: u64 = 1024 * 1024;
/// Journal budget (fjall's minimum); past it, memtables are flushed.
const MAX_JOURNALING_BYTES: u64 = 64 * 1024 * 1024;

use super::config::EmbeddedLogConfig;
use super::keys::{self, Id, Position};
use super::recent::Recent;

/// No bloom filters: every key of the log's keyspaces grows with its shard's ids or names a group,
/// so a table's key range already tells whether it can hold a key, and point reads look up keys
/// that exist. Filters only cost memory (compaction buffers every key's hash for them: ~17 MiB at
/// 50,000 events/s) and CPU. Applies to keyspaces created from now on; older ones keep theirs.
fn no_filters(options: KeyspaceCreateOptions) -> KeyspaceCreateOptions {
    options.filter_policy(FilterPolicy::all(FilterPolicyEntry::None))
}

/// Format 1 kept every shard's entries in one `events` keyspace; opening such a directory moves
/// them to the shards' keyspaces (format 2).
const FORMAT_ONE_KEYSPACE: u32 = 1;

/// Entries one batch of the format-1 migration moves.
const MIGRATE_CHUNK: usize = 10_000;
/// Group and consumer names are stored length-prefixed; keep them reasonable.
const MAX_NAME_LEN: usize = 1024;

/// The newest entry of a shard visible to readers, and how many entries were ever appended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Head {
    pub last: Id,
    pub appended: u64,
}

/// Every entry of the shard below `below` is gone; `trimmed` entries were removed in total.
#[derive(Debug, Clone, Copy, Default)]
struct Tail {
    below: Id,
    trimmed: u64,
}

#[derive(Debug, Clone)]
struct Pending {
    consumer: Arc<str>,
    deliveries: u64,
    at_ms: u64,
}

#[derive(Debug)]
struct Group {
    positions: Vec<Position>,
    /// (shard, id) → pending entry, ordered like the entries.
    pending: BTreeMap<(u32, Id), Pending>,
    /// For a group whose processor keeps its own positions (reads without acknowledgements):
    /// per shard, the last id its effects are committed through (set by `rewind_group`,
    /// advanced by `confirm`, kept in `meta`). Trimming never passes it.
    floor: Option<Vec<Id>>,
}

impl Group {
    /// Entries delivered (ever, on every shard) minus entries still pending: what the group has
    /// finished with, so that `appended - processed` is its backlog.
    fn processed(&self) -> u64 {
        let delivered: u64 = self.positions.iter().map(|p| p.delivered).sum();
        delivered.saturating_sub(self.pending.len() as u64)
    }
}

struct State {
    groups: BTreeMap<String, Group>,
    tails: Vec<Tail>,
    /// Sequence numbers of the oldest retained and the next dead letter.
    dead_first: u64,
    dead_next: u64,
}

/// A required group's backlog inputs, readable by `append` without any lock.
struct Required {
    name: String,
    exists: AtomicBool,
    processed: AtomicU64,
}

/// Counters of the append path (monotonic since open), for metrics and coalescing tests.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub batches: AtomicU64,
    pub syncs: AtomicU64,
    pub records: AtomicU64,
}

pub(crate) struct Store {
    pub dir: PathBuf,
    pub shards: u32,
    pub db: Database,
    /// One keyspace per shard (see `open`).
    pub events: Vec<Keyspace>,
    pub meta: Keyspace,
    groups_ks: Keyspace,
    pending_ks: Keyspace,
    dead_ks: Keyspace,
    /// Published heads: what readers may see (written, and persisted per the durability
    /// setting). Updated by the writer after each batch.
    pub heads: RwLock<Vec<Head>>,
    /// The newest entries of each shard, for reads near the head (filled by the writer).
    pub recent: Recent,
    pub total_appended: AtomicU64,
    total_trimmed: AtomicU64,
    state: Mutex<State>,
    /// Serialises trims (which delete outside the state lock) with each other and with group
    /// creation. Taken before `state`, never while holding it.
    trim_lock: Mutex<()>,
    required: Vec<Required>,
    /// Signalled by the writer after every batch, to wake blocked `read_new` calls.
    pub appended: Notify,
    pub stats: WriterStats,
    dead_letter_max_len: u64,
    trim_keep_ms: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State is only changed after a successful fjall commit, so a panic elsewhere while
    // holding the lock cannot leave it half-updated in a way that matters.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The first `io::Error` in an error's source chain.
fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// Map a fjall error to a `LogError` that says what happened and where.
pub(crate) fn storage_error(dir: &Path, e: &fjall::Error) -> LogError {
    let dir = dir.display();
    if matches!(e, fjall::Error::Locked) {
        return LogError::Other(format!(
            "data directory {dir} is in use by another sluice process (the embedded log is \
             single-process; stop the other one or use another --data-dir)"
        ));
    }
    if matches!(e, fjall::Error::Poisoned) {
        return LogError::Other(format!(
            "the embedded log in {dir} stopped accepting writes after an earlier disk failure; \
             restart the process to recover"
        ));
    }
    match io_cause(e) {
        Some(io) => io_error(&dir.to_string(), io),
        None => LogError::Other(format!("embedded log in {dir}: storage error: {e}")),
    }
}

pub(crate) fn io_error(dir: &str, io: &io::Error) -> LogError {
    match io.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            LogError::Unavailable(format!("embedded log in {dir}: the disk is full ({io})"))
        }
        io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied => LogError::Other(
            format!("embedded log in {dir}: the data directory is not writable ({io})"),
        ),
        _ => LogError::Unavailable(format!("embedded log in {dir}: I/O error: {io}")),
    }
}

fn corrupt(dir: &Path, what: &str) -> LogError {
    LogError::Other(format!(
        "embedded log in {}: unreadable {what} (corrupt data directory?)",
        dir.display()
    ))
}

fn missing_group(group: &str) -> LogError {
    LogError::Other(format!(
        "consumer group `{group}` does not exist (call ensure_group first)"
    ))
}

fn check_name(what: &str, name: &str) -> Result<(), LogError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(LogError::Other(format!(
            "{what} name must be 1..={MAX_NAME_LEN} bytes, got {} bytes",
            name.len()
        )));
    }
    Ok(())
}

/// A caller's `(shard, id)`: the shard's slot in a per-shard vector, and the id parsed.
fn shard_position<'a, T>(
    per_shard: &'a mut [T],
    shard: u32,
    id: &str,
) -> Result<(&'a mut T, Id), LogError> {
    let slot = per_shard
        .get_mut(shard as usize)
        .ok_or_else(|| LogError::Other(format!("no shard {shard}")))?;
    let id =
        Id::parse(id).ok_or_else(|| LogError::Other(format!("invalid log position {id:?}")))?;
    Ok((slot, id))
}

impl Store {
    /// Open (or create) the data directory and rebuild the in-memory state from it.
    pub(crate) fn open(config: &EmbeddedLogConfig) -> Result<Store, LogError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| {
            let shown = dir.display();
            match e.kind() {
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                    LogError::Other(format!(
                        "cannot create data directory {shown}: not writable ({e})"
                    ))
                }
                _ => LogError::Other(format!("cannot create data directory {shown}: {e}")),
            }
        })?;
        let err = |e: fjall::Error| storage_error(&dir, &e);
        // Memory: fjall's defaults (64 MiB memtables, up to 512 MiB of journals whose sealed
        // memtables stay in memory until flushed) let a busy log hold hundreds of MiB. Smaller
        // memtables and the smallest journal budget keep the process within its RSS target.
        //
        // Two background workers (vendor/fjall/PATCHES.md): one seals and flushes memtables
        // while the other compacts. With one, nothing sealed the active memtable during a
        // compaction, and fjall holds writes back on the count of sealed memtables only: once
        // the consumers were ~1M entries behind, the log's compactions were long and its
        // active memtable grew to ~120 MB (heap peaks 510–590 MB in 600 s runs, 203 with two;
        // docs/benchmarks.md, session 23).
        let db = Database::builder(&dir)
            .cache_size(config.cache_bytes)
            .max_journaling_size(MAX_JOURNALING_BYTES)
            .worker_threads(2)
            .open()
            .map_err(err)?;
        let ks = |name: &str| {
            db.keyspace(name, || {
                no_filters(KeyspaceCreateOptions::default()).max_memtable_size(MAX_MEMTABLE_BYTES)
            })
            .map_err(err)
        };
        let groups_ks = ks("groups")?;
        let pending_ks = ks("pending")?;
        let dead_ks = ks("dead")?;
        let meta = ks("meta")?;

        // The shard count and layout version are fixed at creation: an existing directory keeps
        // its count (asking for another one is an error), a new one takes the configured count
        // or the default.
        let stored = match meta.get(keys::META_SHARDS).map_err(err)? {
            Some(v) => Some(keys::u32_value(&v).ok_or_else(|| corrupt(&dir, "shard count"))?),
            None => None,
        };
        let shards = stored
            .or(config.shards)
            .unwrap_or(EmbeddedLogConfig::DEFAULT_SHARDS);
        match stored {
            Some(stored) => {
                if let Some(asked) = config.shards.filter(|&asked| asked != stored) {
                    return Err(LogError::Other(format!(
                        "data directory {} was created with {stored} shards, but the \
                         configuration asks for {asked} (the shard count cannot change)",
                        dir.display(),
                    )));
                }
                let format = meta
                    .get(keys::META_FORMAT)
                    .map_err(err)?
                    .and_then(|v| keys::u32_value(&v));
                if format != Some(keys::FORMAT_VERSION) && format != Some(FORMAT_ONE_KEYSPACE) {
                    return Err(LogError::Other(format!(
                        "data directory {} has embedded log format {format:?}, this build \
                         reads format {}",
                        dir.display(),
                        keys::FORMAT_VERSION
                    )));
                }
            }
            None => {
                let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
                batch.insert(&meta, keys::META_SHARDS, &shards.to_be_bytes()[..]);
                batch.insert(
                    &meta,
                    keys::META_FORMAT,
                    &keys::FORMAT_VERSION.to_be_bytes()[..],
                );
                batch.commit().map_err(err)?;
            }
        }

        // One keyspace per shard: a shard's ids only grow, so each of its flushed tables holds
        // keys above all older ones and compaction moves tables down without rewriting them.
        // (With every shard in one keyspace, each flushed table overlapped every older one, and
        // merging them was ~18 % of `serve`'s CPU after a minute at 50,000 events/s.) The
        // memtable budget is shared: `EVENTS_MEMTABLE_BYTES` across the shards.
        //
        // Entries are written once, read near the head and deleted oldest first. With key-value
        // separation their payloads go to blob files at flush, and compaction moves only keys and
        // pointers instead of rewriting every payload at each level; a blob file whose entries
        // are all trimmed is dropped whole. (Compaction rewriting payloads was ~60 % of fjall's
        // background CPU in `sluice serve`, and the background work ~15 % of the process.)
        // Blobs are not compressed: entries live minutes, and LZ4 over every payload was ~2 % of
        // `serve`'s CPU at 50,000 events/s for disk the trim gives back soon anyway.
        let shard_memtable =
            (EVENTS_MEMTABLE_BYTES / u64::from(shards.max(1))).max(MIN_SHARD_MEMTABLE_BYTES);
        let events = (0..shards)
            .map(|shard| {
                db.keyspace(&keys::events_keyspace(shard), || {
                    no_filters(KeyspaceCreateOptions::default())
                        .max_memtable_size(shard_memtable)
                        .with_kv_separation(Some(
                            fjall::KvSeparationOptions::default()
                                .separation_threshold(256)
                                .compression(fjall::CompressionType::None),
                        ))
                })
                .map_err(err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        migrate_one_keyspace(&db, &meta, &events, &dir)?;

        let mut heads = Vec::with_capacity(shards as usize);
        let mut tails = Vec::with_capacity(shards as usize);
        for shard in 0..shards {
            let head = match meta.get(keys::head_key(shard)).map_err(err)? {
                Some(v) => {
                    let (last, appended) =
                        keys::decode_id_count(&v).ok_or_else(|| corrupt(&dir, "shard head"))?;
                    Head { last, appended }
                }
                None => Head::default(),
            };
            let tail = match meta.get(keys::tail_key(shard)).map_err(err)? {
                Some(v) => {
                    let (below, trimmed) =
                        keys::decode_id_count(&v).ok_or_else(|| corrupt(&dir, "shard tail"))?;
                    Tail { below, trimmed }
                }
                None => Tail::default(),
            };
            heads.push(head);
            tails.push(tail);
        }

        let mut groups = BTreeMap::new();
        for guard in groups_ks.iter() {
            let (k, v) = guard.into_inner().map_err(err)?;
            let (name, rest) =
                keys::parse_group_prefix(&k).ok_or_else(|| corrupt(&dir, "group key"))?;
            let positions = keys::decode_positions(&v)
                .filter(|p| rest.is_empty() && p.len() == shards as usize)
                .ok_or_else(|| corrupt(&dir, "group position"))?;
            let floor = match meta.get(keys::floor_key(&name)).map_err(err)? {
                None => None,
                Some(v) => Some(
                    keys::decode_ids(&v)
                        .filter(|f| f.len() == shards as usize)
                        .ok_or_else(|| corrupt(&dir, "group floor"))?,
                ),
            };
            groups.insert(
                name,
                Group {
                    positions,
                    pending: BTreeMap::new(),
                    floor,
                },
            );
        }
        // Consumer names repeat across pending entries: share one allocation per name.
        let mut consumers: BTreeMap<String, Arc<str>> = BTreeMap::new();
        for guard in pending_ks.iter() {
            let (k, v) = guard.into_inner().map_err(err)?;
            let (group, shard, id) =
                keys::parse_pending_key(&k).ok_or_else(|| corrupt(&dir, "pending key"))?;
            let (deliveries, at_ms, consumer) =
                keys::decode_pending(&v).ok_or_else(|| corrupt(&dir, "pending entry"))?;
            let Some(g) = groups.get_mut(&group) else {
                continue;
            };
            let consumer = consumers
                .entry(consumer)
                .or_insert_with_key(|c| Arc::from(c.as_str()))
                .clone();
            g.pending.insert(
                (shard, id),
                Pending {
                    consumer,
                    deliveries,
                    at_ms,
                },
            );
        }

        let dead_seq = |guard: Option<fjall::Guard>| -> Result<Option<u64>, LogError> {
            let Some(guard) = guard else { return Ok(None) };
            let k = guard.key().map_err(err)?;
            let bytes: [u8; 8] = k[..]
                .try_into()
                .map_err(|_| corrupt(&dir, "dead-letter key"))?;
            Ok(Some(u64::from_be_bytes(bytes)))
        };
        let dead_first = dead_seq(dead_ks.first_key_value())?.unwrap_or(0);
        let dead_next = dead_seq(dead_ks.last_key_value())?.map_or(dead_first, |last| last + 1);

        let required: Vec<Required> = config
            .required_groups
            .iter()
            .map(|name| Required {
                name: name.clone(),
                exists: AtomicBool::new(groups.contains_key(name)),
                processed: AtomicU64::new(groups.get(name).map_or(0, Group::processed)),
            })
            .collect();

        Ok(Store {
            total_appended: AtomicU64::new(heads.iter().map(|h| h.appended).sum()),
            total_trimmed: AtomicU64::new(tails.iter().map(|t| t.trimmed).sum()),
            recent: Recent::new(heads.iter().map(|h| h.last), config.recent_bytes),
            heads: RwLock::new(heads),
            state: Mutex::new(State {
                groups,
                tails,
                dead_first,
                dead_next,
            }),
            trim_lock: Mutex::new(()),
            required,
            appended: Notify::new(),
            stats: WriterStats::default(),
            dead_letter_max_len: config.dead_letter_max_len,
            trim_keep_ms: u64::try_from(config.trim_keep.as_millis()).unwrap_or(u64::MAX),
            shards,
            dir,
            db,
            events,
            meta,
            groups_ks,
            pending_ks,
            dead_ks,
        })
    }

    pub(crate) fn err(&self, e: &fjall::Error) -> LogError {
        storage_error(&self.dir, e)
    }

    pub(crate) fn heads(&self) -> Vec<Head> {
        self.heads
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The backlog that backpressure compares with the high-water mark: the largest backlog
    /// among the required groups that exist, or the number of retained entries when none does.
    /// Lock-free, from counters kept up to date by the writer and the consumer operations.
    pub(crate) fn backlog(&self) -> u64 {
        let appended = self.total_appended.load(Ordering::Acquire);
        self.required
            .iter()
            .filter(|r| r.exists.load(Ordering::Acquire))
            .map(|r| appended.saturating_sub(r.processed.load(Ordering::Acquire)))
            .max()
            .unwrap_or_else(|| appended.saturating_sub(self.total_trimmed.load(Ordering::Acquire)))
    }

    pub(crate) fn len(&self) -> u64 {
        let trimmed = self.total_trimmed.load(Ordering::Acquire);
        self.total_appended
            .load(Ordering::Acquire)
            .saturating_sub(trimmed)
    }

    fn refresh_required(&self, name: &str, group: &Group) {
        if let Some(r) = self.required.iter().find(|r| r.name == name) {
            r.processed.store(group.processed(), Ordering::Release);
            r.exists.store(true, Ordering::Release);
        }
    }

    fn commit(&self, batch: OwnedWriteBatch) -> Result<(), LogError> {
        batch.commit().map_err(|e| self.err(&e))
    }

    pub(crate) fn ensure_group(&self, group: &str, start: StartFrom) -> Result<(), LogError> {
        check_name("group", group)?;
        // A group starting at the beginning starts at the trim point: no trim may be under way.
        let _no_trim = lock(&self.trim_lock);
        let mut st = lock(&self.state);
        if st.groups.contains_key(group) {
            return Ok(());
        }
        let heads = self.heads();
        let positions: Vec<Position> = heads
            .iter()
            .zip(&st.tails)
            .map(|(head, tail)| match start {
                StartFrom::Beginning => Position {
                    last: Id::ZERO,
                    delivered: tail.trimmed,
                },
                StartFrom::End => Position {
                    last: head.last,
                    delivered: head.appended,
                },
            })
            .collect();
        self.groups_ks
            .insert(
                keys::group_prefix(group),
                keys::encode_positions(&positions),
            )
            .map_err(|e| self.err(&e))?;
        let g = Group {
            positions,
            pending: BTreeMap::new(),
            floor: None,
        };
        self.refresh_required(group, &g);
        st.groups.insert(group.to_owned(), g);
        Ok(())
    }

    /// Up to `count` entries of `shard` with ids in `from..=last`, oldest first: from memory
    /// when they are among the newest (the usual case for consumers), else from fjall.
    fn entries(
        &self,
        shard: u32,
        from: Id,
        last: Id,
        count: usize,
    ) -> Result<Vec<(Id, Bytes)>, LogError> {
        if let Some(held) = self.recent.read(shard, from, last, count) {
            return Ok(held);
        }
        let range = keys::event_key(shard, from)..=keys::event_key(shard, last);
        self.events[shard as usize]
            .range(range)
            .take(count)
            .map(|guard| {
                let (k, v) = guard.into_inner().map_err(|e| self.err(&e))?;
                let (_, id) =
                    keys::parse_event_key(&k).ok_or_else(|| corrupt(&self.dir, "event key"))?;
                // fjall's own reference-counted buffer: no copy.
                Ok((id, Bytes::from_owner(v)))
            })
            .collect()
    }

    /// Deliver up to `count` new entries to `consumer`, visiting shards from `first_shard`;
    /// with `record_pending` false they are not made pending (`read_new_unacked`).
    pub(crate) fn read_new(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        first_shard: u32,
        record_pending: bool,
    ) -> Result<Vec<Entry>, LogError> {
        check_name("consumer", consumer)?;
        let heads = self.heads();
        let mut st = lock(&self.state);
        let State { groups, tails, .. } = &mut *st;
        let g = groups.get_mut(group).ok_or_else(|| missing_group(group))?;
        let now = now_ms();
        let mut out = Vec::new();
        let mut positions = g.positions.clone();
        let mut batch = self.db.batch();
        let pending_value = keys::encode_pending(1, now, consumer);
        for i in 0..self.shards {
            if out.len() >= count {
                break;
            }
            let shard = (first_shard + i) % self.shards;
            let s = shard as usize;
            let head = heads[s];
            let pos = &mut positions[s];
            if pos.last >= head.last {
                continue;
            }
            let from = pos.last.successor().max(tails[s].below);
            for (id, payload) in self.entries(shard, from, head.last, count - out.len())? {
                if record_pending {
                    batch.insert(
                        &self.pending_ks,
                        keys::pending_key(group, shard, id),
                        pending_value.as_slice(),
                    );
                }
                out.push(Entry {
                    shard,
                    id: id.to_string(),
                    payload,
                    deliveries: 1,
                });
                pos.last = id;
                pos.delivered += 1;
            }
        }
        if out.is_empty() {
            return Ok(out);
        }
        batch.insert(
            &self.groups_ks,
            keys::group_prefix(group),
            keys::encode_positions(&positions),
        );
        self.commit(batch)?;
        g.positions = positions;
        let consumer: Arc<str> = Arc::from(consumer);
        if record_pending {
            for e in &out {
                if let Some(id) = Id::parse(&e.id) {
                    g.pending.insert(
                        (e.shard, id),
                        Pending {
                            consumer: consumer.clone(),
                            deliveries: 1,
                            at_ms: now,
                        },
                    );
                }
            }
        }
        self.refresh_required(group, g);
        Ok(out)
    }

    /// Set the group's last-delivered id on the given shards; the delivered count follows (the
    /// entries between the old and the new id are counted off or on).
    pub(crate) fn rewind_group(
        &self,
        group: &str,
        positions: &[(u32, String)],
    ) -> Result<(), LogError> {
        // Counting the entries in between must not race a trim deleting them.
        let _no_trim = lock(&self.trim_lock);
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let g = st
            .groups
            .get_mut(group)
            .ok_or_else(|| missing_group(group))?;
        let mut new_positions = g.positions.clone();
        for (shard, id) in positions {
            let (pos, to) = shard_position(&mut new_positions, *shard, id)?;
            let (lo, hi) = if to < pos.last {
                (to, pos.last)
            } else {
                (pos.last, to)
            };
            // What is below the tail is trimmed, though its table may still hold it.
            let from = lo.successor().max(st.tails[*shard as usize].below);
            let between = self.events[*shard as usize]
                .range(keys::event_key(*shard, from)..=keys::event_key(*shard, hi))
                .count() as u64;
            pos.delivered = if to < pos.last {
                pos.delivered.saturating_sub(between)
            } else {
                pos.delivered + between
            };
            pos.last = to;
        }
        // A rewind puts the cursor where the processor's effects end: that is its floor now.
        let floor: Vec<Id> = new_positions.iter().map(|p| p.last).collect();
        let mut batch = self.db.batch();
        batch.insert(
            &self.groups_ks,
            keys::group_prefix(group),
            keys::encode_positions(&new_positions),
        );
        batch.insert(&self.meta, keys::floor_key(group), keys::encode_ids(&floor));
        self.commit(batch)?;
        g.positions = new_positions;
        g.floor = Some(floor);
        self.refresh_required(group, g);
        Ok(())
    }

    /// Advance the group's committed floor (never back); the first confirm of a group that was
    /// never rewound starts from nothing committed on the other shards.
    pub(crate) fn confirm(&self, group: &str, positions: &[(u32, String)]) -> Result<(), LogError> {
        let mut st = lock(&self.state);
        let g = st
            .groups
            .get_mut(group)
            .ok_or_else(|| missing_group(group))?;
        let mut floor = g
            .floor
            .clone()
            .unwrap_or_else(|| vec![Id::ZERO; self.shards as usize]);
        for (shard, id) in positions {
            let (at, id) = shard_position(&mut floor, *shard, id)?;
            *at = (*at).max(id);
        }
        if g.floor.as_ref() == Some(&floor) {
            return Ok(());
        }
        self.meta
            .insert(keys::floor_key(group), keys::encode_ids(&floor))
            .map_err(|e| self.err(&e))?;
        g.floor = Some(floor);
        Ok(())
    }

    /// Redeliver pending entries chosen by `pick` (at most `count`) to `consumer`, counting the
    /// delivery. Entries that no longer exist are acknowledged and skipped.
    fn redeliver(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
        pick: impl Fn(&Pending) -> bool,
    ) -> Result<Vec<Entry>, LogError> {
        check_name("consumer", consumer)?;
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let g = st
            .groups
            .get_mut(group)
            .ok_or_else(|| missing_group(group))?;
        let chosen: Vec<((u32, Id), u64)> = g
            .pending
            .iter()
            .filter(|(_, p)| pick(p))
            .take(count)
            .map(|(k, p)| (*k, p.deliveries))
            .collect();
        if chosen.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut batch = self.db.batch();
        let mut out = Vec::with_capacity(chosen.len());
        let mut gone = Vec::new();
        for ((shard, id), deliveries) in chosen {
            let key = keys::pending_key(group, shard, id);
            // Entries below a shard's tail are trimmed, though their table may still hold them.
            let stored = if id < st.tails[shard as usize].below {
                None
            } else {
                self.events[shard as usize]
                    .get(keys::event_key(shard, id))
                    .map_err(|e| self.err(&e))?
            };
            match stored {
                Some(payload) => {
                    batch.insert(
                        &self.pending_ks,
                        key,
                        keys::encode_pending(deliveries + 1, now, consumer),
                    );
                    out.push(Entry {
                        shard,
                        id: id.to_string(),
                        payload: Bytes::copy_from_slice(&payload),
                        deliveries: deliveries + 1,
                    });
                }
                None => {
                    batch.remove(&self.pending_ks, key);
                    gone.push((shard, id));
                }
            }
        }
        self.commit(batch)?;
        if !gone.is_empty() {
            tracing::warn!(
                group,
                count = gone.len(),
                "acknowledging pending entries that no longer exist"
            );
        }
        for key in gone {
            g.pending.remove(&key);
        }
        let consumer: Arc<str> = Arc::from(consumer);
        for e in &out {
            if let Some(p) = Id::parse(&e.id).and_then(|id| g.pending.get_mut(&(e.shard, id))) {
                p.consumer = consumer.clone();
                p.deliveries = e.deliveries;
                p.at_ms = now;
            }
        }
        self.refresh_required(group, g);
        Ok(out)
    }

    pub(crate) fn read_own_pending(
        &self,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Entry>, LogError> {
        self.redeliver(group, consumer, count, |p| &*p.consumer == consumer)
    }

    pub(crate) fn claim_idle(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry>, LogError> {
        let min_idle = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        self.redeliver(group, consumer, count, |p| {
            &*p.consumer != consumer && now.saturating_sub(p.at_ms) >= min_idle
        })
    }

    /// Acknowledge, and with `dead` also store dead letters (group, entry, reason), in one batch.
    pub(crate) fn ack(
        &self,
        group: &str,
        acked: &[(u32, String)],
        dead: &[(u32, String, Bytes, String)],
    ) -> Result<(), LogError> {
        let mut st = lock(&self.state);
        let mut batch = self.db.batch();
        let mut seq = st.dead_next;
        for (shard, id, payload, reason) in dead {
            batch.insert(
                &self.dead_ks,
                seq.to_be_bytes(),
                keys::encode_dead(group, *shard, id, reason, payload),
            );
            seq += 1;
        }
        let mut first = st.dead_first;
        if self.dead_letter_max_len > 0 {
            while seq - first > self.dead_letter_max_len {
                batch.remove(&self.dead_ks, first.to_be_bytes());
                first += 1;
            }
        }
        let mut removed = Vec::new();
        if let Some(g) = st.groups.get(group) {
            for (shard, id) in acked {
                let Some(id) = Id::parse(id) else { continue };
                if g.pending.contains_key(&(*shard, id)) {
                    batch.remove(&self.pending_ks, keys::pending_key(group, *shard, id));
                    removed.push((*shard, id));
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.commit(batch)?;
        st.dead_next = seq;
        st.dead_first = first;
        if let Some(g) = st.groups.get_mut(group) {
            for key in &removed {
                g.pending.remove(key);
            }
            self.refresh_required(group, g);
        }
        Ok(())
    }

    pub(crate) fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, LogError> {
        let first = lock(&self.state).dead_first;
        let mut out = Vec::new();
        for guard in self.dead_ks.range(first.to_be_bytes()..).take(count) {
            let (_, v) = guard.into_inner().map_err(|e| self.err(&e))?;
            let f = keys::decode_dead(&v).ok_or_else(|| corrupt(&self.dir, "dead letter"))?;
            out.push(DeadLetter {
                group: f.group.to_owned(),
                shard: f.shard,
                id: f.id.to_owned(),
                reason: f.reason.to_owned(),
                payload: Bytes::copy_from_slice(f.payload),
            });
        }
        Ok(out)
    }

    /// Remove, per shard, the entries every group has processed: below the minimum over groups
    /// of (the group's smallest pending id, else the id after its last delivered one), and
    /// older than `trim_keep` before that (ids are append times). No group, nothing trimmed.
    pub(crate) fn trim(&self) -> Result<u64, LogError> {
        let _one_trim_at_a_time = lock(&self.trim_lock);
        let (bounds, tails) = {
            let st = lock(&self.state);
            if st.groups.is_empty() {
                return Ok(0);
            }
            let bounds: Vec<Id> = (0..self.shards)
                .map(|shard| {
                    st.groups
                        .values()
                        .map(|g| {
                            let read = g
                                .pending
                                .range((shard, Id::ZERO)..=(shard, Id::MAX))
                                .next()
                                .map_or_else(
                                    || g.positions[shard as usize].last.successor(),
                                    |((_, id), _)| *id,
                                );
                            match &g.floor {
                                Some(floor) => read.min(floor[shard as usize].successor()),
                                None => read,
                            }
                        })
                        .min()
                        .unwrap_or(Id::ZERO)
                })
                .map(|bound| match self.trim_keep_ms {
                    0 => bound,
                    keep => bound.min(Id {
                        ms: bound.ms.saturating_sub(keep),
                        seq: 0,
                    }),
                })
                .collect();
            (bounds, st.tails.clone())
        };
        // Positions only move forward and nothing becomes pending below them, so the bounds stay
        // safe while we trim without holding the state lock (consumers keep going).
        //
        // No tombstones: the tail moves to the bound (durably, with the count of entries below
        // it), every reader starts at the tail, and the tables wholly below it are then dropped
        // with their blob files. A tombstone per trimmed entry had compactions merge them into
        // the tables below at each level: once trimming began (after `trim_keep`), fjall's
        // workers took a whole core at 50,000 events/s (docs/benchmarks.md, session 25).
        // Entries below the tail in a table that also holds newer ones stay on disk until a
        // later trim passes that table's last key. The tail is written durably first: dropped
        // tables are gone for good, and the count below the tail must cover them.
        let mut removed_total = 0;
        for (shard, (bound, tail)) in (0u32..).zip(bounds.into_iter().zip(tails)) {
            if bound <= tail.below {
                continue;
            }
            let keyspace = &self.events[shard as usize];
            let below = keys::event_key(shard, bound);
            let mut n = 0u64;
            for guard in keyspace.range(keys::event_key(shard, tail.below)..below) {
                guard.key().map_err(|e| self.err(&e))?;
                n += 1;
            }
            let trimmed = tail.trimmed + n;
            let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
            batch.insert(
                &self.meta,
                keys::tail_key(shard),
                &keys::encode_id_count(bound, trimmed)[..],
            );
            self.commit(batch)?;
            self.total_trimmed.fetch_add(n, Ordering::AcqRel);
            lock(&self.state).tails[shard as usize] = Tail {
                below: bound,
                trimmed,
            };
            removed_total += n;
            keyspace.drop_range(..below).map_err(|e| self.err(&e))?;
        }
        Ok(removed_total)
    }

    /// Entries of one shard in `from..=through`, at most `count`, without any group.
    pub(crate) fn read_range(
        &self,
        shard: u32,
        from: Id,
        through: Id,
        count: usize,
        deliveries: u64,
    ) -> Result<Vec<Entry>, LogError> {
        if from > through || count == 0 {
            return Ok(Vec::new());
        }
        let from = from.max(lock(&self.state).tails[shard as usize].below);
        Ok(self
            .entries(shard, from, through, count)?
            .into_iter()
            .map(|(id, payload)| Entry {
                shard,
                id: id.to_string(),
                payload,
                deliveries,
            })
            .collect())
    }

    /// Group-less tail: resolve unknown positions to the shards' heads, then read at most
    /// `count` entries after `last` (shards visited from `first_shard`), moving `last` along.
    pub(crate) fn tail(
        &self,
        last: &mut [Option<Id>],
        count: usize,
        first_shard: u32,
    ) -> Result<Vec<Entry>, LogError> {
        let heads = self.heads();
        for (pos, head) in last.iter_mut().zip(&heads) {
            pos.get_or_insert(head.last);
        }
        let mut out = Vec::new();
        for i in 0..self.shards {
            if out.len() >= count {
                break;
            }
            let shard = (first_shard + i) % self.shards;
            let s = shard as usize;
            let from = last[s].unwrap_or(heads[s].last);
            if from >= heads[s].last {
                continue;
            }
            let got =
                self.read_range(shard, from.successor(), heads[s].last, count - out.len(), 1)?;
            if let Some(e) = got.last() {
                last[s] = Id::parse(&e.id).or(last[s]);
            }
            out.extend(got);
        }
        Ok(out)
    }

    pub(crate) fn lag(&self) -> Vec<GroupLag> {
        let st = lock(&self.state);
        // Heads read after the state lock: every position is at or below them.
        let heads = self.heads();
        st.groups
            .iter()
            .map(|(name, g)| GroupLag {
                group: name.clone(),
                undelivered: heads
                    .iter()
                    .zip(&g.positions)
                    .map(|(h, p)| h.appended.saturating_sub(p.delivered))
                    .sum(),
                pending: g.pending.len() as u64,
            })
            .collect()
    }
}

/// Bring a format-1 directory (one `events` keyspace for all shards) to format 2: copy its
/// entries into the shards' keyspaces, record format 2, then delete the old keyspace. Each step
/// is durable before the next; after a crash the copy is redone (same keys, same values) or only
/// the deletion is left, which the next open finishes.
fn migrate_one_keyspace(
    db: &Database,
    meta: &Keyspace,
    events: &[Keyspace],
    dir: &Path,
) -> Result<(), LogError> {
    let err = |e: fjall::Error| storage_error(dir, &e);
    const OLD: &str = "events";
    let format = meta
        .get(keys::META_FORMAT)
        .map_err(err)?
        .and_then(|v| keys::u32_value(&v));
    if format != Some(FORMAT_ONE_KEYSPACE) {
        if db.keyspace_exists(OLD) {
            let old = db
                .keyspace(OLD, KeyspaceCreateOptions::default)
                .map_err(err)?;
            db.delete_keyspace(old).map_err(err)?;
        }
        return Ok(());
    }
    let old = db
        .keyspace(OLD, KeyspaceCreateOptions::default)
        .map_err(err)?;
    let mut copied = 0u64;
    let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
    for guard in old.iter() {
        let (k, v) = guard.into_inner().map_err(err)?;
        let (shard, _) = keys::parse_event_key(&k).ok_or_else(|| corrupt(dir, "event key"))?;
        let target = events
            .get(shard as usize)
            .ok_or_else(|| corrupt(dir, "event key shard"))?;
        batch.insert(target, k, v);
        copied += 1;
        if copied.is_multiple_of(MIGRATE_CHUNK as u64) {
            batch.commit().map_err(err)?;
            batch = db.batch().durability(Some(PersistMode::SyncAll));
        }
    }
    batch.insert(
        meta,
        keys::META_FORMAT,
        &keys::FORMAT_VERSION.to_be_bytes()[..],
    );
    batch.commit().map_err(err)?;
    db.delete_keyspace(old).map_err(err)?;
    tracing::info!(dir = %dir.display(), entries = copied, "embedded log moved to one keyspace per shard (format 2)");
    Ok(())
}
