//! Stale-update protection, as in the kernels' `pfsync_upd_tcp()` / `pfsync_in_upd()`.
//!
//! Each peer (src, dst) of an incoming update is judged on its own: a peer that would move
//! backwards is kept as ours and counted stale; the others are taken. A state therefore never
//! rolls back, whatever order updates arrive in.

use crate::wire::PeerRepr;

pub const IPPROTO_TCP: u8 = 6;
/// `TCPS_SYN_SENT`: below it the dst seqlo is not meaningful yet.
pub const TCPS_SYN_SENT: u8 = 2;
/// `PF_TCPS_PROXY_SRC` (= `TCP_NSTATES`): syn-proxy states may move "backwards" to real states.
pub const PF_TCPS_PROXY_SRC: u8 = 11;

/// `SEQ_GT(a, b)` with 32-bit wrap-around.
#[inline]
pub fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Is `theirs` stale compared to `ours` for the src peer of a TCP state?
#[inline]
pub fn tcp_src_stale(ours: &PeerRepr, theirs: &PeerRepr) -> bool {
    (ours.state > theirs.state
        && (ours.state < PF_TCPS_PROXY_SRC || theirs.state >= PF_TCPS_PROXY_SRC))
        || (ours.state == theirs.state && seq_gt(ours.seqlo, theirs.seqlo))
}

/// Is `theirs` stale compared to `ours` for the dst peer of a TCP state?
#[inline]
pub fn tcp_dst_stale(ours: &PeerRepr, theirs: &PeerRepr) -> bool {
    ours.state > theirs.state || (ours.state >= TCPS_SYN_SENT && seq_gt(ours.seqlo, theirs.seqlo))
}

/// How an incoming peer compares to ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerOrder {
    /// Theirs would move ours backwards.
    Stale,
    /// Theirs moves ours forwards.
    Newer,
    /// Neither (same state and, for TCP, same seqlo): only a version can decide.
    Same,
}

#[inline(always)]
fn is_stale(proto: u8, is_src: bool, ours: &PeerRepr, theirs: &PeerRepr) -> bool {
    match (proto == IPPROTO_TCP, is_src) {
        (true, true) => tcp_src_stale(ours, theirs),
        (true, false) => tcp_dst_stale(ours, theirs),
        (false, _) => ours.state > theirs.state,
    }
}

#[inline]
pub fn peer_order(proto: u8, is_src: bool, ours: &PeerRepr, theirs: &PeerRepr) -> PeerOrder {
    if is_stale(proto, is_src, ours, theirs) {
        PeerOrder::Stale
    } else if is_stale(proto, is_src, theirs, ours) {
        PeerOrder::Newer
    } else {
        PeerOrder::Same
    }
}

/// Total order on peer contents, the last-resort tie-break between equal versions.
pub fn peer_key(p: &PeerRepr) -> (u8, u32, u32, u32, u16, u16, u8, u16, u8, u8, u32) {
    (
        p.state,
        p.seqlo,
        p.seqhi,
        p.seqdiff,
        p.max_win,
        p.mss,
        p.wscale,
        p.scrub.flags,
        p.scrub.ttl,
        p.scrub.scrub_flag,
        p.scrub.ts_mod,
    )
}

/// Versioned merge of one peer: never backwards; between equally advanced copies the higher
/// version wins (`ours_newer` tells which), equal versions fall back to [`peer_key`].
/// Returns (stale, changed).
#[inline(always)]
pub fn merge_peer_versioned(
    proto: u8,
    is_src: bool,
    ours: &mut PeerRepr,
    theirs: &PeerRepr,
    ord: core::cmp::Ordering,
) -> (bool, bool) {
    use core::cmp::Ordering::*;
    let take = match peer_order(proto, is_src, ours, theirs) {
        PeerOrder::Stale => return (true, false),
        PeerOrder::Newer => true,
        PeerOrder::Same => match ord {
            Greater => true,
            Less => false,
            Equal => peer_key(theirs) > peer_key(ours),
        },
    };
    if take && ours != theirs {
        *ours = *theirs;
        return (false, true);
    }
    (false, false)
}

/// Merge an incoming (src, dst) into ours. Returns how many of the two peers were stale
/// (0, 1 or 2), the kernel's `sync` count. Non-TCP peers only move forward in `state`.
#[inline]
pub fn merge_peers(
    proto: u8,
    src: &mut PeerRepr,
    dst: &mut PeerRepr,
    in_src: &PeerRepr,
    in_dst: &PeerRepr,
) -> u8 {
    let (src_stale, dst_stale) = if proto == IPPROTO_TCP {
        (tcp_src_stale(src, in_src), tcp_dst_stale(dst, in_dst))
    } else {
        (src.state > in_src.state, dst.state > in_dst.state)
    };
    if !src_stale {
        *src = *in_src;
    }
    if !dst_stale {
        *dst = *in_dst;
    }
    src_stale as u8 + dst_stale as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(state: u8, seqlo: u32) -> PeerRepr {
        PeerRepr {
            state,
            seqlo,
            ..Default::default()
        }
    }

    #[test]
    fn seq_wraps() {
        assert!(seq_gt(1, 0));
        assert!(seq_gt(0, u32::MAX));
        assert!(seq_gt(5, 0xffff_fff0));
        assert!(!seq_gt(0xffff_fff0, 5));
        assert!(!seq_gt(3, 3));
    }

    #[test]
    fn tcp_rules() {
        // state regress
        assert!(tcp_src_stale(&peer(4, 10), &peer(3, 20)));
        // seqlo regress at same state
        assert!(tcp_src_stale(&peer(4, 10), &peer(4, 9)));
        assert!(!tcp_src_stale(&peer(4, 10), &peer(4, 10)));
        assert!(!tcp_src_stale(&peer(4, 10), &peer(5, 1)));
        // syn-proxy: ours in proxy state, theirs a real state: not stale
        assert!(!tcp_src_stale(&peer(PF_TCPS_PROXY_SRC, 10), &peer(4, 1)));
        assert!(tcp_src_stale(
            &peer(PF_TCPS_PROXY_SRC + 1, 10),
            &peer(PF_TCPS_PROXY_SRC, 50)
        ));
        // dst: seqlo only checked once >= SYN_SENT
        assert!(!tcp_dst_stale(&peer(1, 10), &peer(1, 5)));
        assert!(tcp_dst_stale(&peer(2, 10), &peer(2, 5)));
        assert!(
            tcp_dst_stale(&peer(4, 10), &peer(5, 5)),
            "seqlo regress even if state advances"
        );
    }

    #[test]
    fn merge_takes_fresh_side_only() {
        let (mut s, mut d) = (peer(4, 100), peer(4, 100));
        let n = merge_peers(IPPROTO_TCP, &mut s, &mut d, &peer(4, 50), &peer(4, 150));
        assert_eq!(n, 1);
        assert_eq!(s.seqlo, 100);
        assert_eq!(d.seqlo, 150);
        let n = merge_peers(17, &mut s, &mut d, &peer(1, 0), &peer(5, 0));
        assert_eq!(n, 1);
        assert_eq!((s.state, d.state), (4, 5));
    }
}
