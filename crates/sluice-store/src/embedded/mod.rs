//! The embedded warehouse: SQLite (rusqlite, bundled) in the data directory, for the
//! single-binary mode. Same tables, same exactly-once `commit_batch`, same query results as the
//! PostgreSQL backend (see `docs/warehouse.md`, section "Embedded backend"). Parts:
//!
//! - this file: options, opening (data-directory lock, connections, pragmas), error mapping,
//!   the threading model and the `Warehouse` / `KeyStore` implementation;
//! - `sql`: every SQL statement;
//! - `migrate`: embedded migrations (`migrations/sqlite/*.sql`);
//! - `commit`: the one-transaction batch commit and alert commit;
//! - `ids`: the dedupe index and the user index (fjall), derived from `events`;
//! - `keys`: API keys;
//! - `query`: the query API's reads and the verification look-ups.
//!
//! Threading: rusqlite is blocking. One writer connection behind a mutex does every write, on
//! tokio's blocking pool; reads use a small pool of separate connections (WAL lets them read a
//! consistent snapshot while a commit is in progress), so a query never waits behind a commit.

mod commit;
mod ids;
mod keys;
mod migrate;
mod query;
mod sql;

#[cfg(feature = "testing")]
pub use ids::IndexLoad;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use sluice_core::keys::{KeyKind, KeyRecord};
use sluice_core::warehouse::{
    ActiveUsers, Alert, CommitOutcome, CountPoint, Interval, KeyStore, NameCount, ShardPosition,
    StoreError, TimeRange, UserRef, Warehouse,
};
use sluice_core::Event;
use tokio::sync::Semaphore;

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "warehouse.sqlite3";
/// File name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "warehouse.lock";
/// Directory of the dedupe and user indexes inside the data directory.
pub const ID_INDEX_DIR: &str = "warehouse-ids";

/// How hard a commit is pushed to disk (SQLite `PRAGMA synchronous`, in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit is fsynced before `commit_batch` returns: a committed batch survives a
    /// process crash and a power loss or OS crash.
    #[default]
    Full,
    /// The WAL is fsynced only at checkpoints: a committed batch survives a process crash
    /// (kill -9), but the last commits before a power loss or OS crash may be rolled back (the
    /// database stays consistent). Those batches were already acknowledged in the log, so they
    /// would be lost: use this only where that is acceptable. Faster.
    Normal,
}

impl Synchronous {
    fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

/// Settings of the embedded warehouse.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Durability of a commit; default [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// How long `(source, event_id)` is remembered for deduplication (default 7 days).
    pub dedupe_window: Duration,
    /// Delete raw events older than this many days in `maintain()`. `None` keeps everything.
    pub retention_days: Option<u32>,
    /// Read connections used at once (queries beyond that wait for a free one).
    pub readers: usize,
    /// How long a connection waits for a lock held by another connection before failing with a
    /// retryable error.
    pub busy_timeout: Duration,
    /// Refuse to grow the database file beyond about this many bytes (commits then fail with a
    /// retryable "disk full" error). `None`: as large as the disk allows.
    pub max_size_bytes: Option<u64>,
    /// Hold the data directory's lock so no other sluice process serves from it (default). Tools
    /// that only manage keys or read beside a running `sluice serve` open it shared: SQLite's
    /// own locking keeps their writes safe. A shared warehouse has no dedupe index (it belongs
    /// to the process holding the lock), so it cannot commit batches or run `maintain()`, and
    /// answers `stored_event_ids` and user queries by scanning `events`.
    pub exclusive: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            retention_days: None,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            max_size_bytes: None,
            exclusive: true,
        }
    }
}

/// The embedded `Warehouse` and `KeyStore`. Cheap to clone (connections are shared); the data
/// directory stays locked until the last clone is dropped.
#[derive(Clone)]
pub struct SqliteWarehouse {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order is drop order: the checkpointer stops, then connections close, then the
    // directory lock is released.
    _checkpointer: Checkpointer,
    writer: Arc<Mutex<Connection>>,
    /// Daily users known to be stored; locked only while holding `writer`.
    known_users: Arc<Mutex<commit::KnownUsers>>,
    /// The dedupe and user indexes (exclusive opens only); written only while holding
    /// `writer`, read by anyone (fjall is safe to share).
    ids: Option<Arc<ids::IdIndex>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    reader_permits: Semaphore,
    db_path: PathBuf,
    opts: SqliteOptions,
    _lock: Option<File>,
}

