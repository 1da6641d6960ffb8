//! [`LedgerConfig`]: every ledger default in one place.

use std::time::Duration;

/// Milli-tokens in one token: every amount in the ledger is an integer number of
/// milli-tokens.
pub const MILLI_PER_TOKEN: u64 = 1_000;

/// Bytes in one megabyte, the unit prices are quoted in (10⁶, not 2²⁰).
pub const BYTES_PER_MB: u64 = 1_000_000;

/// The ledger's settings. Build with [`LedgerConfig::new`] and change fields as needed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LedgerConfig {
    /// This node's epoch: a number larger than any it used before (the daemon passes the
    /// start time in milliseconds). IOUs this ledger signs carry it. Default 0.
    pub epoch: u64,
    /// Base relay fee in whole tokens per MB, before the reputation multiplier (the
    /// setting `tokens_per_mb`). Default 100.
    pub tokens_per_mb: u64,
    /// The payment threshold P in milli-tokens: an established neighbour settles (is sent
    /// an IOU) once this much is unpaid. Default 100 000 (100 tokens, 1 MB at the base fee).
    pub payment_threshold: u64,
    /// The threshold a brand-new neighbour starts with, in milli-tokens; it grows by what
    /// that neighbour has paid, up to `payment_threshold`. Default 10 000 (P / 10).
    pub new_neighbour_threshold: u64,
    /// How long a neighbour may stay more than 10 × its threshold in debt before it is cut
    /// off. Default 60 s.
    pub cutoff_grace: Duration,
    /// How long a neighbour may stay more than 1.25 × its threshold in debt before it is
    /// throttled: long enough for a paying neighbour to answer the relay's statements with
    /// an IOU (statements go every 250 ms), so that a burst alone does not throttle it.
    /// Default 2 s.
    pub throttle_grace: Duration,
    /// The free allowance each new neighbour brings, in milli-tokens: the first this much
    /// this node owes a neighbour is covered by newly issued tokens. Default 10 000
    /// (10 tokens, 0.1 MB at the base fee).
    pub free_allowance: u64,
    /// The most allowance this node can hold unissued, in milli-tokens. Default 100 000.
    pub allowance_pool_max: u64,
    /// Milli-tokens of allowance added to the pool per hour, up to `allowance_pool_max`.
    /// Default 10 000.
    pub allowance_refill_per_hour: u64,
    /// A reputation score halves once per this interval. Default 24 h.
    pub reputation_half_life: Duration,
    /// Most neighbour accounts. Default 1024.
    pub max_accounts: usize,
    /// Most advertised prices remembered per neighbour. Default 1024.
    pub max_prices_per_neighbour: usize,
}

impl LedgerConfig {
    /// The defaults listed on each field.
    pub fn new() -> Self {
        Self {
            epoch: 0,
            tokens_per_mb: 100,
            payment_threshold: 100 * MILLI_PER_TOKEN,
            new_neighbour_threshold: 10 * MILLI_PER_TOKEN,
            cutoff_grace: Duration::from_secs(60),
            throttle_grace: Duration::from_secs(2),
            free_allowance: 10 * MILLI_PER_TOKEN,
            allowance_pool_max: 100 * MILLI_PER_TOKEN,
            allowance_refill_per_hour: 10 * MILLI_PER_TOKEN,
            reputation_half_life: Duration::from_secs(24 * 3600),
            max_accounts: 1024,
            max_prices_per_neighbour: 1024,
        }
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self::new()
    }
}
