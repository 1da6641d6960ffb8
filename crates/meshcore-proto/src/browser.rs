//! The browser peer protocol: the messages on a browser's WebRTC data channel and the texts
//! a browser and a node sign to bind their DTLS certificates (and signaling sessions) to
//! their node keys. `web/PROTOCOL.md` is the reference; this module is its Rust side.
//!
//! Every data-channel message is one tag byte and a body, integers big-endian.
//! [`BrowserFrame::decode`] takes untrusted bytes and never panics (fuzz target
//! `browser_frame`).

use crate::browser_mesh::{MessageId, SenderSignature, MESSAGE_ID_LEN, SIGNATURE_LEN};
use crate::identity::{NodeId, SignatureDomain, SignatureError, NODE_ID_LEN};

/// The data channel's label.
pub const CHANNEL_LABEL: &str = "meshcore";

/// Largest application or diagnostic body in one message.
pub const MAX_BODY: usize = 64 * 1024;

/// Largest data-channel message: a body and its fixed fields.
pub const MAX_MESSAGE: usize = MAX_BODY + MESH_SEND_FIXED + 1;

/// Bytes of a MESH_SEND's fixed fields: request, destination, message id, timestamp,
/// signature.
const MESH_SEND_FIXED: usize = 4 + NODE_ID_LEN + MESSAGE_ID_LEN + 8 + SIGNATURE_LEN;

/// Bytes of a MESH_MESSAGE's fixed fields: sequence, source, hops.
const MESH_MESSAGE_FIXED: usize = 4 + NODE_ID_LEN + 1;

/// Largest error text in a [`BrowserFrame::MeshResult`].
pub const MAX_ERROR_TEXT: usize = 512;

/// Most bytes one [`BrowserFrame::Source`] request may ask for (1 GiB).
pub const MAX_SOURCE_BYTES: u64 = 1 << 30;

const TAG_PING: u8 = 0x01;
const TAG_PONG: u8 = 0x02;
const TAG_ECHO: u8 = 0x03;
const TAG_ECHO_REPLY: u8 = 0x04;
const TAG_APP: u8 = 0x05;
const TAG_APP_ACK: u8 = 0x06;
const TAG_MESH_SEND: u8 = 0x07;
const TAG_MESH_RESULT: u8 = 0x08;
const TAG_SOURCE: u8 = 0x0a;
const TAG_SOURCE_DATA: u8 = 0x0b;
const TAG_SOURCE_END: u8 = 0x0c;
const TAG_SINK: u8 = 0x0d;
const TAG_SINK_END: u8 = 0x0e;
const TAG_SINK_REPORT: u8 = 0x0f;
const TAG_MESH_MESSAGE: u8 = 0x10;

/// One data-channel message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrowserFrame {
    /// Asks for a [`BrowserFrame::Pong`] with the same nonce.
    Ping(u64),
    /// Answers a ping.
    Pong(u64),
    /// Asks the node to send the bytes back.
    Echo(Vec<u8>),
    /// The bytes of an [`BrowserFrame::Echo`], sent back.
    EchoReply(Vec<u8>),
    /// Application data for the peer at the other end of the channel.
    App {
        /// Sender's sequence number, echoed in the acknowledgement.
        seq: u32,
        /// UTF-8 text (JSON by convention of the browser client).
        payload: Vec<u8>,
    },
    /// Acknowledges an [`BrowserFrame::App`] or a [`BrowserFrame::MeshMessage`].
    AppAck(u32),
    /// Asks the node to carry `payload` across the mesh to `destination` (a node or a
    /// browser), signed by the browser ([`crate::browser_mesh::message_text`]).
    MeshSend {
        /// The browser's request number, echoed in the result.
        request: u32,
        /// The destination's id.
        destination: [u8; NODE_ID_LEN],
        /// The message's random id.
        id: MessageId,
        /// The browser's signature over the message.
        signed: SenderSignature,
        /// The message.
        payload: Vec<u8>,
    },
    /// A message for the browser from another peer (a node, or a browser on another node),
    /// which reached the browser's node across the mesh. The browser acknowledges it with an
    /// [`BrowserFrame::AppAck`] of the same `seq`.
    MeshMessage {
        /// The node's sequence number (shared with [`BrowserFrame::App`]).
        seq: u32,
        /// The sender's id.
        source: [u8; NODE_ID_LEN],
        /// Links it crossed, the data channel included.
        hops: u8,
        /// The message.
        payload: Vec<u8>,
    },
    /// The outcome of a [`BrowserFrame::MeshSend`].
    MeshResult {
        /// The request it answers.
        request: u32,
        /// `Ok((hops, rtt_ms))` when delivered, else why not.
        outcome: Result<(u8, u32), String>,
    },
    /// Asks the node to send this many bytes of [`BrowserFrame::SourceData`].
    Source(u64),
    /// Diagnostic data sent by the node.
    SourceData(Vec<u8>),
    /// The end of a source run: total bytes and SHA-256 of all of them.
    SourceEnd {
        /// Bytes sent.
        total: u64,
        /// SHA-256 of the bytes sent.
        sha256: [u8; 32],
    },
    /// Diagnostic data for the node to count and hash.
    Sink(Vec<u8>),
    /// The end of a sink run; the node answers with a [`BrowserFrame::SinkReport`].
    SinkEnd,
    /// What the node received since the last [`BrowserFrame::SinkEnd`].
    SinkReport {
        /// Bytes received.
        total: u64,
        /// SHA-256 of the bytes received.
        sha256: [u8; 32],
    },
}

