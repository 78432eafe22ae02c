//! Packets towards the local firewall: a bounded queue served fairly between its sources,
//! the one place that encodes messages in the local dialect, and the echo filter for loop
//! prevention.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::PeerId;
use crate::table::digest::mix64;
use crate::wire::{translate, Dialect, Message, PacketWriter, UpdCRun};

/// How long an injected packet is remembered to recognise its echo.
const ECHO_MEMORY: Duration = Duration::from_secs(5);
const ECHO_MAX: usize = 1024;
/// A queued packet of only compressed updates that waited longer than this is dropped
/// instead of injected (`shed_inject_late`), as the capture side drops one that waited as
/// long in its socket: the mirror has applied it, the firewall gets a newer update of the
/// same states a few packets later, and a state that stops changing is repaired by the
/// next reconciliation. A standing queue of updates no failover can use is no backlog.
pub const INJECT_MAX_AGE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectStats {
    pub packets: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub encode_errors: u64,
    /// Queued packets of updates joined to the one before them (see `Injector::pop`).
    pub joined: u64,
    /// Packets of only `UPD_C` dropped after waiting longer than [`INJECT_MAX_AGE`].
    pub late: u64,
    /// Of `dropped`: new packets of a source that held its share of a full queue.
    pub dropped_over_share: u64,
}

pub struct Injector {
    dialect: Dialect,
    mtu: usize,
    /// Queued packets, a lane per source, served in turn (see `pop`): a source's
    /// compressed updates wait behind its own packets and one turn of each other source's,
    /// never behind another source's whole backlog. A full queue is shared fairly (see
    /// `push`).
    lanes: Vec<Lane>,
    /// The lane `pop` serves next.
    turn: usize,
    /// Packets queued in all lanes.
    queued: usize,
    /// Memory the queued buffers hold (their capacity, not their length), and the spares'.
    queued_bytes: usize,
    spare_bytes: usize,
    max_items: usize,
    max_bytes: usize,
    /// Empty buffers for the next queued packets and for DATA reassembly (no allocation
    /// per packet once warm). Never more buffers than the most ever in use at once.
    pub(super) spare: Vec<Vec<u8>>,
    echo: VecDeque<(u64, Instant)>,
    buf: Vec<u8>,
    /// Packets ever queued (the driver paces injection by what arrived).
    arrivals: u64,
    /// The shape of a packet of compressed updates only: queued ones are joined.
    run: UpdCRun,
    /// When the newest packet was queued (the echo time of a joined packet).
    last_push: Option<Instant>,
    pub stats: InjectStats,
    /// Packets `shed_late` looked at (tests: each once).
    #[cfg(test)]
    late_reads: u64,
}

/// One source's queued packets, oldest first, each in a buffer of its own: a reassembled
/// packet's buffer is queued as it is (no copy); buffers go back to `spare` once injected.
struct Lane {
    src: Source,
    /// Packets `shed_late` found late and kept (ordered ones), in order: they come before
    /// `packets`, so each packet is looked at once however long it waits.
    held: VecDeque<Queued>,
    packets: VecDeque<Queued>,
    /// The arrival numbers of its queued ordered packets, oldest first (they leave the lane
    /// only from its front).
    ordered: VecDeque<u64>,
}

impl Lane {
    fn len(&self) -> usize {
        self.held.len() + self.packets.len()
    }
    fn is_empty(&self) -> bool {
        self.held.is_empty() && self.packets.is_empty()
    }
    fn front(&self) -> Option<&Queued> {
        self.held.front().or_else(|| self.packets.front())
    }
    fn pop_front(&mut self) -> Option<Queued> {
        self.held.pop_front().or_else(|| self.packets.pop_front())
    }
}

struct Queued {
    buf: Vec<u8>,
    /// When it was queued.
    at: Instant,
    /// For a packet that is not only compressed updates, its arrival number (`arrivals`
    /// when queued): such packets keep their order across lanes (see `next_lane`). A number,
    /// not the time: a round queues many packets at one `now`.
    order: Option<u64>,
}

/// 64×64 → 128-bit multiply, halves folded: one instruction mixes 16 bytes.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = a as u128 * b as u128;
    p as u64 ^ (p >> 64) as u64
}

