//! The Noise IKpsk2 handshake (via snow) framed as WireGuard initiation/response messages.
//!
//! Pattern `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`, prologue `"pfsync-gw v1"`:
//! ```text
//!   <- s
//!   ...
//!   -> e, es, s, ss          payload: TAI64N timestamp (12 bytes)
//!   <- e, ee, se, psk        payload: empty
//! ```
//! The responder learns the initiator's static key from message 1, picks that peer's PSK
//! and only then writes message 2 (psk2 is mixed in there), so one responder state serves
//! all peers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use snow::params::NoiseParams;
use snow::HandshakeState;
use x25519_dalek::{PublicKey, StaticSecret};

use super::aead::TransportKeys;
use super::errors::DropReason;
use super::mac::Mac1Key;
use super::messages::{
    self, field, Initiation, Response, INITIATION_LEN, NOISE_INITIATION_LEN, NOISE_RESPONSE_LEN,
    RESPONSE_LEN, TIMESTAMP_LEN,
};
use super::wiped::Wiped;

/// Noise protocol name.
pub const NOISE_PATTERN: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Noise prologue; binds both sides to this protocol version.
pub const PROLOGUE: &[u8] = b"pfsync-gw v1";
/// PSK used for peers configured without one, so the pattern is always IKpsk2.
pub const ZERO_PSK: [u8; 32] = [0; 32];
/// Position of the PSK token in the pattern.
const PSK_LOCATION: usize = 2;

/// Erasure the optimiser may not elide (zeroize's volatile writes and fence).
pub(crate) fn wipe(buf: &mut [u8]) {
    zeroize::Zeroize::zeroize(buf);
}

/// This node's static X25519 key pair. The private half is erased on drop (x25519-dalek's
/// `StaticSecret` is `ZeroizeOnDrop`).
#[derive(Clone)]
pub struct Identity {
    secret: StaticSecret,
    public: [u8; 32],
}

impl Identity {
    pub fn from_private(private: [u8; 32]) -> Identity {
        let secret = StaticSecret::from(private);
        let public = PublicKey::from(&secret).to_bytes();
        Identity { secret, public }
    }

    /// A fresh random identity.
    pub fn generate(rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng)) -> Identity {
        let mut private = [0u8; 32];
        rng.fill_bytes(&mut private);
        let id = Identity::from_private(private);
        wipe(&mut private);
        id
    }

    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// Run `f` with the private key bytes, erasing the temporary copy afterwards.
    fn with_private<R>(&self, f: impl FnOnce(&[u8; 32]) -> R) -> R {
        let mut private = self.secret.to_bytes();
        let r = f(&private);
        wipe(&mut private);
        r
    }
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print the private key.
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

/// 12-byte TAI64N timestamp, compared as a big-endian number (byte order = time order).
pub(crate) type Tai64n = [u8; TIMESTAMP_LEN];

/// TAI64 label for the Unix epoch (2^62 + 10 s TAI−UTC, as WireGuard).
const TAI64_BASE: u64 = 0x4000_0000_0000_000a;
/// Nanoseconds are rounded down to a multiple of 2^24 ns (~16.8 ms), as WireGuard does,
/// so the initiation does not reveal our precise clock.
const WHITENER_MASK: u32 = (1 << 24) - 1;

pub(crate) fn tai64n(wall: SystemTime) -> Tai64n {
    let d = wall.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let mut out = [0u8; TIMESTAMP_LEN];
    out[..8].copy_from_slice(&(TAI64_BASE + d.as_secs()).to_be_bytes());
    out[8..].copy_from_slice(&(d.subsec_nanos() & !WHITENER_MASK).to_be_bytes());
    out
}

/// Smallest timestamp strictly greater than `t`.
pub(crate) fn tai64n_next(t: &Tai64n) -> Tai64n {
    let mut secs = u64::from_be_bytes(t[..8].try_into().expect("8 bytes"));
    let mut nanos = u32::from_be_bytes(t[8..].try_into().expect("4 bytes")) + 1;
    if nanos >= 1_000_000_000 {
        nanos = 0;
        secs += 1;
    }
    let mut out = [0u8; TIMESTAMP_LEN];
    out[..8].copy_from_slice(&secs.to_be_bytes());
    out[8..].copy_from_slice(&nanos.to_be_bytes());
    out
}

