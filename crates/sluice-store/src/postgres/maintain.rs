//! Housekeeping run by `maintain()` (the warehouse worker calls it periodically):
//!
//! - native partitioning: day partitions `events_pYYYYMMDD` for today-1 … today+7 (UTC), moving
//!   rows that already landed in `events_default` for that day into the new partition; retention
//!   drops whole day partitions older than `retention_days` (`events_default` is never pruned);
//! - TimescaleDB: keeps the retention policy in line with `retention_days` (chunks and
//!   compression are TimescaleDB's own jobs);
//! - both: prune `event_dedupe` older than the dedupe window, in small batches.

use chrono::{Days, NaiveDate, Utc};
use sluice_core::warehouse::StoreError;

use super::migrate::Flavour;
use super::{pg_error, sql, PgWarehouse};

/// Days before today for which a partition is ensured (late events of yesterday).
const DAYS_BEHIND: u64 = 1;
/// Days after today created ahead.
const DAYS_AHEAD: u64 = 7;

pub(crate) async fn maintain(wh: &PgWarehouse) -> Result<(), StoreError> {
    match wh.flavour().await? {
        Flavour::Native => {
            ensure_partitions(wh).await?;
            apply_native_retention(wh).await?;
        }
        Flavour::TimescaleDb => sync_timescale_retention(wh).await?,
    }
    prune_dedupe(wh).await?;
    Ok(())
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// Create the missing day partitions around today.
pub(crate) async fn ensure_partitions(wh: &PgWarehouse) -> Result<(), StoreError> {
    let today = today();
    let first = today
        .checked_sub_days(Days::new(DAYS_BEHIND))
        .unwrap_or(today);
    let existing = partition_days(wh).await?;
    for day in first
        .iter_days()
        .take((DAYS_BEHIND + 1 + DAYS_AHEAD) as usize)
    {
        if !existing.contains(&day) {
            create_partition(wh, day).await?;
        }
    }
    Ok(())
}

/// Create one day partition; returns how many rows were moved out of the default partition.
/// Public to the crate so tests can create a partition for a day far from today.
pub(crate) async fn create_partition(wh: &PgWarehouse, day: NaiveDate) -> Result<u64, StoreError> {
    let ddl = sql::create_day_partition(day)
        .ok_or_else(|| StoreError::Invalid(format!("no partition possible for {day}")))?;
    let name = sql::day_partition_name(day);
    let mut client = wh.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.batch_execute(sql::MAINTAIN_TX_SETTINGS)
        .await
        .map_err(pg_error)?;
    tx.execute(sql::LOCK_XACT, &[&sql::MAINTAIN_LOCK])
        .await
        .map_err(pg_error)?;
    let exists: bool = tx
        .query_one(sql::RELATION_EXISTS, &[&name])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(pg_error)?;
    if exists {
        return Ok(0); // another maintainer was first; the transaction rolls back on drop
    }
    tx.batch_execute(sql::LOCK_DEFAULT_PARTITION)
        .await
        .map_err(pg_error)?;
    tx.batch_execute(&ddl).await.map_err(pg_error)?;
    let moved: i64 = tx
        .query_one(&format!("SELECT count(*) FROM {name}"), &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    tracing::info!(partition = %name, moved, "created day partition");
    Ok(u64::try_from(moved).unwrap_or(0))
}

/// The days that have a partition `events_pYYYYMMDD`.
async fn partition_days(wh: &PgWarehouse) -> Result<Vec<NaiveDate>, StoreError> {
    let client = wh.client().await?;
    let rows = client
        .query(sql::LIST_PARTITIONS, &[])
        .await
        .map_err(pg_error)?;
    let mut days = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get(0).map_err(pg_error)?;
        if let Some(day) = name
            .strip_prefix("events_p")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
        {
            days.push(day);
        }
    }
    Ok(days)
}

/// Drop day partitions that lie entirely before `now - retention_days`.
async fn apply_native_retention(wh: &PgWarehouse) -> Result<(), StoreError> {
    let Some(retention) = wh.opts.retention_days else {
        return Ok(());
    };
    let Some(cutoff) = today().checked_sub_days(Days::new(u64::from(retention))) else {
        return Ok(());
    };
    for day in partition_days(wh).await? {
        // Partition [day, day+1) is entirely older than the cutoff day's start.
        if day.succ_opt().is_some_and(|next| next <= cutoff) {
            let mut client = wh.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            tx.batch_execute(sql::MAINTAIN_TX_SETTINGS)
                .await
                .map_err(pg_error)?;
            tx.execute(sql::LOCK_XACT, &[&sql::MAINTAIN_LOCK])
                .await
                .map_err(pg_error)?;
            tx.batch_execute(&sql::drop_day_partition(day))
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            tracing::info!(partition = %sql::day_partition_name(day), "dropped by retention");
        }
    }
    Ok(())
}

async fn sync_timescale_retention(wh: &PgWarehouse) -> Result<(), StoreError> {
    let days: Option<i32> = wh
        .opts
        .retention_days
        .map(|d| i32::try_from(d).unwrap_or(i32::MAX));
    let client = wh.client().await?;
    let matches: bool = client
        .query_one(sql::TIMESCALE_RETENTION_MATCHES, &[&days])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(pg_error)?;
    if matches {
        return Ok(());
    }
    client
        .execute(sql::TIMESCALE_REMOVE_RETENTION, &[])
        .await
        .map_err(pg_error)?;
    if days.is_some() {
        client
            .execute(sql::TIMESCALE_ADD_RETENTION, &[&days])
            .await
            .map_err(pg_error)?;
    }
    Ok(())
}

/// Delete dedupe records older than the window, 10,000 rows per statement (each its own short
/// transaction), until none are left.
async fn prune_dedupe(wh: &PgWarehouse) -> Result<u64, StoreError> {
    let window = wh.opts.dedupe_window.as_secs_f64();
    let client = wh.client().await?;
    let stmt = client
        .prepare_cached(sql::PRUNE_DEDUPE)
        .await
        .map_err(pg_error)?;
    let mut total = 0;
    loop {
        let n = client.execute(&stmt, &[&window]).await.map_err(pg_error)?;
        total += n;
        if n < sql::PRUNE_BATCH {
            break;
        }
        tokio::task::yield_now().await;
    }
    if total > 0 {
        tracing::info!(pruned = total, "pruned dedupe records");
    }
    Ok(total)
}
