//! All peers of this node: demultiplexes datagrams by receiver index, drives handshakes,
//! sessions and timers. Sans-IO: the driver feeds datagrams and `Instant`s and polls for
//! datagrams to send, deadlines and events.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use rand_core::CryptoRngCore;
use snow::params::NoiseParams;
use subtle::ConstantTimeEq;

use super::cookie::{self, CookieChecker, CookieMaker, COOKIE_REPLY_LEN};
use super::dos::{Admit, Guard, PendingCookie};
use super::errors::{DropCounters, DropReason};
use super::handshake::{
    self, tai64n, tai64n_next, wipe, Identity, InitiatorHandshake, Tai64n, ZERO_PSK,
};
use super::mac::Mac1Key;
use super::messages::{
    field, Initiation, Message, Response, Transport, INITIATION_LEN, MAX_PAYLOAD, RESPONSE_LEN,
    TRANSPORT_HEADER_LEN, TRANSPORT_OVERHEAD,
};
use super::session::Session;
use super::timers::{
    PeerTimers, HANDSHAKE_INITIATION_RATE, KEEPALIVE_TIMEOUT, MAX_QUEUED_PAYLOADS,
    REKEY_ATTEMPT_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX, ZERO_KEYS_AFTER,
};
use crate::bucket::Bucket;

/// Caller-chosen handle for a peer.
pub type PeerId = usize;

/// A datagram written into the caller's buffer, to be sent to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub len: usize,
}

/// Outcome of [`Endpoint::handle_datagram`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// Authenticated plaintext is in `out[..len]`.
    Data { peer: PeerId, len: usize },
    /// Authenticated empty transport message.
    Keepalive { peer: PeerId },
    /// A handshake message was accepted; a reply may be pending: call `poll_transmit`.
    Handshake { peer: PeerId },
    /// Discarded (and counted in [`Endpoint::drops`]). Never answered, except that an
    /// `UnderLoad` handshake message gets a cookie reply (call `poll_transmit`).
    Dropped(DropReason),
    /// A valid cookie reply from this peer: our next handshake message carries mac2.
    Cookie { peer: PeerId },
}

/// Outcome of [`Endpoint::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// The encrypted datagram is in `out[..len]`.
    Datagram(Transmit),
    /// No usable session: the payload waits for the handshake. Call `poll_transmit`.
    Queued,
    Dropped(DropReason),
}

/// Where the payload of a send is: borrowed (copied into the datagram), or already in the
/// datagram buffer at `TRANSPORT_HEADER_LEN` (sealed in place).
#[derive(Clone, Copy)]
enum Payload<'a> {
    Copy(&'a [u8]),
    InPlace(usize),
}

/// A transport message to open: its view and the buffer the plaintext goes to, or its
/// counter and its ciphertext and tag, opened where they lie (plaintext at the start).
enum Sealed<'a> {
    Copy(Transport<'a>, &'a mut [u8]),
    InPlace(u64, &'a mut [u8]),
}

/// Something the driver may want to log or act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A new session with this peer became usable for sending: first contact, every
    /// rekey (about every 2 minutes) and after a peer restart.
    SessionEstablished(PeerId),
    /// Handshake attempts were exhausted (REKEY_ATTEMPT_TIME), or, with a persistent
    /// keepalive, nothing authenticated arrived for PEER_UNREACHABLE_KEEPALIVES intervals.
    /// Raised once per outage; the next `SessionEstablished` ends the outage.
    PeerUnreachable(PeerId),
}

/// Snapshot for status output and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub public: [u8; 32],
    /// Where we send: configured, or learned from the last authenticated datagram.
    pub endpoint: Option<SocketAddr>,
    /// When the current session was established.
    pub last_handshake: Option<Instant>,
    /// Authenticated bytes (whole datagrams) and datagrams, handshakes included.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// A session usable for sending exists.
    pub established: bool,
    /// Initiations sent in the current attempt series.
    pub handshake_attempts: u32,
    pub last_authenticated_rx: Option<Instant>,
    pub persistent_keepalive: Option<Duration>,
    /// Payloads waiting for a session.
    pub queued: usize,
    /// `endpoint` has not yet proven that it receives what we send (roaming); transport
    /// traffic to it is limited to ROAM_BUDGET_FACTOR × what it sent us.
    pub endpoint_unproven: bool,
}

/// Handshake DoS figures for metrics (see `docs/DEPLOYMENT.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DosStats {
    /// The endpoint is under load now: handshakes need a valid mac2.
    pub under_load: bool,
    /// Handshake messages that reached Diffie-Hellman.
    pub handshakes_processed: u64,
    /// Cookie replies sent.
    pub cookie_replies_sent: u64,
    /// Valid cookie replies received (we were asked for mac2).
    pub cookie_replies_received: u64,
    /// Handshake messages with a valid mac2 accepted under load.
    pub mac2_accepted: u64,
    /// Transport datagrams sent to a peer's last proven address instead of its newly
    /// roamed, unproven one, because the roam budget was used up.
    pub roam_fallbacks: u64,
}

/// Bytes of randomness fetched at once for timer jitter (16 draws).
const JITTER_POOL: usize = 64;

/// Hasher for the receiver-index table. The keys are drawn uniformly at random by us
/// (`Shared::new_index`) and a datagram can only look one up, never insert one, so no keyed
/// (SipHash) hash is needed against flooding: a multiply spreads the 32 random bits over
/// the 64 hashbrown uses (bucket bits low, tag bits high).
#[derive(Default)]
struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b) ^ (self.0 as u32).rotate_left(8));
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.0 = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Bytes we may send to a newly roamed, unproven endpoint per byte it sent us.
pub const ROAM_BUDGET_FACTOR: u64 = 3;

/// A peer's pre-shared key, erased on drop.
struct Psk([u8; 32]);

impl Drop for Psk {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

struct Peer {
    id: PeerId,
    public: [u8; 32],
    /// mac1 key for messages we send to this peer.
    mac1: Mac1Key,
    psk: Psk,
    endpoint: Option<SocketAddr>,
    keepalive: Option<Duration>,
    /// mac2 cookie state for messages we send to this peer.
    cookie: CookieMaker,
    /// Second public key accepted during a key-rotation window; initiations alternate
    /// between the two keys until one answers.
    alt_public: Option<[u8; 32]>,
    /// Last address proven to receive what we send (configured, or a handshake sent there
    /// was answered). `None` before any proof.
    proven: Option<SocketAddr>,
    /// Transport bytes we may still send to an unproven `endpoint`.
    roam_budget: u64,
    /// Handshakes from `endpoint` or `proven` (exactly) draw from this reserved bucket.
    handshake_bucket: Bucket,
    /// Where our pending initiation / our last response went: answering it proves receipt.
    initiation_sent_to: Option<SocketAddr>,
    response_sent_to: Option<SocketAddr>,

