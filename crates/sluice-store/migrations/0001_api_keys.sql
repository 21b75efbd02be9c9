-- API keys, stored only as hashes (hex SHA-256 of the key, see sluice_core::keys::hash_key).
CREATE TABLE api_keys (
    id          bigserial   PRIMARY KEY,
    source      text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('write', 'read')),
    key_hash    text        NOT NULL UNIQUE,
    hint        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE INDEX api_keys_source_idx ON api_keys (source);
