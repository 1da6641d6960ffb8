//! [`Ledger`]: one node's accounts with its neighbours, and the rules that move them.

use std::collections::BTreeMap;

use crate::dht::time::Timestamp;
use crate::identity::{NodeId, NodeKeypair};
use crate::ledger::config::{LedgerConfig, BYTES_PER_MB};
use crate::ledger::iou::{Iou, IouLink};
use crate::ledger::reputation::Reputation;

/// Milliseconds in an hour, for the allowance refill rate.
const HOUR_MS: u128 = 3_600_000;

/// One neighbour's account: what is owed each way, what was paid, the latest IOUs and the
/// neighbour's reputation. This is also the persistence row (see [`LedgerSnapshot`]).
///
/// Amounts are milli-tokens. Charges accumulate exactly as `bytes × price` in
/// milli-tokens·bytes/MB (`*_micro`); the amount owed is that divided by 10⁶, rounded down,
/// so splitting traffic into packets never changes the total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The neighbour.
    pub neighbour: NodeId,
    /// Paid to this node by the neighbour: the sum over the neighbour's epochs of its
    /// latest accepted IOU's amount.
    pub tokens_earned: u64,
    /// Paid by this node to the neighbour: the sum over this node's epochs of the latest
    /// IOU it signed to the neighbour.
    pub tokens_spent: u64,
    /// Bytes this node carried for the neighbour (it was the upstream of a forward).
    pub bytes_relayed: u64,
    /// Bytes the neighbour carried for this node (it was the downstream of a forward).
    pub bytes_consumed: u64,
    /// This node's view of the neighbour's reputation.
    pub reputation: Reputation,
    /// Charges to the neighbour, `Σ bytes × price`, in milli-tokens·bytes/MB.
    pub receivable_micro: u128,
    /// Charges by the neighbour, `Σ bytes × price`, in milli-tokens·bytes/MB.
    pub payable_micro: u128,
    /// The free allowance issued for paying this neighbour (see [the module
    /// docs](crate::ledger)); `None` until this node first owes it anything.
    pub allowance: Option<u64>,
    /// The latest IOU accepted from the neighbour.
    pub latest_received: Option<Iou>,
    /// `tokens_earned` before the epoch of `latest_received`.
    pub earned_before_epoch: u64,
    /// The latest IOU signed to the neighbour.
    pub latest_sent: Option<Iou>,
    /// `tokens_spent` and `bytes_consumed` paid for before the epoch of `latest_sent`.
    pub spent_before_epoch: (u64, u64),
    /// Since when the neighbour has owed more than 10 × its threshold.
    pub over_cutoff_since: Option<Timestamp>,
    /// Since when the neighbour has owed more than 1.25 × its threshold (not persisted:
    /// after a restart its grace begins again).
    pub over_throttle_since: Option<Timestamp>,
}

impl Account {
    fn new(neighbour: NodeId, now: Timestamp) -> Self {
        Self {
            neighbour,
            tokens_earned: 0,
            tokens_spent: 0,
            bytes_relayed: 0,
            bytes_consumed: 0,
            reputation: Reputation::new(now),
            receivable_micro: 0,
            payable_micro: 0,
            allowance: None,
            latest_received: None,
            earned_before_epoch: 0,
            latest_sent: None,
            spent_before_epoch: (0, 0),
            over_cutoff_since: None,
            over_throttle_since: None,
        }
    }

    /// Milli-tokens the neighbour has been charged by this node in total.
    pub fn receivable(&self) -> u64 {
        micro_to_amount(self.receivable_micro)
    }

    /// Milli-tokens this node has been charged by the neighbour in total.
    pub fn payable(&self) -> u64 {
        micro_to_amount(self.payable_micro)
    }

    /// Charged to the neighbour and not yet paid by a signed IOU.
    pub fn unpaid_by_neighbour(&self) -> u64 {
        self.receivable().saturating_sub(self.tokens_earned)
    }

