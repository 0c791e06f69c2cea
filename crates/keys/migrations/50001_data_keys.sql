-- Keys outside the log (DESIGN.md §6b). Every key here is wrapped
-- (XChaCha20-Poly1305) under the master key from configuration, named by
-- `master_key_id` (a fingerprint, never the key).

-- One data key per person (the subject: an account id). Erasure sets
-- `wrapped` to NULL and keeps the row as a tombstone, so that no key is
-- ever made again for an erased person.
CREATE TABLE data_keys (
    subject       uuid PRIMARY KEY,
    wrapped       bytea,
    master_key_id text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    erased_at     timestamptz,
    CHECK ((wrapped IS NULL) = (erased_at IS NOT NULL)),
    CHECK ((wrapped IS NULL) = (master_key_id IS NULL))
);

-- The marketplace's own keys (the email index HMAC key).
CREATE TABLE keyring_secrets (
    name          text PRIMARY KEY,
    wrapped       bytea NOT NULL,
    master_key_id text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
