-- API keys, stored only as hashes (hex SHA-256 of the key, see sluice_core::keys::hash_key).
-- Times are INTEGER microseconds since the Unix epoch (UTC), like every time in this schema.
CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY,
    source      TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('write', 'read')),
    key_hash    TEXT    NOT NULL UNIQUE,
    hint        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE INDEX api_keys_source_idx ON api_keys (source);
