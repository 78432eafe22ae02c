//! WireGuard's cookie mechanism (whitepaper §5.4.7), the DoS defence for handshakes.
//!
//! Responder ("checker"): while under load, a handshake message must carry a valid mac2.
//! One without gets a 64-byte cookie reply instead of being processed:
//! ```text
//! cookie      = BLAKE2s-128(key = secret, src_addr)      secret: 32 random bytes, renewed every 120 s
//! cookie_key  = BLAKE2s-256("cookie--" || responder_static_public)
//! reply (64)  = type=3 | 0 0 0 | receiver u32 | nonce (24) | XChaCha20-Poly1305(cookie_key, nonce,
//!               cookie, ad = mac1 of the message being answered) (16 + 16)
//! mac2        = BLAKE2s-128(key = cookie, msg[..mac2 offset])
//! ```
//! `src_addr` is the IP address (4 or 16 bytes, IPv4-mapped IPv6 as IPv4) followed by the
//! port, big-endian; only the responder computes it, so the encoding is local.
//!
//! Sender ("maker"): keeps the cookie from a reply that decrypts under the peer's
//! `cookie_key` with the mac1 of our last handshake message as AD, and puts mac2 on its
//! handshake messages for 120 s (COOKIE_REFRESH_TIME). The cookie proves the sender
//! receives at its source address, so spoofed floods cannot produce a valid mac2.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::mac::MAC_LEN;

pub use super::messages::MSG_COOKIE_REPLY;
/// Size of a cookie reply datagram.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Lifetime of the responder's cookie secret and of a cookie held by a sender.
pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120);

const LABEL_COOKIE: &[u8] = b"cookie--";

pub(crate) mod field {
    use core::ops::Range;
    pub const RECEIVER: Range<usize> = 4..8;
    pub const NONCE: Range<usize> = 8..32;
    pub const COOKIE: Range<usize> = 32..48;
    pub const TAG: Range<usize> = 48..64;
}

/// `BLAKE2s-256("cookie--" || public)`: the key cookie replies to `public`'s owner's
/// messages are sealed under.
fn cookie_key(public: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(LABEL_COOKIE);
    h.update(public);
    h.finalize().into()
}

/// BLAKE2s-128 keyed MAC (key ≤ 32 bytes).
pub(crate) fn mac16(key: &[u8], covered: &[u8]) -> [u8; MAC_LEN] {
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(key).expect("key ≤ 32 bytes");
    m.update(covered);
    m.finalize().into_bytes().into()
}

/// Address bytes the cookie is bound to; no allocation.
fn addr_bytes(src: SocketAddr) -> ([u8; 18], usize) {
    let mut out = [0u8; 18];
    let ip = match src.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let n = match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            out[..16].copy_from_slice(&v6.octets());
            16
        }
    };
    out[n..n + 2].copy_from_slice(&src.port().to_be_bytes());
    (out, n + 2)
}

/// Responder side: issues cookies and checks mac2. Secrets are wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct CookieChecker {
    secret: [u8; 32],
    #[zeroize(skip)]
    secret_born: Option<Instant>,
    key: [u8; 32],
}

impl CookieChecker {
    pub fn new(our_public: &[u8; 32]) -> Self {
        CookieChecker {
            secret: [0; 32],
            secret_born: None,
            key: cookie_key(our_public),
        }
    }

    /// The cookie `src` should hold now (renewing the secret every 120 s).
    fn cookie(
        &mut self,
        src: SocketAddr,
        now: Instant,
        rng: &mut dyn rand_core::RngCore,
    ) -> [u8; 16] {
        let stale = self
            .secret_born
            .is_none_or(|t| now.saturating_duration_since(t) >= COOKIE_REFRESH_TIME);
        if stale {
            rng.fill_bytes(&mut self.secret);
            self.secret_born = Some(now);
        }
        let (a, n) = addr_bytes(src);
        mac16(&self.secret, &a[..n])
    }

    /// Does `mac2` over `covered` match the cookie of `src`? Constant-time comparison.
    /// Checked only while under load, so a valid mac2 from before a secret renewal may be
    /// refused once; the sender then gets a new cookie.
    pub fn verify_mac2(
        &mut self,
        src: SocketAddr,
        covered: &[u8],
        mac2: &[u8],
        now: Instant,
        rng: &mut dyn rand_core::RngCore,
    ) -> bool {
        if self.secret_born.is_none() {
            return false;
        }
        let mut cookie = self.cookie(src, now, rng);
        let ok = mac16(&cookie, covered).ct_eq(mac2).into();
        cookie.zeroize();
        ok
    }

