//! Wire formats (WireGuard layout, little-endian). Views check the length once in
//! [`Message::parse`]; accessors then read fields without re-checking.
//!
//! ```text
//! initiation (148): type=1 | 0 0 0 | sender u32 | noise msg1 (108) | mac1 (16) | mac2 (16)
//! response    (92): type=2 | 0 0 0 | sender u32 | receiver u32 | noise msg2 (48) | mac1 | mac2
//! cookie      (64): type=3 | 0 0 0 | receiver u32 | nonce (24) | encrypted cookie (16) | tag (16)
//! transport (32+n): type=4 | 0 0 0 | receiver u32 | counter u64 | ciphertext (n) | tag (16)
//! ```

use super::errors::DropReason;

/// Message type byte of a handshake initiation.
pub const MSG_INITIATION: u8 = 1;
/// Message type byte of a handshake response.
pub const MSG_RESPONSE: u8 = 2;
/// Message type byte of a cookie reply (see `cookie.rs`).
pub const MSG_COOKIE_REPLY: u8 = 3;
/// Message type byte of a transport (data or keepalive) message.
pub const MSG_TRANSPORT: u8 = 4;

/// AEAD tag length (ChaCha20-Poly1305).
pub const TAG_LEN: usize = 16;
/// Length of a TAI64N timestamp, the initiation's payload.
pub const TIMESTAMP_LEN: usize = 12;
/// Noise IKpsk2 message 1: ephemeral 32, encrypted static 32+16, encrypted timestamp 12+16.
pub const NOISE_INITIATION_LEN: usize = 32 + (32 + TAG_LEN) + (TIMESTAMP_LEN + TAG_LEN);
/// Noise IKpsk2 message 2: ephemeral 32, encrypted empty payload 16.
pub const NOISE_RESPONSE_LEN: usize = 32 + TAG_LEN;
/// Size of an initiation datagram.
pub const INITIATION_LEN: usize = 8 + NOISE_INITIATION_LEN + 32;
/// Size of a response datagram.
pub const RESPONSE_LEN: usize = 12 + NOISE_RESPONSE_LEN + 32;
/// Transport header: type, reserved, receiver index, counter.
pub const TRANSPORT_HEADER_LEN: usize = 16;
/// Bytes a transport message adds to its payload (header + tag).
pub const TRANSPORT_OVERHEAD: usize = TRANSPORT_HEADER_LEN + TAG_LEN;
/// Largest payload `send` accepts. The daemon keeps datagrams far below this (its MTU).
pub const MAX_PAYLOAD: usize = 65535 - TRANSPORT_OVERHEAD;

pub(crate) mod field {
    use core::ops::Range;
    pub const TYPE: usize = 0;
    pub const RESERVED: Range<usize> = 1..4;

    pub const INIT_SENDER: Range<usize> = 4..8;
    pub const INIT_NOISE: Range<usize> = 8..116;
    pub const INIT_MAC1: Range<usize> = 116..132;
    pub const INIT_MAC2: Range<usize> = 132..148;

    pub const RESP_SENDER: Range<usize> = 4..8;
    pub const RESP_RECEIVER: Range<usize> = 8..12;
    pub const RESP_NOISE: Range<usize> = 12..60;
    pub const RESP_MAC1: Range<usize> = 60..76;
    pub const RESP_MAC2: Range<usize> = 76..92;

    pub const DATA_RECEIVER: Range<usize> = 4..8;
    pub const DATA_COUNTER: Range<usize> = 8..16;
    pub const DATA_PAYLOAD: usize = 16;
}

fn u32_at(buf: &[u8], r: core::ops::Range<usize>) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[r]);
    u32::from_le_bytes(b)
}

