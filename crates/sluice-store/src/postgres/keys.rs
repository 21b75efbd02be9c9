//! API keys in `api_keys`: generated here, stored only as `hash_key(key)` plus a short hint.

use sluice_core::keys::{hash_key, key_hint, KeyKind, KeyRecord};
use sluice_core::warehouse::StoreError;
use tokio_postgres::Row;

use super::{pg_error, sql, PgWarehouse};
use crate::common::generate_key;

pub(crate) async fn create_key(
    wh: &PgWarehouse,
    source: &str,
    kind: KeyKind,
) -> Result<(String, KeyRecord), StoreError> {
    if source.trim().is_empty() {
        return Err(StoreError::Invalid("source must not be empty".into()));
    }
    let key = generate_key(kind);
    let client = wh.client().await?;
    let row = client
        .query_one(
            sql::INSERT_KEY,
            &[&source, &kind.as_str(), &hash_key(&key), &key_hint(&key)],
        )
        .await
        .map_err(pg_error)?;
    Ok((key, record(&row)?))
}

pub(crate) async fn list_keys(wh: &PgWarehouse) -> Result<Vec<KeyRecord>, StoreError> {
    let client = wh.client().await?;
    let rows = client.query(sql::LIST_KEYS, &[]).await.map_err(pg_error)?;
    rows.iter().map(record).collect()
}

/// `id_or_key` is a numeric id or the key itself (which is hashed, never stored or logged).
pub(crate) async fn revoke_key(wh: &PgWarehouse, id_or_key: &str) -> Result<KeyRecord, StoreError> {
    let id_or_key = id_or_key.trim();
    let (id, hash): (Option<i64>, Option<String>) = match id_or_key.parse::<i64>() {
        Ok(id) => (Some(id), None),
        Err(_) => (None, Some(hash_key(id_or_key))),
    };
    let client = wh.client().await?;
    let row = client
        .query_opt(sql::REVOKE_KEY, &[&id, &hash])
        .await
        .map_err(pg_error)?
        .ok_or_else(|| match id {
            Some(id) => StoreError::NotFound(format!("no key with id {id}")),
            None => StoreError::NotFound(format!("no key {}", key_hint(id_or_key))),
        })?;
    record(&row)
}

fn record(row: &Row) -> Result<KeyRecord, StoreError> {
    let kind: String = row.try_get(2).map_err(pg_error)?;
    Ok(KeyRecord {
        id: row.try_get(0).map_err(pg_error)?,
        source: row.try_get(1).map_err(pg_error)?,
        kind: KeyKind::parse(&kind)
            .ok_or_else(|| StoreError::Other(format!("unknown key kind {kind:?}")))?,
        hash: row.try_get(3).map_err(pg_error)?,
        hint: row.try_get(4).map_err(pg_error)?,
        created_at: row.try_get(5).map_err(pg_error)?,
        revoked_at: row.try_get(6).map_err(pg_error)?,
    })
}
