//! The data lane's runtime: one UDP socket per node beside the iroh endpoint, the task
//! that receives on it, and each link's half of the lane (the wire format and the keys are
//! [`meshcore_proto::lane`]).
//!
//! A routed packet that arrives on the lane is opened and handed to the node's
//! [`FrameSink`] in the receiving task; if the packet is relayed, the [`Forwarder`](crate::forward::Forwarder)
//! seals it for the next hop's lane and sends it from that same task. So a relay crossing
//! costs one wake-up (the socket's), where the QUIC path costs three (the endpoint's, the
//! incoming connection's and the outgoing connection's tasks).
//!
//! The lane only ever carries routed packets (data and acknowledgements, which the router
//! already protects against loss, reordering and replay end to end) of at most
//! [`MAX_LANE_FRAME`] bytes; everything else, and whatever the lane cannot take at once,
//! goes on the link's QUIC connection. Setting up, per link, in the link's task
//! ([`LaneLink`]):
//!
//! 1. each side sends a `LaneOffer` on the control stream (its lane port, a random lane id,
//!    an ephemeral key share);
//! 2. on the peer's offer, a side derives the keys, registers its opener under its lane id
//!    and sends a probe datagram to the peer's lane port at the address the link uses;
//! 3. a side that opens a probe tells the peer `LaneReady` on the control stream (and
//!    probes back, in case its own probe came before the peer registered); a side sends
//!    routed packets on the lane only after the peer's `LaneReady`, so a lane that a
//!    firewall or NAT blocks is never used;
//! 4. while the lane is in use, each side probes once per second; a side that opens
//!    nothing for [`LANE_SILENCE`] tells the peer `LaneDown`, and the peer goes back to
//!    QUIC until the next `LaneReady`.
//!
//! A side sends to the peer's lane port at the IP the link uses; when a datagram from the
//! peer opens, it answers at the port that datagram came from (a NAT may have rewritten
//! it). The IP never changes, so no datagram is ever aimed at another host.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meshcore_proto::lane::{
    lane_header, LaneError, LaneKeys, LaneOffer, LaneOpener, LanePayload, LaneSealer, LaneSecret,
    MAX_LANE_DATAGRAM, MAX_LANE_FRAME,
};
use meshcore_proto::peers::LinkId;
use meshcore_proto::NodeId;
use tokio::net::UdpSocket;
use tokio::sync::Notify;

use crate::link::{FrameSink, ReceivedFrame};
use crate::routing::{TAG_ACK, TAG_DATA};

/// A side that opens nothing from the peer for this long takes the lane down.
pub const LANE_SILENCE: Duration = Duration::from_secs(3);

/// Kernel buffer asked for the lane socket, each way: bursts of routed packets wait here
/// rather than being dropped.
const SOCKET_BUFFER: usize = 4 << 20;

/// Running totals of a node's lane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct LaneCounters {
    /// Routed packets sent on lanes.
    pub frames_sent: u64,
    /// Routed packets received on lanes.
    pub frames_received: u64,
    /// Probes sent.
    pub probes_sent: u64,
    /// Probes received.
    pub probes_received: u64,
    /// Datagrams refused: malformed, for no known lane, forged or replayed.
    pub datagrams_refused: u64,
    /// Sends the socket refused (the packet then went on QUIC).
    pub send_failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    probes_sent: AtomicU64,
    probes_received: AtomicU64,
    datagrams_refused: AtomicU64,
    send_failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A node's lane socket and the lanes of its links. Cheap to share.
