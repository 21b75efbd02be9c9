//! API keys: generation format, hashing, and the kinds of key. Keys are stored only as hashes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// May ingest events, nothing else.
    Write,
    /// May query, watch live data and open the dashboard, never ingest.
    Read,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Write => "write",
            KeyKind::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<KeyKind> {
        match s {
            "write" => Some(KeyKind::Write),
            "read" => Some(KeyKind::Read),
            _ => None,
        }
    }

    /// Prefix of generated keys, so a leaked key says what it is.
    pub fn prefix(self) -> &'static str {
        match self {
            KeyKind::Write => "sk_w_",
            KeyKind::Read => "sk_r_",
        }
    }
}

/// A key as the stores list it: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: i64,
    pub source: String,
    pub kind: KeyKind,
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// The first characters of the key, safe to show ("sk_w_3f9a…").
    pub hint: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What may be shown of a key in logs and listings.
pub fn key_hint(key: &str) -> String {
    let shown: String = key.chars().take(9).collect();
    format!("{shown}…")
}

/// The stored form of a key: hex SHA-256. Keys are long random strings, so a plain hash is enough
/// (no password stretching needed), and it lets the API look keys up by hash.
pub fn hash_key(key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(key.as_bytes()))
}
