//! The rules' window logic, pure and deterministic: events in, alerts out, no IO and no clock
//! (the alert's `created_at` is passed in). [`super::FraudProcessor`] drives it.
//!
//! ## Windows
//! Every windowed rule keeps, per subject, the events of the last `W` of **event time**
//! (`Event::timestamp`, after Segment's skew correction): a deque sorted by time, pruned to
//! `(newest − W, newest]`, so all it holds fits in one window. When it holds more than `N`
//! (events, or distinct users for `ip_many_users`) the rule fires at once:
//!
//! - `window_start` = time of the oldest event in the deque (the start of the burst),
//!   `window_end = window_start + W`, `count` = what the deque holds (N + 1 when it fires as the
//!   threshold is crossed), first/last event ids = oldest/newest by time;
//! - the deque is cleared and the subject is in **cooldown** until `window_end`: events with a
//!   time before it are ignored by this rule. The next alert of the subject needs N + 1 fresh
//!   events at or after `window_end`, so one burst raises one alert, and a sustained attack one
//!   per window.
//!
//! An event older than `newest − W` for its subject (late, out of order) is too late for any
//! window still open and is ignored by the windowed rules (counted in `FraudStats::late`).
//!
//! `window_start` comes from event data only (no wall clock), and a user's events are in one
//! shard in a fixed order, so replaying the same entries gives the same alert key
//! `(source, rule, subject, window_start)`.
//!
//! ## `clock_skew`
//! Per event: `sent_at − received_at` (the client's clock, when `sent_at` is present), then
//! `timestamp − received_at` (the corrected event time: the event's age by the client's own
//! clock when it sent both times, else its raw `timestamp`) must lie within
//! `[−max_past, +max_future]`. The first skewed event of a subject (user key, else IP) fires with
//! `window_start = received_at`, `window_end = received_at + cooldown`; later skewed events of
//! that subject with `received_at` before `window_end` raise nothing.
//!
//! ## Restart
//! [`Detector::replay`] fills the windows without evaluating (the entries before the committed
//! positions), [`Detector::seed`] restores a cooldown from a committed alert; evaluation then
//! prunes what a cooldown covers, which leaves exactly the state an uninterrupted run had.
//!
//! ## Memory
//! A subject's deque never holds more than N + 1 entries (it fires and clears past N). Subjects
//! not seen for longer than their rule needs (by `received_at`, the server's clock) are dropped
//! by [`Detector::maintain`]; past `max_subjects` the least recently seen go (counted in
//! `FraudStats::evicted`).
//!
//! An event's id is kept once however many windows hold it, in a slot of [`Ids`] (40 bytes, no
//! allocation for ids up to 38 bytes) with a count of the windows holding it; a window entry is
//! its time and slot number, 12 bytes. (With an `Arc<str>` per event and a 24-byte entry per
//! window, ids and entries were ~65 MB of the windows' ~78 MB at 50,000 events/s.) A subject
//! keeps up to two entries in place and allocates only past that: with many users, most
//! `name_burst` subjects hold one or two events. Subjects sit in chunks of slots found through
//! a table of 4-byte slot numbers ([`Table`]), not in a hash map's buckets. The `fraud_memory`
//! example at 50,000 events/s from 50,000 users (600,000 subjects): RSS peak 214 MB with
//! `VecDeque`s in a `HashMap`, 192 with the entries in place, 139 with the table; from 5,000
//! users (65,000 subjects) 61, 59, 54 MB. A window's buffer shrinks again once it is a quarter
//! full ([`fit`]), so the windows hold what is in them, not the most they ever held.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use hashbrown::HashTable;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use sluice_core::rfc3339;
use sluice_core::warehouse::Alert;
use sluice_core::Event;
use smallvec::SmallVec;

use super::config::FraudConfig;

pub const USER_RATE: &str = "user_rate";
pub const IP_MANY_USERS: &str = "ip_many_users";
pub const NAME_BURST: &str = "name_burst";
pub const CLOCK_SKEW: &str = "clock_skew";

/// How many observed events between two idle sweeps.
const SWEEP_EVERY: u64 = 200_000;
/// Evicting for the cap goes this far below it, so it does not run on every batch.
const EVICT_TO: f64 = 0.9;

/// Counters of the fraud processor, read by `/metrics` and tests.
#[derive(Debug, Default)]
pub struct FraudStats {
    /// Subjects held in memory now (all rules).
    pub subjects: AtomicU64,
    /// Subjects evicted because `max_subjects` was reached (least recently seen first).
    pub evicted: AtomicU64,
    /// Subjects dropped because they were idle past their windows (no state lost).
    pub expired: AtomicU64,
    /// Alerts newly stored (duplicates of stored alerts not counted).
    pub alerts: AtomicU64,
    /// Events ignored by a windowed rule because they were older than the subject's window.
    pub late: AtomicU64,
    /// Entries skipped because their effects were already committed (redelivery).
    pub redelivered: AtomicU64,
    /// Events re-read from the log to rebuild the windows at start.
    pub rebuilt: AtomicU64,
}

