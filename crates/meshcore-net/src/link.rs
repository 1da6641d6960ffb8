//! Links: a transport-agnostic handle, and the QUIC (iroh) link task.
//!
//! A link is one transport connection to one peer, carrying the link protocol's control
//! stream. Whatever the transport (QUIC now, WebRTC for browsers), the rest of the node sees
//! a [`LinkHandle`]: send a [`LinkMessage`], read [`LinkMetrics`], close with a reason.
//! Messages received on any link arrive at the network actor as [`LinkEvent`]s.
//!
//! The QUIC handshake: the dialer opens a bidirectional stream and sends its [`Hello`]; the
//! acceptor answers with its own. Each side checks the other's version. Frames are a 4-byte
//! big-endian length and a postcard body of at most [`MAX_FRAME_LEN`] bytes.
//!
//! Beside the control stream, a link carries **data frames**: opaque byte strings of at most
//! [`MAX_DATA_FRAME`] bytes that the link never parses (routed packets, later). Each side
//! opens one unidirectional QUIC stream for its data when it first sends, and writes frames
//! with the same 4-byte length prefix. Received frames go to the node's one
//! [`FrameSink`], whose consumer applies back-pressure: a slow consumer slows the sender
//! through QUIC flow control instead of growing a queue.
//!
//! Sending a data frame ([`LinkHandle::try_send_data`]) writes it into the data stream at
//! once, in the caller's task, when nothing is queued ahead of it, the link's writer is not
//! writing and the stream takes it without waiting; otherwise it queues the frame for the
//! link's writer. The first way spares a relayed packet one hand-off between tasks.
//!
//! When the node runs a data lane ([`crate::lane`]) and the peer does too, frames that are
//! routed packets (data and acknowledgements) of at most
//! [`MAX_LANE_FRAME`](meshcore_proto::lane::MAX_LANE_FRAME) bytes go as sealed UDP
//! datagrams instead, once the peer has said it hears them: they may then arrive out of
//! order or not at all, which the router already handles end to end. Every other frame
//! keeps the data stream's order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Sink, SinkExt, StreamExt};
use iroh::endpoint::{Connection, RecvStream, SendStream, VarInt};
use meshcore_proto::link::{
    self, quality_score, Hello, LinkMessage, LinkMetrics, LINK_PROTOCOL_VERSION, MAX_FRAME_LEN,
};
use meshcore_proto::peers::{CloseReason, Direction, LinkId};
use meshcore_proto::NodeId;
use tokio::sync::{mpsc, oneshot};

use crate::forward::Forwarder;
use crate::lane::{DataLanes, LaneLink, LaneSender, LaneSignal};
use meshcore_proto::lane::LaneOffer;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// How long each side waits for the other's `Hello`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often link metrics are measured.
pub const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Messages queued for sending on one link before senders are refused.
pub const SEND_QUEUE: usize = 256;

/// The largest data frame a link carries.
pub const MAX_DATA_FRAME: usize = 64 * 1024;

/// Data frames queued for sending on one link before senders wait (or are refused).
pub const DATA_QUEUE: usize = 64;

/// Data frames coalesced into one write before the stream is flushed.
const DATA_BATCH: usize = 32;

/// Most data streams a peer may have open towards this node on one link.
pub const MAX_DATA_STREAMS: usize = 4;

/// QUIC application close codes, so the peer's log can say why.
pub mod close_code {
    /// Normal close.
    pub const NORMAL: u32 = 0;
    /// The peer broke the protocol.
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// The peer speaks another link protocol version.
    pub const INCOMPATIBLE_VERSION: u32 = 2;
    /// This node is at `max_connections`.
    pub const FULL: u32 = 3;
    /// Another link to the same peer is kept.
    pub const DUPLICATE: u32 = 4;
    /// The peer is blacklisted.
    pub const BLACKLISTED: u32 = 5;
}

fn code_for(reason: &CloseReason) -> u32 {
    match reason {
        CloseReason::Evicted | CloseReason::Full => close_code::FULL,
        CloseReason::Misbehaved(_) => close_code::PROTOCOL_VIOLATION,
        CloseReason::Blacklisted => close_code::BLACKLISTED,
        CloseReason::Duplicate | CloseReason::SelfLink => close_code::DUPLICATE,
        CloseReason::Shutdown => close_code::NORMAL,
    }
}

/// The transport of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// QUIC through iroh (node to node).
    Quic,
}

