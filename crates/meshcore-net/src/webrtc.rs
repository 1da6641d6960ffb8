//! Browser peers over WebRTC, with `str0m` (sans-IO ICE, DTLS and SCTP).
//!
//! A browser's plain `RTCPeerConnection` opens one data channel (label `meshcore`) to the
//! node. Signaling is over the API (`POST /v1/connect` carries the offer and returns the
//! answer; `GET /v1/signal` carries trickle ICE and browser-to-browser offers, see
//! [`signal`]). Each side signs its DTLS fingerprint with its node key, so the channel is
//! bound to the browser's id ([`meshcore_proto::browser`]); the wire protocol is in
//! `web/PROTOCOL.md`.
//!
//! One task owns every session and the node's WebRTC UDP sockets: one socket per local
//! address (the `--webrtc` address, or each interface address when that is unspecified),
//! so that the address a datagram arrived on is known without `IP_PKTINFO`. Reader tasks
//! hand datagrams to the driver; the driver finds the session whose ICE credentials or
//! addresses accept them (`Rtc::accepts`), feeds it, and drains its output: datagrams to
//! send, data-channel events, and its next timeout.
//!
//! Limits: at most [`WebRtcOptions::max_sessions`] sessions; a session whose data channel
//! has not opened within [`OPEN_TIMEOUT`] or that has received nothing for
//! [`IDLE_TIMEOUT`] is dropped; a browser that lets `session::MAX_QUEUED_BYTES` (16 MiB)
//! pile up is dropped.

pub mod mesh_message;
pub mod mesh_signal;
pub mod session;
pub mod signal;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use meshcore_proto::browser::{self, BrowserFrame, DtlsFingerprint, CHANNEL_LABEL};
use meshcore_proto::{NodeId, NodeKeypair, SignatureDomain};
use str0m::change::SdpOffer;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::dht::Dht;
use crate::network::ConnectionInfo;
use crate::routing::{ReceivedMessage, Routing};
pub use mesh_message::MeshMessages;
pub use mesh_signal::MeshSignal;
pub use session::BrowserSendError;
use session::{Action, Session};
pub use signal::SignalHub;

/// A session whose data channel has not opened by then is dropped.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A session that has received no datagram for this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the node pings each browser (for the link's round-trip time).
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// How long a mesh message sent for a browser may take.
pub const MESH_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest offer accepted.
pub const MAX_SDP_LEN: usize = 64 * 1024;

/// Datagrams read but not yet handled before the readers wait.
const DATAGRAM_QUEUE: usize = 4096;

/// Largest datagram read.
const DATAGRAM_MAX: usize = 2048;

/// Bytes a session's data channel may have unacknowledged (str0m's default). Measured with
/// `scripts/bench-browser`: 2 MiB let bursts overflow Chromium's 128 KiB UDP receive buffer
/// (kernel drop counters rose) and SCTP's loss recovery cut downloads to about 5 MB/s; at
/// 128 KiB they ran at about 13 MB/s.
pub const SCTP_SEND_BUFFER: usize = 128 * 1024;

/// Datagrams handled in a row before the driver looks at its other inputs.
const DATAGRAM_BATCH: usize = 64;

/// Commands queued for the driver.
const COMMAND_QUEUE: usize = 256;

/// How the WebRTC side starts.
#[derive(Debug, Clone)]
pub struct WebRtcOptions {
    /// The UDP address for browser sessions; an unspecified IP binds every interface
    /// address of that family, port 0 picks a free port.
    pub bind: SocketAddr,
    /// Most browser sessions at once.
    pub max_sessions: usize,
}

/// Why an offer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The SDP is malformed or unusable.
    #[error("invalid SDP offer: {0}")]
    InvalidSdp(String),
    /// The binding signature does not verify.
    #[error("the signature does not bind the offer's DTLS fingerprint to peer_id: {0}")]
    InvalidSignature(String),
    /// The offer names this node as the browser.
    #[error("a browser cannot use this node's own id")]
    SelfLink,
    /// [`WebRtcOptions::max_sessions`] sessions are open.
    #[error("this node has {0} browser sessions, its maximum")]
    Full(usize),
    /// The driver stopped.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// The node's answer to a browser's offer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The answer SDP.
    pub sdp: String,
    /// The node's signature binding the answer's DTLS fingerprint to its id (hex).
    pub signature: String,
}

