//! Every node setting, with its default, its rule, and how its sources are layered.
//!
//! Names and defaults are those of the Aevov Meshcore specification. A value comes from, in
//! rising order of precedence: the default, the TOML config file (`--config`), the
//! environment (`MESHCORE_<NAME>`, e.g. `MESHCORE_MAX_HOPS=7`), the command line
//! (`--set NAME=VALUE`), and runtime changes made through the API or `meshcore config set`,
//! which are stored and so outlive a restart.
//!
//! Every change is checked field by field and then as a whole (`min_connections` may not
//! exceed `max_connections`); a change that fails any rule is refused entirely, with each
//! error naming the field and the rule, and nothing is changed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use meshcore_proto::NodeId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A set of changes: setting name → new value (as JSON).
pub type SettingsPatch = serde_json::Map<String, Value>;

/// Largest number of entries accepted in a list setting.
pub const MAX_LIST_ENTRIES: usize = 64;

/// Largest length of one text entry (a URL, a credential) in a list setting.
pub const MAX_ENTRY_LEN: usize = 512;

/// The names of the settings, for lookup and iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SettingKey {
    /// `relay_bandwidth`
    RelayBandwidth,
    /// `relay_enabled`
    RelayEnabled,
    /// `peer_bandwidth`
    PeerBandwidth,
    /// `app_bandwidth`
    AppBandwidth,
    /// `max_connections`
    MaxConnections,
    /// `min_connections`
    MinConnections,
    /// `tokens_per_mb`
    TokensPerMb,
    /// `token_rate`
    TokenRate,
    /// `payment_threshold`
    PaymentThreshold,
    /// `new_neighbour_threshold`
    NewNeighbourThreshold,
    /// `max_hops`
    MaxHops,
    /// `route_timeout`
    RouteTimeout,
    /// `stun_servers`
    StunServers,
    /// `turn_servers`
    TurnServers,
    /// `bootstrap_urls`
    BootstrapUrls,
    /// `announce_interval`
    AnnounceInterval,
    /// `cors_origins`
    CorsOrigins,
    /// `lan_discovery`
    LanDiscovery,
    /// `pex_enabled`
    PexEnabled,
    /// `relay_urls`
    RelayUrls,
    /// `dht_storage_bytes`
    DhtStorageBytes,
    /// `dht_discovery`
    DhtDiscovery,
    /// `data_lane`
    DataLane,
    /// `allowed_peers`
    AllowedPeers,
}

impl SettingKey {
    /// Every setting, in documentation order.
    pub const ALL: [SettingKey; 24] = [
        Self::RelayBandwidth,
        Self::RelayEnabled,
        Self::PeerBandwidth,
        Self::AppBandwidth,
        Self::MaxConnections,
        Self::MinConnections,
        Self::TokensPerMb,
        Self::TokenRate,
        Self::PaymentThreshold,
        Self::NewNeighbourThreshold,
        Self::MaxHops,
        Self::RouteTimeout,
        Self::StunServers,
        Self::TurnServers,
        Self::BootstrapUrls,
        Self::AnnounceInterval,
        Self::CorsOrigins,
        Self::LanDiscovery,
        Self::PexEnabled,
        Self::RelayUrls,
        Self::DhtStorageBytes,
        Self::DhtDiscovery,
        Self::DataLane,
        Self::AllowedPeers,
    ];

