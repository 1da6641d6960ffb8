//! [`Bookkeeper`]: the [`Ledger`]'s run loop as a sans-IO machine — what a node tells its
//! neighbours about prices, carried bytes and payments as packets pass, so that both ends of
//! every link book the same charges for the same bytes, and a relay is paid only for what
//! it forwarded.
//!
//! # Rules
//!
//! - **A relay charges for what it forwards.** When this node hands on bytes it took from
//!   neighbour `U` towards destination `D` through next hop `d`, it charges `U` its quote
//!   ([`Ledger::quote`]: `price(D)` through `d` plus its own fee) with
//!   [`Ledger::record_carried`], and adds the bytes to what it has carried for `U` towards
//!   `D`. If `price(D)` through `d` is not known yet (neither a [`Statement`] nor a route
//!   advertisement from `d` so far), the bytes wait and are charged when one comes.
//! - **Advertised prices.** The driver passes on every price a neighbour advertised with a
//!   route ([`Bookkeeper::price_advertised`]; the router's
//!   [`advertised_price`](crate::route::Router::advertised_price)). `price(D)` through `d`
//!   is the lower of the price `d` last stated and the price it last advertised, or
//!   whichever is known ([`Ledger::price`]), so bytes are priced as soon as a route is.
//! - **Statements.** At most every call of [`Bookkeeper::handle_timeout`] (the driver calls
//!   it every 250 ms), and at once before its quote to `U` for `D` changes, this node sends
//!   `U` a [`Statement`]: its quote for `D` and the bytes carried for `U` towards `D` since
//!   the link came up.
//! - **An upstream pays for what was carried.** Bytes this node hands to `d` for a
//!   destination other than `d` are *unconfirmed* until `d`'s statements cover them: a
//!   statement's increase over the previous one (all of it, if the count restarted),
//!   capped at the unconfirmed bytes, is owed to `d` at `min(statement's price, d's
//!   advertised price)` when an advertised price is known, else at the statement's price
//!   ([`Ledger::record_forwarded`] with no upstream). So bytes `d` refused or dropped are
//!   never paid for, `d` cannot claim more than it was given, and a relay that states more
//!   than it advertised is paid only what it advertised. An honest relay states its quote,
//!   which is what it advertises (its route's price plus its fee), so both ends book the
//!   same; an inflating relay's own books then show more than its upstream owes it, and the
//!   upstream's IOUs cover less than it charged — which is the intent. The same holds for
//!   a relay whose fee rose after its last advertisement reached the upstream: until the
//!   next one (a hello for two-hop routes, a discovery for longer ones) it is paid the old
//!   price. Bytes handed to the destination itself cost nothing and are booked at once.
//! - **Payments.** After every input, [`Bookkeeper::poll_transmit`] yields the statements to
//!   send and then the IOUs the ledger wants sent ([`Ledger::poll_transmit`]).
//! - **Links.** When a link goes down, the neighbour's prices, the bytes waiting for them,
//!   its unconfirmed bytes and the carried counts kept for it are forgotten (both ends
//!   restart their counts). At most [`MAX_ENTRIES`] entries of each kind are kept; beyond
//!   it bytes are dropped from the books and counted.
//!
//! Only authenticated bytes may be reported (see [`Ledger::record_forwarded`]): the driver
//! reports frames that arrived on an authenticated link and that it handed to the next
//! hop's link.

use std::collections::{BTreeMap, VecDeque};

use crate::dht::time::Timestamp;
use crate::identity::NodeId;
use crate::ledger::iou::Iou;
use crate::ledger::state::{Accepted, IouError, Ledger, Standing};
use crate::ledger::statement::Statement;

/// Most entries of each kind (bytes waiting for a price, unconfirmed bytes, carried
/// counts, last statements received).
pub const MAX_ENTRIES: usize = 4096;

/// Most statements waiting to be sent.
pub const MAX_OUTBOX: usize = 4096;

/// A message for a neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerMessage {
    /// This node's price for a destination and the bytes it carried there.
    Statement(Statement),
    /// A signed cumulative IOU from this node.
    Iou(Iou),
}

