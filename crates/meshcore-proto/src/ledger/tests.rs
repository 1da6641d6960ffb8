//! Scenario tests for each ledger rule, and property tests over simulated networks of
//! ledgers: conservation, sock-puppet relaying, replayed and forged IOUs, IOU decoding.

use std::time::Duration;

use proptest::prelude::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::dht::time::Timestamp;
use crate::identity::{NodeId, NodeKeypair};

fn keypair(seed: u64) -> NodeKeypair {
    NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

fn ledger(seed: u64) -> Ledger {
    Ledger::new(keypair(seed), LedgerConfig::new(), Timestamp::ZERO)
}

fn t(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

const MB: u64 = BYTES_PER_MB;

/// Four ledgers on a path O → R1 → R2 → D with prices advertised hop by hop.
fn path() -> [Ledger; 4] {
    let [o, r1, r2, d] = [ledger(1), ledger(2), ledger(3), ledger(4)];
    let mut nodes = [o, r1, r2, d];
    advertise(&mut nodes, &[0, 1, 2, 3], t(0));
    nodes
}

/// Sets, along `path`, each node's price for the last node through the next one.
fn advertise(nodes: &mut [Ledger], path: &[usize], now: Timestamp) {
    let dest = nodes[path[path.len() - 1]].node_id();
    for i in (0..path.len().saturating_sub(2)).rev() {
        let next = path[i + 1];
        let after = nodes[path[i + 2]].node_id();
        let quote = nodes[next]
            .quote(now, &after, &dest)
            .expect("price advertised downstream first");
        let next_id = nodes[next].node_id();
        nodes[path[i]]
            .set_price(next_id, dest, quote)
            .expect("room for prices");
    }
}

/// Records `bytes` along `path` at every node.
fn forward(nodes: &mut [Ledger], path: &[usize], now: Timestamp, bytes: u64) {
    let dest = nodes[path[path.len() - 1]].node_id();
    for (i, &n) in path.iter().enumerate() {
        let up = (i > 0).then(|| nodes[path[i - 1]].node_id());
        let down = path.get(i + 1).map(|&d| nodes[d].node_id());
        nodes[n]
            .record_forwarded(now, up, down, dest, bytes)
            .expect("forward recorded");
    }
}

#[test]
fn relay_charges_upstream_price_plus_fee_and_owes_downstream_price() {
    let mut nodes = path();
    let ids: Vec<NodeId> = nodes.iter().map(Ledger::node_id).collect();
    // Base fee: 100 tokens/MB = 100 000 milli-tokens/MB, multiplier 1.0.
    assert_eq!(nodes[2].own_fee(t(0)), 100_000);
    assert_eq!(nodes[2].quote(t(0), &ids[3], &ids[3]), Some(100_000));
    assert_eq!(nodes[1].price(&ids[2], &ids[3]), Some(100_000));
    assert_eq!(nodes[0].price(&ids[1], &ids[3]), Some(200_000));

    let f = nodes[1]
        .record_forwarded(t(0), Some(ids[0]), Some(ids[2]), ids[3], MB)
        .expect("recorded");
    assert_eq!(
        f,
        Forwarded {
            charged_per_mb: 200_000,
            owed_per_mb: 100_000
        }
    );
    let r1 = &nodes[1];
    assert_eq!(r1.account(&ids[0]).map(Account::receivable), Some(200_000));
    assert_eq!(r1.account(&ids[2]).map(Account::payable), Some(100_000));
    // The destination charges nothing; the originator only owes.
    let f = nodes[3]
        .record_forwarded(t(0), Some(ids[2]), None, ids[3], MB)
        .expect("recorded");
    assert_eq!(f.charged_per_mb, 0);
    let f = nodes[0]
        .record_forwarded(t(0), None, Some(ids[1]), ids[3], MB)
        .expect("recorded");
    assert_eq!((f.charged_per_mb, f.owed_per_mb), (0, 200_000));
    assert_eq!(
        nodes[0].account(&ids[1]).map(|a| a.bytes_consumed),
        Some(MB)
    );
    assert_eq!(nodes[1].account(&ids[0]).map(|a| a.bytes_relayed), Some(MB));
}

#[test]
fn carried_and_consumed_halves_add_up_to_a_forward() {
    let mut whole = path();
    let mut halves = path();
    let ids: Vec<NodeId> = whole.iter().map(Ledger::node_id).collect();
    whole[1]
        .record_forwarded(t(0), Some(ids[0]), Some(ids[2]), ids[3], 3 * MB)
        .expect("recorded");
    let carried = halves[1]
        .record_carried(t(0), ids[0], ids[2], ids[3], 3 * MB)
        .expect("charged");
    assert_eq!(carried.charged_per_mb, 200_000);
    assert_eq!(
        halves[1].account(&ids[2]),
        None,
        "nothing booked downstream yet"
    );
    halves[1]
        .record_forwarded(t(0), None, Some(ids[2]), ids[3], 3 * MB)
        .expect("owed");
    assert_eq!(halves[1].snapshot(), whole[1].snapshot());
    assert_eq!(
        halves[1].record_carried(t(0), ids[0], ids[3], ids[2], 1),
        Err(LedgerError::UnknownPrice {
            neighbour: ids[3],
            destination: ids[2]
        })
    );
    assert_eq!(
        halves[1].record_carried(t(0), ids[1], ids[2], ids[3], 1),
        Err(LedgerError::OwnNode)
    );
}

#[test]
fn charges_round_once_on_the_total() {
    let mut nodes = path();
    let ids: Vec<NodeId> = nodes.iter().map(Ledger::node_id).collect();
    // 1 byte at 200 000 mt/MB is 0.2 mt: five of them are exactly 1.
    for _ in 0..5 {
        nodes[0]
            .record_forwarded(t(0), None, Some(ids[1]), ids[3], 1)
            .expect("recorded");
    }
    assert_eq!(nodes[0].account(&ids[1]).map(Account::payable), Some(1));
}

#[test]
fn refused_forwards_change_nothing() {
    let mut a = ledger(1);
    let [b, c] = [ledger(2).node_id(), ledger(3).node_id()];
    let before = a.snapshot();
    assert_eq!(
        a.record_forwarded(t(0), None, Some(b), c, MB),
        Err(LedgerError::UnknownPrice {
            neighbour: b,
            destination: c
        })
    );
    assert_eq!(
        a.record_forwarded(t(0), Some(b), None, c, MB),
        Err(LedgerError::NotDestination)
    );
    let me = a.node_id();
    assert_eq!(
        a.record_forwarded(t(0), Some(me), Some(c), c, MB),
        Err(LedgerError::OwnNode)
    );
    assert_eq!(a.snapshot(), before);
}

#[test]
fn payer_sends_cumulative_iou_at_threshold_and_balances_move() {
    let mut nodes = path();
    let ids: Vec<NodeId> = nodes.iter().map(Ledger::node_id).collect();
    // 40 KB at 200 000 mt/MB = 8 000 mt: below the new-neighbour threshold of 10 000.
    forward(&mut nodes, &[0, 1, 2, 3], t(0), 40_000);
    assert_eq!(nodes[0].poll_transmit(), None);
    assert_eq!(nodes[1].standing(t(0), &ids[0]), Standing::Ok);
    forward(&mut nodes, &[0, 1, 2, 3], t(0), 10_000);
    assert_eq!(nodes[1].standing(t(0), &ids[0]), Standing::Settle);
    let (to, iou) = nodes[0].poll_transmit().expect("threshold reached");
    assert_eq!(to, ids[1]);
    assert_eq!(
        (
            iou.epoch,
            iou.seq,
            iou.cumulative_bytes,
            iou.cumulative_amount
        ),
        (0, 1, 50_000, 10_000)
    );
    assert_eq!(nodes[0].poll_transmit(), None);
    let accepted = nodes[1].accept_iou(t(0), ids[0], &iou).expect("valid");
    assert_eq!(accepted.newly_credited, 10_000);
    assert_eq!(nodes[1].standing(t(0), &ids[0]), Standing::Ok);
    // O's first 10 000 mt to R1 are covered by its free allowance.
    assert_eq!(nodes[0].allowance_used(), 10_000);
    assert_eq!(nodes[0].balance(), 0);
    assert_eq!(nodes[1].balance(), 10_000);
}

#[test]
fn threshold_grows_with_payment_history() {
    let mut nodes = path();
    let ids: Vec<NodeId> = nodes.iter().map(Ledger::node_id).collect();
    let mut sizes = Vec::new();
    for _ in 0..400 {
        forward(&mut nodes, &[0, 1, 2, 3], t(0), 10_000); // 2 000 mt each
        while let Some((_, iou)) = nodes[0].poll_transmit() {
            let before = nodes[1].account(&ids[0]).map_or(0, |a| a.tokens_earned);
            let accepted = nodes[1].accept_iou(t(0), ids[0], &iou).expect("valid");
            assert_eq!(accepted.tokens_earned - before, accepted.newly_credited);
            sizes.push(accepted.newly_credited);
        }
    }
    // 10 000 first (P_new), then P_new + paid, …, capped at P = 100 000.
    assert_eq!(sizes[..4], [10_000, 20_000, 40_000, 80_000]);
    assert!(sizes[4..].iter().all(|&s| s == 100_000));
}

#[test]
fn request_settlement_pays_below_the_threshold() {
    let mut nodes = path();
    let ids: Vec<NodeId> = nodes.iter().map(Ledger::node_id).collect();
    forward(&mut nodes, &[0, 1, 2, 3], t(0), 5_000);
    assert_eq!(nodes[0].poll_transmit(), None);
    nodes[0].request_settlement(ids[1]);
    let (_, iou) = nodes[0].poll_transmit().expect("requested");
    assert_eq!(iou.cumulative_amount, 1_000);
    assert_eq!(nodes[0].poll_transmit(), None);
}

fn pair_with_ious(n: usize) -> (Ledger, Ledger, Vec<Iou>) {
    let mut payer = ledger(10);
    let payee = ledger(11);
    let dest = payee.node_id();
    let mut ious = Vec::new();
    for _ in 0..n {
        payer
            .record_forwarded(t(0), None, Some(dest), dest, MB)
            .expect("recorded");
        // Destination is the payee: price 0, so make it cost something via a relay price.
        payer.request_settlement(dest);
        if let Some((_, iou)) = payer.poll_transmit() {
            ious.push(iou);
        }
    }
    (payer, payee, ious)
}

/// A payer that owes a relay `payee` for traffic to a third node.
fn paying_pair(n: usize) -> (Ledger, Ledger, Vec<Iou>) {
    let mut payer = ledger(10);
    let payee = ledger(11);
    let relay = payee.node_id();
    let dest = ledger(12).node_id();
    payer.set_price(relay, dest, 100_000).expect("room");
    let mut ious = Vec::new();
    for _ in 0..n {
        payer
            .record_forwarded(t(0), None, Some(relay), dest, 200_000)
            .expect("recorded");
        payer.request_settlement(relay);
        if let Some((_, iou)) = payer.poll_transmit() {
            ious.push(iou);
        }
    }
    (payer, payee, ious)
}

#[test]
fn receiving_is_free() {
    let (payer, _, ious) = pair_with_ious(3);
    assert!(ious.is_empty());
    assert_eq!(payer.balance(), 0);
}

#[test]
fn accept_rules() {
    let (payer, mut payee, ious) = paying_pair(3);
    let from = payer.node_id();
    let amounts: Vec<u64> = ious.iter().map(|i| i.cumulative_amount).collect();
    assert_eq!(amounts, [20_000, 40_000, 60_000]);
    assert!(payee.accept_iou(t(0), from, &ious[1]).is_ok());
    // The same IOU again, or an older one: nothing happens.
    assert_eq!(
        payee.accept_iou(t(0), from, &ious[1]),
        Err(IouError::Replayed)
    );
    assert_eq!(
        payee.accept_iou(t(0), from, &ious[0]),
        Err(IouError::Replayed)
    );
    // From the wrong neighbour, or to someone else.
    let other = ledger(13).node_id();
    assert_eq!(
        payee.accept_iou(t(0), other, &ious[2]),
        Err(IouError::WrongLink)
    );
    let elsewhere = Iou::sign(&keypair(10), other, 0, 9, 1, 1);
    assert_eq!(
        payee.accept_iou(t(0), from, &elsewhere),
        Err(IouError::WrongLink)
    );
    // Tampered.
    let mut forged = ious[2].clone();
    forged.cumulative_amount += 1;
    assert_eq!(
        payee.accept_iou(t(0), from, &forged),
        Err(IouError::BadSignature)
    );
    // Newer but smaller.
    let me = payee.node_id();
    let smaller = Iou::sign(&keypair(10), me, 0, 5, 1_000_000, 1);
    assert_eq!(
        payee.accept_iou(t(0), from, &smaller),
        Err(IouError::Regressed)
    );
    let fewer_bytes = Iou::sign(&keypair(10), me, 0, 5, 1, 50_000);
    assert_eq!(
        payee.accept_iou(t(0), from, &fewer_bytes),
        Err(IouError::Regressed)
    );
    assert_eq!(payee.balance(), 40_000);
    // In order again; then a new epoch adds to what earlier epochs paid.
    assert!(payee.accept_iou(t(0), from, &ious[2]).is_ok());
    let next_epoch = Iou::sign(&keypair(10), me, 1, 1, 10, 5_000);
    let accepted = payee
        .accept_iou(t(0), from, &next_epoch)
        .expect("new epoch");
    assert_eq!(
        accepted,
        Accepted {
            newly_credited: 5_000,
            tokens_earned: 65_000
        }
    );
    let later_same_epoch = Iou::sign(&keypair(10), me, 1, 2, 20, 7_000);
    assert_eq!(
        payee
            .accept_iou(t(0), from, &later_same_epoch)
            .map(|a| a.tokens_earned),
        Ok(67_000)
    );
    assert_eq!(
        payee.accept_iou(t(0), from, &ious[2]),
        Err(IouError::Regressed)
    );
}

#[test]
fn standing_throttles_and_cuts_off_after_grace() {
    let mut relay = ledger(1);
    let up = ledger(2).node_id();
    let me = relay.node_id();
    // 100 000 mt/MB charged for traffic to the relay itself? No: receiving is free, so
    // charge through a downstream with a price.
    let down = ledger(3).node_id();
    let dest = ledger(4).node_id();
    relay.set_price(down, dest, 0).expect("room");
    let owe = |relay: &mut Ledger, now: u64, bytes: u64| {
        relay
            .record_forwarded(t(now), Some(up), Some(down), dest, bytes)
            .expect("recorded");
    };
    assert_eq!(relay.standing(t(0), &up), Standing::Ok);
    // Fee 100 000 mt/MB; threshold P_new = 10 000 mt = 100 KB.
    owe(&mut relay, 0, 99_990);
    assert_eq!(relay.standing(t(0), &up), Standing::Ok);
    owe(&mut relay, 0, 10);
    assert_eq!(relay.standing(t(0), &up), Standing::Settle);
    owe(&mut relay, 0, 25_000); // 12 500 = 1.25 P
    assert_eq!(relay.standing(t(0), &up), Standing::Settle);
    owe(&mut relay, 0, 10);
    // Past 1.25 P: throttled only once that has held for the 2 s grace, so that a paying
    // neighbour's IOU can arrive first.
    assert_eq!(relay.standing(t(0), &up), Standing::Settle);
    assert_eq!(relay.standing(t(1_999), &up), Standing::Settle);
    assert_eq!(relay.standing(t(2_000), &up), Standing::Throttle);
    owe(&mut relay, 1_000, 900_000); // 102 501 > 10 P
    assert_eq!(relay.standing(t(2_000), &up), Standing::Throttle);
    assert_eq!(relay.standing(t(60_999), &up), Standing::Throttle);
    assert_eq!(relay.standing(t(61_000), &up), Standing::CutOff);
    // Paying back below 10 P restarts the grace clock.
    let iou = Iou::sign(&keypair(2), me, 0, 1, 1, 100_000);
    relay.accept_iou(t(62_000), up, &iou).expect("valid");
    assert_eq!(relay.standing(t(62_000), &up), Standing::Ok);
}

#[test]
fn allowance_is_per_neighbour_and_bounded_by_the_refilling_pool() {
    let mut a = ledger(1);
    let dest = ledger(100).node_id();
    let neighbours: Vec<NodeId> = (0..15).map(|i| ledger(200 + i).node_id()).collect();
    for n in &neighbours {
        a.set_price(*n, dest, 100_000).expect("room");
        a.record_forwarded(t(0), None, Some(*n), dest, MB)
            .expect("ok");
    }
    // Pool of 100 000 mt, 10 000 per neighbour: ten neighbours get one.
    let granted: Vec<u64> = neighbours
        .iter()
        .filter_map(|n| a.account(n).and_then(|acc| acc.allowance))
        .collect();
    assert_eq!(granted.iter().sum::<u64>(), 100_000);
    assert_eq!(granted.iter().filter(|&&g| g == 10_000).count(), 10);
    assert_eq!(a.allowance_pool(), 0);
    // Half an hour later 5 000 mt have come back.
    let late = ledger(300).node_id();
    a.set_price(late, dest, 100_000).expect("room");
    a.record_forwarded(t(1_800_000), None, Some(late), dest, MB)
        .expect("ok");
    assert_eq!(a.account(&late).and_then(|acc| acc.allowance), Some(5_000));
    // Paying everything: the balance is −(paid) + allowance used.
    while a.poll_transmit().is_some() {}
    for n in neighbours.iter().chain([&late]) {
        a.request_settlement(*n);
    }
    while a.poll_transmit().is_some() {}
    assert_eq!(a.allowance_used(), 105_000);
    assert_eq!(a.balance(), -(16 * 100_000) + 105_000);
}

#[test]
fn reputation_moves_own_fee_within_bounds_and_decays() {
    let mut a = ledger(1);
    let me = a.node_id();
    for _ in 0..200 {
        a.record_delivery(t(0), me, true).expect("ok");
    }
    assert_eq!(a.own_multiplier(t(0)), 1_500);
    assert_eq!(a.own_fee(t(0)), 150_000);
    let day = 24 * 3600 * 1000;
    assert_eq!(a.own_multiplier(t(day)), 1_250);
    assert_eq!(a.own_multiplier(t(30 * day)), 1_000);
    let n = ledger(2).node_id();
    a.record_delivery(t(0), n, false).expect("ok");
    assert_eq!(
        a.account(&n)
            .map(|acc| acc.reputation.multiplier_at(t(0), Duration::from_secs(1))),
        Some(1_000)
    );
}

#[test]
fn accounts_are_bounded() {
    let mut config = LedgerConfig::new();
    config.max_accounts = 2;
    let mut a = Ledger::new(keypair(1), config, t(0));
    let ids: Vec<NodeId> = (0..3).map(|i| ledger(50 + i).node_id()).collect();
    let me = a.node_id();
    a.record_forwarded(t(0), Some(ids[0]), None, me, 1)
        .expect("ok");
    a.record_forwarded(t(0), Some(ids[1]), None, me, 1)
        .expect("ok");
    assert_eq!(
        a.record_forwarded(t(0), Some(ids[2]), None, me, 1),
        Err(LedgerError::TooManyAccounts)
    );
    let iou = Iou::sign(&keypair(52), me, 0, 1, 1, 1);
    assert_eq!(
        a.accept_iou(t(0), ids[2], &iou),
        Err(IouError::TooManyAccounts)
    );
    assert_eq!(
        a.record_delivery(t(0), ids[2], true),
        Err(LedgerError::TooManyAccounts)
    );
    assert_eq!(
        a.set_price(ids[2], me, 1)
            .and_then(|()| a.set_price(ids[1], me, 1))
            .and_then(|()| a.set_price(ids[0], me, 1)),
        Err(LedgerError::TooManyAccounts)
    );
}

#[test]
fn snapshot_restores_and_continues() {
    let (payer, mut payee, ious) = paying_pair(2);
    for iou in &ious {
        payee.accept_iou(t(0), payer.node_id(), iou).expect("valid");
    }
    let payee_snapshot = payee.snapshot();
    let restored = Ledger::restore(keypair(11), LedgerConfig::new(), payee_snapshot.clone())
        .expect("valid snapshot");
    assert_eq!(restored.balance(), payee.balance());
    assert_eq!(restored.snapshot(), payee_snapshot);
    // A restored payer continues its sequence.
    let relay = payee.node_id();
    let mut restored_payer =
        Ledger::restore(keypair(10), LedgerConfig::new(), payer.snapshot()).expect("valid");
    let dest = ledger(12).node_id();
    restored_payer
        .set_price(relay, dest, 100_000)
        .expect("room");
    restored_payer
        .record_forwarded(t(0), None, Some(relay), dest, 200_000)
        .expect("ok");
    restored_payer.request_settlement(relay);
    let (_, iou) = restored_payer.poll_transmit().expect("owed");
    assert_eq!((iou.seq, iou.cumulative_amount), (3, 60_000));
    assert!(payee.accept_iou(t(0), payer.node_id(), &iou).is_ok());
    // A restart in a new epoch starts the counters again, and the payee adds them.
    let mut config = LedgerConfig::new();
    config.epoch = 5;
    let mut next = Ledger::restore(keypair(10), config, restored_payer.snapshot()).expect("ok");
    next.set_price(relay, dest, 100_000).expect("room");
    next.record_forwarded(t(0), None, Some(relay), dest, 100_000)
        .expect("ok");
    next.request_settlement(relay);
    let (_, iou) = next.poll_transmit().expect("owed");
    assert_eq!(
        (
            iou.epoch,
            iou.seq,
            iou.cumulative_bytes,
            iou.cumulative_amount
        ),
        (5, 1, 100_000, 10_000)
    );
    let accepted = payee.accept_iou(t(0), payer.node_id(), &iou).expect("ok");
    assert_eq!(accepted.tokens_earned, 70_000);
    assert_eq!(next.account(&relay).map(|a| a.tokens_spent), Some(70_000));
    // Tampered or mis-epoched snapshots are refused.
    let mut bad = payee.snapshot();
    if let Some(iou) = bad.accounts[0].latest_received.as_mut() {
        iou.cumulative_amount += 1;
    }
    assert!(matches!(
        Ledger::restore(keypair(11), LedgerConfig::new(), bad),
        Err(RestoreError::InvalidIou(_))
    ));
    assert_eq!(
        Ledger::restore(keypair(10), LedgerConfig::new(), next.snapshot()).map(|_| ()),
        Err(RestoreError::EpochRegressed {
            configured: 0,
            stored: 5
        })
    );
}

// ---- simulated networks ----

/// One step of a simulated network.
#[derive(Debug, Clone)]
enum Op {
    /// A flow along a random simple path (`len` ≥ 2 nodes), `units` × 10 kB.
    Forward {
        path_seed: u64,
        len: usize,
        units: u64,
    },
    /// Drain a node's IOUs into the in-flight queue.
    Poll { node: usize },
    /// Deliver the in-flight IOU at this index.
    Deliver { index: usize },
    /// Deliver an already delivered IOU again.
    Replay { index: usize },
    /// A delivery outcome for a node's own reputation.
    Outcome { node: usize, delivered: bool },
    /// Time passes.
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u64>(), 2usize..8, 1u64..200).prop_map(|(path_seed, len, units)| Op::Forward { path_seed, len, units }),
        2 => (0usize..8).prop_map(|node| Op::Poll { node }),
        3 => any::<usize>().prop_map(|index| Op::Deliver { index }),
        1 => any::<usize>().prop_map(|index| Op::Replay { index }),
        1 => (0usize..8, any::<bool>()).prop_map(|(node, delivered)| Op::Outcome { node, delivered }),
        1 => (0u64..3_600_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// `len` distinct nodes of `0..n`, in a random order; `origins` restricts the first.
fn random_path(n: usize, seed: u64, len: usize, origins: usize) -> Vec<usize> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut nodes: Vec<usize> = (0..n).collect();
    let first = usize::try_from(rng.next_u64() % origins as u64).unwrap_or(0);
    nodes.swap(0, first);
    for i in (2..n).rev() {
        let j = 1 + usize::try_from(rng.next_u64() % i as u64).unwrap_or(0);
        nodes.swap(i, j);
    }
    nodes.truncate(len.clamp(2, n));
    nodes
}

struct Network {
    nodes: Vec<Ledger>,
    now: Timestamp,
    in_flight: Vec<(usize, usize, Iou)>,
    delivered: Vec<(usize, usize, Iou)>,
}

impl Network {
    fn new(n: usize, seed: u64) -> Self {
        Self {
            nodes: (0..n)
                .map(|i| {
                    Ledger::new(
                        keypair(seed.wrapping_mul(31).wrapping_add(i as u64)),
                        LedgerConfig::new(),
                        Timestamp::ZERO,
                    )
                })
                .collect(),
            now: Timestamp::ZERO,
            in_flight: Vec::new(),
            delivered: Vec::new(),
        }
    }

    fn index(&self, id: &NodeId) -> usize {
        self.nodes
            .iter()
            .position(|l| l.node_id() == *id)
            .expect("a node of the network")
    }

    fn poll(&mut self, node: usize) {
        while let Some((to, iou)) = self.nodes[node].poll_transmit() {
            let to = self.index(&to);
            self.in_flight.push((node, to, iou));
        }
    }

    fn deliver(&mut self, index: usize) {
        if self.in_flight.is_empty() {
            return;
        }
        let (from, to, iou) = self.in_flight.remove(index % self.in_flight.len());
        let from_id = self.nodes[from].node_id();
        match self.nodes[to].accept_iou(self.now, from_id, &iou) {
            // Out of order: a newer IOU on the link arrived first and subsumes this one.
            Ok(_) | Err(IouError::Replayed) => {}
            Err(e) => panic!("honest IOU refused: {e}"),
        }
        self.delivered.push((from, to, iou));
    }

    fn apply(&mut self, op: &Op, origins: usize) {
        let n = self.nodes.len();
        match *op {
            Op::Forward {
                path_seed,
                len,
                units,
            } => {
                let path = random_path(n, path_seed, len, origins);
                advertise(&mut self.nodes, &path, self.now);
                forward(&mut self.nodes, &path, self.now, units * 10_000);
            }
            Op::Poll { node } => self.poll(node % n),
            Op::Deliver { index } => self.deliver(index),
            Op::Replay { index } => {
                if !self.delivered.is_empty() {
                    let (from, to, iou) = self.delivered[index % self.delivered.len()].clone();
                    let before = self.balances();
                    let from_id = self.nodes[from].node_id();
                    assert!(self.nodes[to].accept_iou(self.now, from_id, &iou).is_err());
                    assert_eq!(self.balances(), before);
                }
            }
            Op::Outcome { node, delivered } => {
                let node = node % n;
                let me = self.nodes[node].node_id();
                self.nodes[node]
                    .record_delivery(self.now, me, delivered)
                    .expect("own reputation");
            }
            Op::Advance { ms } => {
                self.now = Timestamp::from_millis(self.now.as_millis() + ms);
            }
        }
    }

    /// Every node settles everything it owes and every IOU is delivered.
    fn settle_all(&mut self) {
        for node in 0..self.nodes.len() {
            let neighbours: Vec<NodeId> =
                self.nodes[node].accounts().map(|a| a.neighbour).collect();
            for neighbour in neighbours {
                self.nodes[node].request_settlement(neighbour);
            }
            self.poll(node);
        }
        while !self.in_flight.is_empty() {
            self.deliver(0);
        }
    }

    fn balances(&self) -> Vec<i128> {
        self.nodes.iter().map(Ledger::balance).collect()
    }

    fn allowances(&self) -> Vec<i128> {
        self.nodes
            .iter()
            .map(|l| i128::from(l.allowance_used()))
            .collect()
    }

    fn check_pool_bound(&self) {
        for l in &self.nodes {
            let c = l.config();
            let bound = u128::from(c.allowance_pool_max)
                + u128::from(self.now.as_millis()) * u128::from(c.allowance_refill_per_hour)
                    / 3_600_000;
            assert!(u128::from(l.allowance_used()) <= bound);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Tokens are conserved: at every step Σ balances ≤ Σ allowance used (IOUs in flight
    /// are debt not yet credit), and once everything is delivered they are equal and every
    /// payer's spent equals its payee's earned.
    #[test]
    fn tokens_are_conserved(n in 3usize..=8, seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..120)) {
        let mut net = Network::new(n, seed);
        for op in &ops {
            net.apply(op, n);
            let total: i128 = net.balances().iter().sum();
            let issued: i128 = net.allowances().iter().sum();
            prop_assert!(total <= issued, "{total} > {issued}");
            net.check_pool_bound();
        }
        net.settle_all();
        let total: i128 = net.balances().iter().sum();
        let issued: i128 = net.allowances().iter().sum();
        prop_assert_eq!(total, issued);
        for a in 0..n {
            for acc in net.nodes[a].accounts() {
                let b = net.index(&acc.neighbour);
                let me = net.nodes[a].node_id();
                let earned = net.nodes[b].account(&me).map_or(0, |x| x.tokens_earned);
                prop_assert_eq!(acc.tokens_spent, earned);
            }
        }
    }

    /// A node and its sock puppets (nodes `0..=puppets`) send traffic through each other
    /// and through honest relays; once everything is settled the coalition holds no more
    /// than the allowance its own ledgers issued.
    #[test]
    fn sock_puppets_gain_nothing_beyond_allowance(
        n in 3usize..=8,
        puppets in 1usize..=4,
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let coalition = (puppets + 1).min(n - 1);
        let mut net = Network::new(n, seed);
        for op in &ops {
            net.apply(op, coalition);
        }
        net.settle_all();
        let balances = net.balances();
        let allowances = net.allowances();
        let gained: i128 = balances[..coalition].iter().sum();
        let issued: i128 = allowances[..coalition].iter().sum();
        prop_assert!(gained <= issued, "coalition {gained} > its allowance {issued}");
        // Honest nodes never lose beyond what they were allowed: they only relay.
        for i in coalition..n {
            prop_assert!(balances[i] >= allowances[i]);
        }
    }

    /// Replayed, old, tampered, misdirected and forged IOUs are refused and change no
    /// balance, whatever state the ledgers are in.
    #[test]
    fn bad_ious_change_nothing(
        rounds in 1usize..12,
        attacks in proptest::collection::vec((0u8..6, any::<usize>(), 1u64..1_000_000), 1..30),
    ) {
        let (payer, mut payee, ious) = paying_pair(rounds);
        let from = payer.node_id();
        let me = payee.node_id();
        let half = ious.len() / 2;
        for iou in &ious[..=half] {
            payee.accept_iou(t(0), from, iou).expect("valid");
        }
        let before = payee.snapshot();
        let mallory = keypair(66);
        for (kind, index, amount) in attacks {
            let old = &ious[index % (half + 1)];
            let (sender, iou) = match kind {
                0 => (from, old.clone()),
                1 => {
                    let mut iou = ious[index % ious.len()].clone();
                    iou.cumulative_amount = iou.cumulative_amount.wrapping_add(amount);
                    (from, iou)
                }
                2 => {
                    // Signed by someone else, claiming to be the payer.
                    let mut iou = Iou::sign(&mallory, me, 0, 1_000, amount, amount);
                    iou.link.payer = from;
                    (from, iou)
                }
                3 => (mallory.node_id(), ious[index % ious.len()].clone()),
                4 => (from, Iou::sign(&keypair(10), mallory.node_id(), 0, 1_000, amount, amount)),
                _ => {
                    let mut iou = ious[index % ious.len()].clone();
                    iou.signature[index % 64] ^= 1;
                    (from, iou)
                }
            };
            prop_assert!(payee.accept_iou(t(0), sender, &iou).is_err());
            prop_assert_eq!(&payee.snapshot(), &before);
        }
    }

    /// Decoding arbitrary bytes never panics; whatever decodes re-encodes to the input.
    #[test]
    fn iou_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(iou) = Iou::decode(&bytes) {
            prop_assert_eq!(&iou.encode()[..], &bytes[..]);
        }
    }

    /// Full-length garbage: ids checked, the rest read back exactly.
    #[test]
    fn iou_decode_full_length(bytes in proptest::collection::vec(any::<u8>(), IOU_LEN)) {
        if let Ok(iou) = Iou::decode(&bytes) {
            prop_assert_eq!(&iou.encode()[..], &bytes[..]);
            prop_assert!(iou.verify().is_err());
        }
    }
}