impl LinkKind {
    /// The name used in the API's `connection_type`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quic => "quic",
        }
    }
}

/// A live link as the rest of the node sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    /// The driver's id for the link.
    pub id: LinkId,
    /// The peer.
    pub peer: NodeId,
    /// Who opened it.
    pub direction: Direction,
    /// Its transport.
    pub kind: LinkKind,
    /// The peer's `Hello`.
    pub hello: Hello,
    /// The peer's address as seen on this link.
    pub remote_addr: Option<SocketAddr>,
    /// When it came up.
    pub since: SystemTime,
    outbox: mpsc::Sender<LinkMessage>,
    data: mpsc::Sender<Bytes>,
    data_writer: Arc<DataWriter>,
    metrics: Arc<Mutex<LinkMetrics>>,
    close: Arc<Mutex<Option<oneshot::Sender<CloseReason>>>>,
    pings: Pings,
    lane: LaneSlot,
}

/// This side's data stream, once open, shared by the link's writer and by senders that
/// write without waiting ([`LinkHandle::try_send_data`]).
#[derive(Debug, Default)]
struct DataWriter {
    /// The framed stream. The link's writer holds the lock while it writes.
    stream: tokio::sync::Mutex<Option<FramedWrite<SendStream, LengthDelimitedCodec>>>,
    /// A frame written without waiting is still (partly) buffered: the link's writer must
    /// flush it.
    flush_needed: tokio::sync::Notify,
    /// Frames queued for the link's writer and not yet written into the stream; a frame is
    /// written without waiting only when there are none, so frames keep their order.
    queued: AtomicUsize,
    /// Frames written without waiting, in the sender's task.
    direct: AtomicU64,
}

impl DataWriter {
    /// Writes `frame` into the stream if that needs no waiting; gives it back otherwise.
    fn try_write(&self, frame: Bytes) -> Result<(), Bytes> {
        let Ok(mut guard) = self.stream.try_lock() else {
            return Err(frame);
        };
        let Some(writer) = guard.as_mut() else {
            return Err(frame);
        };
        // Nobody is woken by this context: whatever is left to do is the link writer's
        // (`flush_needed`), which polls with its own.
        let mut cx = Context::from_waker(Waker::noop());
        let mut writer = Pin::new(writer);
        if !matches!(
            Sink::<Bytes>::poll_ready(writer.as_mut(), &mut cx),
            Poll::Ready(Ok(()))
        ) {
            return Err(frame);
        }
        if writer.as_mut().start_send(frame).is_err() {
            // The codec refused a frame checked against its limit: the stream is unusable;
            // the link's writer reports the error on its next write.
            self.flush_needed.notify_one();
            return Ok(());
        }
        self.direct.fetch_add(1, Ordering::Relaxed);
        if !matches!(
            Sink::<Bytes>::poll_flush(writer, &mut cx),
            Poll::Ready(Ok(()))
        ) {
            self.flush_needed.notify_one();
        }
        Ok(())
    }
}

/// Where a link's task puts the sending half of its lane once the peer's offer came, for
/// the link's handles.
type LaneSlot = Arc<OnceLock<Arc<LaneSender>>>;

/// Pings awaiting their pong, by nonce.
type Pings = Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>;

/// Most pings awaiting a pong on one link.
pub const MAX_PENDING_PINGS: usize = 64;

