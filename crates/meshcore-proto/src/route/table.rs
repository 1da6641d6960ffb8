//! Route state per destination: the candidates learned from neighbours, the feasibility
//! distance, the selected route and its precursors; and [`Route`], the public view of a
//! selected route.

use std::fmt;
use std::time::Duration;

use crate::dht::time::Timestamp;
use crate::identity::{NodeId, SIGNATURE_LEN};
use crate::route::advert::SignedAdvert;
use crate::route::metric::METRIC_INFINITY;

/// The best `(seqno, metric)` this node has advertised for a destination (RFC 8966 §3.5.1).
///
/// "Better" means a higher sequence number, or the same sequence number and a lower metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeasibilityDistance {
    /// Sequence number of the best advertisement sent.
    pub seqno: u64,
    /// Its metric.
    pub metric: u32,
}

impl FeasibilityDistance {
    /// Whether an advertisement `(seqno, metric)` received from a neighbour is feasible
    /// against this distance: strictly better than it.
    pub fn admits(&self, seqno: u64, metric: u32) -> bool {
        seqno > self.seqno || (seqno == self.seqno && metric < self.metric)
    }
}

/// Whether `(seqno, metric)` is feasible against an optional distance (none admits all).
pub(crate) fn feasible(fd: Option<FeasibilityDistance>, seqno: u64, metric: u32) -> bool {
    fd.is_none_or(|fd| fd.admits(seqno, metric))
}

/// A route to one destination as selected by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The destination.
    pub destination: NodeId,
    /// The neighbour packets for the destination go to.
    pub next_hop: NodeId,
    /// Hops to the destination (the length of `path`).
    pub hop_count: u8,
    /// The route's metric: the next hop's advertised metric plus the cost of the link to
    /// it.
    pub metric: u32,
    /// The route's price, milli-tokens per MB: what the next hop advertised it charges for
    /// carrying traffic to the destination (0 when it is the destination), and so what this
    /// node owes for each MB it sends along the route. It does not include this node's own
    /// fee and plays no part in selection.
    pub price: u64,
    /// The destination's sequence number this route carries.
    pub seqno: u64,
    /// The nodes the route passes through as reported hop by hop: the next hop first, the
    /// destination last (this node is not included). Unsigned, for display.
    pub path: Vec<NodeId>,
    /// When the route expires unless refreshed.
    pub expires_at: Timestamp,
}

/// A neighbour's index in the router's table of live links. Candidates, precursors and the
/// selected next hop name neighbours by slot (2 bytes) instead of by id (32 bytes). The
/// router frees a slot only after every destination has forgotten the neighbour
/// (`Router::link_down`), so a slot never names two neighbours at once.
pub(crate) type Slot = u16;

/// No neighbour.
pub(crate) const NO_SLOT: Slot = Slot::MAX;

/// How many slots a router can hand out (`0..NO_SLOT`).
pub(crate) const MAX_SLOTS: usize = NO_SLOT as usize;

/// What a destination signed, without its id (which is the key of its entry):
/// `proof.advert(destination)` is the [`SignedAdvert`] again, signature and all.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proof {
    pub(crate) seqno: u64,
    pub(crate) issued_at: Timestamp,
    pub(crate) signature: [u8; SIGNATURE_LEN],
}

impl Proof {
    pub(crate) fn of(advert: &SignedAdvert) -> Self {
        Self {
            seqno: advert.seqno,
            issued_at: advert.issued_at,
            signature: advert.signature,
        }
    }

    /// The signed advertisement about `node` this proof was taken from.
    pub(crate) fn advert(&self, node: NodeId) -> SignedAdvert {
        SignedAdvert {
            node,
            seqno: self.seqno,
            issued_at: self.issued_at,
            signature: self.signature,
        }
    }

    /// The order of [`SignedAdvert::is_newer_than`].
    pub(crate) fn is_newer_than(&self, other: &Proof) -> bool {
        (self.seqno, self.issued_at) > (other.seqno, other.issued_at)
    }
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proof")
            .field("seqno", &self.seqno)
            .field("issued_at", &self.issued_at)
            .field(
                "signature",
                &format_args!("{}…", hex::encode(&self.signature[..8])),
            )
            .finish()
    }
}