    /// Charged by the neighbour and not yet paid by a signed IOU.
    pub fn unpaid_to_neighbour(&self) -> u64 {
        self.payable().saturating_sub(self.tokens_spent)
    }

    /// The part of `tokens_spent` covered by the free allowance.
    pub fn allowance_used(&self) -> u64 {
        self.allowance.unwrap_or(0).min(self.tokens_spent)
    }

    /// This account's contribution to the balance: earned − spent + allowance used.
    pub fn balance(&self) -> i128 {
        i128::from(self.tokens_earned) - i128::from(self.tokens_spent)
            + i128::from(self.allowance_used())
    }
}

fn micro_to_amount(micro: u128) -> u64 {
    u64::try_from(micro / u128::from(BYTES_PER_MB)).unwrap_or(u64::MAX)
}

/// A neighbour's standing with this node, by how much it owes unpaid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Owes less than its threshold: serve it normally.
    Ok,
    /// Owes at least its threshold: it should send an IOU now.
    Settle,
    /// Owes more than 1.25 × its threshold: slow it down.
    Throttle,
    /// Has owed more than 10 × its threshold for longer than the grace period: stop
    /// serving it.
    CutOff,
}

/// What [`Ledger::record_forwarded`] charged, per MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// Milli-tokens per MB charged to the upstream neighbour (0 without one).
    pub charged_per_mb: u64,
    /// Milli-tokens per MB owed to the downstream neighbour (0 without one).
    pub owed_per_mb: u64,
}

/// An IOU accepted by [`Ledger::accept_iou`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Milli-tokens the IOU added to what the neighbour has paid.
    pub newly_credited: u64,
    /// What the neighbour has paid in total now.
    pub tokens_earned: u64,
}

/// Why an IOU was refused. A refused IOU changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IouError {
    /// Not from the neighbour it arrived from, or not to this node.
    #[error("IOU is not on the link from the sending neighbour to this node")]
    WrongLink,
    /// The payer's signature does not verify.
    #[error("IOU signature does not verify")]
    BadSignature,
    /// Not newer than the latest accepted IOU (the same one again, or an older one).
    #[error("IOU is not newer than the latest accepted one")]
    Replayed,
    /// Newer, but claims fewer bytes or a smaller amount than the latest, or an older
    /// epoch.
    #[error("IOU goes below the latest accepted one")]
    Regressed,
    /// Totals would not fit in 64 bits.
    #[error("IOU totals overflow")]
    Overflow,
    /// The account table is full.
    #[error("no room for another neighbour account")]
    TooManyAccounts,
}

/// Why the ledger refused an input. A refused input changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The account table is full ([`LedgerConfig::max_accounts`]).
    #[error("no room for another neighbour account")]
    TooManyAccounts,
    /// The neighbour already has [`LedgerConfig::max_prices_per_neighbour`] prices.
    #[error("too many advertised prices from {0}")]
    TooManyPrices(NodeId),
    /// The downstream neighbour has not advertised a price for the destination.
    #[error("{neighbour} advertised no price for {destination}")]
    UnknownPrice {
        /// The downstream neighbour.
        neighbour: NodeId,
        /// The destination.
        destination: NodeId,
    },
    /// Without a downstream neighbour this node must be the destination.
    #[error("a forward with no downstream must end at this node")]
    NotDestination,
    /// This node named as its own neighbour.
    #[error("this node cannot be its own neighbour")]
    OwnNode,
}

/// Why a snapshot cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// More accounts than [`LedgerConfig::max_accounts`].
    #[error("snapshot has more accounts than allowed")]
    TooManyAccounts,
    /// Two rows for one neighbour, or a row for this node.
    #[error("snapshot has a duplicate or self account for {0}")]
    DuplicateAccount(NodeId),
    /// A stored IOU does not verify or is not on the account's link.
    #[error("snapshot holds an invalid IOU for {0}")]
    InvalidIou(NodeId),
    /// This node signed IOUs in a later epoch than the configured one.
    #[error("configured epoch {configured} is older than stored epoch {stored}")]
    EpochRegressed {
        /// `LedgerConfig::epoch`.
        configured: u64,
        /// The epoch of a stored sent IOU.
        stored: u64,
    },
}