#[derive(Debug)]
pub struct DataLanes {
    local: NodeId,
    socket: Arc<UdpSocket>,
    /// The same socket, for sending without the reactor: a send goes straight to the
    /// kernel, which refuses it only when its buffer is full.
    send_socket: std::net::UdpSocket,
    port: u16,
    receivers: RwLock<HashMap<u64, Arc<LaneReceiver>>>,
    counters: Counters,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// One link's receiving half, as the receive task finds it by lane id.
#[derive(Debug)]
struct LaneReceiver {
    link: LinkId,
    peer: NodeId,
    opener: Mutex<LaneOpener>,
    /// When a datagram last opened, in ms since `epoch`.
    last_opened_ms: AtomicU64,
    epoch: Instant,
    /// A probe opened (the link's task answers `LaneReady`).
    probed: Notify,
    /// Where the link's sender sends; see [`LaneReceiver::heard_from`].
    peer_addr: Arc<Mutex<SocketAddr>>,
}

impl LaneReceiver {
    /// A datagram from the peer opened, sent from `from`. If the peer's port changed (a NAT
    /// rewrote it, or the offer named a port the peer is not seen from), answers go there
    /// from now on, as WireGuard's endpoints roam; only the port may move, never the IP the
    /// QUIC link uses, so no datagram can be aimed at another host.
    fn heard_from(&self, from: SocketAddr) {
        let mut to = self
            .peer_addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *to != from && to.ip() == from.ip() {
            tracing::debug!(peer = %self.peer, old = %*to, new = %from, "the peer's lane port moved");
            *to = from;
        }
    }
}

impl DataLanes {
    /// Binds the lane socket of node `local` on `ip` (an ephemeral port) and starts
    /// receiving into `frames`.
    pub fn bind(local: NodeId, ip: IpAddr, frames: FrameSink) -> std::io::Result<Arc<Self>> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        socket.set_nonblocking(true)?;
        let socket = socket2::Socket::from(socket);
        // Larger buffers are a wish: the kernel caps them at its own limits.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        let socket: std::net::UdpSocket = socket.into();
        let send_socket = socket.try_clone()?;
        let socket = UdpSocket::from_std(socket)?;
        let port = socket.local_addr()?.port();
        let lanes = Arc::new(Self {
            local,
            socket: Arc::new(socket),
            send_socket,
            port,
            receivers: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(receive(Arc::downgrade(&lanes), frames));
        *lanes.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(lanes)
    }

    /// The UDP address the lane receives on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Running totals.
    pub fn counters(&self) -> LaneCounters {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LaneCounters {
            frames_sent: get(&c.frames_sent),
            frames_received: get(&c.frames_received),
            probes_sent: get(&c.probes_sent),
            probes_received: get(&c.probes_received),
            datagrams_refused: get(&c.datagrams_refused),
            send_failures: get(&c.send_failures),
        }
    }

    /// Stops receiving; links fall back to QUIC as their peers stop hearing probes.
    pub fn close(&self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }

    fn receiver(&self, lane_id: u64) -> Option<Arc<LaneReceiver>> {
        self.receivers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&lane_id)
            .cloned()
    }
}

impl Drop for DataLanes {
    fn drop(&mut self) {
        self.close();
    }
}

/// Receives lane datagrams until the lanes are dropped or closed.
async fn receive(lanes: std::sync::Weak<DataLanes>, frames: FrameSink) {
    let Some(socket) = lanes.upgrade().map(|lanes| Arc::clone(&lanes.socket)) else {
        return;
    };
    let mut buffer = vec![0u8; MAX_LANE_DATAGRAM + 1];
    loop {
        let received = socket.recv_from(&mut buffer).await;
        let Some(lanes) = lanes.upgrade() else { return };
        let Ok((len, from)) = received else {
            // ICMP errors from earlier sends surface here on some systems; the socket
            // itself is fine.
            continue;
        };
        let datagram = &buffer[..len];
        let opened = lane_header(datagram).and_then(|(lane_id, _)| {
            let receiver = lanes.receiver(lane_id).ok_or(LaneError::Forged)?;
            let payload = receiver
                .opener
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .open(datagram)?;
            Ok((receiver, payload))
        });
        let (receiver, payload) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                bump(&lanes.counters.datagrams_refused);
                tracing::trace!(%error, "a lane datagram was refused");
                continue;
            }
        };
        receiver.heard_from(from);
        receiver.last_opened_ms.store(
            u64::try_from(receiver.epoch.elapsed().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        match payload {
            LanePayload::Probe => {
                bump(&lanes.counters.probes_received);
                receiver.probed.notify_one();
            }
            LanePayload::Frame(frame) => {
                bump(&lanes.counters.frames_received);
                let frame = ReceivedFrame {
                    link: receiver.link,
                    peer: receiver.peer,
                    data: Bytes::from(frame),
                };
                drop(lanes);
                if !frames.deliver(frame).await {
                    return;
                }
            }
        }
    }
}

/// The sending half of a link's lane, kept in the link's handle.
#[derive(Debug)]
pub struct LaneSender {
    sealer: LaneSealer,
    /// The peer's lane address: the link's IP and the offered port, or the port the peer
    /// was last heard from.
    to: Arc<Mutex<SocketAddr>>,
    lanes: Arc<DataLanes>,
    /// The peer said `LaneReady` (and not `LaneDown` since).
    ready: AtomicBool,
}

impl LaneSender {
    /// Whether routed packets to the peer go on the lane now.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Sends `frame` on the lane if the lane carries it and the socket takes it at once;
    /// gives it back otherwise (for the QUIC connection).
    pub fn try_send(&self, frame: Bytes) -> Result<(), Bytes> {
        if !self.is_ready()
            || frame.len() > MAX_LANE_FRAME
            || !matches!(frame.first(), Some(&(TAG_DATA | TAG_ACK)))
        {
            return Err(frame);
        }
        let Ok(datagram) = self.sealer.seal_frame(&frame) else {
            return Err(frame);
        };
        match self.lanes.send_socket.send_to(&datagram, self.to()) {
            Ok(_) => {
                bump(&self.lanes.counters.frames_sent);
                Ok(())
            }
            Err(_) => {
                bump(&self.lanes.counters.send_failures);
                Err(frame)
            }
        }
    }