/// A parsed datagram: which message it is, with a checked view over its bytes.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    Initiation(Initiation<'a>),
    Response(Response<'a>),
    Transport(Transport<'a>),
    /// A 64-byte cookie reply (layout in `cookie.rs`).
    CookieReply(&'a [u8]),
}

impl<'a> Message<'a> {
    /// Classify and length-check a datagram. Reserved bytes must be zero.
    pub fn parse(buf: &'a [u8]) -> Result<Self, DropReason> {
        if buf.len() < 4 {
            return Err(DropReason::BadLength);
        }
        if buf[field::RESERVED] != [0, 0, 0] {
            return Err(DropReason::BadType);
        }
        match buf[field::TYPE] {
            MSG_INITIATION if buf.len() == INITIATION_LEN => {
                Ok(Message::Initiation(Initiation { buf }))
            }
            MSG_RESPONSE if buf.len() == RESPONSE_LEN => Ok(Message::Response(Response { buf })),
            MSG_COOKIE_REPLY if buf.len() == super::cookie::COOKIE_REPLY_LEN => {
                Ok(Message::CookieReply(buf))
            }
            MSG_TRANSPORT
                if buf.len() >= TRANSPORT_OVERHEAD
                    && buf.len() - TRANSPORT_HEADER_LEN <= MAX_PAYLOAD + TAG_LEN =>
            {
                Ok(Message::Transport(Transport { buf }))
            }
            MSG_INITIATION | MSG_RESPONSE | MSG_TRANSPORT | MSG_COOKIE_REPLY => {
                Err(DropReason::BadLength)
            }
            _ => Err(DropReason::BadType),
        }
    }
}

/// View over a 148-byte initiation.
#[derive(Debug, Clone, Copy)]
pub struct Initiation<'a> {
    buf: &'a [u8],
}

impl<'a> Initiation<'a> {
    pub fn sender(&self) -> u32 {
        u32_at(self.buf, field::INIT_SENDER)
    }
    pub fn noise(&self) -> &'a [u8] {
        &self.buf[field::INIT_NOISE]
    }
    /// Bytes covered by mac1.
    pub fn mac1_input(&self) -> &'a [u8] {
        &self.buf[..field::INIT_MAC1.start]
    }
    pub fn mac1(&self) -> &'a [u8] {
        &self.buf[field::INIT_MAC1]
    }
    /// Bytes covered by mac2 (everything before it, mac1 included).
    pub fn mac2_input(&self) -> &'a [u8] {
        &self.buf[..field::INIT_MAC2.start]
    }
    pub fn mac2(&self) -> &'a [u8] {
        &self.buf[field::INIT_MAC2]
    }
}

/// View over a 92-byte response.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    buf: &'a [u8],
}

impl<'a> Response<'a> {
    pub fn sender(&self) -> u32 {
        u32_at(self.buf, field::RESP_SENDER)
    }
    pub fn receiver(&self) -> u32 {
        u32_at(self.buf, field::RESP_RECEIVER)
    }
    pub fn noise(&self) -> &'a [u8] {
        &self.buf[field::RESP_NOISE]
    }
    pub fn mac1_input(&self) -> &'a [u8] {
        &self.buf[..field::RESP_MAC1.start]
    }
    pub fn mac1(&self) -> &'a [u8] {
        &self.buf[field::RESP_MAC1]
    }
    pub fn mac2_input(&self) -> &'a [u8] {
        &self.buf[..field::RESP_MAC2.start]
    }
    pub fn mac2(&self) -> &'a [u8] {
        &self.buf[field::RESP_MAC2]
    }
}

/// View over a transport message (header, ciphertext, tag).
#[derive(Debug, Clone, Copy)]
pub struct Transport<'a> {
    buf: &'a [u8],
}

impl<'a> Transport<'a> {
    pub fn receiver(&self) -> u32 {
        u32_at(self.buf, field::DATA_RECEIVER)
    }
    pub fn counter(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.buf[field::DATA_COUNTER]);
        u64::from_le_bytes(b)
    }
    /// Ciphertext including the trailing tag.
    pub fn ciphertext(&self) -> &'a [u8] {
        &self.buf[field::DATA_PAYLOAD..]
    }
}

/// Build an initiation without its MACs (the caller fills mac1; the endpoint sets mac2).
pub(crate) fn emit_initiation(sender: u32, noise: &[u8]) -> [u8; INITIATION_LEN] {
    let mut out = [0u8; INITIATION_LEN];
    out[field::TYPE] = MSG_INITIATION;
    out[field::INIT_SENDER].copy_from_slice(&sender.to_le_bytes());
    out[field::INIT_NOISE].copy_from_slice(noise);
    out
}