    /// Our pending initiation, if any.
    handshake: Option<InitiatorHandshake>,
    last_initiation_sent: Option<Instant>,
    attempt_started: Option<Instant>,
    handshake_attempts: u32,
    last_sent_timestamp: Option<Tai64n>,
    /// Responder-side replay and flood protection.
    last_received_timestamp: Option<Tai64n>,
    last_initiation_consumed: Option<Instant>,

    /// Still decrypts packets in flight across a rekey.
    previous: Option<Session>,
    /// Used for sending.
    current: Option<Session>,
    /// Responder's new session, waiting for key confirmation (the first packet on it).
    next: Option<Session>,

    timers: PeerTimers,
    sent_last_minute_handshake: bool,
    out_response: Option<[u8; RESPONSE_LEN]>,
    out_initiation: Option<[u8; INITIATION_LEN]>,
    out_keepalive: bool,
    queue: VecDeque<Vec<u8>>,

    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
    last_handshake: Option<Instant>,
    last_authenticated_rx: Option<Instant>,
    unreachable_reported: bool,
}

/// Endpoint state shared by all peers (split out so peer methods can borrow both).
struct Shared {
    identity: Identity,
    /// mac1 key for messages sent to us.
    mac1: Mac1Key,
    params: NoiseParams,
    rng: Box<dyn CryptoRngCore + core::marker::Send>,
    /// Random bytes for timer jitter, refilled from `rng` JITTER_POOL bytes at a time, so
    /// sending data does not cost a system call (`OsRng`) per packet; `jitter_next` is the
    /// next unused byte (JITTER_POOL: empty).
    jitter_pool: [u8; JITTER_POOL],
    jitter_next: usize,
    wall_base: SystemTime,
    instant_base: Instant,
    by_index: HashMap<u32, PeerId, BuildHasherDefault<IndexHasher>>,
    drops: DropCounters,
    events: VecDeque<Event>,
    cookies: CookieChecker,
    guard: Guard,
    dos: DosStats,
    /// Test aid: rekey sessions this much sooner than REKEY_AFTER_TIME.
    rekey_after: Option<Duration>,
}

/// All peers of this node. See the module documentation of [`crate::tunnel`].
pub struct Endpoint {
    shared: Shared,
    peers: BTreeMap<PeerId, Peer>,
    by_key: HashMap<[u8; 32], PeerId>,
    /// Latest time the driver told us; for calls that take no `now`.
    last_now: Instant,
}

impl Shared {
    fn dropped(&mut self, reason: DropReason) -> Recv {
        self.drops.record(reason);
        Recv::Dropped(reason)
    }

    fn new_index(&mut self, peer: PeerId) -> u32 {
        loop {
            let i = self.rng.next_u32();
            if let std::collections::hash_map::Entry::Vacant(e) = self.by_index.entry(i) {
                e.insert(peer);
                return i;
            }
        }
    }

    fn free_index(&mut self, index: u32) {
        self.by_index.remove(&index);
    }

    fn jitter(&mut self) -> Duration {
        if self.jitter_next + 4 > JITTER_POOL {
            self.rng.fill_bytes(&mut self.jitter_pool);
            self.jitter_next = 0;
        }
        let mut w = [0u8; 4];
        w.copy_from_slice(&self.jitter_pool[self.jitter_next..self.jitter_next + 4]);
        self.jitter_next += 4;
        let max = REKEY_TIMEOUT_JITTER_MAX.as_millis() as u32 + 1;
        Duration::from_millis(u64::from(u32::from_le_bytes(w) % max))
    }

    /// Minimum time between two initiations of one attempt series (REKEY_TIMEOUT, or the
    /// shorter test rekey interval so that it is not capped at 5 s).
    fn initiation_guard(&self) -> Duration {
        self.rekey_after
            .map_or(REKEY_TIMEOUT, |r| r.min(REKEY_TIMEOUT))
    }

    fn wall(&self, now: Instant) -> SystemTime {
        match now.checked_duration_since(self.instant_base) {
            Some(d) => self.wall_base + d,
            None => self.wall_base - (self.instant_base - now),
        }
    }
}

impl Peer {
    fn usable(&self, now: Instant) -> bool {
        self.current.as_ref().is_some_and(|s| s.can_send(now))
    }

    fn discard(shared: &mut Shared, session: Option<Session>) {
        if let Some(s) = session {
            shared.free_index(s.local_index);
        }
    }

    fn discard_queue(&mut self, shared: &mut Shared) {
        for _ in self.queue.drain(..) {
            shared.drops.record(DropReason::NoSession);
        }
    }

    /// Forget every key and pending handshake of this peer.
    fn clear_keys(&mut self, shared: &mut Shared) {
        Self::discard(shared, self.previous.take());
        Self::discard(shared, self.current.take());
        Self::discard(shared, self.next.take());
        if let Some(hs) = self.handshake.take() {
            shared.free_index(hs.local_index);
        }
        self.out_initiation = None;
        self.out_response = None;
        self.out_keepalive = false;
        self.discard_queue(shared);
        self.timers.retransmit_handshake = None;
        self.timers.new_handshake = None;
        self.timers.send_keepalive = None;
        self.timers.zero_key_material = None;
        self.attempt_started = None;
    }

