//! Tests of the peer manager: policy scenarios, then invariants under random event sequences.

use super::*;
use crate::NodeKeypair;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;

fn id(seed: u64) -> NodeId {
    NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed)).node_id()
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, i], 7000))
}

fn manager(min: usize, max: usize) -> (PeerManager, Instant) {
    let mut config = PeerManagerConfig::new(7);
    config.min_links = min;
    config.max_links = max;
    (PeerManager::new(id(0), config), Instant::now())
}

fn drain(manager: &mut PeerManager) -> Vec<PeerAction> {
    std::iter::from_fn(|| manager.poll_action()).collect()
}

fn dials(actions: &[PeerAction]) -> Vec<NodeId> {
    actions
        .iter()
        .filter_map(|a| match a {
            PeerAction::Dial { peer, .. } => Some(*peer),
            _ => None,
        })
        .collect()
}

#[test]
fn dials_towards_min_links_with_two_spares_and_not_beyond() {
    let (mut m, now) = manager(3, 10);
    for i in 1..=8 {
        m.add_peer(now, id(i), &[addr(i as u8)], DiscoverySource::Pex);
    }
    m.handle_timeout(now);
    let first = dials(&drain(&mut m));
    assert_eq!(first.len(), 3 + 2, "the shortfall plus two spare dials");
    // Nothing new while those dials are in flight.
    m.handle_timeout(now + Duration::from_secs(1));
    assert!(dials(&drain(&mut m)).is_empty());
    for (n, peer) in first.iter().take(3).enumerate() {
        m.link_up(
            now,
            *peer,
            LinkId(n as u64),
            Direction::Outbound,
            Capabilities::empty(),
            &[],
        )
        .expect("accepted");
    }
    for peer in &first[3..] {
        m.dial_failed(now, *peer);
    }
    // At min_links: no more dials, however many candidates remain.
    m.handle_timeout(now + Duration::from_secs(2));
    assert!(dials(&drain(&mut m)).is_empty());
    assert_eq!(m.links().len(), 3);
}

#[test]
fn never_dials_itself_or_a_blacklisted_peer() {
    let (mut m, now) = manager(3, 10);
    assert!(!m.add_peer(now, id(0), &[addr(1)], DiscoverySource::Pex));
    m.add_peer(now, id(1), &[addr(1)], DiscoverySource::Pex);
    m.misbehaved(now, id(1), "garbage");
    m.handle_timeout(now);
    assert!(dials(&drain(&mut m)).is_empty());
    assert_eq!(
        m.dial_now(now, id(0), &[addr(1)]),
        Err(CloseReason::SelfLink)
    );
    assert_eq!(
        m.dial_now(now, id(1), &[addr(1)]),
        Err(CloseReason::Blacklisted)
    );
    assert_eq!(
        m.link_up(
            now,
            id(1),
            LinkId(1),
            Direction::Inbound,
            Capabilities::empty(),
            &[]
        ),
        Err(CloseReason::Blacklisted)
    );
    // The blacklist expires.
    let later = now + Duration::from_secs(61);
    assert!(!m.is_blacklisted(&id(1), later));
}

#[test]
fn failed_dials_back_off_exponentially() {
    let (mut m, now) = manager(1, 10);
    m.add_peer(now, id(1), &[addr(1)], DiscoverySource::Bootstrap);
    let mut t = now;
    let mut gaps = Vec::new();
    for _ in 0..5 {
        // Step until the dial comes.
        let start = t;
        loop {
            m.handle_timeout(t);
            if !dials(&drain(&mut m)).is_empty() {
                break;
            }
            t += Duration::from_millis(250);
        }
        gaps.push(t - start);
        m.dial_failed(t, id(1));
    }
    // 0, ~1 s, ~2 s, ~4 s, ~8 s (±20 %, at 250 ms and 1 s tick granularity)
    assert!(gaps[4] > gaps[2], "{gaps:?}");
    assert!(gaps[4] >= Duration::from_secs(6), "{gaps:?}");
}

#[test]
fn a_newcomer_at_max_replaces_the_worst_old_link() {
    let (mut m, now) = manager(1, 2);
    m.link_up(
        now,
        id(1),
        LinkId(1),
        Direction::Inbound,
        Capabilities::empty(),
        &[addr(1)],
    )
    .expect("up");
    m.link_up(
        now,
        id(2),
        LinkId(2),
        Direction::Inbound,
        Capabilities::empty(),
        &[addr(2)],
    )
    .expect("up");
    m.link_quality(id(1), 0.9);
    m.link_quality(id(2), 0.2);
    // Too early: both links are younger than min_link_age.
    assert_eq!(
        m.link_up(
            now,
            id(3),
            LinkId(3),
            Direction::Inbound,
            Capabilities::empty(),
            &[]
        ),
        Err(CloseReason::Full)
    );
    let later = now + Duration::from_secs(11);
    m.link_up(
        later,
        id(3),
        LinkId(3),
        Direction::Inbound,
        Capabilities::empty(),
        &[],
    )
    .expect("up");
    let actions = drain(&mut m);
    assert!(actions.contains(&PeerAction::Close {
        peer: id(2),
        link: LinkId(2),
        reason: CloseReason::Evicted
    }));
    assert_eq!(m.links().len(), 2);
}

