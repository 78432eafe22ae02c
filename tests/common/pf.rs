//! pfsync packets as a firewall would send them, built with the crate's codec.

use pfsync_gw::wire::{
    AddrFamily, Dialect, Message, Packet, PacketWriter, PeerRepr, StateId, StateKeyRepr, StateRepr,
    UpdCRepr,
};

/// A plausible established TCP state `id`/`creator` (10.0.x.y:port → 192.0.2.z:443).
pub fn tcp_state(id: u64, creator: u32) -> StateRepr {
    let mut s = StateRepr {
        id: StateId::new(id, creator),
        ..Default::default()
    };
    let lan = [10, 0, (id >> 8) as u8, id as u8];
    let ext = [192, 0, 2, (id % 250) as u8 + 1];
    let sport = 1024 + (id % 60_000) as u16;
    let mut key = StateKeyRepr::default();
    key.addr[0][..4].copy_from_slice(&lan);
    key.addr[1][..4].copy_from_slice(&ext);
    key.port = [sport, 443];
    key.af = AddrFamily::Inet;
    s.key = [key, key];
    s.ifname = pfsync_gw::wire::name_field("em0");
    s.af = AddrFamily::Inet;
    s.proto = 6;
    s.direction = 1;
    s.timeout = 2; // PFTM_TCP_ESTABLISHED
    s.expire = 86_400;
    s.creation = 5;
    s.src = PeerRepr {
        seqlo: 1000,
        seqhi: 66_000,
        max_win: 65_535,
        state: 4, // TCPS_ESTABLISHED
        ..Default::default()
    };
    s.dst = PeerRepr {
        seqlo: 5000,
        seqhi: 70_000,
        max_win: 65_535,
        state: 4,
        ..Default::default()
    };
    s.packets = [10, 12];
    s.bytes = [1000, 12_000];
    s
}

/// A compressed update advancing `s`'s sequence numbers by `step`.
pub fn upd_c(s: &StateRepr, step: u32) -> UpdCRepr {
    let mut src = s.src;
    let mut dst = s.dst;
    src.seqlo += step;
    src.seqhi += step;
    dst.seqlo += step;
    dst.seqhi += step;
    UpdCRepr {
        id: s.id,
        src,
        dst,
        expire: s.expire,
        timeout: s.timeout,
        flags: 0,
    }
}

/// One OpenBSD v6 packet holding `msgs`.
pub fn packet(msgs: &[Message]) -> Vec<u8> {
    let mut buf = vec![0u8; 1480];
    let mut w = PacketWriter::new(Dialect::OpenbsdV6, &mut buf);
    for m in msgs {
        assert!(w.push(m).expect("encodable message"), "packet full");
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

/// Ids of the states of `creator` that an OpenBSD v6 packet names (any message kind);
/// nothing if it does not parse.
#[allow(dead_code)] // not every including test binary needs it
pub fn state_ids(payload: &[u8], creator: u32) -> Vec<u64> {
    let Ok(p) = Packet::new_checked(payload, Dialect::OpenbsdV6) else {
        return Vec::new();
    };
    p.messages()
        .filter_map(|m: Message| m.state_id())
        .filter(|id| id.creator == creator)
        .map(|id| id.id)
        .collect()
}
