//! Packets towards the local firewall: a bounded queue, the one place that encodes messages in
//! the local dialect, and the echo filter for loop prevention.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::link::PacketRing;
use crate::table::digest::mix64;
use crate::wire::{translate, Dialect, Message, PacketWriter};

/// How long an injected packet is remembered to recognise its echo.
const ECHO_MEMORY: Duration = Duration::from_secs(5);
const ECHO_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectStats {
    pub packets: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub encode_errors: u64,
}

pub struct Injector {
    dialect: Dialect,
    mtu: usize,
    queue: PacketRing,
    echo: VecDeque<(u64, Instant)>,
    buf: Vec<u8>,
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
            queue: PacketRing::new(max, max.saturating_mul(mtu)),
            echo: VecDeque::new(),
            buf: vec![0; mtu],
            stats: InjectStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queue bytes for injection, unchanged.
    pub fn push_raw(&mut self, bytes: &[u8], now: Instant) {
        self.stats.dropped += self.queue.push(bytes) as u64;
        while self
            .echo
            .front()
            .is_some_and(|&(_, t)| now.saturating_duration_since(t) > ECHO_MEMORY)
            || self.echo.len() >= ECHO_MAX
        {
            self.echo.pop_front();
        }
        self.echo.push_back((packet_hash(bytes), now));
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

    pub fn pop(&mut self, out: &mut [u8]) -> Option<usize> {
        let n = self.queue.front_len()?;
        if n > out.len() {
            // Caller's buffer is too small for this packet: drop it rather than stall.
            self.queue.pop_front();
            self.stats.dropped += 1;
            return None;
        }
        let n = self.queue.pop_into(out)?;
        self.stats.packets += 1;
        self.stats.bytes += n as u64;
        Some(n)
    }
}
