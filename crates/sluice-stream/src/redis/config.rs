//! Configuration of the Redis Streams backend: every knob with its default, and the parser of
//! `redis://host:port/db?prefix=…&shards=…` URLs that the binary's backend resolver hands us.

use std::time::Duration;

use sluice_core::log::LogError;

/// How `RedisLog` talks to Redis. Build it with [`RedisLogConfig::new`] and adjust the public
/// fields, or parse a URL with [`RedisLogConfig::from_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLogConfig {
    /// `redis://[user:password@]host:port/db` (no query string).
    pub url: String,
    /// Key prefix: streams are `{prefix}:events:{shard}`, dead letters `{prefix}:dead`.
    pub prefix: String,
    /// Number of shard streams. Changing it re-routes users: pick it once per deployment.
    pub shards: u32,
    /// Writer tasks (each with its own connection) that send coalesced append pipelines.
    pub writers: usize,
    /// Most records a writer puts in one pipeline (a single larger request is still sent whole).
    pub max_pipeline: usize,
    /// Capacity of the in-process append queue, in requests. When full, `append` waits (within
    /// `append_timeout`).
    pub queue_capacity: usize,
    /// Upper bound of one `append`, queueing included. Also bounds every connect attempt.
    pub append_timeout: Duration,
    /// Upper bound of a consumer-side command (a blocking read gets its block time on top).
    pub command_timeout: Duration,
    /// Backlog (entries not processed by the slowest required group) above which `append`
    /// answers `Overloaded`.
    pub high_water_mark: u64,
    /// Groups whose backlog counts for backpressure. When none exists yet, the backlog is the
    /// total length of the log.
    pub required_groups: Vec<String>,
    /// How often the background task refreshes the backlog.
    pub backpressure_poll: Duration,
    /// Approximate cap of the dead-letter stream (`XADD … MAXLEN ~`); 0 keeps everything.
    pub dead_letter_max_len: u64,
    /// `trim` keeps entries appended this long before the position of the slowest group, even
    /// though every group has processed them: the fraud processor re-reads them to rebuild its
    /// windows after a restart. Zero trims right below the slowest group.
    pub trim_keep: Duration,
    /// A group whose position is older than this (by append time) while it still has entries to
    /// process no longer holds trimming back: `trim` removes what is older than this for it too,
    /// logs a warning and counts it (`RedisLogStats::trim_lagging_skips`). `None` waits for every
    /// group forever.
    pub trim_max_lag: Option<Duration>,
}

impl Default for RedisLogConfig {
    fn default() -> Self {
        RedisLogConfig {
            url: "redis://127.0.0.1:6379/0".to_owned(),
            prefix: "sluice".to_owned(),
            shards: 8,
            writers: 4,
            max_pipeline: 2000,
            queue_capacity: 4096,
            append_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(5),
            high_water_mark: 1_000_000,
            required_groups: vec!["warehouse".to_owned()],
            backpressure_poll: Duration::from_millis(250),
            dead_letter_max_len: 100_000,
            trim_keep: Duration::ZERO,
            trim_max_lag: None,
        }
    }
}

impl RedisLogConfig {
    /// Defaults for everything but the URL (which must not carry a query string; see
    /// [`RedisLogConfig::from_url`] for that).
    pub fn new(url: impl Into<String>) -> Self {
        RedisLogConfig {
            url: url.into(),
            ..RedisLogConfig::default()
        }
    }