/// An advertisement for a destination received from one neighbour, in 12 bytes. Its signed
/// part is the entry's newest advertisement unless [`OWN_PROOF`] is set; the nodes between
/// its ends (routes of more than two hops), a signing time after its arrival and a price of
/// `u32::MAX` or more are kept beside it in the entry's [`Spill`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// The neighbour's metric to the destination (as it advertised it).
    pub(crate) metric: u32,
    /// The neighbour's price to the destination (as it advertised it), milli-tokens per MB,
    /// unless [`BIG_PRICE`] is set. A `u32` holds 4.29 × 10⁶ tokens per MB, far above any
    /// path at sane fees (32 hops at 1.5 × the default fee is 4,800 tokens per MB); only a
    /// node configured with a huge `tokens_per_mb` makes a candidate spill its price.
    price: u32,
    /// The neighbour that advertised it.
    pub(crate) slot: Slot,
    /// Nodes on the path from the neighbour to the destination, both included: 1 when the
    /// neighbour is the destination.
    pub(crate) hops: u8,
    flags: u8,
}

/// The candidate's advertisement is not the entry's newest: its own is in [`Spill::proofs`].
const OWN_PROOF: u8 = 1;
/// The advertisement was signed after it arrived (the clocks differ): [`Spill::skews`] holds
/// by how many milliseconds, which the candidate's expiry is brought forward by.
const SKEWED: u8 = 2;
/// The advertised price does not fit [`Candidate::price`]: [`Spill::prices`] holds it.
const BIG_PRICE: u8 = 4;

const NO_CANDIDATE: Candidate = Candidate {
    metric: METRIC_INFINITY,
    price: 0,
    slot: NO_SLOT,
    hops: 0,
    flags: 0,
};

/// Everything this node knows about one destination: its newest verified advertisement,
/// the candidates learned from neighbours, the selected one; and, in [`Cold`], only when
/// there is any, the feasibility distance and the precursors (the state of a route this
/// node advertised), and in its [`Spill`] the rest.
///
/// Laid out for the common case: one candidate carrying the newest advertisement over at
/// most two hops, at a price below `u32::MAX`, fits in the entry's 104 bytes with no other allocation (the signature, 64
/// bytes, is stored once per destination; the destination's id is the table's key).
#[derive(Debug, Clone)]
pub(crate) struct DestinationEntry {
    /// The newest advertisement with a verified signature (replay protection), if
    /// `has_latest`.
    latest: Proof,
    cold: Option<Box<Cold>>,
    /// The first candidate, [`NO_CANDIDATE`] when there is none; the others are in the
    /// [`Spill`].
    first: Candidate,
    /// The neighbour whose candidate is selected, [`NO_SLOT`] when none is.
    pub(crate) selected: Slot,
    has_latest: bool,
}

/// The parts of an entry that many destinations do without.
#[derive(Debug, Clone)]
struct Cold {
    /// The feasibility distance's sequence number, when `fd_metric` is finite.
    fd_seqno: u64,
    /// The feasibility distance is kept until then: every advertisement derived from it is
    /// stale by that time.
    fd_hold_until: Timestamp,
    /// Neighbours this node advertised the route to (they hear a RERR when it is lost):
    /// bit `i` for slot `i` below 64, the others in [`Spill::precursors`].
    precursors: u64,
    /// The feasibility distance's metric, [`METRIC_INFINITY`] when there is no distance
    /// (an advertised metric is always finite).
    fd_metric: u32,
    spill: Option<Box<Spill>>,
}

impl Cold {
    const EMPTY: Cold = Cold {
        fd_seqno: 0,
        fd_hold_until: Timestamp::ZERO,
        precursors: 0,
        fd_metric: METRIC_INFINITY,
        spill: None,
    };

    fn is_empty(&self) -> bool {
        self.fd_metric == METRIC_INFINITY && self.precursors == 0 && self.spill.is_none()
    }
}

/// The rarer parts still: candidates after the first, what a candidate needs beyond its
/// 8 bytes (by slot), and whether the destination is wanted (only a source's few
/// destinations are). Vectors are kept at their length.
#[derive(Debug, Clone, Default)]
struct Spill {
    /// Asked for by `find_route`; lost routes are rediscovered until then. `ZERO`: not
    /// wanted.
    wanted_until: Timestamp,
    more: Vec<Candidate>,
    /// Advertisements of candidates with [`OWN_PROOF`].
    proofs: Vec<(Slot, Proof)>,
    /// The nodes strictly between the neighbour and the destination, for candidates of
    /// more than two hops.
    paths: Vec<(Slot, Box<[NodeId]>)>,
    /// For candidates with [`SKEWED`]: milliseconds between arrival and signing.
    skews: Vec<(Slot, u64)>,
    /// For candidates with [`BIG_PRICE`]: their advertised price.
    prices: Vec<(Slot, u64)>,
    /// Precursors with slots of 64 and above.
    precursors: Vec<Slot>,
}

