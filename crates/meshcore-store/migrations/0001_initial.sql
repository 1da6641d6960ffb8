-- Meshcore schema, version 1.
-- Table and column names follow the Aevov Meshcore specification so that tools written
-- against it keep working; columns marked (meshcore) are additions.
-- Times are Unix seconds (INTEGER). JSON columns hold JSON text.

CREATE TABLE meshcore_nodes (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id          TEXT    NOT NULL UNIQUE,            -- 64 hex chars (Ed25519 public key)
    peer_id          TEXT,                               -- transport-level id, when it differs
    public_key       TEXT    NOT NULL,
    capabilities     TEXT    NOT NULL DEFAULT '[]',      -- JSON array
    network_info     TEXT    NOT NULL DEFAULT '{}',      -- JSON: addresses, transport hints
    last_seen        INTEGER NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'unknown',
    reputation_score REAL    NOT NULL DEFAULT 1.0 CHECK (reputation_score >= 0.0)
);
CREATE INDEX meshcore_nodes_last_seen ON meshcore_nodes (last_seen);

CREATE TABLE meshcore_connections (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    connection_id   TEXT    NOT NULL UNIQUE,
    local_node_id   TEXT    NOT NULL,
    remote_node_id  TEXT    NOT NULL,
    connection_type TEXT    NOT NULL,                    -- 'quic' | 'webrtc'
    status          TEXT    NOT NULL,
    quality_score   REAL    NOT NULL DEFAULT 0.0,
    bandwidth_up    INTEGER NOT NULL DEFAULT 0,          -- bytes per second
    bandwidth_down  INTEGER NOT NULL DEFAULT 0,          -- bytes per second
    latency         REAL,                                -- milliseconds
    packet_loss     REAL,                                -- fraction 0..1
    bytes_sent      INTEGER NOT NULL DEFAULT 0,
    bytes_received  INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,                    -- (meshcore)
    updated_at      INTEGER NOT NULL                     -- (meshcore)
);
CREATE INDEX meshcore_connections_remote ON meshcore_connections (remote_node_id);

CREATE TABLE meshcore_routes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    destination_id TEXT    NOT NULL,
    next_hop_id    TEXT    NOT NULL,
    hop_count      INTEGER NOT NULL CHECK (hop_count >= 1),
    path_quality   REAL    NOT NULL,
    path_cost      REAL    NOT NULL,
    path_nodes     TEXT    NOT NULL DEFAULT '[]',        -- JSON array of node ids
    expires_at     INTEGER NOT NULL,
    UNIQUE (destination_id, next_hop_id)
);
CREATE INDEX meshcore_routes_expires ON meshcore_routes (expires_at);

CREATE TABLE meshcore_dht (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    key_hash   TEXT    NOT NULL UNIQUE,                  -- hex SHA-256 of the key
    value_data BLOB    NOT NULL,
    node_id    TEXT    NOT NULL,                         -- publisher / owner
    ttl        INTEGER NOT NULL CHECK (ttl > 0),         -- seconds
    expires_at INTEGER NOT NULL
);
CREATE INDEX meshcore_dht_expires ON meshcore_dht (expires_at);

CREATE TABLE meshcore_bandwidth_tokens (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id             TEXT    NOT NULL UNIQUE,
    tokens_earned       INTEGER NOT NULL DEFAULT 0 CHECK (tokens_earned >= 0),
    tokens_spent        INTEGER NOT NULL DEFAULT 0 CHECK (tokens_spent >= 0),
    bytes_relayed       INTEGER NOT NULL DEFAULT 0 CHECK (bytes_relayed >= 0),
    bytes_consumed      INTEGER NOT NULL DEFAULT 0 CHECK (bytes_consumed >= 0),
    reputation_modifier REAL    NOT NULL DEFAULT 1.0
);

-- Runtime setting changes (through the API or `meshcore config set`). Each row overrides
-- the default, the config file, the environment and the flags for that key.
CREATE TABLE meshcore_settings (
    key        TEXT    PRIMARY KEY NOT NULL,
    value      TEXT    NOT NULL,                         -- JSON value
    updated_at INTEGER NOT NULL
);