/// snow reports an all-zero DH result (low-order public key, see `dh.rs`) as `Error::Dh`.
fn dh_error(e: snow::Error) -> DropReason {
    match e {
        snow::Error::Dh => DropReason::LowOrderKey,
        _ => DropReason::HandshakeFailed,
    }
}

pub(crate) fn noise_params() -> NoiseParams {
    NOISE_PATTERN.parse().expect("valid noise pattern")
}

/// snow's handshake state, boxed and wiped when dropped: snow frees it unwiped, and it
/// holds inline the chaining key (from which the transport keys derive), the handshake
/// hash, the PSK slot and the peer's public keys.
type Noise = Wiped<HandshakeState>;

/// Our side of a handshake we initiated, waiting for the response.
pub(crate) struct InitiatorHandshake {
    state: Noise,
    pub local_index: u32,
}

/// Build an initiation to `remote`. Returns the waiting state and the datagram.
pub(crate) fn create_initiation(
    params: &NoiseParams,
    identity: &Identity,
    remote: &[u8; 32],
    remote_mac1: &Mac1Key,
    psk: &[u8; 32],
    local_index: u32,
    timestamp: &Tai64n,
) -> Result<(InitiatorHandshake, [u8; INITIATION_LEN]), snow::Error> {
    let mut state = Wiped::new(identity.with_private(|private| {
        super::dh::builder(params)
            .local_private_key(private)?
            .remote_public_key(remote)?
            .psk(PSK_LOCATION as u8, psk)?
            .prologue(PROLOGUE)?
            .build_initiator()
    })?);
    let mut noise = [0u8; NOISE_INITIATION_LEN];
    let n = state.write_message(timestamp, &mut noise)?;
    debug_assert_eq!(n, NOISE_INITIATION_LEN);
    let mut msg = messages::emit_initiation(local_index, &noise);
    let mac = remote_mac1.compute(&msg[..field::INIT_MAC1.start]);
    msg[field::INIT_MAC1].copy_from_slice(&mac);
    Ok((InitiatorHandshake { state, local_index }, msg))
}

/// Responder state after a valid message 1; `remote` and `timestamp` are authenticated.
pub(crate) struct ConsumedInitiation {
    state: Noise,
    pub remote: [u8; 32],
    pub timestamp: Tai64n,
    pub remote_index: u32,
}

/// Process message 1 (mac1 must already be checked). Does not know about peers yet.
pub(crate) fn consume_initiation(
    params: &NoiseParams,
    identity: &Identity,
    msg: &Initiation<'_>,
) -> Result<ConsumedInitiation, DropReason> {
    let mut state = Wiped::new(
        identity
            .with_private(|private| {
                super::dh::builder(params)
                    .local_private_key(private)?
                    .prologue(PROLOGUE)?
                    .build_responder()
            })
            .map_err(|_| DropReason::HandshakeFailed)?,
    );
    let mut payload = [0u8; NOISE_INITIATION_LEN];
    let n = state
        .read_message(msg.noise(), &mut payload)
        .map_err(dh_error)?;
    if n != TIMESTAMP_LEN {
        return Err(DropReason::HandshakeFailed);
    }
    let remote: [u8; 32] = state
        .get_remote_static()
        .and_then(|s| s.try_into().ok())
        .ok_or(DropReason::HandshakeFailed)?;
    let mut timestamp = [0u8; TIMESTAMP_LEN];
    timestamp.copy_from_slice(&payload[..TIMESTAMP_LEN]);
    Ok(ConsumedInitiation {
        state,
        remote,
        timestamp,
        remote_index: msg.sender(),
    })
}