/// Build a response without its MACs.
pub(crate) fn emit_response(sender: u32, receiver: u32, noise: &[u8]) -> [u8; RESPONSE_LEN] {
    let mut out = [0u8; RESPONSE_LEN];
    out[field::TYPE] = MSG_RESPONSE;
    out[field::RESP_SENDER].copy_from_slice(&sender.to_le_bytes());
    out[field::RESP_RECEIVER].copy_from_slice(&receiver.to_le_bytes());
    out[field::RESP_NOISE].copy_from_slice(noise);
    out
}

/// Write a transport header into `out[..16]`.
pub(crate) fn emit_transport_header(out: &mut [u8], receiver: u32, counter: u64) {
    out[field::TYPE] = MSG_TRANSPORT;
    out[field::RESERVED].fill(0);
    out[field::DATA_RECEIVER].copy_from_slice(&receiver.to_le_bytes());
    out[field::DATA_COUNTER].copy_from_slice(&counter.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_wireguard() {
        assert_eq!(INITIATION_LEN, 148);
        assert_eq!(RESPONSE_LEN, 92);
        assert_eq!(TRANSPORT_OVERHEAD, 32);
        assert_eq!(field::INIT_MAC2.end, INITIATION_LEN);
        assert_eq!(field::RESP_MAC2.end, RESPONSE_LEN);
    }

    #[test]
    fn initiation_round_trip() {
        let noise = [7u8; NOISE_INITIATION_LEN];
        let buf = emit_initiation(0x0102_0304, &noise);
        assert_eq!(&buf[..8], &[1, 0, 0, 0, 4, 3, 2, 1]);
        match Message::parse(&buf) {
            Ok(Message::Initiation(i)) => {
                assert_eq!(i.sender(), 0x0102_0304);
                assert_eq!(i.noise(), &noise[..]);
                assert_eq!(i.mac1_input().len(), 116);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn response_round_trip() {
        let buf = emit_response(5, 6, &[9u8; NOISE_RESPONSE_LEN]);
        match Message::parse(&buf) {
            Ok(Message::Response(r)) => {
                assert_eq!((r.sender(), r.receiver()), (5, 6));
                assert_eq!(r.mac1_input().len(), 60);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transport_header_layout() {
        let mut buf = [0xffu8; 40];
        emit_transport_header(&mut buf, 0xaabb_ccdd, 0x1122_3344_5566_7788);
        assert_eq!(
            &buf[..16],
            &[4, 0, 0, 0, 0xdd, 0xcc, 0xbb, 0xaa, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        match Message::parse(&buf) {
            Ok(Message::Transport(t)) => {
                assert_eq!(t.receiver(), 0xaabb_ccdd);
                assert_eq!(t.counter(), 0x1122_3344_5566_7788);
                assert_eq!(t.ciphertext().len(), 24);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            Message::parse(&[1, 0, 0]).unwrap_err(),
            DropReason::BadLength
        );
        assert_eq!(
            Message::parse(&[1, 0, 0, 0]).unwrap_err(),
            DropReason::BadLength
        );
        assert_eq!(Message::parse(&[4; 31]).unwrap_err(), DropReason::BadType);
        let mut t = [0u8; 31];
        t[0] = 4;
        assert_eq!(Message::parse(&t).unwrap_err(), DropReason::BadLength);
        let mut r = [0u8; 92];
        r[0] = 2;
        r[2] = 1;
        assert_eq!(Message::parse(&r).unwrap_err(), DropReason::BadType);
        let mut c = [0u8; 64];
        c[0] = MSG_COOKIE_REPLY;
        assert!(matches!(Message::parse(&c), Ok(Message::CookieReply(_))));
        assert_eq!(Message::parse(&c[..63]).unwrap_err(), DropReason::BadLength);
        let mut i = [0u8; 149];
        i[0] = 1;
        assert_eq!(Message::parse(&i).unwrap_err(), DropReason::BadLength);
    }
}
