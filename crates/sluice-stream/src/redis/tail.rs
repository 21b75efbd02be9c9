//! Group-less tailing of the shard streams (`EventLog::tail`), for the live aggregates every API
//! instance keeps: one `XREAD COUNT c [BLOCK ms] STREAMS k0 … kN id0 … idN` over all shards,
//! with the last id seen per shard as the cursor.
//!
//! A shard with no position yet (`None`: "from the end") is first resolved to its actual last
//! id (`XREVRANGE key + - COUNT 1`, `0-0` for an empty or missing stream) so the returned cursor
//! is always concrete: reading with `$` and returning `$` would lose whatever is appended between
//! two calls.

use redis::Value;
use sluice_core::log::{Entry, LogError, TailCursor};
use std::time::Duration;

use super::{millis, reply, RedisLog};

/// The position before every entry a stream can ever hold.
const ORIGIN: &str = "0-0";

impl RedisLog {
    pub(super) async fn tail_streams(
        &self,
        cursor: &TailCursor,
        count: usize,
        block: Duration,
    ) -> Result<(Vec<Entry>, TailCursor), LogError> {
        let shards = self.keys.len();
        let mut last: Vec<Option<String>> = (0..shards)
            .map(|i| cursor.last.get(i).cloned().flatten())
            .collect();
        let unresolved: Vec<usize> = (0..shards).filter(|&i| last[i].is_none()).collect();
        if !unresolved.is_empty() {
            let mut pipe = redis::pipe();
            for &i in &unresolved {
                pipe.cmd("XREVRANGE")
                    .arg(&self.keys[i])
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
            }
            let replies: Vec<Value> = self
                .conn
                .run("XREVRANGE", |mut c| async move {
                    pipe.query_async(&mut c).await
                })
                .await?;
            for (&i, v) in unresolved.iter().zip(&replies) {
                let id = reply::entries(v).into_iter().next().map(|e| e.id);
                last[i] = Some(id.unwrap_or_else(|| ORIGIN.to_owned()));
            }
        }
        let resolved = TailCursor { last: last.clone() };
        if count == 0 {
            return Ok((Vec::new(), resolved));
        }

        // COUNT is per stream: ask each shard for its share, then cut to `count` exactly.
        let per_stream = count.div_ceil(shards.max(1)).max(1);
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(per_stream);
        if !block.is_zero() {
            // BLOCK 0 would mean "forever"; a non-zero block is at least 1 ms.
            cmd.arg("BLOCK").arg(millis(block).max(1));
        }
        cmd.arg("STREAMS").arg(&self.keys[..]);
        for id in &last {
            cmd.arg(id.as_deref().unwrap_or(ORIGIN));
        }
        // A dedicated connection: a blocked XREAD would stall every command multiplexed with it.
        let reply: Value = self
            .blocking
            .run(
                "a blocking XREAD",
                block + self.config.command_timeout,
                |mut c| async move { cmd.query_async(&mut c).await },
            )
            .await?;

        // Nil (timed out) gives no streams. Per shard the reply is in id order; keep whole
        // shards' prefixes until `count` is reached, and move each shard's cursor to the last
        // entry kept (entries cut off are read again by the next call).
        let mut entries = Vec::new();
        for (key, raws) in reply::streams(&reply) {
            let Some(shard) = self.shard_of_key(&key) else {
                tracing::warn!(key, "XREAD reply for a key that is not one of our shards");
                continue;
            };
            for raw in raws {
                if entries.len() >= count {
                    break;
                }
                last[shard as usize] = Some(raw.id.clone());
                // XREAD does not report deleted entries; a nil payload would be skipped anyway.
                if let Some(payload) = raw.payload {
                    entries.push(Entry {
                        shard,
                        id: raw.id,
                        payload,
                        deliveries: 1,
                    });
                }
            }
        }
        Ok((entries, TailCursor { last }))
    }
}
