//! `commit_batch`: one transaction per batch, a fixed handful of round trips whatever the batch
//! size or the number of distinct event names:
//!
//! 1. binary COPY of the batch into the connection's temp table `sluice_staging`;
//! 2. one statement (`sql::COMMIT_STAGED`) that claims the `(source, event_id)` keys in
//!    `event_dedupe`, inserts only the claimed events, and adds them to `event_counts_1m` and
//!    `daily_active_users`;
//! 3. the forward-only upsert of `consumer_offsets`;
//! 4. COMMIT.
//!
//! Either all of it is committed or none of it; a redelivered batch finds its keys claimed and
//! adds nothing.
//!
//! `commit_alerts` is the fraud processor's equivalent: alerts (unique by
//! `(source, rule, subject, window_start)`, `ON CONFLICT DO NOTHING`) and the group's positions
//! in one transaction.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::pin_mut;
use sluice_core::warehouse::{Alert, CommitOutcome, ShardPosition, StoreError};
use sluice_core::Event;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, ToSql, Type};

use super::{pg_error, sql, PgWarehouse};
use crate::common::parse_log_id;

/// Column types of `sluice_staging`, in `sql::COPY_STAGING` order.
const STAGING_TYPES: [Type; 17] = [
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::JSONB,
    Type::JSONB,
    Type::JSONB,
    Type::JSONB,
];

pub(crate) async fn commit_batch(
    wh: &PgWarehouse,
    group: &str,
    events: &[Event],
    positions: &[ShardPosition],
) -> Result<CommitOutcome, StoreError> {
    let offsets = Offsets::new(positions)?;
    let batch_len = i32::try_from(events.len()).map_err(|_| {
        StoreError::Invalid(format!("batch of {} events is too large", events.len()))
    })?;

    let mut client = wh.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;

    let mut inserted = 0u64;
    if batch_len > 0 {
        let copy = tx
            .prepare_cached(sql::COPY_STAGING)
            .await
            .map_err(pg_error)?;
        let sink = tx.copy_in(&copy).await.map_err(pg_error)?;
        let writer = BinaryCopyInWriter::new(sink, &STAGING_TYPES);
        pin_mut!(writer);
        for (ord, e) in (0..batch_len).zip(events) {
            let kind = e.kind.as_str();
            let properties = Json(&e.properties);
            let traits = Json(&e.traits);
            let context = Json(&e.context);
            let integrations = Json(&e.integrations);
            let row: [&(dyn ToSql + Sync); 17] = [
                &ord,
                &e.event_id,
                &e.source,
                &kind,
                &e.name,
                &e.user_id,
                &e.anonymous_id,
                &e.group_id,
                &e.previous_id,
                &e.timestamp,
                &e.original_timestamp,
                &e.sent_at,
                &e.received_at,
                &properties,
                &traits,
                &context,
                &integrations,
            ];
            writer.as_mut().write(&row).await.map_err(pg_error)?;
        }
        writer.finish().await.map_err(pg_error)?;

        let commit = tx
            .prepare_cached(sql::COMMIT_STAGED)
            .await
            .map_err(pg_error)?;
        let n: i64 = tx
            .query_one(&commit, &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(pg_error)?;
        inserted = u64::try_from(n).unwrap_or(0);
    }

    upsert_offsets(&tx, group, &offsets).await?;

    tx.commit().await.map_err(pg_error)?;
    Ok(CommitOutcome {
        inserted,
        duplicates: (events.len() as u64).saturating_sub(inserted),
    })
}

/// Store alerts exactly once and advance `group`'s positions, in one transaction. Returns how
/// many alerts were new.
pub(crate) async fn commit_alerts(
    wh: &PgWarehouse,
    group: &str,
    alerts: &[Alert],
    positions: &[ShardPosition],
) -> Result<u64, StoreError> {
    let offsets = Offsets::new(positions)?;
    let cols = AlertColumns::new(alerts)?;

    let mut client = wh.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    let mut inserted = 0u64;
    if !alerts.is_empty() {
        let insert = tx
            .prepare_cached(sql::INSERT_ALERTS)
            .await
            .map_err(pg_error)?;
        let rows = tx
            .query(
                &insert,
                &[
                    &cols.source,
                    &cols.rule,
                    &cols.subject,
                    &cols.window_start,
                    &cols.window_end,
                    &cols.count,
                    &cols.first_event_id,
                    &cols.last_event_id,
                    &cols.created_at,
                    &cols.details,
                ],
            )
            .await
            .map_err(pg_error)?;
        inserted = rows.len() as u64;
    }
    upsert_offsets(&tx, group, &offsets).await?;
    tx.commit().await.map_err(pg_error)?;
    Ok(inserted)
}

/// Alerts as column arrays for `sql::INSERT_ALERTS`.
struct AlertColumns<'a> {
    source: Vec<&'a str>,
    rule: Vec<&'a str>,
    subject: Vec<&'a str>,
    window_start: Vec<DateTime<Utc>>,
    window_end: Vec<DateTime<Utc>>,
    count: Vec<i64>,
    first_event_id: Vec<&'a str>,
    last_event_id: Vec<&'a str>,
    created_at: Vec<DateTime<Utc>>,
    details: Vec<Json<&'a serde_json::Value>>,
}

