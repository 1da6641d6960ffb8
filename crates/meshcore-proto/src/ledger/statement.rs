//! [`Statement`]: a downstream neighbour's account to its upstream for one destination —
//! "I carry your packets for `destination` at `price_per_mb` milli-tokens per MB, and I have
//! carried `bytes` of them in all". The upstream pays for the bytes a statement adds, at its
//! price, up to what it actually handed over; so a relay is paid only for what it forwarded.
//!
//! The wire form is fixed, [`STATEMENT_LEN`] bytes: `version (1) ‖ destination (32) ‖
//! price_per_mb (8) ‖ bytes (8)`, integers big-endian. A statement is not signed: it comes
//! straight from the neighbour over an authenticated link and binds only that neighbour's
//! charges, which the upstream caps at what it sent.

use crate::identity::{NodeId, NODE_ID_LEN};

/// The statement format version this code reads and writes.
const STATEMENT_VERSION: u8 = 1;

/// Length of an encoded statement.
pub const STATEMENT_LEN: usize = 1 + NODE_ID_LEN + 8 + 8;

/// A downstream neighbour's price and carried bytes for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Statement {
    /// The destination.
    pub destination: NodeId,
    /// Milli-tokens per MB (10⁶ bytes) for what the statement adds.
    pub price_per_mb: u64,
    /// Bytes carried for the upstream towards `destination`, cumulative since the link came
    /// up (a smaller number than before means the count restarted).
    pub bytes: u64,
}

/// Why bytes are not a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StatementDecodeError {
    /// A statement is exactly [`STATEMENT_LEN`] bytes.
    #[error("a ledger statement is {STATEMENT_LEN} bytes, got {0}")]
    Length(usize),
    /// A version this code does not know.
    #[error("unknown ledger statement version {0}")]
    UnknownVersion(u8),
    /// The destination is not a valid public key.
    #[error("a ledger statement names an invalid node id")]
    InvalidNodeId,
}

impl Statement {
    /// The wire form.
    pub fn encode(&self) -> [u8; STATEMENT_LEN] {
        let mut bytes = [0u8; STATEMENT_LEN];
        bytes[0] = STATEMENT_VERSION;
        bytes[1..1 + NODE_ID_LEN].copy_from_slice(self.destination.as_bytes());
        let at = 1 + NODE_ID_LEN;
        bytes[at..at + 8].copy_from_slice(&self.price_per_mb.to_be_bytes());
        bytes[at + 8..].copy_from_slice(&self.bytes.to_be_bytes());
        bytes
    }

    /// Reads the wire form, checking the length, the version and the node id.
    pub fn decode(bytes: &[u8]) -> Result<Self, StatementDecodeError> {
        let bytes: &[u8; STATEMENT_LEN] = bytes
            .try_into()
            .map_err(|_| StatementDecodeError::Length(bytes.len()))?;
        if bytes[0] != STATEMENT_VERSION {
            return Err(StatementDecodeError::UnknownVersion(bytes[0]));
        }
        let mut id = [0u8; NODE_ID_LEN];
        id.copy_from_slice(&bytes[1..1 + NODE_ID_LEN]);
        let number = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(raw)
        };
        Ok(Self {
            destination: NodeId::from_bytes(id).map_err(|_| StatementDecodeError::InvalidNodeId)?,
            price_per_mb: number(1 + NODE_ID_LEN),
            bytes: number(1 + NODE_ID_LEN + 8),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKeypair;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn a_statement_round_trips_and_bad_ones_are_named() {
        let destination = NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(1)).node_id();
        let statement = Statement {
            destination,
            price_per_mb: 150_000,
            bytes: u64::MAX - 1,
        };
        let bytes = statement.encode();
        assert_eq!(Statement::decode(&bytes), Ok(statement));
        assert_eq!(
            Statement::decode(&bytes[..STATEMENT_LEN - 1]),
            Err(StatementDecodeError::Length(STATEMENT_LEN - 1))
        );
        let mut other = bytes;
        other[0] = 9;
        assert_eq!(
            Statement::decode(&other),
            Err(StatementDecodeError::UnknownVersion(9))
        );
        let invalid = (0u8..=255)
            .map(|b| [b; NODE_ID_LEN])
            .find(|raw| NodeId::from_bytes(*raw).is_err())
            .expect("some repeated byte is not a valid key");
        other = bytes;
        other[1..1 + NODE_ID_LEN].copy_from_slice(&invalid);
        assert_eq!(
            Statement::decode(&other),
            Err(StatementDecodeError::InvalidNodeId)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic_and_what_decodes_re_encodes(
            bytes in proptest::collection::vec(any::<u8>(), 0..(2 * STATEMENT_LEN))
        ) {
            if let Ok(statement) = Statement::decode(&bytes) {
                prop_assert_eq!(&statement.encode()[..], &bytes[..]);
            }
        }
    }
}