/// What the rules read of an event: the canonical event's identity, times and subjects, without
/// its `properties`/`traits`/`integrations` (decoding those into JSON trees is most of the cost of
/// [`Event::from_json`], and no rule looks at them).
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub event_id: String,
    pub source: String,
    pub name: Option<String>,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    /// `context.ip` when it is a string.
    pub ip: Option<String>,
    pub timestamp: DateTime<Utc>,
    pub original_timestamp: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
}

/// The canonical event's wire format (`docs/log-format.md`), only the fields [`Signal`] keeps;
/// serde skips the others without building values.
#[derive(Deserialize)]
struct Wire<'a> {
    event_id: String,
    source: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    anonymous_id: Option<String>,
    #[serde(deserialize_with = "rfc3339::deserialize")]
    timestamp: DateTime<Utc>,
    #[serde(default, deserialize_with = "rfc3339::deserialize_option")]
    original_timestamp: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "rfc3339::deserialize_option")]
    sent_at: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "rfc3339::deserialize")]
    received_at: DateTime<Utc>,
    #[serde(default, borrow)]
    context: Option<WireContext<'a>>,
}

#[derive(Deserialize)]
struct WireContext<'a> {
    /// Raw, so that a non-string `ip` from a foreign producer is ignored rather than an error.
    #[serde(default, borrow)]
    ip: Option<&'a RawValue>,
}

impl Signal {
    /// Decode a log entry's payload (the canonical event JSON).
    pub fn from_json(bytes: &[u8]) -> Result<Signal, serde_json::Error> {
        let w: Wire<'_> = serde_json::from_slice(bytes)?;
        let ip = w
            .context
            .and_then(|c| c.ip)
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
        Ok(Signal {
            event_id: w.event_id,
            source: w.source,
            name: w.name,
            user_id: w.user_id,
            anonymous_id: w.anonymous_id,
            ip,
            timestamp: w.timestamp,
            original_timestamp: w.original_timestamp,
            sent_at: w.sent_at,
            received_at: w.received_at,
        })
    }

    /// `user_id`, else `anonymous_id` (as [`Event::user_key`]).
    pub fn user_key(&self) -> Option<&str> {
        self.user_id.as_deref().or(self.anonymous_id.as_deref())
    }

    pub fn ip(&self) -> Option<&str> {
        self.ip.as_deref()
    }
}

impl From<&Event> for Signal {
    fn from(e: &Event) -> Signal {
        Signal {
            event_id: e.event_id.clone(),
            source: e.source.clone(),
            name: e.name.clone(),
            user_id: e.user_id.clone(),
            anonymous_id: e.anonymous_id.clone(),
            ip: e.ip(),
            timestamp: e.timestamp,
            original_timestamp: e.original_timestamp,
            sent_at: e.sent_at,
            received_at: e.received_at,
        }
    }
}

/// Hash maps of subjects: foldhash (randomly seeded per process) instead of SipHash; several
/// lookups per event make the hasher a visible share of the processor's CPU.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Text for the warehouse: PostgreSQL refuses NUL in `text`.
fn clean(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{fffd}")
    } else {
        s.to_owned()
    }
}

/// Per-subject state of a windowed rule.
trait SubjectState {
    fn touched(&self) -> u64;
    fn set_cooldown(&mut self, until: i64);
    /// Let go of every event id held (the state is cleared, or about to be dropped).
    fn release(&mut self, ids: &mut Ids);
}

/// A slot of [`Ids`]: an id of up to [`INLINE`] bytes in place, a longer one in `Ids::long`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Windows holding the id; 0 = free.
    holders: u8,
    /// Bytes in `text`, or [`LONG`].
    len: u8,
    text: [u8; INLINE],
}

const INLINE: usize = 38;
const LONG: u8 = u8::MAX;

impl Default for Slot {
    fn default() -> Slot {
        Slot {
            holders: 0,
            len: 0,
            text: [0; INLINE],
        }
    }
}

/// Slots are allocated this many at a time (a chunk never moves, so growing copies nothing).
const CHUNK: usize = 4096;

/// Values by slot number, in chunks of [`CHUNK`] allocated as needed; a slot given back is
/// handed out again, lowest first. (u32 slot numbers: 4 billion id slots would be 160 GB.)
struct Slab<T> {
    chunks: Vec<Box<[T]>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Slab<T> {
        Slab {
            chunks: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Default> Slab<T> {
    /// A free slot's number (its value is `T::default()` or what the last user left).
    fn take(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            let base = self.chunks.len() * CHUNK;
            self.chunks
                .push(std::iter::repeat_with(T::default).take(CHUNK).collect());
            self.free
                .extend((base as u32 + 1..(base + CHUNK) as u32).rev());
            base as u32
        })
    }

    fn give_back(&mut self, at: u32) {
        self.free.push(at);
    }

    fn get(&self, at: u32) -> &T {
        &self.chunks[at as usize / CHUNK][at as usize % CHUNK]
    }

    fn get_mut(&mut self, at: u32) -> &mut T {
        &mut self.chunks[at as usize / CHUNK][at as usize % CHUNK]
    }

    /// Slots allocated, free or not.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// Every slot, free or not.
    fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// Let go of every chunk (the caller holds nothing in them).
    fn clear(&mut self) {
        self.chunks.clear();
        self.free.clear();
    }
}

/// The event ids the windows hold, each once, counted by the windows holding it. Every window
/// entry, and every `ip_many_users` user, holds its id's slot until it is dropped; then the slot
/// is reused.
#[derive(Default)]
struct Ids {
    slots: Slab<Slot>,
    long: Map<u32, Box<str>>,
    live: usize,
}

impl Ids {
    fn slot(&self, at: u32) -> &Slot {
        self.slots.get(at)
    }