    /// The setting's name, as used in the API, the config file and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Self::RelayBandwidth => "relay_bandwidth",
            Self::RelayEnabled => "relay_enabled",
            Self::PeerBandwidth => "peer_bandwidth",
            Self::AppBandwidth => "app_bandwidth",
            Self::MaxConnections => "max_connections",
            Self::MinConnections => "min_connections",
            Self::TokensPerMb => "tokens_per_mb",
            Self::TokenRate => "token_rate",
            Self::PaymentThreshold => "payment_threshold",
            Self::NewNeighbourThreshold => "new_neighbour_threshold",
            Self::MaxHops => "max_hops",
            Self::RouteTimeout => "route_timeout",
            Self::StunServers => "stun_servers",
            Self::TurnServers => "turn_servers",
            Self::BootstrapUrls => "bootstrap_urls",
            Self::AnnounceInterval => "announce_interval",
            Self::CorsOrigins => "cors_origins",
            Self::LanDiscovery => "lan_discovery",
            Self::PexEnabled => "pex_enabled",
            Self::RelayUrls => "relay_urls",
            Self::DhtStorageBytes => "dht_storage_bytes",
            Self::DhtDiscovery => "dht_discovery",
            Self::DataLane => "data_lane",
            Self::AllowedPeers => "allowed_peers",
        }
    }

    /// What the setting means, its rule and its default.
    pub fn description(self) -> &'static str {
        match self {
            Self::RelayBandwidth => "bytes per second this node gives to relaying others' traffic, shared fairly among the flows it carries; 0 or more (0 turns relaying off); default 5242880 (5 MiB/s); applies at once",
            Self::RelayEnabled => "whether this node relays others' traffic; when off it forwards no one else's packets or route requests, so routes form around it; true or false; default true; applies at once",
            Self::PeerBandwidth => "bytes per second of this node's own messages to any one peer; a send over it waits (up to 2 s) or is refused with 429; 0 or more (0: no limit); default 5242880 (5 MiB/s); applies at once",
            Self::AppBandwidth => "bytes per second of this node's own messages from any one application (the \"app\" of POST /v1/messages; each browser sending through this node is its own); 0 or more (0: no limit); default 5242880 (5 MiB/s); applies at once",
            Self::MaxConnections => "most peer links kept at once; 1 to 10000; default 50",
            Self::MinConnections => "fewest peer links the node tries to keep; 0 to max_connections; default 3",
            Self::TokensPerMb => "tokens this node charges per MB (10^6 bytes) it relays, before its reputation multiplier (1.0-1.5); 0 to 1000000000; default 100; applies at once",
            Self::PaymentThreshold => "tokens owed to a neighbour at which this node pays it with a signed IOU; a neighbour owing this node more than 1.25x it is throttled, more than 10x for 60 s cut off; 1 to 1000000000; default 100; applies at once",
            Self::NewNeighbourThreshold => "the payment threshold a new neighbour starts with, in tokens; it grows by what the neighbour has paid, up to payment_threshold; 1 to payment_threshold; default 10; applies at once",
            Self::TokenRate => "token exchange rate: tokens per unit of the operator's currency, used to show the balance in that unit (GET /v1/tokens balance_value); a number above 0; default 100.0; applies at once",
            Self::MaxHops => "most hops a routed packet may travel (the router uses at most 32); 1 to 255; default 10; applies at the next start",
            Self::RouteTimeout => "seconds a route lives without use; 1 to 604800; default 300; applies at the next start",
            Self::StunServers => "STUN servers handed to browsers, as stun:HOST[:PORT] or stuns:HOST[:PORT]; default none",
            Self::TurnServers => "TURN servers handed to browsers, as objects {urls, username, credential} with turn: or turns: URLs; default none",
            Self::BootstrapUrls => "nodes to join the mesh through, as NODE_ID@HOST:PORT; default none",
            Self::AnnounceInterval => "seconds between announcements of this node to the mesh; 10 to 86400; default 300",
            Self::CorsOrigins => "web origins allowed to call the API from a browser, as http(s)://HOST[:PORT] or \"*\"; default none (same origin only)",
            Self::LanDiscovery => "find nodes on the local network by mDNS; true or false; default true (--no-lan turns it off); applies at the next start",
            Self::PexEnabled => "exchange samples of known nodes with linked peers; true or false; default true; applies at the next start",
            Self::RelayUrls => "self-hosted iroh relay servers, as https:// URLs; default none (relays off); applies at the next start",
            Self::DhtDiscovery => "link to nodes found in the DHT's routing table while below min_connections; true or false; default true; applies at the next start",
            Self::DataLane => "carry routed packets of links as sealed UDP datagrams on a second port beside QUIC (one task per relay crossing); true or false; default true; applies at the next start",
            Self::AllowedPeers => "the only nodes this node links to, as node ids; links to and from any other node are refused (inbound, dialed, and found by discovery); default none (any node); applies at the next start",
            Self::DhtStorageBytes => "bytes of DHT records this node holds at most (its own and others'); 65536 to 1099511627776; default 104857600 (100 MiB); applies at the next start",
        }
    }

    /// Finds a setting by name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|key| key.name() == name)
    }

    /// The environment variable that sets it: `MESHCORE_` and the upper-case name.
    pub fn env_var(self) -> String {
        format!("MESHCORE_{}", self.name().to_ascii_uppercase())
    }

    fn is_list(self) -> bool {
        matches!(
            self,
            Self::StunServers
                | Self::BootstrapUrls
                | Self::CorsOrigins
                | Self::TurnServers
                | Self::RelayUrls
                | Self::AllowedPeers
        )
    }

    /// Turns text from the environment or the command line into the JSON value the
    /// setting takes: JSON if the text is JSON, a comma-separated list for list settings,
    /// and otherwise the text as a string (which the field's rule then judges).
    pub fn value_from_text(self, text: &str) -> Value {
        let trimmed = text.trim();
        if let Ok(value) = serde_json::from_str::<Value>(trimmed) {
            if !(self.is_list() && value.is_string()) {
                return value;
            }
        }
        if self.is_list() && self != Self::TurnServers {
            let entries = trimmed
                .split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(|entry| Value::String(entry.to_owned()))
                .collect();
            return Value::Array(entries);
        }
        Value::String(trimmed.to_owned())
    }
}

impl fmt::Display for SettingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A TURN server handed to browsers as an `RTCIceServer`.
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TurnServer {
    /// One or more `turn:` / `turns:` URLs.
    #[serde(deserialize_with = "one_or_many")]
    #[schema(value_type = Vec<String>)]
    pub urls: Vec<String>,
    /// The TURN user name.
    pub username: String,
    /// The TURN credential.
    pub credential: String,
}

impl fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("credential", &"<redacted>")
            .finish()
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(url) => vec![url],
        OneOrMany::Many(urls) => urls,
    })
}