impl std::fmt::Debug for SqliteWarehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWarehouse")
            .field("db_path", &self.inner.db_path)
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

impl SqliteWarehouse {
    /// Open (creating if needed) the warehouse at `path` and apply pending migrations.
    ///
    /// `path` is a data directory (created if missing; the database is `DIR/warehouse.sqlite3`,
    /// locked through `DIR/warehouse.lock`), or a database file when it exists as a file or ends
    /// in `.sqlite3`, `.sqlite` or `.db` (locked through `FILE.lock`). A second process on the
    /// same directory gets a clear error instead of sharing it.
    pub async fn open(
        path: impl AsRef<Path>,
        opts: SqliteOptions,
    ) -> Result<SqliteWarehouse, StoreError> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || open_blocking(&path, opts))
            .await
            .map_err(join_error)?
    }

    /// Open from a URL `embedded:PATH` (also `embedded://PATH`), as the binary's `--store`.
    pub async fn from_url(url: &str, opts: SqliteOptions) -> Result<SqliteWarehouse, StoreError> {
        let path = parse_url(url)?;
        SqliteWarehouse::open(path, opts).await
    }

    /// Apply pending migrations (done by `open` already; idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.write(migrate::migrate).await
    }

    /// The database file.
    pub fn database_path(&self) -> &Path {
        &self.inner.db_path
    }

    /// The options this warehouse was opened with.
    pub fn options(&self) -> &SqliteOptions {
        &self.inner.opts
    }

    /// The dedupe index, or why there is none.
    fn id_index(&self) -> Result<Arc<ids::IdIndex>, StoreError> {
        self.inner.ids.clone().ok_or_else(|| {
            StoreError::Other(
                "this embedded warehouse was opened shared (beside a running sluice serve): it \
                 has no dedupe index, so it cannot commit events or run maintenance"
                    .into(),
            )
        })
    }

    /// Make every dedupe record look `by` older (tests of the dedupe window).
    #[cfg(feature = "testing")]
    pub async fn age_dedupe_records(&self, by: Duration) -> Result<(), StoreError> {
        let index = self.id_index()?;
        self.write(move |_| index.age(by)).await
    }

    /// The user index's entries and its `through` (tests).
    #[cfg(feature = "testing")]
    pub async fn user_index_state(&self) -> Result<(usize, i64), StoreError> {
        let index = self.id_index()?;
        tokio::task::spawn_blocking(move || Ok((index.user_entry_count()?, index.through()?)))
            .await
            .map_err(join_error)?
    }

    /// Run `f` with the writer connection on the blocking pool.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let writer = Arc::clone(&self.inner.writer);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock left no open transaction behind (rusqlite rolls
            // back on drop), so a poisoned lock is safe to reuse.
            let mut conn = writer.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(join_error)?
    }

    /// Run `f` with the writer connection and `events`, which it reads in place on a
    /// multi-threaded runtime (the one `sluice serve` runs): the calling worker thread becomes
    /// a blocking one for the time (`block_in_place`; tokio moves its other tasks to another).
    /// Copying a group commit's events for the blocking pool instead held a second copy of up
    /// to 20,000 events while the commit ran. On a current-thread runtime (where
    /// `block_in_place` is not allowed) the events are copied and `f` runs on the blocking pool.
    async fn write_events<T, F>(&self, events: &[Event], f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &[Event]) -> Result<T, StoreError> + Send + 'static,
    {
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_threaded {
            let events = events.to_vec();
            return self.write(move |conn| f(conn, &events)).await;
        }
        let writer = &self.inner.writer;
        tokio::task::block_in_place(|| {
            // As on the blocking pool, a panic fails this commit, not the caller's task.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut conn = writer.lock().unwrap_or_else(PoisonError::into_inner);
                f(&mut conn, events)
            }))
            .unwrap_or_else(|_| Err(StoreError::Other("warehouse commit panicked".into())))
        })
    }

    /// Run `f` with a read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self
            .inner
            .reader_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("the warehouse is closing".into()))?;
        let pool = Arc::clone(&self.inner.readers);
        let db_path = self.inner.db_path.clone();
        let opts = self.inner.opts.clone();
        tokio::task::spawn_blocking(move || {
            let idle = pool.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let conn = match idle {
                Some(c) => c,
                None => open_connection(&db_path, &opts, Role::Reader)?,
            };
            let result = f(&conn);
            pool.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            result
        })
        .await
        .map_err(join_error)?
    }
}

