//! The gateway-to-gateway sync protocol: message formats (see docs/SYNC.md).
//!
//! Every datagram is one message, `type u8 · version u8 · body`, or a BUNDLE of several.
//! All integers are big-endian. Decoding is strict (exact lengths, known enum values, no
//! trailing bytes) and never panics.

use crate::table::{Digest, Version};
use crate::wire::{
    AddrFamily, Dialect, PeerRepr, ScrubRepr, StateId, StateKeyRepr, StateRepr, WireError,
};

/// Version byte of every sync message. 2: HELLO and HELLO_ACK carry the sender's
/// incarnation, HELLO_REQ added. 3: BUNDLE added, DATA fragments carry a byte offset (so a
/// packet may start in the room left in a datagram) instead of an index. 4: ACK carries the
/// receiver's queueing delay (`delay`), which the sender's shedding steers by.
pub const SYNC_VERSION: u8 = 4;
/// A queueing delay on the wire: units of 100 µs, saturating at 65,535 (6.5 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct QueueDelay(pub u16);

impl QueueDelay {
    pub const UNIT: std::time::Duration = std::time::Duration::from_micros(100);

    pub fn from_duration(d: std::time::Duration) -> QueueDelay {
        QueueDelay((d.as_micros() / Self::UNIT.as_micros()).min(u16::MAX as u128) as u16)
    }
    pub fn to_duration(self) -> std::time::Duration {
        Self::UNIT * u32::from(self.0)
    }
}

/// Version byte of the state record format carried in RECORDS.
pub const RECORD_VERSION: u8 = 1;

pub mod msg_type {
    pub const HELLO: u8 = 1;
    pub const HELLO_ACK: u8 = 2;
    pub const DATA: u8 = 3;
    pub const RECORDS: u8 = 4;
    pub const ACK: u8 = 5;
    pub const SKIP: u8 = 6;
    pub const ALIVE: u8 = 7;
    pub const SUMMARY: u8 = 8;
    pub const RANGES: u8 = 9;
    pub const LEAF_REQ: u8 = 10;
    pub const STATE_REQ: u8 = 11;
    pub const HELLO_REQ: u8 = 12;
    pub const BUNDLE: u8 = 13;
    pub const PAD: u8 = 14;
}

pub mod record_kind {
    pub const STATE: u8 = 1;
    pub const TOMBSTONE: u8 = 2;
    pub const CLEAR: u8 = 3;
}

/// Fixed header sizes, used to size fragments and batches.
pub const DATA_HDR: usize = 2 + 4 + 4 + 8 + 1 + 2 + 2;
/// BUNDLE header (type, version) and the length prefix of each message in it.
pub const BUNDLE_HDR: usize = 2;
pub const BUNDLE_LEN_PREFIX: usize = 2;
pub const RECORDS_HDR: usize = 2 + 4 + 4 + 1 + 2;
/// Most NACK ranges an ACK may carry (more is a decode error).
pub const MAX_ACK_RANGES: usize = 32;
pub const ACK_HDR: usize = 2 + 4 + 4 + 2 + 1;
pub const RANGES_HDR: usize = 2 + 4 + 4 + 1;
pub const PAD_HDR: usize = 2 + 4;
/// Encoded size of a tombstone record.
pub const TOMBSTONE_LEN: usize = 1 + 12 + 12;
/// Upper bound of an encoded state record.
pub const STATE_RECORD_MAX: usize = 3 + 12 + STATE_FIXED + 4 + 16 + 16 + 64 + 16;
const STATE_FIXED: usize = 12 + 14 + 12 + 20 + 8 + 32 + 16 + 2 * 42 + 2 * 26 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("unsupported sync version {0}")]
    BadVersion(u8),
    #[error("unknown sync message type {0}")]
    UnknownType(u8),
    #[error("unsupported record version {0}")]
    BadRecordVersion(u8),
    #[error("bad {what} value {value}")]
    BadValue { what: &'static str, value: u64 },
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    #[error("buffer too small")]
    BufferTooSmall,
    #[error("unknown peer {0}")]
    UnknownPeer(usize),
    #[error("pfsync payload: {0}")]
    Wire(#[from] WireError),
}

pub type Result<T> = core::result::Result<T, SyncError>;

/// Bounds-checked reader.
pub struct Rd<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Rd<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Rd<'a> {
        Rd { buf, pos: 0, what }
    }
    #[inline(always)]
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let have = self.buf.len() - self.pos;
        if have < n {
            return Err(SyncError::Truncated {
                what: self.what,
                need: n,
                have,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    #[inline(always)]
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.bytes(N)?.try_into().unwrap())
    }
    #[inline(always)]
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    #[inline(always)]
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    #[inline(always)]
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    #[inline(always)]
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn end(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(SyncError::TrailingBytes(n)),
        }
    }
}

