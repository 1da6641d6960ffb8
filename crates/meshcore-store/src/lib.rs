//! # meshcore-store
//!
//! The node's durable state in SQLite. The database runs in WAL mode, its schema is built by
//! the versioned migrations in `migrations/` (applied on open, in order, each once), and this
//! crate is the only place in Meshcore that contains SQL.
//!
//! **Architecture invariant:** the store is never awaited on a packet path. Live protocol
//! state is held in memory by its owner; the store receives durable facts (settings, DHT
//! records, ledger entries) in transactions and the rest in batches.
//!
//! Tables keep the names and columns of the Aevov Meshcore specification
//! (`meshcore_nodes`, `meshcore_connections`, `meshcore_routes`, `meshcore_dht`,
//! `meshcore_bandwidth_tokens`) plus `meshcore_settings` for runtime setting changes, and
//! for the relay ledger `meshcore_ledger_ious` (the latest signed IOU per neighbour and
//! direction) and `meshcore_ledger_state` (this node's epoch, allowance pool and own
//! reputation); ledger accounts are rows of `meshcore_bandwidth_tokens`, and each rated
//! neighbour's reputation multiplier is its `meshcore_nodes.reputation_score`.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "meshcore.db";

/// How long a statement waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in the pool for a file database (WAL lets readers run beside one writer).
const MAX_CONNECTIONS: u32 = 4;

/// The tables every Meshcore database has, in schema order.
pub const TABLES: [&str; 8] = [
    "meshcore_nodes",
    "meshcore_connections",
    "meshcore_routes",
    "meshcore_dht",
    "meshcore_bandwidth_tokens",
    "meshcore_settings",
    "meshcore_ledger_ious",
    "meshcore_ledger_state",
];

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or created.
    #[error("cannot open the database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        source: sqlx::Error,
    },
    /// A migration failed; the database is left at its previous version.
    #[error("cannot migrate the database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored setting is not valid JSON (the row was written outside Meshcore).
    #[error("stored setting {key:?} is not valid JSON: {source}")]
    CorruptSetting {
        /// The setting's key.
        key: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// Row counts of the mesh tables, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableCounts {
    /// Rows in `meshcore_nodes`.
    pub nodes: i64,
    /// Rows in `meshcore_connections`.
    pub connections: i64,
    /// Rows in `meshcore_routes`.
    pub routes: i64,
    /// Rows in `meshcore_dht`.
    pub dht_records: i64,
}

/// A row of `meshcore_nodes`: a node this node knows.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRecord {
    /// The node id (64 hex characters).
    pub node_id: String,
    /// Its capability names.
    pub capabilities: Vec<String>,
    /// Addresses where it accepts links (`HOST:PORT`), kept in `network_info`.
    pub addrs: Vec<String>,
    /// Unix seconds when it was last linked or heard of.
    pub last_seen: i64,
    /// `connected`, `disconnected`, `known` or `blacklisted`.
    pub status: String,
}

/// A row of `meshcore_dht`: one DHT record this node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtRow {
    /// The record's DHT key (64 hex characters).
    pub key_hash: String,
    /// The plain value.
    pub value_data: Vec<u8>,
    /// The owner of a signed record, this node for a record it published, or empty for an
    /// immutable record held for another node (those carry no signer).
    pub node_id: String,
    /// Seconds the record had left to live when it was stored (at least 1).
    pub ttl: i64,
    /// Unix seconds when it expires.
    pub expires_at: i64,
    /// The encoded record, with its signature.
    pub record: Vec<u8>,
    /// `published` (this node republishes it) or `replica`.
    pub origin: String,
}

/// A row of `meshcore_routes`: a route this node has selected.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRow {
    /// The destination's node id (64 hex characters).
    pub destination_id: String,
    /// The neighbour packets for the destination go to.
    pub next_hop_id: String,
    /// Hops to the destination (at least 1).
    pub hop_count: i64,
    /// 0.0 to 1.0, higher is better (derived from the route's metric).
    pub path_quality: f64,
    /// The route's metric (units of 0.1 ms; see the router's metric).
    pub path_cost: f64,
    /// The nodes on the path, next hop first, destination last.
    pub path_nodes: Vec<String>,
    /// Unix seconds when the route expires unless refreshed.
    pub expires_at: i64,
}