/// A handle on a [`SqliteWarehouse`] that does not keep it open (test probes).
#[cfg(feature = "testing")]
pub(crate) struct WeakWarehouse(std::sync::Weak<Inner>);

#[cfg(feature = "testing")]
impl WeakWarehouse {
    pub(crate) fn upgrade(&self) -> Option<SqliteWarehouse> {
        self.0.upgrade().map(|inner| SqliteWarehouse { inner })
    }
}

#[cfg(feature = "testing")]
impl SqliteWarehouse {
    pub(crate) fn downgrade(&self) -> WeakWarehouse {
        WeakWarehouse(Arc::downgrade(&self.inner))
    }
}

/// `embedded:PATH` / `embedded://PATH` → PATH.
fn parse_url(url: &str) -> Result<PathBuf, StoreError> {
    let rest = url.strip_prefix("embedded:").ok_or_else(|| {
        StoreError::Invalid(format!(
            "not an embedded warehouse URL (expected embedded:PATH): {url}"
        ))
    })?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    if rest.is_empty() {
        return Err(StoreError::Invalid(
            "embedded warehouse URL without a path (expected embedded:PATH)".into(),
        ));
    }
    Ok(PathBuf::from(rest))
}

/// Where the database and its lock live for a user-given path.
struct Layout {
    /// The data directory (for messages).
    dir: PathBuf,
    db: PathBuf,
    lock: PathBuf,
    /// The dedupe index's directory.
    ids: PathBuf,
}

fn layout(path: &Path) -> Result<Layout, StoreError> {
    let is_file = path.is_file()
        || matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("sqlite3" | "sqlite" | "db")
        );
    if is_file {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        create_dir(&dir)?;
        let with_suffix = |suffix: &str| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            PathBuf::from(p)
        };
        Ok(Layout {
            dir,
            db: path.to_path_buf(),
            lock: with_suffix(".lock"),
            ids: with_suffix(".ids"),
        })
    } else {
        create_dir(path)?;
        Ok(Layout {
            dir: path.to_path_buf(),
            db: path.join(DATABASE_FILE),
            lock: path.join(LOCK_FILE),
            ids: path.join(ID_INDEX_DIR),
        })
    }
}

fn create_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        StoreError::Other(format!(
            "cannot create the data directory {}: {e}{}",
            dir.display(),
            io_hint(&e)
        ))
    })
}

fn io_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            " (is it on a read-only file system, or owned by another user?)"
        }
        std::io::ErrorKind::StorageFull => " (the disk is full)",
        _ => "",
    }
}

fn open_blocking(path: &Path, opts: SqliteOptions) -> Result<SqliteWarehouse, StoreError> {
    let layout = layout(path)?;
    let lock = if opts.exclusive {
        Some(lock_data_dir(&layout)?)
    } else {
        None
    };
    let mut writer = open_connection(&layout.db, &opts, Role::Writer)?;
    migrate::migrate(&mut writer)?;
    let ids = if opts.exclusive {
        let index = ids::IdIndex::open(&layout.ids, opts.dedupe_window)?;
        ids::catch_up(&writer, &index)?;
        Some(Arc::new(index))
    } else {
        None
    };
    let reader = open_connection(&layout.db, &opts, Role::Reader)?;
    let checkpointer = Checkpointer::start(open_connection(&layout.db, &opts, Role::Checkpointer)?);
    if checkpointer.thread.is_none() {
        // No checkpoint thread: the writer checkpoints after its commits, as SQLite does.
        tracing::warn!("cannot start the checkpoint thread; the writer checkpoints itself");
        writer
            .pragma_update(None, "wal_autocheckpoint", 2048)
            .map_err(sqlite_error)?;
    }
    let readers = opts.readers.max(1);
    tracing::info!(db = %layout.db.display(), synchronous = opts.synchronous.pragma_value(), "embedded warehouse open");
    Ok(SqliteWarehouse {
        inner: Arc::new(Inner {
            _checkpointer: checkpointer,
            writer: Arc::new(Mutex::new(writer)),
            known_users: Arc::default(),
            ids,
            readers: Arc::new(Mutex::new(vec![reader])),
            reader_permits: Semaphore::new(readers),
            db_path: layout.db,
            opts,
            _lock: lock,
        }),
    })
}

