//! The iroh endpoint: QUIC dialled by public key, with this node's key as its identity.
//!
//! Relays are off by default (no third-party infrastructure); `relay_urls` names
//! self-hosted ones. No address-lookup service is configured: addresses come from
//! Meshcore's own discovery and are passed with every dial.

use std::net::SocketAddr;
use std::time::Duration;

use iroh::endpoint::{presets, IdleTimeout, QuicTransportConfig};
use iroh::{Endpoint, RelayMap, RelayMode, RelayUrl, SecretKey};
use meshcore_proto::link::LINK_ALPN;
use meshcore_proto::{NodeId, NodeKeypair};

/// Why the endpoint could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The listen address was refused by the socket layer.
    #[error("cannot bind the peer-link address {addr} (--listen): {reason}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why, with a hint.
        reason: String,
    },
    /// A relay URL is malformed.
    #[error("relay URL {url:?} is invalid: {reason}")]
    RelayUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// How often an idle link sends a keep-alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// How long a link may go silent before it is declared dead (a peer that crashed or was
/// cut off is noticed within this time).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Converts an iroh endpoint id into a node id (both are the Ed25519 public key).
pub fn node_id_of(id: &iroh::EndpointId) -> Option<NodeId> {
    NodeId::from_bytes(*id.as_bytes()).ok()
}

/// The node id of an inbound connection's peer, or `None` after closing the connection
/// when the peer's key is not a valid node id or is this node's own (`what` names the
/// protocol in the close reason).
pub fn inbound_peer(
    connection: &iroh::endpoint::Connection,
    local: &NodeId,
    what: &str,
) -> Option<NodeId> {
    use iroh::endpoint::VarInt;
    let Some(peer) = node_id_of(&connection.remote_id()) else {
        connection.close(
            VarInt::from_u32(crate::link::close_code::PROTOCOL_VIOLATION),
            b"invalid endpoint id",
        );
        return None;
    };
    if peer == *local {
        connection.close(
            VarInt::from_u32(crate::link::close_code::DUPLICATE),
            format!("{what} to self").as_bytes(),
        );
        return None;
    }
    Some(peer)
}

/// Converts a node id into an iroh endpoint id.
pub fn endpoint_id_of(id: &NodeId) -> Option<iroh::EndpointId> {
    iroh::EndpointId::from_bytes(id.as_bytes()).ok()
}

/// Binds the endpoint at `listen` with `keys` as its identity.
pub async fn bind(
    keys: &NodeKeypair,
    listen: SocketAddr,
    relay_urls: &[String],
) -> Result<Endpoint, EndpointError> {
    let secret = SecretKey::from_bytes(&keys.signing_key().to_bytes());
    let relay_mode = if relay_urls.is_empty() {
        RelayMode::Disabled
    } else {
        let mut urls = Vec::new();
        for url in relay_urls {
            let parsed: RelayUrl =
                url.parse()
                    .map_err(|error: <RelayUrl as std::str::FromStr>::Err| {
                        EndpointError::RelayUrl {
                            url: url.clone(),
                            reason: error.to_string(),
                        }
                    })?;
            urls.push(parsed);
        }
        RelayMode::Custom(RelayMap::from_iter(urls))
    };
    let bind_error = |reason: String| EndpointError::Bind {
        addr: listen,
        reason,
    };
    let idle =
        IdleTimeout::try_from(IDLE_TIMEOUT).map_err(|error| bind_error(error.to_string()))?;
    let transport = QuicTransportConfig::builder()
        .keep_alive_interval(KEEP_ALIVE)
        .max_idle_timeout(Some(idle))
        .build();
    let builder = Endpoint::builder(presets::Minimal)
        .secret_key(secret)
        .alpns(vec![LINK_ALPN.to_vec()])
        .relay_mode(relay_mode)
        .transport_config(transport)
        // Exactly the --listen address: no extra wildcard socket of the other family.
        .clear_ip_transports()
        .bind_addr(listen)
        .map_err(|error| bind_error(error.to_string()))?;
    builder.bind().await.map_err(|error| {
        let text = error.to_string();
        let lower = format!("{error:?}").to_lowercase();
        if lower.contains("addrinuse") || lower.contains("address already in use") || lower.contains("in use") {
            bind_error("the address is already in use (is another meshcore node running?); choose another with --listen".to_owned())
        } else {
            bind_error(text)
        }
    })
}