/// Everything a ledger needs to resume: what the store persists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerSnapshot {
    /// Unissued allowance, milli-tokens.
    pub allowance_pool: u64,
    /// When the pool was last refilled.
    pub allowance_pool_as_of: Timestamp,
    /// This node's own reputation (its fee multiplier).
    pub own_reputation: Reputation,
    /// One row per neighbour, ordered by neighbour.
    pub accounts: Vec<Account>,
}

/// What a downstream neighbour asks to carry traffic to one destination, milli-tokens per
/// MB: the price its statements give and the price its route advertisement gave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Price {
    stated: Option<u64>,
    advertised: Option<u64>,
}

impl Price {
    /// The lower of the two known prices: a neighbour is never paid more than it
    /// advertised, nor more than it stated.
    fn effective(self) -> Option<u64> {
        match (self.stated, self.advertised) {
            (Some(stated), Some(advertised)) => Some(stated.min(advertised)),
            (stated, advertised) => stated.or(advertised),
        }
    }
}

/// One node's relay ledger. A sans-IO state machine; see [the module docs](crate::ledger)
/// for the rules and the run loop.
#[derive(Debug)]
pub struct Ledger {
    keypair: NodeKeypair,
    me: NodeId,
    config: LedgerConfig,
    accounts: BTreeMap<NodeId, Account>,
    /// Downstream neighbour → destination → what it stated and what it advertised.
    prices: BTreeMap<NodeId, BTreeMap<NodeId, Price>>,
    settle_requested: BTreeMap<NodeId, ()>,
    allowance_pool: u64,
    allowance_pool_as_of: Timestamp,
    own_reputation: Reputation,
}

impl Ledger {
    /// A fresh ledger for `keypair`'s node, its allowance pool full.
    pub fn new(keypair: NodeKeypair, config: LedgerConfig, now: Timestamp) -> Self {
        let me = keypair.node_id();
        Self {
            keypair,
            me,
            allowance_pool: config.allowance_pool_max,
            allowance_pool_as_of: now,
            own_reputation: Reputation::new(now),
            config,
            accounts: BTreeMap::new(),
            prices: BTreeMap::new(),
            settle_requested: BTreeMap::new(),
        }
    }

    /// Resumes from a snapshot, checking every stored IOU.
    pub fn restore(
        keypair: NodeKeypair,
        config: LedgerConfig,
        snapshot: LedgerSnapshot,
    ) -> Result<Self, RestoreError> {
        let me = keypair.node_id();
        if snapshot.accounts.len() > config.max_accounts {
            return Err(RestoreError::TooManyAccounts);
        }
        let mut accounts = BTreeMap::new();
        for account in snapshot.accounts {
            let n = account.neighbour;
            if n == me || accounts.contains_key(&n) {
                return Err(RestoreError::DuplicateAccount(n));
            }
            if let Some(iou) = &account.latest_received {
                let link = IouLink {
                    payer: n,
                    payee: me,
                };
                if iou.link != link || iou.verify().is_err() {
                    return Err(RestoreError::InvalidIou(n));
                }
            }
            if let Some(iou) = &account.latest_sent {
                let link = IouLink {
                    payer: me,
                    payee: n,
                };
                if iou.link != link || iou.verify().is_err() {
                    return Err(RestoreError::InvalidIou(n));
                }
                if iou.epoch > config.epoch {
                    return Err(RestoreError::EpochRegressed {
                        configured: config.epoch,
                        stored: iou.epoch,
                    });
                }
            }
            accounts.insert(n, account);
        }
        Ok(Self {
            keypair,
            me,
            allowance_pool: snapshot.allowance_pool.min(config.allowance_pool_max),
            allowance_pool_as_of: snapshot.allowance_pool_as_of,
            own_reputation: snapshot.own_reputation,
            config,
            accounts,
            prices: BTreeMap::new(),
            settle_requested: BTreeMap::new(),
        })
    }