    fn slot_mut(&mut self, at: u32) -> &mut Slot {
        self.slots.get_mut(at)
    }

    /// Store `id` with one holder.
    fn add(&mut self, id: &str) -> u32 {
        let at = self.slots.take();
        let slot = self.slot_mut(at);
        slot.holders = 1;
        if id.len() <= INLINE {
            slot.len = id.len() as u8;
            slot.text[..id.len()].copy_from_slice(id.as_bytes());
        } else {
            slot.len = LONG;
            self.long.insert(at, id.into());
        }
        self.live += 1;
        at
    }

    fn hold(&mut self, at: u32) {
        let slot = self.slot_mut(at);
        debug_assert!(slot.holders > 0, "holding a free slot");
        slot.holders = slot.holders.saturating_add(1);
    }

    fn release(&mut self, at: u32) {
        let slot = self.slot_mut(at);
        debug_assert!(slot.holders > 0, "releasing a free slot");
        slot.holders = slot.holders.saturating_sub(1);
        if slot.holders == 0 {
            if slot.len == LONG {
                self.long.remove(&at);
            }
            self.slots.give_back(at);
            self.live -= 1;
        }
    }

    fn get(&self, at: u32) -> &str {
        let slot = self.slot(at);
        if slot.len == LONG {
            return self.long.get(&at).map_or("", |id| id);
        }
        // Always the bytes of a `&str` cut at its end.
        std::str::from_utf8(&slot.text[..usize::from(slot.len)]).unwrap_or("")
    }
}

/// The current event's id: stored when the first window keeps it, then held by every window
/// that does. It holds the slot itself too until [`EventId::done`], so that a window firing
/// (and letting go of its entries, this event's among them) cannot free it in between.
struct EventId<'e> {
    text: &'e str,
    at: Option<u32>,
}

impl EventId<'_> {
    fn hold(&mut self, ids: &mut Ids) -> u32 {
        let at = *self.at.get_or_insert_with(|| ids.add(self.text));
        ids.hold(at);
        at
    }

    fn done(self, ids: &mut Ids) {
        if let Some(at) = self.at {
            ids.release(at);
        }
    }
}

/// A window entry: the event's time (µs) and its id's slot in [`Ids`]. Packed to 12 bytes: a
/// million entries at 50,000 events/s.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Entry {
    ts: i64,
    id: u32,
}

/// A subject's window entries, sorted by time: up to [`INLINE_ENTRIES`] in place, more on the
/// heap. With many users most `name_burst` subjects (a user × an event name) hold one or two
/// events in their window, and an allocation each was most of their memory.
type Entries = SmallVec<[Entry; INLINE_ENTRIES]>;
const INLINE_ENTRIES: usize = 2;

/// Give a window's buffer back down to its size once it is at most a quarter full. A subject's
/// window fills up to its threshold and empties when it fires or goes quiet; kept at its
/// largest, every subject's buffer crept up to the most it ever held, and the windows grew for
/// as long as the run (`fraud_memory`, 5,000 users at 50,000 events/s: RSS 57 MB at 60 s, 64 at
/// 200 s, 68 at 600 s, with the same ~559,000 ids held; 53 MB throughout with this, for ~6 %
/// more of the detector's CPU). The quarter keeps a window that hovers around one size from
/// reallocating at each event.
fn fit<A: smallvec::Array>(buffer: &mut SmallVec<A>) {
    if buffer.spilled() && buffer.len() * 4 <= buffer.capacity() {
        buffer.shrink_to_fit();
    }
}

/// The events of one subject within its window (`user_rate`, `name_burst`).
#[derive(Debug)]
struct Burst {
    /// Sorted by time. At most `N + 1` (the threshold), so dropping from the front by moving
    /// the rest is cheap.
    events: Entries,
    newest: i64,
    cooldown_until: i64,
    last_received: i64,
    touched: u64,
}

/// What a rule found when it fired.
struct Fired {
    start: i64,
    count: u64,
    first_id: String,
    last_id: String,
}

impl Burst {
    fn new() -> Burst {
        Burst {
            events: Entries::new(),
            newest: i64::MIN,
            cooldown_until: i64::MIN,
            last_received: i64::MIN,
            touched: 0,
        }
    }