/// A row of `meshcore_bandwidth_tokens`: this node's account with one neighbour (amounts in
/// milli-tokens; see `migrations/0003_ledger.sql`).
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerAccountRow {
    /// The neighbour's node id (64 hex characters).
    pub neighbour_id: String,
    /// Paid to this node by the neighbour.
    pub tokens_earned_milli: i64,
    /// Paid by this node to the neighbour.
    pub tokens_spent_milli: i64,
    /// Bytes this node carried for the neighbour.
    pub bytes_relayed: i64,
    /// Bytes the neighbour carried for this node.
    pub bytes_consumed: i64,
    /// The neighbour's reputation score, 0 to 1000.
    pub reputation_score: i64,
    /// When that score was last decayed, Unix milliseconds.
    pub reputation_as_of_ms: i64,
    /// The fee multiplier the score gives (1.0 to 1.5), for display.
    pub reputation_modifier: f64,
    /// Charges to the neighbour, milli-tokens·bytes/MB, as decimal text.
    pub receivable_micro: String,
    /// Charges by the neighbour, milli-tokens·bytes/MB, as decimal text.
    pub payable_micro: String,
    /// The free allowance issued for paying the neighbour, if any yet.
    pub allowance_milli: Option<i64>,
    /// Paid by the neighbour before the epoch of its latest IOU.
    pub earned_before_epoch_milli: i64,
    /// Paid to the neighbour before the epoch of this node's latest IOU.
    pub spent_before_epoch_milli: i64,
    /// Bytes paid for before the epoch of this node's latest IOU.
    pub spent_before_epoch_bytes: i64,
    /// Since when the neighbour has owed more than its cut-off, Unix milliseconds.
    pub over_cutoff_since_ms: Option<i64>,
}

/// A row of `meshcore_ledger_ious`: the latest IOU on one link direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerIouRow {
    /// The neighbour's node id.
    pub neighbour_id: String,
    /// `received` (the neighbour signed it) or `sent` (this node signed it).
    pub direction: String,
    /// The payer's epoch.
    pub epoch: i64,
    /// The payer's sequence number.
    pub seq: i64,
    /// Bytes paid for in the epoch.
    pub cumulative_bytes: i64,
    /// Milli-tokens owed in the epoch.
    pub cumulative_amount_milli: i64,
    /// The encoded signed IOU.
    pub iou: Vec<u8>,
}

/// The row of `meshcore_ledger_state`: this node's side of the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerStateRow {
    /// The epoch this node signs IOUs in.
    pub epoch: i64,
    /// Unissued free allowance.
    pub allowance_pool_milli: i64,
    /// When the pool was last refilled, Unix milliseconds.
    pub allowance_pool_as_of_ms: i64,
    /// This node's own reputation score, 0 to 1000.
    pub own_reputation_score: i64,
    /// When it was last decayed, Unix milliseconds.
    pub own_reputation_as_of_ms: i64,
}

/// Everything the ledger persists, written by [`Store::save_ledger`] in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedgerRows {
    /// This node's side; `None` for a ledger never saved.
    pub state: Option<LedgerStateRow>,
    /// One row per neighbour.
    pub accounts: Vec<LedgerAccountRow>,
    /// The latest IOU per neighbour and direction.
    pub ious: Vec<LedgerIouRow>,
}

/// A change to the DHT records, written in order by [`Store::apply_dht_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhtChange {
    /// Insert or replace the row with this key.
    Put(DhtRow),
    /// Delete the row with this key.
    Remove(String),
    /// Delete every row that expires at or before these unix seconds.
    RemoveExpired(i64),
}

