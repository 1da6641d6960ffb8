//! One browser's session: its str0m [`Rtc`], its data channel, and what the node does with
//! each [`BrowserFrame`] the browser sends.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use meshcore_proto::browser::{BrowserFrame, MAX_BODY, MAX_SOURCE_BYTES};
use meshcore_proto::browser_mesh::{MessageId, SenderSignature};
use meshcore_proto::NodeId;
use sha2::{Digest, Sha256};
use str0m::channel::ChannelId;
use str0m::Rtc;
use tokio::sync::oneshot;

/// Bytes of one diagnostic SOURCE_DATA message.
pub(super) const SOURCE_CHUNK: usize = 16 * 1024;

/// Bytes queued for the browser (beyond what SCTP buffers) before the browser is taken to
/// not be reading, and dropped.
pub(super) const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// SCTP bytes in flight below which SOURCE data is topped up (half of
/// [`super::SCTP_SEND_BUFFER`]).
pub(super) const SOURCE_LOW_WATER: usize = super::SCTP_SEND_BUFFER / 2;

/// Mesh messages one browser may have in flight through its node.
pub(super) const MAX_MESH_IN_FLIGHT: usize = 16;

/// Why an application message to a browser was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrowserSendError {
    /// The browser has no open session with this node.
    #[error("the browser {0} is not connected to this node")]
    NotConnected(NodeId),
    /// Too much is queued for the browser already.
    #[error("the queue towards the browser is full")]
    Full,
    /// The payload is over the data channel's limit.
    #[error("a payload of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The session closed before the browser acknowledged.
    #[error("the session with the browser closed before it acknowledged")]
    Closed,
    /// No acknowledgement in time.
    #[error("no acknowledgement from the browser within {0:?}")]
    Timeout(Duration),
}

/// What the node must do after the browser sent a frame, beyond queueing replies.
#[derive(Debug)]
pub(super) enum Action {
    /// Nothing more.
    None,
    /// Deliver an application message to the node's inbox.
    Deliver(Vec<u8>),
    /// Carry a message across the mesh and answer with a MESH_RESULT.
    MeshSend {
        request: u32,
        destination: NodeId,
        id: MessageId,
        signed: SenderSignature,
        payload: Vec<u8>,
    },
}

/// A browser session.
pub(super) struct Session {
    pub(super) id: u64,
    pub(super) browser: NodeId,
    pub(super) rtc: Rtc,
    pub(super) channel: Option<ChannelId>,
    pub(super) created: Instant,
    pub(super) opened_at: Option<SystemTime>,
    pub(super) last_input: Instant,
    pub(super) remote: Option<SocketAddr>,
    pub(super) bytes_sent: u64,
    pub(super) bytes_received: u64,
    pub(super) rtt: Option<Duration>,
    pub(super) mesh_in_flight: usize,
    /// Why the session must end, once decided.
    pub(super) closing: Option<String>,
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    source: Option<SourceRun>,
    sink: SinkRun,
    next_app_seq: u32,
    app_waiters: HashMap<u32, (Instant, oneshot::Sender<Result<Duration, BrowserSendError>>)>,
    pings: HashMap<u64, Instant>,
    last_ping: Option<Instant>,
}

struct SourceRun {
    left: u64,
    total: u64,
    hash: Sha256,
}

#[derive(Default)]
struct SinkRun {
    total: u64,
    hash: Sha256,
}

/// The bytes of diagnostic SOURCE data: a fixed pattern (its content is irrelevant; its
/// hash proves it arrived intact).
fn source_pattern() -> &'static [u8; SOURCE_CHUNK] {
    static PATTERN: std::sync::OnceLock<[u8; SOURCE_CHUNK]> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut bytes = [0u8; SOURCE_CHUNK];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = (i.wrapping_mul(31).wrapping_add(7) % 251) as u8;
        }
        bytes
    })
}

impl Session {
    pub(super) fn new(id: u64, browser: NodeId, rtc: Rtc, now: Instant) -> Self {
        Self {
            id,
            browser,
            rtc,
            channel: None,
            created: now,
            opened_at: None,
            last_input: now,
            remote: None,
            bytes_sent: 0,
            bytes_received: 0,
            rtt: None,
            mesh_in_flight: 0,
            closing: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            source: None,
            sink: SinkRun::default(),
            next_app_seq: 0,
            app_waiters: HashMap::new(),
            pings: HashMap::new(),
            last_ping: None,
        }
    }