impl Spill {
    fn is_empty(&self) -> bool {
        self.wanted_until == Timestamp::ZERO
            && self.more.is_empty()
            && self.proofs.is_empty()
            && self.paths.is_empty()
            && self.skews.is_empty()
            && self.prices.is_empty()
            && self.precursors.is_empty()
    }
}

fn find<T>(list: &[(Slot, T)], slot: Slot) -> Option<&T> {
    list.iter()
        .find(|(at, _)| *at == slot)
        .map(|(_, value)| value)
}

fn put<T>(list: &mut Vec<(Slot, T)>, slot: Slot, value: T) {
    match list.iter_mut().find(|(at, _)| *at == slot) {
        Some((_, old)) => *old = value,
        None => {
            list.reserve_exact(1);
            list.push((slot, value));
        }
    }
}

fn take<T>(list: &mut Vec<(Slot, T)>, slot: Slot) -> Option<T> {
    let at = list.iter().position(|(at, _)| *at == slot)?;
    let (_, value) = list.swap_remove(at);
    list.shrink_to_fit();
    Some(value)
}

impl Default for DestinationEntry {
    fn default() -> Self {
        Self {
            latest: Proof {
                seqno: 0,
                issued_at: Timestamp::ZERO,
                signature: [0; SIGNATURE_LEN],
            },
            cold: None,
            first: NO_CANDIDATE,
            selected: NO_SLOT,
            has_latest: false,
        }
    }
}

impl DestinationEntry {
    // ---- the newest advertisement ----

    /// The newest advertisement with a verified signature.
    pub(crate) fn latest(&self) -> Option<&Proof> {
        self.has_latest.then_some(&self.latest)
    }

    /// Makes `proof` the newest advertisement; the caller has checked that it is newer.
    /// Candidates that carried the one it replaces keep that one as their own.
    pub(crate) fn set_latest(&mut self, proof: Proof) {
        if self.has_latest && self.latest != proof {
            let old = self.latest;
            if self.first.slot != NO_SLOT && self.first.flags & OWN_PROOF == 0 {
                self.first.flags |= OWN_PROOF;
                let slot = self.first.slot;
                put(&mut self.spill_mut().proofs, slot, old);
            }
            if let Some(Spill { more, proofs, .. }) = self.spill_if_any_mut() {
                for candidate in more.iter_mut().filter(|c| c.flags & OWN_PROOF == 0) {
                    candidate.flags |= OWN_PROOF;
                    put(proofs, candidate.slot, old);
                }
            }
        }
        self.latest = proof;
        self.has_latest = true;
    }

    // ---- candidates ----