/// Take the exclusive lock on the data directory's lock file (released when the file is closed,
/// also when the process dies), and write our pid into it for the message another process gets.
fn lock_data_dir(layout: &Layout) -> Result<File, StoreError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&layout.lock)
        .map_err(|e| {
            StoreError::Other(format!(
                "cannot open the lock file {} in data directory {}: {e}{}",
                layout.lock.display(),
                layout.dir.display(),
                io_hint(&e)
            ))
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let pid = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            return Err(StoreError::Other(format!(
                "data directory {} is in use by another sluice process{pid}; stop it or use \
                 another --data-dir",
                layout.dir.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(StoreError::Other(format!(
                "cannot lock {}: {e}",
                layout.lock.display()
            )))
        }
    }
    // Best effort: the pid is only for the message above.
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()))
        .and_then(|()| file.flush());
    Ok(file)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Writer,
    Reader,
    Checkpointer,
}

/// WAL checkpoints on their own thread and connection, so that the writer never stops to copy
/// WAL pages into the database file (in `commit_batch` that was a third of the writer's time,
/// and the writer is the pipeline's one serial stage). Every [`CHECKPOINT_EVERY`] a `PASSIVE`
/// checkpoint copies what it can without blocking anyone (commits and queries go on); a writer
/// starting after a checkpoint that caught up restarts the WAL from its beginning. Should the
/// WAL still grow past [`WAL_MAX_FRAMES`] (a constant stream of commits never lets a passive
/// checkpoint catch up), one `TRUNCATE` checkpoint waits for the writer and resets it: short,
/// since the passive ones copied nearly everything already.
struct Checkpointer {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// 256 MiB of 16 KiB pages.
const WAL_MAX_FRAMES: i64 = 16_384;

impl Checkpointer {
    fn start(conn: Connection) -> Checkpointer {
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || loop {
                let (lock, wake) = &*flag;
                let stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
                let (stopped, _) = wake
                    .wait_timeout_while(stopped, CHECKPOINT_EVERY, |s| !*s)
                    .unwrap_or_else(PoisonError::into_inner);
                if *stopped {
                    return;
                }
                drop(stopped);
                checkpoint(&conn);
            })
            .ok();
        Checkpointer { stop, thread }
    }
}

fn checkpoint(conn: &Connection) {
    // Column 1 of the result: the frames in the WAL.
    let run = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            r.get::<_, i64>(1)
        })
    };
    match run("PASSIVE") {
        Ok(frames) if frames > WAL_MAX_FRAMES => {
            if let Err(e) = run("TRUNCATE") {
                tracing::warn!(error = %e, "WAL checkpoint (truncate) failed");
            }
        }
        Ok(_) => {}
        // Busy now and then is normal (the writer is committing); the next round retries.
        Err(e) => tracing::debug!(error = %e, "WAL checkpoint did not run"),
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_connection(db: &Path, opts: &SqliteOptions, role: Role) -> Result<Connection, StoreError> {
    let context = |e: rusqlite::Error| {
        let e = sqlite_error(e);
        let msg = format!("opening the embedded warehouse {}: {e}", db.display());
        match e {
            StoreError::Unavailable(_) => StoreError::Unavailable(msg),
            _ => StoreError::Other(msg),
        }
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db, flags).map_err(context)?;
    conn.busy_timeout(opts.busy_timeout).map_err(context)?;
    conn.set_prepared_statement_cache_capacity(64);
    // Takes effect only on a database without tables yet (a new data directory), and only
    // before WAL mode is set; an older file keeps its page size.
    conn.execute_batch(sql::NEW_DATABASE_PRAGMAS)
        .map_err(context)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(context)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(db = %db.display(), mode, "SQLite could not switch to WAL mode");
    }
    conn.execute_batch(sql::CONNECTION_PRAGMAS)
        .map_err(context)?;
    conn.pragma_update(None, "synchronous", opts.synchronous.pragma_value())
        .map_err(context)?;
    match role {
        Role::Writer => {
            conn.execute_batch(sql::WRITER_PRAGMAS).map_err(context)?;
            if let Some(max) = opts.max_size_bytes {
                let page: i64 = conn
                    .query_row("PRAGMA page_size", [], |r| r.get(0))
                    .map_err(context)?;
                let pages = i64::try_from(max).unwrap_or(i64::MAX) / page.max(512);
                let _: i64 = conn
                    .query_row(
                        &format!("PRAGMA max_page_count = {}", pages.max(1)),
                        [],
                        |r| r.get(0),
                    )
                    .map_err(context)?;
            }
        }
        Role::Reader => conn.execute_batch(sql::READER_PRAGMAS).map_err(context)?,
        Role::Checkpointer => {}
    }
    Ok(conn)
}