/// Running totals of a [`Bookkeeper`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BookCounters {
    /// Statements queued for neighbours.
    pub statements_sent: u64,
    /// Statements accepted from neighbours.
    pub statements_received: u64,
    /// Statements refused (too many prices from one neighbour or in all).
    pub statements_refused: u64,
    /// Advertised prices recorded ([`Bookkeeper::price_advertised`]).
    pub prices_advertised: u64,
    /// Advertised prices refused (too many prices from one neighbour or in all).
    pub prices_refused: u64,
    /// IOUs signed for neighbours.
    pub ious_sent: u64,
    /// IOUs accepted from neighbours.
    pub ious_accepted: u64,
    /// IOUs refused (forged, replayed, regressed, wrong link).
    pub ious_refused: u64,
    /// Bytes confirmed by downstream statements and so owed.
    pub bytes_confirmed: u64,
    /// Bytes downstream statements claimed beyond what this node had handed over (ignored).
    pub bytes_overclaimed: u64,
    /// Bytes dropped from the books: tables full, or the link went down before they were
    /// priced or confirmed.
    pub bytes_dropped: u64,
    /// Forwards the ledger refused to record (account table full).
    pub record_errors: u64,
}

/// What this node carried for one upstream towards one destination.
#[derive(Debug, Clone, Copy, Default)]
struct Carried {
    bytes: u64,
    reported: u64,
    price: u64,
}

/// The ledger and the conversation around it. See [the module docs](self).
#[derive(Debug)]
pub struct Bookkeeper {
    ledger: Ledger,
    /// `(upstream, downstream, destination)` → bytes to charge once `price(downstream, D)`
    /// is known.
    unpriced: BTreeMap<(NodeId, NodeId, NodeId), u64>,
    /// `(downstream, destination)` → bytes handed over and not yet covered by a statement.
    unconfirmed: BTreeMap<(NodeId, NodeId), u64>,
    /// `(downstream, destination)` → the bytes of the last statement received.
    confirmed: BTreeMap<(NodeId, NodeId), u64>,
    /// `(upstream, destination)` → what this node carried and has reported.
    carried: BTreeMap<(NodeId, NodeId), Carried>,
    outbox: VecDeque<(NodeId, Statement)>,
    changed: bool,
    counters: BookCounters,
}

impl Bookkeeper {
    /// Keeps the books of `ledger`.
    pub fn new(ledger: Ledger) -> Self {
        Self {
            ledger,
            unpriced: BTreeMap::new(),
            unconfirmed: BTreeMap::new(),
            confirmed: BTreeMap::new(),
            carried: BTreeMap::new(),
            outbox: VecDeque::new(),
            changed: false,
            counters: BookCounters::default(),
        }
    }

