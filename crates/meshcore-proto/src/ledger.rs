//! The relay ledger: who owes whom for carried traffic, paid with signed cumulative IOUs
//! between neighbours. A sans-IO state machine, [`Ledger`]; design.md §3 and issue 7.
//!
//! # Rules
//!
//! All amounts are integer **milli-tokens** (`u64`; 1 token = 1000), prices are
//! milli-tokens per MB (10⁶ bytes), and no float touches a balance.
//!
//! - **Pay-per-forward.** A node's own fee is `tokens_per_mb × multiplier` milli-tokens
//!   per MB, where the multiplier is its reputation multiplier in per-mille, `1000 +
//!   score / 2` ∈ [1000, 1500] (1.0–1.5; see [`reputation`]). Each neighbour advertises a
//!   price per destination in its route advertisements — its route's price plus its own
//!   fee, 0 for itself ([`crate::route`]; [`Ledger::set_advertised_price`]) — and states
//!   one in its [`Statement`]s ([`Ledger::set_price`]); `price(D)` through a downstream `d`
//!   is the lower of the two, or whichever is known, or 0 if `d` is `D`
//!   ([`Ledger::price`]). So a relay that states more than it advertised is paid only what
//!   it advertised. For `bytes` forwarded towards `D`
//!   ([`Ledger::record_forwarded`]), the upstream neighbour is charged
//!   `bytes × (price(D) + own fee)` and this node owes downstream `bytes × price(D)`; an
//!   originator only owes, a destination charges nothing. Charges accumulate exactly in
//!   milli-tokens·bytes/MB and are rounded down once, on the total. Only bytes that passed
//!   the link's authentication may be recorded: that is the caller's duty.
//! - **Signed cumulative IOUs.** A payer signs [`Iou`]s `{link, epoch, seq,
//!   cumulative_bytes, cumulative_amount}` with its node key in the
//!   [`RelayIou`](crate::SignatureDomain::RelayIou) domain. The payee accepts one
//!   ([`Ledger::accept_iou`]) only if it is on the right link, its signature verifies and
//!   it is newer than the latest (higher seq, no smaller totals; or a newer epoch). A
//!   replayed, old or forged IOU changes nothing. What a neighbour has paid
//!   (`tokens_earned`) is the sum over its epochs of its latest IOU's amount, so it only
//!   grows and nothing can be spent twice.
//! - **Balance** = Σ over neighbours (`tokens_earned − tokens_spent + allowance used`).
//!   Charges not yet covered by an IOU are not in it.
//! - **Free allowance.** The first time this node owes a neighbour anything, that account
//!   is granted `a = min(free_allowance, pool)` from the node's allowance pool, and the
//!   first `a` milli-tokens this node pays that neighbour are covered by it (the payee still
//!   receives full IOUs). The pool starts at `allowance_pool_max` and refills by
//!   `allowance_refill_per_hour` per hour up to that maximum. So the tokens one ledger
//!   issues between `t₀` and `t` are at most `allowance_pool_max +
//!   allowance_refill_per_hour × (t − t₀) / 1 h` (defaults: 100 tokens + 10 tokens/h), and
//!   at most `free_allowance` (10 tokens) per neighbour. This is the only way tokens
//!   appear: across any set of ledgers, Σ balances = Σ allowance used once every signed
//!   IOU has been delivered, and less while some are in flight.
//! - **Credit limits.** A neighbour's threshold is `Pₙ = min(P, P_new + paid so far)`
//!   (defaults P = 100 tokens = 1 MB at the base fee, `P_new` = 10 tokens), so a new
//!   neighbour's limit grows with its payment history. The payer sends an IOU once it owes
//!   `Pₙ` ([`Ledger::poll_transmit`]; new neighbours are so paid more often). The payee
//!   rates the neighbour by what it owes unpaid, `u` ([`Ledger::standing`]): `Ok` below
//!   `Pₙ`, `Settle` up to `1.25 Pₙ`, `Throttle` once `u > 1.25 Pₙ` has held for
//!   `throttle_grace` (2 s: a burst alone, answered by an IOU, does not throttle), `CutOff`
//!   once `u > 10 Pₙ` has held for `cutoff_grace` (60 s). The driver relays for a throttled
//!   neighbour at most `throttled_rate` (32 KiB/s, [`crate::relay`]) and for one cut off
//!   nothing.
//! - **Reputation** of each neighbour (and of this node, which sets its fee) rises with
//!   delivered traffic, falls with lost traffic, and halves every `reputation_half_life`
//!   ([`Ledger::record_delivery`]).
//!
//! # Run loop
//!
//! The driver calls [`Ledger::set_advertised_price`] as route advertisements arrive and
//! [`Ledger::set_price`] as statements do,
//! [`Ledger::record_forwarded`] for authenticated bytes handed on, [`Ledger::accept_iou`]
//! for IOUs received, consults [`Ledger::standing`] before serving a neighbour, and after
//! any input drains [`Ledger::poll_transmit`] until `None`, sending each IOU to its
//! neighbour. [`Ledger::snapshot`] is what to persist after a transmit or an accepted IOU;
//! [`Ledger::restore`] resumes from it. Every map is bounded by
//! [`LedgerConfig::max_accounts`] and [`LedgerConfig::max_prices_per_neighbour`].
//!
//! [`Bookkeeper`] is that run loop with the neighbour conversation it needs: a relay
//! charges upstream for what it forwards ([`Ledger::record_carried`]) and tells it so in
//! [`Statement`]s (its price for the destination and the bytes carried), and an upstream
//! owes only what statements confirm, capped at what it handed over, at no more than the
//! advertised price — so a relay is never paid for packets it dropped or refused, nor more
//! than it offered; then IOUs out and in. The routing driver feeds
//! it and carries its [`LedgerMessage`]s.
//!
//! # Files
//!
//! - [`config`] — [`LedgerConfig`], every default in one place;
//! - [`iou`] — [`Iou`]: signing, verifying, the fixed 160-byte wire form;
//! - [`statement`] — [`Statement`]: a downstream neighbour's price and carried bytes for a
//!   destination, fixed 49-byte wire form;
//! - [`book`] — [`Bookkeeper`], the run loop and neighbour conversation;
//! - [`reputation`] — the decaying score and the fee multiplier;
//! - `state` — [`Ledger`], [`Account`], [`Standing`] and the errors.

pub mod book;
pub mod config;
pub mod iou;
pub mod reputation;
mod state;
pub mod statement;

#[cfg(test)]
mod tests;

pub use book::{BookCounters, Bookkeeper, LedgerMessage};
pub use config::{LedgerConfig, BYTES_PER_MB, MILLI_PER_TOKEN};
pub use iou::{Iou, IouDecodeError, IouLink, IOU_LEN};
pub use reputation::Reputation;
pub use state::{
    Accepted, Account, Forwarded, IouError, Ledger, LedgerError, LedgerSnapshot, RestoreError,
    Standing,
};
pub use statement::{Statement, StatementDecodeError, STATEMENT_LEN};