/// Bounds-checked writer.
pub struct Wr<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Wr<'a> {
    pub fn new(buf: &'a mut [u8]) -> Wr<'a> {
        Wr { buf, pos: 0 }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    #[inline(always)]
    pub fn bytes(&mut self, b: &[u8]) -> Result<()> {
        if self.buf.len() - self.pos < b.len() {
            return Err(SyncError::BufferTooSmall);
        }
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
        Ok(())
    }
    #[inline(always)]
    pub fn u8(&mut self, v: u8) -> Result<()> {
        self.bytes(&[v])
    }
    #[inline(always)]
    pub fn u16(&mut self, v: u16) -> Result<()> {
        self.bytes(&v.to_be_bytes())
    }
    #[inline(always)]
    pub fn u32(&mut self, v: u32) -> Result<()> {
        self.bytes(&v.to_be_bytes())
    }
    #[inline(always)]
    pub fn u64(&mut self, v: u64) -> Result<()> {
        self.bytes(&v.to_be_bytes())
    }
    pub fn patch_u16(&mut self, at: usize, v: u16) {
        self.buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

pub fn dialect_code(d: Dialect) -> u8 {
    match d {
        Dialect::NetbsdV3 => 1,
        Dialect::OpenbsdV6 => 2,
        Dialect::Freebsd1301 => 3,
        Dialect::Freebsd1400 => 4,
        Dialect::Freebsd1500 => 5,
    }
}

pub fn dialect_from_code(c: u8) -> Result<Dialect> {
    Ok(match c {
        1 => Dialect::NetbsdV3,
        2 => Dialect::OpenbsdV6,
        3 => Dialect::Freebsd1301,
        4 => Dialect::Freebsd1400,
        5 => Dialect::Freebsd1500,
        v => {
            return Err(SyncError::BadValue {
                what: "dialect",
                value: v as u64,
            })
        }
    })
}

/// One decoded sync message. Variable parts borrow the datagram and are pre-validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMsg<'a> {
    /// Opens a sending epoch; the receiver resets its receive window to `start_seq`.
    /// `incarnation` is random per process start of the sender: a new one means the sender
    /// lost everything it knew, including our stream to it.
    Hello {
        node: u32,
        epoch: u32,
        clock: u64,
        start_seq: u32,
        incarnation: u32,
    },
    /// Answers HELLO; `node` and `incarnation` are the *acknowledging* side's.
    HelloAck {
        node: u32,
        epoch: u32,
        clock: u64,
        incarnation: u32,
    },
    /// "I do not know your send epoch `epoch`": sent (at most once per `hello_interval`)
    /// by a receiver of DATA/RECORDS/SKIP/ALIVE of an epoch it never saw a HELLO for.
    /// The sender opens a new epoch if `epoch` is its current one.
    HelloReq {
        epoch: u32,
    },
    /// Bytes `offset..offset + chunk.len()` of an original pfsync packet of `total_len`.
    Data {
        epoch: u32,
        seq: u32,
        clock: u64,
        dialect: Dialect,
        offset: u16,
        total_len: u16,
        chunk: &'a [u8],
    },
    /// State records (repairs and anti-entropy), sequenced like DATA.
    Records {
        epoch: u32,
        seq: u32,
        count: u16,
        body: &'a [u8],
    },
    /// Cumulative ack (`cum` = next expected seq) plus missing ranges, and how long the
    /// acknowledging gateway's received datagrams wait before it reads them.
    Ack {
        epoch: u32,
        cum: u32,
        delay: QueueDelay,
        nacks: &'a [u8],
    },
    /// "Seqs first..=last are void: their content was or will be sent anew."
    Skip {
        epoch: u32,
        first: u32,
        last: u32,
    },
    /// Keepalive / tail-loss probe: `next_seq` is the next seq the sender will use.
    Alive {
        epoch: u32,
        next_seq: u32,
    },
    Summary {
        digest: Digest,
        count: u32,
        leaves_log2: u8,
        want_reply: bool,
        clock: u64,
    },
    Ranges {
        first: u32,
        span: u32,
        digests: &'a [u8],
    },
    LeafReq {
        leaves: &'a [u8],
    },
    StateReq {
        ids: &'a [u8],
    },
    /// Payment for answers (requester pays, docs/SYNC.md): `len` zero bytes that only count
    /// towards the receiver's answer budget for us. `want` > 0: "answers to you are waiting
    /// for this many bytes of credit", asked by an answerer whose budget ran out.
    Pad {
        want: u32,
        len: u16,
    },
}

impl<'a> SyncMsg<'a> {
    /// Strictly decode one datagram.
    pub fn decode(buf: &'a [u8]) -> Result<SyncMsg<'a>> {
        Self::decode_inner(buf, true)
    }

    /// Decode a message that [`SyncMsg::decode`] already accepted, without checking its
    /// records again (a datagram is checked whole before any of it acts, then decoded a
    /// second time to act).
    pub(super) fn decode_checked(buf: &'a [u8]) -> Result<SyncMsg<'a>> {
        Self::decode_inner(buf, false)
    }

    fn decode_inner(buf: &'a [u8], check: bool) -> Result<SyncMsg<'a>> {
        let mut r = Rd::new(buf, "sync header");
        let ty = r.u8()?;
        let ver = r.u8()?;
        if ver != SYNC_VERSION {
            return Err(SyncError::BadVersion(ver));
        }
        use msg_type::*;
        let m = match ty {
            HELLO => SyncMsg::Hello {
                node: r.u32()?,
                epoch: r.u32()?,
                clock: r.u64()?,
                start_seq: r.u32()?,
                incarnation: r.u32()?,
            },
            HELLO_ACK => SyncMsg::HelloAck {
                node: r.u32()?,
                epoch: r.u32()?,
                clock: r.u64()?,
                incarnation: r.u32()?,
            },
            HELLO_REQ => SyncMsg::HelloReq { epoch: r.u32()? },
            DATA => {
                let epoch = r.u32()?;
                let seq = r.u32()?;
                let clock = r.u64()?;
                let dialect = dialect_from_code(r.u8()?)?;
                let offset = r.u16()?;
                let total_len = r.u16()?;
                let chunk = r.rest();
                if chunk.is_empty() || offset as usize + chunk.len() > total_len as usize {
                    return Err(SyncError::BadValue {
                        what: "fragment length",
                        value: chunk.len() as u64,
                    });
                }
                SyncMsg::Data {
                    epoch,
                    seq,
                    clock,
                    dialect,
                    offset,
                    total_len,
                    chunk,
                }
            }
            BUNDLE => {
                return Err(SyncError::BadValue {
                    what: "nested bundle",
                    value: ty as u64,
                })
            }
            RECORDS => {
                let epoch = r.u32()?;
                let seq = r.u32()?;
                let rv = r.u8()?;
                if rv != RECORD_VERSION {
                    return Err(SyncError::BadRecordVersion(rv));
                }
                let count = r.u16()?;
                let body = r.rest();
                // Validate every record now so that iteration cannot fail later.
                if check {
                    check_records(body, count)?;
                }
                SyncMsg::Records {
                    epoch,
                    seq,
                    count,
                    body,
                }
            }
            ACK => {
                let epoch = r.u32()?;
                let cum = r.u32()?;
                let delay = QueueDelay(r.u16()?);
                let n = r.u8()? as usize;
                if n > MAX_ACK_RANGES {
                    return Err(SyncError::BadValue {
                        what: "ack ranges",
                        value: n as u64,
                    });
                }
                let nacks = r.bytes(n * 8)?;
                SyncMsg::Ack {
                    epoch,
                    cum,
                    delay,
                    nacks,
                }
            }
            SKIP => {
                let epoch = r.u32()?;
                let first = r.u32()?;
                let last = r.u32()?;
                if last.wrapping_sub(first) > i32::MAX as u32 {
                    return Err(SyncError::BadValue {
                        what: "skip range",
                        value: last.wrapping_sub(first) as u64,
                    });
                }
                SyncMsg::Skip { epoch, first, last }
            }
            ALIVE => SyncMsg::Alive {
                epoch: r.u32()?,
                next_seq: r.u32()?,
            },
            SUMMARY => {
                let digest = Digest::from_be_bytes(r.array()?);
                let count = r.u32()?;
                let leaves_log2 = r.u8()?;
                let flags = r.u8()?;
                if leaves_log2 > 16 || flags > 1 {
                    return Err(SyncError::BadValue {
                        what: "summary",
                        value: ((leaves_log2 as u64) << 8) | flags as u64,
                    });
                }
                SyncMsg::Summary {
                    digest,
                    count,
                    leaves_log2,
                    want_reply: flags == 1,
                    clock: r.u64()?,
                }
            }
            RANGES => {
                let first = r.u32()?;
                let span = r.u32()?;
                let n = r.u8()? as usize;
                if span == 0 {
                    return Err(SyncError::BadValue {
                        what: "range span",
                        value: 0,
                    });
                }
                let digests = r.bytes(n * 16)?;
                SyncMsg::Ranges {
                    first,
                    span,
                    digests,
                }
            }
            LEAF_REQ => {
                let n = r.u16()? as usize;
                SyncMsg::LeafReq {
                    leaves: r.bytes(n * 4)?,
                }
            }
            STATE_REQ => {
                let n = r.u16()? as usize;
                SyncMsg::StateReq {
                    ids: r.bytes(n * 12)?,
                }
            }
            PAD => {
                let want = r.u32()?;
                let pad = r.rest();
                if let Some(i) = pad.iter().position(|&b| b != 0) {
                    return Err(SyncError::BadValue {
                        what: "padding byte",
                        value: pad[i] as u64,
                    });
                }
                SyncMsg::Pad {
                    want,
                    len: u16::try_from(pad.len()).map_err(|_| SyncError::BadValue {
                        what: "padding length",
                        value: pad.len() as u64,
                    })?,
                }
            }
            t => return Err(SyncError::UnknownType(t)),
        };
        r.end()?;
        Ok(m)
    }

    /// Encode a message; RECORDS bodies must already be encoded records.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        let mut w = Wr::new(out);
        use msg_type::*;
        match *self {
            SyncMsg::Hello {
                node,
                epoch,
                clock,
                start_seq,
                incarnation,
            } => {
                w.u8(HELLO)?;
                w.u8(SYNC_VERSION)?;
                w.u32(node)?;
                w.u32(epoch)?;
                w.u64(clock)?;
                w.u32(start_seq)?;
                w.u32(incarnation)?;
            }
            SyncMsg::HelloAck {
                node,
                epoch,
                clock,
                incarnation,
            } => {
                w.u8(HELLO_ACK)?;
                w.u8(SYNC_VERSION)?;
                w.u32(node)?;
                w.u32(epoch)?;
                w.u64(clock)?;
                w.u32(incarnation)?;
            }
            SyncMsg::HelloReq { epoch } => {
                w.u8(HELLO_REQ)?;
                w.u8(SYNC_VERSION)?;
                w.u32(epoch)?;
            }
            SyncMsg::Pad { want, len } => {
                w.u8(PAD)?;
                w.u8(SYNC_VERSION)?;
                w.u32(want)?;
                let mut left = len as usize;
                while left > 0 {
                    let k = left.min(64);
                    w.bytes(&[0u8; 64][..k])?;
                    left -= k;
                }
            }
            SyncMsg::Data {
                epoch,
                seq,
                clock,
                dialect,
                offset,
                total_len,
                chunk,
            } => {
                w.u8(DATA)?;
                w.u8(SYNC_VERSION)?;
                w.u32(epoch)?;
                w.u32(seq)?;
                w.u64(clock)?;
                w.u8(dialect_code(dialect))?;
                w.u16(offset)?;
                w.u16(total_len)?;
                w.bytes(chunk)?;
            }
            SyncMsg::Records {
                epoch,
                seq,
                count,
                body,
            } => {
                w.u8(RECORDS)?;
                w.u8(SYNC_VERSION)?;
                w.u32(epoch)?;
                w.u32(seq)?;
                w.u8(RECORD_VERSION)?;
                w.u16(count)?;
                w.bytes(body)?;
            }
            SyncMsg::Ack {
                epoch,
                cum,
                delay,
                nacks,
            } => {
                w.u8(ACK)?;
                w.u8(SYNC_VERSION)?;
                w.u32(epoch)?;
                w.u32(cum)?;
                w.u16(delay.0)?;
                w.u8((nacks.len() / 8) as u8)?;
                w.bytes(nacks)?;
            }
            SyncMsg::Skip { epoch, first, last } => {
                w.u8(SKIP)?;
                w.u8(SYNC_VERSION)?;
                w.u32(epoch)?;
                w.u32(first)?;
                w.u32(last)?;
            }
            SyncMsg::Alive { epoch, next_seq } => {
                w.u8(ALIVE)?;
                w.u8(SYNC_VERSION)?;
                w.u32(epoch)?;
                w.u32(next_seq)?;
            }
            SyncMsg::Summary {
                digest,
                count,
                leaves_log2,
                want_reply,
                clock,
            } => {
                w.u8(SUMMARY)?;
                w.u8(SYNC_VERSION)?;
                w.bytes(&digest.to_be_bytes())?;
                w.u32(count)?;
                w.u8(leaves_log2)?;
                w.u8(want_reply as u8)?;
                w.u64(clock)?;
            }
            SyncMsg::Ranges {
                first,
                span,
                digests,
            } => {
                w.u8(RANGES)?;
                w.u8(SYNC_VERSION)?;
                w.u32(first)?;
                w.u32(span)?;
                w.u8((digests.len() / 16) as u8)?;
                w.bytes(digests)?;
            }
            SyncMsg::LeafReq { leaves } => {
                w.u8(LEAF_REQ)?;
                w.u8(SYNC_VERSION)?;
                w.u16((leaves.len() / 4) as u16)?;
                w.bytes(leaves)?;
            }
            SyncMsg::StateReq { ids } => {
                w.u8(STATE_REQ)?;
                w.u8(SYNC_VERSION)?;
                w.u16((ids.len() / 12) as u16)?;
                w.bytes(ids)?;
            }
        }
        Ok(w.pos())
    }
}

/// The messages of one datagram: the datagram itself, or the parts of a BUNDLE
/// (`13 · version · n × (len u16 · message)`, n ≥ 1, each `len` ≥ 2, no BUNDLE inside, nothing
/// after the last part). The framing is checked whole here, before any part is returned.
pub fn datagram_parts(buf: &[u8]) -> Result<Parts<'_>> {
    if buf.first() != Some(&msg_type::BUNDLE) {
        if buf.is_empty() {
            return Err(SyncError::Truncated {
                what: "sync header",
                need: 2,
                have: 0,
            });
        }
        return Ok(Parts {
            rest: buf,
            bundle: false,
        });
    }
    let mut r = Rd::new(buf, "bundle");
    r.u8()?;
    let ver = r.u8()?;
    if ver != SYNC_VERSION {
        return Err(SyncError::BadVersion(ver));
    }
    let body = r.rest();
    let mut r = Rd::new(body, "bundled message");
    let mut n = 0;
    while r.remaining() > 0 {
        let len = r.u16()? as usize;
        let m = r.bytes(len)?;
        if len < 2 || m[0] == msg_type::BUNDLE {
            return Err(SyncError::BadValue {
                what: "bundled message",
                value: len as u64,
            });
        }
        n += 1;
    }
    if n == 0 {
        return Err(SyncError::BadValue {
            what: "empty bundle",
            value: 0,
        });
    }
    Ok(Parts {
        rest: body,
        bundle: true,
    })
}

/// Iterator over a datagram's messages (see [`datagram_parts`]).
#[derive(Clone)]
pub struct Parts<'a> {
    rest: &'a [u8],
    bundle: bool,
}

impl<'a> Iterator for Parts<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        if !self.bundle {
            return Some(std::mem::take(&mut self.rest));
        }
        // Framing was validated by `datagram_parts`.
        let len = u16::from_be_bytes([self.rest[0], self.rest[1]]) as usize;
        let (m, rest) = self.rest[BUNDLE_LEN_PREFIX..].split_at(len);
        self.rest = rest;
        Some(m)
    }
}