    // ---- getters ----

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The ledger, to change its terms ([`Ledger::set_terms`]).
    pub fn ledger_mut(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// Running totals.
    pub fn counters(&self) -> &BookCounters {
        &self.counters
    }

    /// `neighbour`'s standing ([`Ledger::standing`]).
    pub fn standing(&self, now: Timestamp, neighbour: &NodeId) -> Standing {
        self.ledger.standing(now, neighbour)
    }

    /// Bytes this node carried whose charge waits for a downstream price.
    pub fn unpriced_bytes(&self) -> u64 {
        sum(self.unpriced.values())
    }

    /// Bytes this node handed on that no downstream statement covers yet (not owed yet).
    pub fn unconfirmed_bytes(&self) -> u64 {
        sum(self.unconfirmed.values())
    }

    /// Whether the ledger changed since the last call (and so should be persisted).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    // ---- inputs ----

    /// `bytes` for `destination` were taken from `upstream` (`None`: originated here) and
    /// handed to `downstream`'s link.
    pub fn forwarded(
        &mut self,
        now: Timestamp,
        upstream: Option<NodeId>,
        downstream: NodeId,
        destination: NodeId,
        bytes: u64,
    ) {
        if downstream == destination {
            // Receiving is free: nothing to confirm.
            self.owe(now, downstream, destination, bytes);
        } else {
            add(
                &mut self.unconfirmed,
                (downstream, destination),
                bytes,
                &mut self.counters.bytes_dropped,
            );
        }
        if let Some(upstream) = upstream {
            if self.ledger.price(&downstream, &destination).is_some() {
                self.charge(now, upstream, downstream, destination, bytes);
            } else {
                add(
                    &mut self.unpriced,
                    (upstream, downstream, destination),
                    bytes,
                    &mut self.counters.bytes_dropped,
                );
            }
        }
    }

    /// The neighbour `from` advertised `price_per_mb` for carrying traffic to
    /// `destination` (its route advertisement, as the router accepted it;
    /// [`Ledger::set_advertised_price`]): bytes this node carried waiting for a price
    /// through `from` are charged now, and from now on `from` is paid at most this price.
    /// Nothing for `from` itself as the destination, whose price is always 0.
    pub fn price_advertised(
        &mut self,
        now: Timestamp,
        from: NodeId,
        destination: NodeId,
        price_per_mb: u64,
    ) {
        if from == destination {
            return;
        }
        if self
            .ledger
            .set_advertised_price(from, destination, price_per_mb)
            .is_err()
        {
            self.counters.prices_refused += 1;
            return;
        }
        self.counters.prices_advertised += 1;
        self.charge_waiting(now, from, destination);
    }

    /// A statement from the downstream neighbour `from`: its price is recorded, bytes this
    /// node carried waiting for it are charged, and what it newly carried for this node is
    /// owed to it — at the lower of the stated and the advertised price
    /// ([`Ledger::price`]).
    pub fn statement_received(&mut self, now: Timestamp, from: NodeId, statement: Statement) {
        let destination = statement.destination;
        if from != destination
            && self
                .ledger
                .set_price(from, destination, statement.price_per_mb)
                .is_err()
        {
            self.counters.statements_refused += 1;
            return;
        }
        self.counters.statements_received += 1;
        self.charge_waiting(now, from, destination);
        let key = (from, destination);
        let previous = self.confirmed.get(&key).copied().unwrap_or(0);
        let added = if statement.bytes >= previous {
            statement.bytes - previous
        } else {
            statement.bytes
        };
        if self.confirmed.contains_key(&key) || self.confirmed.len() < MAX_ENTRIES {
            self.confirmed.insert(key, statement.bytes);
        }
        let open = self.unconfirmed.get(&key).copied().unwrap_or(0);
        let owed = added.min(open);
        self.counters.bytes_overclaimed =
            self.counters.bytes_overclaimed.saturating_add(added - owed);
        if owed > 0 {
            if owed == open {
                self.unconfirmed.remove(&key);
            } else if let Some(left) = self.unconfirmed.get_mut(&key) {
                *left -= owed;
            }
            self.counters.bytes_confirmed = self.counters.bytes_confirmed.saturating_add(owed);
            self.owe(now, from, destination, owed);
        }
    }

    /// An IOU arrived from `from` ([`Ledger::accept_iou`]).
    pub fn iou_received(
        &mut self,
        now: Timestamp,
        from: NodeId,
        iou: &Iou,
    ) -> Result<Accepted, IouError> {
        match self.ledger.accept_iou(now, from, iou) {
            Ok(accepted) => {
                self.counters.ious_accepted += 1;
                self.changed = true;
                Ok(accepted)
            }
            Err(error) => {
                self.counters.ious_refused += 1;
                Err(error)
            }
        }
    }

    /// Whether traffic handed to `node` was delivered end to end
    /// ([`Ledger::record_delivery`]).
    pub fn delivery(&mut self, now: Timestamp, node: NodeId, delivered: bool) {
        if self.ledger.record_delivery(now, node, delivered).is_ok() {
            self.changed = true;
        }
    }

    /// The link to `neighbour` went down.
    pub fn link_down(&mut self, neighbour: &NodeId) {
        self.ledger.forget_prices(neighbour);
        let mut dropped = 0u64;
        self.unpriced.retain(|(_, downstream, _), bytes| {
            let keep = downstream != neighbour;
            if !keep {
                dropped = dropped.saturating_add(*bytes);
            }
            keep
        });
        self.unconfirmed.retain(|(downstream, _), bytes| {
            let keep = downstream != neighbour;
            if !keep {
                dropped = dropped.saturating_add(*bytes);
            }
            keep
        });
        self.counters.bytes_dropped = self.counters.bytes_dropped.saturating_add(dropped);
        self.confirmed
            .retain(|(downstream, _), _| downstream != neighbour);
        self.carried
            .retain(|(upstream, _), _| upstream != neighbour);
        self.outbox.retain(|(to, _)| to != neighbour);
    }

    /// Queues a statement for every upstream this node carried new bytes for.
    pub fn handle_timeout(&mut self, _now: Timestamp) {
        let due: Vec<(NodeId, NodeId)> = self
            .carried
            .iter()
            .filter(|(_, carried)| carried.bytes != carried.reported)
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            self.report(key);
        }
    }

