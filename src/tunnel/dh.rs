//! Our own X25519 for snow, plugged in through a `CryptoResolver`, for two reasons:
//!
//! - **Low-order points.** A peer's static or ephemeral key of small order makes the
//!   Diffie-Hellman result all-zero whatever our secret is, so the handshake would not
//!   depend on our key at all. WireGuard rejects such results; snow 0.10 does not, so
//!   this `dh` returns `Error::Dh` for an all-zero result (checked in constant time) and
//!   the handshake fails (`low_order_key`).
//! - **Wiping.** snow's own X25519 keeps the private key in a plain array that is freed
//!   without being wiped. Ours is `Zeroizing`, so snow's copies of our static key and of
//!   every ephemeral key are erased when the handshake state is dropped.
//!
//! The handshake's ChaChaPoly is ours too (`aead::HandshakeCipher`, ring inside, keys
//! wiped on drop); hashes still come from snow's resolvers (RustCrypto BLAKE2s). The
//! handshake state itself is wiped by `handshake.rs` (see docs/SECURITY.md).

use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// X25519 with a wiped private key and an all-zero-result check.
#[derive(Default)]
struct X25519 {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl X25519 {
    fn derive_public(&mut self) {
        self.public = x25519_dalek::x25519(*self.private, x25519_dalek::X25519_BASEPOINT_BYTES);
    }
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        32
    }
    fn priv_len(&self) -> usize {
        32
    }
    fn set(&mut self, privkey: &[u8]) {
        self.private.copy_from_slice(&privkey[..32]);
        self.derive_public();
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        rng.try_fill_bytes(&mut self.private[..])?;
        self.derive_public();
        Ok(())
    }
    fn pubkey(&self) -> &[u8] {
        &self.public
    }
    fn privkey(&self) -> &[u8] {
        &self.private[..]
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let mut u = [0u8; 32];
        u.copy_from_slice(pubkey.get(..32).ok_or(snow::Error::Dh)?);
        let mut shared = x25519_dalek::x25519(*self.private, u);
        let zero = bool::from(shared.ct_eq(&[0u8; 32]));
        if !zero {
            out[..32].copy_from_slice(&shared);
        }
        shared.zeroize();
        if zero {
            return Err(snow::Error::Dh);
        }
        Ok(())
    }
}

/// snow resolver: our X25519, our wiping ChaChaPoly (ring inside, `aead.rs`), RustCrypto
/// for BLAKE2s and the RNG.
pub(crate) struct Resolver;

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        DefaultResolver.resolve_rng()
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::<X25519>::default()),
            _ => None,
        }
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        RingResolver
            .resolve_hash(choice)
            .or_else(|| DefaultResolver.resolve_hash(choice))
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        match choice {
            CipherChoice::ChaChaPoly => Some(Box::<super::aead::HandshakeCipher>::default()),
            _ => RingResolver
                .resolve_cipher(choice)
                .or_else(|| DefaultResolver.resolve_cipher(choice)),
        }
    }
}

/// A snow builder using [`Resolver`].
pub(crate) fn builder(params: &snow::params::NoiseParams) -> snow::Builder<'static> {
    snow::Builder::with_resolver(params.clone(), Box::new(Resolver))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Curve25519 points of small order (canonical encodings, plus p and p+1), whose DH
    /// result is zero for every private key.
    fn low_order_points() -> Vec<[u8; 32]> {
        let mut v = Vec::new();
        v.push([0u8; 32]);
        let mut one = [0u8; 32];
        one[0] = 1;
        v.push(one);
        // p - 1, p, p + 1 with p = 2^255 - 19.
        for low in [0xec, 0xed, 0xee] {
            let mut x = [0xffu8; 32];
            x[0] = low;
            x[31] = 0x7f;
            v.push(x);
        }
        // The two points of order 8.
        v.push([
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ]);
        v.push([
            0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83,
            0xef, 0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd,
            0xd0, 0x9f, 0x11, 0x57,
        ]);
        v
    }

    #[test]
    fn rejects_every_low_order_point() {
        let mut dh = X25519::default();
        dh.set(&[0x42; 32]);
        let mut out = [0u8; 32];
        for p in low_order_points() {
            assert_eq!(
                x25519_dalek::x25519([0x42; 32], p),
                [0u8; 32],
                "test vector is low order"
            );
            assert!(dh.dh(&p, &mut out).is_err(), "{p:02x?}");
        }
    }

    #[test]
    fn agrees_with_x25519_dalek_on_good_points() {
        let mut a = X25519::default();
        a.set(&[1; 32]);
        let mut b = X25519::default();
        b.set(&[2; 32]);
        let (mut ab, mut ba) = ([0u8; 32], [0u8; 32]);
        a.dh(b.pubkey(), &mut ab).unwrap();
        b.dh(a.pubkey(), &mut ba).unwrap();
        assert_eq!(ab, ba);
        assert_eq!(ab, x25519_dalek::x25519([1; 32], b.public));
    }
}
