//! One transport session: the keys from one handshake, our send counter and the replay
//! window for the peer's counters. Encrypt and decrypt work in caller buffers (no allocation).

use std::time::Instant;

use super::aead::TransportKeys;
use super::errors::DropReason;
use super::messages::{
    self, Transport, MAX_PAYLOAD, TAG_LEN, TRANSPORT_HEADER_LEN, TRANSPORT_OVERHEAD,
};
use super::replay::ReplayWindow;
use super::timers::{
    REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME,
    REKEY_ON_RECEIVE_AGE,
};

pub(crate) struct Session {
    /// Index the peer puts in messages to us (our key into the index table).
    pub local_index: u32,
    /// Index we put in messages to the peer.
    pub remote_index: u32,
    keys: TransportKeys,
    pub created: Instant,
    /// `created` + REJECT_AFTER_TIME, + REKEY_AFTER_TIME, + REKEY_ON_RECEIVE_AGE: computed
    /// once, so the per-packet checks compare instants instead of subtracting them.
    reject_at: Instant,
    rekey_at: Instant,
    rekey_on_receive_at: Instant,
    /// Did we initiate the handshake? Only the initiator rekeys on age.
    pub initiator: bool,
    /// Next counter to send.
    send_counter: u64,
    replay: ReplayWindow,
}

impl Session {
    pub fn new(
        local_index: u32,
        remote_index: u32,
        keys: TransportKeys,
        created: Instant,
        initiator: bool,
    ) -> Session {
        Session {
            local_index,
            remote_index,
            keys,
            created,
            reject_at: created + REJECT_AFTER_TIME,
            rekey_at: created + REKEY_AFTER_TIME,
            rekey_on_receive_at: created + REKEY_ON_RECEIVE_AGE,
            initiator,
            send_counter: 0,
            replay: ReplayWindow::default(),
        }
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.reject_at
    }

    pub fn can_send(&self, now: Instant) -> bool {
        !self.expired(now) && self.send_counter < REJECT_AFTER_MESSAGES
    }

    /// Should sending on this session trigger a new handshake (WireGuard `keepKeyFreshSending`)?
    pub fn wants_rekey_on_send(&self, now: Instant) -> bool {
        self.send_counter >= REKEY_AFTER_MESSAGES || (self.initiator && now >= self.rekey_at)
    }

    /// Should receiving on this session renew it (WireGuard `keepKeyFreshReceiving`)? Only
    /// the initiator's, when it is about to expire.
    pub fn wants_rekey_on_receive(&self, now: Instant) -> bool {
        self.initiator && now >= self.rekey_on_receive_at
    }