/// Counters of the WebRTC side.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, utoipa::ToSchema)]
pub struct WebRtcStats {
    /// Sessions now (open or opening).
    pub sessions: usize,
    /// Sessions with an open data channel.
    pub open: usize,
    /// Sessions accepted since start.
    pub accepted: u64,
    /// Sessions dropped for breaking the protocol.
    pub violations: u64,
    /// Datagrams no session accepted.
    pub unmatched_datagrams: u64,
}

enum Command {
    Offer {
        browser: NodeId,
        offer: SdpOffer,
        reply: oneshot::Sender<Result<Answer, OfferError>>,
    },
    Candidate {
        browser: NodeId,
        candidate: Candidate,
    },
    SendApp {
        browser: NodeId,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Duration, BrowserSendError>>,
    },
    /// Hands a message that crossed the mesh to a browser ([`mesh_message`]).
    SendMesh {
        browser: NodeId,
        source: NodeId,
        hops: u8,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<Duration, BrowserSendError>>,
    },
    /// Whether a browser has an open session.
    Hosts {
        browser: NodeId,
        reply: oneshot::Sender<bool>,
    },
    Connections(oneshot::Sender<Vec<ConnectionInfo>>),
    Stats(oneshot::Sender<WebRtcStats>),
    Shutdown(oneshot::Sender<()>),
}

struct Datagram {
    at: Instant,
    local: SocketAddr,
    source: SocketAddr,
    data: Vec<u8>,
}

/// A handle to the WebRTC side. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WebRtc {
    local: NodeId,
    addrs: Arc<Vec<SocketAddr>>,
    commands: mpsc::Sender<Command>,
    signal: SignalHub,
    mesh: Option<Arc<MeshSignal>>,
    messages: Option<Arc<MeshMessages>>,
}

impl WebRtc {
    /// Binds the sockets and starts the driver. `routing` carries browsers' mesh messages
    /// and receives their messages to this node; with `dht` too, signaling crosses the mesh
    /// ([`mesh_signal`]) and any node can send to a browser's own id ([`mesh_message`]).
    pub async fn start(
        keys: &NodeKeypair,
        options: WebRtcOptions,
        routing: Option<Routing>,
        dht: Option<Dht>,
    ) -> std::io::Result<Self> {
        let sockets = bind_sockets(options.bind).await?;
        let addrs: Vec<SocketAddr> = sockets
            .iter()
            .map(|socket| socket.local_addr())
            .collect::<Result<_, _>>()?;
        let (datagrams_tx, datagrams_rx) = mpsc::channel(DATAGRAM_QUEUE);
        let mut readers = Vec::new();
        for socket in &sockets {
            readers.push(tokio::spawn(read_datagrams(
                socket.clone(),
                datagrams_tx.clone(),
            )));
        }
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (results_tx, results_rx) = mpsc::channel(COMMAND_QUEUE);
        let signal = SignalHub::default();
        let (mesh, messages) = match (&routing, dht) {
            (Some(routing), Some(dht)) => {
                tokio::spawn(mesh_signal::deliver_incoming(
                    routing.signals(),
                    signal.clone(),
                ));
                let mesh = Arc::new(MeshSignal::new(keys.node_id(), routing.clone(), dht));
                let messages = Arc::new(MeshMessages::new(
                    keys.node_id(),
                    routing.clone(),
                    Arc::clone(&mesh),
                    commands_tx.clone(),
                ));
                tokio::spawn(Arc::clone(&messages).run(routing.browser_envelopes()));
                (Some(mesh), Some(messages))
            }
            _ => (None, None),
        };
        let driver = Driver {
            local: keys.node_id(),
            keys: NodeKeypair::from_signing_key(keys.signing_key().clone()),
            sockets,
            sessions: Vec::new(),
            next_session: 1,
            routing,
            messages: messages.clone(),
            results: results_tx,
            options,
            stats: WebRtcStats::default(),
        };
        tokio::spawn(driver.run(commands_rx, datagrams_rx, results_rx, readers));
        tracing::info!(addrs = ?addrs, "WebRTC for browsers is listening");
        Ok(Self {
            local: keys.node_id(),
            addrs: Arc::new(addrs),
            commands: commands_tx,
            signal,
            mesh,
            messages,
        })
    }