    /// Start (or, with `retry`, retransmit) a handshake. Without `retry`, does nothing
    /// while one is in flight or within REKEY_TIMEOUT of the last initiation.
    fn start_handshake(&mut self, shared: &mut Shared, now: Instant, retry: bool) {
        if self.endpoint.is_none() {
            return;
        }
        if !retry {
            if self.handshake.is_some() && self.timers.retransmit_handshake.is_some() {
                return;
            }
            if self
                .last_initiation_sent
                .is_some_and(|t| now < t + shared.initiation_guard())
            {
                return;
            }
            self.handshake_attempts = 0;
            self.attempt_started = Some(now);
        }
        if let Some(old) = self.handshake.take() {
            shared.free_index(old.local_index);
            // Rotation window: the peer may hold either key; try the other one next.
            if retry && self.alt_public.is_some() {
                self.swap_keys();
            }
        }
        let index = shared.new_index(self.id);
        let mut ts = tai64n(shared.wall(now));
        if let Some(last) = &self.last_sent_timestamp {
            if ts <= *last {
                ts = tai64n_next(last);
            }
        }
        let created = handshake::create_initiation(
            &shared.params,
            &shared.identity,
            &self.public,
            &self.mac1,
            &self.psk.0,
            index,
            &ts,
        );
        let Ok((hs, msg)) = created else {
            shared.free_index(index);
            return;
        };
        self.last_sent_timestamp = Some(ts);
        self.handshake = Some(hs);
        self.out_initiation = Some(msg);
        self.last_initiation_sent = Some(now);
        self.handshake_attempts += 1;
        let jitter = shared.jitter();
        self.timers.on_handshake_initiated(now, jitter);
    }

    /// Forget our pending initiation (a session from the peer's handshake superseded it).
    /// Its index is freed, so a late response to it is dropped as `UnknownIndex`.
    fn cancel_initiation(&mut self, shared: &mut Shared) {
        if let Some(hs) = self.handshake.take() {
            shared.free_index(hs.local_index);
        }
        self.out_initiation = None;
        self.timers.on_handshake_complete();
        self.attempt_started = None;
        self.handshake_attempts = 0;
    }

    /// Handshake attempts exhausted: drop what waits for it and tell the driver.
    fn give_up(&mut self, shared: &mut Shared, now: Instant) {
        if let Some(hs) = self.handshake.take() {
            shared.free_index(hs.local_index);
        }
        self.out_initiation = None;
        self.attempt_started = None;
        self.discard_queue(shared);
        self.report_unreachable(shared);
        if self.timers.zero_key_material.is_none() {
            self.timers.zero_key_material = Some(now + ZERO_KEYS_AFTER);
        }
    }

    fn report_unreachable(&mut self, shared: &mut Shared) {
        if !self.unreachable_reported {
            self.unreachable_reported = true;
            shared.events.push_back(Event::PeerUnreachable(self.id));
        }
    }

    fn established(&mut self, shared: &mut Shared, now: Instant) {
        self.last_handshake = Some(now);
        self.unreachable_reported = false;
        self.sent_last_minute_handshake = false;
        shared.events.push_back(Event::SessionEstablished(self.id));
    }

    /// Bookkeeping for any authenticated datagram from this peer.
    fn authenticated_rx(&mut self, src: SocketAddr, len: usize, now: Instant) {
        self.roamed_rx(src, len);
        self.rx_bytes += len as u64;
        self.rx_packets += 1;
        self.last_authenticated_rx = Some(now);
        self.timers.on_authenticated_received(now, self.keepalive);
    }

    fn authenticated_tx(&mut self, len: usize, now: Instant) {
        self.tx_bytes += len as u64;
        self.tx_packets += 1;
        self.timers.on_authenticated_sent(now, self.keepalive);
    }

    /// Encrypt on the current session, with WireGuard's send-side timer and rekey rules.
    fn send_transport(
        &mut self,
        shared: &mut Shared,
        payload: Payload<'_>,
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        let session = self
            .current
            .as_mut()
            .filter(|s| s.can_send(now))
            .ok_or(DropReason::NoSession)?;
        let (len, empty) = match payload {
            Payload::Copy(p) => (session.encrypt(p, out)?, p.is_empty()),
            Payload::InPlace(n) => (session.encrypt_in_place(out, n)?, n == 0),
        };
        let rekey = session.wants_rekey_on_send(now)
            || shared.rekey_after.is_some_and(|r| {
                session.initiator && now.saturating_duration_since(session.created) >= r
            });
        self.authenticated_tx(len, now);
        self.out_keepalive = false;
        // Draw jitter only when the timer is actually armed (once per silence from the peer).
        if !empty && self.timers.new_handshake.is_none() {
            let jitter = shared.jitter();
            self.timers.on_data_sent(now, jitter);
        }
        if rekey {
            self.start_handshake(shared, now, false);
        }
        Ok(len)
    }
}

impl Endpoint {
    /// Create an endpoint. The wall clock is read once here, only to build the TAI64N
    /// timestamps of initiations (they must increase across restarts of this node).
    pub fn new(
        identity: Identity,
        rng: impl CryptoRngCore + core::marker::Send + 'static,
        now: Instant,
    ) -> Endpoint {
        Self::with_wall_clock(identity, rng, now, SystemTime::now())
    }

    /// As [`Endpoint::new`], with the wall-clock time corresponding to `now` given
    /// explicitly (deterministic tests, simulated time).
    pub fn with_wall_clock(
        identity: Identity,
        rng: impl CryptoRngCore + core::marker::Send + 'static,
        now: Instant,
        wall: SystemTime,
    ) -> Endpoint {
        let mac1 = Mac1Key::new(&identity.public());
        let identity_public = identity.public();
        Endpoint {
            shared: Shared {
                identity,
                mac1,
                params: handshake::noise_params(),
                rng: Box::new(rng),
                jitter_pool: [0; JITTER_POOL],
                jitter_next: JITTER_POOL,
                wall_base: wall,
                instant_base: now,
                by_index: HashMap::default(),
                drops: DropCounters::default(),
                events: VecDeque::new(),
                cookies: CookieChecker::new(&identity_public),
                guard: Guard::new(),
                dos: DosStats::default(),
                rekey_after: None,
            },
            peers: BTreeMap::new(),
            by_key: HashMap::new(),
            last_now: now,
        }
    }

    /// Test aid: the initiator of a session rekeys when sending on it after `after` instead
    /// of REKEY_AFTER_TIME (120 s); `None` restores WireGuard's value. Also lowers the
    /// minimum time between initiations (REKEY_TIMEOUT, 5 s) to `after` if shorter.
    pub fn set_rekey_after(&mut self, after: Option<Duration>) {
        self.shared.rekey_after = after.filter(|d| !d.is_zero());
    }

    /// Our static public key.
    pub fn public(&self) -> [u8; 32] {
        self.shared.identity.public()
    }

