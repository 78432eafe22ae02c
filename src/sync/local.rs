//! The local firewall side: what do we learn from our own firewall and what do we owe it?
//!
//! Captured pfsync packets (`on_local_pfsync`: mirror, relay to peers, bulk-request answers),
//! the firewall's own complete dumps reconciled with the mirror (sweeps, and deletions of
//! states two consecutive dumps lack), and the creator ids of our firewall, which is the
//! authority on its own states.

use super::peer::send_data;
use super::*;

/// Reconciling the mirror with the firewall's own full dump (BUS START … BUS END): what the
/// firewall holds is the truth about its own states, and whatever the cluster holds that the
/// firewall lacks is given back to it.
pub(super) struct Sweep {
    /// The firewall's hostid, from its BUS START.
    pub(super) creator: u32,
    pub(super) seen: IdMap<()>,
    /// Our clock at BUS START: an entry changed later may postdate the firewall's walk of
    /// its table, so its absence from the dump proves nothing.
    pub(super) start_clock: u64,
    /// The capture lost packets during the dump: its absences prove nothing.
    pub(super) lossy: bool,
}

/// Most peer claims on our firewall's states awaiting the confirming dump.
const MAX_CLAIMED: usize = 65_536;
/// States a bulk answer queues at a time: ≈ 50 packets, a fraction of a round's injection
/// budget.
const BULK_STATES: usize = 256;
/// A bulk answer queues more once fewer than this many of our own packets are queued.
pub(super) const BULK_QUEUED: usize = 64;

impl Replica {
    /// Like [`Replica::on_local_pfsync`] for a packet that waited too long (the gateway is
    /// behind): the mirror applies it, but the peers get its states coalesced: each changed
    /// state is marked dirty once and sent in its current version (newest wins, like pf's
    /// `maxupd`), so a backlog of updates of the same states costs one record per state.
    /// Packets carrying requests are relayed as usual.
    pub fn on_local_pfsync_coalesced(&mut self, pkt: &[u8], now: Instant) -> Result<(), WireError> {
        self.coalesce = true;
        let r = self.on_local_pfsync(pkt, now);
        self.coalesce = false;
        r
    }

    /// Queue the next part of a bulk answer to our firewall, `BULK_STATES` states, and
    /// `BUS END` after the last. Queued whole, a large mirror's answer overflowed the
    /// injection queue (16,384 packets ≈ 80,000 states): its `BUS START` and oldest states
    /// were dropped, and with a peer's packets queued too its tail went over the share. A
    /// state whose position moved during the answer (a removal put the last state in its
    /// place) may be missed: the reconciliation sweep gives the firewall what it lacks.
    pub(super) fn continue_bulk(&mut self) {
        let Some((pos, at)) = self.bulk_out else {
            return;
        };
        let states = self.table.bulk_states(pos, at).take(BULK_STATES);
        self.injector.encode(states, None, at, Source::Local);
        let pos = pos + BULK_STATES;
        if pos < self.table.len() {
            self.bulk_out = Some((pos, at));
            return;
        }
        self.bulk_out = None;
        let end = crate::table::bus(self.cfg.node_id, BusStatus::End);
        self.injector.encode([end], None, at, Source::Local);
    }

