//! Backpressure and lag: reading consumer-group state from every shard (XINFO GROUPS + XLEN in
//! one pipeline), and the background task that caches the backlog of the slowest required group
//! in an atomic so that `append` can refuse work above the high-water mark without a round trip.
//!
//! The task is aborted when the `RedisLog` that spawned it is dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{RedisResult, Value};
use sluice_core::log::{GroupLag, LogError};
use tokio::task::JoinHandle;

use super::conn::SharedConn;
use super::reply::{self, GroupInfo};

/// The state of one shard stream.
#[derive(Debug, Default)]
pub(crate) struct ShardState {
    pub len: u64,
    /// Groups on this shard (empty when the stream does not exist yet).
    pub groups: Vec<GroupInfo>,
}

/// XLEN and XINFO GROUPS of every shard, in one round trip.
pub(crate) async fn shard_states(
    conn: &SharedConn,
    keys: &[String],
) -> Result<Vec<ShardState>, LogError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for key in keys {
        pipe.cmd("XLEN")
            .arg(key)
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(key);
    }
    let results: Vec<RedisResult<Value>> = conn
        .run("XINFO GROUPS", |mut c| async move {
            pipe.query_async(&mut c).await
        })
        .await?;
    let mut states = Vec::with_capacity(keys.len());
    let mut results = results.into_iter();
    for _ in keys {
        let len = match results.next() {
            Some(Ok(v)) => reply::uint(&v).unwrap_or(0),
            _ => 0,
        };
        // XINFO GROUPS fails with "no such key" before the first append or group: no groups.
        let groups = match results.next() {
            Some(Ok(v)) => reply::groups(&v),
            _ => Vec::new(),
        };
        states.push(ShardState { len, groups });
    }
    Ok(states)
}

/// Lag of every group, summed over shards, sorted by group name. When Redis cannot tell a
/// group's lag on a shard (nil `lag`, e.g. after deletions inside its range), the shard's length
/// is used: an upper bound, so backpressure errs on the safe side.
pub(crate) fn group_lags(states: &[ShardState]) -> Vec<GroupLag> {
    let mut lags: BTreeMap<&str, GroupLag> = BTreeMap::new();
    for state in states {
        for g in &state.groups {
            let lag = lags.entry(&g.name).or_insert_with(|| GroupLag {
                group: g.name.clone(),
                undelivered: 0,
                pending: 0,
            });
            lag.undelivered += g.lag.unwrap_or(state.len);
            lag.pending += g.pending;
        }
    }
    lags.into_values().collect()
}

/// The backlog that backpressure compares with the high-water mark: the largest backlog among
/// the required groups that exist, or the total length when none of them exists yet.
pub(crate) fn backlog(states: &[ShardState], required: &[String]) -> u64 {
    let lags = group_lags(states);
    lags.iter()
        .filter(|l| required.contains(&l.group))
        .map(GroupLag::backlog)
        .max()
        .unwrap_or_else(|| states.iter().map(|s| s.len).sum())
}

pub(crate) struct Poller {
    pub conn: Arc<SharedConn>,
    pub keys: Arc<[String]>,
    pub required: Vec<String>,
    pub interval: Duration,
    pub backlog: Arc<AtomicU64>,
}

impl Poller {
    pub(crate) fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match shard_states(&self.conn, &self.keys).await {
                    Ok(states) => {
                        self.backlog
                            .store(backlog(&states, &self.required), Ordering::Relaxed);
                    }
                    // Keep the last known value: appends fail on their own while Redis is down.
                    Err(e) => tracing::debug!(error = %e, "backlog poll failed"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, pending: u64, lag: Option<u64>) -> GroupInfo {
        GroupInfo {
            name: name.to_owned(),
            pending,
            last_delivered: "0-0".to_owned(),
            lag,
        }
    }

    #[test]
    fn backlog_of_slowest_required_group() {
        let states = vec![
            ShardState {
                len: 10,
                groups: vec![group("warehouse", 2, Some(3)), group("fraud", 0, Some(9))],
            },
            ShardState {
                len: 7,
                groups: vec![group("warehouse", 1, None)],
            },
        ];
        // warehouse: (3 + 2) + (7 + 1) = 13; fraud is not required.
        assert_eq!(backlog(&states, &["warehouse".to_owned()]), 13);
        assert_eq!(
            backlog(&states, &["warehouse".to_owned(), "fraud".to_owned()]),
            13
        );
        // No required group exists: total length.
        assert_eq!(backlog(&states, &["other".to_owned()]), 17);
    }
}
