//! mac1: a keyed BLAKE2s-128 over a handshake message, keyed by the *receiver's* static
//! public key. It proves the sender knows whom it is talking to, so scanners and
//! hosts without our public key get no reply and cost us no Diffie-Hellman.
//!
//! mac1 = BLAKE2s(key = BLAKE2s-256("mac1----" || receiver_static_public), out = 16, msg[..mac1])

use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};
use subtle::ConstantTimeEq;

const LABEL_MAC1: &[u8] = b"mac1----";

/// Length of mac1 (and mac2) on the wire.
pub const MAC_LEN: usize = 16;

/// The mac1 key for one receiver's static public key.
#[derive(Clone)]
pub(crate) struct Mac1Key([u8; 32]);

impl Mac1Key {
    pub fn new(receiver_public: &[u8; 32]) -> Self {
        let mut h = Blake2s256::new();
        h.update(LABEL_MAC1);
        h.update(receiver_public);
        Mac1Key(h.finalize().into())
    }

    pub fn compute(&self, covered: &[u8]) -> [u8; MAC_LEN] {
        let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(&self.0)
            .expect("32-byte key is valid for BLAKE2s");
        m.update(covered);
        m.finalize().into_bytes().into()
    }

    /// Constant-time check so the comparison leaks nothing about the expected MAC.
    pub fn verify(&self, covered: &[u8], mac: &[u8]) -> bool {
        self.compute(covered).ct_eq(mac).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answer computed independently with Python's hashlib:
    //   key = blake2s(b"mac1----" + bytes(range(32))).digest()
    //   blake2s(bytes(i*7 % 256 for i in range(116)), key=key, digest_size=16)
    #[test]
    fn known_answer() {
        let public: [u8; 32] = core::array::from_fn(|i| i as u8);
        let msg: Vec<u8> = (0..116u32).map(|i| (i * 7 % 256) as u8).collect();
        let key = Mac1Key::new(&public);
        assert_eq!(
            hex(&key.0),
            "4fb2527ac956001553dc1ad9b55171b7d9daa3de1cdbcd71451830170c7e6cac"
        );
        assert_eq!(hex(&key.compute(&msg)), "03a55c329de13c8e850faad2618d1d34");
        assert!(key.verify(&msg, &key.compute(&msg)));
        let mut bad = key.compute(&msg);
        bad[15] ^= 1;
        assert!(!key.verify(&msg, &bad));
        assert!(!key.verify(&msg, &bad[..15]));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