    fn to(&self) -> SocketAddr {
        *self.to.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn probe(&self) {
        let Ok(datagram) = self.sealer.seal_probe() else {
            return;
        };
        match self.lanes.send_socket.send_to(&datagram, self.to()) {
            Ok(_) => bump(&self.lanes.counters.probes_sent),
            Err(_) => bump(&self.lanes.counters.send_failures),
        }
    }
}

/// What the link's task must send on the control stream after a lane step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneSignal {
    /// `LaneReady`.
    Ready,
    /// `LaneDown`.
    Down,
}

/// One link's lane, driven by the link's task: see [the module docs](self).
#[derive(Debug)]
pub struct LaneLink {
    lanes: Arc<DataLanes>,
    peer: NodeId,
    link: LinkId,
    peer_ip: IpAddr,
    secret: Option<LaneSecret>,
    receiver: Option<Arc<LaneReceiver>>,
    sender: Option<Arc<LaneSender>>,
    /// This side told the peer `LaneReady` (and not `LaneDown` since).
    inbound_ready: bool,
}

impl LaneLink {
    /// Starts a lane for `link` to `peer` at `peer_ip`; the offer to send on the control
    /// stream comes with it.
    pub fn start(
        lanes: Arc<DataLanes>,
        peer: NodeId,
        link: LinkId,
        peer_ip: IpAddr,
    ) -> (Self, LaneOffer) {
        // An IPv6 socket (bound to `[::]`) reaches an IPv4 peer at its mapped address.
        let peer_ip = match (lanes.send_socket.local_addr(), peer_ip) {
            (Ok(SocketAddr::V6(_)), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            _ => peer_ip,
        };
        let secret = LaneSecret::generate(lanes.port, &mut rand::rngs::OsRng);
        let offer = secret.offer();
        let lane = Self {
            lanes,
            peer,
            link,
            peer_ip,
            secret: Some(secret),
            receiver: None,
            sender: None,
            inbound_ready: false,
        };
        (lane, offer)
    }

    /// Takes the peer's offer: derives the keys, registers the receiving half and probes.
    /// Returns the sending half for the link's handle.
    pub fn accept(&mut self, offer: &LaneOffer) -> Result<Arc<LaneSender>, LaneError> {
        let Some(secret) = self.secret.take() else {
            // A second offer on one link: the first one stands.
            return Err(LaneError::SecondOffer);
        };
        let LaneKeys { sealer, opener } =
            LaneKeys::derive(&self.lanes.local, &self.peer, &secret, offer)?;
        let peer_addr = Arc::new(Mutex::new(SocketAddr::new(self.peer_ip, offer.port)));
        let receiver = Arc::new(LaneReceiver {
            link: self.link,
            peer: self.peer,
            opener: Mutex::new(opener),
            last_opened_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            probed: Notify::new(),
            peer_addr: Arc::clone(&peer_addr),
        });
        self.lanes
            .receivers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(secret.offer().lane_id, Arc::clone(&receiver));
        self.receiver = Some(receiver);
        let sender = Arc::new(LaneSender {
            sealer,
            to: Arc::clone(&peer_addr),
            lanes: Arc::clone(&self.lanes),
            ready: AtomicBool::new(false),
        });
        sender.probe();
        self.sender = Some(Arc::clone(&sender));
        Ok(sender)
    }

    /// Waits until a probe from the peer opens (forever while there is no lane).
    pub async fn probed(&self) {
        match &self.receiver {
            Some(receiver) => receiver.probed.notified().await,
            None => std::future::pending().await,
        }
    }

    /// A probe from the peer opened: the peer's datagrams reach this side.
    pub fn on_probe(&mut self) -> Option<LaneSignal> {
        if let Some(sender) = &self.sender {
            if !sender.is_ready() {
                // The peer registered before it probed: a probe of ours now reaches it.
                sender.probe();
            }
        }
        if self.inbound_ready {
            return None;
        }
        self.inbound_ready = true;
        Some(LaneSignal::Ready)
    }

    /// The peer said `LaneReady` (`true`) or `LaneDown` (`false`).
    pub fn on_peer(&mut self, ready: bool) {
        if let Some(sender) = &self.sender {
            sender.ready.store(ready, Ordering::Release);
            if ready {
                tracing::debug!(peer = %self.peer, to = %sender.to(), "data lane in use");
            } else {
                tracing::debug!(peer = %self.peer, "the peer stopped hearing the data lane");
            }
        }
    }

    /// Once a second: probe, and take the lane down if the peer has gone silent on it.
    pub fn on_tick(&mut self) -> Option<LaneSignal> {
        self.on_tick_at(Instant::now())
    }

    /// [`on_tick`](Self::on_tick) at `now`.
    fn on_tick_at(&mut self, now: Instant) -> Option<LaneSignal> {
        if let Some(sender) = &self.sender {
            sender.probe();
        }
        let receiver = self.receiver.as_ref()?;
        let silent_ms = u64::try_from(now.saturating_duration_since(receiver.epoch).as_millis())
            .unwrap_or(u64::MAX)
            .saturating_sub(receiver.last_opened_ms.load(Ordering::Relaxed));
        if self.inbound_ready && silent_ms > LANE_SILENCE.as_millis() as u64 {
            self.inbound_ready = false;
            return Some(LaneSignal::Down);
        }
        None
    }
}

impl Drop for LaneLink {
    fn drop(&mut self) {
        if let Some(receiver) = &self.receiver {
            let mut receivers = self
                .lanes
                .receivers
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            receivers.retain(|_, registered| !Arc::ptr_eq(registered, receiver));
        }
    }
}

#[cfg(test)]
mod tests {
    use meshcore_proto::NodeKeypair;
    use rand_chacha::rand_core::SeedableRng;
    use tokio::sync::mpsc;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn id(seed: u64) -> NodeId {
        NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed)).node_id()
    }

