//! Minimal IPv4 envelope for pfsync: read captures and raw-socket input, build the kernels'
//! IP template (TOS 0x10 = IPTOS_LOWDELAY, DF, TTL 255, proto 240).

use super::field::*;
use super::{Result, WireError, IPPROTO_PFSYNC};
use std::net::Ipv4Addr;

mod field {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// `IPTOS_LOWDELAY`, set by every pfsync sender.
pub const TOS_LOWDELAY: u8 = 0x10;
const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// Zero-copy view over an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Check version 4, IHL ≥ 5, `total_len` within the buffer (trailing link padding is
    /// allowed and excluded from `payload`), and that this is not a fragment.
    pub fn new_checked(buffer: T) -> Result<Ipv4Packet<T>> {
        let b = buffer.as_ref();
        if b.len() < IPV4_HEADER_LEN {
            return Err(WireError::Truncated {
                offset: 0,
                needed: IPV4_HEADER_LEN,
                have: b.len(),
            });
        }
        let vi = u8_at(b, field::VER_IHL);
        if vi >> 4 != 4 {
            return Err(WireError::BadVersion { found: vi >> 4 });
        }
        let hl = usize::from(vi & 0x0f) * 4;
        if hl < IPV4_HEADER_LEN {
            return Err(WireError::BadLength {
                field: "ip.ihl",
                offset: field::VER_IHL,
                value: hl,
            });
        }
        let total = usize::from(be16(b, field::TOTAL_LEN));
        if total < hl || total > b.len() {
            return Err(WireError::BadLength {
                field: "ip.total_len",
                offset: field::TOTAL_LEN,
                value: total,
            });
        }
        let ff = be16(b, field::FLAGS_FRAG);
        if ff & (FLAG_MF | FRAG_OFFSET_MASK) != 0 {
            return Err(WireError::BadValue {
                offset: field::FLAGS_FRAG,
                field: "ip.fragment",
                value: ff.into(),
            });
        }
        Ok(Ipv4Packet { buffer })
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn header_len(&self) -> usize {
        usize::from(u8_at(self.b(), field::VER_IHL) & 0x0f) * 4
    }
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.b(), field::TOTAL_LEN))
    }
    pub fn tos(&self) -> u8 {
        u8_at(self.b(), field::TOS)
    }
    pub fn ident(&self) -> u16 {
        be16(self.b(), field::IDENT)
    }
    pub fn dont_frag(&self) -> bool {
        be16(self.b(), field::FLAGS_FRAG) & FLAG_DF != 0
    }
    pub fn ttl(&self) -> u8 {
        u8_at(self.b(), field::TTL)
    }
    pub fn protocol(&self) -> u8 {
        u8_at(self.b(), field::PROTOCOL)
    }
    pub fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM)
    }
    /// True if the header checksum verifies (raw sockets may hand us offloaded zeros).
    pub fn verify_checksum(&self) -> bool {
        let h = self.b().get(..self.header_len()).unwrap_or(&[]);
        checksum(h) == 0
    }
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::<4>(self.b(), field::SRC))
    }
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::<4>(self.b(), field::DST))
    }
    /// Bytes after the header up to `total_len` (the pfsync packet).
    pub fn payload(&self) -> &[u8] {
        self.b()
            .get(self.header_len()..self.total_len())
            .unwrap_or(&[])
    }
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// RFC 1071 ones'-complement sum, folded and inverted.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Write a 20-byte IPv4 header as the kernels do (TOS 0x10, DF, proto 240, IP id 0,
/// checksum); returns the header length. `payload_len` is the pfsync packet size.
pub fn emit_ipv4_header(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload_len: usize,
    ttl: u8,
) -> Result<usize> {
    emit_ipv4_header_with_id(buf, src, dst, payload_len, ttl, 0)
}