    /// Messaging between browsers and any peer across the mesh; `None` without routing and
    /// DHT.
    pub fn messages(&self) -> Option<&Arc<MeshMessages>> {
        self.messages.as_ref()
    }

    /// Announces in the DHT that `browser` registered on this node's signaling socket, so
    /// that browsers on other nodes can signal to it. Does nothing without routing and DHT.
    pub fn announce_browser(&self, browser: NodeId) {
        if let Some(mesh) = &self.mesh {
            mesh.announce(browser);
        }
    }

    /// Sends a signaling message for a browser registered on another node to that node
    /// (found through the DHT); returns it. `Err` says why not.
    pub async fn signal_across_mesh(&self, to: NodeId, text: String) -> Result<NodeId, String> {
        match &self.mesh {
            Some(mesh) => mesh.forward(to, text).await,
            None => Err("this node runs no routing or DHT to reach other nodes".to_owned()),
        }
    }

    /// The UDP addresses browsers reach this node on.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The signaling hub of the `GET /v1/signal` sockets.
    pub fn signal(&self) -> &SignalHub {
        &self.signal
    }

    /// Accepts a browser's offer: checks that `signature` binds the offer's DTLS
    /// fingerprint to `browser`, starts a session and returns the signed answer.
    pub async fn accept_offer(
        &self,
        browser: NodeId,
        sdp: &str,
        signature: &[u8],
    ) -> Result<Answer, OfferError> {
        if browser == self.local {
            return Err(OfferError::SelfLink);
        }
        if sdp.len() > MAX_SDP_LEN {
            return Err(OfferError::InvalidSdp(format!(
                "{} bytes is over the limit of {MAX_SDP_LEN}",
                sdp.len()
            )));
        }
        if !sdp.lines().any(|line| line.starts_with("m=application")) {
            return Err(OfferError::InvalidSdp(
                "the offer has no data channel (no m=application line)".to_owned(),
            ));
        }
        let fingerprint = DtlsFingerprint::from_sdp(sdp)
            .map_err(|error| OfferError::InvalidSdp(error.to_string()))?;
        browser::verify_binding(&browser, &fingerprint, signature)
            .map_err(|error| OfferError::InvalidSignature(error.to_string()))?;
        let offer = SdpOffer::from_sdp_string(sdp)
            .map_err(|error| OfferError::InvalidSdp(error.to_string()))?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Offer {
                browser,
                offer,
                reply,
            })
            .await
            .map_err(|_| OfferError::ShuttingDown)?;
        answer.await.map_err(|_| OfferError::ShuttingDown)?
    }

    /// Adds a trickled ICE candidate (`candidate:…`) of `browser` to its session.
    pub async fn add_remote_candidate(
        &self,
        browser: NodeId,
        candidate: &str,
    ) -> Result<(), String> {
        let text = candidate.trim();
        let text = text.strip_prefix("a=").unwrap_or(text);
        let candidate = Candidate::from_sdp_string(text)
            .map_err(|error| format!("not an ICE candidate: {error}"))?;
        self.commands
            .send(Command::Candidate { browser, candidate })
            .await
            .map_err(|_| "the node is shutting down".to_owned())
    }

    /// Sends an application message to a browser connected to this node and waits (at most
    /// `timeout`) for its acknowledgement; returns the round trip.
    pub async fn send_app(
        &self,
        browser: NodeId,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Duration, BrowserSendError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::SendApp {
                browser,
                payload: payload.to_vec(),
                reply,
            })
            .await
            .map_err(|_| BrowserSendError::Closed)?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BrowserSendError::Closed),
            Err(_) => Err(BrowserSendError::Timeout(timeout)),
        }
    }

    /// The browser sessions with an open data channel, as `GET /v1/connections` lists them.
    pub async fn connections(&self) -> Vec<ConnectionInfo> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Connections(reply))
            .await
            .is_err()
        {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// The counters.
    pub async fn stats(&self) -> WebRtcStats {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Stats(reply)).await.is_err() {
            return WebRtcStats::default();
        }
        answer.await.unwrap_or_default()
    }

    /// Closes every session and stops the driver.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// Binds one socket per local address: `bind` itself, or every interface address of its
