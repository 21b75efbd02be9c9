//! Configuration of the embedded backend: every knob with its default, the durability choice,
//! and the parser of `embedded:PATH?key=value&…` URLs that the binary's backend resolver hands us.

use std::path::PathBuf;
use std::time::Duration;

use sluice_core::log::LogError;

/// What an acknowledged append survives. Both settings write each coalesced batch to fjall's
/// journal before answering; they differ in whether the journal is then forced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fsync` the journal (fjall `PersistMode::SyncAll`) once per coalesced batch before
    /// answering: an acknowledged append survives a process crash, a kernel panic and a power
    /// loss.
    #[default]
    Fsync,
    /// Hand the journal to the operating system (fjall `PersistMode::Buffer`, a `write(2)`)
    /// before answering: an acknowledged append survives a crash or `kill -9` of the process,
    /// but not a power loss or OS crash (the last few hundred milliseconds of appends may be
    /// lost then, until the OS writes its page cache out).
    Flush,
}

/// How `EmbeddedLog` stores its data. Build it with [`EmbeddedLogConfig::new`] and adjust the
/// public fields, or parse a URL with [`EmbeddedLogConfig::from_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedLogConfig {
    /// The data directory (created if missing). One process at a time.
    pub dir: PathBuf,
    /// Number of shards, fixed when the directory is created: `None` opens an existing
    /// directory with its own count and creates a new one with [`Self::DEFAULT_SHARDS`];
    /// asking for another count than a directory's is an error.
    pub shards: Option<u32>,
    /// What an acknowledged append survives (see [`Durability`]).
    pub durability: Durability,
    /// Backlog (entries not processed by the slowest required group) above which `append`
    /// answers `Overloaded`.
    pub high_water_mark: u64,
    /// Groups whose backlog counts for backpressure. When none exists yet, the backlog is the
    /// total number of retained entries.
    pub required_groups: Vec<String>,
    /// Capacity of the append queue, in requests. When full, `append` waits (within
    /// `append_timeout`).
    pub queue_capacity: usize,
    /// Most records the writer puts in one fjall batch (a single larger request is still
    /// written whole).
    pub max_batch: usize,
    /// Upper bound of one `append`, queueing included.
    pub append_timeout: Duration,
    /// Dead letters kept (the oldest are removed beyond it); 0 keeps everything.
    pub dead_letter_max_len: u64,
    /// fjall's block cache, in bytes. Small by default (2 MiB): consumers near the head read
    /// their entries from `recent_bytes`, and one that fell further behind reads blob files
    /// the OS still caches (at 50,000 events/s, 8 MiB gave no measurable gain: docs/benchmarks.md).
    pub cache_bytes: u64,
    /// The newest entries kept in memory, all shards together, in payload bytes: consumers
    /// reading within this much of the head take their entries from memory, not from fjall
    /// (`recent`). 0 turns it off.
    pub recent_bytes: u64,
    /// Trimming keeps the entries appended within this long before the position every group
    /// has reached, as `RedisLogConfig::trim_keep` does: a processor that keeps its own
    /// positions (the fraud worker) reads without pending entries, so what it has read but not
    /// committed, and the history it re-reads at start, are protected only by this.
    pub trim_keep: Duration,
}

impl Default for EmbeddedLogConfig {
    fn default() -> Self {
        EmbeddedLogConfig {
            dir: PathBuf::from("sluice-data/log"),
            shards: None,
            durability: Durability::Fsync,
            high_water_mark: 1_000_000,
            required_groups: vec!["warehouse".to_owned()],
            queue_capacity: 4096,
            max_batch: 10_000,
            append_timeout: Duration::from_secs(5),
            dead_letter_max_len: 100_000,
            cache_bytes: 2 * 1024 * 1024,
            recent_bytes: 8 * 1024 * 1024,
            trim_keep: Duration::ZERO,
        }
    }
}

impl EmbeddedLogConfig {
    /// Shards of a new directory when none are asked for. One writer thread appends to all
    /// shards and each group has one consumer, so shards bring no parallelism here, and each
    /// costs a keyspace with its own memtable, flushes and blob files. One, against eight (the
    /// default before session 21): at 50,000 events/s the log's background thread flushed an
    /// eighth as often, and `sluice serve` used ~20 % less CPU per event with a lower memory
    /// peak (docs/benchmarks.md).
    pub const DEFAULT_SHARDS: u32 = 1;