/// The node's settings. See [`SettingKey::description`] for each field's rule and default.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Settings {
    /// Bytes per second given to relaying; default 5 MiB/s.
    pub relay_bandwidth: u64,
    /// Whether this node relays others' traffic; default true.
    pub relay_enabled: bool,
    /// Bytes per second of own traffic to any one peer (0: no limit); default 5 MiB/s.
    pub peer_bandwidth: u64,
    /// Bytes per second of own traffic from any one application (0: no limit); default
    /// 5 MiB/s.
    pub app_bandwidth: u64,
    /// Most peer links; default 50.
    pub max_connections: u32,
    /// Fewest peer links; default 3.
    pub min_connections: u32,
    /// Tokens per MB relayed; default 100.
    pub tokens_per_mb: u64,
    /// Token exchange rate; default 100.0.
    pub token_rate: f64,
    /// Tokens owed at which a neighbour is paid; default 100.
    pub payment_threshold: u64,
    /// The payment threshold a new neighbour starts with, tokens; default 10.
    pub new_neighbour_threshold: u64,
    /// Most hops for a routed packet; default 10.
    pub max_hops: u32,
    /// Route lifetime in seconds; default 300.
    pub route_timeout: u64,
    /// STUN server URLs; default none.
    pub stun_servers: Vec<String>,
    /// TURN servers; default none.
    pub turn_servers: Vec<TurnServer>,
    /// Bootstrap nodes as `NODE_ID@HOST:PORT`; default none.
    pub bootstrap_urls: Vec<String>,
    /// Seconds between announcements; default 300.
    pub announce_interval: u64,
    /// Origins allowed to call the API cross-origin; default none.
    pub cors_origins: Vec<String>,
    /// Whether LAN (mDNS) discovery runs; default true.
    pub lan_discovery: bool,
    /// Whether peer exchange runs; default true.
    pub pex_enabled: bool,
    /// Self-hosted relay URLs; default none.
    pub relay_urls: Vec<String>,
    /// Bytes of DHT records held at most; default 100 MiB.
    pub dht_storage_bytes: u64,
    /// Whether nodes found through the DHT are dialed; default true.
    pub dht_discovery: bool,
    /// Whether links carry routed packets on a UDP data lane beside QUIC; default true.
    pub data_lane: bool,
    /// The only node ids links are made with; default none (any node).
    pub allowed_peers: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            relay_bandwidth: 5 * 1024 * 1024,
            relay_enabled: true,
            peer_bandwidth: 5 * 1024 * 1024,
            app_bandwidth: 5 * 1024 * 1024,
            max_connections: 50,
            min_connections: 3,
            tokens_per_mb: 100,
            token_rate: 100.0,
            payment_threshold: 100,
            new_neighbour_threshold: 10,
            max_hops: 10,
            route_timeout: 300,
            stun_servers: Vec::new(),
            turn_servers: Vec::new(),
            bootstrap_urls: Vec::new(),
            announce_interval: 300,
            cors_origins: Vec::new(),
            lan_discovery: true,
            pex_enabled: true,
            relay_urls: Vec::new(),
            dht_storage_bytes: 100 * 1024 * 1024,
            dht_discovery: true,
            data_lane: true,
            allowed_peers: Vec::new(),
        }
    }
}

/// One rule broken by one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The setting's name.
    pub field: String,
    /// The rule it broke and the value it had.
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why settings could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// One or more fields broke their rules; nothing was changed.
    #[error("invalid settings from {origin}: {}", join(errors))]
    Invalid {
        /// Where the values came from (e.g. "the API", "the config file /etc/meshcore.toml").
        origin: String,
        /// Every rule that was broken.
        errors: Vec<FieldError>,
    },
    /// The config file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    ReadConfig {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("the config file {path} is not valid TOML: {message}")]
    ParseConfig {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn expect_value<T: DeserializeOwned>(
    key: SettingKey,
    value: &Value,
    expected: &str,
) -> Result<T, FieldError> {
    serde_json::from_value(value.clone()).map_err(|_| {
        FieldError::new(
            key.name(),
            format!("expected {expected}, got {}", shorten(value)),
        )
    })
}

fn shorten(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

fn in_range<T: PartialOrd + fmt::Display>(
    key: SettingKey,
    value: T,
    min: T,
    max: T,
) -> Result<T, FieldError> {
    if value < min || value > max {
        return Err(FieldError::new(
            key.name(),
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(value)
}

fn text_list(
    key: SettingKey,
    value: &Value,
    what: &str,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, FieldError> {
    let entries: Vec<String> = expect_value(key, value, &format!("a list of {what}"))?;
    if entries.len() > MAX_LIST_ENTRIES {
        return Err(FieldError::new(
            key.name(),
            format!("at most {MAX_LIST_ENTRIES} entries, got {}", entries.len()),
        ));
    }
    for entry in &entries {
        if entry.len() > MAX_ENTRY_LEN {
            return Err(FieldError::new(
                key.name(),
                format!("an entry is longer than {MAX_ENTRY_LEN} bytes"),
            ));
        }
        check(entry).map_err(|rule| FieldError::new(key.name(), format!("{entry:?}: {rule}")))?;
    }
    Ok(entries)
}

/// Checks `HOST:PORT` where HOST is a DNS name, an IPv4 address or a bracketed IPv6 address.
fn check_host_port(text: &str, default_port: Option<u16>) -> Result<(), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address needs a closing ']'")?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err("unexpected text after the IPv6 address".to_owned()),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if !text.starts_with('[') {
        let valid_name = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !valid_name {
            return Err(format!("{host:?} is not a host name or IPv4 address"));
        }
    }
    match port {
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{port:?} is not a port (1 to 65535)")),
            Ok(_) => Ok(()),
        },
        None if default_port.is_some() => Ok(()),
        None => Err("a port is required (HOST:PORT)".to_owned()),
    }
}

/// Checks a `stun:`/`stuns:` (RFC 7064) or `turn:`/`turns:` (RFC 7065) URL.
fn check_ice_url(text: &str, schemes: [&str; 2]) -> Result<(), String> {
    let (scheme, rest) = text
        .split_once(':')
        .ok_or_else(|| format!("must start with {}: or {}:", schemes[0], schemes[1]))?;
    if !schemes.contains(&scheme) {
        return Err(format!(
            "must start with {}: or {}:",
            schemes[0], schemes[1]
        ));
    }
    let (authority, query) = match rest.split_once('?') {
        Some((authority, query)) => (authority, Some(query)),
        None => (rest, None),
    };
    if authority.starts_with("//") {
        return Err(format!("write {scheme}:HOST[:PORT], without '//'"));
    }
    check_host_port(authority, Some(3478))?;
    match query {
        None => Ok(()),
        Some("transport=udp" | "transport=tcp") if scheme.starts_with("turn") => Ok(()),
        Some(query) => Err(format!(
            "unsupported query {query:?} (only ?transport=udp|tcp, on TURN URLs)"
        )),
    }
}

fn check_bootstrap(text: &str) -> Result<(), String> {
    let (node_id, address) = text.split_once('@').ok_or("must be NODE_ID@HOST:PORT")?;
    node_id
        .parse::<NodeId>()
        .map_err(|error| format!("bad node id: {error}"))?;
    check_host_port(address, None)
}

fn check_relay_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("a relay URL is https://HOST[:PORT] (or http:// for testing)".to_owned());
    }
    Ok(())
}

fn check_origin(text: &str) -> Result<(), String> {
    if text == "*" {
        return Ok(());
    }
    let url = url::Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("an origin is http:// or https://".to_owned());
    }
    let origin = url.origin().ascii_serialization();
    if origin != text.trim_end_matches('/') {
        return Err(format!(
            "an origin has no path, query or user; did you mean {origin:?}?"
        ));
    }
    Ok(())
}