#[test]
fn simultaneous_dials_keep_the_same_link_on_both_sides() {
    let (a, b) = (id(1), id(2));
    let mut ma = PeerManager::new(a, PeerManagerConfig::new(1));
    let mut mb = PeerManager::new(b, PeerManagerConfig::new(2));
    let now = Instant::now();
    // Link 10 was dialled by a, link 20 by b; each side sees both.
    ma.link_up(
        now,
        b,
        LinkId(10),
        Direction::Outbound,
        Capabilities::empty(),
        &[],
    )
    .expect("first");
    mb.link_up(
        now,
        a,
        LinkId(20),
        Direction::Outbound,
        Capabilities::empty(),
        &[],
    )
    .expect("first");
    let ra = ma.link_up(
        now,
        b,
        LinkId(20),
        Direction::Inbound,
        Capabilities::empty(),
        &[],
    );
    let rb = mb.link_up(
        now,
        a,
        LinkId(10),
        Direction::Inbound,
        Capabilities::empty(),
        &[],
    );
    let kept_a = ma.links()[&b].id;
    let kept_b = mb.links()[&a].id;
    let dialled_by_smaller = if a < b { LinkId(10) } else { LinkId(20) };
    assert_eq!(kept_a, dialled_by_smaller, "{ra:?}");
    assert_eq!(kept_b, dialled_by_smaller, "{rb:?}");
}

#[test]
fn a_redialling_peer_replaces_its_stale_link() {
    let (mut m, now) = manager(1, 10);
    m.link_up(
        now,
        id(1),
        LinkId(1),
        Direction::Inbound,
        Capabilities::empty(),
        &[],
    )
    .expect("up");
    let later = now + Duration::from_secs(30);
    m.link_up(
        later,
        id(1),
        LinkId(2),
        Direction::Inbound,
        Capabilities::empty(),
        &[],
    )
    .expect("newer wins");
    assert_eq!(m.links()[&id(1)].id, LinkId(2));
    assert!(drain(&mut m).contains(&PeerAction::Close {
        peer: id(1),
        link: LinkId(1),
        reason: CloseReason::Duplicate
    }));
}

#[test]
fn pex_answers_are_rate_limited_and_exclude_the_requester() {
    let (mut m, now) = manager(1, 10);
    for i in 1..=5 {
        m.link_up(
            now,
            id(i),
            LinkId(i),
            Direction::Inbound,
            Capabilities::empty(),
            &[addr(i as u8)],
        )
        .expect("up");
    }
    let answer = m.pex_answer(now, id(1)).expect("first answer");
    assert_eq!(answer.len(), 4);
    assert!(answer.iter().all(|p| p.id() != Some(id(1))));
    assert!(m.pex_answer(now + Duration::from_secs(1), id(1)).is_none());
    assert!(m.pex_answer(now + Duration::from_secs(6), id(1)).is_some());
    assert!(
        m.pex_answer(now, id(99)).is_none(),
        "only linked peers may ask"
    );
}

#[test]
fn pex_from_a_stranger_is_ignored() {
    let (mut m, now) = manager(1, 10);
    let peers = [PeerAddress {
        node_id: *id(5).as_bytes(),
        addrs: vec![addr(5)],
    }];
    assert_eq!(m.handle_pex(now, id(9), &peers), 0);
    m.link_up(
        now,
        id(9),
        LinkId(9),
        Direction::Inbound,
        Capabilities::empty(),
        &[],
    )
    .expect("up");
    assert_eq!(m.handle_pex(now, id(9), &peers), 1);
}

#[test]
fn diverse_candidates_are_preferred() {
    let (mut m, now) = manager(2, 10);
    m.add_peer(
        now,
        id(1),
        &[SocketAddr::from(([203, 0, 113, 1], 1))],
        DiscoverySource::Pex,
    );
    m.link_up(
        now,
        id(1),
        LinkId(1),
        Direction::Outbound,
        Capabilities::empty(),
        &[],
    )
    .expect("up");
    // Same /24 as the existing link vs. a different /24.
    m.add_peer(
        now,
        id(2),
        &[SocketAddr::from(([203, 0, 113, 2], 1))],
        DiscoverySource::Pex,
    );
    m.add_peer(
        now,
        id(3),
        &[SocketAddr::from(([198, 51, 100, 3], 1))],
        DiscoverySource::Pex,
    );
    m.handle_timeout(now);
    assert_eq!(
        dials(&drain(&mut m)).first(),
        Some(&id(3)),
        "the other /24 is dialled first"
    );
}