/// Bytes a message of `len` adds to a datagram of `tail` bytes when bundled into it
/// (`bundled`: the datagram is a BUNDLE already; else it becomes one).
pub fn bundled_len(tail: usize, bundled: bool, len: usize) -> usize {
    let header = if bundled {
        0
    } else {
        BUNDLE_HDR + BUNDLE_LEN_PREFIX
    };
    tail + header + BUNDLE_LEN_PREFIX + len
}

/// Iterate the `(first, last)` ranges of an ACK's NACK list.
pub fn nack_ranges(nacks: &[u8]) -> impl Iterator<Item = (u32, u32)> + '_ {
    nacks.chunks_exact(8).map(|c| {
        (
            u32::from_be_bytes(c[0..4].try_into().unwrap()),
            u32::from_be_bytes(c[4..8].try_into().unwrap()),
        )
    })
}

/// Iterate a RANGES message's digests.
pub fn range_digests(d: &[u8]) -> impl Iterator<Item = Digest> + '_ {
    d.chunks_exact(16)
        .map(|c| Digest::from_be_bytes(c.try_into().unwrap()))
}

pub fn u32s(b: &[u8]) -> impl Iterator<Item = u32> + '_ {
    b.chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
}

pub fn state_ids(b: &[u8]) -> impl Iterator<Item = StateId> + '_ {
    b.chunks_exact(12).map(|c| {
        StateId::new(
            u64::from_be_bytes(c[0..8].try_into().unwrap()),
            u32::from_be_bytes(c[8..12].try_into().unwrap()),
        )
    })
}