/// Why a message could not be queued on a link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The link's queue is full (the peer reads too slowly).
    #[error("the link's send queue is full")]
    Full,
    /// The link is closed.
    #[error("the link is closed")]
    Closed,
    /// A data frame is larger than [`MAX_DATA_FRAME`].
    #[error("a data frame of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl LinkHandle {
    /// Queues `message` for the peer without waiting.
    pub fn send(&self, message: LinkMessage) -> Result<(), SendError> {
        self.outbox.try_send(message).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    /// Sends a data frame to the peer without waiting: written into the data stream at once
    /// when nothing is queued ahead of it and the stream takes it, else queued.
    pub fn try_send_data(&self, frame: Bytes) -> Result<(), SendError> {
        check_data_len(&frame)?;
        let Err(frame) = self.try_lane(frame) else {
            return Ok(());
        };
        let queued = &self.data_writer.queued;
        let frame = if queued.load(Ordering::Acquire) == 0 {
            match self.data_writer.try_write(frame) {
                Ok(()) => return Ok(()),
                Err(frame) => frame,
            }
        } else {
            frame
        };
        queued.fetch_add(1, Ordering::AcqRel);
        self.data.try_send(frame).map_err(|error| {
            queued.fetch_sub(1, Ordering::AcqRel);
            match error {
                mpsc::error::TrySendError::Full(_) => SendError::Full,
                mpsc::error::TrySendError::Closed(_) => SendError::Closed,
            }
        })
    }

    /// Queues a data frame for the peer, waiting while the link's data queue is full (so a
    /// sender goes at the pace the peer reads).
    pub async fn send_data(&self, frame: Bytes) -> Result<(), SendError> {
        check_data_len(&frame)?;
        let Err(frame) = self.try_lane(frame) else {
            return Ok(());
        };
        let queued = &self.data_writer.queued;
        queued.fetch_add(1, Ordering::AcqRel);
        self.data.send(frame).await.map_err(|_| {
            queued.fetch_sub(1, Ordering::AcqRel);
            SendError::Closed
        })
    }

    /// Sends a `Ping` and waits for its `Pong`: the link's round trip through both nodes'
    /// link tasks, as an application sees it.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, SendError> {
        let (done, answered) = oneshot::channel();
        let nonce = {
            let mut pings = self.pings.lock().map_err(|_| SendError::Closed)?;
            if pings.len() >= MAX_PENDING_PINGS {
                return Err(SendError::Full);
            }
            let nonce = rand::random::<u64>();
            pings.insert(nonce, done);
            nonce
        };
        let started = tokio::time::Instant::now();
        let sent = self.send(LinkMessage::Ping(nonce));
        let result = match sent {
            Ok(()) => match tokio::time::timeout(timeout, answered).await {
                Ok(Ok(())) => Ok(started.elapsed()),
                _ => Err(SendError::Closed),
            },
            Err(error) => Err(error),
        };
        if let Ok(mut pings) = self.pings.lock() {
            pings.remove(&nonce);
        }
        result
    }

    /// Sends `frame` on the link's data lane if the lane is in use and takes it.
    fn try_lane(&self, frame: Bytes) -> Result<(), Bytes> {
        match self.lane.get() {
            Some(lane) => lane.try_send(frame),
            None => Err(frame),
        }
    }

    /// Whether routed packets to the peer go on the data lane now ([`crate::lane`]).
    pub fn data_lane_in_use(&self) -> bool {
        self.lane.get().is_some_and(|lane| lane.is_ready())
    }

    /// Data frames written into the stream in the sender's task (not queued for the link's
    /// writer) so far.
    pub fn data_frames_written_directly(&self) -> u64 {
        self.data_writer.direct.load(Ordering::Relaxed)
    }

    /// The latest measurements.
    pub fn metrics(&self) -> LinkMetrics {
        self.metrics.lock().map(|m| *m).unwrap_or_default()
    }

    /// Closes the link, telling the peer why. Later calls do nothing.
    pub fn close(&self, reason: CloseReason) {
        if let Some(sender) = self.close.lock().ok().and_then(|mut slot| slot.take()) {
            let _ = sender.send(reason);
        }
    }
}

#[cfg(test)]
impl LinkHandle {
    /// A link to `peer` with no transport behind it, for the drivers' tests: the data
    /// frames queued on it come out of the returned receiver (and the test decides what the
    /// peer receives). Control messages and pings go nowhere; metrics stay at zero.
    pub(crate) fn in_memory(id: LinkId, peer: NodeId) -> (Self, mpsc::Receiver<Bytes>) {
        let (outbox, _) = mpsc::channel(SEND_QUEUE);
        let (data, frames) = mpsc::channel(DATA_QUEUE);
        let handle = Self {
            id,
            peer,
            direction: Direction::Outbound,
            kind: LinkKind::Quic,
            hello: Hello {
                version: LINK_PROTOCOL_VERSION,
                capabilities: link::Capabilities::empty(),
                listen_addrs: Vec::new(),
            },
            remote_addr: None,
            since: SystemTime::now(),
            outbox,
            data,
            data_writer: Arc::default(),
            metrics: Arc::new(Mutex::new(LinkMetrics::default())),
            close: Arc::new(Mutex::new(None)),
            pings: Pings::default(),
            lane: Arc::default(),
        };
        (handle, frames)
    }
}

