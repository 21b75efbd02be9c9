//! Authentication: finding the key in a request, and the in-memory key cache refreshed from the
//! `KeyStore`.
//!
//! Keys are looked up by their SHA-256 (the store keeps only hashes); the final comparison of
//! hashes is constant-time. Keys are never logged: only `key_hint` (the first characters).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{header, HeaderMap};
use sluice_core::keys::{hash_key, KeyKind};
use sluice_core::warehouse::{KeyStore, StoreError};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// What a valid key grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub source: String,
    pub kind: KeyKind,
}

#[derive(Debug, Clone)]
struct CachedKey {
    hash: String,
    principal: Principal,
}

/// Active keys by hash, replaced whole on each refresh.
#[derive(Default)]
pub struct KeyCache {
    keys: RwLock<Arc<HashMap<String, CachedKey>>>,
}

impl KeyCache {
    /// Reload every active key from the store.
    pub async fn refresh(&self, store: &dyn KeyStore) -> Result<usize, StoreError> {
        let records = store.list_keys().await?;
        let map: HashMap<String, CachedKey> = records
            .into_iter()
            .filter(|r| r.revoked_at.is_none())
            .map(|r| {
                let key = CachedKey {
                    hash: r.hash.clone(),
                    principal: Principal {
                        source: r.source,
                        kind: r.kind,
                    },
                };
                (r.hash, key)
            })
            .collect();
        let n = map.len();
        if let Ok(mut guard) = self.keys.write() {
            *guard = Arc::new(map);
        }
        Ok(n)
    }

    /// The principal of a presented key, if the key is active.
    pub fn lookup(&self, presented: &str) -> Option<Principal> {
        let hash = hash_key(presented);
        let keys = self.keys.read().ok()?.clone();
        let found = keys.get(&hash)?;
        bool::from(found.hash.as_bytes().ct_eq(hash.as_bytes())).then(|| found.principal.clone())
    }

    /// Keep the cache fresh until `shutdown` resolves: new and revoked keys take effect within
    /// `every`.
    pub async fn refresh_loop(
        self: Arc<Self>,
        store: Arc<dyn KeyStore>,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    if let Err(e) = self.refresh(store.as_ref()).await {
                        tracing::warn!(error = %e, "refreshing API keys failed; keeping the previous set");
                    }
                }
            }
        }
    }
}

/// The key a request presents in its headers: HTTP Basic username (Segment's convention, empty
/// password) or `Authorization: Bearer`.
pub fn key_from_headers(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(rest.trim_end_matches('='))
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
        return (!user.is_empty()).then(|| user.to_string());
    }
    None
}

/// Check a presented key for the needed kind.
pub fn authorize(
    cache: &KeyCache,
    key: Option<&str>,
    needed: KeyKind,
) -> Result<Principal, ApiError> {
    let Some(key) = key else {
        return Err(ApiError::Unauthorized(match needed {
            KeyKind::Write => "a write key is required: HTTP Basic username, Authorization: Bearer, or writeKey in the body".into(),
            KeyKind::Read => "a read key is required: Authorization: Bearer <read key>".into(),
        }));
    };
    let Some(principal) = cache.lookup(key) else {
        return Err(ApiError::Unauthorized("unknown or revoked key".into()));
    };
    if principal.kind != needed {
        return Err(ApiError::Forbidden(format!(
            "a {} key cannot be used here; use a {} key",
            principal.kind.as_str(),
            needed.as_str()
        )));
    }
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn basic_username_is_the_key() {
        let mut h = HeaderMap::new();
        // "sk_w_abc:" in base64
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic c2tfd19hYmM6"),
        );
        assert_eq!(key_from_headers(&h).as_deref(), Some("sk_w_abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic c2tfd19hYmM"),
        );
        assert_eq!(key_from_headers(&h).as_deref(), Some("sk_w_abc"));
    }

    #[test]
    fn bearer_and_garbage() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk_r_x"),
        );
        assert_eq!(key_from_headers(&h).as_deref(), Some("sk_r_x"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(key_from_headers(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Digest x"));
        assert_eq!(key_from_headers(&h), None);
    }
}