/// One state record.
// Plain value (no heap) on purpose: records are decoded and applied one at a time.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A full state (its `expire`/`creation` relative to the sender's now) and its version.
    State(Version, StateRepr),
    /// The state was deleted at `Version`.
    Tombstone(StateId, Version),
    /// All states of `creator` (on `ifname`, or all if empty) older than `Version` were cleared.
    Clear {
        creator: u32,
        ifname: [u8; 16],
        version: Version,
    },
}

/// Iterator over the records of a RECORDS body.
pub struct Records<'a> {
    r: Rd<'a>,
    left: u16,
    failed: bool,
}

impl<'a> Records<'a> {
    pub fn new(body: &'a [u8], count: u16) -> Records<'a> {
        Records {
            r: Rd::new(body, "record"),
            left: count,
            failed: false,
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Record>;
    fn next(&mut self) -> Option<Result<Record>> {
        if self.failed {
            return None;
        }
        if self.left == 0 {
            if self.r.remaining() != 0 {
                self.failed = true;
                return Some(Err(SyncError::TrailingBytes(self.r.remaining())));
            }
            return None;
        }
        self.left -= 1;
        let rec = decode_record(&mut self.r);
        if rec.is_err() {
            self.failed = true;
        }
        Some(rec)
    }
}

fn get_version(r: &mut Rd) -> Result<Version> {
    Ok(Version::new(r.u64()?, r.u32()?))
}
fn put_version(w: &mut Wr, v: Version) -> Result<()> {
    w.u64(v.clock)?;
    w.u32(v.node)
}

/// A state record's body: `len u16 · bytes`.
fn state_record_body<'a>(r: &mut Rd<'a>) -> Result<Rd<'a>> {
    let len = r.u16()? as usize;
    Ok(Rd::new(r.bytes(len)?, "state record"))
}

fn decode_record(r: &mut Rd) -> Result<Record> {
    match r.u8()? {
        record_kind::STATE => {
            let mut body = state_record_body(r)?;
            let v = get_version(&mut body)?;
            let s = decode_state(&mut body)?;
            body.end()?;
            Ok(Record::State(v, s))
        }
        kind => decode_small_record(kind, r),
    }
}

/// Whether `count` records fill `body` exactly and each would decode: what iterating
/// [`Records`] would find, without building the states (a third of a bulk sync's time went
/// to decoding each state once more only to check it).
pub fn check_records(body: &[u8], count: u16) -> Result<()> {
    let mut r = Rd::new(body, "record");
    for _ in 0..count {
        match r.u8()? {
            record_kind::STATE => {
                let mut body = state_record_body(&mut r)?;
                get_version(&mut body)?;
                check_state(&mut body)?;
                body.end()?;
            }
            kind => drop(decode_small_record(kind, &mut r)?),
        }
    }
    r.end()
}

/// The records other than states (small: decoding them is checking them).
fn decode_small_record(kind: u8, r: &mut Rd) -> Result<Record> {
    match kind {
        record_kind::TOMBSTONE => {
            let id = StateId::new(r.u64()?, r.u32()?);
            Ok(Record::Tombstone(id, get_version(r)?))
        }
        record_kind::CLEAR => {
            let creator = r.u32()?;
            let ifname = get_name::<16>(r)?;
            Ok(Record::Clear {
                creator,
                ifname,
                version: get_version(r)?,
            })
        }
        k => Err(SyncError::BadValue {
            what: "record kind",
            value: k as u64,
        }),
    }
}

/// Append one record; returns false (writing nothing) if it does not fit.
pub fn encode_record(rec: &Record, out: &mut [u8]) -> Result<usize> {
    let mut w = Wr::new(out);
    match rec {
        Record::State(v, s) => {
            w.u8(record_kind::STATE)?;
            let at = w.pos();
            w.u16(0)?;
            put_version(&mut w, *v)?;
            encode_state(&mut w, s)?;
            let len = w.pos() - at - 2;
            w.patch_u16(at, len as u16);
        }
        Record::Tombstone(id, v) => {
            w.u8(record_kind::TOMBSTONE)?;
            w.u64(id.id)?;
            w.u32(id.creator)?;
            put_version(&mut w, *v)?;
        }
        Record::Clear {
            creator,
            ifname,
            version,
        } => {
            w.u8(record_kind::CLEAR)?;
            w.u32(*creator)?;
            put_name(&mut w, ifname)?;
            put_version(&mut w, *version)?;
        }
    }
    Ok(w.pos())
}

#[inline(always)]
fn put_af(w: &mut Wr, af: AddrFamily) -> Result<()> {
    match af {
        AddrFamily::Unspec => w.bytes(&[0, 0]),
        AddrFamily::Inet => w.bytes(&[1, 0]),
        AddrFamily::Inet6 => w.bytes(&[2, 0]),
        AddrFamily::Other(v) => w.bytes(&[3, v]),
    }
}
#[inline(always)]
fn get_af(r: &mut Rd) -> Result<AddrFamily> {
    let [t, v] = r.array()?;
    Ok(match (t, v) {
        (0, 0) => AddrFamily::Unspec,
        (1, 0) => AddrFamily::Inet,
        (2, 0) => AddrFamily::Inet6,
        (3, v) => AddrFamily::Other(v),
        _ => {
            return Err(SyncError::BadValue {
                what: "address family",
                value: ((t as u64) << 8) | v as u64,
            })
        }
    })
}

/// Names travel as `len u8 · bytes` up to the first NUL.
fn put_name(w: &mut Wr, name: &[u8]) -> Result<()> {
    let n = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    w.u8(n as u8)?;
    w.bytes(&name[..n])
}
fn get_name<const N: usize>(r: &mut Rd) -> Result<[u8; N]> {
    let b = check_name::<N>(r)?;
    let mut out = [0u8; N];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

/// A name's bytes, checked to fit `[u8; N]` with its NUL.
fn check_name<'a, const N: usize>(r: &mut Rd<'a>) -> Result<&'a [u8]> {
    let n = r.u8()? as usize;
    // Keep room for the terminating NUL the kernels rely on.
    if n >= N {
        return Err(SyncError::BadValue {
            what: "name length",
            value: n as u64,
        });
    }
    let b = r.bytes(n)?;
    if b.contains(&0) {
        return Err(SyncError::BadValue {
            what: "name byte",
            value: 0,
        });
    }
    Ok(b)
}