    /// The state to persist.
    pub fn snapshot(&self) -> LedgerSnapshot {
        LedgerSnapshot {
            allowance_pool: self.allowance_pool,
            allowance_pool_as_of: self.allowance_pool_as_of,
            own_reputation: self.own_reputation,
            accounts: self.accounts.values().cloned().collect(),
        }
    }

    // ---- getters ----

    /// This node.
    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// The configuration.
    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// The account with `neighbour`, if any.
    pub fn account(&self, neighbour: &NodeId) -> Option<&Account> {
        self.accounts.get(neighbour)
    }

    /// All accounts, ordered by neighbour.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// The balance in milli-tokens: Σ over neighbours of (paid to this node − paid by this
    /// node + free allowance used). Only signed IOUs count; charges not yet paid do not.
    pub fn balance(&self) -> i128 {
        self.accounts.values().map(Account::balance).sum()
    }

    /// The free allowance used so far, milli-tokens: the tokens this ledger has issued.
    pub fn allowance_used(&self) -> u64 {
        self.accounts
            .values()
            .map(Account::allowance_used)
            .fold(0, u64::saturating_add)
    }

    /// Unissued allowance, milli-tokens (as of the last input).
    pub fn allowance_pool(&self) -> u64 {
        self.allowance_pool
    }

    /// This node's fee multiplier at `now`, per-mille, in `[1000, 1500]`.
    pub fn own_multiplier(&self, now: Timestamp) -> u64 {
        self.own_reputation
            .multiplier_at(now, self.config.reputation_half_life)
    }

    /// This node's own fee at `now`, milli-tokens per MB:
    /// `tokens_per_mb × 1000 × multiplier / 1000`.
    pub fn own_fee(&self, now: Timestamp) -> u64 {
        self.config
            .tokens_per_mb
            .saturating_mul(self.own_multiplier(now))
    }

    /// `price(D)` through `downstream`, in milli-tokens per MB, to carry traffic to
    /// `destination`: the lower of the price its latest statement gave
    /// ([`Ledger::set_price`]) and the price its latest route advertisement gave
    /// ([`Ledger::set_advertised_price`]), or whichever of the two is known. Zero when
    /// `downstream` is the destination (receiving is free); `None` when it has given
    /// neither.
    pub fn price(&self, downstream: &NodeId, destination: &NodeId) -> Option<u64> {
        if downstream == destination {
            return Some(0);
        }
        self.prices.get(downstream)?.get(destination)?.effective()
    }

    /// The price `downstream`'s latest statement gave for `destination`, if any.
    pub fn stated_price(&self, downstream: &NodeId, destination: &NodeId) -> Option<u64> {
        self.prices.get(downstream)?.get(destination)?.stated
    }

    /// The price `downstream`'s latest route advertisement gave for `destination`, if any.
    pub fn advertised_price(&self, downstream: &NodeId, destination: &NodeId) -> Option<u64> {
        self.prices.get(downstream)?.get(destination)?.advertised
    }

    /// What this node advertises upstream for `destination` through `downstream`:
    /// `price(D) + own fee`, milli-tokens per MB. Zero for this node itself.
    pub fn quote(&self, now: Timestamp, downstream: &NodeId, destination: &NodeId) -> Option<u64> {
        if *destination == self.me {
            return Some(0);
        }
        Some(
            self.price(downstream, destination)?
                .saturating_add(self.own_fee(now)),
        )
    }

    /// A neighbour's payment threshold `Pₙ = min(P, P_new + paid)` in milli-tokens, where
    /// `paid` is what has been paid on the link in the direction asked.
    fn threshold(&self, paid: u64) -> u64 {
        self.config
            .new_neighbour_threshold
            .saturating_add(paid)
            .min(self.config.payment_threshold)
    }

