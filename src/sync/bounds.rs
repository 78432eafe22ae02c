//! Bounds against a compromised or misconfigured peer: what may one peer make us do?
//!
//! Creator-id spaces (a peer inserts and clears only its own site's states; learned ids,
//! conflicts and their alarms), per-peer and global state caps, clocks too far ahead, and the
//! answer budget that makes a peer pay for the repairs it pulls. See docs/SECURITY.md.

use super::*;

/// Most creator ids a peer without configured `creators` gets pinned to it by learning.
pub const MAX_LEARNED_CREATORS: usize = 8;

/// Most (peer, creator) conflicts remembered so that each is logged once.
pub(super) const MAX_ALARMS: usize = 64;

/// Credit that RECORDS and RANGES (the large answers) leave for the small ones (ACK with
/// 32 NACK ranges, SKIP, HELLO_ACK, SUMMARY reply), so a bulk answer never starves them.
pub(super) const ANSWER_RESERVE: usize = 512;

/// A PAD{want} asks for the credit of this many full datagrams of answers.
pub(super) const WANT_DATAGRAMS: u64 = 16;

impl Peer {
    /// The peer's creator ids: the configured ones, else those learned.
    pub(super) fn space(&self) -> &[u32] {
        if self.creators.is_empty() {
            &self.learned
        } else {
            &self.creators
        }
    }

    /// Credit the opt-in `answer_rate` for the time passed (nothing by default).
    fn refill(&mut self, cfg: &ReplicaConfig, now: Instant) {
        if cfg.answer_rate == 0 {
            return;
        }
        let dt = now.saturating_duration_since(self.credit_at);
        let add = (cfg.answer_rate as u128 * dt.as_micros() / 1_000_000) as i64;
        if add > 0 {
            self.credit = self.credit.saturating_add(add).min(cfg.answer_cap as i64);
            self.credit_at = now;
        }
    }

    /// Bytes of answers we may send the peer now, keeping `reserve` for small answers.
    pub(super) fn affordable(
        &mut self,
        cfg: &ReplicaConfig,
        now: Instant,
        reserve: usize,
    ) -> usize {
        self.refill(cfg, now);
        (self.credit.max(0) as usize).saturating_sub(reserve)
    }

    /// Credit a datagram the peer sent us: its bytes pay for our answers.
    pub(super) fn earn(&mut self, cfg: &ReplicaConfig, bytes: usize) {
        self.stats.rx_bytes += bytes as u64;
        let add = (cfg.answer_factor as i64).saturating_mul(bytes as i64);
        self.credit = self.credit.saturating_add(add).min(cfg.answer_cap as i64);
    }

    /// Pay for an answer of `bytes` (the caller checked `affordable`).
    pub(super) fn spend(&mut self, bytes: usize) {
        self.credit -= bytes as i64;
        self.stats.answer_bytes += bytes as u64;
    }

    /// What an answer of `len` bytes costs, if the budget affords it now (beyond
    /// `reserve`). Charged as sent: with the BUNDLE framing it adds when it joins a
    /// datagram. Asked before an answer that costs work to build (RANGES: its digests) is
    /// built, and by [`answer`](Self::answer) itself.
    pub(super) fn affordable_cost(
        &mut self,
        cfg: &ReplicaConfig,
        len: usize,
        now: Instant,
        reserve: usize,
    ) -> Option<usize> {
        let cost = self.out.bundled_cost(len, cfg.max_datagram);
        (cost <= self.affordable(cfg, now, reserve)).then_some(cost)
    }

    /// Queue answer `m` if the budget affords it (beyond `reserve`); else it is dropped and
    /// counted: every such answer is asked for again by the peer's retry (HELLO every
    /// 500 ms, SUMMARY every second, a repeated NACK, the next digest check).
    pub(super) fn answer(
        &mut self,
        cfg: &ReplicaConfig,
        m: &SyncMsg,
        now: Instant,
        reserve: usize,
    ) -> bool {
        let mut buf = [0u8; 1500];
        let Ok(n) = m.encode(&mut buf) else {
            return false;
        };
        let Some(cost) = self.affordable_cost(cfg, n, now, reserve) else {
            self.stats.answers_deferred += 1;
            return false;
        };
        self.spend(cost);
        self.push_out(cfg, &buf[..n]);
        true
    }