/// Write message 2 for a consumed initiation; the handshake is then complete on our side.
pub(crate) fn create_response(
    consumed: ConsumedInitiation,
    psk: &[u8; 32],
    remote_mac1: &Mac1Key,
    local_index: u32,
) -> Result<(TransportKeys, [u8; RESPONSE_LEN]), snow::Error> {
    let mut state = consumed.state;
    state.set_psk(PSK_LOCATION, psk)?;
    let mut noise = [0u8; NOISE_RESPONSE_LEN];
    let n = state.write_message(&[], &mut noise)?;
    debug_assert_eq!(n, NOISE_RESPONSE_LEN);
    let mut msg = messages::emit_response(local_index, consumed.remote_index, &noise);
    let mac = remote_mac1.compute(&msg[..field::RESP_MAC1.start]);
    msg[field::RESP_MAC1].copy_from_slice(&mac);
    Ok((transport_keys(state, false)?, msg))
}

/// The transport keys of a finished handshake (Noise `Split()`), for our own AEAD
/// (`aead.rs`). snow's state, with its chaining key and handshake hash, is wiped and
/// dropped here.
fn transport_keys(mut state: Noise, initiator: bool) -> Result<TransportKeys, snow::Error> {
    if !state.is_handshake_finished() {
        return Err(snow::Error::State(
            snow::error::StateProblem::HandshakeNotFinished,
        ));
    }
    Ok(TransportKeys::from_split(
        &mut state.dangerously_get_raw_split(),
        initiator,
    ))
}

impl InitiatorHandshake {
    /// Process message 2 (mac1 already checked). On failure the state is unchanged (snow
    /// restores it), so a forged response cannot abort the genuine handshake.
    pub fn consume_response(&mut self, msg: &Response<'_>) -> Result<(), DropReason> {
        let mut payload = [0u8; NOISE_RESPONSE_LEN];
        match self.state.read_message(msg.noise(), &mut payload) {
            Ok(0) => Ok(()),
            Err(e @ snow::Error::Dh) => Err(dh_error(e)),
            // A 48-byte message 2 carries an empty payload; anything else is malformed.
            Ok(_) | Err(_) => Err(DropReason::HandshakeFailed),
        }
    }

    /// Transport keys after a successful `consume_response`.
    pub fn into_transport(self) -> Result<TransportKeys, DropReason> {
        transport_keys(self.state, true).map_err(|_| DropReason::HandshakeFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::messages::Message;

    #[test]
    fn tai64n_orders_and_whitens() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let a = tai64n(t);
        let b = tai64n(t + Duration::from_millis(1));
        let c = tai64n(t + Duration::from_millis(20));
        assert!(a <= b && b < c);
        assert_eq!(
            u32::from_be_bytes(a[8..].try_into().unwrap()) & WHITENER_MASK,
            0
        );
        assert_eq!(
            u64::from_be_bytes(a[..8].try_into().unwrap()),
            TAI64_BASE + 1_700_000_000
        );
        assert!(tai64n_next(&a) > a);
        let mut edge = a;
        edge[8..].copy_from_slice(&999_999_999u32.to_be_bytes());
        assert!(tai64n_next(&edge) > edge);
    }

    #[test]
    fn handshake_completes_and_keys_agree() {
        let params = noise_params();
        let a = Identity::from_private([1; 32]);
        let b = Identity::from_private([2; 32]);
        let psk = [9u8; 32];
        let ts = tai64n(SystemTime::now());
        let (hs, init) = create_initiation(
            &params,
            &a,
            &b.public(),
            &Mac1Key::new(&b.public()),
            &psk,
            11,
            &ts,
        )
        .unwrap();
        let Ok(Message::Initiation(i)) = Message::parse(&init) else {
            panic!()
        };
        assert!(Mac1Key::new(&b.public()).verify(i.mac1_input(), i.mac1()));
        let consumed = consume_initiation(&params, &b, &i).unwrap();
        assert_eq!(consumed.remote, a.public());
        assert_eq!(consumed.timestamp, ts);
        assert_eq!(consumed.remote_index, 11);
        let (tb, resp) = create_response(consumed, &psk, &Mac1Key::new(&a.public()), 22).unwrap();
        let Ok(Message::Response(r)) = Message::parse(&resp) else {
            panic!()
        };
        assert_eq!((r.sender(), r.receiver()), (22, 11));
        let mut hs = hs;
        hs.consume_response(&r).unwrap();
        let ta = hs.into_transport().unwrap();
        let mut buf = *b"hello\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let tag = ta.seal(7, &mut buf[..5]);
        buf[5..].copy_from_slice(&tag);
        assert_eq!(tb.open(7, &mut buf), Ok(5));
        assert_eq!(&buf[..5], b"hello");
        let tag = tb.seal(8, &mut buf[..5]);
        buf[5..].copy_from_slice(&tag);
        assert_eq!(ta.open(8, &mut buf), Ok(5));
    }

    /// Both ends of one IKpsk2 handshake run by snow alone with `resolver`'s primitives,
    /// finished, before the split.
    fn snow_states(
        resolver: impl Fn() -> Box<dyn snow::resolvers::CryptoResolver + Send>,
    ) -> (HandshakeState, HandshakeState) {
        let b_pub = x25519_dalek::x25519([6; 32], x25519_dalek::X25519_BASEPOINT_BYTES);
        let build = |private: &'static [u8; 32]| {
            snow::Builder::with_resolver(noise_params(), resolver())
                .local_private_key(private)
                .unwrap()
                .psk(PSK_LOCATION as u8, &[3; 32])
                .unwrap()
                .prologue(PROLOGUE)
                .unwrap()
        };
        let mut i = build(&[5; 32])
            .remote_public_key(&b_pub)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut r = build(&[6; 32]).build_responder().unwrap();
        let (mut m, mut p) = ([0u8; 256], [0u8; 256]);
        let n = i.write_message(&[0; TIMESTAMP_LEN], &mut m).unwrap();
        r.read_message(&m[..n], &mut p).unwrap();
        let n = r.write_message(&[], &mut m).unwrap();
        i.read_message(&m[..n], &mut p).unwrap();
        (i, r)
    }

