//! The relay ledger in the daemon: the routing driver keeps a
//! [`meshcore_proto::ledger::Bookkeeper`] (the sans-IO ledger and its neighbour
//! conversation); this module turns its state into the store's rows and back, writes them
//! from a task of its own, and shapes what `GET tokens` shows.
//!
//! Persistence: after a change (an IOU signed or accepted, a forward booked) the driver
//! hands a snapshot to the writer at most once per [`LEDGER_PERSIST_INTERVAL`], and once
//! more at shutdown; the writer saves it in one transaction ([`Store::save_ledger`]). At
//! start the stored ledger is restored (every stored IOU verified again) with a new epoch,
//! later than any stored one, so IOUs signed after a restart never collide with earlier
//! ones.

use std::time::Duration;

use meshcore_proto::dht::Timestamp;
use meshcore_proto::ledger::{
    Account, Bookkeeper, Iou, Ledger, LedgerSnapshot, Reputation, Standing, MILLI_PER_TOKEN,
};
use meshcore_proto::NodeId;
use meshcore_store::{LedgerAccountRow, LedgerIouRow, LedgerRows, LedgerStateRow, Store};
use serde::Serialize;
use tokio::sync::mpsc;

/// Least time between two writes of the ledger to the store.
pub const LEDGER_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// What the routing driver needs for the ledger at start (settings `tokens_per_mb`,
/// `payment_threshold`, `new_neighbour_threshold`, `token_rate`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LedgerTerms {
    /// Base relay fee, whole tokens per MB.
    pub tokens_per_mb: u64,
    /// The payment threshold P, whole tokens.
    pub payment_threshold: u64,
    /// The threshold a new neighbour starts with, whole tokens.
    pub new_neighbour_threshold: u64,
    /// Setting `token_rate`: tokens per unit of the operator's exchange currency (above 0).
    /// Used only to show the balance in that unit; the ledger itself counts tokens.
    pub token_rate: f64,
}

impl Default for LedgerTerms {
    fn default() -> Self {
        Self {
            tokens_per_mb: 100,
            payment_threshold: 100,
            new_neighbour_threshold: 10,
            token_rate: 100.0,
        }
    }
}

impl LedgerTerms {
    /// The thresholds in milli-tokens.
    pub(crate) fn thresholds_milli(&self) -> (u64, u64) {
        (
            self.payment_threshold.saturating_mul(MILLI_PER_TOKEN),
            self.new_neighbour_threshold.saturating_mul(MILLI_PER_TOKEN),
        )
    }
}

/// One signed IOU, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct IouInfo {
    /// The node that owes and signed.
    pub payer: String,
    /// The node that is owed.
    pub payee: String,
    /// The payer's epoch.
    pub epoch: u64,
    /// The payer's sequence number in the epoch.
    pub seq: u64,
    /// Bytes paid for in the epoch, in total.
    pub cumulative_bytes: u64,
    /// Milli-tokens owed in the epoch, in total.
    pub cumulative_amount: u64,
    /// The whole signed IOU (160 bytes), hex: anyone can check it against the payer's key.
    pub encoded: String,
}

impl IouInfo {
    fn of(iou: &Iou) -> Self {
        Self {
            payer: iou.link.payer.to_hex(),
            payee: iou.link.payee.to_hex(),
            epoch: iou.epoch,
            seq: iou.seq,
            cumulative_bytes: iou.cumulative_bytes,
            cumulative_amount: iou.cumulative_amount,
            encoded: hex::encode(iou.encode()),
        }
    }
}

/// This node's account with one neighbour. Amounts are milli-tokens (1 token = 1000).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct NeighbourAccount {
    /// The neighbour.
    pub node_id: String,
    /// Paid to this node by the neighbour (its signed IOUs).
    pub tokens_earned: u64,
    /// Paid by this node to the neighbour (IOUs this node signed).
    pub tokens_spent: u64,
    /// Charged to the neighbour so far.
    pub receivable: u64,
    /// Charged by the neighbour so far.
    pub payable: u64,
    /// Credit: charged to the neighbour and not yet paid by an IOU.
    pub credit: u64,
    /// Debt: charged by the neighbour and not yet paid by an IOU.
    pub debt: u64,
    /// Bytes this node carried for the neighbour.
    pub bytes_relayed: u64,
    /// Bytes the neighbour carried for this node.
    pub bytes_consumed: u64,
    /// The neighbour's standing: `ok`, `settle`, `throttle` or `cut_off`.
    pub standing: String,
    /// The fee multiplier of the neighbour's reputation here (1.0 to 1.5).
    pub reputation_multiplier: f64,
    /// The free allowance issued for paying this neighbour, if any.
    pub allowance: Option<u64>,
    /// The latest IOU accepted from the neighbour.
    pub latest_iou_received: Option<IouInfo>,
    /// The latest IOU signed to the neighbour.
    pub latest_iou_sent: Option<IouInfo>,
}