impl Settings {
    /// The settings as a JSON object, one member per setting.
    pub fn to_json(&self) -> serde_json::Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            // Settings is a plain struct of numbers, strings and lists: always an object.
            _ => serde_json::Map::new(),
        }
    }

    /// The current value of one setting.
    pub fn get(&self, key: SettingKey) -> Value {
        self.to_json().remove(key.name()).unwrap_or(Value::Null)
    }

    /// Returns these settings with `patch` applied, or every rule the patch breaks.
    /// `origin` names the source in error messages. `self` is never changed.
    pub fn with_patch(
        &self,
        patch: &SettingsPatch,
        origin: &str,
    ) -> Result<Settings, SettingsError> {
        let mut next = self.clone();
        let mut errors = Vec::new();
        for (name, value) in patch {
            if let Err(error) = next.set_field(name, value) {
                errors.push(error);
            }
        }
        if errors.is_empty() {
            errors.extend(next.cross_field_errors());
        }
        if errors.is_empty() {
            Ok(next)
        } else {
            Err(SettingsError::Invalid {
                origin: origin.to_owned(),
                errors,
            })
        }
    }

    /// The normalised JSON form of the values `patch` sets, as they will be stored.
    pub fn normalized_patch(&self, patch: &SettingsPatch) -> SettingsPatch {
        let all = self.to_json();
        patch
            .keys()
            .filter_map(|name| all.get(name).map(|value| (name.clone(), value.clone())))
            .collect()
    }

    fn set_field(&mut self, name: &str, value: &Value) -> Result<(), FieldError> {
        let key = SettingKey::from_name(name).ok_or_else(|| {
            let known: Vec<_> = SettingKey::ALL.iter().map(|key| key.name()).collect();
            FieldError::new(
                name,
                format!("unknown setting; known settings are {}", known.join(", ")),
            )
        })?;
        match key {
            SettingKey::RelayBandwidth => {
                self.relay_bandwidth =
                    expect_value(key, value, "a whole number of bytes per second, 0 or more")?;
            }
            SettingKey::RelayEnabled => {
                self.relay_enabled = expect_value(key, value, "true or false")?;
            }
            SettingKey::PeerBandwidth => {
                self.peer_bandwidth =
                    expect_value(key, value, "a whole number of bytes per second, 0 or more")?;
            }
            SettingKey::AppBandwidth => {
                self.app_bandwidth =
                    expect_value(key, value, "a whole number of bytes per second, 0 or more")?;
            }
            SettingKey::MaxConnections => {
                let n = expect_value(key, value, "a whole number from 1 to 10000")?;
                self.max_connections = in_range(key, n, 1, 10_000)?;
            }
            SettingKey::MinConnections => {
                let n = expect_value(key, value, "a whole number from 0 to 10000")?;
                self.min_connections = in_range(key, n, 0, 10_000)?;
            }
            SettingKey::TokensPerMb => {
                let n = expect_value(key, value, "a whole number of tokens, 0 or more")?;
                self.tokens_per_mb = in_range(key, n, 0, 1_000_000_000)?;
            }
            SettingKey::TokenRate => {
                let rate: f64 = expect_value(key, value, "a number above 0")?;
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(FieldError::new(
                        key.name(),
                        format!("must be a number above 0, got {rate}"),
                    ));
                }
                self.token_rate = rate;
            }
            SettingKey::PaymentThreshold => {
                let n = expect_value(key, value, "a whole number of tokens from 1 to 1000000000")?;
                self.payment_threshold = in_range(key, n, 1, 1_000_000_000)?;
            }
            SettingKey::NewNeighbourThreshold => {
                let n = expect_value(key, value, "a whole number of tokens from 1 to 1000000000")?;
                self.new_neighbour_threshold = in_range(key, n, 1, 1_000_000_000)?;
            }
            SettingKey::MaxHops => {
                let n = expect_value(key, value, "a whole number from 1 to 255")?;
                self.max_hops = in_range(key, n, 1, 255)?;
            }
            SettingKey::RouteTimeout => {
                let n = expect_value(key, value, "a whole number of seconds from 1 to 604800")?;
                self.route_timeout = in_range(key, n, 1, 604_800)?;
            }
            SettingKey::AnnounceInterval => {
                let n = expect_value(key, value, "a whole number of seconds from 10 to 86400")?;
                self.announce_interval = in_range(key, n, 10, 86_400)?;
            }
            SettingKey::StunServers => {
                self.stun_servers = text_list(key, value, "stun: URLs", |url| {
                    check_ice_url(url, ["stun", "stuns"])
                })?;
            }
            SettingKey::BootstrapUrls => {
                self.bootstrap_urls =
                    text_list(key, value, "NODE_ID@HOST:PORT addresses", check_bootstrap)?;
            }
            SettingKey::CorsOrigins => {
                self.cors_origins = text_list(key, value, "origins", check_origin)?;
            }
            SettingKey::RelayUrls => {
                self.relay_urls = text_list(key, value, "relay URLs", check_relay_url)?;
            }
            SettingKey::DhtDiscovery => {
                self.dht_discovery = expect_value(key, value, "true or false")?;
            }
            SettingKey::DataLane => {
                self.data_lane = expect_value(key, value, "true or false")?;
            }
            SettingKey::AllowedPeers => {
                self.allowed_peers = text_list(key, value, "node ids", |text| {
                    text.parse::<NodeId>()
                        .map(drop)
                        .map_err(|error| format!("bad node id: {error}"))
                })?;
            }
            SettingKey::DhtStorageBytes => {
                let n = expect_value(key, value, "a whole number of bytes from 65536 to 2^40")?;
                self.dht_storage_bytes = in_range(key, n, 64 * 1024, 1 << 40)?;
            }
            SettingKey::LanDiscovery => {
                self.lan_discovery = expect_value(key, value, "true or false")?
            }
            SettingKey::PexEnabled => self.pex_enabled = expect_value(key, value, "true or false")?,
            SettingKey::TurnServers => {
                let servers: Vec<TurnServer> = expect_value(
                    key,
                    value,
                    "a list of {\"urls\", \"username\", \"credential\"} objects",
                )?;
                if servers.len() > MAX_LIST_ENTRIES {
                    return Err(FieldError::new(
                        key.name(),
                        format!("at most {MAX_LIST_ENTRIES} entries"),
                    ));
                }
                for server in &servers {
                    if server.urls.is_empty() {
                        return Err(FieldError::new(
                            key.name(),
                            "each server needs at least one URL",
                        ));
                    }
                    for url in &server.urls {
                        check_ice_url(url, ["turn", "turns"]).map_err(|rule| {
                            FieldError::new(key.name(), format!("{url:?}: {rule}"))
                        })?;
                    }
                    if server.username.is_empty() || server.credential.is_empty() {
                        return Err(FieldError::new(key.name(), "each server needs a username and a credential (browsers refuse TURN without them)"));
                    }
                    if server.username.len() > MAX_ENTRY_LEN
                        || server.credential.len() > MAX_ENTRY_LEN
                    {
                        return Err(FieldError::new(
                            key.name(),
                            format!("username and credential are at most {MAX_ENTRY_LEN} bytes"),
                        ));
                    }
                }
                self.turn_servers = servers;
            }
        }
        Ok(())
    }

    fn cross_field_errors(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.min_connections > self.max_connections {
            errors.push(FieldError::new(
                SettingKey::MinConnections.name(),
                format!(
                    "must not exceed max_connections ({} > {})",
                    self.min_connections, self.max_connections
                ),
            ));
        }
        if self.new_neighbour_threshold > self.payment_threshold {
            errors.push(FieldError::new(
                SettingKey::NewNeighbourThreshold.name(),
                format!(
                    "must not exceed payment_threshold ({} > {})",
                    self.new_neighbour_threshold, self.payment_threshold
                ),
            ));
        }
        errors
    }
}