    /// Add (or replace) a peer. A public key belongs to at most one peer: adding a key
    /// already used by another `PeerId` removes that other peer. With both an endpoint and
    /// a persistent keepalive, the handshake starts at the next `handle_timeout`.
    pub fn add_peer(
        &mut self,
        id: PeerId,
        public: [u8; 32],
        psk: Option<[u8; 32]>,
        endpoint: Option<SocketAddr>,
        persistent_keepalive: Option<Duration>,
    ) {
        self.remove_peer(id);
        if let Some(&other) = self.by_key.get(&public) {
            self.remove_peer(other);
        }
        let mut timers = PeerTimers::default();
        if endpoint.is_some() && persistent_keepalive.is_some() {
            timers.persistent_keepalive = Some(self.last_now);
        }
        let peer = Peer {
            id,
            public,
            mac1: Mac1Key::new(&public),
            psk: Psk(psk.unwrap_or(ZERO_PSK)),
            endpoint,
            keepalive: persistent_keepalive,
            cookie: CookieMaker::new(&public),
            alt_public: None,
            // A configured endpoint is trusted by the operator.
            proven: endpoint,
            roam_budget: 0,
            handshake_bucket: Bucket::EMPTY,
            initiation_sent_to: None,
            response_sent_to: None,
            handshake: None,
            last_initiation_sent: None,
            attempt_started: None,
            handshake_attempts: 0,
            last_sent_timestamp: None,
            last_received_timestamp: None,
            last_initiation_consumed: None,
            previous: None,
            current: None,
            next: None,
            timers,
            sent_last_minute_handshake: false,
            out_response: None,
            out_initiation: None,
            out_keepalive: false,
            queue: VecDeque::new(),
            rx_bytes: 0,
            tx_bytes: 0,
            rx_packets: 0,
            tx_packets: 0,
            last_handshake: None,
            last_authenticated_rx: None,
            unreachable_reported: false,
        };
        self.by_key.insert(public, id);
        self.peers.insert(id, peer);
    }

    /// Remove a peer and erase its keys. Unknown ids are ignored.
    pub fn remove_peer(&mut self, id: PeerId) {
        if let Some(mut peer) = self.peers.remove(&id) {
            peer.clear_keys(&mut self.shared);
            self.by_key.remove(&peer.public);
        }
    }

    /// Apply a configuration reload. An unchanged PSK keeps the sessions; a changed PSK
    /// erases them and starts a new handshake. `endpoint: None` keeps the learned endpoint.
    /// To change a peer's public key, remove and re-add it.
    pub fn update_peer(
        &mut self,
        id: PeerId,
        psk: Option<[u8; 32]>,
        endpoint: Option<SocketAddr>,
        persistent_keepalive: Option<Duration>,
    ) {
        let now = self.last_now;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if let Some(ep) = endpoint {
            peer.endpoint = Some(ep);
            peer.proven = Some(ep);
        }
        if peer.keepalive != persistent_keepalive {
            peer.keepalive = persistent_keepalive;
            peer.timers.persistent_keepalive = persistent_keepalive.map(|k| now + k);
            peer.timers.dead_peer = match (persistent_keepalive, peer.last_authenticated_rx) {
                (Some(k), Some(_)) => Some(now + k * super::timers::PEER_UNREACHABLE_KEEPALIVES),
                _ => None,
            };
        }
        let new_psk = psk.unwrap_or(ZERO_PSK);
        if !bool::from(peer.psk.0.ct_eq(&new_psk)) {
            peer.psk = Psk(new_psk);
            peer.clear_keys(&mut self.shared);
            peer.last_initiation_sent = None;
            peer.start_handshake(&mut self.shared, now, false);
        }
    }

    /// A datagram arrived from `src`. Plaintext (if any) is written into `out`, which
    /// must be at least as long as `datagram`.
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Recv {
        self.last_now = now;
        match Message::parse(datagram) {
            Err(reason) => self.shared.dropped(reason),
            Ok(Message::Transport(t)) => {
                let index = t.receiver();
                self.handle_transport(src, index, Sealed::Copy(t, out), datagram.len(), now)
            }
            Ok(Message::Initiation(i)) => self.handle_initiation(src, &i, now),
            Ok(Message::Response(r)) => self.handle_response(src, &r, now),
            Ok(Message::CookieReply(c)) => self.handle_cookie_reply(c, now),
        }
    }

    /// As [`Endpoint::handle_datagram`], but a transport message is opened where it lies:
    /// for `Recv::Data { len, .. }` the plaintext is
    /// `datagram[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + len]` (no copy of the
    /// ciphertext first). The rest of `datagram` after a transport message, and all of it
    /// after one that fails to open, is unspecified.
    pub fn handle_datagram_in_place(
        &mut self,
        src: SocketAddr,
        datagram: &mut [u8],
        now: Instant,
    ) -> Recv {
        self.last_now = now;
        let wire_len = datagram.len();
        let (index, counter) = match Message::parse(datagram) {
            Err(reason) => return self.shared.dropped(reason),
            Ok(Message::Transport(t)) => (t.receiver(), t.counter()),
            Ok(Message::Initiation(i)) => return self.handle_initiation(src, &i, now),
            Ok(Message::Response(r)) => return self.handle_response(src, &r, now),
            Ok(Message::CookieReply(c)) => return self.handle_cookie_reply(c, now),
        };
        let ct = &mut datagram[TRANSPORT_HEADER_LEN..];
        self.handle_transport(src, index, Sealed::InPlace(counter, ct), wire_len, now)
    }

    fn handle_initiation(&mut self, src: SocketAddr, msg: &Initiation<'_>, now: Instant) -> Recv {
        // mac1 first: cheap, and no DH for senders that don't know our key.
        if !self.shared.mac1.verify(msg.mac1_input(), msg.mac1()) {
            return self.shared.dropped(DropReason::BadMac1);
        }
        if let Err(r) = self.guard_handshake(
            src,
            msg.mac2_input(),
            msg.mac2(),
            msg.sender(),
            msg.mac1(),
            now,
        ) {
            return r;
        }
        let consumed =
            match handshake::consume_initiation(&self.shared.params, &self.shared.identity, msg) {
                Ok(c) => c,
                Err(reason) => return self.shared.dropped(reason),
            };
        let Some(&id) = self.by_key.get(&consumed.remote) else {
            return self.shared.dropped(DropReason::UnknownKey);
        };
        let shared = &mut self.shared;
        let peer = self.peers.get_mut(&id).expect("by_key and peers agree");
        if peer
            .last_received_timestamp
            .is_some_and(|last| consumed.timestamp <= last)
        {
            return shared.dropped(DropReason::ReplayedHandshake);
        }
        if peer
            .last_initiation_consumed
            .is_some_and(|t| now < t + HANDSHAKE_INITIATION_RATE)
        {
            return shared.dropped(DropReason::HandshakeRate);
        }
        if consumed.remote != peer.public {
            // The peer answers to its rotation key: use it from now on. Only for a fresh
            // initiation: a replayed one (any eavesdropper has one of each key) must not
            // turn our own handshakes to the key the peer no longer answers to.
            peer.swap_keys();
        }
        let timestamp = consumed.timestamp;
        let remote_index = consumed.remote_index;
        let index = shared.new_index(id);
        let Ok((transport, reply)) =
            handshake::create_response(consumed, &peer.psk.0, &peer.mac1, index)
        else {
            shared.free_index(index);
            return shared.dropped(DropReason::HandshakeFailed);
        };
        peer.last_received_timestamp = Some(timestamp);
        peer.last_initiation_consumed = Some(now);
        // As WireGuard: the new session waits in `next`; `previous` goes.
        Peer::discard(shared, peer.next.take());
        Peer::discard(shared, peer.previous.take());
        peer.next = Some(Session::new(index, remote_index, transport, now, false));
        peer.timers.on_session_derived(now);
        peer.out_response = Some(reply);
        peer.authenticated_rx(src, INITIATION_LEN, now);
        Recv::Handshake { peer: id }
    }