    /// `neighbour`'s standing at `now`, from what it owes this node unpaid (`u`) against
    /// its threshold `Pₙ = min(P, P_new + tokens_earned)`: `Ok` if `u < Pₙ`, `Settle` if
    /// `Pₙ ≤ u ≤ 1.25 Pₙ` (or above it for less than `throttle_grace`), `Throttle` once
    /// `u > 1.25 Pₙ` has held for `throttle_grace`, `CutOff` once `u > 10 Pₙ` has held for
    /// `cutoff_grace`. A neighbour with no account is `Ok`.
    pub fn standing(&self, now: Timestamp, neighbour: &NodeId) -> Standing {
        let Some(account) = self.accounts.get(neighbour) else {
            return Standing::Ok;
        };
        let unpaid = u128::from(account.unpaid_by_neighbour());
        let limit = u128::from(self.threshold(account.tokens_earned));
        let held = |since: Option<Timestamp>, grace| {
            since.is_some_and(|since| now.saturating_duration_since(since) >= grace)
        };
        if unpaid > 10 * limit && held(account.over_cutoff_since, self.config.cutoff_grace) {
            Standing::CutOff
        } else if 4 * unpaid > 5 * limit {
            if held(account.over_throttle_since, self.config.throttle_grace) {
                Standing::Throttle
            } else {
                Standing::Settle
            }
        } else if unpaid >= limit {
            Standing::Settle
        } else {
            Standing::Ok
        }
    }

    // ---- inputs ----

    /// Records the price, milli-tokens per MB, that `neighbour` stated for carrying traffic
    /// to `destination` (from its [`Statement`](crate::ledger::Statement)), replacing the
    /// one it stated before. See [`Ledger::price`] for how it combines with the advertised
    /// price.
    pub fn set_price(
        &mut self,
        neighbour: NodeId,
        destination: NodeId,
        price_per_mb: u64,
    ) -> Result<(), LedgerError> {
        self.price_entry(neighbour, destination)?.stated = Some(price_per_mb);
        Ok(())
    }

    /// Records the price, milli-tokens per MB, that `neighbour` advertised for carrying
    /// traffic to `destination` (from its route advertisement), replacing the one it
    /// advertised before. From now on `neighbour` is paid at most this for the bytes its
    /// statements confirm, whatever they state ([`Ledger::price`]).
    pub fn set_advertised_price(
        &mut self,
        neighbour: NodeId,
        destination: NodeId,
        price_per_mb: u64,
    ) -> Result<(), LedgerError> {
        self.price_entry(neighbour, destination)?.advertised = Some(price_per_mb);
        Ok(())
    }

    /// The price entry for `(neighbour, destination)`, made if there is room.
    fn price_entry(
        &mut self,
        neighbour: NodeId,
        destination: NodeId,
    ) -> Result<&mut Price, LedgerError> {
        if neighbour == self.me {
            return Err(LedgerError::OwnNode);
        }
        if !self.prices.contains_key(&neighbour) && self.prices.len() >= self.config.max_accounts {
            return Err(LedgerError::TooManyAccounts);
        }
        let table = self.prices.entry(neighbour).or_default();
        if !table.contains_key(&destination) && table.len() >= self.config.max_prices_per_neighbour
        {
            return Err(LedgerError::TooManyPrices(neighbour));
        }
        Ok(table.entry(destination).or_default())
    }

    /// Changes the terms at run time (settings `tokens_per_mb`, `payment_threshold`,
    /// `new_neighbour_threshold`): the fee applies to forwards recorded from now on, the
    /// thresholds to the next standing and payment decisions. Nothing recorded changes.
    /// `new_neighbour_threshold` is kept at most `payment_threshold`.
    pub fn set_terms(
        &mut self,
        tokens_per_mb: u64,
        payment_threshold: u64,
        new_neighbour_threshold: u64,
    ) {
        self.config.tokens_per_mb = tokens_per_mb;
        self.config.payment_threshold = payment_threshold;
        self.config.new_neighbour_threshold = new_neighbour_threshold.min(payment_threshold);
    }

    /// Forgets every price `neighbour` stated or advertised (its link went down).
    pub fn forget_prices(&mut self, neighbour: &NodeId) {
        self.prices.remove(neighbour);
    }

