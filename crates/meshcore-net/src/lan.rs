//! LAN discovery over mDNS (DNS-SD): each node announces `_meshcore._udp.local.` with its
//! node id in a TXT record and browses for the others, so nodes on one network find each
//! other with no bootstrap and no internet.
//!
//! mDNS is multicast on every interface of the host; tests run it only inside network
//! namespaces of their own.

use std::net::{IpAddr, SocketAddr};

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use meshcore_proto::link::MAX_ADDRS;
use meshcore_proto::peers::DiscoverySource;
use meshcore_proto::NodeId;

use crate::network::Network;

/// The DNS-SD service type Meshcore nodes announce.
pub const SERVICE_TYPE: &str = "_meshcore._udp.local.";

/// Why LAN discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    /// The node has no listen address to announce.
    #[error("no listen address to announce")]
    NoAddress,
    /// The mDNS daemon failed.
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
}

/// Running LAN discovery; stopped with [`LanDiscovery::stop`].
pub struct LanDiscovery {
    daemon: ServiceDaemon,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for LanDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LanDiscovery")
            .field("service", &SERVICE_TYPE)
            .finish()
    }
}

fn usable(ip: &IpAddr) -> bool {
    match ip {
        // Link-local IPv6 needs a scope id to be dialled; skip it.
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80 && !v6.is_unspecified(),
        IpAddr::V4(v4) => !v4.is_unspecified(),
    }
}

impl LanDiscovery {
    /// Announces this node and starts browsing for others; found nodes are reported to
    /// `network`.
    pub fn start(local: NodeId, listen: &[SocketAddr], network: Network) -> Result<Self, LanError> {
        let first = listen.first().ok_or(LanError::NoAddress)?;
        let daemon = ServiceDaemon::new()?;
        let instance = format!("meshcore-{}", &local.to_hex()[..16]);
        let host = format!("{instance}.local.");
        let id = local.to_hex();
        let properties = [("id", id.as_str()), ("v", "1")];
        let specific: Vec<IpAddr> = listen
            .iter()
            .map(SocketAddr::ip)
            .filter(|ip| !ip.is_unspecified())
            .collect();
        let info = if specific.is_empty() {
            ServiceInfo::new(
                SERVICE_TYPE,
                &instance,
                &host,
                "",
                first.port(),
                &properties[..],
            )?
            .enable_addr_auto()
        } else {
            ServiceInfo::new(
                SERVICE_TYPE,
                &instance,
                &host,
                &specific[..],
                first.port(),
                &properties[..],
            )?
        };
        daemon.register(info)?;
        let events = daemon.browse(SERVICE_TYPE)?;
        let task = tokio::spawn(async move {
            while let Ok(event) = events.recv_async().await {
                let ServiceEvent::ServiceResolved(service) = event else {
                    continue;
                };
                let Some(peer) = service
                    .get_property_val_str("id")
                    .and_then(|id| id.parse::<NodeId>().ok())
                else {
                    tracing::debug!(name = %service.get_fullname(), "ignoring an mDNS announcement without a valid node id");
                    continue;
                };
                if peer == local {
                    continue;
                }
                let addrs: Vec<SocketAddr> = service
                    .get_addresses()
                    .iter()
                    .map(|ip| ip.to_ip_addr())
                    .filter(usable)
                    .map(|ip| SocketAddr::new(ip, service.get_port()))
                    .take(MAX_ADDRS)
                    .collect();
                if !addrs.is_empty() {
                    network.discovered(peer, addrs, DiscoverySource::Lan);
                }
            }
        });
        Ok(Self { daemon, task })
    }

    /// Withdraws the announcement and stops browsing.
    pub fn stop(self) {
        let _ = self.daemon.shutdown();
        self.task.abort();
    }
}