    /// A peer holds a state of our own firewall that the mirror lacks (after a completed
    /// sweep, so the firewall's last dump did not list it either). The firewall is the
    /// authority: the state is gone — unless that dump lost a packet. So, like the sweep's
    /// own findings, it is deleted cluster-wide only when the next complete dump lacks it
    /// too ([`Replica::finish_sweep`]); a tombstone we already hold is sent at once.
    pub(super) fn refute_local(&mut self, peer: PeerId, rec: &Record) {
        let Record::State(_, s) = rec else { return };
        if self.stats.sweeps == 0 || !self.local_creators.contains(&s.id.creator) {
            return;
        }
        if self.table.get(s.id).is_some() {
            return;
        }
        if self.table.tombstone(s.id).is_some() {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.mark_dirty(StateRef::State(s.id));
            }
            return;
        }
        // An id above the highest our firewall has shown is one it has not used yet: it
        // cannot have been deleted, the next dump would "confirm" it and its tombstone would
        // refuse the state once created (a compromised peer's pre-delete). Not claimed;
        // anti-entropy repeats it once the firewall is past. A firewall that has shown no
        // id (rebooted, its table empty: pf numbers anew from the boot time) lost every
        // state a peer still holds of it: those are claimed, and deleted by the dump.
        let lane = StateId::new(s.id.id >> 56, s.id.creator);
        if self
            .local_issued
            .get(&lane)
            .is_some_and(|&max| s.id.id > max)
        {
            return;
        }
        // Bounded: a compromised peer's claims must not grow memory; the rest wait for
        // the peer to repeat them (anti-entropy does) once these are decided.
        if self.claimed.len() < MAX_CLAIMED {
            self.claimed.entry(s.id).or_insert(self.stats.sweeps);
        }
        self.sweep_wanted = true;
    }

    /// The firewall's full dump is complete: states the cluster holds that the firewall lacks
    /// (an injection it missed) are injected back into it. States of its own that it no
    /// longer lists were deleted while nobody listened (this gateway was down, a DEL_C was
    /// lost) — or a packet of the dump was lost. So they are deleted cluster-wide only when
    /// two consecutive complete dumps both lack them (and they did not change during
    /// either): one lost packet never deletes a live state.
    pub(super) fn finish_sweep(&mut self, now: Instant, replies: &mut Vec<Message>) {
        let Some(sweep) = self.sweep.take() else {
            return;
        };
        let before = replies.len();
        let mut unlisted: IdMap<()> = IdMap::default();
        for e in self.table.iter() {
            let id = e.id();
            if sweep.seen.contains_key(&id) {
                continue;
            }
            if id.creator != sweep.creator {
                replies.extend(self.table.update_for(id, now));
            } else if e.version().clock <= sweep.start_clock && !sweep.lossy {
                self.stats.sweep_unlisted += 1;
                unlisted.insert(id, ());
            }
        }
        // Only what was injected back above goes into `replies`; the deletions below travel
        // as RECORDS repairs.
        self.stats.sweeps += 1;
        self.stats.sweep_restored += (replies.len() - before) as u64;
        if sweep.lossy {
            // A packet of the dump may be what the capture lost: nothing it did not list
            // is taken for deleted, the earlier dump's absences and the peers' claims wait
            // for the next one, which comes soon.
            self.stats.sweeps_lossy += 1;
            self.sweep_wanted = true;
            return;
        }
        let prev = match self.absent.take() {
            Some((c, m)) if c == sweep.creator => m,
            _ => IdMap::default(),
        };
        let mut gone: Vec<StateId> = unlisted
            .keys()
            .filter(|id| prev.contains_key(id))
            .copied()
            .collect();
        for id in &gone {
            unlisted.remove(id);
        }
        if !unlisted.is_empty() {
            self.absent = Some((sweep.creator, unlisted));
        }
        // Peers' claims made before this dump ended: listed → live (the dump put them in
        // the mirror); not listed → two dumps agree (the one the mirror came from, this one).
        let claims: Vec<StateId> = self
            .claimed
            .keys()
            .filter(|id| id.creator == sweep.creator)
            .copied()
            .collect();
        for id in claims {
            self.claimed.remove(&id);
            if !sweep.seen.contains_key(&id) && self.table.get(id).is_none() {
                gone.push(id);
            }
        }
        for id in gone {
            self.clock += 1;
            let v = Version::new(self.clock, self.cfg.node_id);
            // Deleted (the mirror held it) or NotFound (a claim: the tombstone is written).
            if let Applied::Deleted(_) | Applied::NotFound(_) =
                self.table.apply_versioned(&Message::DelC(id), now, v)
            {
                self.stats.sweep_deleted += 1;
                // The tombstone travels as a RECORDS repair; peers inject DEL_C.
                for p in self.peers.values_mut() {
                    p.mark_dirty(StateRef::State(id));
                }
            }
        }
    }

    /// The capture socket lost packets (its buffer overflowed): a dump under way may lack
    /// states the firewall listed, so it deletes nothing (see `finish_sweep`).
    pub fn note_capture_loss(&mut self) {
        if let Some(sw) = &mut self.sweep {
            sw.lossy = true;
        }
    }

    /// States of our firewall were missing from its last complete dump: the node should ask
    /// for the confirming dump soon rather than after a whole sweep interval.
    pub fn sweep_confirmation_pending(&self) -> bool {
        // Those deleted since (their DEL_C was in flight at BUS END) need no confirmation.
        !self.claimed.is_empty()
            || self
                .absent
                .as_ref()
                .is_some_and(|(_, m)| m.keys().any(|id| self.table.get(*id).is_some()))
    }

    /// Peers gave us states of our own firewall that the mirror lacked (after a restart of
    /// this gateway, those include what the firewall deleted meanwhile): a dump soon tells.
    pub fn sweep_wanted(&self) -> bool {
        self.sweep_wanted
    }

    /// The version for a message from our own firewall: fresh for its own states; for the
    /// states of other firewalls it only repeats what it imported (bulk dumps, stale
    /// corrections), so it must not beat their creators' updates on version alone.
    pub(super) fn local_version(&self, msg: &Message, v: Version) -> Version {
        match msg.state_id() {
            Some(id)
                if !self.local_creators.is_empty()
                    && !self.local_creators.contains(&id.creator) =>
            {
                Version::ZERO
            }
            _ => v,
        }
    }

    /// Ask our own firewall for a bulk update (`UPD_REQ 0/0`), as a pfsync kernel does when
    /// its sync link comes up: a gateway that (re)starts with an empty mirror learns every
    /// state the firewall holds, including those created while the gateway was down.
    pub fn request_local_bulk(&mut self, now: Instant) {
        self.injector
            .encode([Message::UpdReq(StateId::BULK)], None, now, Source::Local);
    }

    /// A native pfsync packet captured from the local firewall (from `pfsync_header` on).
    pub fn on_local_pfsync(&mut self, pkt: &[u8], now: Instant) -> Result<(), WireError> {
        let p = match Packet::new_checked(pkt, self.cfg.local_dialect) {
            Ok(p) => p,
            Err(e) => {
                self.stats.local_errors += 1;
                return Err(e);
            }
        };
        // Requests and bulk status are the same bytes whoever sends them (our bulk request
        // and the firewall's are identical): only packets carrying states can be echoes.
        let carries_states = p.messages().any(|m| m.carries_state());
        if carries_states && self.injector.is_echo(pkt, now) {
            self.stats.echoes_dropped += 1;
            return Ok(());
        }
        self.stats.local_packets += 1;
        self.clock = self.clock.saturating_add(1);
        let v = Version::new(self.clock, self.cfg.node_id);
        self.scratch_refs.clear();
        self.scratch_new.clear();
        let mut forward = false;
        let mut has_req = false;
        let mut bulk = false;
        let mut replies: Vec<Message> = Vec::new();
        let mut sweep_done = false;
        // Each message is used where the iterator put it (a `Message` is large: moving it
        // out, as `for` does, costs a copy of its largest variant).
        let mut msgs = p.messages();
        self.table.prefetch(msgs.upd_c_ids());
        #[allow(clippy::while_let_on_iterator)]
        while let Some(ref msg) = msgs.next() {
            let own = match *msg {
                Message::Ins(ref s) => Some(s.id.creator),
                Message::Bus { creator, .. } => Some(creator),
                _ => None,
            };
            if let Some(c) = own {
                if c != 0 && !self.local_creators.contains(&c) && self.local_creators.len() < 16 {
                    self.local_creators.push(c);
                    self.unpin_local(c);
                }
            }
            has_req |= matches!(msg, Message::UpdReq(_));
            match *msg {
                Message::Bus {
                    creator,
                    status: BusStatus::Start,
                    ..
                } => {
                    self.sweep_wanted = false;
                    self.sweep = Some(Sweep {
                        creator,
                        seen: IdMap::default(),
                        start_clock: self.clock,
                        lossy: false,
                    })
                }
                Message::Bus {
                    creator,
                    status: BusStatus::End,
                    ..
                } => sweep_done |= self.sweep.as_ref().is_some_and(|s| s.creator == creator),
                Message::Ins(ref s) | Message::Upd(ref s) => {
                    if let Some(sw) = &mut self.sweep {
                        sw.seen.insert(s.id, ());
                    }
                    if self.local_creators.contains(&s.id.creator) {
                        let lane = StateId::new(s.id.id >> 56, s.id.creator);
                        let max = self.local_issued.entry(lane).or_insert(s.id.id);
                        *max = (*max).max(s.id.id);
                    }
                }
                _ => {}
            }
            // Inside the firewall's dump, only what changes the mirror travels on, and as
            // repairs: re-broadcasting the whole dump would bury the peers' firewalls. pf
            // dumps with `UPD`; an `INS` among them is a state created meanwhile, live news
            // that goes in the data stream ahead of its `UPD_C`s (as a repair it could
            // arrive after them, and the peers would ask for it).
            let in_sweep = self.sweep.is_some() && matches!(msg, Message::Upd(_));
            let a = self
                .table
                .apply_versioned(msg, now, self.local_version(msg, v));
            let inserted = match a {
                Applied::Inserted(id) => Some(id),
                _ => None,
            };
            if in_sweep {
                let id = msg.state_id().expect("ins/upd have ids");
                if self.table.last_change().changed {
                    for p in self.peers.values_mut() {
                        if inserted.is_some() {
                            p.mark_dirty_new(id);
                        } else {
                            p.mark_dirty(StateRef::State(id));
                        }
                    }
                }
                if let Applied::Older(id) = a {
                    if self.table.tombstone(id).is_some() {
                        replies.push(Message::DelC(id));
                    }
                }
                continue;
            }
            self.scratch_new.extend(inserted);
            match (msg, a) {
                (Message::UpdReq(_), Applied::BulkRequested) => bulk = true,
                (Message::UpdReq(_), Applied::Reply(m)) => replies.push(m),
                (Message::UpdReq(_), _) => forward = true, // a peer's firewall may have it
                (Message::Eof, _) => {}
                // Bulk status is between the firewall and whoever asked (us): not news.
                (Message::Bus { .. }, _) => {}
                (_, Applied::NeedUpdate(id)) => {
                    // The firewall knows a state the mirror lacks: ask it for the full state.
                    replies.push(Message::UpdReq(id));
                    forward = true;
                }
                (_, Applied::Stale(id)) => {
                    // The mirror is newer than the firewall: send it back, as pf would.
                    replies.extend(self.table.update_for(id, now));
                    forward = true;
                }
                (Message::Ins(_) | Message::Upd(_), Applied::Older(id))
                    if self.table.tombstone(id).is_some() =>
                {
                    // The firewall still holds a state the cluster has deleted (its bulk
                    // answer crossed the DEL_C): tell it, instead of spreading it again.
                    replies.push(Message::DelC(id));
                }
                _ => forward = true,
            }
            match *msg {
                Message::Clr { ifname, creator } => self.scratch_refs.push(StateRef::Clear {
                    creator,
                    ifname,
                    version: v,
                }),
                Message::Ins(_)
                | Message::Upd(_)
                | Message::UpdC(_)
                | Message::Del(_)
                | Message::DelC(_) => self
                    .scratch_refs
                    .push(StateRef::State(msg.state_id().expect("has id"))),
                _ => {}
            }
        }
        if bulk && now < self.next_bulk_answer {
            // One 56-byte request puts the whole mirror on the LAN: at most one per interval.
            self.stats.bulk_refused += 1;
        } else if bulk {
            self.next_bulk_answer = now + self.cfg.bulk_answer_interval;
            self.stats.bulk_answers += 1;
            let start = crate::table::bus(self.cfg.node_id, BusStatus::Start);
            self.injector.encode([start], None, now, Source::Local);
            self.bulk_out = Some((0, now));
        }
        if sweep_done {
            self.finish_sweep(now, &mut replies);
        }
        if !replies.is_empty() {
            self.injector.encode(replies, None, now, Source::Local);
        }
        if forward {
            self.stats.forwarded += 1;
            let dialect = self.cfg.local_dialect;
            let coalesce = self.coalesce && !self.scratch_refs.is_empty() && !has_req;
            for p in self.peers.values_mut() {
                // A state of this packet is new to the peer and its insert waits in the
                // repairs (a coalesced `INS`, a sweep's finding): the packet joins the
                // repairs, which carry each state in its current version. Relayed at once
                // it would overtake them, and the peer would meet updates of a state it
                // has not been told about. A change of a state the peer knows goes at once
                // even while a repair of it waits (built when sent, the repair carries the
                // newest version anyway): repairs are paced by the answer budget, and after a
                // start-up sweep most states may wait in them.
                let behind_insert = !p.dirty_set.is_empty()
                    && !has_req
                    && self
                        .scratch_refs
                        .iter()
                        .any(|r| matches!(r, StateRef::State(id) if p.insert_pending(*id)));
                if p.up && p.established && (coalesce || behind_insert) {
                    for r in &self.scratch_refs {
                        p.mark_dirty(*r);
                    }
                    for id in &self.scratch_new {
                        p.mark_dirty_new(*id);
                    }
                } else if p.up && p.established {
                    send_data(
                        &self.cfg,
                        p,
                        pkt,
                        dialect,
                        self.clock,
                        &self.scratch_refs,
                        now,
                    );
                } else if p.up {
                    // Handshake still running: anti-entropy will carry this change.
                    p.start_resync(now);
                }
            }
        }
        Ok(())
    }
}