/// Hash of a whole packet for the echo filter (not cryptographic: it tells our own
/// injections from the firewall's packets). Each 16 bytes are one folded multiply, four
/// lanes in parallel; the lanes rotate between blocks, so the order of blocks counts. A
/// chain of `mix64` per 8 bytes, its predecessor, was 3–4 % of a relaying gateway.
fn packet_hash(b: &[u8]) -> u64 {
    const K: [u64; 4] = [
        0xa076_1d64_78bd_642f,
        0xe703_7ed1_a0b4_28db,
        0x8ebc_6af0_9c88_c6e3,
        0x5899_65cc_7537_4cc3,
    ];
    let word =
        |c: &[u8], at: usize| u64::from_le_bytes(c[at..at + 8].try_into().unwrap_or_default());
    let mut h = [b.len() as u64, 0, 0, 0];
    let block = |h: &mut u64, k: usize, c: &[u8]| {
        *h = h.rotate_left(29) ^ fold_mul(word(c, 0) ^ K[k], word(c, 8) ^ K[(k + 1) % 4]);
    };
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        for (k, hk) in h.iter_mut().enumerate() {
            block(hk, k, &c[k * 16..k * 16 + 16]);
        }
    }
    for (k, c) in chunks.remainder().chunks(16).enumerate() {
        let mut w = [0u8; 16];
        w[..c.len()].copy_from_slice(c);
        block(&mut h[k], k, &w);
    }
    mix64(h[0] ^ h[1].rotate_left(16) ^ h[2].rotate_left(32) ^ h[3].rotate_left(48))
}

/// Who a queued packet came from: our own replica's answers to our firewall, or a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Local,
    Peer(PeerId),
}

impl Injector {
    pub fn new(dialect: Dialect, mtu: usize, max: usize) -> Injector {
        Injector {
            dialect,
            mtu,
            lanes: Vec::new(),
            turn: 0,
            queued: 0,
            queued_bytes: 0,
            spare_bytes: 0,
            max_items: max.max(1),
            max_bytes: max.saturating_mul(mtu).max(u16::MAX as usize),
            spare: Vec::new(),
            echo: VecDeque::new(),
            buf: vec![0; mtu],
            arrivals: 0,
            run: UpdCRun::of(dialect),
            last_push: None,
            stats: InjectStats::default(),
            #[cfg(test)]
            late_reads: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.queued
    }
    /// Packets of `src` queued now.
    pub(super) fn queued_from(&self, src: Source) -> usize {
        self.lanes
            .iter()
            .find(|l| l.src == src)
            .map_or(0, |l| l.len())
    }
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }
    /// Packets queued since the start, dropped ones included.
    pub fn arrivals(&self) -> u64 {
        self.arrivals
    }