    /// Write a cookie reply for a message from `src` with sender index `receiver` and
    /// mac1 `mac1` into `out[..64]`.
    pub fn write_reply(
        &mut self,
        src: SocketAddr,
        receiver: u32,
        mac1: &[u8; MAC_LEN],
        now: Instant,
        rng: &mut dyn rand_core::RngCore,
        out: &mut [u8],
    ) {
        let mut cookie = self.cookie(src, now, rng);
        let out = &mut out[..COOKIE_REPLY_LEN];
        out[..4].copy_from_slice(&[MSG_COOKIE_REPLY, 0, 0, 0]);
        out[field::RECEIVER].copy_from_slice(&receiver.to_le_bytes());
        rng.fill_bytes(&mut out[field::NONCE]);
        out[field::COOKIE].copy_from_slice(&cookie);
        cookie.zeroize();
        let aead = XChaCha20Poly1305::new(Key::from_slice(&self.key));
        let nonce = *XNonce::from_slice(&out[field::NONCE]);
        let (body, tag) = out[field::COOKIE.start..].split_at_mut(MAC_LEN);
        let t = aead
            .encrypt_in_place_detached(&nonce, mac1, body)
            .expect("16-byte plaintext is within limits");
        tag.copy_from_slice(&t);
    }
}

/// Sender side, one per peer: the cookie key for that peer, the mac1 of our last
/// handshake message (the AD a reply must carry) and the cookie we hold, if any.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct CookieMaker {
    key: [u8; 32],
    cookie: [u8; 16],
    #[zeroize(skip)]
    cookie_set: Option<Instant>,
    last_mac1: Option<[u8; MAC_LEN]>,
}

impl CookieMaker {
    pub fn new(peer_public: &[u8; 32]) -> Self {
        CookieMaker {
            key: cookie_key(peer_public),
            cookie: [0; 16],
            cookie_set: None,
            last_mac1: None,
        }
    }

    /// Set mac2 on an outgoing handshake message whose mac1 is at `mac1_at` and mac2 right
    /// after it. mac2 stays zero unless we hold a cookie younger than 120 s.
    pub fn seal(&mut self, msg: &mut [u8], mac1_at: usize, now: Instant) {
        let mac2_at = mac1_at + MAC_LEN;
        let mut mac1 = [0u8; MAC_LEN];
        mac1.copy_from_slice(&msg[mac1_at..mac2_at]);
        self.last_mac1 = Some(mac1);
        let fresh = self
            .cookie_set
            .is_some_and(|t| now.saturating_duration_since(t) < COOKIE_REFRESH_TIME);
        let mac2 = if fresh {
            mac16(&self.cookie, &msg[..mac2_at])
        } else {
            [0; MAC_LEN]
        };
        msg[mac2_at..mac2_at + MAC_LEN].copy_from_slice(&mac2);
    }

    /// Take the cookie from a reply. Only one reply per message we sent is accepted (the
    /// AD is consumed), so replayed replies do nothing.
    pub fn consume_reply(&mut self, reply: &[u8], now: Instant) -> bool {
        let Some(mac1) = self.last_mac1 else {
            return false;
        };
        if reply.len() != COOKIE_REPLY_LEN {
            return false;
        }
        let aead = XChaCha20Poly1305::new(Key::from_slice(&self.key));
        let nonce = XNonce::from_slice(&reply[field::NONCE]);
        let mut cookie = [0u8; 16];
        cookie.copy_from_slice(&reply[field::COOKIE]);
        let tag = chacha20poly1305::Tag::from_slice(&reply[field::TAG]);
        if aead
            .decrypt_in_place_detached(nonce, &mac1, &mut cookie, tag)
            .is_err()
        {
            cookie.zeroize();
            return false;
        }
        self.cookie = cookie;
        cookie.zeroize();
        self.cookie_set = Some(now);
        self.last_mac1 = None;
        true
    }

    /// Whether a fresh cookie is held (for tests and status).
    #[allow(dead_code)]
    pub fn has_cookie(&self, now: Instant) -> bool {
        self.cookie_set
            .is_some_and(|t| now.saturating_duration_since(t) < COOKIE_REFRESH_TIME)
    }
}