    /// Marks the session for closing with `reason` (the first reason wins).
    pub(super) fn close(&mut self, reason: impl Into<String>) {
        if self.closing.is_none() {
            self.closing = Some(reason.into());
        }
    }

    /// Queues `frame` for the browser.
    pub(super) fn queue(&mut self, frame: &BrowserFrame) {
        let bytes = frame.encode();
        self.queued_bytes += bytes.len();
        self.queue.push_back(bytes);
        if self.queued_bytes > MAX_QUEUED_BYTES {
            self.close("the browser does not read its data channel (over 16 MiB queued)");
        }
    }

    /// Queues an application message and returns where its acknowledgement will arrive.
    pub(super) fn send_app(
        &mut self,
        payload: Vec<u8>,
        now: Instant,
        done: oneshot::Sender<Result<Duration, BrowserSendError>>,
    ) {
        self.send_acknowledged(payload, now, done, |seq, payload| BrowserFrame::App {
            seq,
            payload,
        });
    }

    /// Queues a message from `source` that crossed the mesh (`hops` links, this data channel
    /// included) and returns where its acknowledgement will arrive.
    pub(super) fn send_mesh_message(
        &mut self,
        source: NodeId,
        hops: u8,
        payload: Vec<u8>,
        now: Instant,
        done: oneshot::Sender<Result<Duration, BrowserSendError>>,
    ) {
        self.send_acknowledged(payload, now, done, |seq, payload| {
            BrowserFrame::MeshMessage {
                seq,
                source: *source.as_bytes(),
                hops,
                payload,
            }
        });
    }

    /// Queues the frame `frame(seq, payload)`, which the browser answers with an APP_ACK.
    fn send_acknowledged(
        &mut self,
        payload: Vec<u8>,
        now: Instant,
        done: oneshot::Sender<Result<Duration, BrowserSendError>>,
        frame: impl FnOnce(u32, Vec<u8>) -> BrowserFrame,
    ) {
        if payload.len() > MAX_BODY {
            let _ = done.send(Err(BrowserSendError::TooLarge {
                len: payload.len(),
                max: MAX_BODY,
            }));
            return;
        }
        if self.channel.is_none() || self.queued_bytes + payload.len() > MAX_QUEUED_BYTES / 2 {
            let _ = done.send(Err(if self.channel.is_none() {
                BrowserSendError::NotConnected(self.browser)
            } else {
                BrowserSendError::Full
            }));
            return;
        }
        let seq = self.next_app_seq;
        self.next_app_seq = self.next_app_seq.wrapping_add(1);
        self.app_waiters
            .retain(|_, (_, waiter)| !waiter.is_closed());
        self.app_waiters.insert(seq, (now, done));
        self.queue(&frame(seq, payload));
    }

    /// Sends a ping when the last one is `interval` old.
    pub(super) fn maybe_ping(&mut self, now: Instant, interval: Duration) {
        if self.channel.is_none() || self.last_ping.is_some_and(|t| now - t < interval) {
            return;
        }
        self.last_ping = Some(now);
        self.pings.retain(|_, sent| now - *sent < interval * 4);
        let nonce = rand::random::<u64>();
        self.pings.insert(nonce, now);
        self.queue(&BrowserFrame::Ping(nonce));
    }