/// The node's tokens, as `GET tokens` shows them. Amounts are milli-tokens (1 token =
/// 1000); prices are milli-tokens per MB (10⁶ bytes).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TokensInfo {
    /// This node.
    pub node_id: String,
    /// Earned − spent + free allowance used. Tokens are transferred, never minted: the
    /// allowance is the only source.
    pub balance: i64,
    /// Paid to this node by all neighbours.
    pub earned: u64,
    /// Paid by this node to all neighbours.
    pub spent: u64,
    /// Free allowance used (the tokens this node has issued).
    pub allowance_used: u64,
    /// Free allowance left in the pool.
    pub allowance_pool: u64,
    /// This node's relay fee now: `tokens_per_mb` × its reputation multiplier.
    pub fee_per_mb: u64,
    /// Its reputation multiplier (1.0 to 1.5).
    pub multiplier: f64,
    /// Setting `tokens_per_mb` (whole tokens).
    pub tokens_per_mb: u64,
    /// The payment threshold P.
    pub payment_threshold: u64,
    /// The threshold a new neighbour starts with.
    pub new_neighbour_threshold: u64,
    /// Setting `token_rate`: tokens per unit of the operator's exchange currency.
    pub token_rate: f64,
    /// The balance in that unit: `balance / 1000 / token_rate` (the balance is in
    /// milli-tokens).
    pub balance_value: f64,
    /// The epoch this node signs IOUs in (a start time, Unix milliseconds).
    pub epoch: u64,
    /// Bytes this node relayed whose charge waits for the next hop's first statement.
    pub unpriced_bytes: u64,
    /// Bytes this node handed to next hops that their statements do not cover yet: owed
    /// only once covered (never, for packets a relay refused or dropped).
    pub unconfirmed_bytes: u64,
    /// Bytes next hops' statements claimed beyond what this node had handed them, since
    /// start: not paid for (a next hop that inflates its count shows here).
    pub bytes_overclaimed: u64,
    /// IOUs signed for neighbours since start.
    pub ious_sent: u64,
    /// IOUs accepted from neighbours since start.
    pub ious_accepted: u64,
    /// IOUs refused (forged, replayed, regressed) since start.
    pub ious_refused: u64,
    /// One account per neighbour, by node id.
    pub neighbours: Vec<NeighbourAccount>,
}

fn standing_name(standing: Standing) -> &'static str {
    match standing {
        Standing::Ok => "ok",
        Standing::Settle => "settle",
        Standing::Throttle => "throttle",
        Standing::CutOff => "cut_off",
    }
}