    fn handle_response(&mut self, src: SocketAddr, msg: &Response<'_>, now: Instant) -> Recv {
        if !self.shared.mac1.verify(msg.mac1_input(), msg.mac1()) {
            return self.shared.dropped(DropReason::BadMac1);
        }
        let shared = &mut self.shared;
        let Some(&id) = shared.by_index.get(&msg.receiver()) else {
            return shared.dropped(DropReason::UnknownIndex);
        };
        let peer = self
            .peers
            .get_mut(&id)
            .expect("index table and peers agree");
        let index = msg.receiver();
        if peer
            .handshake
            .as_ref()
            .is_none_or(|h| h.local_index != index)
        {
            return shared.dropped(DropReason::UnknownIndex);
        }
        if let Err(r) = self.guard_handshake(
            src,
            msg.mac2_input(),
            msg.mac2(),
            msg.sender(),
            msg.mac1(),
            now,
        ) {
            return r;
        }
        let shared = &mut self.shared;
        let peer = self.peers.get_mut(&id).expect("checked above");
        let hs = peer.handshake.as_mut().expect("checked above");
        if let Err(reason) = hs.consume_response(msg) {
            return shared.dropped(reason);
        }
        let hs = peer.handshake.take().expect("checked above");
        let transport = match hs.into_transport() {
            Ok(t) => t,
            Err(reason) => {
                shared.free_index(index);
                return shared.dropped(reason);
            }
        };
        let session = Session::new(index, msg.sender(), transport, now, true);
        if let Some(next) = peer.next.take() {
            Peer::discard(shared, peer.current.take());
            Peer::discard(shared, peer.previous.replace(next));
        } else {
            let current = peer.current.take();
            Peer::discard(shared, core::mem::replace(&mut peer.previous, current));
        }
        peer.current = Some(session);
        // The response answers an initiation we sent there: that address receives.
        peer.proven = peer.initiation_sent_to.take().or(peer.proven);
        peer.out_initiation = None;
        peer.timers.on_handshake_complete();
        peer.timers.on_session_derived(now);
        peer.attempt_started = None;
        peer.handshake_attempts = 0;
        peer.authenticated_rx(src, RESPONSE_LEN, now);
        peer.established(shared, now);
        // Key confirmation for the responder: queued data or, failing that, a keepalive.
        if peer.queue.is_empty() {
            peer.out_keepalive = true;
        }
        Recv::Handshake { peer: id }
    }

    /// A transport message to our `index`; the plaintext is opened into the output buffer
    /// or in place (see [`Sealed`]).
    fn handle_transport(
        &mut self,
        src: SocketAddr,
        index: u32,
        sealed: Sealed<'_>,
        wire_len: usize,
        now: Instant,
    ) -> Recv {
        let shared = &mut self.shared;
        let Some(&id) = shared.by_index.get(&index) else {
            return shared.dropped(DropReason::UnknownIndex);
        };
        let peer = self
            .peers
            .get_mut(&id)
            .expect("index table and peers agree");
        let is = |s: &Option<Session>| s.as_ref().is_some_and(|s| s.local_index == index);
        let (session, confirms) = if is(&peer.current) {
            (peer.current.as_mut(), false)
        } else if is(&peer.next) {
            (peer.next.as_mut(), true)
        } else if is(&peer.previous) {
            (peer.previous.as_mut(), false)
        } else {
            // The index belongs to a pending initiation: not a session yet.
            return shared.dropped(DropReason::UnknownIndex);
        };
        let session = session.expect("matched above");
        if session.expired(now) {
            return shared.dropped(DropReason::ExpiredSession);
        }
        let opened = match sealed {
            Sealed::Copy(msg, out) => session.decrypt(&msg, out),
            Sealed::InPlace(counter, ct) => session.decrypt_in_place(counter, ct),
        };
        let len = match opened {
            Ok(n) => n,
            Err(reason) => return shared.dropped(reason),
        };
        if confirms {
            // Keys from our response: the address it went to receives.
            peer.proven = peer.response_sent_to.or(peer.proven);
            let next = peer.next.take();
            let current = core::mem::replace(&mut peer.current, next);
            Peer::discard(shared, core::mem::replace(&mut peer.previous, current));
            // Crossed initiations: the peer's handshake completed first, so ours is moot
            // (wireguard-go's timersHandshakeComplete on a confirmed keypair). Left pending,
            // a lost one would be retransmitted after REKEY_TIMEOUT and complete a second
            // session 5 s later for nothing.
            peer.cancel_initiation(shared);
            peer.established(shared, now);
        }
        peer.authenticated_rx(src, wire_len, now);
        if len > 0 {
            peer.timers.on_data_received(now);
        }
        // WireGuard's keepKeyFreshReceiving: renew an initiator session before it expires
        // even if we only receive on it.
        let stale = peer
            .current
            .as_ref()
            .is_some_and(|s| s.wants_rekey_on_receive(now));
        if stale && !peer.sent_last_minute_handshake {
            peer.sent_last_minute_handshake = true;
            peer.start_handshake(shared, now, false);
        }
        if len == 0 {
            Recv::Keepalive { peer: id }
        } else {
            Recv::Data { peer: id, len }
        }
    }