    /// A node's lanes on loopback, and what they deliver.
    fn node(seed: u64) -> (Arc<DataLanes>, mpsc::Receiver<ReceivedFrame>) {
        let frames = FrameSink::new(64);
        let received = frames.take_receiver().expect("a fresh sink");
        let lanes = DataLanes::bind(id(seed), "127.0.0.1".parse().expect("ip"), frames)
            .expect("bind the lane socket");
        (lanes, received)
    }

    /// Links a and b through their lanes, passing the control messages by hand; returns
    /// each side's lane and sender.
    async fn linked(
        a: &Arc<DataLanes>,
        b: &Arc<DataLanes>,
    ) -> ((LaneLink, Arc<LaneSender>), (LaneLink, Arc<LaneSender>)) {
        let (mut lane_a, offer_a) = LaneLink::start(
            Arc::clone(a),
            b.local,
            LinkId(1),
            a.socket.local_addr().expect("addr").ip(),
        );
        let (mut lane_b, offer_b) = LaneLink::start(
            Arc::clone(b),
            a.local,
            LinkId(1),
            b.socket.local_addr().expect("addr").ip(),
        );
        // a takes b's offer first and probes before b has registered: that probe is lost.
        let sender_a = lane_a.accept(&offer_b).expect("a accepts");
        let sender_b = lane_b.accept(&offer_a).expect("b accepts");
        // b's probe reaches a; a answers LaneReady and probes again, which reaches b.
        tokio::time::timeout(WAIT, lane_a.probed())
            .await
            .expect("a hears b's probe");
        assert_eq!(lane_a.on_probe(), Some(LaneSignal::Ready));
        lane_b.on_peer(true);
        tokio::time::timeout(WAIT, lane_b.probed())
            .await
            .expect("b hears a's probe");
        assert_eq!(lane_b.on_probe(), Some(LaneSignal::Ready));
        lane_a.on_peer(true);
        assert!(sender_a.is_ready() && sender_b.is_ready());
        ((lane_a, sender_a), (lane_b, sender_b))
    }