/// What `GET tokens` shows of `book` at `now`.
pub(crate) fn tokens_info(book: &Bookkeeper, now: Timestamp, token_rate: f64) -> TokensInfo {
    let ledger = book.ledger();
    let counters = book.counters();
    let config = ledger.config();
    let half_life = config.reputation_half_life;
    let per_mille = |m: u64| m as f64 / 1000.0;
    let (earned, spent) = ledger.accounts().fold((0u64, 0u64), |(e, s), a| {
        (
            e.saturating_add(a.tokens_earned),
            s.saturating_add(a.tokens_spent),
        )
    });
    let balance = i64::try_from(ledger.balance()).unwrap_or(i64::MAX);
    TokensInfo {
        node_id: ledger.node_id().to_hex(),
        balance,
        earned,
        spent,
        allowance_used: ledger.allowance_used(),
        allowance_pool: ledger.allowance_pool(),
        fee_per_mb: ledger.own_fee(now),
        multiplier: per_mille(ledger.own_multiplier(now)),
        tokens_per_mb: config.tokens_per_mb,
        payment_threshold: config.payment_threshold,
        new_neighbour_threshold: config.new_neighbour_threshold,
        token_rate,
        balance_value: balance as f64 / 1000.0 / token_rate,
        epoch: config.epoch,
        unpriced_bytes: book.unpriced_bytes(),
        unconfirmed_bytes: book.unconfirmed_bytes(),
        bytes_overclaimed: book.counters().bytes_overclaimed,
        ious_sent: counters.ious_sent,
        ious_accepted: counters.ious_accepted,
        ious_refused: counters.ious_refused,
        neighbours: ledger
            .accounts()
            .map(|account| NeighbourAccount {
                node_id: account.neighbour.to_hex(),
                tokens_earned: account.tokens_earned,
                tokens_spent: account.tokens_spent,
                receivable: account.receivable(),
                payable: account.payable(),
                credit: account.unpaid_by_neighbour(),
                debt: account.unpaid_to_neighbour(),
                bytes_relayed: account.bytes_relayed,
                bytes_consumed: account.bytes_consumed,
                standing: standing_name(ledger.standing(now, &account.neighbour)).to_owned(),
                reputation_multiplier: per_mille(account.reputation.multiplier_at(now, half_life)),
                allowance: account.allowance,
                latest_iou_received: account.latest_received.as_ref().map(IouInfo::of),
                latest_iou_sent: account.latest_sent.as_ref().map(IouInfo::of),
            })
            .collect(),
    }
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The rows that persist `ledger` (its snapshot, epoch and reputation multipliers at `now`).
pub(crate) fn rows_of(ledger: &Ledger, now: Timestamp) -> LedgerRows {
    let snapshot = ledger.snapshot();
    let half_life = ledger.config().reputation_half_life;
    let mut ious = Vec::new();
    let accounts = snapshot
        .accounts
        .iter()
        .map(|account| {
            let neighbour_id = account.neighbour.to_hex();
            for (direction, iou) in [
                ("received", &account.latest_received),
                ("sent", &account.latest_sent),
            ] {
                if let Some(iou) = iou {
                    ious.push(LedgerIouRow {
                        neighbour_id: neighbour_id.clone(),
                        direction: direction.to_owned(),
                        epoch: signed(iou.epoch),
                        seq: signed(iou.seq),
                        cumulative_bytes: signed(iou.cumulative_bytes),
                        cumulative_amount_milli: signed(iou.cumulative_amount),
                        iou: iou.encode().to_vec(),
                    });
                }
            }
            LedgerAccountRow {
                neighbour_id,
                tokens_earned_milli: signed(account.tokens_earned),
                tokens_spent_milli: signed(account.tokens_spent),
                bytes_relayed: signed(account.bytes_relayed),
                bytes_consumed: signed(account.bytes_consumed),
                reputation_score: i64::from(account.reputation.score),
                reputation_as_of_ms: signed(account.reputation.as_of.as_millis()),
                reputation_modifier: account.reputation.multiplier_at(now, half_life) as f64
                    / 1000.0,
                receivable_micro: account.receivable_micro.to_string(),
                payable_micro: account.payable_micro.to_string(),
                allowance_milli: account.allowance.map(signed),
                earned_before_epoch_milli: signed(account.earned_before_epoch),
                spent_before_epoch_milli: signed(account.spent_before_epoch.0),
                spent_before_epoch_bytes: signed(account.spent_before_epoch.1),
                over_cutoff_since_ms: account
                    .over_cutoff_since
                    .map(|since| signed(since.as_millis())),
            }
        })
        .collect();
    LedgerRows {
        state: Some(LedgerStateRow {
            epoch: signed(ledger.config().epoch),
            allowance_pool_milli: signed(snapshot.allowance_pool),
            allowance_pool_as_of_ms: signed(snapshot.allowance_pool_as_of.as_millis()),
            own_reputation_score: i64::from(snapshot.own_reputation.score),
            own_reputation_as_of_ms: signed(snapshot.own_reputation.as_of.as_millis()),
        }),
        accounts,
        ious,
    }
}

/// The snapshot and the epoch stored in `rows`, or `None` when nothing was stored. An
/// unreadable row is an error naming it (the caller starts afresh and logs it).
pub(crate) fn snapshot_of(rows: &LedgerRows) -> Result<Option<(LedgerSnapshot, u64)>, String> {
    let Some(state) = rows.state else {
        return Ok(None);
    };
    let mut accounts = Vec::with_capacity(rows.accounts.len());
    for row in &rows.accounts {
        let neighbour: NodeId = row
            .neighbour_id
            .parse()
            .map_err(|error| format!("account {:?}: {error}", row.neighbour_id))?;
        let iou = |direction: &str| -> Result<Option<Iou>, String> {
            rows.ious
                .iter()
                .find(|iou| iou.neighbour_id == row.neighbour_id && iou.direction == direction)
                .map(|iou| {
                    Iou::decode(&iou.iou).map_err(|error| {
                        format!("{direction} IOU of {:?}: {error}", row.neighbour_id)
                    })
                })
                .transpose()
        };
        let micro = |text: &str| -> Result<u128, String> {
            text.parse()
                .map_err(|_| format!("account {:?}: bad amount {text:?}", row.neighbour_id))
        };
        accounts.push(Account {
            neighbour,
            tokens_earned: unsigned(row.tokens_earned_milli),
            tokens_spent: unsigned(row.tokens_spent_milli),
            bytes_relayed: unsigned(row.bytes_relayed),
            bytes_consumed: unsigned(row.bytes_consumed),
            reputation: Reputation {
                score: u16::try_from(row.reputation_score.clamp(0, 1000)).unwrap_or(0),
                as_of: Timestamp::from_millis(unsigned(row.reputation_as_of_ms)),
            },
            receivable_micro: micro(&row.receivable_micro)?,
            payable_micro: micro(&row.payable_micro)?,
            allowance: row.allowance_milli.map(unsigned),
            latest_received: iou("received")?,
            earned_before_epoch: unsigned(row.earned_before_epoch_milli),
            latest_sent: iou("sent")?,
            spent_before_epoch: (
                unsigned(row.spent_before_epoch_milli),
                unsigned(row.spent_before_epoch_bytes),
            ),
            over_cutoff_since: row
                .over_cutoff_since_ms
                .map(|ms| Timestamp::from_millis(unsigned(ms))),
            over_throttle_since: None,
        });
    }
    Ok(Some((
        LedgerSnapshot {
            allowance_pool: unsigned(state.allowance_pool_milli),
            allowance_pool_as_of: Timestamp::from_millis(unsigned(state.allowance_pool_as_of_ms)),
            own_reputation: Reputation {
                score: u16::try_from(state.own_reputation_score.clamp(0, 1000)).unwrap_or(0),
                as_of: Timestamp::from_millis(unsigned(state.own_reputation_as_of_ms)),
            },
            accounts,
        },
        unsigned(state.epoch),
    )))
}

/// Writes every ledger handed to it, one transaction each.
pub(crate) async fn writer(store: Store, mut ledgers: mpsc::Receiver<LedgerRows>) {
    while let Some(rows) = ledgers.recv().await {
        let now = i64::try_from(crate::clock::unix_millis() / 1000).unwrap_or(i64::MAX);
        if let Err(error) = store.save_ledger(&rows, now).await {
            tracing::warn!(%error, "could not store the ledger");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcore_proto::ledger::LedgerConfig;
    use meshcore_proto::NodeKeypair;
    use rand_chacha::rand_core::SeedableRng;

    fn keys(seed: u64) -> NodeKeypair {
        NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    #[tokio::test]
    async fn a_ledger_survives_the_store_exactly() {
        let t = |ms: u64| Timestamp::from_millis(1_700_000_000_000 + ms);
        let mut config = LedgerConfig::new();
        config.epoch = 1_700_000_000_000;
        let (a, b, c) = (keys(1), keys(2), keys(3));
        let (b_id, c_id) = (b.node_id(), c.node_id());
        let mut ledger = Ledger::new(keys(1), config.clone(), t(0));
        // a sends 1 MB through b to c, pays b, and accepts an IOU from c.
        ledger.set_price(b_id, c_id, 100_000).expect("price");
        ledger
            .record_forwarded(t(1), None, Some(b_id), c_id, 1_000_000)
            .expect("recorded");
        while ledger.poll_transmit().is_some() {}
        let from_c = Iou::sign(&c, a.node_id(), 5, 1, 10, 1234);
        ledger.accept_iou(t(3), c_id, &from_c).expect("accepted");
        ledger
            .record_delivery(t(4), b_id, true)
            .expect("reputation");

        let store = Store::open_in_memory().await.expect("store");
        store
            .save_ledger(&rows_of(&ledger, t(5)), 1)
            .await
            .expect("saved");
        let (snapshot, epoch) = snapshot_of(&store.load_ledger().await.expect("loaded"))
            .expect("readable")
            .expect("stored");
        assert_eq!(snapshot, ledger.snapshot());
        assert_eq!(epoch, config.epoch);
        let restored = Ledger::restore(keys(1), config, snapshot).expect("restores");
        assert_eq!(restored.balance(), ledger.balance());
        let info = tokens_info(&Bookkeeper::new(restored), t(6), 4.0);
        let at_b = info
            .neighbours
            .iter()
            .find(|n| n.node_id == b_id.to_hex())
            .expect("b");
        assert_eq!((at_b.tokens_spent, at_b.debt), (100_000, 0));
        assert!(at_b.reputation_multiplier > 1.0);
        let sent = at_b.latest_iou_sent.as_ref().expect("an IOU to b");
        assert_eq!(sent.cumulative_amount, 100_000);
        assert_eq!(sent.encoded.len(), 2 * meshcore_proto::ledger::IOU_LEN);
        assert_eq!(info.earned, 1234);
        assert_eq!(i128::from(info.balance), ledger.balance());
        assert_eq!(info.token_rate, 4.0);
        assert_eq!(info.balance_value, info.balance as f64 / 1000.0 / 4.0);
        assert!(snapshot_of(&LedgerRows::default())
            .expect("empty is fine")
            .is_none());
    }
}