/// As [`emit_ipv4_header`] with an explicit IP id (kernels use a random one).
pub fn emit_ipv4_header_with_id(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload_len: usize,
    ttl: u8,
    ident: u16,
) -> Result<usize> {
    let total = IPV4_HEADER_LEN + payload_len;
    if total > usize::from(u16::MAX) {
        return Err(WireError::BadLength {
            field: "ip.total_len",
            offset: field::TOTAL_LEN,
            value: total,
        });
    }
    let have = buf.len();
    let h = buf
        .get_mut(..IPV4_HEADER_LEN)
        .ok_or(WireError::BufferTooSmall {
            needed: IPV4_HEADER_LEN,
            have,
        })?;
    put_u8(h, field::VER_IHL, 0x45);
    put_u8(h, field::TOS, TOS_LOWDELAY);
    put16(h, field::TOTAL_LEN, total as u16);
    put16(h, field::IDENT, ident);
    put16(h, field::FLAGS_FRAG, FLAG_DF);
    put_u8(h, field::TTL, ttl);
    put_u8(h, field::PROTOCOL, IPPROTO_PFSYNC);
    put16(h, field::CHECKSUM, 0);
    put(h, field::SRC, &src.octets());
    put(h, field::DST, &dst.octets());
    let c = checksum(h);
    put16(h, field::CHECKSUM, c);
    Ok(IPV4_HEADER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{PFSYNC_DFLTTL, PFSYNC_GROUP};

    /// Reference §10 IPv4 template, 56-byte packet, id 0x1234, src 192.0.2.1.
    #[test]
    fn template() {
        let mut b = [0u8; 56];
        let n = emit_ipv4_header_with_id(
            &mut b,
            Ipv4Addr::new(192, 0, 2, 1),
            PFSYNC_GROUP,
            36,
            PFSYNC_DFLTTL,
            0x1234,
        )
        .unwrap();
        assert_eq!(n, 20);
        assert_eq!(
            &b[..10],
            &[0x45, 0x10, 0x00, 0x38, 0x12, 0x34, 0x40, 0x00, 0xff, 0xf0]
        );
        assert_eq!(&b[12..20], &[0xc0, 0, 2, 1, 0xe0, 0, 0, 0xf0]);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.ttl(), 255);
        assert_eq!(p.protocol(), 240);
        assert_eq!(p.tos(), 0x10);
        assert!(p.dont_frag());
        assert_eq!(p.src(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(p.dst(), PFSYNC_GROUP);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.payload().len(), 36);
        // Summed by hand: 0x33a5d -> 0x3a60 -> !0x3a60.
        assert_eq!(&b[10..12], &[0xc5, 0x9f]);
    }

    #[test]
    fn rejects() {
        assert!(matches!(
            Ipv4Packet::new_checked(&[0x45u8; 10][..]),
            Err(WireError::Truncated { .. })
        ));
        let mut b = [0u8; 40];
        emit_ipv4_header(&mut b, Ipv4Addr::LOCALHOST, PFSYNC_GROUP, 20, 255).unwrap();
        let mut v6 = b;
        v6[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&v6[..]).unwrap_err(),
            WireError::BadVersion { found: 6 }
        );
        let mut long = b;
        long[3] = 41;
        assert!(matches!(
            Ipv4Packet::new_checked(&long[..]),
            Err(WireError::BadLength { offset: 2, .. })
        ));
        let mut frag = b;
        frag[6] = 0x20;
        assert!(matches!(
            Ipv4Packet::new_checked(&frag[..]),
            Err(WireError::BadValue { offset: 6, .. })
        ));
        let mut bad = b;
        bad[10] ^= 1;
        assert!(!Ipv4Packet::new_checked(&bad[..]).unwrap().verify_checksum());
        // Link-layer padding after total_len is not payload.
        let mut padded = [0u8; 64];
        padded[..40].copy_from_slice(&b);
        assert_eq!(
            Ipv4Packet::new_checked(&padded[..])
                .unwrap()
                .payload()
                .len(),
            20
        );
    }
}