#[inline(always)]
fn put_peer(w: &mut Wr, p: &PeerRepr) -> Result<()> {
    w.u16(p.scrub.flags)?;
    w.u8(p.scrub.ttl)?;
    w.u8(p.scrub.scrub_flag)?;
    w.u32(p.scrub.ts_mod)?;
    w.u32(p.seqlo)?;
    w.u32(p.seqhi)?;
    w.u32(p.seqdiff)?;
    w.u16(p.max_win)?;
    w.u16(p.mss)?;
    w.u8(p.state)?;
    w.u8(p.wscale)
}
#[inline(always)]
fn get_peer(r: &mut Rd) -> Result<PeerRepr> {
    Ok(PeerRepr {
        scrub: ScrubRepr {
            flags: r.u16()?,
            ttl: r.u8()?,
            scrub_flag: r.u8()?,
            ts_mod: r.u32()?,
        },
        seqlo: r.u32()?,
        seqhi: r.u32()?,
        seqdiff: r.u32()?,
        max_win: r.u16()?,
        mss: r.u16()?,
        state: r.u8()?,
        wscale: r.u8()?,
    })
}

fn encode_state(w: &mut Wr, s: &StateRepr) -> Result<()> {
    // The fixed-size head goes through a stack block (its writes compile to stores), then
    // out in one copy.
    let outer = w;
    let mut head = [0u8; STATE_HEAD_LEN];
    let mut h = Wr::new(&mut head);
    let w = &mut h;
    w.u64(s.id.id)?;
    w.u32(s.id.creator)?;
    put_af(w, s.af)?;
    for b in [
        s.proto,
        s.direction,
        s.log,
        s.allow_opts,
        s.timeout,
        s.sync_flags,
        s.updates,
        s.rt,
        s.min_ttl,
        s.set_tos,
        s.set_prio[0],
        s.set_prio[1],
    ] {
        w.u8(b)?;
    }
    for v in [s.state_flags, s.max_mss, s.qid, s.pqid, s.dnpipe, s.dnrpipe] {
        w.u16(v)?;
    }
    for v in [s.rule, s.anchor, s.nat_rule, s.creation, s.expire] {
        w.u32(v)?;
    }
    w.u32(s.rtableid[0] as u32)?;
    w.u32(s.rtableid[1] as u32)?;
    for v in [s.packets[0], s.packets[1], s.bytes[0], s.bytes[1]] {
        w.u64(v)?;
    }
    w.bytes(&s.rt_addr)?;
    for k in &s.key {
        w.bytes(&k.addr[0])?;
        w.bytes(&k.addr[1])?;
        w.u16(k.port[0])?;
        w.u16(k.port[1])?;
        w.u16(k.rdomain)?;
        put_af(w, k.af)?;
    }
    put_peer(w, &s.src)?;
    put_peer(w, &s.dst)?;
    for af in s.af_1500 {
        put_af(w, af)?;
    }
    w.u8(s.proto_1500[0])?;
    w.u8(s.proto_1500[1])?;
    debug_assert_eq!(w.pos(), STATE_HEAD_LEN);
    let w = outer;
    w.bytes(&head)?;
    put_name(w, &s.ifname)?;
    put_name(w, &s.rt_ifname)?;
    put_name(w, &s.tagname)?;
    put_name(w, &s.orig_ifname)
}