/// The one mapping from SQLite errors to `StoreError`: a busy or locked database, a full disk
/// and I/O errors are retryable (`Unavailable`: the worker waits and retries the batch);
/// read-only, corrupt or unopenable databases and everything else are `Other`.
pub(crate) fn sqlite_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            let detail = msg.clone().unwrap_or_else(|| f.to_string());
            match f.code {
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    StoreError::Unavailable(format!("database busy: {detail}"))
                }
                ErrorCode::DiskFull => StoreError::Unavailable(format!(
                    "disk full (or the database reached max_size_bytes): {detail}"
                )),
                ErrorCode::SystemIoFailure => {
                    StoreError::Unavailable(format!("I/O error: {detail}"))
                }
                ErrorCode::ReadOnly => StoreError::Other(format!(
                    "the database is read-only (read-only file system or file permissions): \
                     {detail}"
                )),
                ErrorCode::CannotOpen => StoreError::Other(format!(
                    "cannot open the database file (missing directory or permissions): {detail}"
                )),
                ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                    StoreError::Other(format!("the database file is damaged: {detail}"))
                }
                _ => StoreError::Other(detail),
            }
        }
        _ => StoreError::Other(e.to_string()),
    }
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    if e.is_cancelled() {
        StoreError::Unavailable("warehouse task cancelled".into())
    } else {
        StoreError::Other(format!("warehouse task panicked: {e}"))
    }
}

#[async_trait]
impl KeyStore for SqliteWarehouse {
    async fn create_key(
        &self,
        source: &str,
        kind: KeyKind,
    ) -> Result<(String, KeyRecord), StoreError> {
        if source.trim().is_empty() {
            return Err(StoreError::Invalid("source must not be empty".into()));
        }
        let source = source.to_string();
        self.write(move |conn| keys::create_key(conn, &source, kind))
            .await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(keys::list_keys).await
    }

    async fn revoke_key(&self, id_or_key: &str) -> Result<KeyRecord, StoreError> {
        let id_or_key = id_or_key.to_string();
        self.write(move |conn| keys::revoke_key(conn, &id_or_key))
            .await
    }
}

#[async_trait]
impl Warehouse for SqliteWarehouse {
    async fn commit_batch(
        &self,
        group: &str,
        events: &[Event],
        positions: &[ShardPosition],
    ) -> Result<CommitOutcome, StoreError> {
        let offsets = commit::Offsets::new(positions)?;
        let group = group.to_string();
        let known = Arc::clone(&self.inner.known_users);
        let index = self.id_index()?;
        self.write_events(events, move |conn, events| {
            let rows: Vec<commit::EventRow<'_>> =
                events.iter().map(commit::EventRow::new).collect();
            let mut known = known.lock().unwrap_or_else(PoisonError::into_inner);
            if index.is_stale() {
                ids::catch_up(conn, &index)?;
            }
            commit::commit_batch(conn, &group, &rows, &offsets, &mut known, &index)
        })
        .await
    }

    async fn positions(&self, group: &str) -> Result<Vec<ShardPosition>, StoreError> {
        let group = group.to_string();
        self.read(move |conn| commit::positions(conn, &group)).await
    }

