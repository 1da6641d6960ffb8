-- The DHT keeps whole signed records so that a restarted node can serve (and verify) them
-- again: `value_data` stays the plain value (as in the seed), `record` is the encoded record
-- with its signature, `origin` says whether this node published it (and so republishes it)
-- or holds it for another node.
ALTER TABLE meshcore_dht ADD COLUMN record BLOB;
ALTER TABLE meshcore_dht ADD COLUMN origin TEXT NOT NULL DEFAULT 'replica'
    CHECK (origin IN ('published', 'replica'));