/// Bytes of a peer (scrub, sequence window, state) on the wire.
const PEER_LEN: usize = 26;
/// Bytes from `proto` to `rt_addr`: 12 single bytes, 6 × u16, 5 × u32, rtableid, packets,
/// bytes, rt_addr.
const STATE_FIXED_LEN: usize = 12 + 6 * 2 + 5 * 4 + 2 * 4 + 2 * 8 + 2 * 8 + 16;
/// Bytes of a state key before its address family: two addresses, two ports, rdomain.
const KEY_LEN: usize = 2 * 16 + 2 * 2 + 2;
/// Bytes of a state before its names: id, creator, af, the fixed fields, the keys, the
/// peers, the FreeBSD 1500 families and protocols.
const STATE_HEAD_LEN: usize =
    8 + 4 + 2 + STATE_FIXED_LEN + 2 * (KEY_LEN + 2) + 2 * PEER_LEN + 3 * 2 + 2;

#[inline(always)]
fn get_creator(r: &mut Rd) -> Result<u32> {
    match r.u32()? {
        0 => Err(SyncError::BadValue {
            what: "creatorid",
            value: 0,
        }),
        c => Ok(c),
    }
}

/// What [`decode_state`] checks, in its order, reading the same bytes.
fn check_state(r: &mut Rd) -> Result<()> {
    let mut h = Rd::new(r.bytes(STATE_HEAD_LEN)?, "state");
    h.u64()?;
    get_creator(&mut h)?;
    get_af(&mut h)?;
    h.bytes(STATE_FIXED_LEN)?;
    for _ in 0..2 {
        h.bytes(KEY_LEN)?;
        get_af(&mut h)?;
    }
    h.bytes(2 * PEER_LEN)?;
    for _ in 0..3 {
        get_af(&mut h)?;
    }
    h.bytes(2)?;
    h.end()?;
    check_name::<16>(r)?;
    check_name::<16>(r)?;
    check_name::<64>(r)?;
    check_name::<16>(r).map(drop)
}