    /// `ours` and `theirs` (snow) are the two ends of one direction or the same end:
    /// sealing with one and opening with the other works and the bytes are identical.
    fn assert_same_wire(
        ours: &TransportKeys,
        snow_self: &snow::StatelessTransportState,
        snow_peer: &snow::StatelessTransportState,
    ) {
        let payload: Vec<u8> = (0..1400u32).map(|i| (i * 7) as u8).collect();
        let counters = [
            (0, 0u64),
            (1, 1),
            (64, 1 << 32 | 5),
            (1400, u64::MAX - (1 << 13) - 1),
        ];
        for (len, counter) in counters {
            let mut mine = payload[..len].to_vec();
            let tag = ours.seal(counter, &mut mine);
            mine.extend_from_slice(&tag);
            let mut theirs = vec![0u8; len + 16];
            let n = snow_self
                .write_message(counter, &payload[..len], &mut theirs)
                .unwrap();
            assert_eq!(n, len + 16);
            assert_eq!(mine, theirs, "len {len} counter {counter}");
            let mut plain = vec![0u8; len + 16];
            let n = snow_peer.read_message(counter, &mine, &mut plain).unwrap();
            assert_eq!(plain[..n], payload[..len]);
            // The peer's snow seals; we open.
            let mut wire = vec![0u8; len + 16];
            snow_peer
                .write_message(counter, &payload[..len], &mut wire)
                .unwrap();
            assert_eq!(ours.open(counter, &mut wire), Ok(len));
            assert_eq!(wire[..len], payload[..len]);
        }
    }

    /// Our transport AEAD is byte-for-byte snow's (Noise/WireGuard: nonce = 4 zero bytes ‖
    /// LE64 counter, empty AD), against snow's ring cipher and its RustCrypto cipher:
    /// snow seals and we open, we seal and snow opens, identical ciphertexts, both
    /// directions, empty to full payloads, counters up to the reject limit.
    #[test]
    fn transport_aead_is_byte_identical_to_snow() {
        let resolvers: [fn() -> Box<dyn snow::resolvers::CryptoResolver + Send>; 2] = [
            || Box::new(snow::resolvers::RingResolver),
            || Box::new(snow::resolvers::DefaultResolver),
        ];
        for resolver in resolvers {
            let fallback = move || -> Box<dyn snow::resolvers::CryptoResolver + Send> {
                Box::new(snow::resolvers::FallbackResolver::new(
                    resolver(),
                    Box::new(snow::resolvers::DefaultResolver),
                ))
            };
            let (mut si, mut sr) = snow_states(fallback);
            let ours_i = TransportKeys::from_split(&mut si.dangerously_get_raw_split(), true);
            let ours_r = TransportKeys::from_split(&mut sr.dangerously_get_raw_split(), false);
            let snow_i = si.into_stateless_transport_mode().unwrap();
            let snow_r = sr.into_stateless_transport_mode().unwrap();
            assert_same_wire(&ours_i, &snow_i, &snow_r);
            assert_same_wire(&ours_r, &snow_r, &snow_i);
        }
    }