/// Why a data-channel message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The message was empty.
    #[error("an empty message")]
    Empty,
    /// The tag is not one of the protocol's.
    #[error("unknown message tag 0x{0:02x}")]
    UnknownTag(u8),
    /// The body is shorter or longer than the tag requires.
    #[error("a {name} message of {len} bytes has the wrong length")]
    Length {
        /// The message's name.
        name: &'static str,
        /// Its length, tag included.
        len: usize,
    },
    /// The message is over [`MAX_MESSAGE`] bytes.
    #[error("a message of {0} bytes is over the limit of {MAX_MESSAGE}")]
    TooLarge(usize),
    /// A mesh result's status byte is neither 0 nor 1.
    #[error("a mesh result has the unknown status {0}")]
    Status(u8),
}

impl BrowserFrame {
    /// The message's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ping(_) => "PING",
            Self::Pong(_) => "PONG",
            Self::Echo(_) => "ECHO",
            Self::EchoReply(_) => "ECHO_REPLY",
            Self::App { .. } => "APP",
            Self::AppAck(_) => "APP_ACK",
            Self::MeshSend { .. } => "MESH_SEND",
            Self::MeshResult { .. } => "MESH_RESULT",
            Self::MeshMessage { .. } => "MESH_MESSAGE",
            Self::Source(_) => "SOURCE",
            Self::SourceData(_) => "SOURCE_DATA",
            Self::SourceEnd { .. } => "SOURCE_END",
            Self::Sink(_) => "SINK",
            Self::SinkEnd => "SINK_END",
            Self::SinkReport { .. } => "SINK_REPORT",
        }
    }

    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        match self {
            Self::Ping(nonce) => {
                out.push(TAG_PING);
                out.extend_from_slice(&nonce.to_be_bytes());
            }
            Self::Pong(nonce) => {
                out.push(TAG_PONG);
                out.extend_from_slice(&nonce.to_be_bytes());
            }
            Self::Echo(bytes) => tagged(&mut out, TAG_ECHO, bytes),
            Self::EchoReply(bytes) => tagged(&mut out, TAG_ECHO_REPLY, bytes),
            Self::App { seq, payload } => {
                out.push(TAG_APP);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(payload);
            }
            Self::AppAck(seq) => {
                out.push(TAG_APP_ACK);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Self::MeshSend {
                request,
                destination,
                id,
                signed,
                payload,
            } => {
                out.push(TAG_MESH_SEND);
                out.extend_from_slice(&request.to_be_bytes());
                out.extend_from_slice(destination);
                out.extend_from_slice(id);
                out.extend_from_slice(&signed.timestamp_ms.to_be_bytes());
                out.extend_from_slice(&signed.signature);
                out.extend_from_slice(payload);
            }
            Self::MeshMessage {
                seq,
                source,
                hops,
                payload,
            } => {
                out.push(TAG_MESH_MESSAGE);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(source);
                out.push(*hops);
                out.extend_from_slice(payload);
            }
            Self::MeshResult { request, outcome } => {
                out.push(TAG_MESH_RESULT);
                out.extend_from_slice(&request.to_be_bytes());
                match outcome {
                    Ok((hops, rtt_ms)) => {
                        out.push(0);
                        out.push(*hops);
                        out.extend_from_slice(&rtt_ms.to_be_bytes());
                    }
                    Err(text) => {
                        out.push(1);
                        out.push(0);
                        out.extend_from_slice(&0u32.to_be_bytes());
                        out.extend_from_slice(truncate_utf8(text, MAX_ERROR_TEXT).as_bytes());
                    }
                }
            }
            Self::Source(count) => {
                out.push(TAG_SOURCE);
                out.extend_from_slice(&count.to_be_bytes());
            }
            Self::SourceData(bytes) => tagged(&mut out, TAG_SOURCE_DATA, bytes),
            Self::SourceEnd { total, sha256 } => {
                out.push(TAG_SOURCE_END);
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(sha256);
            }
            Self::Sink(bytes) => tagged(&mut out, TAG_SINK, bytes),
            Self::SinkEnd => out.push(TAG_SINK_END),
            Self::SinkReport { total, sha256 } => {
                out.push(TAG_SINK_REPORT);
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(sha256);
            }
        }
        out
    }

    /// Decodes one message from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(FrameError::TooLarge(bytes.len()));
        }
        let (&tag, body) = bytes.split_first().ok_or(FrameError::Empty)?;
        let length = |name: &'static str| FrameError::Length {
            name,
            len: bytes.len(),
        };
        let body_limit = |name: &'static str| {
            if body.len() > MAX_BODY {
                Err(length(name))
            } else {
                Ok(body.to_vec())
            }
        };
        Ok(match tag {
            TAG_PING => Self::Ping(u64_exact(body).ok_or_else(|| length("PING"))?),
            TAG_PONG => Self::Pong(u64_exact(body).ok_or_else(|| length("PONG"))?),
            TAG_ECHO => Self::Echo(body_limit("ECHO")?),
            TAG_ECHO_REPLY => Self::EchoReply(body_limit("ECHO_REPLY")?),
            TAG_APP => {
                let (seq, payload) = split_u32(body).ok_or_else(|| length("APP"))?;
                if payload.len() > MAX_BODY {
                    return Err(length("APP"));
                }
                Self::App {
                    seq,
                    payload: payload.to_vec(),
                }
            }
            TAG_APP_ACK => {
                let (seq, rest) = split_u32(body).ok_or_else(|| length("APP_ACK"))?;
                if !rest.is_empty() {
                    return Err(length("APP_ACK"));
                }
                Self::AppAck(seq)
            }
            TAG_MESH_SEND => {
                if body.len() < MESH_SEND_FIXED || body.len() - MESH_SEND_FIXED > MAX_BODY {
                    return Err(length("MESH_SEND"));
                }
                let (request, rest) = split_u32(body).ok_or_else(|| length("MESH_SEND"))?;
                let (destination, rest) = rest.split_at(NODE_ID_LEN);
                let (id, rest) = rest.split_at(MESSAGE_ID_LEN);
                let (timestamp, rest) = rest.split_at(8);
                let (signature, payload) = rest.split_at(SIGNATURE_LEN);
                Self::MeshSend {
                    request,
                    destination: fixed(destination).ok_or_else(|| length("MESH_SEND"))?,
                    id: fixed(id).ok_or_else(|| length("MESH_SEND"))?,
                    signed: SenderSignature {
                        timestamp_ms: u64_exact(timestamp).ok_or_else(|| length("MESH_SEND"))?,
                        signature: fixed(signature).ok_or_else(|| length("MESH_SEND"))?,
                    },
                    payload: payload.to_vec(),
                }
            }
            TAG_MESH_MESSAGE => {
                if body.len() < MESH_MESSAGE_FIXED || body.len() - MESH_MESSAGE_FIXED > MAX_BODY {
                    return Err(length("MESH_MESSAGE"));
                }
                let (seq, rest) = split_u32(body).ok_or_else(|| length("MESH_MESSAGE"))?;
                let (source, rest) = rest.split_at(NODE_ID_LEN);
                let (hops, payload) = rest.split_at(1);
                Self::MeshMessage {
                    seq,
                    source: fixed(source).ok_or_else(|| length("MESH_MESSAGE"))?,
                    hops: hops[0],
                    payload: payload.to_vec(),
                }
            }
            TAG_MESH_RESULT => {
                let (request, rest) = split_u32(body).ok_or_else(|| length("MESH_RESULT"))?;
                if rest.len() < 6 || rest.len() - 6 > MAX_ERROR_TEXT {
                    return Err(length("MESH_RESULT"));
                }
                let hops = rest[1];
                let rtt_ms = u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]);
                let outcome = match rest[0] {
                    0 => Ok((hops, rtt_ms)),
                    1 => Err(String::from_utf8_lossy(&rest[6..]).into_owned()),
                    other => return Err(FrameError::Status(other)),
                };
                Self::MeshResult { request, outcome }
            }
            TAG_SOURCE => Self::Source(u64_exact(body).ok_or_else(|| length("SOURCE"))?),
            TAG_SOURCE_DATA => Self::SourceData(body_limit("SOURCE_DATA")?),
            TAG_SOURCE_END => {
                let (total, sha256) = report(body).ok_or_else(|| length("SOURCE_END"))?;
                Self::SourceEnd { total, sha256 }
            }
            TAG_SINK => Self::Sink(body_limit("SINK")?),
            TAG_SINK_END if body.is_empty() => Self::SinkEnd,
            TAG_SINK_END => return Err(length("SINK_END")),
            TAG_SINK_REPORT => {
                let (total, sha256) = report(body).ok_or_else(|| length("SINK_REPORT"))?;
                Self::SinkReport { total, sha256 }
            }
            other => return Err(FrameError::UnknownTag(other)),
        })
    }
}