    /// Requester pays: a RECORDS or RANGES datagram of `bytes` arrived from the peer. We owe
    /// it 1/`pad_divisor` of that in PAD, and may pad up to twice that when it asks.
    pub(super) fn owe_pad(&mut self, cfg: &ReplicaConfig, bytes: usize) {
        if cfg.pad_divisor == 0 {
            return;
        }
        let share = bytes as u64 / cfg.pad_divisor;
        self.pad_allow += 2 * share;
        self.pad_owed = (self.pad_owed + share).min(self.pad_allow);
    }

    /// The peer's PAD{want}: its answers to us wait for `want` bytes of credit. We pay
    /// `want / answer_factor`, within what its answers allow us to pad.
    pub(super) fn asked_to_pay(&mut self, cfg: &ReplicaConfig, want: u32) {
        if cfg.pad_divisor == 0 || cfg.answer_factor == 0 {
            return;
        }
        let pay = u64::from(want).div_ceil(cfg.answer_factor);
        self.pad_owed = (self.pad_owed + pay).min(self.pad_allow);
    }

    /// Size of the PAD datagram due now (whole datagrams only: fewer, larger PADs), if any.
    pub(super) fn pad_due(&self, limit: usize) -> Option<usize> {
        let n = self.pad_owed.min(self.pad_allow).min(limit as u64) as usize;
        (n == limit).then_some(n)
    }

    /// The PAD{want} that asks the peer to pay for the answers waiting for it.
    pub(super) fn pay_request(&self, cfg: &ReplicaConfig) -> SyncMsg<'static> {
        let goal = WANT_DATAGRAMS * cfg.max_datagram as u64 * cfg.answer_factor;
        let want = goal.saturating_sub(self.credit.max(0) as u64).max(1);
        SyncMsg::Pad {
            want: want.min(u32::MAX as u64) as u32,
            len: 0,
        }
    }
}

/// 1, 10, 100, …: when a counter of refusals is worth a log line.
fn is_power_of_ten(n: u64) -> bool {
    n.checked_ilog10().is_some_and(|e| 10u64.pow(e) == n)
}

