//! `pfsync_state_peer` (32 bytes, identical in every dialect; FreeBSD 15 calls it
//! `pf_state_peer_export`) with its embedded `pfsync_state_scrub` (8 bytes).

use super::field::*;
use super::{PeerRepr, ScrubRepr};

mod field {
    // pfsync_state_scrub, at the start of the peer.
    pub const SCRUB_FLAGS: usize = 0; // u16 BE, only PFSS_TIMESTAMP exported
    pub const SCRUB_TTL: usize = 2;
    pub const SCRUB_FLAG: usize = 3; // 0x01 = PFSYNC_SCRUB_FLAG_VALID
    pub const SCRUB_TS_MOD: usize = 4; // u32 BE
    pub const SEQLO: usize = 8;
    pub const SEQHI: usize = 12;
    pub const SEQDIFF: usize = 16;
    pub const MAX_WIN: usize = 20;
    pub const MSS: usize = 22;
    pub const STATE: usize = 24;
    pub const WSCALE: usize = 25;
    // 26..32 pad
}

/// Highest peer state any kernel accepts (`PF_TCPS_PROXY_DST`).
pub const PF_TCPS_PROXY_DST: u8 = 12;

/// Offset of the `state` byte inside a peer (used to report validation errors).
pub const STATE_OFFSET: usize = field::STATE;

impl PeerRepr {
    /// Read a peer from `b[at..at + 32]`.
    #[inline]
    pub(crate) fn read(b: &[u8], at: usize) -> PeerRepr {
        use field::*;
        PeerRepr {
            scrub: ScrubRepr {
                flags: be16(b, at + SCRUB_FLAGS),
                ttl: u8_at(b, at + SCRUB_TTL),
                scrub_flag: u8_at(b, at + SCRUB_FLAG),
                ts_mod: be32(b, at + SCRUB_TS_MOD),
            },
            seqlo: be32(b, at + SEQLO),
            seqhi: be32(b, at + SEQHI),
            seqdiff: be32(b, at + SEQDIFF),
            max_win: be16(b, at + MAX_WIN),
            mss: be16(b, at + MSS),
            state: u8_at(b, at + STATE),
            wscale: u8_at(b, at + WSCALE),
        }
    }

    /// Write this peer to `b[at..at + 32]`, padding zeroed.
    #[inline]
    pub(crate) fn write(&self, b: &mut [u8], at: usize) {
        use field::*;
        put16(b, at + SCRUB_FLAGS, self.scrub.flags);
        put_u8(b, at + SCRUB_TTL, self.scrub.ttl);
        put_u8(b, at + SCRUB_FLAG, self.scrub.scrub_flag);
        put32(b, at + SCRUB_TS_MOD, self.scrub.ts_mod);
        put32(b, at + SEQLO, self.seqlo);
        put32(b, at + SEQHI, self.seqhi);
        put32(b, at + SEQDIFF, self.seqdiff);
        put16(b, at + MAX_WIN, self.max_win);
        put16(b, at + MSS, self.mss);
        put_u8(b, at + STATE, self.state);
        put_u8(b, at + WSCALE, self.wscale);
        put(b, at + WSCALE + 1, &[0u8; 6]);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Reference §10 E: TCP ESTABLISHED, seqlo 0x11223344, seqhi 0x11233344, max_win 65535,
    /// mss 1460, wscale 7 with PF_WSCALE_FLAG.
    pub(crate) static PEER_E: [u8; 32] = [
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x11, 0x22, 0x33, 0x44, 0x11, 0x23, 0x33,
        0x44, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x05, 0xb4, 0x04, 0x87, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00,
    ];

    pub(crate) fn peer_e() -> PeerRepr {
        PeerRepr {
            seqlo: 0x1122_3344,
            seqhi: 0x1123_3344,
            max_win: 65535,
            mss: 1460,
            state: 4,
            wscale: 0x87,
            ..Default::default()
        }
    }

    #[test]
    fn parse_example_e() {
        assert_eq!(PeerRepr::read(&PEER_E, 0), peer_e());
    }

    #[test]
    fn emit_example_e() {
        let mut b = [0xaau8; 32];
        peer_e().write(&mut b, 0);
        assert_eq!(b, PEER_E);
    }

    #[test]
    fn scrub_fields() {
        let mut p = peer_e();
        p.scrub = ScrubRepr {
            flags: 1,
            ttl: 64,
            scrub_flag: 1,
            ts_mod: 0xdead_beef,
        };
        let mut b = [0u8; 32];
        p.write(&mut b, 0);
        assert_eq!(&b[..8], &[0, 1, 64, 1, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(PeerRepr::read(&b, 0), p);
    }
}