    /// Defaults for everything but the directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EmbeddedLogConfig {
            dir: dir.into(),
            ..EmbeddedLogConfig::default()
        }
    }

    /// Parse `embedded:PATH?key=value&…` (also `embedded://PATH`). Known keys: `shards`,
    /// `durability` (`fsync` or `flush`), `high_water_mark`, `required_groups`
    /// (comma-separated), `queue_capacity`, `max_batch`, `append_timeout_ms`,
    /// `dead_letter_max_len`, `cache_mb`, `recent_mb`, `trim_keep_s`. Unknown keys are errors, so
    /// a typo never goes unnoticed.
    pub fn from_url(url: &str) -> Result<Self, LogError> {
        let rest = url.strip_prefix("embedded:").ok_or_else(|| {
            LogError::Other(format!(
                "not an embedded log URL (expected embedded:PATH): {url}"
            ))
        })?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err(LogError::Other(format!(
                "embedded log URL without a directory (expected embedded:PATH): {url}"
            )));
        }
        let mut config = EmbeddedLogConfig::new(path);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |what: &str| {
                LogError::Other(format!(
                    "embedded log URL parameter {key}={value}: expected {what}"
                ))
            };
            let number = |what: &str| value.parse::<u64>().map_err(|_| bad(what));
            match key {
                "shards" => {
                    config.shards = Some(
                        u32::try_from(number("a shard count in 1..=1024")?)
                            .ok()
                            .filter(|n| (1..=1024).contains(n))
                            .ok_or_else(|| bad("a shard count in 1..=1024"))?,
                    );
                }
                "durability" => {
                    config.durability = match value {
                        "fsync" => Durability::Fsync,
                        "flush" => Durability::Flush,
                        _ => return Err(bad("`fsync` or `flush`")),
                    };
                }
                "high_water_mark" => config.high_water_mark = number("an entry count")?,
                "required_groups" => {
                    config.required_groups = value
                        .split(',')
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "queue_capacity" => {
                    config.queue_capacity = positive(number("a positive integer")?, &bad)?;
                }
                "max_batch" => config.max_batch = positive(number("a positive integer")?, &bad)?,
                "append_timeout_ms" => {
                    config.append_timeout = Duration::from_millis(number("milliseconds")?);
                }
                "dead_letter_max_len" => config.dead_letter_max_len = number("an entry count")?,
                "trim_keep_s" => config.trim_keep = Duration::from_secs(number("seconds")?),
                "cache_mb" => {
                    config.cache_bytes = number("megabytes")?.saturating_mul(1024 * 1024);
                }
                "recent_mb" => {
                    config.recent_bytes = number("megabytes")?.saturating_mul(1024 * 1024);
                }
                _ => {
                    return Err(LogError::Other(format!(
                        "unknown embedded log URL parameter `{key}`"
                    )))
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    pub(crate) fn validate(&self) -> Result<(), LogError> {
        let problem = if self.shards == Some(0) {
            "shards must be at least 1"
        } else if self.queue_capacity == 0 {
            "queue_capacity must be at least 1"
        } else if self.max_batch == 0 {
            "max_batch must be at least 1"
        } else if self.append_timeout.is_zero() {
            "append_timeout must be positive"
        } else if self.dir.as_os_str().is_empty() {
            "dir must not be empty"
        } else {
            return Ok(());
        };
        Err(LogError::Other(format!(
            "invalid embedded log config: {problem}"
        )))
    }
}

fn positive(n: u64, bad: &dyn Fn(&str) -> LogError) -> Result<usize, LogError> {
    usize::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| bad("a positive integer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_url() {
        let c = EmbeddedLogConfig::from_url(
            "embedded:/var/lib/sluice/log?shards=4&durability=flush&high_water_mark=10\
             &required_groups=a,b&trim_keep_s=120&recent_mb=2",
        )
        .expect("valid url");
        assert_eq!(c.dir, PathBuf::from("/var/lib/sluice/log"));
        assert_eq!(c.shards, Some(4));
        assert_eq!(c.durability, Durability::Flush);
        assert_eq!(c.high_water_mark, 10);
        assert_eq!(c.required_groups, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(c.trim_keep, Duration::from_secs(120));
        assert_eq!(c.recent_bytes, 2 * 1024 * 1024);

        let c = EmbeddedLogConfig::from_url("embedded:./sluice-data").expect("relative path");
        assert_eq!(c.dir, PathBuf::from("./sluice-data"));
        assert_eq!(c.durability, Durability::Fsync);
        assert_eq!(c.shards, None);
        let c = EmbeddedLogConfig::from_url("embedded:///tmp/x").expect("url form");
        assert_eq!(c.dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(EmbeddedLogConfig::from_url("embedded:").is_err());
        assert!(EmbeddedLogConfig::from_url("redis://h/0").is_err());
        assert!(EmbeddedLogConfig::from_url("embedded:/x?shard=3").is_err());
        assert!(EmbeddedLogConfig::from_url("embedded:/x?shards=0").is_err());
        assert!(EmbeddedLogConfig::from_url("embedded:/x?durability=maybe").is_err());
    }
}