/// The sources of settings below runtime changes: the config file, the environment and the
/// command line. Kept so that dropping a runtime change can fall back to them.
#[derive(Debug, Clone, Default)]
pub struct SettingsSources {
    /// Values from the TOML config file, with its path.
    pub file: Option<(PathBuf, SettingsPatch)>,
    /// Values from `MESHCORE_*` environment variables.
    pub env: SettingsPatch,
    /// Values from `--set NAME=VALUE` flags.
    pub flags: SettingsPatch,
}

impl SettingsSources {
    /// Reads the TOML config file at `path`. Its top-level keys are setting names.
    pub fn read_config_file(path: &Path) -> Result<SettingsPatch, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_config(path, &text)
    }

    /// Parses config-file text; `path` is used in messages only.
    pub fn parse_config(path: &Path, text: &str) -> Result<SettingsPatch, SettingsError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|error| SettingsError::ParseConfig {
                path: path.to_owned(),
                message: error.to_string().trim().to_owned(),
            })?;
        let value = serde_json::to_value(table).map_err(|error| SettingsError::ParseConfig {
            path: path.to_owned(),
            message: error.to_string(),
        })?;
        match value {
            Value::Object(map) => Ok(map),
            _ => Ok(SettingsPatch::new()),
        }
    }

    /// Picks the `MESHCORE_<NAME>` variables that name settings out of `vars`.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> SettingsPatch {
        let mut patch = SettingsPatch::new();
        for (name, text) in vars {
            if let Some(key) = SettingKey::ALL
                .into_iter()
                .find(|key| key.env_var() == name)
            {
                patch.insert(key.name().to_owned(), key.value_from_text(&text));
            }
        }
        patch
    }

    /// Parses `NAME=VALUE` flags. An unknown name or a missing `=` is an error naming it.
    pub fn from_flags(flags: &[String]) -> Result<SettingsPatch, SettingsError> {
        let mut patch = SettingsPatch::new();
        let mut errors = Vec::new();
        for flag in flags {
            match flag.split_once('=') {
                Some((name, text)) => match SettingKey::from_name(name.trim()) {
                    Some(key) => {
                        patch.insert(key.name().to_owned(), key.value_from_text(text));
                    }
                    // Left in the patch so that `with_patch` reports it with the known names.
                    None => {
                        patch.insert(name.trim().to_owned(), Value::String(text.to_owned()));
                    }
                },
                None => errors.push(FieldError::new(flag.as_str(), "expected NAME=VALUE")),
            }
        }
        if errors.is_empty() {
            Ok(patch)
        } else {
            Err(SettingsError::Invalid {
                origin: "--set".to_owned(),
                errors,
            })
        }
    }

    /// The settings these sources give over the defaults, checked field by field per source
    /// (so that errors name the source) and then as a whole.
    pub fn resolve(&self) -> Result<Settings, SettingsError> {
        let mut layers: Vec<(String, &SettingsPatch)> = Vec::new();
        if let Some((path, patch)) = &self.file {
            layers.push((format!("the config file {}", path.display()), patch));
        }
        layers.push(("the environment".to_owned(), &self.env));
        layers.push(("--set flags".to_owned(), &self.flags));

        let mut merged = SettingsPatch::new();
        for (origin, patch) in &layers {
            // Field rules per source, so each error says where the bad value came from.
            let mut errors = Vec::new();
            let mut scratch = Settings::default();
            for (name, value) in patch.iter() {
                if let Err(error) = scratch.set_field(name, value) {
                    errors.push(error);
                }
            }
            if !errors.is_empty() {
                return Err(SettingsError::Invalid {
                    origin: origin.clone(),
                    errors,
                });
            }
            merged.extend(patch.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Settings::default().with_patch(&merged, "the config file, environment and flags together")
    }
}

/// The layered view the node keeps: what the lower sources give, plus runtime changes.
#[derive(Debug, Clone)]
pub struct LayeredSettings {
    base: Settings,
    runtime: SettingsPatch,
    effective: Settings,
}

impl LayeredSettings {
    /// Builds the view from the lower sources and the stored runtime changes. A stored
    /// change that no longer passes its rule is skipped (and returned, for a log line),
    /// never deleted.
    pub fn new(base: Settings, stored: BTreeMap<String, Value>) -> (Self, Vec<FieldError>) {
        let mut runtime = SettingsPatch::new();
        let mut effective = base.clone();
        let mut skipped = Vec::new();
        for (name, value) in stored {
            let single = SettingsPatch::from_iter([(name.clone(), value.clone())]);
            match effective.with_patch(&single, "stored runtime changes") {
                Ok(next) => {
                    effective = next;
                    runtime.insert(name, value);
                }
                Err(SettingsError::Invalid { errors, .. }) => skipped.extend(errors),
                Err(other) => skipped.push(FieldError::new(name, other.to_string())),
            }
        }
        (
            Self {
                base,
                runtime,
                effective,
            },
            skipped,
        )
    }

    /// The settings in force.
    pub fn effective(&self) -> &Settings {
        &self.effective
    }

    /// The runtime changes in force, by name.
    pub fn runtime_changes(&self) -> &SettingsPatch {
        &self.runtime
    }

    /// Checks `patch` as a runtime change and returns the view it would give, with the
    /// normalised values to store. Nothing changes until the caller swaps the view in.
    pub fn with_runtime_patch(
        &self,
        patch: &SettingsPatch,
        origin: &str,
    ) -> Result<(Self, SettingsPatch), SettingsError> {
        let effective = self.effective.with_patch(patch, origin)?;
        let normalized = effective.normalized_patch(patch);
        let mut runtime = self.runtime.clone();
        runtime.extend(normalized.clone());
        Ok((
            Self {
                base: self.base.clone(),
                runtime,
                effective,
            },
            normalized,
        ))
    }

    /// The view without the runtime change of `key`, falling back to the lower sources.
    pub fn without_runtime(&self, key: SettingKey, origin: &str) -> Result<Self, SettingsError> {
        let mut runtime = self.runtime.clone();
        runtime.remove(key.name());
        let effective = self.base.with_patch(&runtime, origin)?;
        Ok(Self {
            base: self.base.clone(),
            runtime,
            effective,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const NODE: &str = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";

    fn patch(value: Value) -> SettingsPatch {
        match value {
            Value::Object(map) => map,
            _ => panic!("patch must be an object"),
        }
    }

    fn errors_of(result: Result<Settings, SettingsError>) -> Vec<FieldError> {
        match result {
            Err(SettingsError::Invalid { errors, .. }) => errors,
            other => panic!("expected invalid settings, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_specification_values() {
        let settings = Settings::default();
        assert_eq!(settings.relay_bandwidth, 5 * 1024 * 1024);
        assert!(settings.relay_enabled);
        assert_eq!(settings.max_connections, 50);
        assert_eq!(settings.min_connections, 3);
        assert_eq!(settings.tokens_per_mb, 100);
        assert_eq!(settings.token_rate, 100.0);
        assert_eq!(settings.payment_threshold, 100);
        assert_eq!(settings.new_neighbour_threshold, 10);
        assert_eq!(settings.max_hops, 10);
        assert_eq!(settings.route_timeout, 300);
        assert_eq!(settings.to_json().len(), SettingKey::ALL.len());
        for key in SettingKey::ALL {
            assert!(settings.to_json().contains_key(key.name()), "{key}");
        }
    }

    #[test]
    fn a_valid_patch_applies_and_the_original_is_untouched() {
        let settings = Settings::default();
        let next = settings
            .with_patch(
                &patch(json!({
                    "max_hops": 7,
                    "stun_servers": ["stun:stun.example.org:3478", "stuns:[2001:db8::1]:5349"],
                    "turn_servers": [{"urls": "turn:turn.example.org:3478?transport=udp", "username": "u", "credential": "p"}],
                    "bootstrap_urls": [format!("{NODE}@198.51.100.7:7000"), format!("{NODE}@node.example.org:7000")],
                    "cors_origins": ["https://app.example.org", "http://localhost:5173"],
                })),
                "test",
            )
            .expect("valid");
        assert_eq!(next.max_hops, 7);
        assert_eq!(
            next.turn_servers[0].urls,
            ["turn:turn.example.org:3478?transport=udp"]
        );
        assert_eq!(settings, Settings::default());
    }

    #[test]
    fn negative_bandwidth_names_the_field_and_the_rule() {
        let errors = errors_of(
            Settings::default().with_patch(&patch(json!({"relay_bandwidth": -5})), "test"),
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "relay_bandwidth");
        assert!(
            errors[0].message.contains("0 or more"),
            "{}",
            errors[0].message
        );
        assert!(errors[0].message.contains("-5"), "{}", errors[0].message);
    }

    #[test]
    fn a_new_neighbour_threshold_above_the_payment_threshold_is_refused() {
        let errors = errors_of(
            Settings::default().with_patch(&patch(json!({"payment_threshold": 5})), "test"),
        );
        assert_eq!(errors[0].field, "new_neighbour_threshold");
        assert!(
            errors[0].message.contains("payment_threshold"),
            "{}",
            errors[0].message
        );
        let both = Settings::default()
            .with_patch(
                &patch(json!({"payment_threshold": 5, "new_neighbour_threshold": 5})),
                "test",
            )
            .expect("valid together");
        assert_eq!(
            (both.payment_threshold, both.new_neighbour_threshold),
            (5, 5)
        );
        let errors = errors_of(
            Settings::default().with_patch(&patch(json!({"payment_threshold": 0})), "test"),
        );
        assert_eq!(errors[0].field, "payment_threshold");
    }

    #[test]
    fn min_above_max_is_refused() {
        let errors = errors_of(Settings::default().with_patch(
            &patch(json!({"min_connections": 20, "max_connections": 10})),
            "test",
        ));
        assert_eq!(errors[0].field, "min_connections");
        assert!(errors[0].message.contains("max_connections"));
    }

    #[test]
    fn malformed_ice_urls_are_refused() {
        for bad in [
            json!({"stun_servers": ["http://stun.example.org"]}),
            json!({"stun_servers": ["stun://stun.example.org"]}),
            json!({"stun_servers": ["stun:"]}),
            json!({"stun_servers": ["stun:host:99999"]}),
            json!({"stun_servers": ["stun:bad host"]}),
            json!({"stun_servers": "stun:not-a-list.example.org"}),
            json!({"turn_servers": [{"urls": "stun:x.example.org", "username": "u", "credential": "p"}]}),
            json!({"turn_servers": [{"urls": "turn:x.example.org", "username": "", "credential": "p"}]}),
            json!({"turn_servers": [{"urls": [], "username": "u", "credential": "p"}]}),
            json!({"turn_servers": [{"urls": "turn:x.example.org", "username": "u", "credential": "p", "extra": 1}]}),
        ] {
            let errors = errors_of(Settings::default().with_patch(&patch(bad.clone()), "test"));
            let field = bad
                .as_object()
                .and_then(|m| m.keys().next())
                .cloned()
                .unwrap_or_default();
            assert_eq!(errors[0].field, field, "{bad}");
        }
    }

    #[test]
    fn allowed_peers_take_node_ids_only() {
        let settings = Settings::default()
            .with_patch(&patch(json!({ "allowed_peers": [NODE] })), "test")
            .expect("a node id is accepted");
        assert_eq!(settings.allowed_peers, vec![NODE.to_owned()]);
        assert_eq!(
            SettingKey::AllowedPeers.value_from_text(&format!("{NODE},{NODE}")),
            json!([NODE, NODE])
        );
        let errors = errors_of(
            Settings::default().with_patch(&patch(json!({"allowed_peers": ["nope"]})), "test"),
        );
        assert_eq!(errors[0].field, "allowed_peers");
        assert!(
            errors[0].message.contains("bad node id"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn unknown_keys_are_named_with_the_known_ones() {
        let errors =
            errors_of(Settings::default().with_patch(&patch(json!({"max_hopz": 3})), "test"));
        assert_eq!(errors[0].field, "max_hopz");
        assert!(errors[0].message.contains("max_hops"));
    }

    #[test]
    fn every_broken_rule_is_reported_at_once() {
        let errors = errors_of(Settings::default().with_patch(
            &patch(json!({"max_hops": 0, "token_rate": "fast", "nope": 1})),
            "test",
        ));
        assert_eq!(errors.len(), 3);
    }

    #[test]
    fn text_values_from_env_and_flags_become_typed() {
        assert_eq!(SettingKey::MaxHops.value_from_text(" 7 "), json!(7));
        assert_eq!(SettingKey::TokenRate.value_from_text("1.5"), json!(1.5));
        assert_eq!(
            SettingKey::StunServers.value_from_text("stun:a.example:1, stun:b.example:2"),
            json!(["stun:a.example:1", "stun:b.example:2"])
        );
        assert_eq!(
            SettingKey::StunServers.value_from_text("[\"stun:a.example:1\"]"),
            json!(["stun:a.example:1"])
        );
        assert_eq!(SettingKey::StunServers.value_from_text(""), json!([]));
        assert_eq!(SettingKey::MaxHops.value_from_text("many"), json!("many"));
        assert_eq!(
            SettingKey::LanDiscovery.value_from_text("false"),
            json!(false)
        );
        assert!(Settings::default()
            .with_patch(&patch(json!({"lan_discovery": "no"})), "test")
            .is_err());
        assert_eq!(
            SettingKey::RelayEnabled.value_from_text("false"),
            json!(false)
        );
        let off = Settings::default()
            .with_patch(&patch(json!({"relay_enabled": false})), "test")
            .expect("a boolean");
        assert!(!off.relay_enabled);
        let errors = errors_of(
            Settings::default().with_patch(&patch(json!({"relay_enabled": "off"})), "test"),
        );
        assert_eq!(errors[0].field, "relay_enabled");
        assert!(
            errors[0].message.contains("true or false"),
            "{}",
            errors[0].message
        );
        assert!(Settings::default()
            .with_patch(
                &patch(json!({"relay_urls": ["ftp://relay.example.org"]})),
                "test"
            )
            .is_err());
    }

    #[test]
    fn sources_layer_file_then_env_then_flags() {
        let file = SettingsSources::parse_config(
            Path::new("meshcore.toml"),
            "max_hops = 4\nroute_timeout = 60\nmax_connections = 100\n",
        )
        .expect("toml");
        let env = SettingsSources::from_env([
            ("MESHCORE_ROUTE_TIMEOUT".to_owned(), "90".to_owned()),
            ("MESHCORE_MAX_HOPS".to_owned(), "5".to_owned()),
            ("UNRELATED".to_owned(), "1".to_owned()),
        ]);
        let flags = SettingsSources::from_flags(&[
            "max_hops=6".to_owned(),
            "min_connections=60".to_owned(),
        ])
        .expect("flags");
        let sources = SettingsSources {
            file: Some((PathBuf::from("meshcore.toml"), file)),
            env,
            flags,
        };
        let settings = sources.resolve().expect("resolve");
        assert_eq!(settings.max_hops, 6);
        assert_eq!(settings.route_timeout, 90);
        // min 60 is only valid because the file raised max to 100: checked as a whole.
        assert_eq!(settings.min_connections, 60);
    }

    #[test]
    fn a_bad_source_value_names_its_source() {
        let sources = SettingsSources {
            env: SettingsSources::from_env([("MESHCORE_MAX_HOPS".to_owned(), "zero".to_owned())]),
            ..Default::default()
        };
        let error = sources.resolve().expect_err("bad env").to_string();
        assert!(error.contains("the environment"), "{error}");
        assert!(error.contains("max_hops"), "{error}");
    }

    #[test]
    fn bad_toml_and_bad_flags_are_explained() {
        let error = SettingsSources::parse_config(Path::new("x.toml"), "max_hops = = 3")
            .expect_err("bad toml");
        assert!(error.to_string().contains("x.toml"), "{error}");
        let error = SettingsSources::from_flags(&["max_hops".to_owned()]).expect_err("no =");
        assert!(error.to_string().contains("NAME=VALUE"), "{error}");
        let flags = SettingsSources::from_flags(&["bogus=1".to_owned()]).expect("parsed");
        let sources = SettingsSources {
            flags,
            ..Default::default()
        };
        assert!(sources
            .resolve()
            .expect_err("unknown")
            .to_string()
            .contains("bogus"));
    }

    #[test]
    fn runtime_changes_win_and_can_be_dropped() {
        let base = Settings::default()
            .with_patch(&patch(json!({"max_hops": 4})), "flags")
            .expect("base");
        let stored = BTreeMap::from([
            ("max_hops".to_owned(), json!(9)),
            ("route_timeout".to_owned(), json!(-1)),
        ]);
        let (layered, skipped) = LayeredSettings::new(base, stored);
        assert_eq!(layered.effective().max_hops, 9);
        assert_eq!(layered.effective().route_timeout, 300);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].field, "route_timeout");

        let (changed, stored) = layered
            .with_runtime_patch(&patch(json!({"token_rate": 2})), "api")
            .expect("valid");
        assert_eq!(stored["token_rate"], json!(2.0));
        assert_eq!(changed.effective().token_rate, 2.0);
        let dropped = changed
            .without_runtime(SettingKey::MaxHops, "reset")
            .expect("drop");
        assert_eq!(dropped.effective().max_hops, 4);
        assert_eq!(dropped.effective().token_rate, 2.0);
    }

    #[test]
    fn debug_redacts_turn_credentials() {
        let server = TurnServer {
            urls: vec!["turn:x.example.org".to_owned()],
            username: "user".to_owned(),
            credential: "hunter2".to_owned(),
        };
        assert!(!format!("{server:?}").contains("hunter2"));
    }

    proptest! {
        #[test]
        fn arbitrary_patches_never_panic_and_failures_change_nothing(body in "\\PC{0,200}") {
            let settings = Settings::default();
            if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&body) {
                let _ = settings.with_patch(&map, "fuzz");
            }
            prop_assert_eq!(&settings, &Settings::default());
        }

        #[test]
        fn arbitrary_values_for_every_key_never_panic(index in 0usize..SettingKey::ALL.len(), text in "\\PC{0,100}") {
            let key = SettingKey::ALL[index];
            let value = key.value_from_text(&text);
            let _ = Settings::default().with_patch(&SettingsPatch::from_iter([(key.name().to_owned(), value)]), "fuzz");
        }
    }
}
