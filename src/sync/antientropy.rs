//! Anti-entropy: how do two replicas find and repair what differs between their tables?
//!
//! Table digests (SUMMARY), range digests compared `FANOUT` at a time (RANGES) down to the
//! differing leaves, and RECORDS messages built from a peer's dirty state references and
//! queued leaves. The message handlers themselves are in `receive.rs`.

use super::bounds::ANSWER_RESERVE;
use super::peer::set_bit;
use super::*;

/// Range digests are compared in groups of this many (the digest tree's fan-out).
pub(super) const FANOUT: usize = crate::table::TREE_FANOUT;

pub(super) fn summary(table: &mut StateTable, clock: u64, want_reply: bool) -> SyncMsg<'static> {
    SyncMsg::Summary {
        digest: table.digest(),
        count: table.len() as u32,
        leaves_log2: table.config().leaves_log2,
        want_reply,
        clock,
    }
}

pub(super) fn send_ranges(
    cfg: &ReplicaConfig,
    p: &mut Peer,
    table: &mut StateTable,
    (first, span, n): (usize, usize, usize),
    now: Instant,
) {
    let n = n.min(FANOUT);
    // A RANGES can answer a RANGES with up to 64 more: paid from the answer budget like
    // RECORDS; a dropped one is asked for again at the next digest check. Checked before
    // its digests are computed: an answer the budget refuses costs nothing more.
    if p.affordable_cost(cfg, proto::RANGES_HDR + n * 16, now, ANSWER_RESERVE)
        .is_none()
    {
        p.stats.answers_deferred += 1;
        return;
    }
    let mut d = [0u8; FANOUT * 16];
    for i in 0..n {
        let dg = table.range_digest(first + i * span, span);
        d[i * 16..i * 16 + 16].copy_from_slice(&dg.to_be_bytes());
    }
    let m = SyncMsg::Ranges {
        first: first as u32,
        span: span as u32,
        digests: &d[..n * 16],
    };
    p.answer(cfg, &m, now, ANSWER_RESERVE);
}

/// How far ahead of the record being built its successors' index slots are prefetched
/// (their entries at half the distance).
const PREFETCH_AHEAD: usize = 8;

/// Build one RECORDS message from the peer's dirty refs (refilled from queued leaves).
pub(super) fn build_records(
    cfg: &ReplicaConfig,
    p: &mut Peer,
    table: &StateTable,
    now: Instant,
    out: &mut [u8],
) -> Option<usize> {
    let _ = cfg;
    let mut refs: Vec<StateRef> = Vec::new();
    let mut pos = RECORDS_HDR;
    let mut count: u16 = 0;
    loop {
        if p.dirty.is_empty() {
            let Some(leaf) = p.leaves.pop_front() else {
                break;
            };
            let leaf = leaf as usize;
            set_bit(&mut p.leaf_queued, leaf, false);
            set_bit(&mut p.leaf_dumped, leaf, true);
            for id in table
                .leaf_states(leaf)
                .chain(table.leaf_tombstones(leaf).iter().copied())
            {
                p.mark_dirty(StateRef::State(id));
            }
            continue;
        }
        let r = *p.dirty.front().expect("non-empty");
        // A leaf's states lie scattered over the table: look a few ahead so their index
        // slots and entries are loading while these are encoded.
        if let Some(StateRef::State(a)) = p.dirty.get(PREFETCH_AHEAD) {
            table.prefetch_slot(*a);
        }
        if let Some(StateRef::State(a)) = p.dirty.get(PREFETCH_AHEAD / 2) {
            table.prefetch_entry(*a);
        }
        let rec = match r {
            StateRef::State(id) => table
                .get(id)
                .map(|e| Record::State(e.version(), e.present(now)))
                .or_else(|| table.tombstone(id).map(|v| Record::Tombstone(id, v))),
            StateRef::Clear {
                creator,
                ifname,
                version,
            } => Some(Record::Clear {
                creator,
                ifname,
                version,
            }),
        };
        if let Some(rec) = rec {
            match encode_record(&rec, &mut out[pos..]) {
                Ok(n) => {
                    pos += n;
                    count += 1;
                }
                Err(_) => break, // full
            }
            refs.push(r);
        }
        p.dirty.pop_front();
        if let StateRef::State(id) = r {
            p.dirty_set.remove(&id);
        }
    }
    if count == 0 {
        return None;
    }
    let (seq, pushed) = p.tx.push(&refs, true, now);
    if pushed == Pushed::Overflow {
        p.stats.overflows += 1;
        p.start_resync(now);
    }
    p.next_alive = p.next_alive.min(now + cfg.probe_interval);
    let mut w = proto::Wr::new(&mut out[..RECORDS_HDR]);
    w.u8(msg_type::RECORDS).ok()?;
    w.u8(SYNC_VERSION).ok()?;
    w.u32(p.epoch).ok()?;
    w.u32(seq).ok()?;
    w.u8(RECORD_VERSION).ok()?;
    w.u16(count).ok()?;
    p.stats.tx_records += count as u64;
    Some(pos)
}