fn tagged(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.reserve(body.len() + 1);
    out.push(tag);
    out.extend_from_slice(body);
}

fn fixed<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
    bytes.try_into().ok()
}

fn u64_exact(body: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(body.try_into().ok()?))
}

fn split_u32(body: &[u8]) -> Option<(u32, &[u8])> {
    if body.len() < 4 {
        return None;
    }
    let (head, rest) = body.split_at(4);
    Some((u32::from_be_bytes(head.try_into().ok()?), rest))
}

fn report(body: &[u8]) -> Option<(u64, [u8; 32])> {
    if body.len() != 40 {
        return None;
    }
    let total = u64::from_be_bytes(body[..8].try_into().ok()?);
    let sha256 = body[8..].try_into().ok()?;
    Some((total, sha256))
}

fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A DTLS certificate fingerprint as an SDP `a=fingerprint:` line gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtlsFingerprint {
    /// The hash function, lowercase (`sha-256`).
    pub hash_function: String,
    /// The digest.
    pub digest: Vec<u8>,
}

/// Why an SDP's fingerprint could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    /// The SDP has no `a=fingerprint:` line.
    #[error("the SDP has no a=fingerprint line")]
    Missing,
    /// Two fingerprint lines disagree.
    #[error("the SDP has fingerprint lines that disagree")]
    Conflicting,
    /// The line is not `HASH XX:XX:…`.
    #[error("the SDP's fingerprint is malformed: {0}")]
    Malformed(String),
}

