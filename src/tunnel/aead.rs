//! The transport AEAD, without snow: ChaCha20-Poly1305 (ring) over the two keys of the
//! handshake's final split, exactly Noise's and WireGuard's transport format — nonce =
//! 32 zero bits ‖ 64-bit little-endian counter, empty associated data, 16-byte tag after
//! the ciphertext. Sealing and opening work in place in the caller's buffer: no copy
//! beyond the one into the datagram, no dynamic dispatch.
//!
//! Why not snow's `StatelessTransportState`: its ring keys (`LessSafeKey`) are freed
//! without being wiped and live as long as the session (up to REJECT_AFTER_TIME), and each
//! packet went through a `dyn Cipher`. ring's key types do not zeroize either, so each key
//! sits in its own heap box, never moved after construction, whose bytes are overwritten
//! with zeros when the session is dropped ([`AeadKey`], `wiped.rs`). The same keys serve
//! snow's handshake phase ([`HandshakeCipher`]).
//! (RustCrypto's `chacha20poly1305`, which zeroizes its key, sealed+opened 1400-byte
//! packets at about a third of ring's speed on the 2-core reference machine: 0.21 vs
//! 0.65 M/s.)

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroize;

use super::messages::TAG_LEN;
use super::wiped::Wiped;

/// One ChaCha20-Poly1305 key, wiped on drop.
pub(crate) struct AeadKey(Wiped<LessSafeKey>);

impl AeadKey {
    pub fn new(key: &[u8; 32]) -> AeadKey {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key");
        AeadKey(Wiped::new(LessSafeKey::new(unbound)))
    }

    /// Encrypt `in_out` in place; returns the tag.
    pub fn seal(&self, counter: u64, ad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce(counter), Aad::from(ad), in_out)
            .expect("length checked by the caller (below ring's 256 GiB limit)");
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_ref());
        t
    }

    /// Verify and decrypt `in_out` (ciphertext ‖ tag) in place; returns the plaintext
    /// length. On failure the buffer holds garbage.
    pub fn open(&self, counter: u64, ad: &[u8], in_out: &mut [u8]) -> Result<usize, ()> {
        self.0
            .open_in_place(nonce(counter), Aad::from(ad), in_out)
            .map(|p| p.len())
            .map_err(|_| ())
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The two transport keys of one session.
pub(crate) struct TransportKeys {
    send: AeadKey,
    recv: AeadKey,
}

impl TransportKeys {
    /// From the handshake's split `(k1, k2)` (Noise `Split()`: k1 encrypts initiator →
    /// responder, k2 the other way). Wipes the arrays it was given.
    pub fn from_split(split: &mut ([u8; 32], [u8; 32]), initiator: bool) -> TransportKeys {
        let (k1, k2) = (AeadKey::new(&split.0), AeadKey::new(&split.1));
        split.0.zeroize();
        split.1.zeroize();
        let (send, recv) = if initiator { (k1, k2) } else { (k2, k1) };
        TransportKeys { send, recv }
    }

    /// Encrypt `in_out` in place with `counter`; returns the tag.
    pub fn seal(&self, counter: u64, in_out: &mut [u8]) -> [u8; TAG_LEN] {
        self.send.seal(counter, &[], in_out)
    }

    /// Verify and decrypt `in_out` (ciphertext ‖ tag) in place; returns the plaintext
    /// length.
    pub fn open(&self, counter: u64, in_out: &mut [u8]) -> Result<usize, ()> {
        self.recv.open(counter, &[], in_out)
    }
}

/// ChaCha20-Poly1305 for snow's handshake phase (plugged in by `dh::Resolver`), so that
/// the keys that encrypt the static key and timestamp are wiped too.
#[derive(Default)]
pub(crate) struct HandshakeCipher(Option<AeadKey>);

/// Largest handshake ciphertext opened into a shorter buffer (an encrypted static key).
const MAX_HANDSHAKE_CT: usize = 64 + TAG_LEN;

impl snow::types::Cipher for HandshakeCipher {
    fn name(&self) -> &'static str {
        "ChaChaPoly"
    }

    fn set(&mut self, key: &[u8; 32]) {
        self.0 = Some(AeadKey::new(key));
    }

    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let key = self
            .0
            .as_ref()
            .expect("snow sets the key before encrypting");
        let n = plaintext.len();
        out[..n].copy_from_slice(plaintext);
        let tag = key.seal(nonce, authtext, &mut out[..n]);
        out[n..n + TAG_LEN].copy_from_slice(&tag);
        n + TAG_LEN
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let key = self.0.as_ref().ok_or(snow::Error::Decrypt)?;
        if out.len() >= ciphertext.len() {
            let in_out = &mut out[..ciphertext.len()];
            in_out.copy_from_slice(ciphertext);
            return key
                .open(nonce, authtext, in_out)
                .map_err(|()| snow::Error::Decrypt);
        }
        // snow opens an encrypted static key (48 bytes) into its 32-byte slot.
        if ciphertext.len() > MAX_HANDSHAKE_CT {
            return Err(snow::Error::Decrypt);
        }
        let mut tmp = [0u8; MAX_HANDSHAKE_CT];
        let in_out = &mut tmp[..ciphertext.len()];
        in_out.copy_from_slice(ciphertext);
        let r = key.open(nonce, authtext, in_out);
        let r = match r {
            Ok(n) if n <= out.len() => {
                out[..n].copy_from_slice(&in_out[..n]);
                Ok(n)
            }
            _ => Err(snow::Error::Decrypt),
        };
        tmp.zeroize();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bytes_are_wiped_on_drop() {
        let k = AeadKey::new(&[0xa7; 32]);
        let after = crate::tunnel::wiped::tests::bytes_after_drop(k.0);
        assert!(after.iter().all(|&b| b == 0), "{after:02x?}");
    }

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        let mut split = ([1u8; 32], [2u8; 32]);
        let a = TransportKeys::from_split(&mut split.clone(), true);
        let b = TransportKeys::from_split(&mut split, false);
        assert_eq!(split, ([0; 32], [0; 32]), "split arrays wiped");
        let mut buf = *b"hello, world....________________";
        let tag = a.seal(9, &mut buf[..16]);
        buf[16..].copy_from_slice(&tag);
        let mut bad = buf;
        bad[0] ^= 1;
        assert!(b.open(9, &mut bad).is_err());
        assert!(b.open(8, &mut buf.clone()).is_err());
        assert!(
            a.open(9, &mut buf.clone()).is_err(),
            "directions use different keys"
        );
        assert_eq!(b.open(9, &mut buf), Ok(16));
        assert_eq!(&buf[..16], b"hello, world....");
    }
}