    /// Every candidate, in no particular order.
    pub(crate) fn candidates(&self) -> impl Iterator<Item = &Candidate> + '_ {
        let first = (self.first.slot != NO_SLOT).then_some(&self.first);
        let more = self.spill().map(|spill| spill.more.iter());
        first.into_iter().chain(more.into_iter().flatten())
    }

    /// The candidate from the neighbour in `slot`.
    pub(crate) fn candidate(&self, slot: Slot) -> Option<&Candidate> {
        if slot == NO_SLOT {
            return None;
        }
        self.candidates().find(|candidate| candidate.slot == slot)
    }

    /// Whether any neighbour has advertised the destination.
    pub(crate) fn has_candidates(&self) -> bool {
        self.first.slot != NO_SLOT
    }

    /// The advertisement `candidate` carries (signed part).
    pub(crate) fn proof_of(&self, candidate: &Candidate) -> &Proof {
        if candidate.flags & OWN_PROOF != 0 {
            let own = self
                .spill()
                .and_then(|spill| find(&spill.proofs, candidate.slot));
            debug_assert!(own.is_some(), "a candidate with OWN_PROOF has its proof");
            if let Some(own) = own {
                return own;
            }
        }
        &self.latest
    }

    /// The signed advertisement `candidate` carries, about `destination`.
    pub(crate) fn advert_of(&self, candidate: &Candidate, destination: NodeId) -> SignedAdvert {
        self.proof_of(candidate).advert(destination)
    }

    /// The price `candidate`'s neighbour advertised, milli-tokens per MB.
    pub(crate) fn price_of(&self, candidate: &Candidate) -> u64 {
        if candidate.flags & BIG_PRICE != 0 {
            let big = self
                .spill()
                .and_then(|spill| find(&spill.prices, candidate.slot));
            debug_assert!(big.is_some(), "a candidate with BIG_PRICE has its price");
            return big.copied().unwrap_or(u64::MAX);
        }
        u64::from(candidate.price)
    }

    /// When `candidate` expires: `route_timeout` after its advertisement was signed, or
    /// after it arrived if that was earlier.
    pub(crate) fn expires_at(&self, candidate: &Candidate, route_timeout: Duration) -> Timestamp {
        let skew = if candidate.flags & SKEWED != 0 {
            self.spill()
                .and_then(|spill| find(&spill.skews, candidate.slot))
                .copied()
                .unwrap_or(0)
        } else {
            0
        };
        let issued_at = self.proof_of(candidate).issued_at.as_millis();
        Timestamp::from_millis(issued_at.saturating_sub(skew)).saturating_add(route_timeout)
    }

    /// `candidate`'s path from `neighbour` (its next hop) to `destination`, both included.
    pub(crate) fn path_of(
        &self,
        candidate: &Candidate,
        neighbour: NodeId,
        destination: NodeId,
    ) -> Vec<NodeId> {
        if candidate.hops <= 1 {
            return vec![neighbour];
        }
        let inner: &[NodeId] = if candidate.hops > 2 {
            self.spill()
                .and_then(|spill| find(&spill.paths, candidate.slot))
                .map_or(&[], |inner| inner)
        } else {
            &[]
        };
        let mut path = Vec::with_capacity(inner.len() + 2);
        path.push(neighbour);
        path.extend_from_slice(inner);
        path.push(destination);
        path
    }

    /// Stores the advertisement `proof` from the neighbour in `slot` as its candidate,
    /// replacing the one it had: its metric, its price, `path` (from the neighbour to the
    /// destination, both included; just the neighbour when it is the destination) and how
    /// many milliseconds after its arrival it was signed (`skew_ms`, 0 normally).
    pub(crate) fn insert_candidate(
        &mut self,
        slot: Slot,
        metric: u32,
        price: u64,
        proof: &Proof,
        skew_ms: u64,
        path: &[NodeId],
    ) {
        debug_assert!(slot != NO_SLOT && !path.is_empty());
        self.remove_candidate(slot);
        let mut flags = 0;
        if self.latest() != Some(proof) {
            flags |= OWN_PROOF;
            put(&mut self.spill_mut().proofs, slot, *proof);
        }
        if skew_ms > 0 {
            flags |= SKEWED;
            put(&mut self.spill_mut().skews, slot, skew_ms);
        }
        if path.len() > 2 {
            let inner: Box<[NodeId]> = path[1..path.len() - 1].into();
            put(&mut self.spill_mut().paths, slot, inner);
        }
        let small_price = match u32::try_from(price) {
            Ok(small) if small != u32::MAX => small,
            _ => {
                flags |= BIG_PRICE;
                put(&mut self.spill_mut().prices, slot, price);
                u32::MAX
            }
        };
        let candidate = Candidate {
            metric,
            price: small_price,
            slot,
            hops: u8::try_from(path.len()).unwrap_or(u8::MAX),
            flags,
        };
        if self.first.slot == NO_SLOT {
            self.first = candidate;
        } else {
            let more = &mut self.spill_mut().more;
            more.reserve_exact(1);
            more.push(candidate);
        }
    }

    /// Forgets the candidate from `slot`; whether there was one. The selection is the
    /// caller's to redo.
    pub(crate) fn remove_candidate(&mut self, slot: Slot) -> bool {
        if slot == NO_SLOT {
            return false;
        }
        let found = if self.first.slot == slot {
            self.first = self
                .spill_if_any_mut()
                .and_then(|spill| spill.more.pop())
                .unwrap_or(NO_CANDIDATE);
            true
        } else if let Some(spill) = self.spill_if_any_mut() {
            match spill.more.iter().position(|c| c.slot == slot) {
                Some(at) => {
                    spill.more.swap_remove(at);
                    true
                }
                None => false,
            }
        } else {
            false
        };
        if found {
            if let Some(spill) = self.spill_if_any_mut() {
                spill.more.shrink_to_fit();
                take(&mut spill.proofs, slot);
                take(&mut spill.paths, slot);
                take(&mut spill.skews, slot);
                take(&mut spill.prices, slot);
            }
            self.tidy();
        }
        found
    }

    /// Forgets the candidates that have expired by `now`; how many.
    pub(crate) fn expire_candidates(&mut self, now: Timestamp, route_timeout: Duration) -> usize {
        let mut expired = 0;
        loop {
            let due = self
                .candidates()
                .find(|candidate| self.expires_at(candidate, route_timeout) <= now)
                .map(|candidate| candidate.slot);
            let Some(slot) = due else {
                return expired;
            };
            self.remove_candidate(slot);
            expired += 1;
        }
    }

    /// The earliest candidate expiry.
    pub(crate) fn next_expiry(&self, route_timeout: Duration) -> Option<Timestamp> {
        self.candidates()
            .map(|candidate| self.expires_at(candidate, route_timeout))
            .min()
    }

    // ---- selection ----

    /// The best usable candidate: feasible, over a live link (`link` gives its cost and the
    /// neighbour's id), within `max_hops`, with a finite metric. Prefers the newest sequence
    /// number, then the lowest metric, then the smallest neighbour id.
    pub(crate) fn best(
        &self,
        link: impl Fn(Slot) -> Option<(u32, NodeId)>,
        max_hops: u8,
    ) -> Option<Slot> {
        self.candidates()
            .filter_map(|candidate| {
                let (cost, neighbour) = link(candidate.slot)?;
                let metric = self.usable_metric(candidate, cost, max_hops)?;
                Some((
                    self.proof_of(candidate).seqno,
                    metric,
                    neighbour,
                    candidate.slot,
                ))
            })
            .min_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)))
            .map(|(_, _, _, slot)| slot)
    }

    /// Whether the candidate from `slot` could be selected now.
    pub(crate) fn is_usable(
        &self,
        slot: Slot,
        link: impl Fn(Slot) -> Option<(u32, NodeId)>,
        max_hops: u8,
    ) -> bool {
        self.candidate(slot).is_some_and(|candidate| {
            link(slot)
                .is_some_and(|(cost, _)| self.usable_metric(candidate, cost, max_hops).is_some())
        })
    }

    fn usable_metric(&self, candidate: &Candidate, cost: u32, max_hops: u8) -> Option<u32> {
        let metric = candidate.metric.saturating_add(cost);
        (metric < METRIC_INFINITY
            && candidate.hops <= max_hops
            && feasible(self.fd(), self.proof_of(candidate).seqno, candidate.metric))
        .then_some(metric)
    }

    // ---- feasibility distance ----

    /// The feasibility distance, once this node has advertised a route to the destination.
    pub(crate) fn fd(&self) -> Option<FeasibilityDistance> {
        self.cold
            .as_ref()
            .filter(|cold| cold.fd_metric != METRIC_INFINITY)
            .map(|cold| FeasibilityDistance {
                seqno: cold.fd_seqno,
                metric: cold.fd_metric,
            })
    }

    /// When the feasibility distance may be forgotten.
    pub(crate) fn fd_hold_until(&self) -> Timestamp {
        self.cold
            .as_ref()
            .map_or(Timestamp::ZERO, |cold| cold.fd_hold_until)
    }

    /// Records that this node advertised `(seqno, metric)`: the feasibility distance only
    /// ever improves, and is held until `hold_until`. An infinite metric (a retraction)
    /// sets no distance.
    pub(crate) fn advertised(&mut self, seqno: u64, metric: u32, hold_until: Timestamp) {
        let improves = metric != METRIC_INFINITY && feasible(self.fd(), seqno, metric);
        let cold = self.cold_mut();
        if improves {
            cold.fd_seqno = seqno;
            cold.fd_metric = metric;
        }
        cold.fd_hold_until = cold.fd_hold_until.max(hold_until);
        self.tidy();
    }

    /// Forgets the feasibility distance (its hold time has passed).
    pub(crate) fn forget_fd(&mut self) {
        if let Some(cold) = self.cold.as_mut() {
            cold.fd_metric = METRIC_INFINITY;
            cold.fd_seqno = 0;
            cold.fd_hold_until = Timestamp::ZERO;
        }
        self.tidy();
    }

    // ---- wanted ----

    /// Until when the destination is wanted (asked for by `find_route`).
    pub(crate) fn wanted_until(&self) -> Option<Timestamp> {
        self.spill()
            .map(|spill| spill.wanted_until)
            .filter(|until| *until != Timestamp::ZERO)
    }

    /// Sets (or with `None` clears) the time the destination is wanted until.
    pub(crate) fn set_wanted_until(&mut self, until: Option<Timestamp>) {
        match until.filter(|until| *until != Timestamp::ZERO) {
            Some(until) => self.spill_mut().wanted_until = until,
            None => {
                if let Some(spill) = self.spill_if_any_mut() {
                    spill.wanted_until = Timestamp::ZERO;
                }
                self.tidy();
            }
        }
    }

    // ---- precursors ----

    /// Adds the neighbour in `slot` to the precursors.
    pub(crate) fn add_precursor(&mut self, slot: Slot) {
        if slot < 64 {
            self.cold_mut().precursors |= 1 << slot;
        } else if slot != NO_SLOT {
            let precursors = &mut self.spill_mut().precursors;
            if !precursors.contains(&slot) {
                precursors.reserve_exact(1);
                precursors.push(slot);
            }
        }
    }

    /// Removes the neighbour in `slot` from the precursors.
    pub(crate) fn remove_precursor(&mut self, slot: Slot) {
        if slot < 64 {
            if let Some(cold) = self.cold.as_mut() {
                cold.precursors &= !(1 << slot);
            }
        } else if let Some(spill) = self.spill_if_any_mut() {
            if let Some(at) = spill.precursors.iter().position(|s| *s == slot) {
                spill.precursors.swap_remove(at);
                spill.precursors.shrink_to_fit();
            }
        }
        self.tidy();
    }

    /// Takes every precursor out, by slot.
    pub(crate) fn take_precursors(&mut self) -> Vec<Slot> {
        let mut slots = Vec::new();
        if let Some(cold) = self.cold.as_mut() {
            let mut bits = std::mem::take(&mut cold.precursors);
            while bits != 0 {
                slots.push(bits.trailing_zeros() as Slot);
                bits &= bits - 1;
            }
        }
        if let Some(spill) = self.spill_if_any_mut() {
            slots.append(&mut spill.precursors);
            spill.precursors.shrink_to_fit();
        }
        self.tidy();
        slots
    }

    // ---- storage ----

    fn cold_mut(&mut self) -> &mut Cold {
        self.cold.get_or_insert_with(|| Box::new(Cold::EMPTY))
    }

    fn spill(&self) -> Option<&Spill> {
        self.cold.as_ref()?.spill.as_deref()
    }

    fn spill_if_any_mut(&mut self) -> Option<&mut Spill> {
        self.cold.as_mut()?.spill.as_deref_mut()
    }

    fn spill_mut(&mut self) -> &mut Spill {
        self.cold_mut().spill.get_or_insert_with(Box::default)
    }

    /// Frees what holds nothing any more.
    fn tidy(&mut self) {
        if let Some(cold) = self.cold.as_mut() {
            if cold.spill.as_ref().is_some_and(|spill| spill.is_empty()) {
                cold.spill = None;
            }
            if cold.is_empty() {
                self.cold = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKeypair;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn keypair(seed: u64) -> NodeKeypair {
        NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    const TIMEOUT: Duration = Duration::from_secs(300);

    #[test]
    fn feasibility_follows_rfc_8966() {
        let fd = FeasibilityDistance {
            seqno: 10,
            metric: 500,
        };
        assert!(fd.admits(11, 10_000), "a newer seqno is always feasible");
        assert!(fd.admits(10, 499), "same seqno, strictly smaller metric");
        assert!(!fd.admits(10, 500), "same seqno and metric is not");
        assert!(!fd.admits(9, 0), "an older seqno never is");
        assert!(feasible(None, 0, u32::MAX - 1));
    }

    #[test]
    fn selection_skips_infeasible_candidates_and_prefers_new_seqnos() {
        let destination = keypair(1);
        let ids = [
            keypair(2).node_id(),
            keypair(3).node_id(),
            keypair(4).node_id(),
        ];
        let [a, b, c]: [Slot; 3] = [0, 1, 2];
        let old = Proof::of(&SignedAdvert::sign(&destination, 10, Timestamp::ZERO));
        let new = Proof::of(&SignedAdvert::sign(&destination, 11, Timestamp::ZERO));
        let dest = destination.node_id();
        let path = [dest];
        let mut entry = DestinationEntry::default();
        entry.set_latest(old);
        entry.insert_candidate(a, 100, 0, &old, 0, &path);
        entry.insert_candidate(b, 300, 0, &old, 0, &path);
        let cost = |slot: Slot| Some((100, ids[usize::from(slot)]));
        assert_eq!(entry.best(cost, 10), Some(a));
        entry.advertised(10, 200, Timestamp::MAX);
        assert_eq!(entry.best(cost, 10), Some(a), "100 < 200 stays feasible");
        entry.insert_candidate(a, 250, 0, &old, 0, &path);
        assert_eq!(entry.best(cost, 10), None, "250 and 300 are not below 200");
        assert!(!entry.is_usable(a, cost, 10));
        entry.set_latest(new);
        entry.insert_candidate(c, 5_000, 0, &new, 0, &path);
        assert_eq!(entry.best(cost, 10), Some(c), "a newer seqno wins");
        assert_eq!(entry.best(|_| None, 10), None, "no live link, no route");
        // A worse advertisement never raises the distance.
        entry.advertised(10, 900, Timestamp::ZERO);
        assert_eq!(
            entry.fd(),
            Some(FeasibilityDistance {
                seqno: 10,
                metric: 200
            })
        );
        assert_eq!(entry.fd_hold_until(), Timestamp::MAX);
        // Ties on seqno and metric go to the smaller neighbour id.
        let mut tie = DestinationEntry::default();
        tie.set_latest(old);
        tie.insert_candidate(a, 100, 0, &old, 0, &path);
        tie.insert_candidate(b, 100, 0, &old, 0, &path);
        let smaller = if ids[0] < ids[1] { a } else { b };
        assert_eq!(tie.best(cost, 10), Some(smaller));
    }

    #[test]
    fn a_destination_with_one_short_route_fits_in_its_entry() {
        // The entry is boxed in the table: 104 bytes are a 112-byte allocation (glibc), and
        // an advertised route's cold part, 40 bytes, a 48-byte one.
        assert!(
            std::mem::size_of::<DestinationEntry>() <= 104,
            "{} bytes",
            std::mem::size_of::<DestinationEntry>()
        );
        assert!(std::mem::size_of::<Cold>() <= 40);
        assert_eq!(std::mem::size_of::<Candidate>(), 12);
        let destination = keypair(1);
        let neighbour = keypair(2).node_id();
        let advert = SignedAdvert::sign(&destination, 7, Timestamp::from_millis(1_000));
        let proof = Proof::of(&advert);
        let mut entry = DestinationEntry::default();
        entry.set_latest(proof);
        entry.insert_candidate(
            3,
            150,
            100_000,
            &proof,
            0,
            &[neighbour, destination.node_id()],
        );
        entry.selected = 3;
        assert!(entry.cold.is_none(), "nothing beyond the entry itself");
        let candidate = *entry.candidate(3).expect("a candidate");
        assert_eq!(entry.price_of(&candidate), 100_000);
        assert_eq!(entry.advert_of(&candidate, destination.node_id()), advert);
        assert_eq!(
            entry.path_of(&candidate, neighbour, destination.node_id()),
            vec![neighbour, destination.node_id()]
        );
        assert_eq!(
            entry.expires_at(&candidate, TIMEOUT),
            Timestamp::from_millis(301_000)
        );
    }

    #[test]
    fn candidates_keep_their_own_advert_when_a_newer_one_arrives() {
        let destination = keypair(1);
        let dest = destination.node_id();
        let old = SignedAdvert::sign(&destination, 7, Timestamp::from_millis(1_000));
        let new = SignedAdvert::sign(&destination, 8, Timestamp::from_millis(2_000));
        let [x, y, z] = [
            keypair(2).node_id(),
            keypair(3).node_id(),
            keypair(4).node_id(),
        ];
        let mut entry = DestinationEntry::default();
        entry.set_latest(Proof::of(&old));
        // A four-hop path: the nodes between the ends are kept aside.
        entry.insert_candidate(0, 10, 0, &Proof::of(&old), 0, &[x, y, z, dest]);
        entry.insert_candidate(70, 20, 0, &Proof::of(&old), 0, &[z, dest]);
        entry.set_latest(Proof::of(&new));
        entry.insert_candidate(1, 30, 0, &Proof::of(&new), 0, &[y, dest]);
        let advert = |entry: &DestinationEntry, slot| {
            entry.advert_of(entry.candidate(slot).expect("a candidate"), dest)
        };
        assert_eq!(advert(&entry, 0), old);
        assert_eq!(advert(&entry, 70), old);
        assert_eq!(advert(&entry, 1), new);
        assert_eq!(entry.latest(), Some(&Proof::of(&new)));
        let first = *entry.candidate(0).expect("a candidate");
        assert_eq!(first.hops, 4);
        assert_eq!(entry.path_of(&first, x, dest), vec![x, y, z, dest]);
        // The neighbour in slot 0 catches up: its candidate shares the newest advert again.
        entry.insert_candidate(0, 10, 0, &Proof::of(&new), 0, &[x, dest]);
        assert_eq!(advert(&entry, 0), new);
        assert_eq!(
            entry.spill().expect("spilled").proofs.len(),
            1,
            "only slot 70's own"
        );
        assert!(entry.spill().expect("spilled").paths.is_empty());
        // Removing all but one candidate frees everything else.
        assert!(entry.remove_candidate(70));
        assert!(entry.remove_candidate(0));
        assert!(!entry.remove_candidate(0));
        assert_eq!(entry.candidates().count(), 1);
        assert!(entry.cold.is_none());
        assert_eq!(advert(&entry, 1), new);
    }

    #[test]
    fn a_price_too_big_for_the_candidate_is_kept_aside_exactly() {
        let destination = keypair(1);
        let dest = destination.node_id();
        let proof = Proof::of(&SignedAdvert::sign(&destination, 1, Timestamp::ZERO));
        let mut entry = DestinationEntry::default();
        entry.set_latest(proof);
        let below = u64::from(u32::MAX) - 1;
        let big = [u64::from(u32::MAX), u64::MAX];
        entry.insert_candidate(0, 5, below, &proof, 0, &[dest]);
        entry.insert_candidate(1, 5, big[0], &proof, 0, &[dest]);
        entry.insert_candidate(2, 5, big[1], &proof, 0, &[dest]);
        let price = |entry: &DestinationEntry, slot| {
            entry.price_of(entry.candidate(slot).expect("a candidate"))
        };
        assert_eq!(
            [price(&entry, 0), price(&entry, 1), price(&entry, 2)],
            [below, big[0], big[1]]
        );
        assert_eq!(entry.spill().expect("spilled").prices.len(), 2);
        // A new advertisement at a small price, then removals, free the spilled prices.
        entry.insert_candidate(1, 5, 7, &proof, 0, &[dest]);
        assert_eq!(price(&entry, 1), 7);
        assert!(entry.remove_candidate(2));
        assert!(entry.remove_candidate(0));
        assert_eq!(price(&entry, 1), 7);
        assert!(entry.cold.is_none());
    }

    #[test]
    fn an_advert_signed_after_it_arrived_expires_from_its_arrival() {
        let destination = keypair(1);
        let dest = destination.node_id();
        // Signed at 5 s on the destination's clock, received at 2 s on ours.
        let proof = Proof::of(&SignedAdvert::sign(
            &destination,
            1,
            Timestamp::from_millis(5_000),
        ));
        let mut entry = DestinationEntry::default();
        entry.set_latest(proof);
        entry.insert_candidate(0, 0, 0, &proof, 3_000, &[dest]);
        entry.insert_candidate(1, 0, 0, &proof, 0, &[dest]);
        let expiry = |slot| entry.expires_at(entry.candidate(slot).expect("a candidate"), TIMEOUT);
        assert_eq!(expiry(0), Timestamp::from_millis(302_000));
        assert_eq!(expiry(1), Timestamp::from_millis(305_000));
        assert_eq!(
            entry.next_expiry(TIMEOUT),
            Some(Timestamp::from_millis(302_000))
        );
        assert_eq!(
            entry.expire_candidates(Timestamp::from_millis(302_000), TIMEOUT),
            1
        );
        assert!(entry.candidate(0).is_none() && entry.candidate(1).is_some());
        assert_eq!(
            entry.expire_candidates(Timestamp::from_millis(305_000), TIMEOUT),
            1
        );
        assert!(!entry.has_candidates());
        assert!(entry.cold.is_none());
    }

    #[test]
    fn precursors_fd_and_wanted_are_stored_only_while_set() {
        let mut entry = DestinationEntry::default();
        entry.add_precursor(3);
        entry.add_precursor(64);
        entry.add_precursor(900);
        entry.add_precursor(900);
        entry.remove_precursor(64);
        let mut taken = entry.take_precursors();
        taken.sort_unstable();
        assert_eq!(taken, vec![3, 900]);
        assert!(entry.cold.is_none());
        entry.set_wanted_until(Some(Timestamp::from_millis(10)));
        assert_eq!(entry.wanted_until(), Some(Timestamp::from_millis(10)));
        entry.advertised(5, 100, Timestamp::from_millis(20));
        entry.set_wanted_until(None);
        assert_eq!(entry.wanted_until(), None);
        assert_eq!(
            entry.fd(),
            Some(FeasibilityDistance {
                seqno: 5,
                metric: 100
            })
        );
        entry.advertised(6, METRIC_INFINITY, Timestamp::from_millis(30));
        assert_eq!(
            entry.fd().map(|fd| fd.seqno),
            Some(5),
            "a retraction sets no distance"
        );
        entry.forget_fd();
        assert_eq!(entry.fd(), None);
        assert!(entry.cold.is_none());
    }
}