#[test]
fn lowering_max_closes_the_worst_links() {
    let (mut m, now) = manager(1, 5);
    for i in 1..=4 {
        m.link_up(
            now,
            id(i),
            LinkId(i),
            Direction::Inbound,
            Capabilities::empty(),
            &[],
        )
        .expect("up");
        m.link_quality(id(i), i as f64 / 10.0);
    }
    m.set_limits(1, 2);
    assert_eq!(m.links().len(), 2);
    assert!(m.links().contains_key(&id(4)) && m.links().contains_key(&id(3)));
}

#[derive(Debug, Clone)]
enum Event {
    Discover(u8),
    Up(u8, bool),
    Down(u8),
    Fail(u8),
    Misbehave(u8),
    Quality(u8, u8),
    Tick(u16),
    Limits(u8, u8),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0u8..40).prop_map(Event::Discover),
        (0u8..40, any::<bool>()).prop_map(|(p, out)| Event::Up(p, out)),
        (0u8..40).prop_map(Event::Down),
        (0u8..40).prop_map(Event::Fail),
        (0u8..40).prop_map(Event::Misbehave),
        (0u8..40, 0u8..=100).prop_map(|(p, q)| Event::Quality(p, q)),
        (0u16..5000).prop_map(Event::Tick),
        (0u8..10, 1u8..10).prop_map(|(a, b)| Event::Limits(a, b)),
    ]
}

proptest! {
    #[test]
    fn invariants_hold_under_any_event_sequence(events in proptest::collection::vec(event(), 1..200)) {
        let ids: Vec<NodeId> = (0..40).map(id).collect();
        let local = ids[0];
        let mut config = PeerManagerConfig::new(3);
        config.max_known_peers = 16;
        config.min_links = 2;
        config.max_links = 5;
        let mut m = PeerManager::new(local, config);
        let mut now = Instant::now();
        let mut next_link = 0u64;
        for event in events {
            match event {
                Event::Discover(p) => { m.add_peer(now, ids[p as usize], &[addr(p)], DiscoverySource::Pex); }
                Event::Up(p, outbound) => {
                    next_link += 1;
                    let direction = if outbound { Direction::Outbound } else { Direction::Inbound };
                    let result = m.link_up(now, ids[p as usize], LinkId(next_link), direction, Capabilities::empty(), &[addr(p)]);
                    if p == 0 { prop_assert_eq!(result, Err(CloseReason::SelfLink)); }
                }
                Event::Down(p) => {
                    if let Some(link) = m.links().get(&ids[p as usize]).map(|l| l.id) {
                        m.link_down(now, ids[p as usize], link);
                    }
                }
                Event::Fail(p) => m.dial_failed(now, ids[p as usize]),
                Event::Misbehave(p) => m.misbehaved(now, ids[p as usize], "test"),
                Event::Quality(p, q) => m.link_quality(ids[p as usize], f64::from(q) / 100.0),
                Event::Tick(ms) => { now += Duration::from_millis(u64::from(ms)); m.handle_timeout(now); }
                Event::Limits(min, max) => m.set_limits(min as usize, max as usize),
            }
            let (_, max) = m.limits();
            prop_assert!(m.links().len() <= max, "links {} > max {}", m.links().len(), max);
            prop_assert!(!m.links().contains_key(&local));
            prop_assert!(m.known().len() <= 16 + m.links().len());
            while let Some(action) = m.poll_action() {
                if let PeerAction::Dial { peer, .. } = action {
                    prop_assert!(peer != local);
                    prop_assert!(!m.is_blacklisted(&peer, now));
                    prop_assert!(!m.links().contains_key(&peer));
                }
            }
        }
    }
}

#[test]
fn news_while_below_min_makes_maintenance_due_at_once() {
    let (mut m, now) = manager(2, 10);
    m.handle_timeout(now);
    assert!(m.poll_timeout().is_some_and(|t| t > now));
    m.add_peer(now, id(1), &[addr(1)], DiscoverySource::Bootstrap);
    assert_eq!(
        m.poll_timeout(),
        None,
        "a new peer below min is dialled without waiting a tick"
    );
    m.handle_timeout(now);
    assert_eq!(dials(&drain(&mut m)), [id(1)]);
    m.link_up(
        now,
        id(1),
        LinkId(1),
        Direction::Outbound,
        Capabilities::empty(),
        &[],
    )
    .expect("up");
    assert_eq!(
        m.poll_timeout(),
        None,
        "still below min: ask for peers at once"
    );
    m.handle_timeout(now);
    assert!(drain(&mut m).contains(&PeerAction::RequestPex { peer: id(1) }));
}