impl DtlsFingerprint {
    /// The fingerprint of the SDP `sdp` (session or media level; all lines must agree).
    pub fn from_sdp(sdp: &str) -> Result<Self, FingerprintError> {
        let mut found: Option<Self> = None;
        for line in sdp.lines() {
            let Some(value) = line.trim_end().strip_prefix("a=fingerprint:") else {
                continue;
            };
            let parsed = Self::parse(value)?;
            match &found {
                Some(previous) if *previous != parsed => return Err(FingerprintError::Conflicting),
                _ => found = Some(parsed),
            }
        }
        found.ok_or(FingerprintError::Missing)
    }

    /// Parses `HASH XX:XX:…` (the value of an `a=fingerprint:` line).
    pub fn parse(value: &str) -> Result<Self, FingerprintError> {
        let mut parts = value.split_whitespace();
        let (Some(hash), Some(hex_pairs), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(FingerprintError::Malformed(
                "expected a hash function and a digest".to_owned(),
            ));
        };
        if hash.len() > 16 || !hash.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(FingerprintError::Malformed(
                "unknown hash function".to_owned(),
            ));
        }
        let digest = hex_pairs
            .split(':')
            .map(|pair| {
                if pair.len() == 2 {
                    u8::from_str_radix(pair, 16).ok()
                } else {
                    None
                }
            })
            .collect::<Option<Vec<u8>>>()
            .filter(|digest| (16..=64).contains(&digest.len()))
            .ok_or_else(|| FingerprintError::Malformed("the digest is not hex pairs".to_owned()))?;
        Ok(Self {
            hash_function: hash.to_ascii_lowercase(),
            digest,
        })
    }

    /// `sha-256 AB:CD:…`, the canonical form that is signed.
    pub fn canonical(&self) -> String {
        let pairs: Vec<String> = self.digest.iter().map(|b| format!("{b:02X}")).collect();
        format!("{} {}", self.hash_function, pairs.join(":"))
    }
}