    // ---- outputs ----

    /// The next message to send and to whom: statements first, then IOUs.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, LedgerMessage)> {
        if let Some((to, statement)) = self.outbox.pop_front() {
            return Some((to, LedgerMessage::Statement(statement)));
        }
        let (to, iou) = self.ledger.poll_transmit()?;
        self.counters.ious_sent += 1;
        self.changed = true;
        Some((to, LedgerMessage::Iou(iou)))
    }

    // ---- internals ----

    /// Charges the bytes that waited for a price through `downstream` to `destination`.
    fn charge_waiting(&mut self, now: Timestamp, downstream: NodeId, destination: NodeId) {
        let waiting: Vec<(NodeId, NodeId, NodeId)> = self
            .unpriced
            .keys()
            .filter(|(_, d, dest)| *d == downstream && *dest == destination)
            .copied()
            .collect();
        for key in waiting {
            if let Some(bytes) = self.unpriced.remove(&key) {
                self.charge(now, key.0, key.1, key.2, bytes);
            }
        }
    }

    /// Owes `downstream` for `bytes` it carried (or received) towards `destination`.
    fn owe(&mut self, now: Timestamp, downstream: NodeId, destination: NodeId, bytes: u64) {
        match self
            .ledger
            .record_forwarded(now, None, Some(downstream), destination, bytes)
        {
            Ok(_) => self.changed = true,
            Err(_) => self.counters.record_errors += 1,
        }
    }

    /// Charges `upstream` for `bytes` handed to `downstream` (whose price is known) and
    /// counts them as carried for it.
    fn charge(
        &mut self,
        now: Timestamp,
        upstream: NodeId,
        downstream: NodeId,
        destination: NodeId,
        bytes: u64,
    ) {
        let Some(quote) = self.ledger.quote(now, &downstream, &destination) else {
            return;
        };
        let key = (upstream, destination);
        if !self.carried.contains_key(&key) && self.carried.len() >= MAX_ENTRIES {
            self.counters.bytes_dropped = self.counters.bytes_dropped.saturating_add(bytes);
            return;
        }
        if self
            .ledger
            .record_carried(now, upstream, downstream, destination, bytes)
            .is_err()
        {
            self.counters.record_errors += 1;
            return;
        }
        self.changed = true;
        let carried = self.carried.entry(key).or_default();
        if carried.price != quote && carried.bytes != carried.reported {
            // What was carried at the old price is stated at it before the price moves.
            self.report(key);
        }
        let carried = self.carried.entry(key).or_default();
        carried.price = quote;
        carried.bytes = carried.bytes.saturating_add(bytes);
    }

    fn report(&mut self, key: (NodeId, NodeId)) {
        if self.outbox.len() >= MAX_OUTBOX {
            return;
        }
        let Some(carried) = self.carried.get_mut(&key) else {
            return;
        };
        carried.reported = carried.bytes;
        let statement = Statement {
            destination: key.1,
            price_per_mb: carried.price,
            bytes: carried.bytes,
        };
        self.counters.statements_sent += 1;
        self.outbox.push_back((key.0, statement));
    }
}