    fn routed(tag: u8, len: usize) -> Bytes {
        let mut frame = vec![7u8; len];
        frame[0] = tag;
        Bytes::from(frame)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn routed_packets_cross_once_both_sides_hear_each_other() {
        let ((a, mut from_a), (b, mut from_b)) = (node(1), node(2));
        let ((_lane_a, sender_a), (_lane_b, sender_b)) = linked(&a, &b).await;
        sender_a
            .try_send(routed(TAG_DATA, 100))
            .expect("a data packet goes on the lane");
        sender_b
            .try_send(routed(TAG_ACK, MAX_LANE_FRAME))
            .expect("the largest frame too");
        let at_b = tokio::time::timeout(WAIT, from_a.recv())
            .await
            .expect("in time");
        let at_a = tokio::time::timeout(WAIT, from_b.recv())
            .await
            .expect("in time");
        // Each sink got the other's frame, under the link and the peer it came from.
        let (at_b, at_a) = (at_b.expect("frame"), at_a.expect("frame"));
        assert_eq!(
            (at_a.peer, at_a.link, at_a.data.len()),
            (id(1), LinkId(1), 100)
        );
        assert_eq!((at_b.peer, at_b.data.len()), (id(2), MAX_LANE_FRAME));
        assert_eq!(a.counters().frames_sent, 1);
        assert_eq!(a.counters().frames_received, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_lane_does_not_carry_is_given_back() {
        let ((a, _from_a), (b, _from_b)) = (node(3), node(4));
        let ((_lane_a, sender_a), _b) = linked(&a, &b).await;
        for frame in [
            routed(0x01, 100),
            routed(0x06, 100),
            routed(TAG_DATA, MAX_LANE_FRAME + 1),
            Bytes::new(),
        ] {
            let len = frame.len();
            assert_eq!(sender_a.try_send(frame.clone()), Err(frame), "{len} bytes");
        }
        assert_eq!(a.counters().frames_sent, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_carries_nothing_until_the_peer_says_it_hears_it() {
        let ((a, _at_a), (b, _at_b)) = (node(9), node(10));
        let ip = "127.0.0.1".parse().expect("ip");
        let (mut lane_a, _) = LaneLink::start(Arc::clone(&a), b.local, LinkId(2), ip);
        let (_lane_b, offer_b) = LaneLink::start(Arc::clone(&b), a.local, LinkId(2), ip);
        let sender = lane_a.accept(&offer_b).expect("keys");
        assert_eq!(
            lane_a.accept(&offer_b).err(),
            Some(LaneError::SecondOffer),
            "the first offer stands"
        );
        // No LaneReady from b yet (a firewall could be dropping everything a sends).
        let frame = routed(TAG_DATA, 64);
        assert_eq!(sender.try_send(frame.clone()), Err(frame.clone()));
        lane_a.on_peer(true);
        assert_eq!(sender.try_send(frame.clone()), Ok(()));
        // LaneDown: back to QUIC until the next LaneReady.
        lane_a.on_peer(false);
        assert_eq!(sender.try_send(frame.clone()), Err(frame));
        assert_eq!(a.counters().frames_sent, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_heard_from_another_port_is_answered_there() {
        let ((a, _at_a), (b, _at_b)) = (node(11), node(12));
        let ip = "127.0.0.1".parse().expect("ip");
        let (mut lane_a, offer_a) = LaneLink::start(Arc::clone(&a), b.local, LinkId(3), ip);
        let (mut lane_b, offer_b) = LaneLink::start(Arc::clone(&b), a.local, LinkId(3), ip);
        // b has a's offer with a port where nothing listens (as if a NAT had rewritten a's
        // port): b's probes go nowhere.
        let dead_port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|socket| socket.local_addr())
            .expect("a free port")
            .port();
        let sender_b = lane_b
            .accept(&LaneOffer {
                port: dead_port,
                ..offer_a
            })
            .expect("keys");
        // a's probe reaches b, from a's real lane port.
        let _sender_a = lane_a.accept(&offer_b).expect("keys");
        tokio::time::timeout(WAIT, lane_b.probed())
            .await
            .expect("b hears a");
        assert_eq!(
            sender_b.to(),
            a.local_addr().expect("addr"),
            "b answers where a is"
        );
        // b's answer probe now reaches a.
        assert_eq!(lane_b.on_probe(), Some(LaneSignal::Ready));
        tokio::time::timeout(WAIT, lane_a.probed())
            .await
            .expect("a hears b");
        assert_eq!(lane_a.on_probe(), Some(LaneSignal::Ready));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forged_and_stray_datagrams_are_counted_and_change_nothing() {
        let ((a, mut received_by_a), (b, _received_by_b)) = (node(5), node(6));
        let ((_lane_a, _sender_a), (_lane_b, sender_b)) = linked(&a, &b).await;
        let stray = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = a.local_addr().expect("addr");
        let before = a.counters().datagrams_refused;
        for datagram in [
            vec![0u8; 3],
            vec![0xAB; 200],
            vec![0u8; MAX_LANE_DATAGRAM + 50],
        ] {
            stray.send_to(&datagram, to).expect("send");
        }
        // The genuine packet sent after them still arrives (the socket is read in order).
        sender_b.try_send(routed(TAG_DATA, 64)).expect("send");
        let frame = tokio::time::timeout(WAIT, received_by_a.recv())
            .await
            .expect("in time");
        assert_eq!(frame.expect("frame").peer, id(6));
        assert_eq!(a.counters().datagrams_refused - before, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_side_that_hears_nothing_takes_the_lane_down_and_a_probe_brings_it_back() {
        let ((a, _from_a), (b, _from_b)) = (node(7), node(8));
        let ((mut lane_a, _sender_a), (_lane_b, sender_b)) = linked(&a, &b).await;
        assert_eq!(lane_a.on_tick_at(Instant::now()), None, "b was just heard");
        let later = Instant::now() + LANE_SILENCE + Duration::from_secs(1);
        assert_eq!(lane_a.on_tick_at(later), Some(LaneSignal::Down));
        assert_eq!(lane_a.on_tick_at(later), None, "said once");
        // b probes every second; the next probe heard makes a say LaneReady again.
        sender_b.probe();
        tokio::time::timeout(WAIT, lane_a.probed())
            .await
            .expect("a hears b again");
        assert_eq!(lane_a.on_probe(), Some(LaneSignal::Ready));
    }
}
