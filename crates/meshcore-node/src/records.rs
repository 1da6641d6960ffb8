//! The key–value face of the DHT that the API and the CLI use (`dht/put`, `dht/get`).
//!
//! The seed lets anyone `put(key, value)` and anyone `get(key)`. A mesh without a central
//! server cannot let *anyone* overwrite a name, so a name always has an owner:
//!
//! - `put` with a `key` NAME stores a record **signed by this node** under
//!   `NODE_ID/NAME`; only this node's key can ever replace it (higher sequence numbers win,
//!   replays are refused). The answer gives the full address `NODE_ID/NAME` to share.
//! - `put` without a key stores an **immutable, content-addressed** record; its address is
//!   the 64-hex SHA-256 of the value.
//! - `get` takes either form.
//!
//! Values are JSON (as in the seed), stored as their UTF-8 text.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshcore_net::dht::{parse_key, Dht, DhtError};
use meshcore_proto::dht::{Key, QueryError, Record, RecordError, Timestamp, MAX_VALUE_SIZE};
use meshcore_proto::NodeId;
use serde::Serialize;

/// Prefix of the salt of a named record, keeping names apart from the node's own records
/// (such as its address record).
const NAME_SALT_PREFIX: &[u8] = b"kv/";

/// Longest record name, in bytes.
pub const MAX_NAME_LEN: usize = 60;

/// Lifetime of a record put without a `ttl`, in seconds (the seed's default).
pub const DEFAULT_TTL_S: u64 = 3600;

/// Longest lifetime a record may ask for, in seconds (what other nodes grant: 48 h).
pub const MAX_TTL_S: u64 = 48 * 3600;

/// Where a record lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordAddress {
    /// `NODE_ID/NAME`: a record signed by its owner.
    Named {
        /// The owner.
        owner: NodeId,
        /// The name.
        name: String,
    },
    /// 64 hex characters: a content-addressed record (or any record by its raw key).
    Hash(Key),
}

impl RecordAddress {
    /// The DHT key.
    pub fn key(&self) -> Key {
        match self {
            Self::Named { owner, name } => Key::for_mutable(owner, &name_salt(name)),
            Self::Hash(key) => *key,
        }
    }
}

impl fmt::Display for RecordAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Named { owner, name } => write!(f, "{owner}/{name}"),
            Self::Hash(key) => write!(f, "{key}"),
        }
    }
}

impl FromStr for RecordAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some((owner, name)) => {
                let owner = owner
                    .parse::<NodeId>()
                    .map_err(|error| format!("the owner before '/': {error}"))?;
                check_name(name)?;
                Ok(Self::Named {
                    owner,
                    name: name.to_owned(),
                })
            }
            None => parse_key(text)
                .map(Self::Hash)
                .map_err(|error| format!("expected NODE_ID/NAME or a 64-hex content key; {error}")),
        }
    }
}

fn name_salt(name: &str) -> Vec<u8> {
    [NAME_SALT_PREFIX, name.as_bytes()].concat()
}

/// Checks a record name: 1 to [`MAX_NAME_LEN`] bytes, no control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the name is {} bytes; at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("the name contains a control character".to_owned());
    }
    Ok(())
}

/// Why a put or get failed, for the API to map onto statuses.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The request itself is wrong (400).
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// No node holds the record (404).
    #[error("no record at {0}: no node that answered holds it")]
    NotFound(String),
    /// The DHT refused or failed (503).
    #[error("the DHT could not complete the request: {0}")]
    Dht(String),
}

fn invalid(field: &'static str, message: impl Into<String>) -> RecordsError {
    RecordsError::Invalid {
        field,
        message: message.into(),
    }
}

/// What a put achieved.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PutOutcome {
    /// Where to get it: `NODE_ID/NAME` or the content key.
    pub key: String,
    /// The DHT key (64 hex).
    pub dht_key: String,
    /// Unix seconds when it expires.
    pub expires_at: u64,
    /// Other nodes that stored it.
    pub stored_on: u32,
    /// Other nodes that refused it.
    pub refused_by: u32,
}

/// A record found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GetOutcome {
    /// The address asked for.
    pub key: String,
    /// The value (JSON).
    pub value: serde_json::Value,
    /// The signer of a named record (absent for content-addressed ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The record's version (named records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Unix seconds when it expires.
    pub expires_at: u64,
}