fn check_data_len(frame: &Bytes) -> Result<(), SendError> {
    if frame.len() > MAX_DATA_FRAME {
        return Err(SendError::TooLarge {
            len: frame.len(),
            max: MAX_DATA_FRAME,
        });
    }
    Ok(())
}

/// A data frame received on a link.
#[derive(Debug, Clone)]
pub struct ReceivedFrame {
    /// The link it came on.
    pub link: LinkId,
    /// The peer that sent it (authenticated by the link).
    pub peer: NodeId,
    /// The frame, unparsed.
    pub data: Bytes,
}

/// Where every link delivers the data frames it receives. Until a consumer
/// [takes](FrameSink::take_receiver) the receiving end, frames are dropped and counted.
#[derive(Debug, Clone)]
pub struct FrameSink {
    sender: mpsc::Sender<ReceivedFrame>,
    receiver: Arc<Mutex<Option<mpsc::Receiver<ReceivedFrame>>>>,
    attached: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    forwarder: Arc<std::sync::OnceLock<Arc<Forwarder>>>,
}

impl FrameSink {
    /// A sink holding at most `capacity` frames not yet consumed.
    pub fn new(capacity: usize) -> Self {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        Self {
            sender,
            receiver: Arc::new(Mutex::new(Some(receiver))),
            attached: Arc::new(AtomicBool::new(false)),
            dropped: Arc::new(AtomicU64::new(0)),
            forwarder: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Lets link tasks relay routed packets themselves through `forwarder` before
    /// delivering what is left to the consumer (see [`crate::forward`]). Set once; later
    /// calls change nothing.
    pub fn set_forwarder(&self, forwarder: Arc<Forwarder>) {
        let _ = self.forwarder.set(forwarder);
    }

    /// Takes the receiving end; `None` if it was taken already.
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<ReceivedFrame>> {
        let receiver = self.receiver.lock().ok()?.take()?;
        self.attached.store(true, Ordering::Release);
        Some(receiver)
    }

    /// Frames dropped because nobody consumed them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Delivers a frame, waiting for room. `false` if the consumer is gone.
    pub(crate) async fn deliver(&self, frame: ReceivedFrame) -> bool {
        if let Some(forwarder) = self.forwarder.get() {
            if forwarder.try_forward(&frame) {
                return true;
            }
        }
        if !self.attached.load(Ordering::Acquire) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.sender.send(frame).await.is_ok()
    }
}

/// What link tasks report to the network actor.
#[derive(Debug)]
pub enum LinkEvent {
    /// Both `Hello`s were exchanged; the actor must answer whether to keep the link.
    Handshaked {
        /// The new link.
        link: LinkHandle,
        /// `Ok` to keep it, `Err` to close it with that reason.
        decision: oneshot::Sender<Result<(), CloseReason>>,
    },
    /// A message arrived on a kept link.
    Message {
        /// The link.
        link: LinkId,
        /// The peer.
        peer: NodeId,
        /// The message.
        message: LinkMessage,
    },
    /// The peer broke the protocol; the link is closed.
    Misbehaved {
        /// The link (`None` if it failed before it was kept).
        link: Option<LinkId>,
        /// The peer.
        peer: NodeId,
        /// What it did.
        reason: String,
    },
    /// A kept link closed.
    Closed {
        /// The link.
        link: LinkId,
        /// The peer.
        peer: NodeId,
        /// Why, as text for the log.
        reason: String,
    },
}

fn codec() -> LengthDelimitedCodec {
    codec_with_limit(MAX_FRAME_LEN)
}

fn codec_with_limit(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(max)
        .new_codec()
}

type Reader = FramedRead<RecvStream, LengthDelimitedCodec>;
type Writer = FramedWrite<SendStream, LengthDelimitedCodec>;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The transport failed or the peer went away.
    #[error("transport: {0}")]
    Transport(String),
    /// The peer did not answer in time.
    #[error("no Hello within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    /// The peer sent something other than a valid `Hello`.
    #[error("protocol violation: {0}")]
    Violation(String),
    /// The peer speaks another version.
    #[error("incompatible link protocol version {0} (this node speaks {LINK_PROTOCOL_VERSION})")]
    Version(u16),
}

async fn read_hello(reader: &mut Reader) -> Result<Hello, HandshakeError> {
    let frame = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next())
        .await
        .map_err(|_| HandshakeError::Timeout)?;
    let bytes = match frame {
        Some(Ok(bytes)) => bytes,
        Some(Err(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
            return Err(HandshakeError::Violation(format!("bad frame: {error}")))
        }
        Some(Err(error)) => return Err(HandshakeError::Transport(error.to_string())),
        None => {
            return Err(HandshakeError::Transport(
                "stream ended before Hello".to_owned(),
            ))
        }
    };
    match link::decode(&bytes) {
        Ok(LinkMessage::Hello(hello)) if hello.version == LINK_PROTOCOL_VERSION => Ok(hello),
        Ok(LinkMessage::Hello(hello)) => Err(HandshakeError::Version(hello.version)),
        Ok(other) => Err(HandshakeError::Violation(format!(
            "expected Hello, got {other:?}"
        ))),
        Err(error) => Err(HandshakeError::Violation(error.to_string())),
    }
}

async fn write(writer: &mut Writer, message: &LinkMessage) -> Result<(), HandshakeError> {
    writer
        .send(Bytes::from(link::encode(message)))
        .await
        .map_err(|error| HandshakeError::Transport(error.to_string()))
}

fn close_for(connection: &Connection, error: &HandshakeError) {
    let code = match error {
        HandshakeError::Version(_) => close_code::INCOMPATIBLE_VERSION,
        HandshakeError::Violation(_) => close_code::PROTOCOL_VIOLATION,
        _ => close_code::NORMAL,
    };
    connection.close(VarInt::from_u32(code), error.to_string().as_bytes());
}

/// The dialer's side: opens the control stream, sends `hello`, reads the peer's.
pub async fn handshake_outbound(
    connection: &Connection,
    hello: &Hello,
) -> Result<(Reader, Writer, Hello), HandshakeError> {
    let result = async {
        let (send, recv) = tokio::time::timeout(HANDSHAKE_TIMEOUT, connection.open_bi())
            .await
            .map_err(|_| HandshakeError::Timeout)?
            .map_err(|error| HandshakeError::Transport(error.to_string()))?;
        let mut writer = FramedWrite::new(send, codec());
        let mut reader = FramedRead::new(recv, codec());
        write(&mut writer, &LinkMessage::Hello(hello.clone())).await?;
        let theirs = read_hello(&mut reader).await?;
        Ok((reader, writer, theirs))
    }
    .await;
    if let Err(error) = &result {
        close_for(connection, error);
    }
    result
}

/// The acceptor's side: accepts the control stream, reads the peer's `Hello`, answers.
pub async fn handshake_inbound(
    connection: &Connection,
    hello: &Hello,
) -> Result<(Reader, Writer, Hello), HandshakeError> {
    let result = async {
        let (send, recv) = tokio::time::timeout(HANDSHAKE_TIMEOUT, connection.accept_bi())
            .await
            .map_err(|_| HandshakeError::Timeout)?
            .map_err(|error| HandshakeError::Transport(error.to_string()))?;
        let mut writer = FramedWrite::new(send, codec());
        let mut reader = FramedRead::new(recv, codec());
        let theirs = read_hello(&mut reader).await?;
        write(&mut writer, &LinkMessage::Hello(hello.clone())).await?;
        Ok((reader, writer, theirs))
    }
    .await;
    if let Err(error) = &result {
        close_for(connection, error);
    }
    result
}

/// The address the connection currently uses to reach the peer.
pub fn remote_addr(connection: &Connection) -> Option<SocketAddr> {
    connection
        .paths()
        .iter()
        .find(|path| path.is_selected())
        .and_then(|path| match path.remote_addr() {
            iroh::TransportAddr::Ip(addr) => Some(*addr),
            _ => None,
        })
}

/// Offers a handshaked QUIC link to the actor and, if it is kept, runs it until it closes.
/// With `lanes`, the link also offers the peer a data lane.
#[allow(clippy::too_many_arguments)]
pub async fn run_quic_link(
    connection: Connection,
    (reader, writer, hello): (Reader, Writer, Hello),
    id: LinkId,
    peer: NodeId,
    direction: Direction,
    events: mpsc::Sender<LinkEvent>,
    frames: FrameSink,
    lanes: Option<Arc<DataLanes>>,
) {
    let (outbox, inbox) = mpsc::channel(SEND_QUEUE);
    let (data, data_queue) = mpsc::channel(DATA_QUEUE);
    let (close_tx, close_rx) = oneshot::channel();
    let metrics = Arc::new(Mutex::new(LinkMetrics::default()));
    let pings = Pings::default();
    let data_writer = Arc::new(DataWriter::default());
    let lane_slot = LaneSlot::default();
    let handle = LinkHandle {
        id,
        peer,
        direction,
        kind: LinkKind::Quic,
        hello,
        remote_addr: remote_addr(&connection),
        since: SystemTime::now(),
        outbox,
        data,
        data_writer: Arc::clone(&data_writer),
        metrics: metrics.clone(),
        close: Arc::new(Mutex::new(Some(close_tx))),
        pings: pings.clone(),
        lane: Arc::clone(&lane_slot),
    };
    let (decision_tx, decision_rx) = oneshot::channel();
    if events
        .send(LinkEvent::Handshaked {
            link: handle,
            decision: decision_tx,
        })
        .await
        .is_err()
    {
        connection.close(VarInt::from_u32(close_code::NORMAL), b"shutting down");
        return;
    }
    match decision_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => {
            connection.close(
                VarInt::from_u32(code_for(&reason)),
                reason.to_string().as_bytes(),
            );
            return;
        }
        Err(_) => {
            connection.close(VarInt::from_u32(close_code::NORMAL), b"shutting down");
            return;
        }
    }
    let lane = match (lanes, remote_addr(&connection)) {
        (Some(lanes), Some(addr)) => Some(LaneLink::start(lanes, peer, id, addr.ip())),
        _ => None,
    };
    let reason = drive(
        &connection,
        reader,
        writer,
        id,
        peer,
        &events,
        inbox,
        close_rx,
        &metrics,
        &pings,
        (data_queue, data_writer),
        frames,
        (lane, lane_slot),
    )
    .await;
    let _ = events
        .send(LinkEvent::Closed {
            link: id,
            peer,
            reason,
        })
        .await;
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    connection: &Connection,
    mut reader: Reader,
    mut writer: Writer,
    id: LinkId,
    peer: NodeId,
    events: &mpsc::Sender<LinkEvent>,
    mut inbox: mpsc::Receiver<LinkMessage>,
    mut close_rx: oneshot::Receiver<CloseReason>,
    metrics: &Mutex<LinkMetrics>,
    pings: &Pings,
    (data_queue, data_writer): (mpsc::Receiver<Bytes>, Arc<DataWriter>),
    frames: FrameSink,
    (lane, lane_slot): (Option<(LaneLink, LaneOffer)>, LaneSlot),
) -> String {
    let mut lane = match lane {
        Some((lane, offer)) => {
            if writer
                .send(Bytes::from(link::encode(&LinkMessage::LaneOffer(offer))))
                .await
                .is_err()
            {
                return "transport: write failed".to_owned();
            }
            Some(lane)
        }
        None => None,
    };
    let mut tick = tokio::time::interval(METRICS_INTERVAL);
    let mut meter = Meter::default();
    let data_out = write_data(connection.clone(), data_queue, data_writer);
    tokio::pin!(data_out);
    let data_in = read_data(connection.clone(), frames, id, peer);
    tokio::pin!(data_in);
    loop {
        tokio::select! {
            result = &mut data_in => {
                return match result {
                    DataError::Violation(reason) => violation(connection, events, id, peer, reason).await,
                    DataError::Transport(reason) => format!("transport: {reason}"),
                    DataError::Stopped => "shutting down".to_owned(),
                };
            }
            result = &mut data_out => {
                return match result {
                    DataError::Violation(reason) | DataError::Transport(reason) => format!("transport: {reason}"),
                    DataError::Stopped => "link handle dropped".to_owned(),
                };
            }
            frame = reader.next() => {
                let bytes = match frame {
                    Some(Ok(bytes)) => bytes,
                    Some(Err(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
                        return violation(connection, events, id, peer, format!("bad frame: {error}")).await;
                    }
                    Some(Err(error)) => return format!("transport: {error}"),
                    None => return "the peer closed the control stream".to_owned(),
                };
                match link::decode(&bytes) {
                    Ok(LinkMessage::Ping(nonce)) => {
                        if writer.send(Bytes::from(link::encode(&LinkMessage::Pong(nonce)))).await.is_err() {
                            return "transport: write failed".to_owned();
                        }
                    }
                    Ok(LinkMessage::Pong(nonce)) => {
                        if let Some(waiter) = pings.lock().ok().and_then(|mut p| p.remove(&nonce)) {
                            let _ = waiter.send(());
                        }
                    }
                    Ok(LinkMessage::Hello(_)) => {
                        return violation(connection, events, id, peer, "a second Hello".to_owned()).await;
                    }
                    Ok(LinkMessage::LaneOffer(offer)) => {
                        if let Some(lane) = lane.as_mut() {
                            match lane.accept(&offer) {
                                Ok(sender) => { let _ = lane_slot.set(sender); }
                                Err(error) => tracing::debug!(%peer, %error, "the peer's lane offer was not taken"),
                            }
                        }
                    }
                    Ok(LinkMessage::LaneReady) => {
                        if let Some(lane) = lane.as_mut() { lane.on_peer(true); }
                    }
                    Ok(LinkMessage::LaneDown) => {
                        if let Some(lane) = lane.as_mut() { lane.on_peer(false); }
                    }
                    Ok(message) => {
                        if events.send(LinkEvent::Message { link: id, peer, message }).await.is_err() {
                            return "shutting down".to_owned();
                        }
                    }
                    Err(error) => return violation(connection, events, id, peer, error.to_string()).await,
                }
            }
            outgoing = inbox.recv() => {
                let Some(message) = outgoing else { return "link handle dropped".to_owned() };
                if let Err(error) = writer.send(Bytes::from(link::encode(&message))).await {
                    return format!("transport: {error}");
                }
            }
            reason = &mut close_rx => {
                let reason = reason.map_or_else(|_| "closed".to_owned(), |r| r.to_string());
                let code = if reason.starts_with("protocol violation") { close_code::PROTOCOL_VIOLATION } else { close_code::NORMAL };
                connection.close(VarInt::from_u32(code), reason.as_bytes());
                return reason;
            }
            () = lane_probed(lane.as_ref()) => {
                let signal = lane.as_mut().and_then(LaneLink::on_probe);
                if send_lane_signal(&mut writer, signal).await.is_err() {
                    return "transport: write failed".to_owned();
                }
            }
            _ = tick.tick() => {
                let measured = meter.measure(connection);
                if let Ok(mut slot) = metrics.lock() {
                    *slot = measured;
                }
                let signal = lane.as_mut().and_then(LaneLink::on_tick);
                if send_lane_signal(&mut writer, signal).await.is_err() {
                    return "transport: write failed".to_owned();
                }
            }
            error = connection.closed() => return format!("connection closed: {error}"),
        }
    }
}

/// Waits for a probe on the link's lane; forever without one.
async fn lane_probed(lane: Option<&LaneLink>) {
    match lane {
        Some(lane) => lane.probed().await,
        None => std::future::pending().await,
    }
}

/// Tells the peer what a lane step decided, if anything.
async fn send_lane_signal(writer: &mut Writer, signal: Option<LaneSignal>) -> Result<(), ()> {
    let message = match signal {
        Some(LaneSignal::Ready) => LinkMessage::LaneReady,
        Some(LaneSignal::Down) => LinkMessage::LaneDown,
        None => return Ok(()),
    };
    writer
        .send(Bytes::from(link::encode(&message)))
        .await
        .map_err(|_| ())
}

async fn violation(
    connection: &Connection,
    events: &mpsc::Sender<LinkEvent>,
    id: LinkId,
    peer: NodeId,
    reason: String,
) -> String {
    connection.close(
        VarInt::from_u32(close_code::PROTOCOL_VIOLATION),
        reason.as_bytes(),
    );
    let _ = events
        .send(LinkEvent::Misbehaved {
            link: Some(id),
            peer,
            reason: reason.clone(),
        })
        .await;
    format!("protocol violation: {reason}")
}

/// Why a data direction stopped.
#[derive(Debug)]
enum DataError {
    /// The peer broke the data framing.
    Violation(String),
    /// The transport failed.
    Transport(String),
    /// The local side stopped (handles dropped, consumer gone).
    Stopped,
}

/// Writes queued data frames to this side's data stream, opened with the first frame, and
/// flushes what senders wrote into it without waiting (`shared`).
async fn write_data(
    connection: Connection,
    mut queue: mpsc::Receiver<Bytes>,
    shared: Arc<DataWriter>,
) -> DataError {
    let Some(first) = queue.recv().await else {
        return DataError::Stopped;
    };
    let stream = match connection.open_uni().await {
        Ok(stream) => stream,
        Err(error) => return DataError::Transport(error.to_string()),
    };
    *shared.stream.lock().await = Some(FramedWrite::new(stream, codec_with_limit(MAX_DATA_FRAME)));
    let mut next = Some(first);
    loop {
        let mut guard = shared.stream.lock().await;
        let Some(writer) = guard.as_mut() else {
            return DataError::Stopped;
        };
        if let Some(frame) = next.take() {
            // Coalesce what is already queued into one flush.
            if let Err(error) = writer.feed(frame).await {
                return DataError::Transport(error.to_string());
            }
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            for _ in 1..DATA_BATCH {
                match queue.try_recv() {
                    Ok(frame) => {
                        if let Err(error) = writer.feed(frame).await {
                            return DataError::Transport(error.to_string());
                        }
                        shared.queued.fetch_sub(1, Ordering::AcqRel);
                    }
                    Err(_) => break,
                }
            }
        }
        if let Err(error) = SinkExt::<Bytes>::flush(writer).await {
            return DataError::Transport(error.to_string());
        }
        drop(guard);
        tokio::select! {
            frame = queue.recv() => match frame {
                Some(frame) => next = Some(frame),
                None => return DataError::Stopped,
            },
            () = shared.flush_needed.notified() => {}
        }
    }
}

/// Accepts the peer's data streams and delivers their frames to `frames`.
async fn read_data(
    connection: Connection,
    frames: FrameSink,
    id: LinkId,
    peer: NodeId,
) -> DataError {
    let mut streams = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_uni() => {
                let stream = match accepted {
                    Ok(stream) => stream,
                    Err(error) => return DataError::Transport(error.to_string()),
                };
                if streams.len() >= MAX_DATA_STREAMS {
                    return DataError::Violation(format!("more than {MAX_DATA_STREAMS} data streams"));
                }
                streams.spawn(read_data_stream(stream, frames.clone(), id, peer));
            }
            Some(finished) = streams.join_next() => {
                match finished {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return error,
                    Err(error) => return DataError::Transport(error.to_string()),
                }
            }
        }
    }
}

