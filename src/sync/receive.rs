//! What does a datagram from a peer do to the mirror and the firewall?
//!
//! `on_peer_datagram` decodes one plaintext datagram and handles each message type (epochs,
//! acknowledgements, DATA, RECORDS, the anti-entropy exchange); `apply_data` and
//! `apply_records` apply a peer's relayed packets and repair records to the mirror and queue
//! what the local firewall must learn for injection.

use std::borrow::Cow;

use super::antientropy::{send_ranges, FANOUT};
use super::peer::{reassemble, unknown_epoch, Complete, MAX_STATE_REQS};
use super::*;
use crate::table::Change;

impl Replica {
    /// Plaintext from the tunnel. An error refused the datagram, or one of its messages
    /// failed (the others acted); either way it counts once in the peer's `malformed`.
    pub fn on_peer_datagram(
        &mut self,
        peer: PeerId,
        data: &[u8],
        now: Instant,
    ) -> Result<(), SyncError> {
        if !self.peers.contains_key(&peer) {
            return Err(SyncError::UnknownPeer(peer));
        }
        let res = self.peer_datagram(peer, data, now);
        if res.is_err() {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.stats.malformed += 1;
            }
        }
        res
    }

    fn peer_datagram(&mut self, peer: PeerId, data: &[u8], now: Instant) -> Result<(), SyncError> {
        // The whole datagram is checked (bundle framing and every message in it) before
        // any of it acts: a bad datagram is refused entirely. Each message is decoded again
        // when it acts, without checking its records twice (decoding the headers is a few
        // field reads; keeping the views would need storage).
        let checked = proto::datagram_parts(data).and_then(|parts| {
            parts
                .clone()
                .try_for_each(|m| SyncMsg::decode(m).map(drop))
                .map(|()| parts)
        });
        let parts = checked?;
        {
            let p = self.peers.get_mut(&peer).unwrap();
            p.stats.rx_datagrams += 1;
            p.earn(&self.cfg, data.len());
            p.last_rx = now;
            if !p.up {
                // Traffic from a peer we had declared dead (or never saw up): start over.
                self.on_peer_up(peer, now);
            }
        }
        let mut res = Ok(());
        for part in parts {
            let r = self.on_peer_msg(peer, SyncMsg::decode_checked(part)?, part.len(), now);
            res = res.and(r);
        }
        res
    }

    /// One (already validated) message of `len` bytes of a peer's datagram.
    fn on_peer_msg(
        &mut self,
        peer: PeerId,
        msg: SyncMsg<'_>,
        len: usize,
        now: Instant,
    ) -> Result<(), SyncError> {
        if let SyncMsg::Records { .. } | SyncMsg::Ranges { .. } = msg {
            let p = self.peers.get_mut(&peer).unwrap();
            p.owe_pad(&self.cfg, len);
        }
        match msg {
            SyncMsg::Hello {
                node,
                epoch,
                clock,
                start_seq,
                incarnation,
            } => {
                if !self.merge_clock(peer, clock, now) {
                    return Ok(());
                }
                let window = self.cfg.keepalive * self.cfg.dead_after;
                let p = self.peers.get_mut(&peer).unwrap();
                if p.is_straggler(epoch, incarnation, now, window) {
                    // A straggler of a stream this process already replaced: going back to
                    // it would drop the current one until a HELLO_REQ round opened yet
                    // another epoch and a resync. Not acknowledged: the sender moved on.
                    p.stats.epoch_mismatch += 1;
                    return Ok(());
                }
                p.node = node;
                let restarted = p.record_incarnation(incarnation);
                if p.rx_epoch != Some(epoch) {
                    // A new stream from the peer (first contact, its restart, or its
                    // dead-peer detection): start receiving it, and compare tables.
                    if let (Some(old), false) = (p.rx_epoch, restarted) {
                        p.remember_replaced(old, now);
                    }
                    p.rx_epoch = Some(epoch);
                    p.rx = RxWindow::new(start_seq);
                    p.partials.clear();
                    p.rx_unacked = 0;
                    p.stats.rx_epochs += 1;
                    p.start_resync(now);
                }
                if restarted {
                    // A new process: it lost our stream too.
                    p.stats.peer_restarts += 1;
                    self.restart_tx(peer, now);
                    self.note(peer, SyncNote::PeerRestarted);
                }
                let p = self.peers.get_mut(&peer).unwrap();
                let ack = SyncMsg::HelloAck {
                    node: self.cfg.node_id,
                    epoch,
                    clock: self.clock,
                    incarnation: self.cfg.incarnation,
                };
                p.answer(&self.cfg, &ack, now, 0);
            }
            SyncMsg::Pad { want, .. } => {
                // Only its bytes matter (credited above); `want` asks us to pay for answers.
                let p = self.peers.get_mut(&peer).unwrap();
                p.stats.pad_rx_bytes += len as u64;
                if want > 0 {
                    p.asked_to_pay(&self.cfg, want);
                }
            }
            SyncMsg::HelloReq { epoch } => {
                let p = self.peers.get_mut(&peer).unwrap();
                // Only for our current, established epoch: a request naming an older one
                // is a straggler of a stream we already replaced.
                if epoch == p.epoch && p.established {
                    p.stats.hello_reqs_rx += 1;
                    self.restart_tx(peer, now);
                    self.note(peer, SyncNote::HelloRequested);
                } else {
                    p.stats.epoch_mismatch += 1;
                }
            }
            SyncMsg::HelloAck {
                node,
                epoch,
                clock,
                incarnation,
            } => {
                if !self.merge_clock(peer, clock, now) {
                    return Ok(());
                }
                let p = self.peers.get_mut(&peer).unwrap();
                // Only HELLOs are acknowledged, and we send them only before any sequenced
                // message of the epoch: a new incarnation acking it missed nothing of it.
                if epoch != p.epoch {
                    // For an epoch we replaced: a straggler, maybe from the peer's old
                    // process, so its incarnation is not recorded.
                    p.stats.epoch_mismatch += 1;
                } else {
                    p.record_incarnation(incarnation);
                    if !p.established {
                        p.node = node;
                        p.established = true;
                        p.hello_due = None;
                        p.next_alive = now + self.cfg.keepalive;
                        if p.resync {
                            p.summary_due = Some(now);
                        }
                    }
                }
            }
            SyncMsg::Data {
                epoch,
                seq,
                clock,
                dialect,
                offset,
                total_len,
                chunk,
            } => {
                if !self.clock_ok(peer, clock, now) {
                    return Ok(());
                }
                let p = self.peers.get_mut(&peer).unwrap();
                if p.rx_epoch != Some(epoch) {
                    unknown_epoch(&self.cfg, p, epoch, now);
                    return Ok(());
                }
                if !p.rx.is_new(seq) {
                    p.stats.duplicates += 1;
                    return Ok(());
                }
                let spare = &mut self.injector;
                let Some(c) = reassemble(p, spare, seq, dialect, clock, offset, total_len, chunk)
                else {
                    return Ok(());
                };
                if !p.rx_accept(&self.cfg, c.seq, now) {
                    if let std::borrow::Cow::Owned(b) = c.bytes {
                        self.injector.give_buf(b);
                    }
                    return Ok(());
                }
                p.stats.rx_data += 1;
                self.apply_data(peer, c, now)?;
            }
            SyncMsg::Records {
                epoch,
                seq,
                count,
                body,
            } => {
                let p = self.peers.get_mut(&peer).unwrap();
                if p.rx_epoch != Some(epoch) {
                    unknown_epoch(&self.cfg, p, epoch, now);
                    return Ok(());
                }
                if !p.rx_accept(&self.cfg, seq, now) {
                    return Ok(());
                }
                p.stats.rx_records += count as u64;
                self.apply_records(peer, body, count, now);
            }
            SyncMsg::Ack {
                epoch,
                cum,
                delay,
                nacks,
            } => {
                let p = self.peers.get_mut(&peer).unwrap();
                if epoch != p.epoch || !p.established {
                    p.stats.epoch_mismatch += 1;
                    return Ok(());
                }
                p.peer_delay = Some((delay, now));
                p.tx.ack(cum, now);
                p.stats.last_ack = cum;
                let mut refs = Vec::new();
                // ACKs can arrive out of order: what a later one acknowledged is not
                // missing (taken for purged, it would start a needless resync).
                let acked = p.tx.acked();
                for (first, last) in proto::nack_ranges(nacks) {
                    let next = p.tx.next_seq;
                    if !link::seq_lt(first, next)
                        || link::seq_lt(last, first)
                        || link::seq_lt(last, acked)
                    {
                        continue;
                    }
                    let first = if link::seq_lt(first, acked) {
                        acked
                    } else {
                        first
                    };
                    let last = if link::seq_lt(last, next) {
                        last
                    } else {
                        next.wrapping_sub(1)
                    };
                    p.stats.nacks_rx += 1;
                    refs.clear();
                    if !p.tx.nack(first, last, &mut refs) {
                        p.stats.overflows += 1;
                        p.start_resync(now);
                    }
                    p.stats.retransmits += refs.len() as u64;
                    for r in refs.drain(..) {
                        p.mark_dirty(r);
                    }
                    // Unaffordable: a repeated NACK gets it (the refs are re-queued once).
                    if p.answer(&self.cfg, &SyncMsg::Skip { epoch, first, last }, now, 0) {
                        p.stats.skips_tx += 1;
                    }
                }
            }
            SyncMsg::Skip { epoch, first, last } => {
                let p = self.peers.get_mut(&peer).unwrap();
                if p.rx_epoch != Some(epoch) {
                    unknown_epoch(&self.cfg, p, epoch, now);
                    return Ok(());
                }
                p.rx.skip(first, last);
                p.partials
                    .retain(|x| link::seq_lt(x.seq, first) || link::seq_lt(last, x.seq));
                p.ack_due.get_or_insert(now + self.cfg.ack_delay);
            }
            SyncMsg::Alive { epoch, next_seq } => {
                let p = self.peers.get_mut(&peer).unwrap();
                if p.rx_epoch == Some(epoch) {
                    p.rx.announce(next_seq);
                    p.ack_due = Some(now);
                } else {
                    unknown_epoch(&self.cfg, p, epoch, now);
                }
            }
            SyncMsg::Summary {
                digest,
                count: _,
                leaves_log2,
                want_reply,
                clock,
            } => {
                if !self.merge_clock(peer, clock, now) {
                    return Ok(());
                }
                let ours = self.table.digest();
                let leaves = self.table.leaf_count();
                let p = self.peers.get_mut(&peer).unwrap();
                if leaves_log2 != self.cfg.table.leaves_log2 {
                    return Err(SyncError::BadValue {
                        what: "leaves_log2",
                        value: leaves_log2 as u64,
                    });
                }
                if digest == ours {
                    if p.resync && p.established {
                        p.resync = false;
                        p.summary_due = None;
                        p.stats.resyncs_completed += 1;
                    }
                    if want_reply {
                        let s = summary(&mut self.table, self.clock, false);
                        p.answer(&self.cfg, &s, now, 0);
                    }
                } else if !want_reply && !p.quiet() {
                    // An audit is sent while the peer has nothing unacked; if we have
                    // something in flight to it (or a gap from it), the digests differ by
                    // that and prove nothing: the next audit checks again. (Under churn,
                    // starting a resync here would dump leaves for nothing.)
                    p.stats.audits_inconclusive += 1;
                } else if p.busy() {
                    // Our earlier repairs are still unacknowledged: comparing now would
                    // repeat them. Answered once they are acked: our own resync sends
                    // SUMMARY{want_reply} when we are no longer busy, and the peer answers
                    // it with RANGES.
                    p.stats.summaries_deferred += 1;
                    p.start_resync(now);
                } else {
                    p.start_resync(now);
                    p.summary_due = Some(now + self.cfg.resync_interval);
                    p.leaf_dumped.iter_mut().for_each(|w| *w = 0);
                    let span = (leaves / FANOUT).max(1);
                    send_ranges(&self.cfg, p, &mut self.table, (0, span, leaves / span), now);
                }
            }
            SyncMsg::Ranges {
                first,
                span,
                digests,
            } => {
                let leaves = self.table.leaf_count();
                let p = self.peers.get_mut(&peer).unwrap();
                let (first, span) = (first as usize, span as usize);
                // Only ranges of the digest tree (docs/SYNC.md, *Digest*): each costs one
                // digest read to compare; any other range would cost a sum over its leaves.
                if !self.table.is_tree_span(span) || first % span != 0 {
                    p.stats.bad_datagrams += 1;
                    return Ok(());
                }
                for (i, theirs) in proto::range_digests(digests).enumerate() {
                    let start = first + i * span;
                    if start + span > leaves {
                        p.stats.bad_datagrams += 1;
                        break;
                    }
                    if self.table.range_digest(start, span) == theirs {
                        continue;
                    }
                    if span == 1 {
                        p.queue_leaf(start);
                        // Bounded by the leaf count (a peer's RANGES may repeat a leaf).
                        if p.leaf_reqs.len() < leaves {
                            p.leaf_reqs.push_back(start as u32);
                        }
                    } else {
                        let child = (span / FANOUT).max(1);
                        send_ranges(
                            &self.cfg,
                            p,
                            &mut self.table,
                            (start, child, span / child),
                            now,
                        );
                    }
                }
            }
            SyncMsg::LeafReq { leaves } => {
                let n = self.table.leaf_count();
                let p = self.peers.get_mut(&peer).unwrap();
                for l in proto::u32s(leaves) {
                    if (l as usize) < n {
                        p.queue_leaf(l as usize);
                    } else {
                        p.stats.bad_datagrams += 1;
                    }
                }
            }
            SyncMsg::StateReq { ids } => {
                // Only what we can answer is queued (a held state or a tombstone): the
                // dirty set stays bounded by the table, whatever ids a peer makes up.
                let p = self.peers.get_mut(&peer).unwrap();
                for id in proto::state_ids(ids) {
                    if self.table.get(id).is_some() || self.table.tombstone(id).is_some() {
                        p.mark_dirty(StateRef::State(id));
                    }
                }
            }
        }
        Ok(())
    }

    /// Apply a peer's relayed packet; a reassembled packet's buffer is queued for
    /// injection as it is, or given back to the injector's spare buffers.
    pub(super) fn apply_data(
        &mut self,
        peer: PeerId,
        c: Complete,
        now: Instant,
    ) -> Result<(), SyncError> {
        let r = self.apply_data_inner(peer, &c.bytes, c.dialect, c.clock, now);
        let verbatim = matches!(r, Ok(true));
        match c.bytes {
            Cow::Borrowed(b) if verbatim => self.injector.push_raw(b, now, Source::Peer(peer)),
            Cow::Owned(b) if verbatim => self.injector.push_owned(b, now, Source::Peer(peer)),
            Cow::Owned(b) => self.injector.give_buf(b),
            Cow::Borrowed(_) => {}
        }
        r.map(drop)
    }

    /// [`Replica::apply_data`] but for the verbatim injection, which it asks for with
    /// `Ok(true)`.
    fn apply_data_inner(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        dialect: Dialect,
        clock: u64,
        now: Instant,
    ) -> Result<bool, SyncError> {
        let pkt = Packet::new_checked(bytes, dialect)?;
        self.clock = self.clock.max(clock);
        let v = Version::new(clock, self.peers[&peer].node);
        let mut clean = true;
        let mut incomplete = false;
        self.scratch_fates.clear();
        // Each message is used where the iterator put it (a `Message` is large: moving it
        // out, as `for` does, costs a copy of its largest variant).
        let mut msgs = pkt.messages();
        self.table.prefetch(msgs.upd_c_ids());
        #[allow(clippy::while_let_on_iterator)]
        while let Some(ref msg) = msgs.next() {
            // DATA is the peer's firewall speaking first-hand: its INS may pin a creator id.
            if !self.admit(peer, msg, matches!(msg, Message::Ins(_)), now) {
                // A delete of a state we do not know, outside the peer's creator ids, writes
                // no tombstone but still reaches our firewall, which may hold the state
                // (pf ignores a delete of a state it lacks).
                let delete = matches!(msg, Message::Del(_) | Message::DelC(_));
                clean &= delete;
                self.scratch_fates
                    .push(if delete { Fate::Keep } else { Fate::Skip });
                continue;
            }
            // What a peer says about our own firewall's states is an echo or a correction:
            // it wins only where it is strictly more advanced, never on version alone.
            let vm = match msg.state_id() {
                Some(id) if self.local_creators.contains(&id.creator) => Version::ZERO,
                _ => v,
            };
            let a = self.table.apply_versioned(msg, now, vm);
            match a {
                Applied::Stale(id) | Applied::Older(id) => {
                    clean = false;
                    let p = self.peers.get_mut(&peer).unwrap();
                    p.stats.stale_returned += 1;
                    p.mark_dirty(StateRef::State(id));
                }
                Applied::NeedUpdate(id) => {
                    // Not injected: the mirror cannot order it against the full state that
                    // will be requested (a late INS could otherwise follow a newer UPD_C).
                    clean = false;
                    incomplete = true;
                    let p = self.peers.get_mut(&peer).unwrap();
                    if p.state_reqs.len() < MAX_STATE_REQS {
                        p.state_reqs.push_back(id);
                    } else {
                        // Made-up ids, or a peer that never lets us ask: the digest
                        // exchange finds whatever is really missing. Once: starting it
                        // again would move its SUMMARY to now on every such packet.
                        if !p.resync {
                            p.start_resync(now);
                        }
                    }
                }
                Applied::BulkRequested | Applied::Bus { .. } => {
                    // Never injected: a bulk update is between a firewall and its own gateway.
                    // Our firewall would put its whole table on the sync LAN for a peer's
                    // 56-byte request, and a peer's BUS END would end its wait for its own
                    // bulk update (after a boot) early, lifting its carp demotion.
                    clean = false;
                }
                Applied::Full(_) => {
                    clean = false;
                    self.peers.get_mut(&peer).unwrap().stats.states_refused += 1;
                    self.note_full(now);
                }
                Applied::Reply(_) => {
                    // The peer's firewall asks for a state the mirror holds: answered from the
                    // mirror as a RECORDS (paid from the peer's answer budget), not injected.
                    // Our firewall would answer a 12-byte request with a full UPD that we
                    // then relay to every peer: an amplifier for a compromised peer.
                    clean = false;
                    if let Some(id) = msg.state_id() {
                        self.peers
                            .get_mut(&peer)
                            .unwrap()
                            .mark_dirty(StateRef::State(id));
                    }
                }
                _ => {}
            }
            self.scratch_fates.push(match a {
                Applied::Stale(id) | Applied::Older(id) => Fate::Current(id),
                // Full: refused (mirror or the peer's space full, or outside its creator ids).
                Applied::BulkRequested
                | Applied::Bus { .. }
                | Applied::NeedUpdate(_)
                | Applied::Full(_)
                | Applied::Reply(_) => Fate::Skip,
                _ if matches!(msg, Message::Eof) => Fate::Skip,
                _ => Fate::Keep,
            });
        }
        // Our firewall takes packets of at most `local_mtu` bytes: a longer one is cut
        // into such packets here. Queued as it is, it would be dropped unsent at the front
        // of the queue, after holding up to 64 KiB of it as one packet of the peer's share.
        let fits = bytes.len() <= self.cfg.local_mtu;
        if clean && dialect == self.cfg.local_dialect && fits {
            self.stats.data_verbatim += 1;
            return Ok(true);
        } else {
            if incomplete || dialect != self.cfg.local_dialect || !fits {
                self.stats.data_reencoded += 1;
            } else {
                self.stats.data_corrected += 1;
            }
            // Never hand the firewall something older than the mirror: replace stale
            // messages by the mirror's current copy.
            let table = &self.table;
            let msgs =
                pkt.messages()
                    .zip(self.scratch_fates.iter())
                    .filter_map(|(m, f)| match *f {
                        Fate::Current(id) => {
                            Some(table.update_for(id, now).unwrap_or(Message::DelC(id)))
                        }
                        Fate::Skip => None,
                        Fate::Keep => Some(m),
                    });
            self.injector
                .encode(msgs, Some(dialect), now, Source::Peer(peer));
        }
        Ok(false)
    }

    pub(super) fn apply_records(&mut self, peer: PeerId, body: &[u8], count: u16, now: Instant) {
        let mut out: Vec<Message> = Vec::new();
        let mut recs = Records::new(body, count).peekable();
        while let Some(rec) = recs.next() {
            // Applying a record takes far longer than a cache miss: one ahead is enough for
            // the next one's index slot to be loaded when it is looked up.
            match recs.peek() {
                Some(Ok(Record::State(_, s))) => self.table.prefetch_slot(s.id),
                Some(Ok(Record::Tombstone(id, _))) => self.table.prefetch_slot(*id),
                _ => {}
            }
            let Ok(rec) = rec else { break }; // validated at decode
            let clock = match &rec {
                Record::State(v, _) | Record::Tombstone(_, v) => v.clock,
                Record::Clear { version, .. } => version.clock,
            };
            if !self.clock_ok(peer, clock, now) {
                continue;
            }
            let admitted = match &rec {
                // A version the peer wrote itself is first-hand: it may pin the creator id.
                Record::State(v, s) => {
                    let first_hand = v.node == self.peers[&peer].node;
                    self.admit(peer, &Message::Upd(*s), first_hand, now)
                }
                Record::Clear {
                    creator, ifname, ..
                } => self.admit(
                    peer,
                    &Message::Clr {
                        ifname: *ifname,
                        creator: *creator,
                    },
                    false,
                    now,
                ),
                Record::Tombstone(id, _) => self.admit(peer, &Message::DelC(*id), false, now),
            };
            if !admitted {
                self.refute_local(peer, &rec);
                continue;
            }
            let p = self.peers.get_mut(&peer).unwrap();
            match rec {
                Record::State(v, s) => {
                    self.clock = self.clock.max(v.clock);
                    let id = s.id;
                    let a = self.table.apply_versioned(&Message::Upd(s), now, v);
                    let Change { held, changed } = self.table.last_change();
                    match a {
                        Applied::Stale(_) | Applied::Older(_) => {
                            p.stats.stale_returned += 1;
                            p.mark_dirty(StateRef::State(id));
                        }
                        Applied::Full(_) => {
                            p.stats.states_refused += 1;
                            self.note_full(now);
                        }
                        _ => {}
                    }
                    // Our own firewall's state that the mirror did not hold: the firewall
                    // deleted it while we were not listening (or the sweep will find it in
                    // its next dump). Injecting it would resurrect it; the sweeps decide.
                    let resurrects = !held && self.local_creators.contains(&id.creator);
                    if changed && !resurrects {
                        out.extend(self.table.update_for(id, now));
                    }
                    self.sweep_wanted |= resurrects;
                }
                Record::Tombstone(id, v) => {
                    self.clock = self.clock.max(v.clock);
                    match self.table.apply_versioned(&Message::DelC(id), now, v) {
                        Applied::Deleted(_) => out.push(Message::DelC(id)),
                        Applied::Older(_) => p.mark_dirty(StateRef::State(id)),
                        _ => {}
                    }
                }
                Record::Clear {
                    creator,
                    ifname,
                    version,
                } => {
                    self.clock = self.clock.max(version.clock);
                    let m = Message::Clr { ifname, creator };
                    if let Applied::Cleared(n) = self.table.apply_versioned(&m, now, version) {
                        if n > 0 {
                            out.push(m);
                        }
                    }
                }
            }
        }
        if !out.is_empty() {
            self.injector.encode(out, None, now, Source::Peer(peer));
        }
    }
}