    /// Add an event; with `evaluate`, fire when more than `n` fit in the window `w`.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        ts: i64,
        id: &mut EventId<'_>,
        ids: &mut Ids,
        w: i64,
        n: usize,
        evaluate: bool,
        stats: &FraudStats,
    ) -> Option<Fired> {
        if ts < self.cooldown_until {
            // Still moves `newest`, as replaying it (cooldown not known yet) does.
            self.newest = self.newest.max(ts);
            return None;
        }
        if self.newest != i64::MIN && ts <= self.newest.saturating_sub(w) {
            stats.late.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let entry = Entry {
            ts,
            id: id.hold(ids),
        };
        // Events mostly arrive in time order: append, else insert in place.
        if self.events.last().is_none_or(|e| { e.ts } <= ts) {
            self.events.push(entry);
        } else {
            let at = self.events.partition_point(|e| { e.ts } <= ts);
            self.events.insert(at, entry);
        }
        self.newest = self.newest.max(ts);
        let floor = self.newest.saturating_sub(w);
        let stale = self
            .events
            .iter()
            .take_while(|e| { e.ts } <= floor || { e.ts } < self.cooldown_until)
            .count();
        self.drop_front(stale, ids);
        if evaluate && self.events.len() > n {
            let (first, last) = (*self.events.first()?, *self.events.last()?);
            let fired = Fired {
                start: first.ts,
                count: self.events.len() as u64,
                first_id: ids.get(first.id).to_owned(),
                last_id: ids.get(last.id).to_owned(),
            };
            self.cooldown_until = fired.start.saturating_add(w);
            self.release(ids);
            return Some(fired);
        }
        // Replaying: an uninterrupted run fired and cleared past `n`; keep only the newest
        // `n + 1`, which is all evaluation can need once the cooldown is seeded.
        self.drop_front(self.events.len().saturating_sub(n + 1), ids);
        None
    }

    /// Drop the `k` oldest entries.
    fn drop_front(&mut self, k: usize, ids: &mut Ids) {
        if k > 0 {
            for e in self.events.drain(..k) {
                ids.release(e.id);
            }
            fit(&mut self.events);
        }
    }
}

impl SubjectState for Burst {
    fn touched(&self) -> u64 {
        self.touched
    }
    fn set_cooldown(&mut self, until: i64) {
        self.cooldown_until = self.cooldown_until.max(until);
    }
    fn release(&mut self, ids: &mut Ids) {
        for e in self.events.drain(..) {
            ids.release(e.id);
        }
        fit(&mut self.events);
    }
}

/// The distinct users of one IP within its window: `(user, latest time µs, its event id's slot)`.
#[derive(Debug)]
struct Crowd {
    users: Vec<(Box<str>, i64, u32)>,
    newest: i64,
    cooldown_until: i64,
    last_received: i64,
    touched: u64,
}