/// A handle to the node's database. Cheap to clone; all clones share one pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database at `path` in WAL mode and applies any
    /// migrations it has not seen yet.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        Self::migrate(pool).await
    }

    /// Opens a private in-memory database (for tests and simulations).
    pub async fn open_in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        // One connection: every connection to `:memory:` would be a separate database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        Self::migrate(pool).await
    }

    async fn migrate(pool: SqlitePool) -> Result<Self, StoreError> {
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// The journal mode in force (`"wal"` for a file database).
    pub async fn journal_mode(&self) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&self.pool)
            .await?)
    }

    /// The newest migration applied to this database.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The column names of `table`, in order. `table` must be one of [`TABLES`].
    pub async fn columns(&self, table: &str) -> Result<Vec<String>, StoreError> {
        if !TABLES.contains(&table) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query("SELECT name FROM pragma_table_info(?1)")
            .bind(table)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|row| row.get::<String, _>(0)).collect())
    }

    /// Every runtime setting change, by key, as stored JSON values.
    pub async fn setting_overrides(
        &self,
    ) -> Result<BTreeMap<String, serde_json::Value>, StoreError> {
        let rows = sqlx::query("SELECT key, value FROM meshcore_settings ORDER BY key")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let key: String = row.get(0);
                let text: String = row.get(1);
                match serde_json::from_str(&text) {
                    Ok(value) => Ok((key, value)),
                    Err(source) => Err(StoreError::CorruptSetting { key, source }),
                }
            })
            .collect()
    }

    /// Saves runtime setting changes, all or none, in one transaction.
    pub async fn save_settings(
        &self,
        changes: &BTreeMap<String, serde_json::Value>,
        now_unix: i64,
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        for (key, value) in changes {
            sqlx::query(
                "INSERT INTO meshcore_settings (key, value, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(key)
            .bind(value.to_string())
            .bind(now_unix)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Forgets the runtime change of `key`; returns whether there was one.
    pub async fn delete_setting(&self, key: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM meshcore_settings WHERE key = ?1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    /// A node's `reputation_score`: the relay ledger's reputation multiplier for it (1.0
    /// to 1.5), written by [`Store::save_ledger`]; 1.0 for a node the ledger never rated.
    pub async fn node_reputation(&self, node_id: &str) -> Result<Option<f64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT reputation_score FROM meshcore_nodes WHERE node_id = ?1")
                .bind(node_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Inserts or updates known nodes, all in one transaction. `reputation_score` is not
    /// touched (new rows start at 1.0): the ledger owns it.
    pub async fn upsert_nodes(&self, nodes: &[NodeRecord]) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        for node in nodes {
            let capabilities = serde_json::Value::from(node.capabilities.clone()).to_string();
            let network_info = serde_json::json!({ "addrs": node.addrs }).to_string();
            sqlx::query(
                "INSERT INTO meshcore_nodes
                     (node_id, public_key, capabilities, network_info, last_seen, status)
                 VALUES (?1, ?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (node_id) DO UPDATE SET
                     capabilities = excluded.capabilities,
                     network_info = excluded.network_info,
                     last_seen = MAX(last_seen, excluded.last_seen),
                     status = excluded.status",
            )
            .bind(&node.node_id)
            .bind(capabilities)
            .bind(network_info)
            .bind(node.last_seen)
            .bind(&node.status)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// The `limit` most recently seen known nodes. Rows whose JSON columns do not parse are
    /// returned with empty lists rather than failing the whole load.
    pub async fn load_nodes(&self, limit: i64) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT node_id, capabilities, network_info, last_seen, status
             FROM meshcore_nodes ORDER BY last_seen DESC LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let capabilities: Vec<String> =
                    serde_json::from_str(&row.get::<String, _>(1)).unwrap_or_default();
                let network_info: serde_json::Value =
                    serde_json::from_str(&row.get::<String, _>(2)).unwrap_or_default();
                let addrs = network_info["addrs"]
                    .as_array()
                    .map(|addrs| {
                        addrs
                            .iter()
                            .filter_map(|a| a.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                NodeRecord {
                    node_id: row.get(0),
                    capabilities,
                    addrs,
                    last_seen: row.get(3),
                    status: row.get(4),
                }
            })
            .collect())
    }

    /// Applies DHT record changes in order, in one transaction.
    pub async fn apply_dht_changes(&self, changes: &[DhtChange]) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        for change in changes {
            match change {
                DhtChange::Put(row) => {
                    sqlx::query(
                        "INSERT INTO meshcore_dht
                             (key_hash, value_data, node_id, ttl, expires_at, record, origin)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (key_hash) DO UPDATE SET
                             value_data = excluded.value_data,
                             node_id = excluded.node_id,
                             ttl = excluded.ttl,
                             expires_at = excluded.expires_at,
                             record = excluded.record,
                             origin = excluded.origin",
                    )
                    .bind(&row.key_hash)
                    .bind(&row.value_data)
                    .bind(&row.node_id)
                    .bind(row.ttl.max(1))
                    .bind(row.expires_at)
                    .bind(&row.record)
                    .bind(&row.origin)
                    .execute(&mut *transaction)
                    .await?;
                }
                DhtChange::Remove(key) => {
                    sqlx::query("DELETE FROM meshcore_dht WHERE key_hash = ?1")
                        .bind(key)
                        .execute(&mut *transaction)
                        .await?;
                }
                DhtChange::RemoveExpired(now) => {
                    sqlx::query("DELETE FROM meshcore_dht WHERE expires_at <= ?1")
                        .bind(now)
                        .execute(&mut *transaction)
                        .await?;
                }
            }
        }
        transaction.commit().await?;
        Ok(())
    }

    /// The DHT records that have not expired at `now` (unix seconds) and carry an encoded
    /// record, soonest-expiring last.
    pub async fn load_dht_records(&self, now: i64) -> Result<Vec<DhtRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_hash, value_data, node_id, ttl, expires_at, record, origin
             FROM meshcore_dht WHERE expires_at > ?1 AND record IS NOT NULL
             ORDER BY expires_at DESC",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| DhtRow {
                key_hash: row.get(0),
                value_data: row.get(1),
                node_id: row.get(2),
                ttl: row.get(3),
                expires_at: row.get(4),
                record: row.get(5),
                origin: row.get(6),
            })
            .collect())
    }

    /// Makes `meshcore_routes` hold exactly `routes` (the routes selected now), in one
    /// transaction: the old rows are deleted, the new ones inserted. Rows with a
    /// `hop_count` below 1 are skipped (the table refuses them).
    pub async fn replace_routes(&self, routes: &[RouteRow]) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("DELETE FROM meshcore_routes")
            .execute(&mut *transaction)
            .await?;
        for route in routes.iter().filter(|route| route.hop_count >= 1) {
            let path_nodes = serde_json::Value::from(route.path_nodes.clone()).to_string();
            sqlx::query(
                "INSERT INTO meshcore_routes
                     (destination_id, next_hop_id, hop_count, path_quality, path_cost,
                      path_nodes, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (destination_id, next_hop_id) DO UPDATE SET
                     hop_count = excluded.hop_count,
                     path_quality = excluded.path_quality,
                     path_cost = excluded.path_cost,
                     path_nodes = excluded.path_nodes,
                     expires_at = excluded.expires_at",
            )
            .bind(&route.destination_id)
            .bind(&route.next_hop_id)
            .bind(route.hop_count)
            .bind(route.path_quality)
            .bind(route.path_cost)
            .bind(path_nodes)
            .bind(route.expires_at)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// The stored routes, by destination. Rows whose `path_nodes` do not parse are
    /// returned with an empty path.
    pub async fn load_routes(&self) -> Result<Vec<RouteRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT destination_id, next_hop_id, hop_count, path_quality, path_cost,
                    path_nodes, expires_at
             FROM meshcore_routes ORDER BY destination_id, next_hop_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| RouteRow {
                destination_id: row.get(0),
                next_hop_id: row.get(1),
                hop_count: row.get(2),
                path_quality: row.get(3),
                path_cost: row.get(4),
                path_nodes: serde_json::from_str(&row.get::<String, _>(5)).unwrap_or_default(),
                expires_at: row.get(6),
            })
            .collect())
    }

    /// Writes the ledger in one transaction: the state row, every account (inserted or
    /// updated; the seed's `tokens_earned`/`tokens_spent` in whole tokens beside the exact
    /// milli-token columns), each account's reputation multiplier into its node's
    /// `meshcore_nodes.reputation_score` (inserting the node if unknown) and the latest
    /// IOUs. `now` is Unix seconds, for `updated_at`.
    pub async fn save_ledger(&self, rows: &LedgerRows, now: i64) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        if let Some(state) = &rows.state {
            sqlx::query(
                "INSERT INTO meshcore_ledger_state
                     (id, epoch, allowance_pool_milli, allowance_pool_as_of_ms,
                      own_reputation_score, own_reputation_as_of_ms, updated_at)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET
                     epoch = excluded.epoch,
                     allowance_pool_milli = excluded.allowance_pool_milli,
                     allowance_pool_as_of_ms = excluded.allowance_pool_as_of_ms,
                     own_reputation_score = excluded.own_reputation_score,
                     own_reputation_as_of_ms = excluded.own_reputation_as_of_ms,
                     updated_at = excluded.updated_at",
            )
            .bind(state.epoch)
            .bind(state.allowance_pool_milli)
            .bind(state.allowance_pool_as_of_ms)
            .bind(state.own_reputation_score)
            .bind(state.own_reputation_as_of_ms)
            .bind(now)
            .execute(&mut *transaction)
            .await?;
        }
        for account in &rows.accounts {
            sqlx::query(
                "INSERT INTO meshcore_bandwidth_tokens
                     (node_id, tokens_earned, tokens_spent, bytes_relayed, bytes_consumed,
                      reputation_modifier, tokens_earned_milli, tokens_spent_milli,
                      receivable_micro, payable_micro, allowance_milli,
                      earned_before_epoch_milli, spent_before_epoch_milli,
                      spent_before_epoch_bytes, reputation_score, reputation_as_of_ms,
                      over_cutoff_since_ms, updated_at)
                 VALUES (?1, ?2 / 1000, ?3 / 1000, ?4, ?5, ?6, ?2, ?3, ?7, ?8, ?9, ?10, ?11,
                         ?12, ?13, ?14, ?15, ?16)
                 ON CONFLICT (node_id) DO UPDATE SET
                     tokens_earned = excluded.tokens_earned,
                     tokens_spent = excluded.tokens_spent,
                     bytes_relayed = excluded.bytes_relayed,
                     bytes_consumed = excluded.bytes_consumed,
                     reputation_modifier = excluded.reputation_modifier,
                     tokens_earned_milli = excluded.tokens_earned_milli,
                     tokens_spent_milli = excluded.tokens_spent_milli,
                     receivable_micro = excluded.receivable_micro,
                     payable_micro = excluded.payable_micro,
                     allowance_milli = excluded.allowance_milli,
                     earned_before_epoch_milli = excluded.earned_before_epoch_milli,
                     spent_before_epoch_milli = excluded.spent_before_epoch_milli,
                     spent_before_epoch_bytes = excluded.spent_before_epoch_bytes,
                     reputation_score = excluded.reputation_score,
                     reputation_as_of_ms = excluded.reputation_as_of_ms,
                     over_cutoff_since_ms = excluded.over_cutoff_since_ms,
                     updated_at = excluded.updated_at",
            )
            .bind(&account.neighbour_id)
            .bind(account.tokens_earned_milli)
            .bind(account.tokens_spent_milli)
            .bind(account.bytes_relayed)
            .bind(account.bytes_consumed)
            .bind(account.reputation_modifier)
            .bind(&account.receivable_micro)
            .bind(&account.payable_micro)
            .bind(account.allowance_milli)
            .bind(account.earned_before_epoch_milli)
            .bind(account.spent_before_epoch_milli)
            .bind(account.spent_before_epoch_bytes)
            .bind(account.reputation_score)
            .bind(account.reputation_as_of_ms)
            .bind(account.over_cutoff_since_ms)
            .bind(now)
            .execute(&mut *transaction)
            .await?;
            sqlx::query(
                "INSERT INTO meshcore_nodes (node_id, public_key, last_seen, reputation_score)
                 VALUES (?1, ?1, ?2, ?3)
                 ON CONFLICT (node_id) DO UPDATE SET reputation_score = excluded.reputation_score",
            )
            .bind(&account.neighbour_id)
            .bind(now)
            .bind(account.reputation_modifier.max(0.0))
            .execute(&mut *transaction)
            .await?;
        }
        for iou in &rows.ious {
            sqlx::query(
                "INSERT INTO meshcore_ledger_ious
                     (neighbour_id, direction, epoch, seq, cumulative_bytes,
                      cumulative_amount_milli, iou, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (neighbour_id, direction) DO UPDATE SET
                     epoch = excluded.epoch,
                     seq = excluded.seq,
                     cumulative_bytes = excluded.cumulative_bytes,
                     cumulative_amount_milli = excluded.cumulative_amount_milli,
                     iou = excluded.iou,
                     updated_at = excluded.updated_at",
            )
            .bind(&iou.neighbour_id)
            .bind(&iou.direction)
            .bind(iou.epoch)
            .bind(iou.seq)
            .bind(iou.cumulative_bytes)
            .bind(iou.cumulative_amount_milli)
            .bind(&iou.iou)
            .bind(now)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// The stored ledger: accounts by neighbour, IOUs by neighbour and direction.
    pub async fn load_ledger(&self) -> Result<LedgerRows, StoreError> {
        let state = sqlx::query(
            "SELECT epoch, allowance_pool_milli, allowance_pool_as_of_ms,
                    own_reputation_score, own_reputation_as_of_ms
             FROM meshcore_ledger_state WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?
        .map(|row| LedgerStateRow {
            epoch: row.get(0),
            allowance_pool_milli: row.get(1),
            allowance_pool_as_of_ms: row.get(2),
            own_reputation_score: row.get(3),
            own_reputation_as_of_ms: row.get(4),
        });
        let accounts = sqlx::query(
            "SELECT node_id, tokens_earned_milli, tokens_spent_milli, bytes_relayed,
                    bytes_consumed, reputation_score, reputation_as_of_ms, reputation_modifier,
                    receivable_micro, payable_micro, allowance_milli,
                    earned_before_epoch_milli, spent_before_epoch_milli,
                    spent_before_epoch_bytes, over_cutoff_since_ms
             FROM meshcore_bandwidth_tokens ORDER BY node_id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| LedgerAccountRow {
            neighbour_id: row.get(0),
            tokens_earned_milli: row.get(1),
            tokens_spent_milli: row.get(2),
            bytes_relayed: row.get(3),
            bytes_consumed: row.get(4),
            reputation_score: row.get(5),
            reputation_as_of_ms: row.get(6),
            reputation_modifier: row.get(7),
            receivable_micro: row.get(8),
            payable_micro: row.get(9),
            allowance_milli: row.get(10),
            earned_before_epoch_milli: row.get(11),
            spent_before_epoch_milli: row.get(12),
            spent_before_epoch_bytes: row.get(13),
            over_cutoff_since_ms: row.get(14),
        })
        .collect();
        let ious = sqlx::query(
            "SELECT neighbour_id, direction, epoch, seq, cumulative_bytes,
                    cumulative_amount_milli, iou
             FROM meshcore_ledger_ious ORDER BY neighbour_id, direction",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| LedgerIouRow {
            neighbour_id: row.get(0),
            direction: row.get(1),
            epoch: row.get(2),
            seq: row.get(3),
            cumulative_bytes: row.get(4),
            cumulative_amount_milli: row.get(5),
            iou: row.get(6),
        })
        .collect();
        Ok(LedgerRows {
            state,
            accounts,
            ious,
        })
    }

    /// Row counts of the mesh tables.
    pub async fn table_counts(&self) -> Result<TableCounts, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM meshcore_nodes),
                    (SELECT COUNT(*) FROM meshcore_connections),
                    (SELECT COUNT(*) FROM meshcore_routes),
                    (SELECT COUNT(*) FROM meshcore_dht)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(TableCounts {
            nodes: row.get(0),
            connections: row.get(1),
            routes: row.get(2),
            dht_records: row.get(3),
        })
    }

    /// Flushes the write-ahead log into the database file and closes every connection.
    /// Call once on shutdown; afterwards every clone of this store fails its queries.
    pub async fn close(&self) -> Result<(), StoreError> {
        let checkpoint = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await;
        self.pool.close().await;
        checkpoint?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dht_row(key: &str, expires_at: i64) -> DhtRow {
        DhtRow {
            key_hash: key.to_owned(),
            value_data: key.as_bytes().to_vec(),
            node_id: String::new(),
            ttl: 60,
            expires_at,
            record: vec![1, 2, 3],
            origin: "replica".to_owned(),
        }
    }

    #[tokio::test]
    async fn dht_records_are_replaced_removed_and_expired_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(DATABASE_FILE);
        let store = Store::open(&path).await.expect("open");
        let mut replaced = dht_row("a", 2_000);
        replaced.value_data = b"newer".to_vec();
        replaced.origin = "published".to_owned();
        store
            .apply_dht_changes(&[
                DhtChange::Put(dht_row("a", 1_000)),
                DhtChange::Put(dht_row("b", 1_000)),
                DhtChange::Put(dht_row("c", 500)),
                DhtChange::Put(replaced.clone()),
                DhtChange::Remove("b".to_owned()),
            ])
            .await
            .expect("apply");
        store.close().await.expect("close");

        let store = Store::open(&path).await.expect("reopen");
        assert_eq!(
            store.load_dht_records(100).await.expect("load"),
            vec![replaced.clone(), dht_row("c", 500)]
        );
        assert_eq!(
            store.load_dht_records(500).await.expect("load"),
            vec![replaced.clone()],
            "a record expiring now is not loaded"
        );
        store
            .apply_dht_changes(&[DhtChange::RemoveExpired(600)])
            .await
            .expect("expire");
        assert_eq!(store.table_counts().await.expect("counts").dht_records, 1);
    }

    #[tokio::test]
    async fn a_bad_dht_row_changes_nothing() {
        let store = Store::open_in_memory().await.expect("open");
        let mut bad = dht_row("b", 1_000);
        bad.origin = "stolen".to_owned();
        let result = store
            .apply_dht_changes(&[DhtChange::Put(dht_row("a", 1_000)), DhtChange::Put(bad)])
            .await;
        assert!(result.is_err(), "the CHECK on origin refuses the row");
        assert_eq!(store.table_counts().await.expect("counts").dht_records, 0);
    }

    #[tokio::test]
    async fn a_file_database_runs_in_wal_mode_with_the_current_schema() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join(DATABASE_FILE))
            .await
            .expect("open");
        assert_eq!(store.journal_mode().await.expect("pragma"), "wal");
        assert_eq!(store.schema_version().await.expect("version"), 4);
        store.close().await.expect("close");
    }

    #[tokio::test]
    async fn every_table_has_the_specification_columns() {
        let store = Store::open_in_memory().await.expect("open");
        let expected: [(&str, &[&str]); 5] = [
            (
                "meshcore_nodes",
                &[
                    "id",
                    "node_id",
                    "peer_id",
                    "public_key",
                    "capabilities",
                    "network_info",
                    "last_seen",
                    "status",
                    "reputation_score",
                ],
            ),
            (
                "meshcore_connections",
                &[
                    "id",
                    "connection_id",
                    "local_node_id",
                    "remote_node_id",
                    "connection_type",
                    "status",
                    "quality_score",
                    "bandwidth_up",
                    "bandwidth_down",
                    "latency",
                    "packet_loss",
                    "bytes_sent",
                    "bytes_received",
                ],
            ),
            (
                "meshcore_routes",
                &[
                    "id",
                    "destination_id",
                    "next_hop_id",
                    "hop_count",
                    "path_quality",
                    "path_cost",
                    "path_nodes",
                    "expires_at",
                ],
            ),
            (
                "meshcore_dht",
                &[
                    "id",
                    "key_hash",
                    "value_data",
                    "node_id",
                    "ttl",
                    "expires_at",
                ],
            ),
            (
                "meshcore_bandwidth_tokens",
                &[
                    "id",
                    "node_id",
                    "tokens_earned",
                    "tokens_spent",
                    "bytes_relayed",
                    "bytes_consumed",
                    "reputation_modifier",
                ],
            ),
        ];
        for (table, columns) in expected {
            let actual = store.columns(table).await.expect("columns");
            for column in columns {
                assert!(actual.iter().any(|c| c == column), "{table} lacks {column}");
            }
        }
        assert_eq!(
            store.columns("meshcore_settings").await.expect("columns"),
            ["key", "value", "updated_at"]
        );
    }

    fn account_row(neighbour: &str, earned_milli: i64) -> LedgerAccountRow {
        LedgerAccountRow {
            neighbour_id: neighbour.to_owned(),
            tokens_earned_milli: earned_milli,
            tokens_spent_milli: 2_500,
            bytes_relayed: 1_000_000,
            bytes_consumed: 25_000,
            reputation_score: 500,
            reputation_as_of_ms: 1_700_000_000_000,
            reputation_modifier: 1.25,
            receivable_micro: "340282366920938463463374607431768211455".to_owned(),
            payable_micro: "0".to_owned(),
            allowance_milli: Some(10_000),
            earned_before_epoch_milli: 7,
            spent_before_epoch_milli: 8,
            spent_before_epoch_bytes: 9,
            over_cutoff_since_ms: None,
        }
    }

    #[tokio::test]
    async fn the_ledger_is_saved_whole_and_updated_in_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(DATABASE_FILE);
        let store = Store::open(&path).await.expect("open");
        assert_eq!(
            store.load_ledger().await.expect("load"),
            LedgerRows::default()
        );
        let iou = LedgerIouRow {
            neighbour_id: "n1".to_owned(),
            direction: "received".to_owned(),
            epoch: 1_700_000_000_000,
            seq: 3,
            cumulative_bytes: 1_000_000,
            cumulative_amount_milli: 100_000,
            iou: vec![7; 160],
        };
        let mut rows = LedgerRows {
            state: Some(LedgerStateRow {
                epoch: 1_700_000_000_000,
                allowance_pool_milli: 90_000,
                allowance_pool_as_of_ms: 1_700_000_000_001,
                own_reputation_score: 0,
                own_reputation_as_of_ms: 1_700_000_000_002,
            }),
            accounts: vec![account_row("n1", 100_999), account_row("n2", 0)],
            ious: vec![iou.clone()],
        };
        store.save_ledger(&rows, 10).await.expect("save");
        // The ledger's reputation multiplier is the node's reputation_score.
        assert_eq!(store.node_reputation("n1").await.expect("read"), Some(1.25));
        assert_eq!(store.node_reputation("n3").await.expect("read"), None);
        store.close().await.expect("close");

        let store = Store::open(&path).await.expect("reopen");
        assert_eq!(store.load_ledger().await.expect("load"), rows);
        // The seed's columns hold whole tokens.
        let whole: (i64, i64) = sqlx::query_as(
            "SELECT tokens_earned, tokens_spent FROM meshcore_bandwidth_tokens WHERE node_id = 'n1'",
        )
        .fetch_one(&store.pool)
        .await
        .expect("row");
        assert_eq!(whole, (100, 2));

        // A later save updates rows in place.
        rows.accounts[0].tokens_earned_milli = 200_000;
        rows.ious[0].seq = 4;
        rows.ious.push(LedgerIouRow {
            direction: "sent".to_owned(),
            ..iou
        });
        store.save_ledger(&rows, 11).await.expect("save");
        assert_eq!(store.load_ledger().await.expect("load"), rows);
        let bad = LedgerRows {
            ious: vec![LedgerIouRow {
                direction: "sideways".to_owned(),
                ..rows.ious[0].clone()
            }],
            ..LedgerRows::default()
        };
        assert!(
            store.save_ledger(&bad, 12).await.is_err(),
            "the CHECK on direction refuses the row"
        );
        assert_eq!(
            store.load_ledger().await.expect("load"),
            rows,
            "nothing changed"
        );
    }

    fn route_row(destination: &str, next_hop: &str, hop_count: i64) -> RouteRow {
        RouteRow {
            destination_id: destination.to_owned(),
            next_hop_id: next_hop.to_owned(),
            hop_count,
            path_quality: 0.5,
            path_cost: 300.0,
            path_nodes: vec![next_hop.to_owned(), destination.to_owned()],
            expires_at: 1_000,
        }
    }

    #[tokio::test]
    async fn routes_are_replaced_as_a_whole() {
        let store = Store::open_in_memory().await.expect("open");
        let first = vec![route_row("d1", "n1", 2), route_row("d2", "n1", 2)];
        store.replace_routes(&first).await.expect("replace");
        assert_eq!(store.load_routes().await.expect("load"), first);

        let second = vec![route_row("d2", "n2", 3), route_row("d3", "n2", 0)];
        store.replace_routes(&second).await.expect("replace");
        assert_eq!(
            store.load_routes().await.expect("load"),
            vec![route_row("d2", "n2", 3)],
            "old rows are gone and a zero-hop row is skipped"
        );
        assert_eq!(store.table_counts().await.expect("counts").routes, 1);

        store.replace_routes(&[]).await.expect("replace");
        assert!(store.load_routes().await.expect("load").is_empty());
    }

    #[tokio::test]
    async fn reopening_applies_no_migration_twice_and_keeps_data() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(DATABASE_FILE);
        let store = Store::open(&path).await.expect("open");
        let changes = BTreeMap::from([("max_hops".to_owned(), json!(7))]);
        store.save_settings(&changes, 1).await.expect("save");
        store.close().await.expect("close");

        let store = Store::open(&path).await.expect("reopen");
        assert_eq!(store.schema_version().await.expect("version"), 4);
        assert_eq!(store.setting_overrides().await.expect("load"), changes);
    }

    #[tokio::test]
    async fn settings_are_upserted_and_deleted() {
        let store = Store::open_in_memory().await.expect("open");
        store
            .save_settings(&BTreeMap::from([("max_hops".to_owned(), json!(7))]), 1)
            .await
            .expect("save");
        store
            .save_settings(
                &BTreeMap::from([
                    ("max_hops".to_owned(), json!(9)),
                    ("stun_servers".to_owned(), json!(["stun:example.org:3478"])),
                ]),
                2,
            )
            .await
            .expect("save");
        let overrides = store.setting_overrides().await.expect("load");
        assert_eq!(overrides["max_hops"], json!(9));
        assert_eq!(overrides["stun_servers"], json!(["stun:example.org:3478"]));
        assert!(store.delete_setting("max_hops").await.expect("delete"));
        assert!(!store.delete_setting("max_hops").await.expect("delete"));
        assert_eq!(store.setting_overrides().await.expect("load").len(), 1);
    }

    #[tokio::test]
    async fn a_corrupt_setting_row_is_reported_by_key() {
        let store = Store::open_in_memory().await.expect("open");
        sqlx::query("INSERT INTO meshcore_settings VALUES ('max_hops', 'not json', 0)")
            .execute(&store.pool)
            .await
            .expect("insert");
        let error = store.setting_overrides().await.expect_err("corrupt row");
        assert!(error.to_string().contains("max_hops"), "{error}");
    }

    #[tokio::test]
    async fn known_nodes_are_upserted_and_loaded_newest_first() {
        let store = Store::open_in_memory().await.expect("open");
        let node = |id: &str, seen: i64| NodeRecord {
            node_id: id.to_owned(),
            capabilities: vec!["relay".to_owned()],
            addrs: vec!["127.0.0.1:7000".to_owned()],
            last_seen: seen,
            status: "known".to_owned(),
        };
        store
            .upsert_nodes(&[node("a", 10), node("b", 20)])
            .await
            .expect("insert");
        let mut newer = node("a", 30);
        newer.status = "connected".to_owned();
        store.upsert_nodes(&[newer.clone()]).await.expect("update");
        let loaded = store.load_nodes(10).await.expect("load");
        assert_eq!(loaded, vec![newer, node("b", 20)]);
        assert_eq!(store.load_nodes(1).await.expect("load").len(), 1);
        assert_eq!(store.table_counts().await.expect("counts").nodes, 2);
    }

    #[tokio::test]
    async fn counts_start_at_zero() {
        let store = Store::open_in_memory().await.expect("open");
        assert_eq!(
            store.table_counts().await.expect("counts"),
            TableCounts::default()
        );
    }
}