    /// Encrypt `payload` for `peer` into `out` (at least `payload.len() + 32` bytes). If no
    /// session is usable yet, queue it (bounded) and start a handshake; then call
    /// `poll_transmit`. Also call `poll_transmit` after a `Datagram`: sending may trigger a
    /// rekey.
    pub fn send(&mut self, peer: PeerId, payload: &[u8], now: Instant, out: &mut [u8]) -> Send {
        self.send_payload(peer, Payload::Copy(payload), now, out)
    }

    /// As [`Endpoint::send`] for the `len`-byte payload the caller already wrote at
    /// `buf[TRANSPORT_HEADER_LEN..]` (`buf` holds at least `len + TRANSPORT_OVERHEAD`
    /// bytes): it is sealed where it lies, so a datagram built in the send slot is never
    /// copied. Queued (no usable session yet) it is copied out, as `send` would.
    pub fn send_in_place(
        &mut self,
        peer: PeerId,
        len: usize,
        now: Instant,
        buf: &mut [u8],
    ) -> Send {
        self.send_payload(peer, Payload::InPlace(len), now, buf)
    }

    fn send_payload(
        &mut self,
        peer: PeerId,
        payload: Payload<'_>,
        now: Instant,
        out: &mut [u8],
    ) -> Send {
        self.last_now = now;
        let shared = &mut self.shared;
        let payload_len = match payload {
            Payload::Copy(p) => p.len(),
            Payload::InPlace(n) => n,
        };
        if payload_len > MAX_PAYLOAD {
            shared.drops.record(DropReason::PayloadTooLarge);
            return Send::Dropped(DropReason::PayloadTooLarge);
        }
        if matches!(payload, Payload::InPlace(_)) && out.len() < payload_len + TRANSPORT_OVERHEAD {
            shared.drops.record(DropReason::BufferTooSmall);
            return Send::Dropped(DropReason::BufferTooSmall);
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            shared.drops.record(DropReason::UnknownPeer);
            return Send::Dropped(DropReason::UnknownPeer);
        };
        let usable = p.usable(now);
        if usable && p.queue.is_empty() && p.endpoint.is_some() {
            let to = match p.transport_dest(shared, payload_len) {
                Ok(to) => to,
                Err(reason) => {
                    shared.drops.record(reason);
                    return Send::Dropped(reason);
                }
            };
            {
                return match p.send_transport(shared, payload, now, out) {
                    Ok(len) => Send::Datagram(Transmit { to, len }),
                    Err(reason) => {
                        shared.drops.record(reason);
                        Send::Dropped(reason)
                    }
                };
            }
        }
        if p.queue.len() >= MAX_QUEUED_PAYLOADS {
            shared.drops.record(DropReason::QueueFull);
            return Send::Dropped(DropReason::QueueFull);
        }
        p.queue.push_back(match payload {
            Payload::Copy(b) => b.to_vec(),
            Payload::InPlace(n) => out[TRANSPORT_HEADER_LEN..TRANSPORT_HEADER_LEN + n].to_vec(),
        });
        if !usable {
            p.start_handshake(shared, now, false);
        }
        Send::Queued
    }

    /// Next datagram to send now: handshake messages, queued data released by a new
    /// session, keepalives. Call repeatedly until `None`. `out` must hold at least
    /// INITIATION_LEN bytes and the largest queued payload plus TRANSPORT_OVERHEAD.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        self.last_now = now;
        if let Some(t) = self.poll_cookie_reply(now, out) {
            return Some(t);
        }
        let shared = &mut self.shared;
        for peer in self.peers.values_mut() {
            let Some(to) = peer.endpoint else { continue };
            if out.len() >= RESPONSE_LEN {
                if let Some(mut msg) = peer.out_response.take() {
                    peer.cookie.seal(&mut msg, field::RESP_MAC1.start, now);
                    peer.response_sent_to = Some(to);
                    out[..RESPONSE_LEN].copy_from_slice(&msg);
                    peer.authenticated_tx(RESPONSE_LEN, now);
                    return Some(Transmit {
                        to,
                        len: RESPONSE_LEN,
                    });
                }
            }
            if out.len() >= INITIATION_LEN {
                if let Some(mut msg) = peer.out_initiation.take() {
                    peer.cookie.seal(&mut msg, field::INIT_MAC1.start, now);
                    peer.initiation_sent_to = Some(to);
                    out[..INITIATION_LEN].copy_from_slice(&msg);
                    peer.authenticated_tx(INITIATION_LEN, now);
                    return Some(Transmit {
                        to,
                        len: INITIATION_LEN,
                    });
                }
            }
            if !peer.usable(now) {
                peer.out_keepalive = false;
                continue;
            }
            while let Some(payload) = peer.queue.pop_front() {
                let sent = peer.transport_dest(shared, payload.len()).and_then(|to| {
                    Ok((
                        to,
                        peer.send_transport(shared, Payload::Copy(&payload), now, out)?,
                    ))
                });
                match sent {
                    Ok((to, len)) => return Some(Transmit { to, len }),
                    Err(reason) => shared.drops.record(reason),
                }
            }
            if peer.out_keepalive {
                peer.out_keepalive = false;
                let sent = peer.transport_dest(shared, 0).and_then(|to| {
                    Ok((
                        to,
                        peer.send_transport(shared, Payload::Copy(&[]), now, out)?,
                    ))
                });
                match sent {
                    Ok((to, len)) => return Some(Transmit { to, len }),
                    Err(reason) => shared.drops.record(reason),
                }
            }
        }
        None
    }

