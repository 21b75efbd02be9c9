//! API keys in `api_keys`: the same format as the PostgreSQL backend (`sk_w_` / `sk_r_` + 32 hex
//! characters), stored only as `hash_key(key)` plus a short hint.

use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension, Row};
use sluice_core::keys::{hash_key, key_hint, KeyKind, KeyRecord};
use sluice_core::warehouse::StoreError;

use super::commit::from_micros;
use super::{sql, sqlite_error};
use crate::common::generate_key;

pub(crate) fn create_key(
    conn: &mut Connection,
    source: &str,
    kind: KeyKind,
) -> Result<(String, KeyRecord), StoreError> {
    let key = generate_key(kind);
    let now = Utc::now().timestamp_micros();
    let rec = conn
        .query_row(
            sql::INSERT_KEY,
            params![source, kind.as_str(), hash_key(&key), key_hint(&key), now],
            |r| Ok(record(r)),
        )
        .map_err(sqlite_error)??;
    Ok((key, rec))
}

pub(crate) fn list_keys(conn: &Connection) -> Result<Vec<KeyRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(sql::LIST_KEYS).map_err(sqlite_error)?;
    let rows = stmt
        .query_map([], |r| Ok(record(r)))
        .map_err(sqlite_error)?;
    rows.map(|r| r.map_err(sqlite_error)?).collect()
}

/// `id_or_key` is a numeric id or the key itself (which is hashed, never stored or logged).
pub(crate) fn revoke_key(conn: &mut Connection, id_or_key: &str) -> Result<KeyRecord, StoreError> {
    let id_or_key = id_or_key.trim();
    let (id, hash): (Option<i64>, Option<String>) = match id_or_key.parse::<i64>() {
        Ok(id) => (Some(id), None),
        Err(_) => (None, Some(hash_key(id_or_key))),
    };
    let now = Utc::now().timestamp_micros();
    conn.query_row(sql::REVOKE_KEY, params![id, hash, now], |r| Ok(record(r)))
        .optional()
        .map_err(sqlite_error)?
        .ok_or_else(|| match id {
            Some(id) => StoreError::NotFound(format!("no key with id {id}")),
            None => StoreError::NotFound(format!("no key {}", key_hint(id_or_key))),
        })?
}

fn record(r: &Row<'_>) -> Result<KeyRecord, StoreError> {
    let e = |e: rusqlite::Error| sqlite_error(e);
    let kind: String = r.get(2).map_err(e)?;
    Ok(KeyRecord {
        id: r.get(0).map_err(e)?,
        source: r.get(1).map_err(e)?,
        kind: KeyKind::parse(&kind)
            .ok_or_else(|| StoreError::Other(format!("unknown key kind {kind:?}")))?,
        hash: r.get(3).map_err(e)?,
        hint: r.get(4).map_err(e)?,
        created_at: from_micros(r.get(5).map_err(e)?)?,
        revoked_at: r
            .get::<_, Option<i64>>(6)
            .map_err(e)?
            .map(from_micros)
            .transpose()?,
    })
}