fn decode_state(r: &mut Rd) -> Result<StateRepr> {
    // The fixed-size head, checked for length once: the reads below then compile to loads
    // (a bulk sync decodes every state).
    let outer = r;
    let mut h = Rd::new(outer.bytes(STATE_HEAD_LEN)?, "state");
    let r = &mut h;
    let id = r.u64()?;
    let mut s = StateRepr {
        id: StateId::new(id, get_creator(r)?),
        ..Default::default()
    };
    s.af = get_af(r)?;
    let b: [u8; 12] = r.array()?;
    [
        s.proto,
        s.direction,
        s.log,
        s.allow_opts,
        s.timeout,
        s.sync_flags,
        s.updates,
        s.rt,
        s.min_ttl,
        s.set_tos,
        s.set_prio[0],
        s.set_prio[1],
    ] = b;
    s.state_flags = r.u16()?;
    s.max_mss = r.u16()?;
    s.qid = r.u16()?;
    s.pqid = r.u16()?;
    s.dnpipe = r.u16()?;
    s.dnrpipe = r.u16()?;
    s.rule = r.u32()?;
    s.anchor = r.u32()?;
    s.nat_rule = r.u32()?;
    s.creation = r.u32()?;
    s.expire = r.u32()?;
    s.rtableid = [r.u32()? as i32, r.u32()? as i32];
    s.packets = [r.u64()?, r.u64()?];
    s.bytes = [r.u64()?, r.u64()?];
    s.rt_addr = r.array()?;
    for k in &mut s.key {
        *k = StateKeyRepr {
            addr: [r.array()?, r.array()?],
            port: [r.u16()?, r.u16()?],
            rdomain: r.u16()?,
            af: get_af(r)?,
        };
    }
    s.src = get_peer(r)?;
    s.dst = get_peer(r)?;
    for af in &mut s.af_1500 {
        *af = get_af(r)?;
    }
    s.proto_1500 = [r.u8()?, r.u8()?];
    let r = outer;
    s.ifname = get_name(r)?;
    s.rt_ifname = get_name(r)?;
    s.tagname = get_name(r)?;
    s.orig_ifname = get_name(r)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_delay_is_in_units_of_100_us_and_saturates() {
        use std::time::Duration;
        assert_eq!(QueueDelay::from_duration(Duration::from_micros(199)).0, 1);
        assert_eq!(QueueDelay(3).to_duration(), Duration::from_micros(300));
        assert_eq!(
            QueueDelay::from_duration(Duration::from_secs(10)).0,
            u16::MAX
        );
        // ACK: the delay sits between `cum` and the range count.
        let m = SyncMsg::Ack {
            epoch: 1,
            cum: 2,
            delay: QueueDelay(0x0102),
            nacks: &[],
        };
        let mut b = [0u8; 64];
        let n = m.encode(&mut b).unwrap();
        assert_eq!(&b[..n], &[5, SYNC_VERSION, 0, 0, 0, 1, 0, 0, 0, 2, 1, 2, 0]);
        assert_eq!(n, ACK_HDR);
        // At most 32 ranges: 33 is a decode error, 32 decodes.
        let mut big = vec![5, SYNC_VERSION, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 33];
        big.extend(std::iter::repeat_n(0u8, 33 * 8));
        assert!(SyncMsg::decode(&big).is_err());
        big[12] = 32;
        big.truncate(ACK_HDR + 32 * 8);
        assert!(SyncMsg::decode(&big).is_ok());
    }

    fn sample_state() -> StateRepr {
        let mut s = StateRepr {
            id: StateId::new(0x0102_0304_0506_0708, 0xdead_beef),
            proto: 6,
            af: AddrFamily::Inet6,
            timeout: 2,
            expire: 300,
            rtableid: [-1, 3],
            packets: [1, u64::MAX],
            ..Default::default()
        };
        s.ifname[..3].copy_from_slice(b"em0");
        s.tagname[..4].copy_from_slice(b"tag1");
        s.key[0].addr[0] = [7; 16];
        s.key[1].af = AddrFamily::Other(99);
        s.src.seqlo = 0x1122_3344;
        s.dst.state = 4;
        s
    }

    #[test]
    fn record_round_trip() {
        let recs = [
            Record::State(Version::new(42, 7), sample_state()),
            Record::Tombstone(StateId::new(9, 8), Version::new(1, 2)),
            Record::Clear {
                creator: 5,
                ifname: crate::wire::name_field("em1"),
                version: Version::new(3, 4),
            },
        ];
        let body = encode_all(&recs);
        assert!(body.len() <= STATE_RECORD_MAX + TOMBSTONE_LEN + 40);
        let got: Vec<Record> = Records::new(&body, 3).map(|r| r.unwrap()).collect();
        assert_eq!(got, recs);
        // One record too many declared: error, not panic.
        assert!(Records::new(&body, 4).any(|r| r.is_err()));
        assert!(Records::new(&body, 2).any(|r| r.is_err()));
    }

    #[test]
    fn messages_round_trip() {
        let msgs = [
            SyncMsg::Hello {
                node: 1,
                epoch: 2,
                clock: 3,
                start_seq: 4,
                incarnation: 5,
            },
            SyncMsg::HelloAck {
                node: 1,
                epoch: 2,
                clock: 3,
                incarnation: 5,
            },
            SyncMsg::HelloReq { epoch: 7 },
            SyncMsg::Data {
                epoch: 1,
                seq: 2,
                clock: 3,
                dialect: Dialect::OpenbsdV6,
                offset: 7,
                total_len: 10,
                chunk: &[1, 2, 3],
            },
            SyncMsg::Ack {
                epoch: 1,
                cum: 5,
                delay: QueueDelay(300),
                nacks: &[0, 0, 0, 7, 0, 0, 0, 9],
            },
            SyncMsg::Skip {
                epoch: 1,
                first: 2,
                last: 3,
            },
            SyncMsg::Alive {
                epoch: 1,
                next_seq: 9,
            },
            SyncMsg::Summary {
                digest: Digest(12345),
                count: 3,
                leaves_log2: 12,
                want_reply: true,
                clock: 77,
            },
            SyncMsg::Ranges {
                first: 0,
                span: 64,
                digests: &[1u8; 32],
            },
            SyncMsg::LeafReq {
                leaves: &[0, 0, 0, 1],
            },
            SyncMsg::StateReq { ids: &[5u8; 12] },
            SyncMsg::Pad { want: 9, len: 0 },
            SyncMsg::Pad { want: 0, len: 100 },
        ];
        let mut buf = [0u8; 256];
        for m in &msgs {
            let n = m.encode(&mut buf).unwrap();
            assert_eq!(SyncMsg::decode(&buf[..n]).unwrap(), *m);
            // Every truncation is an error; one extra byte is an error (except open-ended DATA).
            for cut in 0..n {
                let open_ended = match m {
                    SyncMsg::Data { .. } => cut > DATA_HDR,
                    SyncMsg::Pad { .. } => cut >= PAD_HDR,
                    _ => false,
                };
                if !open_ended {
                    assert!(SyncMsg::decode(&buf[..cut]).is_err(), "{m:?} cut {cut}");
                }
            }
        }
    }

    /// `send_data` queues a DATA message as its header (encoded with an empty chunk) and
    /// the chunk, gathered by the ring: the same bytes as the whole message encoded, alone
    /// and joined to a bundle.
    #[test]
    fn data_header_and_chunk_gather_to_the_message() {
        use crate::sync::link::PacketRing;
        let chunk: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
        fn data(chunk: &[u8]) -> SyncMsg<'_> {
            SyncMsg::Data {
                epoch: 3,
                seq: 4,
                clock: 5,
                dialect: Dialect::OpenbsdV6,
                offset: 6,
                total_len: 900,
                chunk,
            }
        }
        let mut whole = [0u8; 400];
        let n = data(&chunk).encode(&mut whole).unwrap();
        let mut hdr = [0u8; DATA_HDR];
        assert_eq!(data(&[]).encode(&mut hdr), Ok(DATA_HDR));
        let alive = SyncMsg::Alive {
            epoch: 1,
            next_seq: 2,
        };
        let mut x = [0u8; 64];
        let na = alive.encode(&mut x).unwrap();
        let (mut gathered, mut plain) = (PacketRing::new(8, 4096), PacketRing::new(8, 4096));
        for ring in [&mut gathered, &mut plain] {
            ring.push_bundled(&x[..na], 1400);
        }
        gathered.push_bundled_parts(&[&hdr, &chunk], 1400);
        plain.push_bundled(&whole[..n], 1400);
        gathered.push_parts(&[&hdr, &chunk]);
        plain.push(&whole[..n]);
        let (mut a, mut b) = ([0u8; 1400], [0u8; 1400]);
        for _ in 0..2 {
            let la = gathered.pop_into(&mut a).unwrap();
            assert_eq!(Some(la), plain.pop_into(&mut b));
            assert_eq!(a[..la], b[..la]);
        }
        assert!(gathered.is_empty());
    }

    #[test]
    fn bundles_split_strictly() {
        use crate::sync::link::PacketRing;
        let a = SyncMsg::Alive {
            epoch: 1,
            next_seq: 2,
        };
        let b = SyncMsg::HelloReq { epoch: 9 };
        let (mut x, mut y) = ([0u8; 64], [0u8; 64]);
        let (na, nb) = (a.encode(&mut x).unwrap(), b.encode(&mut y).unwrap());
        let mut ring = PacketRing::new(8, 4096);
        ring.push_bundled(&x[..na], 1400);
        assert_eq!(ring.tail_room(1400), 1400 - bundled_len(na, false, 0));
        ring.push_bundled(&y[..nb], 1400);
        ring.push_bundled(&x[..na], 1400);
        assert_eq!(ring.len(), 1, "three small messages share one datagram");
        let mut d = [0u8; 128];
        let n = ring.pop_into(&mut d).unwrap();
        assert_eq!(n, BUNDLE_HDR + 3 * BUNDLE_LEN_PREFIX + 2 * na + nb);
        let parts: Vec<_> = datagram_parts(&d[..n]).unwrap().collect();
        assert_eq!(parts, [&x[..na], &y[..nb], &x[..na]]);
        // A lone message is sent as itself, not as a bundle of one.
        ring.push_bundled(&y[..nb], 1400);
        assert_eq!(ring.pop_into(&mut d), Some(nb));
        assert_eq!(datagram_parts(&d[..nb]).unwrap().count(), 1);
        // Too big to join: a datagram of its own.
        ring.push_bundled(&x[..na], na + 5);
        ring.push_bundled(&y[..nb], na + 5);
        assert_eq!(ring.len(), 2);

        let bundle = |parts: &[&[u8]]| {
            let mut v = vec![msg_type::BUNDLE, SYNC_VERSION];
            for p in parts {
                v.extend((p.len() as u16).to_be_bytes());
                v.extend(*p);
            }
            v
        };
        let ok = bundle(&[&x[..na], &y[..nb]]);
        assert_eq!(datagram_parts(&ok).unwrap().count(), 2);
        // Every truncation and one trailing byte are refused, as are empty and nested
        // bundles, a part shorter than a message header and another version.
        for cut in 0..ok.len() {
            if cut != BUNDLE_HDR + BUNDLE_LEN_PREFIX + na {
                assert!(datagram_parts(&ok[..cut]).is_err(), "cut {cut}");
            }
        }
        let mut trailing = ok.clone();
        trailing.push(0);
        assert!(datagram_parts(&trailing).is_err());
        assert!(datagram_parts(&bundle(&[])).is_err());
        assert!(datagram_parts(&bundle(&[&ok])).is_err());
        assert!(datagram_parts(&bundle(&[&[7]])).is_err());
        let mut old = ok.clone();
        old[1] = 2;
        assert_eq!(datagram_parts(&old).err(), Some(SyncError::BadVersion(2)));
        // A BUNDLE is never a message on its own.
        assert!(SyncMsg::decode(&ok).is_err());
    }

    #[test]
    fn pad_is_zeros_only() {
        let mut buf = [0u8; 64];
        let n = SyncMsg::Pad { want: 1, len: 20 }.encode(&mut buf).unwrap();
        assert_eq!(n, PAD_HDR + 20);
        assert!(buf[PAD_HDR..n].iter().all(|&b| b == 0));
        buf[n - 1] = 1;
        assert!(SyncMsg::decode(&buf[..n]).is_err());
    }

    #[test]
    fn rejects_bad_header() {
        assert_eq!(SyncMsg::decode(&[1, 9]), Err(SyncError::BadVersion(9)));
        assert_eq!(
            SyncMsg::decode(&[200, SYNC_VERSION]),
            Err(SyncError::UnknownType(200))
        );
    }

    /// Records of every kind, for the check pass's tests.
    fn check_sample() -> (Vec<u8>, u16) {
        let mut with_names = sample_state();
        with_names.rt_ifname[..4].copy_from_slice(b"pppo");
        with_names.orig_ifname[..2].copy_from_slice(b"lo");
        let recs = [
            Record::State(Version::new(1, 2), sample_state()),
            Record::Tombstone(StateId::new(7, 9), Version::new(2, 2)),
            Record::State(Version::new(3, 2), with_names),
            Record::Clear {
                creator: 5,
                ifname: crate::wire::name_field("em1"),
                version: Version::new(3, 4),
            },
        ];
        (encode_all(&recs), recs.len() as u16)
    }

    /// A RECORDS body of `recs`.
    fn encode_all(recs: &[Record]) -> Vec<u8> {
        let mut body = vec![0u8; 2000];
        let mut n = 0;
        for r in recs {
            n += encode_record(r, &mut body[n..]).unwrap();
        }
        body.truncate(n);
        body
    }

    fn agree(body: &[u8], count: u16) -> bool {
        let decoded = Records::new(body, count).all(|r| r.is_ok());
        check_records(body, count).is_ok() == decoded
    }

    /// `decode` refuses a message whose records do not all decode (the check pass is what
    /// keeps a bad datagram from acting in part); `decode_checked` is for what it accepted.
    #[test]
    fn decode_checks_every_record_and_decode_checked_does_not() {
        let body = encode_all(&[Record::Tombstone(StateId::new(7, 9), Version::new(2, 2))]);
        let msg = |count| SyncMsg::Records {
            epoch: 1,
            seq: 2,
            count,
            body: &body,
        };
        let mut buf = [0u8; 256];
        for (count, ok) in [(1, true), (2, false), (0, false)] {
            let n = msg(count).encode(&mut buf).unwrap();
            assert_eq!(SyncMsg::decode(&buf[..n]).is_ok(), ok, "count {count}");
            assert!(SyncMsg::decode_checked(&buf[..n]).is_ok(), "count {count}");
        }
    }

    /// The fixed-size head is what the encoder writes before the names.
    #[test]
    fn a_state_record_is_its_head_and_its_names() {
        let s = sample_state();
        let body = encode_all(&[Record::State(Version::new(1, 2), s)]);
        let names: usize = [&s.ifname[..], &s.rt_ifname, &s.tagname, &s.orig_ifname]
            .iter()
            .map(|n| 1 + n.iter().position(|&b| b == 0).unwrap_or(n.len()))
            .sum();
        // kind, len, version (12), head, names
        assert_eq!(body.len(), 1 + 2 + 12 + STATE_HEAD_LEN + names);
    }

    /// The check pass and the decoder agree on every single-byte change (to the values the
    /// checks care about: 0, the family tags, name lengths), every cut and a wrong count.
    #[test]
    fn checking_records_agrees_with_decoding_them() {
        let (body, count) = check_sample();
        assert!(check_records(&body, count).is_ok());
        for i in 0..body.len() {
            for v in [0u8, 1, 2, 3, 4, 15, 16, 63, 64, 0xff] {
                let mut b = body.clone();
                b[i] = v;
                assert!(agree(&b, count), "byte {i} = {v}");
            }
            assert!(agree(&body[..i], count), "cut at {i}");
        }
        for c in [0, count - 1, count + 1] {
            assert!(agree(&body, c), "count {c}");
        }
    }

    proptest::proptest! {
        /// And on several changes at once.
        #[test]
        fn checking_records_agrees_on_any_changes(
            edits in proptest::collection::vec((0usize..2000, proptest::num::u8::ANY), 1..6),
        ) {
            let (mut body, count) = check_sample();
            let n = body.len();
            for (at, v) in edits {
                body[at % n] = v;
            }
            proptest::prop_assert!(agree(&body, count));
        }
    }
}