    /// Fire every timer due at `now`. Then call `poll_transmit` and `poll_event`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        let shared = &mut self.shared;
        for peer in self.peers.values_mut() {
            let expired = peer.timers.take_expired(now);
            if expired.zero_key_material {
                peer.clear_keys(shared);
            }
            if expired.retransmit_handshake && peer.handshake.is_some() {
                let started = peer.attempt_started.unwrap_or(now);
                if now.saturating_duration_since(started) >= REKEY_ATTEMPT_TIME {
                    peer.give_up(shared, now);
                } else {
                    peer.start_handshake(shared, now, true);
                }
            }
            if expired.send_keepalive {
                if peer.usable(now) {
                    peer.out_keepalive = true;
                }
                if peer.timers.need_another_keepalive {
                    peer.timers.need_another_keepalive = false;
                    peer.timers.send_keepalive = Some(now + KEEPALIVE_TIMEOUT);
                }
            }
            if expired.new_handshake {
                peer.start_handshake(shared, now, false);
            }
            if expired.dead_peer {
                peer.report_unreachable(shared);
                peer.start_handshake(shared, now, false);
            }
            if expired.persistent_keepalive {
                if peer.usable(now) {
                    peer.out_keepalive = true;
                } else {
                    peer.start_handshake(shared, now, false);
                }
                // Re-armed by the next send; arm now too so a skipped send can't stop it.
                peer.timers.persistent_keepalive = peer.keepalive.map(|k| now + k);
            }
        }
    }

    /// Earliest deadline at which `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|p| p.timers.next_deadline())
            .min()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.shared.events.pop_front()
    }

    pub fn peer_status(&self, id: PeerId) -> Option<PeerStatus> {
        let p = self.peers.get(&id)?;
        Some(PeerStatus {
            public: p.public,
            endpoint: p.endpoint,
            last_handshake: p.last_handshake,
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
            rx_packets: p.rx_packets,
            tx_packets: p.tx_packets,
            established: p.usable(self.last_now),
            handshake_attempts: p.handshake_attempts,
            last_authenticated_rx: p.last_authenticated_rx,
            persistent_keepalive: p.keepalive,
            queued: p.queue.len(),
            endpoint_unproven: p.endpoint.is_some() && p.endpoint != p.proven,
        })
    }

    pub fn drops(&self) -> &DropCounters {
        &self.shared.drops
    }

    /// Configured peer ids, ascending.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.keys().copied()
    }
}

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("peers", &self.peers.len())
            .field("drops", &self.shared.drops)
            .finish_non_exhaustive()
    }
}

// Flood defences, cookies, roaming and key rotation (see `dos.rs`, `cookie.rs` and
// docs/PROTOCOL.md "Cookie reply" / "Roaming").
impl Endpoint {
    /// Cheap checks for a mac1-valid handshake message before any Diffie-Hellman:
    /// load accounting, mac2 under load (else a cookie reply), per-source bucket and the
    /// global budget. `Err` carries the verdict to return.
    fn guard_handshake(
        &mut self,
        src: SocketAddr,
        mac2_input: &[u8],
        mac2: &[u8],
        sender: u32,
        mac1: &[u8],
        now: Instant,
    ) -> Result<(), Recv> {
        // A peer's IP gets a cookie whatever the port (a NAT may have moved it); only its
        // exact address draws from its reserved bucket.
        let ip = src.ip();
        let known = self.peers.values().any(|p| {
            p.endpoint.is_some_and(|e| e.ip() == ip) || p.proven.is_some_and(|e| e.ip() == ip)
        });
        let reserved = self
            .peers
            .values_mut()
            .find(|p| p.endpoint == Some(src) || p.proven == Some(src))
            .map(|p| &mut p.handshake_bucket);
        let sh = &mut self.shared;
        if sh.guard.note_handshake(now) {
            if !sh
                .cookies
                .verify_mac2(src, mac2_input, mac2, now, &mut *sh.rng)
            {
                // Peers' addresses always get a cookie; others within a global rate, so
                // answering a spoofed flood costs a bounded amount of work per second.
                if !known && !sh.guard.cookie_allowed(now) {
                    return Err(sh.dropped(DropReason::CookieRate));
                }
                let mut m = [0u8; super::mac::MAC_LEN];
                m.copy_from_slice(mac1);
                let queued = sh.guard.push_cookie(PendingCookie {
                    to: src,
                    receiver: sender,
                    mac1: m,
                });
                let reason = if queued {
                    DropReason::UnderLoad
                } else {
                    DropReason::CookieQueueFull
                };
                return Err(sh.dropped(reason));
            }
            sh.dos.mac2_accepted += 1;
        }
        match sh.guard.admit(src, reserved, now) {
            Admit::Process => {
                sh.dos.handshakes_processed += 1;
                Ok(())
            }
            Admit::SourceRate => Err(sh.dropped(DropReason::SourceRate)),
            Admit::Budget => Err(sh.dropped(DropReason::HandshakeBudget)),
        }
    }

    /// Seal and hand out one pending cookie reply.
    fn poll_cookie_reply(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        if out.len() < COOKIE_REPLY_LEN {
            return None;
        }
        let sh = &mut self.shared;
        let c = sh.guard.pop_cookie()?;
        sh.cookies
            .write_reply(c.to, c.receiver, &c.mac1, now, &mut *sh.rng, out);
        sh.dos.cookie_replies_sent += 1;
        Some(Transmit {
            to: c.to,
            len: COOKIE_REPLY_LEN,
        })
    }

    /// A cookie reply: its receiver index names our pending initiation or the session our
    /// last response created. Not authenticated as coming from the peer (it proves only
    /// that the responder saw our mac1), so it changes nothing but the cookie.
    fn handle_cookie_reply(&mut self, reply: &[u8], now: Instant) -> Recv {
        let index = cookie::reply_receiver(reply);
        let Some(&id) = self.shared.by_index.get(&index) else {
            return self.shared.dropped(DropReason::UnknownIndex);
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return self.shared.dropped(DropReason::UnknownIndex);
        };
        if peer.cookie.consume_reply(reply, now) {
            self.shared.dos.cookie_replies_received += 1;
            Recv::Cookie { peer: id }
        } else {
            self.shared.dropped(DropReason::BadCookieReply)
        }
    }

    /// Handshake DoS figures.
    pub fn dos_stats(&self) -> DosStats {
        DosStats {
            under_load: self.shared.guard.under_load(self.last_now),
            ..self.shared.dos.clone()
        }
    }

    /// Replace our static key (SIGHUP key rotation). Established sessions keep running
    /// (they do not depend on the static key); a pending handshake is restarted with the
    /// new key, and every peer with an endpoint starts one now so it learns the new key
    /// within a round trip. Peers must already accept the new public key (as their
    /// `public_key` or rotation key), else they drop our initiations as `unknown_key`.
    pub fn set_identity(&mut self, identity: Identity) {
        let now = self.last_now;
        let public = identity.public();
        self.shared.mac1 = Mac1Key::new(&public);
        self.shared.cookies = CookieChecker::new(&public);
        self.shared.identity = identity;
        let shared = &mut self.shared;
        for peer in self.peers.values_mut() {
            if let Some(hs) = peer.handshake.take() {
                shared.free_index(hs.local_index);
            }
            peer.out_initiation = None;
            peer.last_initiation_sent = None;
            peer.timers.retransmit_handshake = None;
            peer.start_handshake(shared, now, false);
        }
    }