async fn read_data_stream(
    stream: RecvStream,
    frames: FrameSink,
    link: LinkId,
    peer: NodeId,
) -> Result<(), DataError> {
    let mut reader = FramedRead::new(stream, codec_with_limit(MAX_DATA_FRAME));
    while let Some(frame) = reader.next().await {
        let data = match frame {
            Ok(data) => data.freeze(),
            Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                return Err(DataError::Violation(format!("bad data frame: {error}")))
            }
            Err(error) => return Err(DataError::Transport(error.to_string())),
        };
        if !frames.deliver(ReceivedFrame { link, peer, data }).await {
            return Err(DataError::Stopped);
        }
    }
    Ok(())
}

/// Turns cumulative QUIC counters into rates and a windowed loss ratio.
#[derive(Debug, Default)]
struct Meter {
    last: Option<(tokio::time::Instant, u64, u64, u64, u64)>,
    loss: f64,
}

impl Meter {
    fn measure(&mut self, connection: &Connection) -> LinkMetrics {
        let stats = connection.stats();
        let rtt = connection
            .paths()
            .iter()
            .find(|path| path.is_selected())
            .map(|path| path.rtt())
            .unwrap_or_default();
        let now = tokio::time::Instant::now();
        let (sent, received, packets, lost) = (
            stats.udp_tx.bytes,
            stats.udp_rx.bytes,
            stats.sent_packets,
            stats.lost_packets,
        );
        let (mut up, mut down) = (0.0, 0.0);
        if let Some((then, sent0, received0, packets0, lost0)) = self.last {
            let seconds = now.duration_since(then).as_secs_f64().max(1e-3);
            up = sent.saturating_sub(sent0) as f64 / seconds;
            down = received.saturating_sub(received0) as f64 / seconds;
            let window_packets = packets.saturating_sub(packets0);
            if window_packets > 0 {
                let window_loss = lost.saturating_sub(lost0) as f64 / window_packets as f64;
                // Exponentially weighted, so one bad second does not condemn a link.
                self.loss = 0.8 * self.loss + 0.2 * window_loss.min(1.0);
            }
        }
        self.last = Some((now, sent, received, packets, lost));
        LinkMetrics {
            rtt,
            loss: self.loss,
            throughput_up: up,
            throughput_down: down,
            bytes_sent: sent,
            bytes_received: received,
        }
    }
}

/// The quality score of a link from its metrics.
pub fn quality(metrics: &LinkMetrics) -> f64 {
    quality_score(metrics.rtt, metrics.loss)
}