impl Crowd {
    fn new() -> Crowd {
        Crowd {
            users: Vec::new(),
            newest: i64::MIN,
            cooldown_until: i64::MIN,
            last_received: i64::MIN,
            touched: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        ts: i64,
        user: &str,
        id: &mut EventId<'_>,
        ids: &mut Ids,
        w: i64,
        n: usize,
        evaluate: bool,
        stats: &FraudStats,
    ) -> Option<Fired> {
        if ts < self.cooldown_until {
            self.newest = self.newest.max(ts);
            return None;
        }
        if self.newest != i64::MIN && ts <= self.newest.saturating_sub(w) {
            stats.late.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match self.users.iter_mut().find(|(u, _, _)| &**u == user) {
            Some(seen) => {
                if ts >= seen.1 {
                    seen.1 = ts;
                    let old = std::mem::replace(&mut seen.2, id.hold(ids));
                    ids.release(old);
                }
            }
            None => self.users.push((user.into(), ts, id.hold(ids))),
        }
        self.newest = self.newest.max(ts);
        let floor = self.newest.saturating_sub(w);
        let cooldown = self.cooldown_until;
        self.users.retain(|&(_, t, at)| {
            let keep = t > floor && t >= cooldown;
            if !keep {
                ids.release(at);
            }
            keep
        });
        if evaluate && self.users.len() > n {
            let first = self.users.iter().min_by_key(|(_, t, _)| *t)?;
            let last = self.users.iter().max_by_key(|(_, t, _)| *t)?;
            let fired = Fired {
                start: first.1,
                count: self.users.len() as u64,
                first_id: ids.get(first.2).to_owned(),
                last_id: ids.get(last.2).to_owned(),
            };
            self.cooldown_until = fired.start.saturating_add(w);
            self.release(ids);
            return Some(fired);
        }
        while self.users.len() > n + 1 {
            if let Some(oldest) = (0..self.users.len()).min_by_key(|&i| self.users[i].1) {
                let (_, _, at) = self.users.swap_remove(oldest);
                ids.release(at);
            }
        }
        None
    }
}

impl SubjectState for Crowd {
    fn touched(&self) -> u64 {
        self.touched
    }
    fn set_cooldown(&mut self, until: i64) {
        self.cooldown_until = self.cooldown_until.max(until);
    }
    fn release(&mut self, ids: &mut Ids) {
        for (_, _, at) in self.users.drain(..) {
            ids.release(at);
        }
    }
}

/// `clock_skew` keeps only a cooldown per subject (server time, `received_at`).
#[derive(Debug)]
struct Skew {
    cooldown_until: i64,
    last_received: i64,
    touched: u64,
}

impl SubjectState for Skew {
    fn touched(&self) -> u64 {
        self.touched
    }
    fn set_cooldown(&mut self, until: i64) {
        self.cooldown_until = self.cooldown_until.max(until);
    }
    fn release(&mut self, _: &mut Ids) {}
}

/// Subjects of one rule, by source then subject (lookups by `&str`, no allocation).
struct Subjects<S> {
    by_source: Map<Box<str>, Table<S>>,
    len: usize,
}

/// One source's subjects: kept in chunks that never move, found through a hash table of their
/// slot numbers. A hash map of the subjects themselves sized its buckets by the key and state
/// (80 bytes for a window) at a load of 44–88 %: with many users (600,000 `name_burst` subjects
/// at 50,000 events/s from 50,000 users) its bucket array alone was ~84 MB; here a bucket is
/// 4 bytes and a subject takes its slot once.
struct Table<S> {
    index: HashTable<u32>,
    /// A subject's name and state, `None` when free.
    slots: Slab<Option<(Box<str>, S)>>,
    hasher: foldhash::fast::RandomState,
}

impl<S> Table<S> {
    fn new() -> Table<S> {
        Table {
            index: HashTable::new(),
            slots: Slab::default(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    /// The subject's state, created by `new` when absent; whether it was created.
    fn get_or_insert(&mut self, subject: &str, new: impl FnOnce() -> S) -> (&mut S, bool) {
        let hash = self.hasher.hash_one(subject);
        let slots = &self.slots;
        let found = self.index.find(hash, |&at| {
            slots.get(at).as_ref().is_some_and(|(k, _)| &**k == subject)
        });
        let (at, created) = match found {
            Some(&at) => (at, false),
            None => {
                let at = self.slots.take();
                *self.slots.get_mut(at) = Some((subject.into(), new()));
                let (slots, hasher) = (&self.slots, &self.hasher);
                self.index.insert_unique(hash, at, |&at| {
                    slots
                        .get(at)
                        .as_ref()
                        .map_or(0, |(k, _)| hasher.hash_one(&**k))
                });
                (at, true)
            }
        };
        let (_, state) = self
            .slots
            .get_mut(at)
            .as_mut()
            .expect("an indexed slot holds its subject");
        (state, created)
    }

    /// Keep the subjects `keep` accepts; `gone` sees the others before they are dropped.
    fn retain(&mut self, mut keep: impl FnMut(&S) -> bool, mut gone: impl FnMut(&mut S)) {
        let slots = &mut self.slots;
        self.index.retain(|&mut at| {
            let slot = slots.get_mut(at);
            let kept = slot.as_ref().is_some_and(|(_, s)| keep(s));
            if !kept {
                if let Some((_, s)) = slot.as_mut() {
                    gone(s);
                }
                *slot = None;
                slots.give_back(at);
            }
            kept
        });
        if self.index.is_empty() {
            // Nothing held: give the chunks back rather than keep a past peak's worth.
            self.slots.clear();
        }
    }

    fn states(&self) -> impl Iterator<Item = &S> + '_ {
        self.slots.iter().flatten().map(|(_, s)| s)
    }
}

impl<S: SubjectState> Subjects<S> {
    fn new() -> Subjects<S> {
        Subjects {
            by_source: Map::default(),
            len: 0,
        }
    }

    fn get_or_insert(&mut self, source: &str, subject: &str, new: impl FnOnce() -> S) -> &mut S {
        if !self.by_source.contains_key(source) {
            self.by_source.insert(source.into(), Table::new());
        }
        let table = self.by_source.get_mut(source).expect("inserted just above");
        let (state, created) = table.get_or_insert(subject, new);
        if created {
            self.len += 1;
        }
        state
    }

    /// Keep the subjects `keep` accepts (the others let go of their ids); returns how many went.
    fn retain(&mut self, ids: &mut Ids, keep: impl FnMut(&S) -> bool + Copy) -> usize {
        let before = self.len;
        for table in self.by_source.values_mut() {
            table.retain(keep, |s| s.release(ids));
        }
        self.by_source.retain(|_, t| t.len() > 0);
        self.len = self.by_source.values().map(Table::len).sum();
        before - self.len
    }

    fn states(&self) -> impl Iterator<Item = &S> + '_ {
        self.by_source.values().flat_map(Table::states)
    }

    fn touched(&self) -> impl Iterator<Item = u64> + '_ {
        self.states().map(SubjectState::touched)
    }
}

/// Every rule's windows.
pub struct Detector {
    config: FraudConfig,
    names: HashSet<String>,
    user_rate: Subjects<Burst>,
    name_burst: Subjects<Burst>,
    ip: Subjects<Crowd>,
    skew: Subjects<Skew>,
    /// The event ids the windows hold.
    ids: Ids,
    /// Logical clock for "least recently seen": one tick per event.
    tick: u64,
    /// Newest `received_at` seen (µs): the server-time clock idle subjects are measured by.
    watermark: i64,
    since_sweep: u64,
    /// Reused buffer for `name_burst` subjects.
    scratch: String,
    stats: Arc<FraudStats>,
}

impl Detector {
    pub fn new(config: FraudConfig, stats: Arc<FraudStats>) -> Detector {
        let names = config.name_burst.names.iter().cloned().collect();
        stats.subjects.store(0, Ordering::Relaxed);
        Detector {
            config,
            names,
            user_rate: Subjects::new(),
            name_burst: Subjects::new(),
            ip: Subjects::new(),
            skew: Subjects::new(),
            ids: Ids::default(),
            tick: 0,
            watermark: i64::MIN,
            since_sweep: 0,
            scratch: String::new(),
            stats,
        }
    }

    pub fn config(&self) -> &FraudConfig {
        &self.config
    }

    /// Subjects held now, all rules.
    pub fn subjects(&self) -> usize {
        self.user_rate.len + self.name_burst.len + self.ip.len + self.skew.len
    }

    /// Distinct event ids the windows hold now.
    pub fn held_ids(&self) -> usize {
        self.ids.live
    }

    /// Recount who holds each id slot and compare with the slots' own counts (tests).
    #[cfg(test)]
    pub(super) fn check_ids(&self) -> Result<(), String> {
        let mut held: Map<u32, u8> = Map::default();
        let mut count = |at: u32| *held.entry(at).or_default() += 1;
        for b in self.user_rate.states().chain(self.name_burst.states()) {
            b.events.iter().for_each(|e| count(e.id));
        }
        for c in self.ip.states() {
            c.users.iter().for_each(|u| count(u.2));
        }
        let slots = self.ids.slots.capacity();
        for at in 0..slots as u32 {
            let slot = self.ids.slot(at);
            let want = held.get(&at).copied().unwrap_or(0);
            if slot.holders != want {
                return Err(format!(
                    "slot {at}: its count says {} holders, {want} windows hold it",
                    slot.holders
                ));
            }
            if (slot.holders > 0 && slot.len == LONG) != self.ids.long.contains_key(&at) {
                return Err(format!("slot {at}: long id out of step"));
            }
        }
        let free: HashSet<u32> = self.ids.slots.free.iter().copied().collect();
        if held.len() != self.ids.live
            || free.len() + self.ids.live != slots
            || free.len() != self.ids.slots.free.len()
        {
            return Err(format!(
                "{} ids held, {} live, {} free of {slots}",
                held.len(),
                self.ids.live,
                self.ids.slots.free.len()
            ));
        }
        if held.keys().any(|at| free.contains(at)) {
            return Err("a held slot is on the free list".into());
        }
        Ok(())
    }

    /// Evaluate one event: update its windows and push the alerts it raises.
    pub fn observe(&mut self, event: &Signal, now: DateTime<Utc>, out: &mut Vec<Alert>) {
        self.apply(event, Some((now, out)));
    }

    /// Put an event into its windows without evaluating any rule (rebuild at start).
    pub fn replay(&mut self, event: &Signal) {
        self.apply(event, None);
    }

    /// Restore the cooldown a committed alert implies.
    pub fn seed(&mut self, alert: &Alert) {
        let until = micros(alert.window_end);
        let tick = self.tick;
        let (source, subject) = (alert.source.as_str(), alert.subject.as_str());
        match alert.rule.as_str() {
            USER_RATE => self
                .user_rate
                .get_or_insert(source, subject, || Burst {
                    touched: tick,
                    ..Burst::new()
                })
                .set_cooldown(until),
            NAME_BURST => self
                .name_burst
                .get_or_insert(source, subject, || Burst {
                    touched: tick,
                    ..Burst::new()
                })
                .set_cooldown(until),
            IP_MANY_USERS => self
                .ip
                .get_or_insert(source, subject, || Crowd {
                    touched: tick,
                    ..Crowd::new()
                })
                .set_cooldown(until),
            CLOCK_SKEW => self
                .skew
                .get_or_insert(source, subject, || Skew {
                    cooldown_until: i64::MIN,
                    last_received: i64::MIN,
                    touched: tick,
                })
                .set_cooldown(until),
            _ => {}
        }
        self.stats
            .subjects
            .store(self.subjects() as u64, Ordering::Relaxed);
    }

    fn apply(&mut self, e: &Signal, mut eval: Option<(DateTime<Utc>, &mut Vec<Alert>)>) {
        self.tick += 1;
        self.since_sweep += 1;
        let tick = self.tick;
        let ts = micros(e.timestamp);
        let received = micros(e.received_at);
        self.watermark = self.watermark.max(received);
        let evaluate = eval.is_some();
        let user = e.user_key();
        let stats = self.stats.clone();
        let mut id = EventId {
            text: &e.event_id,
            at: None,
        };

        if let (true, Some(user)) = (self.config.user_rate.enabled, user) {
            let rule = &self.config.user_rate;
            let state = self.user_rate.get_or_insert(&e.source, user, Burst::new);
            state.touched = tick;
            state.last_received = state.last_received.max(received);
            let fired = state.add(
                ts,
                &mut id,
                &mut self.ids,
                window_us(rule.window_secs),
                rule.threshold as usize,
                evaluate,
                &stats,
            );
            if let (Some(f), Some((now, out))) = (fired, eval.as_mut()) {
                out.push(alert(
                    e,
                    USER_RATE,
                    user,
                    f,
                    window_us(rule.window_secs),
                    *now,
                    json!({
                        "threshold": rule.threshold,
                        "window_secs": rule.window_secs,
                    }),
                ));
            }
        }

        if let (true, Some(user), Some(name)) =
            (self.config.name_burst.enabled, user, e.name.as_deref())
        {
            if self.names.is_empty() || self.names.contains(name) {
                let rule = &self.config.name_burst;
                // The subject `user/name`, built in a reused buffer (no allocation per event).
                let mut subject = std::mem::take(&mut self.scratch);
                subject.clear();
                let _ = write!(subject, "{user}/{name}");
                let state = self
                    .name_burst
                    .get_or_insert(&e.source, &subject, Burst::new);
                state.touched = tick;
                state.last_received = state.last_received.max(received);
                let fired = state.add(
                    ts,
                    &mut id,
                    &mut self.ids,
                    window_us(rule.window_secs),
                    rule.threshold as usize,
                    evaluate,
                    &stats,
                );
                if let (Some(f), Some((now, out))) = (fired, eval.as_mut()) {
                    out.push(alert(
                        e,
                        NAME_BURST,
                        &subject,
                        f,
                        window_us(rule.window_secs),
                        *now,
                        json!({
                            "threshold": rule.threshold,
                            "window_secs": rule.window_secs,
                            "user": clean(user),
                            "name": clean(name),
                        }),
                    ));
                }
                self.scratch = subject;
            }
        }

        let watched_ip = e.ip().filter(|ip| self.config.ip_many_users.watches(ip));
        if let (true, Some(user), Some(ip)) = (self.config.ip_many_users.enabled, user, watched_ip)
        {
            let rule = &self.config.ip_many_users;
            let state = self.ip.get_or_insert(&e.source, ip, Crowd::new);
            state.touched = tick;
            state.last_received = state.last_received.max(received);
            let fired = state.add(
                ts,
                user,
                &mut id,
                &mut self.ids,
                window_us(rule.window_secs),
                rule.threshold as usize,
                evaluate,
                &stats,
            );
            if let (Some(f), Some((now, out))) = (fired, eval.as_mut()) {
                out.push(alert(
                    e,
                    IP_MANY_USERS,
                    ip,
                    f,
                    window_us(rule.window_secs),
                    *now,
                    json!({
                        "threshold": rule.threshold,
                        "window_secs": rule.window_secs,
                    }),
                ));
            }
        }

        if self.config.clock_skew.enabled && evaluate {
            if let (Some(subject), Some((check, offset))) =
                (user.or(e.ip()), skew_of(e, &self.config))
            {
                let cooldown = window_us(self.config.clock_skew.cooldown_secs);
                let state = self.skew.get_or_insert(&e.source, subject, || Skew {
                    cooldown_until: i64::MIN,
                    last_received: i64::MIN,
                    touched: tick,
                });
                state.touched = tick;
                state.last_received = state.last_received.max(received);
                if received >= state.cooldown_until {
                    state.cooldown_until = received.saturating_add(cooldown);
                    if let Some((now, out)) = eval.as_mut() {
                        let rule = &self.config.clock_skew;
                        out.push(alert(
                            e,
                            CLOCK_SKEW,
                            subject,
                            Fired {
                                start: received,
                                count: 1,
                                first_id: e.event_id.clone(),
                                last_id: e.event_id.clone(),
                            },
                            cooldown,
                            *now,
                            json!({
                                "check": check,
                                "offset_secs": offset as f64 / 1e6,
                                "max_past_secs": rule.max_past_secs,
                                "max_future_secs": rule.max_future_secs,
                                "timestamp": e.timestamp,
                                "original_timestamp": e.original_timestamp,
                                "sent_at": e.sent_at,
                                "received_at": e.received_at,
                            }),
                        ));
                    }
                }
            }
        }
        id.done(&mut self.ids);
    }

    /// Drop idle subjects (every so many events) and enforce `max_subjects`. Call between
    /// batches.
    pub fn maintain(&mut self) {
        let max = self.config.max_subjects;
        if self.since_sweep >= SWEEP_EVERY || self.subjects() > max {
            self.since_sweep = 0;
            let slack = window_us(self.config.rebuild_slack_secs);
            let keep = |secs: u64| self.watermark.saturating_sub(window_us(secs) + slack);
            let (ur, nb, ip, sk) = (
                keep(self.config.user_rate.window_secs),
                keep(self.config.name_burst.window_secs),
                keep(self.config.ip_many_users.window_secs),
                keep(self.config.clock_skew.cooldown_secs),
            );
            let ids = &mut self.ids;
            let expired = self.user_rate.retain(ids, |s| s.last_received >= ur)
                + self.name_burst.retain(ids, |s| s.last_received >= nb)
                + self.ip.retain(ids, |s| s.last_received >= ip)
                + self.skew.retain(ids, |s| s.last_received >= sk);
            self.stats
                .expired
                .fetch_add(expired as u64, Ordering::Relaxed);
        }
        let total = self.subjects();
        if total > max {
            // Least recently seen first: the tick below which subjects go.
            let target = ((max as f64) * EVICT_TO) as usize;
            let mut ticks: Vec<u64> = self
                .user_rate
                .touched()
                .chain(self.name_burst.touched())
                .chain(self.ip.touched())
                .chain(self.skew.touched())
                .collect();
            let drop = total - target;
            let (_, cut, _) = ticks.select_nth_unstable(drop.saturating_sub(1));
            let cut = *cut;
            let ids = &mut self.ids;
            let evicted = self.user_rate.retain(ids, |s| s.touched() > cut)
                + self.name_burst.retain(ids, |s| s.touched() > cut)
                + self.ip.retain(ids, |s| s.touched() > cut)
                + self.skew.retain(ids, |s| s.touched() > cut);
            self.stats
                .evicted
                .fetch_add(evicted as u64, Ordering::Relaxed);
        }
        self.stats
            .subjects
            .store(self.subjects() as u64, Ordering::Relaxed);
    }
}

fn window_us(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

/// Which `clock_skew` check an event fails, and by how much (µs, positive = future).
pub fn skew_of(e: &Signal, config: &FraudConfig) -> Option<(&'static str, i64)> {
    let rule = &config.clock_skew;
    let past = window_us(rule.max_past_secs);
    let future = window_us(rule.max_future_secs);
    let received = micros(e.received_at);
    let off = |t: DateTime<Utc>| micros(t).saturating_sub(received);
    let outside = |d: i64| d > future || d < -past;
    if let Some(sent) = e.sent_at {
        let d = off(sent);
        if outside(d) {
            return Some(("sent_at", d));
        }
    }
    let d = off(e.timestamp);
    outside(d).then_some(("timestamp", d))
}

fn alert(
    e: &Signal,
    rule: &str,
    subject: &str,
    f: Fired,
    w: i64,
    now: DateTime<Utc>,
    details: serde_json::Value,
) -> Alert {
    Alert {
        source: clean(&e.source),
        rule: rule.to_owned(),
        subject: clean(subject),
        window_start: time(f.start),
        window_end: time(f.start.saturating_add(w)),
        count: f.count,
        first_event_id: clean(&f.first_id),
        last_event_id: clean(&f.last_id),
        created_at: now,
        details,
    }
}

#[cfg(test)]
mod table_tests {
    use super::{Table, CHUNK};

    #[test]
    fn subjects_are_found_dropped_and_their_slots_reused() {
        let mut t: Table<u32> = Table::new();
        let n = CHUNK as u32 + 100;
        for i in 0..n {
            let (state, created) = t.get_or_insert(&format!("s{i}"), || i);
            assert!(created && *state == i);
        }
        assert_eq!((t.len(), t.slots.capacity()), (n as usize, 2 * CHUNK));
        // Every one found again, with its own state.
        for i in 0..n {
            let (state, created) = t.get_or_insert(&format!("s{i}"), || u32::MAX);
            assert!(!created && *state == i, "s{i}");
        }
        let mut gone = Vec::new();
        t.retain(|&s| s % 2 == 0, |s| gone.push(*s));
        assert_eq!(gone.len(), n as usize / 2);
        assert!(gone.iter().all(|s| s % 2 == 1));
        assert_eq!(t.states().count(), t.len());
        for i in 0..n {
            let (state, created) = t.get_or_insert(&format!("s{i}"), || u32::MAX);
            assert_eq!(created, i % 2 == 1, "s{i}");
            assert_eq!(*state, if i % 2 == 1 { u32::MAX } else { i });
        }
        // The dropped subjects' slots were taken again: no third chunk.
        assert_eq!((t.len(), t.slots.capacity()), (n as usize, 2 * CHUNK));
        t.retain(|_| false, |_| {});
        assert_eq!((t.len(), t.slots.capacity(), t.states().count()), (0, 0, 0));
        let (_, created) = t.get_or_insert("s0", || 7);
        assert!(created);
    }
}

#[cfg(test)]
mod window_tests {
    use super::{Burst, EventId, FraudStats, Ids, INLINE_ENTRIES};

    /// Add event `i` at time `ts` (µs) to a window of `w` µs with threshold `n`.
    fn add(b: &mut Burst, ids: &mut Ids, i: usize, ts: i64, w: i64, n: usize) -> bool {
        let text = format!("e{i}");
        let mut id = EventId {
            text: &text,
            at: None,
        };
        let fired = b.add(ts, &mut id, ids, w, n, true, &FraudStats::default());
        id.done(ids);
        fired.is_some()
    }

    #[test]
    fn a_window_gives_its_buffer_back_when_it_empties() {
        let (mut b, mut ids) = (Burst::new(), Ids::default());
        // 100 events within the window: it holds them all, then fires on the 101st.
        for i in 0..100 {
            assert!(!add(&mut b, &mut ids, i, i as i64, 10_000_000, 100));
        }
        assert!(b.events.spilled() && b.events.capacity() >= 100);
        assert!(add(&mut b, &mut ids, 100, 100, 10_000_000, 100));
        assert_eq!(b.events.len(), 0);
        assert!(
            !b.events.spilled(),
            "an emptied window kept {}",
            b.events.capacity()
        );
        assert_eq!(ids.live, 0);

        // Pruned by time: 64 events, then one far later leaves one in the window.
        let mut b = Burst::new();
        for i in 0..64 {
            add(&mut b, &mut ids, i, i as i64, 1_000, 100);
        }
        assert!(b.events.capacity() >= 64);
        add(&mut b, &mut ids, 64, 1_000_000, 1_000, 100);
        assert_eq!(b.events.len(), 1);
        assert!(
            b.events.capacity() <= INLINE_ENTRIES,
            "{}",
            b.events.capacity()
        );
        assert_eq!(ids.live, 1);
    }
}