/// Checks a TTL in seconds (absent: [`DEFAULT_TTL_S`]).
pub fn ttl_of(ttl: Option<i64>) -> Result<Duration, RecordsError> {
    let ttl = ttl.unwrap_or(DEFAULT_TTL_S as i64);
    if ttl < 1 || ttl as u64 > MAX_TTL_S {
        return Err(invalid(
            "ttl",
            format!("must be a whole number of seconds from 1 to {MAX_TTL_S}, got {ttl}"),
        ));
    }
    Ok(Duration::from_secs(ttl as u64))
}

fn value_bytes(value: &serde_json::Value) -> Result<Vec<u8>, RecordsError> {
    let bytes = serde_json::to_vec(value).map_err(|error| invalid("value", error.to_string()))?;
    if bytes.len() > MAX_VALUE_SIZE {
        return Err(invalid(
            "value",
            format!(
                "{} bytes as JSON; the largest value is {MAX_VALUE_SIZE} bytes",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

fn dht_error(error: DhtError) -> RecordsError {
    match error {
        DhtError::Query(QueryError::Record(RecordError::ValueTooLarge { len, max })) => invalid(
            "value",
            format!("{len} bytes; the largest value is {max} bytes"),
        ),
        other => RecordsError::Dht(other.to_string()),
    }
}

fn unix_seconds(at: Timestamp) -> u64 {
    at.as_millis().div_ceil(1000)
}

/// Stores `value` under `NODE_ID/name` (signed by this node) or, without a name, as a
/// content-addressed record.
pub async fn put(
    dht: &Dht,
    name: Option<&str>,
    value: &serde_json::Value,
    ttl: Option<i64>,
) -> Result<PutOutcome, RecordsError> {
    let ttl = ttl_of(ttl)?;
    let bytes = value_bytes(value)?;
    let (address, record) = match name {
        Some(name) => {
            check_name(name).map_err(|message| invalid("key", message))?;
            let record = dht
                .sign_own(&name_salt(name), bytes, ttl)
                .await
                .map_err(dht_error)?;
            let address = RecordAddress::Named {
                owner: dht.node_id(),
                name: name.to_owned(),
            };
            (address, record)
        }
        None => {
            let millis = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let expires_at = Timestamp::from_millis(millis).saturating_add(ttl);
            let record = Record::immutable(bytes, expires_at)
                .map_err(|error| invalid("value", error.to_string()))?;
            (RecordAddress::Hash(record.key()), record)
        }
    };
    let expires_at = unix_seconds(record.expires_at());
    let summary = dht.put(record).await.map_err(dht_error)?;
    Ok(PutOutcome {
        key: address.to_string(),
        dht_key: address.key().to_string(),
        expires_at,
        stored_on: summary.stored,
        refused_by: summary.refused,
    })
}

/// Finds the record at `address` (`NODE_ID/NAME` or a 64-hex key).
pub async fn get(dht: &Dht, address: &str) -> Result<GetOutcome, RecordsError> {
    let parsed: RecordAddress = address.parse().map_err(|message| invalid("key", message))?;
    let record = match dht.get(parsed.key()).await {
        Ok(record) => record,
        Err(DhtError::Query(QueryError::NotFound)) => {
            return Err(RecordsError::NotFound(address.to_owned()))
        }
        Err(error) => return Err(dht_error(error)),
    };
    let value = serde_json::from_slice(record.value()).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(record.value()).into_owned())
    });
    let (owner, seq) = match &record {
        Record::Mutable(mutable) => (Some(mutable.owner.to_string()), Some(mutable.seq)),
        Record::Immutable(_) => (None, None),
    };
    Ok(GetOutcome {
        key: parsed.to_string(),
        value,
        owner,
        seq,
        expires_at: unix_seconds(record.expires_at()),
    })
}

/// A service registration, as the API takes it: a port or any JSON `info`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ServiceOffer {
    /// The port the service listens on, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Anything else clients need (at most 1024 bytes as JSON together with `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// One provider of a service.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceProvider {
    /// The provider's node id (it signed the entry).
    pub node_id: String,
    /// The port it gave, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The info it gave, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// Unix seconds when the entry expires unless the provider registers again.
    pub expires_at: u64,
}

/// What a registration achieved.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceRegistered {
    /// The service name.
    pub name: String,
    /// This node, the provider.
    pub node_id: String,
    /// Unix seconds when the entry expires unless registered again.
    pub expires_at: u64,
    /// Other nodes that stored the entry.
    pub stored_on: u32,
}