/// family when its IP is unspecified (loopback included).
async fn bind_sockets(bind: SocketAddr) -> std::io::Result<Vec<Arc<UdpSocket>>> {
    let ips: Vec<IpAddr> = if bind.ip().is_unspecified() {
        let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()?
            .into_iter()
            .map(|interface| interface.ip())
            .filter(|ip| ip.is_ipv4() == bind.is_ipv4())
            .filter(|ip| match ip {
                IpAddr::V6(v6) => !v6.is_unicast_link_local(),
                IpAddr::V4(_) => true,
            })
            .collect();
        ips.sort();
        ips.dedup();
        ips
    } else {
        vec![bind.ip()]
    };
    if ips.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("no interface address to bind for {bind}"),
        ));
    }
    let mut sockets = Vec::new();
    for ip in ips {
        let socket = UdpSocket::bind(SocketAddr::new(ip, bind.port())).await?;
        sockets.push(Arc::new(socket));
    }
    Ok(sockets)
}

async fn read_datagrams(socket: Arc<UdpSocket>, out: mpsc::Sender<Datagram>) {
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, source)) => {
                let datagram = Datagram {
                    at: Instant::now(),
                    local,
                    source,
                    data: buf[..len].to_vec(),
                };
                if out.send(datagram).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                // ICMP errors for earlier sends surface here on Linux; they are not fatal.
                tracing::trace!(%local, %error, "WebRTC socket read error");
            }
        }
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Driver {
    local: NodeId,
    keys: NodeKeypair,
    sockets: Vec<Arc<UdpSocket>>,
    sessions: Vec<Session>,
    next_session: u64,
    routing: Option<Routing>,
    messages: Option<Arc<MeshMessages>>,
    results: mpsc::Sender<(u64, BrowserFrame)>,
    options: WebRtcOptions,
    stats: WebRtcStats,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut datagrams: mpsc::Receiver<Datagram>,
        mut results: mpsc::Receiver<(u64, BrowserFrame)>,
        readers: Vec<tokio::task::JoinHandle<()>>,
    ) {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.drive_all().await;
            let wake = tokio::time::Instant::from_std(deadline);
            tokio::select! {
                Some(datagram) = datagrams.recv() => {
                    // Each input is followed by draining that session's output: str0m's DTLS
                    // layer holds only a few records between polls.
                    let mut next = Some(datagram);
                    let mut handled = 0;
                    while let Some(datagram) = next.take() {
                        if let Some(index) = self.on_datagram(datagram) {
                            self.drive(index).await;
                        }
                        handled += 1;
                        if handled < DATAGRAM_BATCH {
                            next = datagrams.try_recv().ok();
                        }
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        self.close_all("the node is shutting down").await;
                        for reader in &readers {
                            reader.abort();
                        }
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => {
                        self.close_all("the node is shutting down").await;
                        for reader in &readers {
                            reader.abort();
                        }
                        return;
                    }
                },
                Some((session, frame)) = results.recv() => {
                    if let Some(session) = self.sessions.iter_mut().find(|s| s.id == session) {
                        session.mesh_in_flight = session.mesh_in_flight.saturating_sub(1);
                        session.queue(&frame);
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    for session in &mut self.sessions {
                        if let Err(error) = session.rtc.handle_input(Input::Timeout(now)) {
                            session.close(format!("WebRTC failed: {error}"));
                        }
                    }
                }
                _ = housekeeping.tick() => self.housekeeping(),
            }
        }
    }

    /// Feeds a datagram to the session that accepts it; returns that session's index.
    fn on_datagram(&mut self, datagram: Datagram) -> Option<usize> {
        let Ok(contents) = datagram.data.as_slice().try_into() else {
            self.stats.unmatched_datagrams += 1;
            return None;
        };
        let input = Input::Receive(
            datagram.at,
            Receive {
                proto: Protocol::Udp,
                source: datagram.source,
                destination: datagram.local,
                contents,
            },
        );
        let Some(index) = self.sessions.iter().position(|s| s.rtc.accepts(&input)) else {
            self.stats.unmatched_datagrams += 1;
            return None;
        };
        let session = &mut self.sessions[index];
        session.last_input = datagram.at;
        if session.remote.is_none() {
            session.remote = Some(datagram.source);
        }
        if let Err(error) = session.rtc.handle_input(input) {
            session.close(format!("WebRTC failed: {error}"));
        }
        Some(index)
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Offer {
                browser,
                offer,
                reply,
            } => {
                let _ = reply.send(self.accept(browser, offer));
            }
            Command::Candidate { browser, candidate } => {
                if let Some(session) = self
                    .sessions
                    .iter_mut()
                    .rev()
                    .find(|s| s.browser == browser)
                {
                    session.rtc.add_remote_candidate(candidate);
                }
            }
            Command::SendApp {
                browser,
                payload,
                reply,
            } => match self
                .sessions
                .iter_mut()
                .rev()
                .find(|s| s.browser == browser && s.channel.is_some())
            {
                Some(session) => session.send_app(payload, Instant::now(), reply),
                None => {
                    let _ = reply.send(Err(BrowserSendError::NotConnected(browser)));
                }
            },
            Command::SendMesh {
                browser,
                source,
                hops,
                payload,
                reply,
            } => match self.open_session(&browser) {
                Some(session) => {
                    session.send_mesh_message(source, hops, payload, Instant::now(), reply)
                }
                None => {
                    let _ = reply.send(Err(BrowserSendError::NotConnected(browser)));
                }
            },
            Command::Hosts { browser, reply } => {
                let _ = reply.send(self.open_session(&browser).is_some());
            }
            Command::Connections(reply) => {
                let list = self
                    .sessions
                    .iter()
                    .filter(|s| s.channel.is_some() && s.closing.is_none())
                    .map(|s| self.info(s))
                    .collect();
                let _ = reply.send(list);
            }
            Command::Stats(reply) => {
                let mut stats = self.stats;
                stats.sessions = self.sessions.len();
                stats.open = self.sessions.iter().filter(|s| s.channel.is_some()).count();
                let _ = reply.send(stats);
            }
            Command::Shutdown(_) => {}
        }
    }

    /// The newest session with `browser` whose data channel is open.
    fn open_session(&mut self, browser: &NodeId) -> Option<&mut Session> {
        self.sessions
            .iter_mut()
            .rev()
            .find(|s| s.browser == *browser && s.channel.is_some() && s.closing.is_none())
    }

    fn accept(&mut self, browser: NodeId, offer: SdpOffer) -> Result<Answer, OfferError> {
        if self.sessions.len() >= self.options.max_sessions {
            return Err(OfferError::Full(self.options.max_sessions));
        }
        let now = Instant::now();
        let mut rtc = RtcConfig::new()
            .set_sctp_max_buffered_amount(SCTP_SEND_BUFFER)
            .build(now);
        for socket in &self.sockets {
            let Ok(addr) = socket.local_addr() else {
                continue;
            };
            match Candidate::host(addr, "udp") {
                Ok(candidate) => {
                    rtc.add_local_candidate(candidate);
                }
                Err(error) => tracing::debug!(%addr, %error, "no host candidate for an address"),
            }
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|error| OfferError::InvalidSdp(error.to_string()))?;
        let local = rtc.direct_api().local_dtls_fingerprint().clone();
        let fingerprint = DtlsFingerprint {
            hash_function: local.hash_func.to_ascii_lowercase(),
            digest: local.bytes.clone(),
        };
        let signature = self.keys.sign(
            SignatureDomain::DtlsFingerprint,
            browser::binding_text(&self.local, &fingerprint).as_bytes(),
        );
        let id = self.next_session;
        self.next_session += 1;
        self.stats.accepted += 1;
        tracing::info!(%browser, session = id, "browser offer accepted");
        self.sessions.push(Session::new(id, browser, rtc, now));
        Ok(Answer {
            sdp: answer.to_sdp_string(),
            signature: hex::encode(signature.to_bytes()),
        })
    }

    /// Drains every session's output, drops sessions that ended, and returns when the
    /// driver must next wake for a timeout.
    async fn drive_all(&mut self) -> Instant {
        let mut earliest = Instant::now() + Duration::from_secs(1);
        let mut index = 0;
        while index < self.sessions.len() {
            let deadline = self.drive(index).await;
            let session = &mut self.sessions[index];
            if let Some(reason) = session.closing.take() {
                let mut session = self.sessions.swap_remove(index);
                self.end(&mut session, &reason);
                continue;
            }
            earliest = earliest.min(deadline);
            index += 1;
        }
        earliest
    }

    /// Handles one session's events and sends its datagrams until it waits for a timeout.
    async fn drive(&mut self, index: usize) -> Instant {
        loop {
            self.sessions[index].flush();
            let output = self.sessions[index].rtc.poll_output();
            match output {
                Ok(Output::Timeout(at)) => return at,
                Ok(Output::Transmit(transmit)) => {
                    self.transmit(transmit.source, transmit.destination, &transmit.contents)
                        .await;
                }
                Ok(Output::Event(event)) => self.on_event(index, event),
                Err(error) => {
                    self.sessions[index].close(format!("WebRTC failed: {error}"));
                    return Instant::now();
                }
            }
            if self.sessions[index].closing.is_some() {
                return Instant::now();
            }
        }
    }

    async fn transmit(&self, source: SocketAddr, destination: SocketAddr, contents: &[u8]) {
        let Some(socket) = self
            .sockets
            .iter()
            .find(|socket| socket.local_addr().is_ok_and(|addr| addr == source))
        else {
            tracing::debug!(%source, "no socket for a WebRTC datagram's source address");
            return;
        };
        match socket.try_send_to(contents, destination) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if let Err(error) = socket.send_to(contents, destination).await {
                    tracing::debug!(%destination, %error, "WebRTC send failed");
                }
            }
            Err(error) => tracing::debug!(%destination, %error, "WebRTC send failed"),
        }
    }

    fn on_event(&mut self, index: usize, event: Event) {
        let session = &mut self.sessions[index];
        match event {
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                session.close("ICE disconnected");
            }
            Event::ChannelOpen(channel, label) => {
                if label == CHANNEL_LABEL && session.channel.is_none() {
                    session.channel = Some(channel);
                    session.opened_at = Some(SystemTime::now());
                    tracing::info!(browser = %session.browser, session = session.id, remote = ?session.remote, "browser link up");
                } else {
                    tracing::debug!(browser = %session.browser, %label, "ignoring an extra data channel");
                }
            }
            Event::ChannelData(data) => {
                if Some(data.id) != session.channel {
                    return;
                }
                let action = session.on_message(&data.data, Instant::now());
                let (session_id, browser) = (session.id, session.browser);
                if session.closing.is_some() {
                    self.stats.violations += 1;
                }
                self.act(session_id, browser, action);
            }
            Event::ChannelClose(channel) if Some(channel) == session.channel => {
                session.close("the browser closed the data channel");
            }
            _ => {}
        }
    }

    fn act(&mut self, session: u64, browser: NodeId, action: Action) {
        match action {
            Action::None => {}
            Action::Deliver(payload) => match &self.routing {
                Some(routing) => routing.deliver_local(ReceivedMessage {
                    source: browser,
                    via: None,
                    payload: Bytes::from(payload),
                    hops: 0,
                    received_at: unix_millis(),
                }),
                None => tracing::debug!(%browser, "a browser message was dropped: routing is off"),
            },
            Action::MeshSend {
                request,
                destination,
                id,
                signed,
                payload,
            } => {
                let results = self.results.clone();
                let Some(messages) = self.messages.clone() else {
                    let _ = results.try_send((
                        session,
                        BrowserFrame::MeshResult {
                            request,
                            outcome: Err("routing or the DHT is off on this node".to_owned()),
                        },
                    ));
                    return;
                };
                tokio::spawn(async move {
                    let outcome = messages
                        .send_from_browser(
                            browser,
                            destination,
                            id,
                            signed,
                            payload,
                            MESH_SEND_TIMEOUT,
                        )
                        .await
                        .map(|delivery| {
                            (
                                delivery.hops,
                                delivery.rtt_ms.round().clamp(0.0, f64::from(u32::MAX)) as u32,
                            )
                        })
                        .map_err(|error| error.to_string());
                    let _ = results
                        .send((session, BrowserFrame::MeshResult { request, outcome }))
                        .await;
                });
            }
        }
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        for session in &mut self.sessions {
            if session.channel.is_none() && now - session.created > OPEN_TIMEOUT {
                session.close(format!(
                    "the data channel did not open within {}s",
                    OPEN_TIMEOUT.as_secs()
                ));
            } else if now - session.last_input > IDLE_TIMEOUT {
                session.close(format!(
                    "nothing received from the browser for {}s",
                    IDLE_TIMEOUT.as_secs()
                ));
            } else if !session.rtc.is_alive() {
                session.close("the WebRTC session ended");
            } else {
                session.maybe_ping(now, PING_INTERVAL);
            }
        }
    }

    fn end(&mut self, session: &mut Session, reason: &str) {
        session.fail_waiters();
        session.rtc.disconnect();
        if reason.starts_with("protocol violation") {
            tracing::warn!(browser = %session.browser, session = session.id, %reason, "dropping a browser that broke the protocol");
        } else {
            tracing::info!(browser = %session.browser, session = session.id, %reason, "browser session closed");
        }
    }

    async fn close_all(&mut self, reason: &str) {
        let mut sessions = std::mem::take(&mut self.sessions);
        for session in &mut sessions {
            self.end(session, reason);
            // Let the close reach the browser where str0m has something to say.
            while let Ok(Output::Transmit(transmit)) = session.rtc.poll_output() {
                self.transmit(transmit.source, transmit.destination, &transmit.contents)
                    .await;
            }
        }
    }

    fn info(&self, session: &Session) -> ConnectionInfo {
        let latency = session.rtt.map_or(0.0, |rtt| rtt.as_secs_f64() * 1000.0);
        ConnectionInfo {
            connection_id: format!("{}-webrtc-{}", &session.browser.to_hex()[..16], session.id),
            local_node_id: self.local.to_hex(),
            remote_node_id: session.browser.to_hex(),
            connection_type: "webrtc".to_owned(),
            status: "connected".to_owned(),
            direction: "inbound".to_owned(),
            quality_score: meshcore_proto::link::quality_score(
                session.rtt.unwrap_or_default(),
                0.0,
            ),
            bandwidth_up: 0.0,
            bandwidth_down: 0.0,
            latency,
            packet_loss: 0.0,
            bytes_sent: session.bytes_sent,
            bytes_received: session.bytes_received,
            capabilities: Vec::new(),
            remote_addr: session.remote.map(|addr| addr.to_string()),
            connected_at: session
                .opened_at
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
            protocol_version: 1,
            data_lane: false,
        }
    }
}