    /// An empty buffer from the spare ones (allocated only when none is left).
    pub(super) fn take_buf(&mut self) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        self.spare_bytes -= b.capacity();
        b.clear();
        b
    }

    /// A buffer no longer needed, kept for reuse while the queue and the spares together
    /// hold no more memory than the queue's byte bound (the byte ring's bound before
    /// buffers were kept); one grown beyond a local packet (a peer's oversized DATA) is
    /// freed, so a reused buffer never makes a small packet count for more than a local one.
    pub(super) fn give_buf(&mut self, b: Vec<u8>) {
        let cap = b.capacity();
        if self.spare.len() < self.max_items
            && cap <= self.mtu
            && self.queued_bytes + self.spare_bytes + cap <= self.max_bytes
        {
            self.spare_bytes += cap;
            self.spare.push(b);
        }
    }

    /// Queue bytes for injection, unchanged.
    pub fn push_raw(&mut self, bytes: &[u8], now: Instant, src: Source) {
        self.push_copy(bytes, now, true, src);
    }

    fn push_copy(&mut self, bytes: &[u8], now: Instant, echo: bool, src: Source) {
        if bytes.len() > u16::MAX as usize {
            return;
        }
        let mut b = self.take_buf();
        b.reserve(bytes.len().max(self.mtu));
        b.extend_from_slice(bytes);
        self.push(b, now, echo, src);
    }

    /// Queue the packet in `b` for injection, unchanged, keeping the buffer (a reassembled
    /// packet is not copied again).
    pub(super) fn push_owned(&mut self, b: Vec<u8>, now: Instant, src: Source) {
        self.push(b, now, true, src);
    }

    /// The lane of `src` (opened on its first packet; one per source, so as many as peers
    /// and one more).
    fn lane(&mut self, src: Source) -> usize {
        match self.lanes.iter().position(|l| l.src == src) {
            Some(i) => i,
            None => {
                self.lanes.push(Lane {
                    src,
                    held: VecDeque::new(),
                    packets: VecDeque::new(),
                    ordered: VecDeque::new(),
                });
                self.lanes.len() - 1
            }
        }
    }

    /// Queue `b`; `echo`: remember it for the echo filter (only packets that carry states
    /// can be echoes: see `is_echo`'s caller).
    fn push(&mut self, b: Vec<u8>, now: Instant, echo: bool, src: Source) {
        if b.len() > u16::MAX as usize {
            self.give_buf(b);
            return;
        }
        // Beyond the bounds the longest lane's oldest packets go — unless the source
        // already holds its fair share of the queue (the bound over the sources queueing
        // now): then its new packet does. One peer flooding us with small packets (a
        // compromised one: a DATA datagram can carry twenty) fills only its share and never
        // pushes the others' packets out; alone, it has the whole queue.
        let full = |q: &Self| {
            q.queued > 0 && (q.queued >= q.max_items || q.queued_bytes + b.capacity() > q.max_bytes)
        };
        let me = self.lane(src);
        if full(self) {
            let mine = self.lanes[me].len();
            let sources = self
                .lanes
                .iter()
                .enumerate()
                .filter(|&(i, l)| !l.is_empty() || i == me)
                .count();
            if sources > 1 && mine >= self.max_items / sources {
                self.give_buf(b);
                self.stats.dropped += 1;
                self.stats.dropped_over_share += 1;
                return;
            }
        }
        while full(self) {
            let longest = (0..self.lanes.len())
                .max_by_key(|&i| self.lanes[i].len())
                .unwrap_or(me);
            self.drop_front(longest);
            self.stats.dropped += 1;
        }
        if echo {
            self.remember(packet_hash(&b), now);
        }
        let order = (!self.run.matches(&b)).then_some(self.arrivals);
        let lane = &mut self.lanes[me];
        if let Some(o) = order {
            lane.ordered.push_back(o);
        }
        self.queued += 1;
        self.queued_bytes += b.capacity();
        lane.packets.push_back(Queued {
            buf: b,
            at: now,
            order,
        });
        self.arrivals += 1;
        self.last_push = Some(now);
        // The queue grew: spares give way.
        while self.queued_bytes + self.spare_bytes > self.max_bytes {
            let Some(s) = self.spare.pop() else { break };
            self.spare_bytes -= s.capacity();
        }
    }

    /// Remember an injected packet's hash for the echo filter, forgetting the expired ones
    /// and, beyond `ECHO_MAX`, the oldest.
    fn remember(&mut self, hash: u64, now: Instant) {
        while self
            .echo
            .front()
            .is_some_and(|&(_, t)| now.saturating_duration_since(t) > ECHO_MEMORY)
            || self.echo.len() >= ECHO_MAX
        {
            self.echo.pop_front();
        }
        self.echo.push_back((hash, now));
    }

    /// Take the oldest packet of `lane` off the queue.
    fn take_front(&mut self, lane: usize) -> Option<Vec<u8>> {
        let l = &mut self.lanes[lane];
        let q = l.pop_front()?;
        if q.order.is_some() {
            l.ordered.pop_front();
        }
        self.queued -= 1;
        self.queued_bytes -= q.buf.capacity();
        Some(q.buf)
    }

    /// Drop the oldest packet of `lane`.
    fn drop_front(&mut self, lane: usize) {
        if let Some(b) = self.take_front(lane) {
            self.give_buf(b);
        }
    }

    /// How long the oldest queued packet has waited (zero for an empty queue).
    pub fn head_wait(&self, now: Instant) -> Duration {
        self.lanes
            .iter()
            .filter_map(|l| l.front())
            .map(|q| now.saturating_duration_since(q.at))
            .max()
            .unwrap_or_default()
    }

    /// How long the oldest packet of `src` has waited: what its packets meet here, the
    /// lanes being served in turn (zero for none queued).
    pub fn head_wait_of(&self, src: Source, now: Instant) -> Duration {
        self.lanes
            .iter()
            .find(|l| l.src == src)
            .and_then(|l| l.front())
            .map_or(Duration::ZERO, |q| now.saturating_duration_since(q.at))
    }

    /// Drop the queued packets of only `UPD_C` that have waited longer than
    /// [`INJECT_MAX_AGE`]; every other packet (inserts, deletes, bulk answers, requests)
    /// stays, in order. Only what became late since the last call is looked at.
    pub fn shed_late(&mut self, now: Instant) {
        let Some(deadline) = now.checked_sub(INJECT_MAX_AGE) else {
            return;
        };
        for li in 0..self.lanes.len() {
            // The late packets leave `packets` from its front, each looked at once: the
            // ordered ones join `held` (still first in the lane, in order), the rest go. A
            // backlog of ordered packets (a peer's flood of deletes) costs nothing here
            // round after round.
            let late = self.lanes[li].packets.partition_point(|q| q.at < deadline);
            for _ in 0..late {
                let Some(q) = self.lanes[li].packets.pop_front() else {
                    break;
                };
                #[cfg(test)]
                {
                    self.late_reads += 1;
                }
                if q.order.is_some() {
                    self.lanes[li].held.push_back(q);
                } else {
                    self.queued -= 1;
                    self.queued_bytes -= q.buf.capacity();
                    self.give_buf(q.buf);
                    self.stats.late += 1;
                }
            }
        }
    }

    /// Is this captured packet the echo of something we injected?
    pub fn is_echo(&self, bytes: &[u8], now: Instant) -> bool {
        // Nothing injected lately (a gateway that mostly captures): no hashing at all.
        if self
            .echo
            .back()
            .is_none_or(|&(_, t)| now.saturating_duration_since(t) > ECHO_MEMORY)
        {
            return false;
        }
        let h = packet_hash(bytes);
        self.echo
            .iter()
            .any(|&(x, t)| x == h && now.saturating_duration_since(t) <= ECHO_MEMORY)
    }

    /// Encode messages in the local dialect, as few packets as the MTU allows. Messages that
    /// came from a firewall of another dialect (`from`) are translated first; this is the
    /// single translation call site.
    pub fn encode<I: IntoIterator<Item = Message>>(
        &mut self,
        msgs: I,
        from: Option<Dialect>,
        now: Instant,
        src: Source,
    ) {
        let mut buf = std::mem::take(&mut self.buf);
        let mtu = self.mtu.min(buf.len());
        let mut w = PacketWriter::new(self.dialect, &mut buf[..mtu]);
        // Whether the packet being written carries states (else it cannot be echoed, and a
        // gateway that only sends its firewall bulk requests never hashes a captured packet).
        let mut states = false;
        for m in msgs {
            let m = match from {
                Some(f) if f != self.dialect => match translate::translate(&m, f, self.dialect) {
                    Ok(Some(t)) => t,
                    // Dropped on purpose (e.g. EOF, TDB across OSes): see docs/TRANSLATION.md.
                    Ok(None) => continue,
                    Err(_) => {
                        self.stats.encode_errors += 1;
                        continue;
                    }
                },
                _ => m,
            };
            match w.push(&m) {
                Ok(true) => states |= m.carries_state(),
                Ok(false) if w.is_empty() => self.stats.encode_errors += 1,
                Ok(false) => {
                    let n = w.finish();
                    self.push_copy(&buf[..n], now, states, src);
                    w = PacketWriter::new(self.dialect, &mut buf[..mtu]);
                    states = false;
                    match w.push(&m) {
                        Ok(true) => states = m.carries_state(),
                        _ => self.stats.encode_errors += 1,
                    }
                }
                Err(_) => self.stats.encode_errors += 1,
            }
        }
        if !w.is_empty() {
            let n = w.finish();
            self.push_copy(&buf[..n], now, states, src);
        }
        self.buf = buf;
    }

    /// The lane to serve next: the next in turn with packets, unless its head is an
    /// ordered packet (one that is not only compressed updates) and another lane holds an
    /// ordered one that arrived before it. Ordered packets thus leave in the order they
    /// came, whatever their source — a peer's delete never overtakes an older bulk answer
    /// that still holds the state, which would bring it back in the firewall — while
    /// compressed updates are served in turn (docs/SYNC.md, *Overload*, on what one costs
    /// that overtakes an older full state). Some lane always qualifies: the one holding
    /// the first-come ordered packet.
    fn next_lane(&self) -> Option<usize> {
        let k = self.lanes.len();
        (0..k).map(|j| (self.turn + j) % k).find(|&i| {
            let Some(head) = self.lanes[i].front() else {
                return false;
            };
            let Some(seq) = head.order else {
                return true;
            };
            self.lanes
                .iter()
                .all(|l| l.ordered.front().is_none_or(|&o| o >= seq))
        })
    }

    /// The next packet to inject, into `out`, from the lane [`Injector::next_lane`]
    /// picks. Packets of compressed updates only that wait back to back in a lane are
    /// joined into one, up to the MTU, as pf itself packs its updates: a relay that fell
    /// behind on small packets spends its time in the kernel's per-packet send path, not on
    /// the updates. A lone packet goes out as it came.
    pub fn pop(&mut self, out: &mut [u8]) -> Option<usize> {
        let li = self.next_lane()?;
        self.turn = (li + 1) % self.lanes.len();
        let b = self.take_front(li)?;
        let n = b.len();
        if n > out.len() {
            // Caller's buffer is too small for this packet: drop it rather than stall.
            self.give_buf(b);
            self.stats.dropped += 1;
            return None;
        }
        out[..n].copy_from_slice(&b);
        self.give_buf(b);
        let (mut n, mut joined_any) = (n, false);
        let room = self.mtu.min(out.len());
        while let Some(joined) = self.lanes[li]
            .front()
            .and_then(|next| self.run.join(&mut out[..room], n, &next.buf))
        {
            n = joined;
            self.drop_front(li);
            self.stats.joined += 1;
            joined_any = true;
        }
        if joined_any {
            // A joined packet is new bytes: remember them for the echo filter too.
            if let Some(t) = self.last_push {
                self.remember(packet_hash(&out[..n]), t);
            }
        }
        self.stats.packets += 1;
        self.stats.bytes += n as u64;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::packet::tests::{emit, upd_c};
    use crate::wire::{Packet, StateId};

    const P: Source = Source::Peer(0);

    fn packet(d: Dialect, msgs: &[Message], cksum: u8) -> Vec<u8> {
        emit(d, msgs, [cksum; 16])
    }

    /// Drain `inj`: the packets and, in order, every message they carry.
    fn drain(inj: &mut Injector, d: Dialect) -> (Vec<Vec<u8>>, Vec<Message>) {
        let (mut pkts, mut msgs) = (Vec::new(), Vec::new());
        let mut out = [0u8; 1480];
        while let Some(n) = inj.pop(&mut out) {
            let p = Packet::new_checked(&out[..n], d).expect("joined packets parse");
            msgs.extend(p.messages().filter(|m| *m != Message::Eof));
            pkts.push(out[..n].to_vec());
        }
        (pkts, msgs)
    }

    #[test]
    fn late_updates_leave_the_queue_and_everything_else_stays_in_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let del = |i| [Message::DelC(StateId::new(i, 7))];
        let (d97, d98, d99) = (del(97), del(98), del(99));
        for d in Dialect::ALL {
            let mut inj = Injector::new(d, 1480, 1000);
            let queue = [
                (&[upd_c(1)][..], ms(0)),
                (&d97[..], ms(0)),
                (&[upd_c(2), upd_c(3)][..], ms(0)),
                (&d98[..], ms(10)),
                (&[upd_c(4)][..], ms(10)),
                (&d99[..], ms(60)),
                (&[upd_c(5)][..], ms(60)),
            ];
            for (i, (m, at)) in queue.into_iter().enumerate() {
                // A distinct checksum each: nothing is joined when drained.
                inj.push_raw(&packet(d, m, i as u8), t0 + at, P);
            }
            // At t0 + 50 ms nothing is late yet (strictly longer than the bound).
            inj.shed_late(t0 + INJECT_MAX_AGE);
            assert_eq!((inj.len(), inj.stats.late), (7, 0), "{d:?}");
            assert_eq!(inj.head_wait(t0 + ms(50)), ms(50));
            // At t0 + 70 ms the first five are late: their updates go, the deletes stay.
            inj.shed_late(t0 + ms(70));
            assert_eq!((inj.len(), inj.stats.late), (4, 3), "{d:?}");
            assert_eq!(
                inj.head_wait(t0 + ms(70)),
                ms(70),
                "{d:?}: a delete is first"
            );
            let (_, msgs) = drain(&mut inj, d);
            assert_eq!(msgs, [d97[0], d98[0], d99[0], upd_c(5)], "{d:?}");
            assert_eq!(inj.head_wait(t0 + ms(70)), Duration::ZERO);
        }
    }

    #[test]
    fn queued_runs_of_updates_are_joined_up_to_the_mtu_in_order() {
        let now = Instant::now();
        for d in Dialect::ALL {
            let mut inj = Injector::new(d, 1480, 1000);
            let mut sent = Vec::new();
            for i in 0..40u64 {
                let m = [upd_c(2 * i), upd_c(2 * i + 1)];
                inj.push_raw(&packet(d, &m, 9), now, P);
                sent.extend(m);
            }
            // Not joined: a DEL_C between runs, and a firewall with another checksum.
            let del = [Message::DelC(StateId::new(99, 7))];
            inj.push_raw(&packet(d, &del, 9), now, P);
            sent.extend(del);
            let other = [upd_c(500)];
            inj.push_raw(&packet(d, &other, 9), now, P);
            inj.push_raw(&packet(d, &[upd_c(501)], 8), now, P);
            sent.extend([upd_c(500), upd_c(501)]);
            let (pkts, msgs) = drain(&mut inj, d);
            assert_eq!(msgs, sent, "{d:?}: every update, in order");
            let per = (1480 - 28) / UpdCRun::of(d).msg_len;
            assert_eq!(
                pkts.len(),
                80_usize.div_ceil(per) + 3,
                "{d:?}: {per} per packet"
            );
            assert!(pkts.iter().all(|p| p.len() <= 1480));
            assert!(
                inj.is_echo(&pkts[0], now),
                "{d:?}: a joined packet is our own"
            );
            assert_eq!(
                inj.stats.joined,
                80 / 2 - 80_usize.div_ceil(per) as u64,
                "{d:?}"
            );
        }
    }

    #[test]
    fn packet_hash_sees_every_byte_length_and_block_order() {
        let mut b: Vec<u8> = (0..1452u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let h = packet_hash(&b);
        for i in 0..b.len() {
            for bit in [0x01, 0x80] {
                b[i] ^= bit;
                assert_ne!(packet_hash(&b), h, "byte {i} bit {bit:#x}");
                b[i] ^= bit;
            }
        }
        for n in [0, 1, 15, 16, 17, 63, 64, 65, 1451] {
            assert_ne!(packet_hash(&b[..n]), h, "length {n}");
        }
        let mut z = vec![0u8; 64];
        assert_ne!(packet_hash(&z[..63]), packet_hash(&z), "zero tail");
        // Two different 16-byte blocks swapped, within a lane and across lanes.
        for (x, y) in [(0, 64), (0, 16), (1280, 1440)] {
            let mut s = b.clone();
            for k in 0..16.min(s.len() - y) {
                s.swap(x + k, y + k);
            }
            assert_ne!(packet_hash(&s), h, "blocks {x} and {y} swapped");
        }
        z[5] = 1;
        assert_eq!(packet_hash(&z), packet_hash(&z.clone()), "deterministic");
    }

    /// Only packets that carry states are remembered: a gateway that injects nothing but
    /// bulk requests never hashes what it captures.
    #[test]
    fn requests_are_not_remembered_for_the_echo_filter() {
        let now = Instant::now();
        for d in Dialect::ALL {
            let mut inj = Injector::new(d, 1480, 100);
            inj.encode([Message::UpdReq(StateId::BULK)], None, now, P);
            assert_eq!(inj.len(), 1);
            assert!(inj.echo.is_empty(), "{d:?}");
            let mut out = [0u8; 1480];
            let n = inj.pop(&mut out).unwrap();
            assert!(!inj.is_echo(&out[..n], now));
            inj.encode([Message::DelC(StateId::new(5, 6))], None, now, P);
            let n = inj.pop(&mut out).unwrap();
            assert!(
                inj.is_echo(&out[..n], now),
                "{d:?}: a packet with a state is"
            );
        }
    }

    #[test]
    fn a_lone_packet_goes_out_as_it_came() {
        let now = Instant::now();
        for d in Dialect::ALL {
            let mut inj = Injector::new(d, 1480, 1000);
            let p = packet(d, &[upd_c(1), upd_c(2)], 3);
            inj.push_raw(&p, now, P);
            assert_eq!(drain(&mut inj, d).0, vec![p]);
        }
    }

    #[test]
    fn queue_and_spares_together_stay_within_the_byte_bound() {
        let now = Instant::now();
        // 64 packets of 1500 B: the bound is max(64 × 1500, 65535) = 96,000 bytes.
        let mut inj = Injector::new(Dialect::OpenbsdV6, 1500, 64);
        let held = |i: &Injector| {
            i.lanes
                .iter()
                .flat_map(|l| l.held.iter().chain(&l.packets))
                .map(|q| q.buf.capacity())
                .sum::<usize>()
        };
        let spares = |i: &Injector| i.spare.iter().map(Vec::capacity).sum::<usize>();
        // Small packets still take a local packet's room each (as the byte ring did)...
        for k in 0..200u8 {
            inj.push_raw(&[k; 100], now, P);
            assert!(held(&inj) <= inj.max_bytes && inj.len() <= 64);
        }
        // ...and buffers grown by reassembly to twice that are counted at their size.
        for _ in 0..40 {
            let mut b = inj.take_buf();
            b.resize(2900, 1);
            inj.push_owned(b, now, P);
            assert!(held(&inj) + spares(&inj) <= inj.max_bytes);
        }
        let mut out = [0u8; 4096];
        while inj.pop(&mut out).is_some() {
            assert!(held(&inj) + spares(&inj) <= inj.max_bytes);
        }
        assert_eq!(inj.queued_bytes, 0);
        assert_eq!(inj.spare_bytes, spares(&inj));
        // Only buffers of a local packet's size are kept (the grown ones were freed).
        assert!(inj.spare.iter().all(|b| b.capacity() <= 1500));
        inj.push_raw(&[1; 100], now, P);
        assert!(inj.pop(&mut out).is_some());
    }

    #[test]
    fn spare_buffers_are_bounded_in_count_and_size() {
        let mut inj = Injector::new(Dialect::OpenbsdV6, 1500, 2);
        // A peer's oversized packet grew these buffers: they are not kept.
        inj.give_buf(Vec::with_capacity(60_000));
        inj.give_buf(Vec::with_capacity(1501));
        assert!(inj.spare.is_empty());
        for _ in 0..5 {
            inj.give_buf(Vec::with_capacity(1500));
        }
        assert_eq!(inj.spare.len(), 2);
        // Reuse: the next buffer comes from the spares, emptied.
        let b = inj.take_buf();
        assert!(b.is_empty() && b.capacity() >= 1500);
        assert_eq!(inj.spare.len(), 1);
    }

    /// Compressed updates are served in turn: one queued behind another peer's backlog of
    /// a hundred goes out in the second packet, and each peer is told its own lane's wait.
    #[test]
    fn a_backlog_of_one_peer_does_not_delay_anothers_updates() {
        let d = Dialect::OpenbsdV6;
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut inj = Injector::new(d, 1480, 1000);
        for i in 0..100 {
            inj.push_raw(&packet(d, &[upd_c(i)], 1), t0, Source::Peer(1));
        }
        inj.push_raw(&packet(d, &[upd_c(1000)], 2), t0 + ms(30), Source::Peer(2));
        let del = [Message::DelC(StateId::new(2000, 7))];
        inj.push_raw(&packet(d, &del, 3), t0 + ms(30), Source::Local);
        assert_eq!(inj.head_wait(t0 + ms(40)), ms(40));
        assert_eq!(inj.head_wait_of(Source::Peer(1), t0 + ms(40)), ms(40));
        assert_eq!(inj.head_wait_of(Source::Peer(2), t0 + ms(40)), ms(10));
        assert_eq!(inj.head_wait_of(Source::Peer(9), t0 + ms(40)), ms(0));
        let (pkts, msgs) = drain(&mut inj, d);
        let in_packet = |m: &Message| {
            pkts.iter().position(|p| {
                Packet::new_checked(&p[..], d)
                    .unwrap()
                    .messages()
                    .any(|x| x == *m)
            })
        };
        assert_eq!(in_packet(&upd_c(1000)), Some(1));
        assert_eq!(in_packet(&del[0]), Some(2));
        // Each lane keeps its own order.
        let ones: Vec<&Message> = msgs.iter().filter(|m| **m != upd_c(1000)).collect();
        assert_eq!(ones.len(), 101);
        for i in 0..100 {
            assert!(ones.contains(&&upd_c(i)));
        }
        let pos = |m: Message| msgs.iter().position(|x| *x == m).unwrap();
        assert!((1..100).all(|i| pos(upd_c(i - 1)) < pos(upd_c(i))));
    }

    /// Packets that are not only compressed updates leave in the order they came, across
    /// lanes: a peer's delete never overtakes an older one (or an older bulk answer) that
    /// waits behind updates in another lane.
    #[test]
    fn ordered_packets_keep_their_order_across_lanes() {
        let d = Dialect::OpenbsdV6;
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let del = |i| Message::DelC(StateId::new(i, 7));
        let mut inj = Injector::new(d, 1480, 1000);
        // Distinct checksums: nothing is joined.
        inj.push_raw(&packet(d, &[upd_c(1)], 10), t0, Source::Peer(1));
        inj.push_raw(&packet(d, &[upd_c(2)], 11), t0, Source::Peer(1));
        inj.push_raw(&packet(d, &[del(1)], 12), t0 + ms(1), Source::Peer(1));
        inj.push_raw(&packet(d, &[del(2)], 13), t0 + ms(2), Source::Peer(2));
        let (_, msgs) = drain(&mut inj, d);
        assert_eq!(msgs, [upd_c(1), upd_c(2), del(1), del(2)]);
    }

    /// The order holds between packets queued at one `now` (a round queues our bulk answer
    /// and the peers' packets with the same time): a peer's delete queued after our answer
    /// goes after it, even when the peer's lane is next in turn.
    #[test]
    fn ordered_packets_of_one_round_keep_their_order() {
        let d = Dialect::OpenbsdV6;
        let now = Instant::now();
        let del = |i| Message::DelC(StateId::new(i, 7));
        let mut inj = Injector::new(d, 1480, 1000);
        inj.push_raw(&packet(d, &[upd_c(10)], 10), now, Source::Local);
        inj.push_raw(&packet(d, &[del(1)], 11), now, Source::Local);
        inj.push_raw(&packet(d, &[del(2)], 12), now, Source::Peer(1));
        let (_, msgs) = drain(&mut inj, d);
        assert_eq!(msgs, [upd_c(10), del(1), del(2)]);
    }

    /// A backlog of packets that are never shed as late (a peer's flood of deletes) is
    /// looked at once, not again every round it stays late.
    #[test]
    fn late_shedding_looks_at_each_packet_once() {
        let d = Dialect::OpenbsdV6;
        let t0 = Instant::now();
        let mut inj = Injector::new(d, 1480, 4096);
        for i in 0..1000 {
            let del = [Message::DelC(StateId::new(i, 7))];
            inj.push_raw(&packet(d, &del, 1), t0, Source::Peer(1));
        }
        inj.push_raw(&packet(d, &[upd_c(1)], 2), t0, Source::Peer(1));
        for r in 0..100 {
            inj.shed_late(t0 + INJECT_MAX_AGE + Duration::from_millis(1 + r));
        }
        assert_eq!((inj.late_reads, inj.stats.late, inj.len()), (1001, 1, 1000));
        assert_books(&inj);
        let (_, msgs) = drain(&mut inj, d);
        assert_eq!(msgs.len(), 1000);
        assert_eq!(msgs[999], Message::DelC(StateId::new(999, 7)));
    }

    /// The queue's books: every lane's ordered numbers match its packets, and the totals
    /// match the lanes.
    fn assert_books(inj: &Injector) {
        let mut n = 0;
        let mut bytes = 0;
        for l in &inj.lanes {
            let all = || l.held.iter().chain(&l.packets);
            let orders: Vec<u64> = all().filter_map(|q| q.order).collect();
            assert!(l.ordered.iter().eq(orders.iter()));
            let ats: Vec<Instant> = all().map(|q| q.at).collect();
            assert!(ats.is_sorted(), "a lane's times ascend");
            assert!(
                l.held.iter().all(|q| q.order.is_some()),
                "only ordered packets held"
            );
            n += l.len();
            bytes += all().map(|q| q.buf.capacity()).sum::<usize>();
        }
        assert_eq!((inj.queued, inj.queued_bytes), (n, bytes));
    }

    proptest::proptest! {
        /// Any mix of sources, kinds, times (many equal), drains and late shedding: nothing
        /// stalls, the books balance, every lane leaves in its own order, and ordered
        /// packets (here DEL_C) leave in the order they came, across lanes.
        #[test]
        fn lanes_keep_their_books_and_their_orders(
            ops in proptest::collection::vec((0u8..4, 0u8..3, 0u8..8, 0u64..3), 1..400),
        ) {
            let d = Dialect::OpenbsdV6;
            let t0 = Instant::now();
            let mut inj = Injector::new(d, 1480, 24);
            let mut out = [0u8; 1480];
            let (mut uid, mut now) = (0u64, t0);
            // uid → lane; popped uids in order.
            let mut lane_of = std::collections::HashMap::new();
            let mut popped = Vec::new();
            for (src, kind, pops, step) in ops {
                // Often 0: a round queues many packets at one `now`.
                now += Duration::from_millis(20 * step);
                uid += 1;
                let source = if src == 0 { Source::Local } else { Source::Peer(src.into()) };
                let m = if kind == 0 { Message::DelC(StateId::new(uid, 7)) } else { upd_c(uid) };
                // One checksum for all: runs of one lane are joined.
                inj.push_raw(&packet(d, &[m], 1), now, source);
                lane_of.insert(uid, src);
                assert_books(&inj);
                if pops == 7 {
                    inj.shed_late(now);
                    assert_books(&inj);
                }
                for _ in 0..pops % 3 {
                    let queued = inj.len();
                    let Some(n) = inj.pop(&mut out) else {
                        proptest::prop_assert_eq!(queued, 0, "a stall");
                        break;
                    };
                    for m in Packet::new_checked(&out[..n], d).unwrap().messages() {
                        match m {
                            Message::DelC(id) => popped.push((id.id, true)),
                            Message::UpdC(u) => popped.push((u.id.id, false)),
                            _ => {}
                        }
                    }
                    assert_books(&inj);
                }
            }
            while let Some(n) = inj.pop(&mut out) {
                for m in Packet::new_checked(&out[..n], d).unwrap().messages() {
                    match m {
                        Message::DelC(id) => popped.push((id.id, true)),
                        Message::UpdC(u) => popped.push((u.id.id, false)),
                        _ => {}
                    }
                }
            }
            proptest::prop_assert_eq!(inj.len(), 0);
            assert_books(&inj);
            for lane in 0..4u8 {
                let ids: Vec<u64> = popped.iter().map(|&(u, _)| u).filter(|u| lane_of[u] == lane).collect();
                proptest::prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "lane {} out of order: {:?}", lane, ids);
            }
            let ordered: Vec<u64> = popped.iter().filter(|&&(_, o)| o).map(|&(u, _)| u).collect();
            proptest::prop_assert!(ordered.windows(2).all(|w| w[0] < w[1]), "deletes out of order: {:?}", ordered);
        }
    }

    /// A peer flooding the injection queue (a compromised one: one DATA datagram can carry
    /// twenty small packets) gets the whole queue only while alone; once another source
    /// queues, the flood's new packets are dropped beyond half the queue, and never push
    /// the other's out.
    #[test]
    fn a_flooding_peer_gets_its_share_of_a_full_queue() {
        let d = Dialect::OpenbsdV6;
        let now = Instant::now();
        let pkt = |src: u8, i: u64| packet(d, &[Message::DelC(StateId::new(i, 7))], src);
        let mut inj = Injector::new(d, 1480, 100);
        for i in 0..200 {
            inj.push_raw(&pkt(1, i), now, Source::Peer(1));
        }
        assert_eq!(
            (inj.len(), inj.stats.dropped_over_share),
            (100, 0),
            "alone: all of it"
        );
        for i in 0..10 {
            inj.push_raw(&pkt(2, i), now, Source::Peer(2));
        }
        for i in 0..500 {
            inj.push_raw(&pkt(1, 1000 + i), now, Source::Peer(1));
        }
        assert_eq!(inj.stats.dropped_over_share, 500);
        let (pkts, _) = drain(&mut inj, d);
        let from = |c: u8| {
            pkts.iter()
                .filter(|p| p.windows(16).any(|w| w == [c; 16]))
                .count()
        };
        assert_eq!(
            (from(1), from(2)),
            (90, 10),
            "the other peer's packets were pushed out"
        );
        // Emptied, the queue is the flood's alone again.
        for i in 0..150 {
            inj.push_raw(&pkt(1, 2000 + i), now, Source::Peer(1));
        }
        assert_eq!((inj.len(), inj.stats.dropped_over_share), (100, 500));
    }
}