/// A status counter's name and how to read it from one peer's stats.
type NamedStat = (&'static str, fn(&PeerSyncStats) -> u64);

impl Replica {
    /// Each named per-peer counter, summed over the peers.
    fn peer_sums<const N: usize>(&self, fields: [NamedStat; N]) -> [(&'static str, u64); N] {
        fields.map(|(name, get)| (name, self.peers.values().map(|p| get(&p.stats)).sum()))
    }

    /// Drop counters of the hostile-peer bounds, summed over peers (for status/metrics).
    pub fn security_counters(&self) -> impl Iterator<Item = (&'static str, u64)> {
        self.peer_sums([
            ("sync_clock_refused", |s| s.clock_refused),
            ("sync_foreign_creator", |s| s.foreign_refused),
            ("sync_creator_conflict", |s| s.creator_conflicts),
            ("sync_states_refused", |s| s.states_refused),
            ("sync_answer_budget", |s| s.answers_deferred),
            ("sync_clear_budget", |s| s.clears_refused),
        ])
        .into_iter()
        .chain([
            ("local_bulk_refused", self.stats.bulk_refused),
            ("sync_mirror_full", self.table.stats().refused_full),
        ])
    }

    /// What the answer budget charged and was paid, summed over peers: accounting, not
    /// drops (status `local`, not `drops`; a bytes counter is no dropped packet).
    pub fn answer_accounting(&self) -> impl Iterator<Item = (&'static str, u64)> {
        self.peer_sums([
            ("sync_answer_bytes", |s| s.answer_bytes),
            ("sync_pad_tx_bytes", |s| s.pad_tx_bytes),
            ("sync_pad_rx_bytes", |s| s.pad_rx_bytes),
            ("sync_pay_requests", |s| s.pay_requests),
        ])
        .into_iter()
    }

    /// Pin `peer`'s site to these creator ids (from its `[[peer]] creators`): it may insert
    /// and clear states of these creators only. Empty: learned from its first-hand states.
    pub fn set_peer_creators(&mut self, peer: PeerId, creators: &[u32]) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.creators = creators.to_vec();
            p.learned.clear();
        }
    }

    /// Creator ids `peer` may insert and clear states of: configured, else learned so far.
    pub fn peer_creators(&self, peer: PeerId) -> Vec<u32> {
        self.peers
            .get(&peer)
            .map_or_else(Vec::new, |p| p.space().to_vec())
    }

    /// Is a clock `peer` sent within reach of ours, and within what the peer may still
    /// move it? Counted when not, and noted for the log at the 1st, 10th, 100th …
    /// refusal: a peer whose clock runs in another unit is refused until we catch up, and
    /// the counter alone does not say why.
    ///
    /// Every advance of ours a peer causes is paid from its clock credit
    /// ([`CLOCK_REFILL`](super::peer::CLOCK_REFILL)): the part of `clock` above both our
    /// clock and the highest clock it already paid for (a DATA packet's pieces all carry
    /// the same clock). A refusal still moves our clock towards it, by `max_clock_ahead`
    /// at most and no more than the credit left — no further than a clock just within
    /// reach would have: a compromised peer that pushed one gateway's clock out of the
    /// others' reach would otherwise cut it off from them for good; this way they catch
    /// up within a few of its messages.
    pub(super) fn clock_ok(&mut self, peer: PeerId, clock: u64, now: Instant) -> bool {
        let max_ahead = self.cfg.max_clock_ahead;
        let reach = self.clock.saturating_add(max_ahead);
        if clock <= self.clock {
            return true;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return clock <= reach;
        };
        let credit = p.refill_clock_credit(now, max_ahead);
        let cost = clock.saturating_sub(p.clock_paid.max(self.clock));
        if clock <= reach && cost <= credit {
            p.clock_credit -= cost;
            p.clock_paid = p.clock_paid.max(clock);
            return true;
        }
        let ahead = clock - self.clock;
        let step = ahead.min(max_ahead).min(credit);
        p.clock_credit -= step;
        self.clock += step;
        p.stats.clock_refused += 1;
        let count = p.stats.clock_refused;
        if is_power_of_ten(count) {
            self.note(peer, SyncNote::ClockRefused { ahead, count });
        }
        false
    }

    /// Merge a peer's clock into ours (Lamport), unless it is too far ahead.
    pub(super) fn merge_clock(&mut self, peer: PeerId, clock: u64, now: Instant) -> bool {
        let ok = self.clock_ok(peer, clock, now);
        if ok {
            self.clock = self.clock.max(clock);
        }
        ok
    }

    /// Our firewall names `c` as its own: no peer may keep it pinned.
    pub(super) fn unpin_local(&mut self, c: u32) {
        for p in self.peers.values_mut() {
            if let Some(i) = p.learned.iter().position(|&x| x == c) {
                p.learned.swap_remove(i);
                p.stats.creator_conflicts += 1;
            }
        }
    }

    /// May `peer` apply `msg`? Inserts (a state the mirror lacks) and clears must fall in the
    /// peer's creator-id space, inserts within its state cap, and clears that walk the table
    /// within its walk budget. `learn`: the message is first-hand, so an unclaimed creator
    /// id may be pinned to the peer.
    pub(super) fn admit(&mut self, peer: PeerId, msg: &Message, learn: bool, now: Instant) -> bool {
        let ok = self.admit_space(peer, msg, learn, now);
        match msg {
            // A CLR of a creator holding nothing costs no walk.
            Message::Clr { creator, .. } if ok && self.table.creator_len(*creator) > 0 => {
                let p = self.peers.get_mut(&peer).unwrap();
                if !p.clear_walk(now) {
                    p.stats.clears_refused += 1;
                    let count = p.stats.clears_refused;
                    if is_power_of_ten(count) {
                        self.note(peer, SyncNote::ClearsRefused(count));
                    }
                    return false;
                }
                true
            }
            _ => ok,
        }
    }

    fn admit_space(&mut self, peer: PeerId, msg: &Message, learn: bool, now: Instant) -> bool {
        // Held, or deleted: an update or delete of it is admitted (a deleted state the
        // table refuses, and the tombstone goes back).
        let known =
            |r: &Self, id: StateId| r.table.get(id).is_some() || r.table.tombstone(id).is_some();
        let (creator, insert) = match msg {
            Message::Ins(s) | Message::Upd(s) if s.id.creator != 0 => {
                if known(self, s.id) {
                    return true;
                }
                (s.id.creator, true)
            }
            Message::Clr { creator, .. } => (*creator, false),
            Message::Del(crate::wire::StateRepr { id, .. }) | Message::DelC(id)
                if id.creator != 0 =>
            {
                if known(self, *id) {
                    return true;
                }
                // A delete of a state nobody told us about writes a tombstone that would
                // refuse its insert: only the creator's own site may do that. (pf ids are
                // sequential: a compromised peer could otherwise pre-delete our firewall's
                // or another site's next connections.) Second-hand and harmless when
                // refused, so no alarm: the owner's digest brings the tombstone if the
                // state did exist.
                if !self.cfg.creator_spaces || self.peers[&peer].space().contains(&id.creator) {
                    return true;
                }
                self.peers.get_mut(&peer).unwrap().stats.foreign_refused += 1;
                return false;
            }
            _ => return true,
        };
        if !self.cfg.creator_spaces {
            return true;
        }
        let mut own = self.peers[&peer].space().contains(&creator);
        if !own {
            let claimed = self.local_creators.contains(&creator)
                || self.peers.iter().any(|(&id, q)| {
                    id != peer && (q.creators.contains(&creator) || q.learned.contains(&creator))
                });
            let p = self.peers.get_mut(&peer).unwrap();
            if claimed {
                // A first-hand claim (its INS, its own version) or a CLR: an alarm. A
                // second-hand repair of another site's state is normal after restarts.
                if learn || !insert {
                    p.stats.creator_conflicts += 1;
                    self.alarm(peer, creator);
                }
            } else if learn
                && insert
                && p.creators.is_empty()
                && p.learned.len() < MAX_LEARNED_CREATORS
            {
                p.learned.push(creator);
                own = true;
            }
        }
        if !own {
            self.peers.get_mut(&peer).unwrap().stats.foreign_refused += 1;
            return false;
        }
        if insert {
            let space = self.peers[&peer].space();
            let held: usize = space.iter().map(|&c| self.table.creator_len(c)).sum();
            if held >= self.cfg.peer_max_states {
                self.peers.get_mut(&peer).unwrap().stats.states_refused += 1;
                self.note_full(now);
                return false;
            }
        }
        true
    }

    /// A peer claimed a creator id that belongs to another site: log once per pair.
    pub(super) fn alarm(&mut self, peer: PeerId, creator: u32) {
        if self.alarms.contains(&(peer, creator)) || self.alarms.len() >= MAX_ALARMS {
            return;
        }
        self.alarms.push((peer, creator));
        let owner = if self.local_creators.contains(&creator) {
            None
        } else {
            self.peers
                .iter()
                .find(|(_, q)| q.creators.contains(&creator) || q.learned.contains(&creator))
                .map(|(&id, _)| id)
        };
        // The node logs it at error level, with the peers' names.
        self.notes
            .push_back((peer, SyncNote::CreatorConflict { creator, owner }));
    }

    /// A state cap was hit: warn at most every 10 s.
    pub(super) fn note_full(&mut self, now: Instant) {
        if self
            .full_logged
            .is_some_and(|t| now < t + Duration::from_secs(10))
        {
            return;
        }
        self.full_logged = Some(now);
        let refused: u64 = self.peers.values().map(|p| p.stats.states_refused).sum();
        tracing::warn!(
            states = self.table.len(),
            max = self.cfg.table.max_states,
            peer_max = self.cfg.peer_max_states,
            refused,
            "state limit reached: new states refused"
        );
    }
}