/// Receiver index of a cookie reply (the sender index of the message it answers).
pub(crate) fn reply_receiver(reply: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&reply[field::RECEIVER]);
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u8);
    impl rand_core::RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            rand_core::impls::next_u32_via_fill(self)
        }
        fn next_u64(&mut self) -> u64 {
            rand_core::impls::next_u64_via_fill(self)
        }
        fn fill_bytes(&mut self, d: &mut [u8]) {
            for b in d {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
        }
        fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(d);
            Ok(())
        }
    }

    /// docs/PROTOCOL.md's cookie test vector, which a peer written from the docs checks
    /// itself against: the secret and nonce are the counter's bytes 01..20 and 21..38.
    #[test]
    fn cookie_reply_matches_the_documented_vector() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(&cookie_key(&[7; 32])),
            "b3b0667561efd4db785bd400e3efbda65838093a56466300d7f65b6e01de3d72"
        );
        let (now, mut rng) = (Instant::now(), Counter(0));
        let mut checker = CookieChecker::new(&[7; 32]);
        let src: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        assert_eq!(hex(&addr_bytes(src).0[..6]), "c0000201ca6c");
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        checker.write_reply(src, 0xdead_beef, &[0x55; 16], now, &mut rng, &mut reply);
        assert_eq!(hex(&reply[..8]), "03000000efbeadde");
        let nonce: Vec<u8> = (0x21..=0x38).collect();
        assert_eq!(&reply[field::NONCE], &nonce[..]);
        assert_eq!(
            hex(&reply[field::COOKIE]),
            "f7a1f10595066828644304ae82f97018"
        );
        assert_eq!(hex(&reply[field::TAG]), "c4582e76c1713cd56cd78c07d07ca57f");
        // The same secret (not yet due for renewal): the cookie and a mac2 under it.
        let cookie = checker.cookie(src, now, &mut rng);
        assert_eq!(hex(&cookie), "81006213eecf70a5cc2c328ce5696fc1");
        assert_eq!(
            hex(&mac16(&cookie, &[0x55; 132])),
            "1f20e92822f73018132ab95fa94ccd44"
        );
    }

    #[test]
    fn reply_round_trip_and_mac2() {
        let now = Instant::now();
        let mut rng = Counter(0);
        let responder_pub = [7u8; 32];
        let mut checker = CookieChecker::new(&responder_pub);
        let mut maker = CookieMaker::new(&responder_pub);
        let src: SocketAddr = "192.0.2.1:51820".parse().unwrap();

        // An initiation-sized message: mac1 at 116, mac2 at 132.
        let mut msg = [0x55u8; 148];
        maker.seal(&mut msg, 116, now);
        assert_eq!(&msg[132..], &[0u8; 16], "no cookie yet: mac2 is zero");
        assert!(!checker.verify_mac2(src, &msg[..132], &msg[132..], now, &mut rng));

        let mut mac1 = [0u8; 16];
        mac1.copy_from_slice(&msg[116..132]);
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        checker.write_reply(src, 0xdead_beef, &mac1, now, &mut rng, &mut reply);
        assert_eq!(reply[0], MSG_COOKIE_REPLY);
        assert_eq!(reply_receiver(&reply), 0xdead_beef);

        let mut tampered = reply;
        tampered[40] ^= 1;
        assert!(!maker.consume_reply(&tampered, now));
        assert!(maker.consume_reply(&reply, now));
        assert!(!maker.consume_reply(&reply, now), "AD is single-use");

        maker.seal(&mut msg, 116, now);
        assert_ne!(&msg[132..], &[0u8; 16]);
        assert!(checker.verify_mac2(src, &msg[..132], &msg[132..], now, &mut rng));
        // Bound to the source address and port.
        let other: SocketAddr = "192.0.2.1:51821".parse().unwrap();
        assert!(!checker.verify_mac2(other, &msg[..132], &msg[132..], now, &mut rng));
        // A cookie older than 120 s is not used; the secret is renewed too.
        let later = now + COOKIE_REFRESH_TIME;
        maker.seal(&mut msg, 116, later);
        assert_eq!(&msg[132..], &[0u8; 16]);
    }

    #[test]
    fn reply_under_wrong_key_is_refused() {
        let now = Instant::now();
        let mut rng = Counter(9);
        let mut checker = CookieChecker::new(&[1u8; 32]);
        let mut maker = CookieMaker::new(&[2u8; 32]);
        let mut msg = [0u8; 92];
        maker.seal(&mut msg, 60, now);
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        let src: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        checker.write_reply(src, 1, &[0; 16], now, &mut rng, &mut reply);
        assert!(!maker.consume_reply(&reply, now));
    }

    #[test]
    fn mapped_v6_binds_like_v4() {
        let a = addr_bytes("10.1.2.3:4".parse().unwrap());
        let b = addr_bytes("[::ffff:10.1.2.3]:4".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a.1, 6);
    }
}