    /// Charges for `bytes` of one flow to `destination` that this node took from
    /// `upstream` (`None`: this node originated them) and handed to `downstream` (`None`:
    /// this node is the destination).
    ///
    /// `upstream` is charged `price(D) + own fee` per MB (nothing if this node is the
    /// destination) and this node owes `downstream` `price(D)` per MB; see
    /// [`Ledger::quote`]. **Only count bytes that passed the link's authentication** —
    /// bytes that arrived authenticated from `upstream` and were actually handed to
    /// `downstream`'s link; the ledger cannot tell and charges what it is told.
    pub fn record_forwarded(
        &mut self,
        now: Timestamp,
        upstream: Option<NodeId>,
        downstream: Option<NodeId>,
        destination: NodeId,
        bytes: u64,
    ) -> Result<Forwarded, LedgerError> {
        if upstream == Some(self.me) || downstream == Some(self.me) {
            return Err(LedgerError::OwnNode);
        }
        let owed_per_mb = match downstream {
            Some(d) => self
                .price(&d, &destination)
                .ok_or(LedgerError::UnknownPrice {
                    neighbour: d,
                    destination,
                })?,
            None if destination == self.me => 0,
            None => return Err(LedgerError::NotDestination),
        };
        let charged_per_mb = match (upstream, downstream) {
            (Some(_), Some(_)) => owed_per_mb.saturating_add(self.own_fee(now)),
            _ => 0,
        };
        let mut new_accounts = 0;
        if upstream.is_some_and(|u| !self.accounts.contains_key(&u)) {
            new_accounts += 1;
        }
        if downstream.is_some_and(|d| upstream != Some(d) && !self.accounts.contains_key(&d)) {
            new_accounts += 1;
        }
        if self.accounts.len() + new_accounts > self.config.max_accounts {
            return Err(LedgerError::TooManyAccounts);
        }
        self.refill_pool(now);
        if let Some(u) = upstream {
            let account = self
                .accounts
                .entry(u)
                .or_insert_with(|| Account::new(u, now));
            account.receivable_micro = account
                .receivable_micro
                .saturating_add(u128::from(bytes) * u128::from(charged_per_mb));
            account.bytes_relayed = account.bytes_relayed.saturating_add(bytes);
            self.update_cutoff_clock(now, &u);
        }
        if let Some(d) = downstream {
            let grant = self.config.free_allowance.min(self.allowance_pool);
            let account = self
                .accounts
                .entry(d)
                .or_insert_with(|| Account::new(d, now));
            if account.allowance.is_none() && owed_per_mb > 0 && bytes > 0 {
                account.allowance = Some(grant);
                self.allowance_pool -= grant;
            }
            account.payable_micro = account
                .payable_micro
                .saturating_add(u128::from(bytes) * u128::from(owed_per_mb));
            account.bytes_consumed = account.bytes_consumed.saturating_add(bytes);
        }
        Ok(Forwarded {
            charged_per_mb,
            owed_per_mb,
        })
    }

    /// The upstream half of [`Ledger::record_forwarded`]: charges `upstream` for `bytes` to
    /// `destination` that this node took from it and handed to `downstream`, at
    /// `price(D) + own fee` per MB, and counts them as relayed for it; books nothing
    /// towards `downstream`. For a driver that books what it owes `downstream` only when
    /// `downstream` confirms having carried the bytes (`record_forwarded(now, None,
    /// Some(downstream), …)`), as [`Bookkeeper`](crate::ledger::Bookkeeper) does. The same
    /// duty applies: only authenticated bytes actually handed on.
    pub fn record_carried(
        &mut self,
        now: Timestamp,
        upstream: NodeId,
        downstream: NodeId,
        destination: NodeId,
        bytes: u64,
    ) -> Result<Forwarded, LedgerError> {
        if upstream == self.me || downstream == self.me {
            return Err(LedgerError::OwnNode);
        }
        let price = self
            .price(&downstream, &destination)
            .ok_or(LedgerError::UnknownPrice {
                neighbour: downstream,
                destination,
            })?;
        let charged_per_mb = price.saturating_add(self.own_fee(now));
        if !self.accounts.contains_key(&upstream) && self.accounts.len() >= self.config.max_accounts
        {
            return Err(LedgerError::TooManyAccounts);
        }
        let account = self
            .accounts
            .entry(upstream)
            .or_insert_with(|| Account::new(upstream, now));
        account.receivable_micro = account
            .receivable_micro
            .saturating_add(u128::from(bytes) * u128::from(charged_per_mb));
        account.bytes_relayed = account.bytes_relayed.saturating_add(bytes);
        self.update_cutoff_clock(now, &upstream);
        Ok(Forwarded {
            charged_per_mb,
            owed_per_mb: 0,
        })
    }