fn sum<'a>(values: impl Iterator<Item = &'a u64>) -> u64 {
    values.fold(0, |total, bytes| total.saturating_add(*bytes))
}

/// Adds `bytes` to `map[key]`, unless the map is full of other keys (then counts them in
/// `dropped`).
fn add<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, bytes: u64, dropped: &mut u64) {
    if !map.contains_key(&key) && map.len() >= MAX_ENTRIES {
        *dropped = dropped.saturating_add(bytes);
        return;
    }
    let entry = map.entry(key).or_default();
    *entry = entry.saturating_add(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKeypair;
    use crate::ledger::config::LedgerConfig;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn book(seed: u64) -> Bookkeeper {
        Bookkeeper::new(Ledger::new(
            NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed)),
            LedgerConfig::new(),
            Timestamp::ZERO,
        ))
    }

    fn ids(books: &[Bookkeeper]) -> Vec<NodeId> {
        books.iter().map(|b| b.ledger().node_id()).collect()
    }

    /// Runs every book's timer, then carries every message until none is left.
    fn settle(books: &mut [Bookkeeper], now: Timestamp) {
        for book in books.iter_mut() {
            book.handle_timeout(now);
        }
        loop {
            let mut moved = false;
            for i in 0..books.len() {
                while let Some((to, message)) = books[i].poll_transmit() {
                    moved = true;
                    let from = books[i].ledger().node_id();
                    let j = books
                        .iter()
                        .position(|b| b.ledger().node_id() == to)
                        .expect("a known neighbour");
                    match message {
                        LedgerMessage::Statement(statement) => {
                            books[j].statement_received(now, from, statement)
                        }
                        LedgerMessage::Iou(iou) => {
                            books[j].iou_received(now, from, &iou).expect("valid IOU");
                        }
                    }
                }
            }
            if !moved {
                for book in books.iter_mut() {
                    book.handle_timeout(now);
                }
                if books.iter().all(|b| b.outbox.is_empty()) {
                    return;
                }
            }
        }
    }

    fn account(book: &Bookkeeper, neighbour: &NodeId) -> crate::ledger::Account {
        book.ledger()
            .account(neighbour)
            .cloned()
            .expect("an account")
    }

    #[test]
    fn both_ends_book_the_same_charges_although_prices_arrive_late() {
        // O → R1 → R2 → D; nobody knows any price at first.
        let mut books = [book(1), book(2), book(3), book(4)];
        let ids = ids(&books);
        let now = Timestamp::ZERO;
        let packet = 10_000u64;
        for _ in 0..100 {
            // The packet passes every hop before any statement comes back.
            books[0].forwarded(now, None, ids[1], ids[3], packet);
            books[1].forwarded(now, Some(ids[0]), ids[2], ids[3], packet);
            books[2].forwarded(now, Some(ids[1]), ids[3], ids[3], packet);
        }
        assert_eq!(books[0].unconfirmed_bytes(), 100 * packet);
        assert_eq!(books[1].unpriced_bytes(), 100 * packet);
        assert_eq!(books[2].unpriced_bytes(), 0, "the last hop knows its price");
        settle(&mut books, now);
        for book in &books {
            assert_eq!(book.unpriced_bytes() + book.unconfirmed_bytes(), 0);
        }
        // 1 MB through two relays at 100 tokens/MB each: O owes R1 200 tokens, R1 owes R2
        // 100, both ends agree, and the IOUs pay exactly that.
        let (o_r1, r1_o) = (account(&books[0], &ids[1]), account(&books[1], &ids[0]));
        assert_eq!((o_r1.payable(), r1_o.receivable()), (200_000, 200_000));
        assert_eq!(o_r1.tokens_spent, r1_o.tokens_earned);
        assert_eq!(r1_o.tokens_earned, 200_000);
        let (r1_r2, r2_r1) = (account(&books[1], &ids[2]), account(&books[2], &ids[1]));
        assert_eq!((r1_r2.payable(), r2_r1.receivable()), (100_000, 100_000));
        assert_eq!(r1_r2.tokens_spent, r2_r1.tokens_earned);
        assert_eq!(
            books[3]
                .ledger()
                .accounts()
                .map(|a| a.tokens_earned)
                .sum::<u64>(),
            0,
            "the destination earns nothing"
        );
        assert_eq!(books[0].counters().bytes_confirmed, 100 * packet);
    }

    #[test]
    fn a_relay_is_paid_only_for_what_it_forwarded() {
        // O → R → D; R forwards only half of O's packets (it drops or refuses the rest).
        let mut books = [book(1), book(2), book(3)];
        let ids = ids(&books);
        let now = Timestamp::ZERO;
        for i in 0..100 {
            books[0].forwarded(now, None, ids[1], ids[2], 10_000);
            if i % 2 == 0 {
                books[1].forwarded(now, Some(ids[0]), ids[2], ids[2], 10_000);
            }
        }
        settle(&mut books, now);
        let (o_r, r_o) = (account(&books[0], &ids[1]), account(&books[1], &ids[0]));
        assert_eq!(r_o.bytes_relayed, 500_000);
        assert_eq!(o_r.payable(), 50_000, "0.5 MB at 100 tokens/MB");
        assert_eq!(r_o.receivable(), o_r.payable());
        assert_eq!(r_o.tokens_earned, o_r.tokens_spent);
        assert_eq!(books[0].unconfirmed_bytes(), 500_000, "never owed");

        // A statement that claims more than O handed over is capped.
        let inflated = Statement {
            destination: ids[2],
            price_per_mb: 100_000,
            bytes: 500_000 + 10_000_000,
        };
        books[0].statement_received(now, ids[1], inflated);
        assert_eq!(account(&books[0], &ids[1]).payable(), 100_000);
        assert_eq!(books[0].unconfirmed_bytes(), 0);
        assert_eq!(books[0].counters().bytes_overclaimed, 9_500_000);
    }

    #[test]
    fn a_changed_price_is_stated_before_it_applies_and_a_lost_link_forgets() {
        let mut books = [book(1), book(2), book(3)];
        let ids = ids(&books);
        let now = Timestamp::ZERO;
        let hop = |books: &mut [Bookkeeper; 3]| {
            books[0].forwarded(now, None, ids[1], ids[2], 1_000_000);
            books[1].forwarded(now, Some(ids[0]), ids[2], ids[2], 1_000_000);
        };
        hop(&mut books);
        books[1].ledger_mut().set_terms(200, 100_000, 10_000);
        hop(&mut books);
        settle(&mut books, now);
        assert_eq!(books[1].counters().statements_sent, 2, "one per price");
        let (o_r, r_o) = (account(&books[0], &ids[1]), account(&books[1], &ids[0]));
        assert_eq!(o_r.payable(), 100_000 + 200_000);
        assert_eq!(r_o.receivable(), o_r.payable());
        assert_eq!(books[0].ledger().price(&ids[1], &ids[2]), Some(200_000));

        // The link goes down at both ends: counts restart and nothing is lost or doubled.
        books[0].link_down(&ids[1]);
        books[1].link_down(&ids[0]);
        assert_eq!(books[0].ledger().price(&ids[1], &ids[2]), None);
        hop(&mut books);
        settle(&mut books, now);
        let (o_r, r_o) = (account(&books[0], &ids[1]), account(&books[1], &ids[0]));
        assert_eq!(o_r.payable(), 500_000);
        assert_eq!(r_o.receivable(), o_r.payable());
    }

    #[test]
    fn advertised_prices_price_bytes_at_once_and_honest_ends_agree() {
        // O → R1 → R2 → D; every relay advertises its route's price plus its fee, as the
        // router does, before any traffic.
        let mut books = [book(1), book(2), book(3), book(4)];
        let ids = ids(&books);
        let now = Timestamp::ZERO;
        let fee = books[1].ledger().own_fee(now);
        books[1].price_advertised(now, ids[2], ids[3], fee);
        books[0].price_advertised(now, ids[1], ids[3], 2 * fee);
        books[2].price_advertised(now, ids[3], ids[3], 0);
        assert_eq!(
            books[2].counters().prices_advertised,
            0,
            "a destination is free"
        );
        for _ in 0..100 {
            books[0].forwarded(now, None, ids[1], ids[3], 10_000);
            books[1].forwarded(now, Some(ids[0]), ids[2], ids[3], 10_000);
            books[2].forwarded(now, Some(ids[1]), ids[3], ids[3], 10_000);
        }
        assert_eq!(books[1].unpriced_bytes(), 0, "priced by the advertisement");
        assert_eq!(account(&books[1], &ids[0]).receivable(), 200_000);
        settle(&mut books, now);
        let (o_r1, r1_o) = (account(&books[0], &ids[1]), account(&books[1], &ids[0]));
        assert_eq!((o_r1.payable(), r1_o.receivable()), (200_000, 200_000));
        assert_eq!(o_r1.tokens_spent, r1_o.tokens_earned);
        let (r1_r2, r2_r1) = (account(&books[1], &ids[2]), account(&books[2], &ids[1]));
        assert_eq!((r1_r2.payable(), r2_r1.receivable()), (100_000, 100_000));
        assert_eq!(r1_r2.tokens_spent, r2_r1.tokens_earned);
    }

    #[test]
    fn a_relay_that_states_more_than_it_advertised_is_paid_only_the_advertised_price() {
        // O → R → D; R advertised its fee, 100 tokens/MB, then states 300.
        let mut books = [book(1), book(2), book(3)];
        let ids = ids(&books);
        let now = Timestamp::ZERO;
        books[0].price_advertised(now, ids[1], ids[2], 100_000);
        books[1].ledger_mut().set_terms(300, 100_000, 10_000);
        for _ in 0..100 {
            books[0].forwarded(now, None, ids[1], ids[2], 10_000);
            books[1].forwarded(now, Some(ids[0]), ids[2], ids[2], 10_000);
        }
        settle(&mut books, now);
        assert_eq!(
            books[0].ledger().stated_price(&ids[1], &ids[2]),
            Some(300_000)
        );
        assert_eq!(books[0].ledger().price(&ids[1], &ids[2]), Some(100_000));
        let (o_r, r_o) = (account(&books[0], &ids[1]), account(&books[1], &ids[0]));
        assert_eq!(o_r.payable(), 100_000, "1 MB at the advertised price");
        assert_eq!(r_o.receivable(), 300_000, "what R charged in its own books");
        assert_eq!(o_r.tokens_spent, r_o.tokens_earned);
        assert!(
            r_o.tokens_earned <= 100_000,
            "its IOUs cover no more than the offer"
        );
        // A lower statement is taken as it is; a new advertisement replaces the old one.
        books[1].ledger_mut().set_terms(50, 100_000, 10_000);
        books[0].price_advertised(now, ids[1], ids[2], 80_000);
        books[0].forwarded(now, None, ids[1], ids[2], 1_000_000);
        books[1].forwarded(now, Some(ids[0]), ids[2], ids[2], 1_000_000);
        settle(&mut books, now);
        assert_eq!(account(&books[0], &ids[1]).payable(), 100_000 + 50_000);
        assert_eq!(
            books[0].ledger().advertised_price(&ids[1], &ids[2]),
            Some(80_000)
        );
    }

    #[test]
    fn the_tables_are_bounded() {
        let mut b = book(1);
        let now = Timestamp::ZERO;
        let next = NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(2)).node_id();
        let destinations: Vec<NodeId> = (10..10 + MAX_ENTRIES as u64 + 5)
            .map(|seed| NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed)).node_id())
            .collect();
        for destination in &destinations {
            b.forwarded(now, None, next, *destination, 7);
        }
        assert_eq!(b.unconfirmed_bytes(), 7 * MAX_ENTRIES as u64);
        assert_eq!(b.counters().bytes_dropped, 7 * 5);
        b.link_down(&next);
        assert_eq!(b.unconfirmed_bytes(), 0);
    }
}