    /// Set a peer's keys: `public` first, `alt` accepted as well during a rotation window
    /// (either key may authenticate the peer; initiations alternate between them until
    /// one answers). Sessions are kept: they were authenticated by a key still accepted,
    /// or, if neither key is the one the sessions were made with, they are erased.
    pub fn set_peer_keys(&mut self, id: PeerId, public: [u8; 32], alt: Option<[u8; 32]>) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let old = [Some(peer.public), peer.alt_public];
        for k in old.iter().flatten() {
            if self.by_key.get(k) == Some(&id) {
                self.by_key.remove(k);
            }
        }
        let keep = old.contains(&Some(public)) || (alt.is_some() && old.contains(&alt));
        for k in [Some(public), alt].into_iter().flatten() {
            if let Some(&other) = self.by_key.get(&k) {
                if other != id {
                    self.remove_peer(other);
                }
            }
        }
        let peer = self.peers.get_mut(&id).expect("checked above");
        let was_active = peer.public;
        peer.public = public;
        peer.alt_public = alt.filter(|a| *a != public);
        // Stay on the key that last worked while it is still accepted.
        if peer.alt_public == Some(was_active) {
            peer.swap_keys();
        } else {
            peer.mac1 = Mac1Key::new(&peer.public);
            peer.cookie = CookieMaker::new(&peer.public);
        }
        self.by_key.insert(peer.public, id);
        if let Some(a) = peer.alt_public {
            self.by_key.insert(a, id);
        }
        if !keep {
            peer.clear_keys(&mut self.shared);
            peer.last_initiation_sent = None;
            peer.start_handshake(&mut self.shared, self.last_now, false);
        }
    }
}

impl Peer {
    /// Make the rotation key the active one (the one we initiate to).
    fn swap_keys(&mut self) {
        if let Some(alt) = self.alt_public {
            self.alt_public = Some(self.public);
            self.public = alt;
            self.mac1 = Mac1Key::new(&self.public);
            self.cookie = CookieMaker::new(&self.public);
        }
    }

    /// Endpoint learning (WireGuard roaming) with a send budget: an address that has not
    /// proven it receives may get at most ROAM_BUDGET_FACTOR × the authenticated bytes it
    /// sent us, so replaying a peer's packet from a spoofed source cannot aim amplified
    /// answers at a third party.
    fn roamed_rx(&mut self, src: SocketAddr, len: usize) {
        if self.endpoint != Some(src) {
            self.endpoint = Some(src);
            self.roam_budget = 0;
        }
        if self.proven != Some(src) {
            self.roam_budget = self
                .roam_budget
                .saturating_add(ROAM_BUDGET_FACTOR * len as u64);
        }
    }

    /// Where a transport datagram of `payload_len` bytes of payload goes: the endpoint if
    /// proven or within its roam budget, else the last proven address, else nowhere.
    fn transport_dest(
        &mut self,
        shared: &mut Shared,
        payload_len: usize,
    ) -> Result<SocketAddr, DropReason> {
        let to = self.endpoint.ok_or(DropReason::NoSession)?;
        if self.proven == Some(to) {
            return Ok(to);
        }
        let cost = (payload_len + super::messages::TRANSPORT_OVERHEAD) as u64;
        if self.roam_budget >= cost {
            self.roam_budget -= cost;
            return Ok(to);
        }
        match self.proven {
            Some(p) => {
                shared.dos.roam_fallbacks += 1;
                Ok(p)
            }
            None => Err(DropReason::RoamBudget),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// OS randomness that counts how often it is asked (each ask is a system call).
    struct CountingRng(Arc<AtomicUsize>);

    impl rand_core::RngCore for CountingRng {
        fn next_u32(&mut self) -> u32 {
            self.0.fetch_add(1, Ordering::Relaxed);
            rand_core::OsRng.next_u32()
        }
        fn next_u64(&mut self) -> u64 {
            self.0.fetch_add(1, Ordering::Relaxed);
            rand_core::OsRng.next_u64()
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            self.0.fetch_add(1, Ordering::Relaxed);
            rand_core::OsRng.fill_bytes(dest);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    impl rand_core::CryptoRng for CountingRng {}

    /// Timer jitter is drawn only when the new-handshake timer is armed, and from a pool:
    /// sending data costs no draw from the OS per packet (it was one getrandom call each).
    #[test]
    fn sending_data_rarely_asks_the_rng() {
        let now = Instant::now();
        let draws = Arc::new(AtomicUsize::new(0));
        let (sa, sb): (SocketAddr, SocketAddr) = (
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.2:1".parse().unwrap(),
        );
        let ia = Identity::from_private([1; 32]);
        let ib = Identity::from_private([2; 32]);
        let mut a = Endpoint::new(ia.clone(), CountingRng(draws.clone()), now);
        let mut b = Endpoint::new(ib.clone(), rand_core::OsRng, now);
        a.add_peer(0, ib.public(), None, Some(sb), None);
        b.add_peer(0, ia.public(), None, Some(sa), None);
        let (mut wire, mut plain) = (vec![0u8; 2048], vec![0u8; 2048]);
        assert_eq!(a.send(0, b"hi", now, &mut wire), Send::Queued);
        for _ in 0..4 {
            while let Some(t) = a.poll_transmit(now, &mut wire) {
                b.handle_datagram(sa, &wire[..t.len], now, &mut plain);
            }
            while let Some(t) = b.poll_transmit(now, &mut wire) {
                a.handle_datagram(sb, &wire[..t.len], now, &mut plain);
            }
        }
        let before = draws.load(Ordering::Relaxed);
        for i in 0..1000 {
            let Send::Datagram(t) = a.send(0, &[7; 100], now, &mut wire) else {
                panic!("session up")
            };
            assert!(matches!(
                b.handle_datagram(sa, &wire[..t.len], now, &mut plain),
                Recv::Data { .. }
            ));
            // Every 10th packet is answered, which disarms a's new-handshake timer.
            if i % 10 == 0 {
                let Send::Datagram(t) = b.send(0, &[8; 10], now, &mut wire) else {
                    panic!("session up")
                };
                assert!(matches!(
                    a.handle_datagram(sb, &wire[..t.len], now, &mut plain),
                    Recv::Data { .. }
                ));
            }
        }
        // 100 re-arms, 16 jitters per draw.
        let used = draws.load(Ordering::Relaxed) - before;
        assert!(used <= 100 / 16 + 1, "{used} draws for 1000 packets");
    }
}