/// The text a node signs (domain [`SignatureDomain::DtlsFingerprint`]) to bind `fingerprint`
/// to its id `signer`.
pub fn binding_text(signer: &NodeId, fingerprint: &DtlsFingerprint) -> String {
    format!(
        "meshcore-dtls/1\n{}\n{}",
        signer.to_hex(),
        fingerprint.canonical()
    )
}

/// Checks that `signature` binds `fingerprint` to `signer`.
pub fn verify_binding(
    signer: &NodeId,
    fingerprint: &DtlsFingerprint,
    signature: &[u8],
) -> Result<(), SignatureError> {
    signer.verify(
        SignatureDomain::DtlsFingerprint,
        binding_text(signer, fingerprint).as_bytes(),
        signature,
    )
}

/// The text a browser signs (domain [`SignatureDomain::SignalHello`]) to register on a
/// node's signaling socket after the challenge `nonce_hex`.
pub fn signal_hello_text(nonce_hex: &str, node: &NodeId) -> String {
    format!("{nonce_hex}\n{}", node.to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKeypair;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;

    fn every_kind() -> Vec<BrowserFrame> {
        vec![
            BrowserFrame::Ping(7),
            BrowserFrame::Pong(u64::MAX),
            BrowserFrame::Echo(b"abc".to_vec()),
            BrowserFrame::EchoReply(Vec::new()),
            BrowserFrame::App {
                seq: 9,
                payload: b"{\"a\":1}".to_vec(),
            },
            BrowserFrame::AppAck(9),
            BrowserFrame::MeshSend {
                request: 3,
                destination: [5; 32],
                id: [6; MESSAGE_ID_LEN],
                signed: SenderSignature {
                    timestamp_ms: 1_700_000_000_000,
                    signature: [7; SIGNATURE_LEN],
                },
                payload: b"hi".to_vec(),
            },
            BrowserFrame::MeshMessage {
                seq: 8,
                source: [9; 32],
                hops: 3,
                payload: b"{\"b\":2}".to_vec(),
            },
            BrowserFrame::MeshResult {
                request: 3,
                outcome: Ok((2, 17)),
            },
            BrowserFrame::MeshResult {
                request: 4,
                outcome: Err("no route".to_owned()),
            },
            BrowserFrame::Source(1 << 20),
            BrowserFrame::SourceData(vec![1; 100]),
            BrowserFrame::SourceEnd {
                total: 100,
                sha256: [3; 32],
            },
            BrowserFrame::Sink(vec![2; 10]),
            BrowserFrame::SinkEnd,
            BrowserFrame::SinkReport {
                total: 10,
                sha256: [4; 32],
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for frame in every_kind() {
            assert_eq!(
                BrowserFrame::decode(&frame.encode()),
                Ok(frame.clone()),
                "{}",
                frame.name()
            );
        }
    }

    #[test]
    fn the_wire_layout_is_the_documented_one() {
        assert_eq!(
            BrowserFrame::Ping(0x0102).encode(),
            [1, 0, 0, 0, 0, 0, 0, 1, 2]
        );
        assert_eq!(
            BrowserFrame::App {
                seq: 1,
                payload: b"x".to_vec()
            }
            .encode(),
            [5, 0, 0, 0, 1, b'x']
        );
        let result = BrowserFrame::MeshResult {
            request: 2,
            outcome: Ok((3, 0x0405)),
        };
        assert_eq!(result.encode(), [8, 0, 0, 0, 2, 0, 3, 0, 0, 4, 5]);
        let mut message = vec![0x10, 0, 0, 0, 6];
        message.extend_from_slice(&[0xaa; 32]);
        message.extend_from_slice(&[2, b'y']);
        assert_eq!(
            BrowserFrame::MeshMessage {
                seq: 6,
                source: [0xaa; 32],
                hops: 2,
                payload: b"y".to_vec()
            }
            .encode(),
            message
        );
        let send = BrowserFrame::MeshSend {
            request: 1,
            destination: [0xbb; 32],
            id: [0xcc; MESSAGE_ID_LEN],
            signed: SenderSignature {
                timestamp_ms: 0x0102,
                signature: [0xdd; SIGNATURE_LEN],
            },
            payload: b"z".to_vec(),
        }
        .encode();
        assert_eq!(send.len(), 1 + MESH_SEND_FIXED + 1);
        assert_eq!(&send[..5], [7, 0, 0, 0, 1]);
        assert_eq!(&send[37..53], [0xcc; MESSAGE_ID_LEN]);
        assert_eq!(&send[53..61], [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(send[61..125], [0xdd; SIGNATURE_LEN]);
        assert_eq!(send[125], b'z');
    }

    #[test]
    fn bad_messages_name_the_problem() {
        assert_eq!(BrowserFrame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(
            BrowserFrame::decode(&[0x09]),
            Err(FrameError::UnknownTag(9))
        );
        assert_eq!(
            BrowserFrame::decode(&[TAG_PING, 1, 2]),
            Err(FrameError::Length {
                name: "PING",
                len: 3
            })
        );
        assert!(matches!(
            BrowserFrame::decode(&[TAG_MESH_SEND, 0, 0, 0, 1, 5]),
            Err(FrameError::Length {
                name: "MESH_SEND",
                ..
            })
        ));
        let mut status = BrowserFrame::MeshResult {
            request: 1,
            outcome: Ok((1, 1)),
        }
        .encode();
        status[5] = 7;
        assert_eq!(BrowserFrame::decode(&status), Err(FrameError::Status(7)));
        let huge = vec![TAG_SINK; MAX_MESSAGE + 1];
        assert_eq!(
            BrowserFrame::decode(&huge),
            Err(FrameError::TooLarge(MAX_MESSAGE + 1))
        );
    }

    #[test]
    fn a_long_error_text_is_cut_at_a_character_boundary() {
        let text = "é".repeat(MAX_ERROR_TEXT);
        let encoded = BrowserFrame::MeshResult {
            request: 1,
            outcome: Err(text),
        }
        .encode();
        match BrowserFrame::decode(&encoded) {
            Ok(BrowserFrame::MeshResult {
                outcome: Err(cut), ..
            }) => assert_eq!(cut.len(), MAX_ERROR_TEXT),
            other => panic!("{other:?}"),
        }
    }

    const CHROME_SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
        c=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\n\
        a=fingerprint:sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9\r\n\
        a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\n";

    #[test]
    fn the_fingerprint_is_read_from_a_browser_offer() {
        let fingerprint = DtlsFingerprint::from_sdp(CHROME_SDP).expect("fingerprint");
        assert_eq!(fingerprint.hash_function, "sha-256");
        assert_eq!(fingerprint.digest.len(), 32);
        assert!(fingerprint.canonical().starts_with("sha-256 0A:1B:2C"));
        assert_eq!(
            DtlsFingerprint::parse(&fingerprint.canonical()[..]).expect("reparse"),
            fingerprint
        );
    }

    #[test]
    fn a_missing_or_malformed_fingerprint_is_refused() {
        assert_eq!(
            DtlsFingerprint::from_sdp("v=0\r\n"),
            Err(FingerprintError::Missing)
        );
        assert!(matches!(
            DtlsFingerprint::from_sdp("a=fingerprint:sha-256 ZZ:00\r\n"),
            Err(FingerprintError::Malformed(_))
        ));
        let two = format!(
            "{CHROME_SDP}a=fingerprint:sha-256 {}\r\n",
            ["00"; 32].join(":")
        );
        assert_eq!(
            DtlsFingerprint::from_sdp(&two),
            Err(FingerprintError::Conflicting)
        );
    }

    #[test]
    fn a_binding_verifies_only_for_its_signer_and_fingerprint() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let keys = NodeKeypair::generate(&mut rng);
        let other = NodeKeypair::generate(&mut rng);
        let fingerprint = DtlsFingerprint::from_sdp(CHROME_SDP).expect("fingerprint");
        let signer = keys.node_id();
        let signature = keys.sign(
            SignatureDomain::DtlsFingerprint,
            binding_text(&signer, &fingerprint).as_bytes(),
        );
        assert!(verify_binding(&signer, &fingerprint, &signature.to_bytes()).is_ok());
        assert!(verify_binding(&other.node_id(), &fingerprint, &signature.to_bytes()).is_err());
        let mut changed = fingerprint.clone();
        changed.digest[0] ^= 1;
        assert!(verify_binding(&signer, &changed, &signature.to_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn decoding_never_panics_and_reencodes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(frame) = BrowserFrame::decode(&bytes) {
                prop_assert_eq!(BrowserFrame::decode(&frame.encode()), Ok(frame));
            }
        }
    }
}