    async fn maintain(&self) -> Result<(), StoreError> {
        // The dedupe index forgets by itself (`ids.rs`): ids past the window no longer count,
        // and compactions drop them.
        let retention = self.inner.opts.retention_days;
        let index = self.id_index()?;
        // Each batch is its own short transaction; the writer lock is released in between so
        // commits are not held up behind a long prune.
        if let Some(days) = retention {
            loop {
                let index = Arc::clone(&index);
                let n = self
                    .write(move |conn| commit::prune_events(conn, &index, days))
                    .await?;
                if n < sql::PRUNE_BATCH as usize {
                    break;
                }
            }
        }
        self.write(|conn| conn.execute_batch("PRAGMA optimize").map_err(sqlite_error))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
                .map_err(sqlite_error)
        })
        .await
    }

    async fn commit_alerts(
        &self,
        group: &str,
        alerts: &[Alert],
        positions: &[ShardPosition],
    ) -> Result<u64, StoreError> {
        let offsets = commit::Offsets::new(positions)?;
        let rows: Vec<commit::AlertRow> = alerts.iter().map(commit::AlertRow::new).collect();
        let group = group.to_string();
        self.write(move |conn| commit::commit_alerts(conn, &group, &rows, &offsets))
            .await
    }

    async fn stored_event_ids(
        &self,
        source: &str,
        event_ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let source = source.to_string();
        let event_ids = event_ids.to_vec();
        match self.inner.ids.clone() {
            Some(index) => tokio::task::spawn_blocking(move || {
                query::stored_event_ids(&index, &source, &event_ids)
            })
            .await
            .map_err(join_error)?,
            None => {
                self.read(move |conn| query::scan_event_ids(conn, &source, &event_ids, None))
                    .await
            }
        }
    }

    async fn stored_event_ids_since(
        &self,
        source: &str,
        event_ids: &[String],
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, StoreError> {
        if self.inner.ids.is_some() {
            return self.stored_event_ids(source, event_ids).await;
        }
        let source = source.to_string();
        let event_ids = event_ids.to_vec();
        let since = commit::micros(since);
        self.read(move |conn| query::scan_event_ids(conn, &source, &event_ids, Some(since)))
            .await
    }

    async fn count_by_id_prefix(
        &self,
        source: &str,
        prefix: &str,
    ) -> Result<(u64, u64), StoreError> {
        let source = source.to_string();
        let prefix = prefix.to_string();
        self.read(move |conn| query::count_by_id_prefix(conn, &source, &prefix))
            .await
    }

    async fn counts(
        &self,
        source: &str,
        event: Option<&str>,
        range: TimeRange,
        interval: Interval,
    ) -> Result<Vec<CountPoint>, StoreError> {
        let source = source.to_string();
        let event = event.map(str::to_string);
        self.read(move |conn| query::counts(conn, &source, event.as_deref(), range, interval))
            .await
    }

    async fn top_events(
        &self,
        source: &str,
        range: TimeRange,
        limit: u32,
    ) -> Result<Vec<NameCount>, StoreError> {
        let source = source.to_string();
        self.read(move |conn| query::top_events(conn, &source, range, limit))
            .await
    }

    async fn active_users(
        &self,
        source: &str,
        range: TimeRange,
    ) -> Result<ActiveUsers, StoreError> {
        let source = source.to_string();
        self.read(move |conn| query::active_users(conn, &source, range))
            .await
    }

    async fn user_events(
        &self,
        source: &str,
        user: &UserRef,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let source = source.to_string();
        let user = user.clone();
        let index = self.inner.ids.clone();
        self.read(move |conn| query::user_events(conn, index.as_deref(), &source, &user, limit))
            .await
    }

    async fn alerts(
        &self,
        source: &str,
        range: TimeRange,
        limit: u32,
    ) -> Result<Vec<Alert>, StoreError> {
        let source = source.to_string();
        self.read(move |conn| query::alerts(conn, &source, range, limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("embedded:./sluice-data").expect("url"),
            PathBuf::from("./sluice-data")
        );
        assert_eq!(
            parse_url("embedded:///var/lib/sluice").expect("url"),
            PathBuf::from("/var/lib/sluice")
        );
        assert!(matches!(
            parse_url("embedded:"),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            parse_url("postgres://x"),
            Err(StoreError::Invalid(_))
        ));
    }
}