    /// Checks and books an IOU that arrived from neighbour `from`.
    ///
    /// Rules, in order: the IOU must be on the link `from → this node` (`WrongLink`); its
    /// signature must verify against `from`'s key (`BadSignature`); against the latest
    /// accepted IOU from `from`, an older epoch is `Regressed`, in the same epoch a
    /// sequence number not above the latest is `Replayed` and a higher one with fewer
    /// bytes or a smaller amount is `Regressed`. A newer epoch starts its cumulative
    /// counters at zero (what the old epoch paid is kept). `tokens_earned` becomes
    /// (paid before this epoch) + `cumulative_amount`.
    pub fn accept_iou(
        &mut self,
        now: Timestamp,
        from: NodeId,
        iou: &Iou,
    ) -> Result<Accepted, IouError> {
        let link = IouLink {
            payer: from,
            payee: self.me,
        };
        if iou.link != link {
            return Err(IouError::WrongLink);
        }
        iou.verify().map_err(|_| IouError::BadSignature)?;
        if !self.accounts.contains_key(&from) && self.accounts.len() >= self.config.max_accounts {
            return Err(IouError::TooManyAccounts);
        }
        let existing = self.accounts.get(&from);
        let (earned_before, previous_earned) =
            match existing.and_then(|a| a.latest_received.as_ref().map(|l| (a, l))) {
                None => (
                    existing.map_or(0, |a| a.tokens_earned),
                    existing.map_or(0, |a| a.tokens_earned),
                ),
                Some((account, latest)) => {
                    if iou.epoch < latest.epoch {
                        return Err(IouError::Regressed);
                    }
                    if iou.epoch == latest.epoch {
                        if iou.seq <= latest.seq {
                            return Err(IouError::Replayed);
                        }
                        if iou.cumulative_amount < latest.cumulative_amount
                            || iou.cumulative_bytes < latest.cumulative_bytes
                        {
                            return Err(IouError::Regressed);
                        }
                        (account.earned_before_epoch, account.tokens_earned)
                    } else {
                        (account.tokens_earned, account.tokens_earned)
                    }
                }
            };
        let tokens_earned = earned_before
            .checked_add(iou.cumulative_amount)
            .ok_or(IouError::Overflow)?;
        let account = self
            .accounts
            .entry(from)
            .or_insert_with(|| Account::new(from, now));
        account.earned_before_epoch = earned_before;
        account.tokens_earned = tokens_earned;
        account.latest_received = Some(iou.clone());
        self.update_cutoff_clock(now, &from);
        Ok(Accepted {
            newly_credited: tokens_earned - previous_earned,
            tokens_earned,
        })
    }

    /// Records whether traffic handed to `node` was delivered end to end (from
    /// acknowledgements or probes). For this node itself it moves its own fee multiplier.
    pub fn record_delivery(
        &mut self,
        now: Timestamp,
        node: NodeId,
        delivered: bool,
    ) -> Result<(), LedgerError> {
        let half_life = self.config.reputation_half_life;
        if node == self.me {
            self.own_reputation.record(now, half_life, delivered);
            return Ok(());
        }
        if !self.accounts.contains_key(&node) && self.accounts.len() >= self.config.max_accounts {
            return Err(LedgerError::TooManyAccounts);
        }
        self.accounts
            .entry(node)
            .or_insert_with(|| Account::new(node, now))
            .reputation
            .record(now, half_life, delivered);
        Ok(())
    }

