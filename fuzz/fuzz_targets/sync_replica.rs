#![no_main]
//! Sequences of datagrams from an established (possibly compromised) peer into a
//! `Replica`, interleaved with time, polling and local packets: never a panic, the clock
//! never wraps, the mirror stays within its caps, and no more is answered than 10× what
//! the peer sent plus the initial allowance (requester pays; PAD is a structured op).
//!
//! Input: a list of ops. Byte 0 of an op picks it; a u16 length prefixes the payloads.
//! Structured DATA/RECORDS ops carry the peer's real epoch so the fuzzer reaches the
//! handlers behind the epoch check.
use libfuzzer_sys::fuzz_target;
use pfsync_gw::sync::proto::{msg_type, RECORDS_HDR, RECORD_VERSION, SYNC_VERSION};
use pfsync_gw::sync::{Replica, ReplicaConfig, SyncMsg, ANSWER_INITIAL};
use pfsync_gw::wire::Dialect;
use std::time::{Duration, Instant};

const PEER: usize = 0;
const EPOCH: u32 = 0x5eed;

struct Rd<'a>(&'a [u8]);
impl<'a> Rd<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes([self.u8()?, self.u8()?, self.u8()?, self.u8()?]))
    }
    fn u64(&mut self) -> Option<u64> {
        Some((self.u32()? as u64) << 32 | self.u32()? as u64)
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = (self.u16()? as usize).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
}

fn drain(r: &mut Replica, now: Instant) {
    let mut buf = vec![0u8; 1500];
    let mut n = 0;
    while r.poll_peer_transmit(PEER, now, &mut buf).is_some() {
        n += 1;
        assert!(n < 100_000, "unbounded output");
    }
    while r.poll_local_inject(&mut buf).is_some() {}
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let mut cfg = ReplicaConfig::new(1, Dialect::OpenbsdV6);
    cfg.initial_clock = 1 << 40;
    cfg.table.leaves_log2 = 6;
    cfg.table.max_states = 2_000;
    cfg.table.tombstone_max = 1_000;
    cfg.peer_max_states = 1_000;
    let mut r = Replica::new(cfg, now);
    r.add_peer(PEER, now);
    r.on_peer_up(PEER, now);
    r.handle_timeout(now);
    let mut our_epoch = 0;
    let mut buf = vec![0u8; 1500];
    while let Some(n) = r.poll_peer_transmit(PEER, now, &mut buf) {
        if let Ok(SyncMsg::Hello { epoch, .. }) = SyncMsg::decode(&buf[..n]) {
            our_epoch = epoch;
        }
    }
    let clock = r.clock();
    for m in [
        SyncMsg::Hello { node: 9, epoch: EPOCH, clock, start_seq: 1, incarnation: 9 },
        SyncMsg::HelloAck { node: 9, epoch: our_epoch, clock, incarnation: 9 },
    ] {
        let n = m.encode(&mut buf).unwrap();
        let _ = r.on_peer_datagram(PEER, &buf[..n], now);
    }
    let mut rd = Rd(data);
    let mut ops = 0;
    while let Some(op) = rd.u8() {
        ops += 1;
        if ops > 2_000 {
            break;
        }
        match op % 9 {
            0 => {
                let Some(d) = rd.bytes() else { break };
                let _ = r.on_peer_datagram(PEER, d, now);
            }
            1 => {
                let Some(ms) = rd.u16() else { break };
                now += Duration::from_millis(ms as u64);
                r.handle_timeout(now);
            }
            2 => drain(&mut r, now),
            3 => {
                let Some(d) = rd.bytes() else { break };
                let _ = r.on_local_pfsync(d, now);
            }
            4 => {
                // DATA under the real epoch: seq, clock, dialect, offset, total, chunk.
                let (Some(seq), Some(c), Some(dl), Some(offset), Some(total)) =
                    (rd.u32(), rd.u64(), rd.u8(), rd.u16(), rd.u16())
                else {
                    break;
                };
                let Some(chunk) = rd.bytes() else { break };
                let dialect = Dialect::ALL[dl as usize % Dialect::ALL.len()];
                let m = SyncMsg::Data {
                    epoch: EPOCH,
                    seq,
                    clock: c,
                    dialect,
                    offset,
                    total_len: total,
                    chunk: &chunk[..chunk.len().min(1300)],
                };
                if let Ok(n) = m.encode(&mut buf) {
                    let _ = r.on_peer_datagram(PEER, &buf[..n], now);
                }
            }
            5 => {
                // RECORDS under the real epoch with an arbitrary body.
                let (Some(seq), Some(count)) = (rd.u32(), rd.u16()) else { break };
                let Some(body) = rd.bytes() else { break };
                let mut d = vec![msg_type::RECORDS, SYNC_VERSION];
                d.extend_from_slice(&EPOCH.to_be_bytes());
                d.extend_from_slice(&seq.to_be_bytes());
                d.push(RECORD_VERSION);
                d.extend_from_slice(&count.to_be_bytes());
                debug_assert_eq!(d.len(), RECORDS_HDR);
                d.extend_from_slice(body);
                // The check pass accepts exactly what the decoder can decode.
                let decoded = pfsync_gw::sync::proto::Records::new(body, count).all(|x| x.is_ok());
                assert_eq!(pfsync_gw::sync::proto::check_records(body, count).is_ok(), decoded);
                let _ = r.on_peer_datagram(PEER, &d, now);
            }
            6 => {
                // PAD: payment, and a request that we pay (`want`).
                let (Some(want), Some(len)) = (rd.u32(), rd.u16()) else { break };
                let m = SyncMsg::Pad { want, len: len % 1400 };
                if let Ok(n) = m.encode(&mut buf) {
                    let _ = r.on_peer_datagram(PEER, &buf[..n], now);
                }
            }
            7 => r.on_peer_down(PEER, now),
            _ => {
                r.on_peer_up(PEER, now);
            }
        }
        assert!(r.table().len() <= 2_000, "mirror over its cap");
        assert!(r.table().tombstone_count() <= 1_000);
        assert!(r.clock() >= clock, "the Lamport clock went backwards (wrapped)");
        let st = r.peer_stats(PEER).expect("peer");
        assert!(
            st.answer_bytes <= 10 * st.rx_bytes + ANSWER_INITIAL,
            "answers beyond the budget: {st:?}"
        );
        assert!(st.pad_tx_bytes <= st.rx_bytes / 4, "padding beyond a quarter: {st:?}");
    }
    drain(&mut r, now);
});