impl<'a> AlertColumns<'a> {
    fn new(alerts: &'a [Alert]) -> Result<AlertColumns<'a>, StoreError> {
        let mut c = AlertColumns {
            source: Vec::with_capacity(alerts.len()),
            rule: Vec::with_capacity(alerts.len()),
            subject: Vec::with_capacity(alerts.len()),
            window_start: Vec::with_capacity(alerts.len()),
            window_end: Vec::with_capacity(alerts.len()),
            count: Vec::with_capacity(alerts.len()),
            first_event_id: Vec::with_capacity(alerts.len()),
            last_event_id: Vec::with_capacity(alerts.len()),
            created_at: Vec::with_capacity(alerts.len()),
            details: Vec::with_capacity(alerts.len()),
        };
        for a in alerts {
            c.source.push(&a.source);
            c.rule.push(&a.rule);
            c.subject.push(&a.subject);
            c.window_start.push(a.window_start);
            c.window_end.push(a.window_end);
            c.count.push(i64::try_from(a.count).map_err(|_| {
                StoreError::Invalid(format!("alert count {} out of range", a.count))
            })?);
            c.first_event_id.push(&a.first_event_id);
            c.last_event_id.push(&a.last_event_id);
            c.created_at.push(a.created_at);
            c.details.push(Json(&a.details));
        }
        Ok(c)
    }
}

/// The forward-only upsert of a group's positions (nothing to do without positions).
async fn upsert_offsets(
    tx: &deadpool_postgres::Transaction<'_>,
    group: &str,
    offsets: &Offsets,
) -> Result<(), StoreError> {
    if offsets.shards.is_empty() {
        return Ok(());
    }
    let upsert = tx
        .prepare_cached(sql::UPSERT_OFFSETS)
        .await
        .map_err(pg_error)?;
    tx.execute(
        &upsert,
        &[
            &group,
            &offsets.shards,
            &offsets.ids,
            &offsets.ms,
            &offsets.seq,
        ],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// The batch's positions as column arrays, one (the furthest) per shard.
struct Offsets {
    shards: Vec<i32>,
    ids: Vec<String>,
    ms: Vec<i64>,
    seq: Vec<i64>,
}

impl Offsets {
    fn new(positions: &[ShardPosition]) -> Result<Offsets, StoreError> {
        let mut furthest: BTreeMap<i32, (i64, i64, &str)> = BTreeMap::new();
        for p in positions {
            let shard = i32::try_from(p.shard)
                .map_err(|_| StoreError::Invalid(format!("shard {} out of range", p.shard)))?;
            let (ms, seq) = parse_log_id(&p.last_id)?;
            let entry = furthest.entry(shard).or_insert((ms, seq, &p.last_id));
            if (ms, seq) > (entry.0, entry.1) {
                *entry = (ms, seq, &p.last_id);
            }
        }
        let mut o = Offsets {
            shards: Vec::with_capacity(furthest.len()),
            ids: Vec::with_capacity(furthest.len()),
            ms: Vec::with_capacity(furthest.len()),
            seq: Vec::with_capacity(furthest.len()),
        };
        for (shard, (ms, seq, id)) in furthest {
            o.shards.push(shard);
            o.ids.push(id.to_owned());
            o.ms.push(ms);
            o.seq.push(seq);
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_keep_the_furthest_per_shard() {
        let p = |shard, id: &str| ShardPosition {
            shard,
            last_id: id.into(),
        };
        let o = Offsets::new(&[p(1, "5-10"), p(0, "3-0"), p(1, "5-9")]).expect("valid");
        assert_eq!(o.shards, vec![0, 1]);
        assert_eq!(o.ids, vec!["3-0".to_string(), "5-10".to_string()]);
    }
}