    /// Asks for an IOU covering everything owed to `neighbour` at the next
    /// [`Ledger::poll_transmit`], below the threshold too (before closing a link).
    pub fn request_settlement(&mut self, neighbour: NodeId) {
        if self.accounts.contains_key(&neighbour) {
            self.settle_requested.insert(neighbour, ());
        }
    }

    // ---- outputs ----

    /// The next IOU to send, and to whom: to the first neighbour (in id order) this node
    /// owes at least `Pₙ = min(P, P_new + tokens_spent)` unpaid, or anything after
    /// [`Ledger::request_settlement`]. New neighbours (small `tokens_spent`) so get paid
    /// more often — every `P_new` at first — and established ones every `P`. The IOU's
    /// totals are this epoch's: `payable − spent before the epoch`.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Iou)> {
        let neighbour = self.accounts.values().find_map(|a| {
            let owed = a.unpaid_to_neighbour();
            let requested = self.settle_requested.contains_key(&a.neighbour);
            (owed > 0 && (requested || owed >= self.threshold(a.tokens_spent)))
                .then_some(a.neighbour)
        })?;
        self.settle_requested.remove(&neighbour);
        let epoch = self.config.epoch;
        let account = self.accounts.get_mut(&neighbour)?;
        let seq = match &account.latest_sent {
            Some(latest) if latest.epoch == epoch => latest.seq + 1,
            Some(_) => {
                account.spent_before_epoch = (account.tokens_spent, account.bytes_paid());
                1
            }
            None => 1,
        };
        let payable = account.payable();
        let bytes = account.bytes_consumed;
        let iou = Iou::sign(
            &self.keypair,
            neighbour,
            epoch,
            seq,
            bytes.saturating_sub(account.spent_before_epoch.1),
            payable.saturating_sub(account.spent_before_epoch.0),
        );
        account.tokens_spent = payable;
        account.latest_sent = Some(iou.clone());
        Some((neighbour, iou))
    }

    fn refill_pool(&mut self, now: Timestamp) {
        let elapsed = u128::from(
            now.as_millis()
                .saturating_sub(self.allowance_pool_as_of.as_millis()),
        );
        let added = elapsed * u128::from(self.config.allowance_refill_per_hour) / HOUR_MS;
        if added > 0 || self.allowance_pool >= self.config.allowance_pool_max {
            let added = u64::try_from(added).unwrap_or(u64::MAX);
            self.allowance_pool = self
                .allowance_pool
                .saturating_add(added)
                .min(self.config.allowance_pool_max);
            self.allowance_pool_as_of = now.max(self.allowance_pool_as_of);
        }
    }

    fn update_cutoff_clock(&mut self, now: Timestamp, neighbour: &NodeId) {
        let Some(account) = self.accounts.get(neighbour) else {
            return;
        };
        let unpaid = u128::from(account.unpaid_by_neighbour());
        let limit = u128::from(self.threshold(account.tokens_earned));
        let clock = |over: bool, since: Option<Timestamp>| match (over, since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(now),
            (false, _) => None,
        };
        let cutoff = clock(unpaid > 10 * limit, account.over_cutoff_since);
        let throttle = clock(4 * unpaid > 5 * limit, account.over_throttle_since);
        if let Some(account) = self.accounts.get_mut(neighbour) {
            account.over_cutoff_since = cutoff;
            account.over_throttle_since = throttle;
        }
    }
}

impl Account {
    /// Bytes covered by signed IOUs: those of the latest sent IOU plus earlier epochs'.
    fn bytes_paid(&self) -> u64 {
        self.latest_sent.as_ref().map_or(0, |iou| {
            self.spent_before_epoch
                .1
                .saturating_add(iou.cumulative_bytes)
        })
    }
}