    /// Our handshake (our X25519 and handshake cipher) against a responder that is snow
    /// with its own primitives: messages and transport keys agree.
    #[test]
    fn handshake_interoperates_with_plain_snow() {
        let a = Identity::from_private([5; 32]);
        let b = Identity::from_private([6; 32]);
        let ts = tai64n(SystemTime::now());
        let (mut hs, init) = create_initiation(
            &noise_params(),
            &a,
            &b.public(),
            &Mac1Key::new(&b.public()),
            &[3; 32],
            1,
            &ts,
        )
        .unwrap();
        let Ok(Message::Initiation(i)) = Message::parse(&init) else {
            panic!()
        };
        let mut r = snow::Builder::new(noise_params())
            .local_private_key(&[6; 32])
            .unwrap()
            .psk(PSK_LOCATION as u8, &[3; 32])
            .unwrap()
            .prologue(PROLOGUE)
            .unwrap()
            .build_responder()
            .unwrap();
        let mut p = [0u8; 128];
        let n = r.read_message(i.noise(), &mut p).unwrap();
        assert_eq!(p[..n], ts);
        let mut noise = [0u8; NOISE_RESPONSE_LEN];
        r.write_message(&[], &mut noise).unwrap();
        let resp = messages::emit_response(2, 1, &noise);
        let Ok(Message::Response(m)) = Message::parse(&resp) else {
            panic!()
        };
        hs.consume_response(&m).unwrap();
        let ours = hs.into_transport().unwrap();
        let theirs = r.into_stateless_transport_mode().unwrap();
        let mut buf = *b"0123456789abcdef________________";
        let tag = ours.seal(3, &mut buf[..16]);
        buf[16..].copy_from_slice(&tag);
        let mut plain = [0u8; 32];
        assert_eq!(theirs.read_message(3, &buf, &mut plain).unwrap(), 16);
        assert_eq!(&plain[..16], b"0123456789abcdef");
    }

    /// snow's handshake state, chaining key and PSK slot included, is zero after drop.
    #[test]
    fn handshake_state_is_wiped_on_drop() {
        let a = Identity::from_private([5; 32]);
        let b = Identity::from_private([6; 32]);
        let (hs, _) = create_initiation(
            &noise_params(),
            &a,
            &b.public(),
            &Mac1Key::new(&b.public()),
            &[0x3c; 32],
            1,
            &tai64n(SystemTime::now()),
        )
        .unwrap();
        assert!(!hs.state.is_handshake_finished());
        let after = crate::tunnel::wiped::tests::bytes_after_drop(hs.state);
        assert!(after.len() > 300, "whole state, {} bytes", after.len());
        assert!(after.iter().all(|&x| x == 0));
    }

    #[test]
    fn psk_mismatch_fails_response() {
        let params = noise_params();
        let a = Identity::from_private([1; 32]);
        let b = Identity::from_private([2; 32]);
        let ts = tai64n(SystemTime::now());
        let mac_b = Mac1Key::new(&b.public());
        let (hs, init) =
            create_initiation(&params, &a, &b.public(), &mac_b, &[1; 32], 1, &ts).unwrap();
        let Ok(Message::Initiation(i)) = Message::parse(&init) else {
            panic!()
        };
        let consumed = consume_initiation(&params, &b, &i).unwrap();
        let (_, resp) =
            create_response(consumed, &ZERO_PSK, &Mac1Key::new(&a.public()), 2).unwrap();
        let Ok(Message::Response(r)) = Message::parse(&resp) else {
            panic!()
        };
        let mut hs = hs;
        assert!(hs.consume_response(&r).is_err());
    }
}