    /// Handles one data-channel message from the browser.
    pub(super) fn on_message(&mut self, bytes: &[u8], now: Instant) -> Action {
        self.bytes_received += bytes.len() as u64;
        let frame = match BrowserFrame::decode(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                self.close(format!("protocol violation: {error}"));
                return Action::None;
            }
        };
        match frame {
            BrowserFrame::Ping(nonce) => self.queue(&BrowserFrame::Pong(nonce)),
            BrowserFrame::Pong(nonce) => {
                if let Some(sent) = self.pings.remove(&nonce) {
                    self.rtt = Some(now - sent);
                }
            }
            BrowserFrame::Echo(bytes) => self.queue(&BrowserFrame::EchoReply(bytes)),
            BrowserFrame::App { seq, payload } => {
                self.queue(&BrowserFrame::AppAck(seq));
                return Action::Deliver(payload);
            }
            BrowserFrame::AppAck(seq) => {
                if let Some((sent, waiter)) = self.app_waiters.remove(&seq) {
                    let _ = waiter.send(Ok(now - sent));
                }
            }
            BrowserFrame::MeshSend {
                request,
                destination,
                id,
                signed,
                payload,
            } => match NodeId::from_bytes(destination) {
                Ok(destination) if self.mesh_in_flight < MAX_MESH_IN_FLIGHT => {
                    self.mesh_in_flight += 1;
                    return Action::MeshSend {
                        request,
                        destination,
                        id,
                        signed,
                        payload,
                    };
                }
                Ok(_) => self.queue(&BrowserFrame::MeshResult {
                    request,
                    outcome: Err(format!(
                        "at most {MAX_MESH_IN_FLIGHT} mesh messages may be in flight at once"
                    )),
                }),
                Err(error) => self.queue(&BrowserFrame::MeshResult {
                    request,
                    outcome: Err(format!("the destination is not a node id: {error}")),
                }),
            },
            BrowserFrame::Source(count) if count > MAX_SOURCE_BYTES => {
                self.close(format!(
                    "protocol violation: SOURCE of {count} bytes is over {MAX_SOURCE_BYTES}"
                ));
            }
            BrowserFrame::Source(_) if self.source.is_some() => {
                self.close("protocol violation: SOURCE while another runs");
            }
            BrowserFrame::Source(count) => {
                self.source = Some(SourceRun {
                    left: count,
                    total: count,
                    hash: Sha256::new(),
                });
            }
            BrowserFrame::Sink(bytes) => {
                self.sink.total += bytes.len() as u64;
                self.sink.hash.update(&bytes);
            }
            BrowserFrame::SinkEnd => {
                let run = std::mem::take(&mut self.sink);
                self.queue(&BrowserFrame::SinkReport {
                    total: run.total,
                    sha256: run.hash.finalize().into(),
                });
            }
            other @ (BrowserFrame::EchoReply(_)
            | BrowserFrame::MeshResult { .. }
            | BrowserFrame::MeshMessage { .. }
            | BrowserFrame::SourceData(_)
            | BrowserFrame::SourceEnd { .. }
            | BrowserFrame::SinkReport { .. }) => {
                self.close(format!(
                    "protocol violation: {} is a node-to-browser message",
                    other.name()
                ));
            }
        }
        Action::None
    }

    /// Moves queued frames, then SOURCE data, into the data channel as far as SCTP takes
    /// them.
    pub(super) fn flush(&mut self) {
        if let Err(error) = self.write_pending() {
            self.close(format!("the data channel refused a write: {error}"));
        }
    }

    fn write_pending(&mut self) -> Result<(), str0m::RtcError> {
        let Some(id) = self.channel else {
            return Ok(());
        };
        loop {
            let Some(mut channel) = self.rtc.channel(id) else {
                return Ok(());
            };
            while let Some(front) = self.queue.front() {
                if !channel.write(true, front)? {
                    return Ok(());
                }
                self.bytes_sent += front.len() as u64;
                self.queued_bytes -= front.len();
                self.queue.pop_front();
            }
            let Some(run) = self.source.as_mut() else {
                return Ok(());
            };
            while run.left > 0 && channel.buffered_amount() < SOURCE_LOW_WATER {
                let len = run.left.min(SOURCE_CHUNK as u64) as usize;
                let body = &source_pattern()[..len];
                let message = BrowserFrame::SourceData(body.to_vec()).encode();
                if !channel.write(true, &message)? {
                    return Ok(());
                }
                run.hash.update(body);
                run.left -= len as u64;
                self.bytes_sent += message.len() as u64;
            }
            if run.left > 0 {
                return Ok(());
            }
            if let Some(run) = self.source.take() {
                self.queue(&BrowserFrame::SourceEnd {
                    total: run.total,
                    sha256: run.hash.finalize().into(),
                });
            }
        }
    }

    /// Fails every waiting application send (the session ends).
    pub(super) fn fail_waiters(&mut self) {
        for (_, (_, waiter)) in self.app_waiters.drain() {
            let _ = waiter.send(Err(BrowserSendError::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        let now = Instant::now();
        let mut rng =
            <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::seed_from_u64(9);
        let browser = meshcore_proto::NodeKeypair::generate(&mut rng).node_id();
        Session::new(1, browser, Rtc::new(now), now)
    }

    fn queued(session: &Session) -> Vec<BrowserFrame> {
        session
            .queue
            .iter()
            .map(|bytes| BrowserFrame::decode(bytes).expect("valid"))
            .collect()
    }

    #[test]
    fn echo_ping_and_app_are_answered() {
        let mut session = session();
        let now = Instant::now();
        let echo = session.on_message(&BrowserFrame::Echo(b"abc".to_vec()).encode(), now);
        assert!(matches!(echo, Action::None));
        let ping = session.on_message(&BrowserFrame::Ping(5).encode(), now);
        assert!(matches!(ping, Action::None));
        let app = BrowserFrame::App {
            seq: 3,
            payload: b"hi".to_vec(),
        };
        match session.on_message(&app.encode(), now) {
            Action::Deliver(payload) => assert_eq!(payload, b"hi"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            queued(&session),
            [
                BrowserFrame::EchoReply(b"abc".to_vec()),
                BrowserFrame::Pong(5),
                BrowserFrame::AppAck(3)
            ]
        );
        assert!(session.closing.is_none());
    }

    #[test]
    fn the_sink_report_counts_and_hashes_what_arrived() {
        let mut session = session();
        let now = Instant::now();
        for part in [&b"hello "[..], b"world"] {
            session.on_message(&BrowserFrame::Sink(part.to_vec()).encode(), now);
        }
        session.on_message(&BrowserFrame::SinkEnd.encode(), now);
        let expected: [u8; 32] = Sha256::digest(b"hello world").into();
        assert_eq!(
            queued(&session),
            [BrowserFrame::SinkReport {
                total: 11,
                sha256: expected
            }]
        );
    }

    #[test]
    fn mesh_sends_are_bounded_and_checked() {
        let mut session = session();
        let now = Instant::now();
        // Bytes that are not an Ed25519 public key.
        let invalid = (0u8..=255)
            .map(|first| {
                let mut bytes = [0u8; 32];
                bytes[0] = first;
                bytes
            })
            .find(|bytes| NodeId::from_bytes(*bytes).is_err())
            .expect("an invalid key");
        let bad = BrowserFrame::MeshSend {
            request: 1,
            destination: invalid,
            id: [0; meshcore_proto::browser_mesh::MESSAGE_ID_LEN],
            signed: SenderSignature {
                timestamp_ms: 0,
                signature: [0; meshcore_proto::browser_mesh::SIGNATURE_LEN],
            },
            payload: Vec::new(),
        };
        session.on_message(&bad.encode(), now);
        assert!(matches!(
            &queued(&session)[..],
            [BrowserFrame::MeshResult {
                request: 1,
                outcome: Err(_)
            }]
        ));
        let mut rng =
            <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::seed_from_u64(2);
        let good = meshcore_proto::NodeKeypair::generate(&mut rng).node_id();
        let send = |request| BrowserFrame::MeshSend {
            request,
            destination: *good.as_bytes(),
            id: [0; meshcore_proto::browser_mesh::MESSAGE_ID_LEN],
            signed: SenderSignature {
                timestamp_ms: 0,
                signature: [0; meshcore_proto::browser_mesh::SIGNATURE_LEN],
            },
            payload: b"x".to_vec(),
        };
        for request in 0..MAX_MESH_IN_FLIGHT as u32 {
            assert!(matches!(
                session.on_message(&send(request).encode(), now),
                Action::MeshSend { .. }
            ));
        }
        assert!(matches!(
            session.on_message(&send(99).encode(), now),
            Action::None
        ));
        assert_eq!(session.mesh_in_flight, MAX_MESH_IN_FLIGHT);
    }

    #[test]
    fn protocol_violations_close_the_session_with_a_reason() {
        let cases: [(Vec<u8>, &str); 5] = [
            (vec![0x09], "unknown message tag"),
            (
                BrowserFrame::MeshMessage {
                    seq: 1,
                    source: [1; 32],
                    hops: 1,
                    payload: Vec::new(),
                }
                .encode(),
                "node-to-browser",
            ),
            (BrowserFrame::Source(MAX_SOURCE_BYTES + 1).encode(), "over"),
            (
                BrowserFrame::SourceData(vec![1]).encode(),
                "node-to-browser",
            ),
            (vec![0x01, 2], "wrong length"),
        ];
        for (bytes, expected) in cases {
            let mut session = session();
            session.on_message(&bytes, Instant::now());
            let reason = session.closing.clone().expect("closing");
            assert!(reason.contains(expected), "{reason}");
        }
    }

    #[test]
    fn an_app_send_without_an_open_channel_fails_at_once() {
        let mut session = session();
        let (done, result) = oneshot::channel();
        session.send_app(b"x".to_vec(), Instant::now(), done);
        assert_eq!(
            result.blocking_recv().expect("answered"),
            Err(BrowserSendError::NotConnected(session.browser))
        );
    }
}