    /// Encrypt `payload` as a complete transport message into `out`; returns its length.
    /// The payload is copied once, into place, and sealed there.
    pub fn encrypt(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, DropReason> {
        if payload.len() > MAX_PAYLOAD {
            return Err(DropReason::PayloadTooLarge);
        }
        if out.len() < payload.len() + TRANSPORT_OVERHEAD {
            return Err(DropReason::BufferTooSmall);
        }
        out[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + payload.len()].copy_from_slice(payload);
        self.encrypt_in_place(out, payload.len())
    }

    /// Seal the `n` payload bytes the caller wrote at `buf[TRANSPORT_HEADER_LEN..]` where
    /// they lie: the header goes in front of them, the tag after, and `buf[..len]` is the
    /// complete transport message; returns `len`.
    pub fn encrypt_in_place(&mut self, buf: &mut [u8], n: usize) -> Result<usize, DropReason> {
        if n > MAX_PAYLOAD {
            return Err(DropReason::PayloadTooLarge);
        }
        let len = n + TRANSPORT_OVERHEAD;
        if buf.len() < len {
            return Err(DropReason::BufferTooSmall);
        }
        let counter = self.send_counter;
        messages::emit_transport_header(buf, self.remote_index, counter);
        let (body, tag) = buf[TRANSPORT_HEADER_LEN..len].split_at_mut(n);
        tag.copy_from_slice(&self.keys.seal(counter, body));
        self.send_counter += 1;
        Ok(len)
    }

    /// Decrypt a transport message into `out`; the counter is marked only after the tag
    /// verified. `out` must hold the whole ciphertext (it is opened in place there).
    pub fn decrypt(&mut self, msg: &Transport<'_>, out: &mut [u8]) -> Result<usize, DropReason> {
        let counter = msg.counter();
        // A replayed message is refused before it is copied.
        if !self.replay.check(counter, REJECT_AFTER_MESSAGES) {
            return Err(DropReason::ReplayedCounter);
        }
        let ct = msg.ciphertext();
        if out.len() < ct.len() {
            return Err(DropReason::BufferTooSmall);
        }
        let in_out = &mut out[..ct.len()];
        in_out.copy_from_slice(ct);
        self.decrypt_in_place(counter, in_out)
    }

    /// Decrypt the ciphertext (with its tag) of a transport message with `counter` where it
    /// lies, in `in_out`; the plaintext is `in_out[..n]`. The counter is checked first and
    /// marked only after the tag verified.
    pub fn decrypt_in_place(
        &mut self,
        counter: u64,
        in_out: &mut [u8],
    ) -> Result<usize, DropReason> {
        if !self.replay.check(counter, REJECT_AFTER_MESSAGES) {
            return Err(DropReason::ReplayedCounter);
        }
        let n = self
            .keys
            .open(counter, in_out)
            .map_err(|()| DropReason::DecryptFailed)?;
        debug_assert_eq!(n + TAG_LEN, in_out.len());
        if !self.replay.mark(counter, REJECT_AFTER_MESSAGES) {
            return Err(DropReason::ReplayedCounter);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::handshake::{self, tai64n, Identity};
    use crate::tunnel::mac::Mac1Key;
    use crate::tunnel::messages::Message;
    use std::time::SystemTime;

    fn pair(now: Instant) -> (Session, Session) {
        let params = handshake::noise_params();
        let a = Identity::from_private([3; 32]);
        let b = Identity::from_private([4; 32]);
        let (hs, init) = handshake::create_initiation(
            &params,
            &a,
            &b.public(),
            &Mac1Key::new(&b.public()),
            &[0; 32],
            1,
            &tai64n(SystemTime::now()),
        )
        .unwrap();
        let Ok(Message::Initiation(i)) = Message::parse(&init) else {
            panic!()
        };
        let c = handshake::consume_initiation(&params, &b, &i).unwrap();
        let (tb, resp) =
            handshake::create_response(c, &[0; 32], &Mac1Key::new(&a.public()), 2).unwrap();
        let Ok(Message::Response(r)) = Message::parse(&resp) else {
            panic!()
        };
        let mut hs = hs;
        hs.consume_response(&r).unwrap();
        let ta = hs.into_transport().unwrap();
        (
            Session::new(1, 2, ta, now, true),
            Session::new(2, 1, tb, now, false),
        )
    }

    fn transport(buf: &[u8]) -> Transport<'_> {
        match Message::parse(buf) {
            Ok(Message::Transport(t)) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forged_future_counter_does_not_poison_window() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut wire = [0u8; 64];
        let mut plain = [0u8; 64];
        let n = a.encrypt(b"x", &mut wire).unwrap();
        // Forge: same ciphertext, counter far in the future -> tag fails.
        let mut forged = wire;
        forged[8..16].copy_from_slice(&1_000_000u64.to_le_bytes());
        assert_eq!(
            b.decrypt(&transport(&forged[..n]), &mut plain),
            Err(DropReason::DecryptFailed)
        );
        // Genuine counter 0 must still be accepted, and only once.
        assert_eq!(b.decrypt(&transport(&wire[..n]), &mut plain), Ok(1));
        assert_eq!(
            b.decrypt(&transport(&wire[..n]), &mut plain),
            Err(DropReason::ReplayedCounter)
        );
    }

    #[test]
    fn counter_limits() {
        let now = Instant::now();
        let (mut a, _) = pair(now);
        a.send_counter = REKEY_AFTER_MESSAGES;
        assert!(a.wants_rekey_on_send(now) && a.can_send(now));
        a.send_counter = REJECT_AFTER_MESSAGES;
        assert!(!a.can_send(now));
        let (_, b) = pair(now);
        assert!(!b.wants_rekey_on_send(now + REKEY_AFTER_TIME)); // responder never rekeys on age
        assert!(b.can_send(now + REJECT_AFTER_TIME - std::time::Duration::from_millis(1)));
        assert!(!b.can_send(now + REJECT_AFTER_TIME));
    }
}