    /// Parse `redis://host:port/db?key=value&…`. Known keys: `prefix`, `shards`, `writers`,
    /// `max_pipeline`, `queue_capacity`, `append_timeout_ms`, `command_timeout_ms`,
    /// `high_water_mark`, `required_groups` (comma-separated), `backpressure_poll_ms`,
    /// `dead_letter_max_len`, `trim_keep_s`, `trim_max_lag_s`. Unknown keys are errors, so a typo
    /// never goes unnoticed.
    pub fn from_url(url: &str) -> Result<Self, LogError> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        if !(base.starts_with("redis://") || base.starts_with("rediss://")) {
            return Err(LogError::Other(format!(
                "not a redis URL (expected redis://host:port/db): {}",
                redact(base)
            )));
        }
        let mut config = RedisLogConfig::new(base);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |what: &str| {
                LogError::Other(format!(
                    "redis URL parameter {key}={value}: expected {what}"
                ))
            };
            let number = |what: &str| value.parse::<u64>().map_err(|_| bad(what));
            match key {
                "prefix" if !value.is_empty() => config.prefix = value.to_owned(),
                "prefix" => return Err(bad("a non-empty prefix")),
                "shards" => {
                    config.shards = u32::try_from(number("a shard count in 1..=1024")?)
                        .ok()
                        .filter(|n| (1..=1024).contains(n))
                        .ok_or_else(|| bad("a shard count in 1..=1024"))?;
                }
                "writers" => config.writers = positive(number("a positive integer")?, &bad)?,
                "max_pipeline" => {
                    config.max_pipeline = positive(number("a positive integer")?, &bad)?;
                }
                "queue_capacity" => {
                    config.queue_capacity = positive(number("a positive integer")?, &bad)?;
                }
                "append_timeout_ms" => {
                    config.append_timeout = Duration::from_millis(number("milliseconds")?);
                }
                "command_timeout_ms" => {
                    config.command_timeout = Duration::from_millis(number("milliseconds")?);
                }
                "high_water_mark" => config.high_water_mark = number("an entry count")?,
                "required_groups" => {
                    config.required_groups = value
                        .split(',')
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "backpressure_poll_ms" => {
                    config.backpressure_poll = Duration::from_millis(number("milliseconds")?);
                }
                "dead_letter_max_len" => config.dead_letter_max_len = number("an entry count")?,
                "trim_keep_s" => config.trim_keep = Duration::from_secs(number("seconds")?),
                "trim_max_lag_s" => {
                    config.trim_max_lag = Some(Duration::from_secs(number("seconds")?));
                }
                _ => {
                    return Err(LogError::Other(format!(
                        "unknown redis URL parameter `{key}`"
                    )))
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    pub(crate) fn validate(&self) -> Result<(), LogError> {
        let problem = if self.shards == 0 {
            "shards must be at least 1"
        } else if self.writers == 0 {
            "writers must be at least 1"
        } else if self.max_pipeline == 0 {
            "max_pipeline must be at least 1"
        } else if self.queue_capacity == 0 {
            "queue_capacity must be at least 1"
        } else if self.prefix.is_empty() {
            "prefix must not be empty"
        } else if self.append_timeout.is_zero() || self.command_timeout.is_zero() {
            "timeouts must be positive"
        } else if self.backpressure_poll.is_zero() {
            "backpressure_poll must be positive"
        } else if self.url.contains('?') {
            "url must not carry a query string (use RedisLogConfig::from_url)"
        } else {
            return Ok(());
        };
        Err(LogError::Other(format!(
            "invalid redis log config: {problem}"
        )))
    }
}

fn positive(n: u64, bad: &dyn Fn(&str) -> LogError) -> Result<usize, LogError> {
    usize::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| bad("a positive integer"))
}

/// The URL without its password, for error messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_query_parameters() {
        let c = RedisLogConfig::from_url(
            "redis://127.0.0.1:6379/2?prefix=x&shards=4&writers=2&high_water_mark=10\
             &required_groups=a,b&append_timeout_ms=500",
        )
        .expect("valid url");
        assert_eq!(c.url, "redis://127.0.0.1:6379/2");
        assert_eq!(c.prefix, "x");
        assert_eq!(c.shards, 4);
        assert_eq!(c.writers, 2);
        assert_eq!(c.high_water_mark, 10);
        assert_eq!(c.required_groups, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(c.append_timeout, Duration::from_millis(500));
    }

    #[test]
    fn defaults_without_query() {
        let c = RedisLogConfig::from_url("redis://localhost/0").expect("valid url");
        assert_eq!(c.prefix, "sluice");
        assert_eq!(c.shards, 8);
        assert_eq!(c.required_groups, vec!["warehouse".to_owned()]);
    }

    #[test]
    fn rejects_unknown_and_bad_values() {
        assert!(RedisLogConfig::from_url("redis://h/0?shard=3").is_err());
        assert!(RedisLogConfig::from_url("redis://h/0?shards=0").is_err());
        assert!(RedisLogConfig::from_url("redis://h/0?writers=x").is_err());
        assert!(RedisLogConfig::from_url("http://h/0").is_err());
    }

    #[test]
    fn redacts_password() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
    }
}
