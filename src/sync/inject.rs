//! Packets towards the local firewall: a bounded queue, the one place that encodes messages in
//! the local dialect, and the echo filter for loop prevention.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::table::digest::mix64;
use crate::wire::{translate, Dialect, Message, PacketWriter, UpdCRun};

/// How long an injected packet is remembered to recognise its echo.
const ECHO_MEMORY: Duration = Duration::from_secs(5);
const ECHO_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectStats {
    pub packets: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub encode_errors: u64,
    /// Queued packets of updates joined to the one before them (see `Injector::pop`).
    pub joined: u64,
}

pub struct Injector {
    dialect: Dialect,
    mtu: usize,
    /// Packets in order, each in a buffer of its own: a reassembled packet's buffer is
    /// queued as it is (no copy); buffers go back to `spare` once injected.
    queue: VecDeque<Vec<u8>>,
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
}

/// Hash of a whole packet for the echo filter. Four independent lanes, so the multiply
/// chains overlap (a single chain over 1.4 kB was a few % of a gateway's profile).
fn packet_hash(b: &[u8]) -> u64 {
    let mut h = [b.len() as u64, 1, 2, 3];
    let mut chunks = b.chunks_exact(32);
    for c in &mut chunks {
        for (k, hk) in h.iter_mut().enumerate() {
            let w = u64::from_le_bytes(c[k * 8..k * 8 + 8].try_into().unwrap_or_default());
            *hk = mix64(*hk ^ w);
        }
    }
    for c in chunks.remainder().chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h[0] = mix64(h[0] ^ u64::from_le_bytes(w));
    }
    mix64(h[0] ^ h[1].rotate_left(16) ^ h[2].rotate_left(32) ^ h[3].rotate_left(48))
}

impl Injector {
    pub fn new(dialect: Dialect, mtu: usize, max: usize) -> Injector {
        Injector {
            dialect,
            mtu,
            queue: VecDeque::new(),
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
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
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
    pub fn push_raw(&mut self, bytes: &[u8], now: Instant) {
        if bytes.len() > u16::MAX as usize {
            return;
        }
        let mut b = self.take_buf();
        b.reserve(bytes.len().max(self.mtu));
        b.extend_from_slice(bytes);
        self.push_owned(b, now);
    }

    /// Queue the packet in `b` for injection, unchanged, keeping the buffer (a reassembled
    /// packet is not copied again).
    pub(super) fn push_owned(&mut self, b: Vec<u8>, now: Instant) {
        if b.len() > u16::MAX as usize {
            self.give_buf(b);
            return;
        }
        // Beyond the bounds the oldest packets go.
        while !self.queue.is_empty()
            && (self.queue.len() >= self.max_items
                || self.queued_bytes + b.capacity() > self.max_bytes)
        {
            self.drop_front();
            self.stats.dropped += 1;
        }
        self.remember(packet_hash(&b), now);
        self.queued_bytes += b.capacity();
        self.queue.push_back(b);
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

    fn drop_front(&mut self) {
        if let Some(b) = self.queue.pop_front() {
            self.queued_bytes -= b.capacity();
            self.give_buf(b);
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
    ) {
        let mut buf = std::mem::take(&mut self.buf);
        let mtu = self.mtu.min(buf.len());
        let mut w = PacketWriter::new(self.dialect, &mut buf[..mtu]);
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
                Ok(true) => {}
                Ok(false) if w.is_empty() => self.stats.encode_errors += 1,
                Ok(false) => {
                    let n = w.finish();
                    self.push_raw(&buf[..n], now);
                    w = PacketWriter::new(self.dialect, &mut buf[..mtu]);
                    if !matches!(w.push(&m), Ok(true)) {
                        self.stats.encode_errors += 1;
                    }
                }
                Err(_) => self.stats.encode_errors += 1,
            }
        }
        if !w.is_empty() {
            let n = w.finish();
            self.push_raw(&buf[..n], now);
        }
        self.buf = buf;
    }

    /// The next packet to inject, into `out`. Packets of compressed updates only that wait
    /// back to back are joined into one, up to the MTU, as pf itself packs its updates: a
    /// relay that fell behind on small packets spends its time in the kernel's per-packet
    /// send path, not on the updates. A lone packet goes out as it came.
    pub fn pop(&mut self, out: &mut [u8]) -> Option<usize> {
        let n = self.queue.front()?.len();
        if n > out.len() {
            // Caller's buffer is too small for this packet: drop it rather than stall.
            self.drop_front();
            self.stats.dropped += 1;
            return None;
        }
        out[..n].copy_from_slice(self.queue.front()?);
        self.drop_front();
        let (mut n, mut joined_any) = (n, false);
        let room = self.mtu.min(out.len());
        while let Some(joined) = self
            .queue
            .front()
            .and_then(|next| self.run.join(&mut out[..room], n, next))
        {
            n = joined;
            self.drop_front();
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
    fn queued_runs_of_updates_are_joined_up_to_the_mtu_in_order() {
        let now = Instant::now();
        for d in Dialect::ALL {
            let mut inj = Injector::new(d, 1480, 1000);
            let mut sent = Vec::new();
            for i in 0..40u64 {
                let m = [upd_c(2 * i), upd_c(2 * i + 1)];
                inj.push_raw(&packet(d, &m, 9), now);
                sent.extend(m);
            }
            // Not joined: a DEL_C between runs, and a firewall with another checksum.
            let del = [Message::DelC(StateId::new(99, 7))];
            inj.push_raw(&packet(d, &del, 9), now);
            sent.extend(del);
            let other = [upd_c(500)];
            inj.push_raw(&packet(d, &other, 9), now);
            inj.push_raw(&packet(d, &[upd_c(501)], 8), now);
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
    fn a_lone_packet_goes_out_as_it_came() {
        let now = Instant::now();
        for d in Dialect::ALL {
            let mut inj = Injector::new(d, 1480, 1000);
            let p = packet(d, &[upd_c(1), upd_c(2)], 3);
            inj.push_raw(&p, now);
            assert_eq!(drain(&mut inj, d).0, vec![p]);
        }
    }

    #[test]
    fn queue_and_spares_together_stay_within_the_byte_bound() {
        let now = Instant::now();
        // 64 packets of 1500 B: the bound is max(64 × 1500, 65535) = 96,000 bytes.
        let mut inj = Injector::new(Dialect::OpenbsdV6, 1500, 64);
        let held = |i: &Injector| i.queue.iter().map(Vec::capacity).sum::<usize>();
        let spares = |i: &Injector| i.spare.iter().map(Vec::capacity).sum::<usize>();
        // Small packets still take a local packet's room each (as the byte ring did)...
        for k in 0..200u8 {
            inj.push_raw(&[k; 100], now);
            assert!(held(&inj) <= inj.max_bytes && inj.len() <= 64);
        }
        // ...and buffers grown by reassembly to twice that are counted at their size.
        for _ in 0..40 {
            let mut b = inj.take_buf();
            b.resize(2900, 1);
            inj.push_owned(b, now);
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
        inj.push_raw(&[1; 100], now);
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
}
