//! The transport AEAD, without snow: ChaCha20-Poly1305 (ring) over the two keys of the
//! handshake's final split, exactly Noise's and WireGuard's transport format — nonce =
//! 32 zero bits ‖ 64-bit little-endian counter, empty associated data, 16-byte tag after
//! the ciphertext. Sealing and opening work in place in the caller's buffer: no copy
//! beyond the one into the datagram, no dynamic dispatch.
//!
//! Why not snow's `StatelessTransportState`: its ring keys (`LessSafeKey`) are freed
//! without being wiped and live as long as the session (up to REJECT_AFTER_TIME), and each
//! packet went through a `dyn Cipher`. ring's key types do not zeroize either, so each key
//! sits in its own heap box ([`AeadKey`]), never moved after construction, whose bytes are
//! overwritten with zeros (zeroize's volatile writes) when the session is dropped.
//! (RustCrypto's `chacha20poly1305`, which zeroizes its key, sealed+opened 1400-byte
//! packets at about a third of ring's speed on the 2-core reference machine: 0.21 vs
//! 0.65 M/s.)

use std::mem::{ManuallyDrop, MaybeUninit};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroize;

use super::messages::TAG_LEN;

/// One direction's ChaCha20-Poly1305 key, wiped on drop.
pub(crate) struct AeadKey(ManuallyDrop<LessSafeKey>);

impl AeadKey {
    /// Boxed at once so the key bytes are never moved (a move would leave a stale copy).
    fn new(key: &[u8; 32]) -> Box<AeadKey> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte key");
        Box::new(AeadKey(ManuallyDrop::new(LessSafeKey::new(unbound))))
    }
}

impl Drop for AeadKey {
    fn drop(&mut self) {
        let key: *mut LessSafeKey = &mut *self.0;
        // SAFETY: `LessSafeKey` is plain data (ring gives it no `Drop` and no heap parts),
        // so there is nothing to drop first; viewed as `MaybeUninit` (no validity
        // requirement, no `Drop`) its bytes may be zeroed, and it is never read again.
        unsafe { zeroize::zeroize_flat_type(key.cast::<MaybeUninit<LessSafeKey>>()) }
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The two transport keys of one session.
pub(crate) struct TransportKeys {
    send: Box<AeadKey>,
    recv: Box<AeadKey>,
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
        let tag = self
            .send
            .0
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), in_out)
            .expect("length checked by the caller (below ring's 256 GiB limit)");
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_ref());
        t
    }

    /// Verify and decrypt `in_out` (ciphertext ‖ tag) in place; returns the plaintext
    /// length. On failure the buffer holds garbage and nothing is returned.
    pub fn open(&self, counter: u64, in_out: &mut [u8]) -> Result<usize, ()> {
        self.recv
            .0
            .open_in_place(nonce(counter), Aad::empty(), in_out)
            .map(|p| p.len())
            .map_err(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boxed key's bytes are all zero after `Drop::drop` (read back through the box's
    /// allocation before it is freed).
    #[test]
    fn key_bytes_are_wiped_on_drop() {
        let mut k = AeadKey::new(&[0xa7; 32]);
        let p = (&mut *k.0 as *mut LessSafeKey).cast::<u8>();
        let len = core::mem::size_of::<LessSafeKey>();
        // SAFETY: reads the bytes of a live, exclusively owned allocation.
        let before = unsafe { std::slice::from_raw_parts(p, len) }.to_vec();
        assert!(
            before.windows(4).any(|w| w == [0xa7; 4]),
            "key bytes present"
        );
        // Run only the Drop impl, keeping the allocation alive to inspect it.
        // SAFETY: `k` is not used as an `AeadKey` after this; ManuallyDrop frees the box
        // without dropping again.
        let mut k = ManuallyDrop::new(k);
        unsafe { core::ptr::drop_in_place::<AeadKey>(&mut **k) };
        let after = unsafe { std::slice::from_raw_parts(p, len) };
        assert!(after.iter().all(|&b| b == 0), "{after:02x?}");
        // Free the allocation without running Drop again.
        let raw = Box::into_raw(ManuallyDrop::into_inner(k));
        unsafe { std::alloc::dealloc(raw.cast(), std::alloc::Layout::new::<AeadKey>()) };
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