/// Checks a service name: 1 to [`MAX_NAME_LEN`] bytes, no control characters, no `/`.
pub fn check_service_name(name: &str) -> Result<(), RecordsError> {
    check_name(name).map_err(|message| invalid("name", message))?;
    if name.contains('/') {
        return Err(invalid("name", "a service name may not contain '/'"));
    }
    Ok(())
}

/// Registers this node as a provider of `name` (the service registry, "mesh DNS").
pub async fn register_service(
    dht: &Dht,
    name: &str,
    offer: &ServiceOffer,
    ttl: Option<i64>,
) -> Result<ServiceRegistered, RecordsError> {
    check_service_name(name)?;
    let ttl = ttl_of(ttl)?;
    if offer.port.is_none() && offer.info.is_none() {
        return Err(invalid("port", "give a port or an info (or both)"));
    }
    if offer.port == Some(0) {
        return Err(invalid("port", "must be 1 to 65535"));
    }
    let info = serde_json::to_vec(offer).map_err(|error| invalid("info", error.to_string()))?;
    if info.len() > meshcore_proto::dht::MAX_PROVIDER_INFO {
        return Err(invalid(
            "info",
            format!(
                "{} bytes as JSON with the port; at most {}",
                info.len(),
                meshcore_proto::dht::MAX_PROVIDER_INFO
            ),
        ));
    }
    let summary = dht.provide(name, info, ttl).await.map_err(dht_error)?;
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(ServiceRegistered {
        name: name.to_owned(),
        node_id: dht.node_id().to_string(),
        expires_at: unix_seconds(Timestamp::from_millis(millis).saturating_add(ttl)),
        stored_on: summary.stored,
    })
}

/// The live providers of `name`; 404 when there are none.
pub async fn resolve_service(dht: &Dht, name: &str) -> Result<Vec<ServiceProvider>, RecordsError> {
    check_service_name(name)?;
    let providers = dht.providers(name).await.map_err(dht_error)?;
    if providers.is_empty() {
        return Err(RecordsError::NotFound(format!("service {name:?}")));
    }
    Ok(providers
        .into_iter()
        .map(|record| {
            let offer: ServiceOffer =
                serde_json::from_slice(&record.info).unwrap_or(ServiceOffer {
                    port: None,
                    info: Some(serde_json::Value::String(
                        String::from_utf8_lossy(&record.info).into_owned(),
                    )),
                });
            ServiceProvider {
                node_id: record.provider.to_string(),
                port: offer.port,
                info: offer.info,
                expires_at: unix_seconds(record.expires_at),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcore_proto::NodeKeypair;
    use rand::SeedableRng;

    fn owner() -> NodeId {
        NodeKeypair::generate(&mut rand::rngs::StdRng::seed_from_u64(7)).node_id()
    }

    #[test]
    fn addresses_parse_and_print_back() {
        let named = RecordAddress::Named {
            owner: owner(),
            name: "chat/room 1".to_owned(),
        };
        assert_eq!(
            named.to_string().parse::<RecordAddress>(),
            Ok(named.clone())
        );
        let hash = RecordAddress::Hash(Key::for_value(b"x"));
        assert_eq!(hash.to_string().parse::<RecordAddress>(), Ok(hash));
        assert_ne!(
            named.key(),
            Key::for_mutable(&owner(), b"chat/room 1"),
            "names are salted apart from the node's own records"
        );
    }

    #[test]
    fn bad_addresses_and_names_say_what_is_wrong() {
        let error = "abc".parse::<RecordAddress>().expect_err("refused");
        assert!(error.contains("NODE_ID/NAME"), "{error}");
        let error = "zz/name".parse::<RecordAddress>().expect_err("refused");
        assert!(error.contains("owner"), "{error}");
        let error = format!("{}/", owner())
            .parse::<RecordAddress>()
            .expect_err("refused");
        assert!(error.contains("empty"), "{error}");
        assert!(check_name(&"n".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(check_name("a\u{7}b").is_err());
        assert!(check_name(&"n".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn ttls_out_of_range_are_refused() {
        assert_eq!(ttl_of(None).ok(), Some(Duration::from_secs(DEFAULT_TTL_S)));
        for bad in [0, -5, MAX_TTL_S as i64 + 1] {
            let error = ttl_of(Some(bad)).expect_err("refused").to_string();
            assert!(error.starts_with("ttl:"), "{error}");
        }
    }

    #[test]
    fn oversized_values_are_refused_before_the_dht() {
        let big = serde_json::Value::String("x".repeat(MAX_VALUE_SIZE));
        let error = value_bytes(&big).expect_err("refused").to_string();
        assert!(error.starts_with("value:"), "{error}");
    }
}
