//! Packet framing per dialect: validation ([`Packet::new_checked`]), zero-copy iteration
//! ([`Messages`]) and building ([`PacketWriter`]).
//!
//! | | NetBSD v3 | OpenBSD v6 | FreeBSD v5 |
//! |---|---|---|---|
//! | sections | one action per packet, u8 count in the header | subheaders | subheaders |
//! | stride | fixed | `subh.len·4` (≥ known size) | fixed |
//! | end | `20 + count·size`; later bytes ignored | `header.len`; bytes beyond it are trimmed, a final 1–3 byte remnant ignored (as the kernel does) | EOF subheader ending exactly at `header.len` = buffer length |
//! | CLR / BUS | count 0, exactly one struct | normal | normal |
//! | refused | codes ≥ 11 | codes ≥ 16 with `len` or `count` 0 | codes 6, 8, 9, ≥ MAX, other versions' INS/UPD |
//!
//! Deviations from the kernels, all on the strict side: a bad value in one message rejects the
//! whole packet (kernels skip that message), an OpenBSD known action whose `subh.len` is
//! shorter than its struct is rejected (OpenBSD skips it), a FreeBSD packet must end with EOF,
//! and every name field must be NUL-terminated. Unknown OpenBSD actions with `len` and `count`
//! set, and OpenBSD's obsolete codes 1, 3, 8, 9, 11, 12, are skipped and yield no message.

use super::action::{self, Kind};
use super::field::*;
use super::header::{self, Subheader, FREEBSD_EOF};
use super::msg::UPD_C_MIN;
use super::{msg, Dialect, Message, Result, StateId, WireError, HEADER_LEN};

fn truncated(offset: usize, needed: usize, have: usize) -> WireError {
    WireError::Truncated {
        offset,
        needed,
        have,
    }
}

/// Infer the dialect of a packet starting at `pfsync_header`.
///
/// Version 3 is NetBSD and 6 OpenBSD. Version 5 is FreeBSD, whose struct version is only
/// visible in the INS/UPD action codes: 1301 if any section uses 1/3, else 1500 if any uses
/// 15/16, else 1400 (FreeBSD 14's default). Scanning stops at the first code it cannot size.
pub fn detect_dialect(buf: &[u8]) -> Result<Dialect> {
    if buf.len() < HEADER_LEN {
        return Err(truncated(0, HEADER_LEN, buf.len()));
    }
    match u8_at(buf, header::v56::VERSION) {
        3 => return Ok(Dialect::NetbsdV3),
        6 => return Ok(Dialect::OpenbsdV6),
        5 => {}
        found => return Err(WireError::BadVersion { found }),
    }
    let end = usize::from(be16(buf, header::v56::LEN)).min(buf.len());
    let (mut v1301, mut v1500) = (false, false);
    let mut off = HEADER_LEN;
    while off + header::subheader::SIZE <= end {
        let sh = Subheader::read(buf, off);
        let size = match sh.action {
            1 | 3 => {
                v1301 = true;
                msg::body_len(Dialect::Freebsd1301, Kind::Ins)
            }
            13 | 14 => msg::body_len(Dialect::Freebsd1400, Kind::Ins),
            15 | 16 => {
                v1500 = true;
                msg::body_len(Dialect::Freebsd1500, Kind::Ins)
            }
            c => match action::decode(Dialect::Freebsd1400, c) {
                Some(Kind::Eof) | None => break,
                Some(k) => msg::body_len(Dialect::Freebsd1400, k),
            },
        };
        off += header::subheader::SIZE + size * usize::from(sh.count);
    }
    Ok(if v1301 {
        Dialect::Freebsd1301
    } else if v1500 {
        Dialect::Freebsd1500
    } else {
        Dialect::Freebsd1400
    })
}

/// The shape of a packet that carries one run of `UPD_C` and nothing else, as the sending
/// kernel writes it, told from fixed offsets alone: what the capture socket's kernel filter
/// tests before it may shed a packet (`local::filter`). [`UpdCRun::matches`] is the same test
/// in Rust. It is narrower than "every message is a `UPD_C`" on purpose: a packet it matches
/// holds nothing but compressed updates, whatever its later bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdCRun {
    /// `pfsync_header.version`.
    pub version: u8,
    /// Offset of the action byte: NetBSD's header, else the first subheader.
    pub action_at: usize,
    /// The `UPD_C` action code.
    pub action: u8,
    /// Size of one `UPD_C`.
    pub msg_len: usize,
    /// v5/v6 framing: the run must end exactly at `header.len`.
    pub framed: Option<RunFraming>,
}

/// How a v5/v6 run of `UPD_C` fills its packet: `header.len` = `fixed + count · msg_len`
/// (NetBSD's count is a header byte and bytes beyond its messages are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunFraming {
    /// OpenBSD's subheader `len` (the message size in 32-bit words); FreeBSD's is padding.
    pub len_words: Option<u8>,
    /// Offset of the subheader's `count`.
    pub count_at: usize,
    /// Offset of `header.len` (u16, big-endian).
    pub len_at: usize,
    /// Header and subheader, plus FreeBSD's EOF subheader after the run.
    pub fixed: usize,
}

impl UpdCRun {
    pub fn of(dialect: Dialect) -> UpdCRun {
        let code = action::encode(dialect, Kind::UpdC).unwrap_or(4);
        let msg_len = msg::body_len(dialect, Kind::UpdC);
        let first = HEADER_LEN;
        let framed = match dialect {
            Dialect::NetbsdV3 => None,
            _ => Some(RunFraming {
                len_words: (dialect == Dialect::OpenbsdV6).then_some((msg_len / 4) as u8),
                count_at: first + header::subheader::COUNT,
                len_at: header::v56::LEN,
                fixed: first
                    + header::subheader::SIZE
                    + if dialect.is_freebsd() {
                        FREEBSD_EOF.len()
                    } else {
                        0
                    },
            }),
        };
        UpdCRun {
            version: dialect.version(),
            action_at: match dialect {
                Dialect::NetbsdV3 => header::netbsd::ACTION,
                _ => first + header::subheader::ACTION,
            },
            action: code,
            msg_len,
            framed,
        }
    }

    /// Bytes a packet must have before any of the tested fields can be read.
    pub fn min_len(&self) -> usize {
        match self.framed {
            None => HEADER_LEN,
            Some(_) => HEADER_LEN + header::subheader::SIZE,
        }
    }

    /// Does `pkt` (from `pfsync_header` on) have this shape?
    pub fn matches(&self, pkt: &[u8]) -> bool {
        if pkt.len() < self.min_len()
            || pkt[header::v56::VERSION] != self.version
            || pkt[self.action_at] != self.action
        {
            return false;
        }
        let Some(f) = self.framed else {
            return true;
        };
        if f.len_words.is_some_and(|w| pkt[self.action_at + 1] != w) {
            return false;
        }
        usize::from(be16(pkt, f.len_at)) == f.fixed + self.count(pkt) * self.msg_len
    }

    /// The run's message count (from a packet at least `min_len()` long).
    fn count(&self, pkt: &[u8]) -> usize {
        match self.framed {
            None => usize::from(pkt[header::netbsd::COUNT]),
            Some(f) => usize::from(be16(pkt, f.count_at)),
        }
    }

    /// Append the messages of the run `next` to the run in `out[..n]`, as one packet: the
    /// new length, or `None` if either is not exactly a run of this shape, their version or
    /// checksum bytes differ (another ruleset), or the result would not fit `out` or the
    /// count field. FreeBSD's EOF subheader moves to the end.
    pub fn join(&self, out: &mut [u8], n: usize, next: &[u8]) -> Option<usize> {
        if n > out.len() {
            return None;
        }
        // The messages start where the tested fields end.
        let msgs_at = self.min_len();
        let (tail, max_count) = match self.framed {
            None => (0, usize::from(u8::MAX)),
            Some(f) => (f.fixed - msgs_at, usize::from(u16::MAX)),
        };
        let (a, b) = (&out[..n], next);
        let cksum = header::v56::CKSUM..HEADER_LEN;
        if !self.matches(a) || !self.matches(b) || a[cksum.clone()] != b[cksum] {
            return None;
        }
        let (ca, cb) = (self.count(a), self.count(b));
        let len = |c: usize| msgs_at + c * self.msg_len + tail;
        if a.len() != len(ca) || b.len() < len(cb) {
            return None;
        }
        let add = cb * self.msg_len;
        if n + add > out.len() || ca + cb > max_count {
            return None;
        }
        let end = msgs_at + ca * self.msg_len;
        out.copy_within(end..n, end + add);
        out[end..end + add].copy_from_slice(&b[msgs_at..msgs_at + add]);
        let total = n + add;
        match self.framed {
            None => out[header::netbsd::COUNT] = (ca + cb) as u8,
            Some(f) => {
                put16(out, f.count_at, (ca + cb) as u16);
                put16(out, f.len_at, total as u16);
            }
        }
        Some(total)
    }
}

/// Size of `msg`'s body in `dialect`, or `None` if the dialect cannot carry it.
/// `Message::Eof` is framing, not a body: `Some(0)` everywhere.
pub fn message_wire_len(dialect: Dialect, msg: &Message) -> Option<usize> {
    let kind = action::kind_of(msg);
    if kind == Kind::Eof {
        return Some(0);
    }
    action::encode(dialect, kind)?;
    msg::check_expressible(dialect, msg).ok()?;
    Some(msg::body_len(dialect, kind))
}

/// A validated, zero-copy view over one whole pfsync packet of one dialect.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    dialect: Dialect,
    len: usize,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Validate header, framing and every message like the receiving kernel (see the module
    /// docs for the differences); afterwards iteration cannot fail.
    pub fn new_checked(buffer: T, dialect: Dialect) -> Result<Packet<T>> {
        let buf = buffer.as_ref();
        let len = if dialect == Dialect::NetbsdV3 {
            check_netbsd(buf)?
        } else {
            check_v56(buf, dialect)?
        };
        Ok(Packet {
            buffer,
            dialect,
            len,
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Bytes of the packet: `header.len` for v5/v6, header plus its messages for NetBSD.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// `pfcksum` / `pf_chksum`: the sender's ruleset checksum (zeros from OpenBSD 7.4+).
    pub fn checksum(&self) -> [u8; 16] {
        bytes(self.buffer.as_ref(), header::v56::CKSUM)
    }

    /// The packet's bytes (`..len()`).
    pub fn as_bytes(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(..self.len).unwrap_or(b)
    }

    /// Iterate the messages in wire order, without allocating.
    pub fn messages(&self) -> Messages<'_> {
        let buf = self.as_bytes();
        let mut it = Messages {
            buf,
            dialect: self.dialect,
            off: HEADER_LEN,
            kind: Kind::Ignore,
            left: 0,
            stride: 0,
            size: 0,
            done: false,
        };
        if self.dialect == Dialect::NetbsdV3 {
            // Single section described by the header; validated by `check_netbsd`.
            let code = u8_at(buf, header::netbsd::ACTION);
            if let Some(kind) = action::decode(self.dialect, code) {
                it.kind = kind;
                it.left = netbsd_count(kind, u8_at(buf, header::netbsd::COUNT));
                it.size = msg::body_len(self.dialect, kind);
                it.stride = it.size;
            }
            it.done = true;
        }
        it
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// NetBSD: CLR and BUS are sent with count 0 and the receiver reads exactly one struct;
/// INS_F/DEL_F carry nothing the kernel reads.
fn netbsd_count(kind: Kind, count: u8) -> usize {
    match kind {
        Kind::Clr | Kind::Bus => 1,
        Kind::Ignore | Kind::Eof => 0,
        _ => usize::from(count),
    }
}

fn check_netbsd(buf: &[u8]) -> Result<usize> {
    let d = Dialect::NetbsdV3;
    if buf.len() < HEADER_LEN {
        return Err(truncated(0, HEADER_LEN, buf.len()));
    }
    let version = u8_at(buf, header::netbsd::VERSION);
    if version != d.version() {
        return Err(WireError::BadVersion { found: version });
    }
    let code = u8_at(buf, header::netbsd::ACTION);
    let kind = action::decode(d, code).ok_or(WireError::BadAction {
        offset: header::netbsd::ACTION,
        action: code,
    })?;
    let n = netbsd_count(kind, u8_at(buf, header::netbsd::COUNT));
    let size = msg::body_len(d, kind);
    check_section(buf, d, kind, HEADER_LEN, n, size, size)?;
    Ok(HEADER_LEN + n * size)
}

/// Check that `n` bodies of `size` at `stride` are present from `at` and valid.
fn check_section(
    p: &[u8],
    d: Dialect,
    kind: Kind,
    at: usize,
    n: usize,
    stride: usize,
    size: usize,
) -> Result<()> {
    let need = n * stride;
    let have = p.len().saturating_sub(at);
    if need > have {
        return Err(truncated(at, need, have));
    }
    if matches!(kind, Kind::Ignore | Kind::Eof) {
        return Ok(());
    }
    for i in 0..n {
        let o = at + i * stride;
        let body = p.get(o..o + size).ok_or_else(|| truncated(o, size, 0))?;
        if kind == Kind::UpdC {
            // The relay's bulk: checked in line, on a fixed-size view.
            if let Some(b) = body.first_chunk::<UPD_C_MIN>() {
                msg::validate_upd_c(d, b, o)?;
                continue;
            }
        }
        msg::validate(d, kind, body, o)?;
    }
    Ok(())
}

fn check_v56(buf: &[u8], d: Dialect) -> Result<usize> {
    if buf.len() < HEADER_LEN {
        return Err(truncated(0, HEADER_LEN, buf.len()));
    }
    let version = u8_at(buf, header::v56::VERSION);
    if version != d.version() {
        return Err(WireError::BadVersion { found: version });
    }
    let len = usize::from(be16(buf, header::v56::LEN));
    if len < HEADER_LEN || len > buf.len() {
        return Err(WireError::BadLength {
            field: "header.len",
            offset: header::v56::LEN,
            value: len,
        });
    }
    let freebsd = d.is_freebsd();
    if freebsd && buf.len() > len {
        // FreeBSD's EOF check compares with the mbuf length, not header.len.
        return Err(WireError::TrailingBytes {
            offset: len,
            count: buf.len() - len,
        });
    }
    let p = buf.get(..len).unwrap_or(buf);
    let mut off = HEADER_LEN;
    loop {
        if len - off < header::subheader::SIZE {
            if freebsd {
                return Err(WireError::MissingEof { offset: off });
            }
            // OpenBSD's loop stops when less than a subheader remains.
            return Ok(len);
        }
        let sh = Subheader::read(p, off);
        let count = usize::from(sh.count);
        let body = off + header::subheader::SIZE;
        let kind = action::decode(d, sh.action);
        let (stride, size) = if freebsd {
            let kind = kind.ok_or(WireError::BadAction {
                offset: off,
                action: sh.action,
            })?;
            if kind == Kind::Eof {
                if body != len {
                    return Err(WireError::TrailingBytes {
                        offset: body,
                        count: len - body,
                    });
                }
                return Ok(len);
            }
            let size = msg::body_len(d, kind);
            (size, size)
        } else {
            let stride = usize::from(sh.len_words) * 4;
            let known = kind.map(|k| msg::body_len(d, k));
            match known {
                Some(size) if stride >= size => (stride, size),
                _ if count == 0 || stride == 0 => {
                    return Err(WireError::BadAction {
                        offset: off,
                        action: sh.action,
                    })
                }
                // A known action whose struct would be cut short: refuse (OpenBSD skips it).
                Some(_) => {
                    return Err(WireError::BadLength {
                        field: "subheader.len",
                        offset: off + header::subheader::LEN,
                        value: stride,
                    })
                }
                // Unknown future action: the sender told us its size, skip it.
                None => (stride, 0),
            }
        };
        check_section(
            p,
            d,
            kind.unwrap_or(Kind::Ignore),
            body,
            count,
            stride,
            size,
        )?;
        off = body + count * stride;
    }
}

/// Iterator over the messages of a validated [`Packet`].
///
/// OpenBSD's skipped sections yield nothing; FreeBSD's EOF yields [`Message::Eof`] last.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    buf: &'a [u8],
    dialect: Dialect,
    off: usize,
    kind: Kind,
    left: usize,
    stride: usize,
    size: usize,
    /// No further subheaders (NetBSD, or after EOF).
    done: bool,
}

impl<'a> Messages<'a> {
    /// The next body and its kind (`Kind::Eof` with an empty body for FreeBSD's EOF).
    #[inline(always)]
    fn next_body(&mut self) -> Option<(Kind, &'a [u8])> {
        loop {
            if self.left > 0 {
                let body = self.buf.get(self.off..self.off + self.size)?;
                self.off += self.stride;
                self.left -= 1;
                return Some((self.kind, body));
            }
            if self.done {
                return None;
            }
            if self.off + header::subheader::SIZE > self.buf.len() {
                self.done = true;
                return None;
            }
            let sh = Subheader::read(self.buf, self.off);
            let count = usize::from(sh.count);
            self.off += header::subheader::SIZE;
            let kind = action::decode(self.dialect, sh.action).unwrap_or(Kind::Ignore);
            if kind == Kind::Eof {
                self.done = true;
                return Some((Kind::Eof, &[]));
            }
            let size = msg::body_len(self.dialect, kind);
            let stride = if self.dialect == Dialect::OpenbsdV6 {
                usize::from(sh.len_words) * 4
            } else {
                size
            };
            if kind == Kind::Ignore || stride < size {
                self.off += stride * count;
                continue;
            }
            self.kind = kind;
            self.left = count;
            self.stride = stride;
            self.size = size;
        }
    }
}

impl Iterator for Messages<'_> {
    type Item = Message;

    #[inline]
    fn next(&mut self) -> Option<Message> {
        let (kind, body) = self.next_body()?;
        if kind == Kind::UpdC {
            // The relay's bulk: built in place from a fixed-size view (constant offsets
            // within a known length: no bounds checks, no copy of a whole `Message`).
            if let Some(b) = body.first_chunk::<UPD_C_MIN>() {
                return Some(Message::UpdC(msg::read_upd_c(self.dialect, b)));
            }
        }
        self.next_other(kind, body)
    }
}

impl Messages<'_> {
    /// The state ids of the `UPD_C` messages still ahead, read from their bodies without
    /// decoding the rest (what a state table prefetches before it applies the packet).
    pub fn upd_c_ids(&self) -> impl Iterator<Item = StateId> + Clone + '_ {
        let mut it = self.clone();
        core::iter::from_fn(move || loop {
            let (kind, body) = it.next_body()?;
            if kind == Kind::UpdC {
                if let Some(b) = body.get(..UPD_C_MIN) {
                    return Some(msg::upd_c_id(b));
                }
            }
        })
    }

    /// Every message but a well-formed `UPD_C`: written straight into the caller's slot.
    #[inline(never)]
    fn next_other(&mut self, kind: Kind, body: &[u8]) -> Option<Message> {
        if kind == Kind::Eof {
            return Some(Message::Eof);
        }
        if let Some(m) = msg::read(self.dialect, kind, body) {
            return Some(m);
        }
        // Not reached: sections of bodiless kinds are skipped by `next_body`.
        self.next()
    }
}

#[derive(Debug, Clone, Copy)]
struct Section {
    /// Subheader offset (v5/v6).
    at: usize,
    code: u8,
    count: usize,
    /// NetBSD CLR/BUS: the packet carries exactly this one struct.
    single: bool,
}

/// Builds packets of one dialect into a caller buffer, without allocating.
///
/// Consecutive messages of one action share a section. The header (and FreeBSD's EOF) is
/// written by [`finish`](Self::finish); `pfcksum` is zero unless [`set_checksum`](Self::set_checksum)
/// is called. NetBSD packets hold one action (≤ 255 messages; CLR and BUS alone, count 0).
#[derive(Debug)]
pub struct PacketWriter<'a> {
    dialect: Dialect,
    buf: &'a mut [u8],
    pos: usize,
    cksum: [u8; 16],
    section: Option<Section>,
}

impl<'a> PacketWriter<'a> {
    /// `buf.len()` is the largest packet to build (e.g. MTU − 20); capped at 65535.
    pub fn new(dialect: Dialect, buf: &'a mut [u8]) -> PacketWriter<'a> {
        PacketWriter {
            dialect,
            buf,
            pos: HEADER_LEN,
            cksum: [0; 16],
            section: None,
        }
    }

    /// Set the ruleset checksum written into the header.
    pub fn set_checksum(&mut self, cksum: [u8; 16]) {
        self.cksum = cksum;
    }

    fn limit(&self) -> usize {
        let tail = if self.dialect.is_freebsd() { 4 } else { 0 };
        self.buf
            .len()
            .min(usize::from(u16::MAX))
            .saturating_sub(tail)
    }

    /// Append `msg`. `Ok(false)`: it does not fit in this packet (or, NetBSD, needs a packet of
    /// its own action) — finish and retry on a new one. `Err`: the dialect cannot express it,
    /// or it would not fit even in an empty packet. `Message::Eof` is ignored (`Ok(true)`):
    /// `finish` adds FreeBSD's EOF itself.
    pub fn push(&mut self, msg: &Message) -> Result<bool> {
        let d = self.dialect;
        let kind = action::kind_of(msg);
        if kind == Kind::Eof {
            return Ok(true);
        }
        let code = action::encode(d, kind).ok_or(WireError::NotExpressible {
            dialect: d,
            what: msg.action_name(),
        })?;
        msg::check_expressible(d, msg)?;
        let size = msg::body_len(d, kind);
        let netbsd = d == Dialect::NetbsdV3;
        let single = netbsd && matches!(kind, Kind::Clr | Kind::Bus);
        let new_section = match self.section {
            None => true,
            Some(s) if netbsd => {
                if s.single || single || s.code != code || s.count >= usize::from(u8::MAX) {
                    return Ok(false);
                }
                false
            }
            Some(s) => s.code != code || s.count >= usize::from(u16::MAX),
        };
        let sub = if new_section && !netbsd {
            header::subheader::SIZE
        } else {
            0
        };
        let end = self.pos + sub + size;
        if end > self.limit() {
            if self.is_empty() {
                let tail = if d.is_freebsd() { 4 } else { 0 };
                return Err(WireError::BufferTooSmall {
                    needed: end + tail,
                    have: self.buf.len(),
                });
            }
            return Ok(false);
        }
        if new_section {
            self.section = Some(Section {
                at: self.pos,
                code,
                count: 0,
                single,
            });
        }
        let body = self.pos + sub;
        if let Some(b) = self.buf.get_mut(body..end) {
            msg::write(d, msg, b);
        }
        self.pos = end;
        if let Some(s) = self.section.as_mut() {
            s.count += 1;
            if !netbsd {
                let len_words = if d == Dialect::OpenbsdV6 {
                    (size / 4) as u8
                } else {
                    0
                };
                Subheader {
                    action: code,
                    len_words,
                    count: s.count as u16,
                }
                .write(self.buf, s.at);
            }
        }
        Ok(true)
    }

    /// No message pushed yet.
    pub fn is_empty(&self) -> bool {
        self.section.is_none()
    }

    /// Bytes the packet would have if finished now.
    pub fn len(&self) -> usize {
        self.pos + if self.dialect.is_freebsd() { 4 } else { 0 }
    }

    /// Write the header (and FreeBSD's EOF); returns the packet length, or 0 if the buffer
    /// cannot hold even an empty packet. An empty NetBSD packet is written as INS, count 0.
    pub fn finish(self) -> usize {
        let d = self.dialect;
        let total = self.len();
        if total > self.buf.len() {
            return 0;
        }
        let b = self.buf;
        if d.is_freebsd() {
            put(b, self.pos, &FREEBSD_EOF);
        }
        if d == Dialect::NetbsdV3 {
            let (code, count) = match self.section {
                Some(s) if s.single => (s.code, 0),
                Some(s) => (s.code, s.count as u8),
                None => (1, 0),
            };
            put_u8(b, header::netbsd::VERSION, d.version());
            put_u8(b, header::netbsd::AF, 0);
            put_u8(b, header::netbsd::ACTION, code);
            put_u8(b, header::netbsd::COUNT, count);
            put(b, header::netbsd::CKSUM, &self.cksum);
        } else {
            put_u8(b, header::v56::VERSION, d.version());
            put_u8(b, header::v56::VERSION + 1, 0);
            put16(b, header::v56::LEN, total as u16);
            put(b, header::v56::CKSUM, &self.cksum);
        }
        total
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::msg::tests::{upd_c_e, upd_c_e_bytes};
    use crate::wire::{BusStatus, StateId};

    fn parse(d: Dialect, b: &[u8]) -> Vec<Message> {
        Packet::new_checked(b, d).unwrap().messages().collect()
    }

    /// `msgs` as one packet of dialect `d` with checksum bytes `cksum`.
    pub(crate) fn emit(d: Dialect, msgs: &[Message], cksum: [u8; 16]) -> Vec<u8> {
        let mut buf = [0u8; 1480];
        let mut w = PacketWriter::new(d, &mut buf);
        w.set_checksum(cksum);
        for m in msgs {
            assert_eq!(w.push(m), Ok(true));
        }
        let n = w.finish();
        buf[..n].to_vec()
    }

    /// A compressed update of state `n` (creator 7).
    pub(crate) fn upd_c(n: u64) -> Message {
        Message::UpdC(crate::wire::UpdCRepr {
            id: StateId::new(n, 7),
            src: Default::default(),
            dst: Default::default(),
            expire: 30,
            timeout: 2,
            flags: 0,
        })
    }

    /// §10 A: OpenBSD 7.4+ bulk request.
    const EX_A: [u8; 36] = [
        0x06, 0x00, 0x00, 0x24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x05, 0x03, 0x00,
        0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// §10 B: FreeBSD bulk request with EOF, checksum 00 11 .. ff.
    const EX_B: [u8; 40] = [
        0x05, 0x00, 0x00, 0x28, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa,
        0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x05, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0x0c, 0x00, 0x00, 0x01,
    ];
    const CKSUM_B: [u8; 16] = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ];

    /// §10 C: OpenBSD DEL_C section.
    const EX_C: [u8; 16] = [
        0x07, 0x03, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x04, 0xd2, 0xde, 0xad, 0xbe, 0xef,
    ];

    /// §10 D: NetBSD BUS END, count 0, endtime 5 (checksum bytes 0xa5 here).
    fn ex_d() -> [u8; 36] {
        let mut b = [0u8; 36];
        b[..4].copy_from_slice(&[0x03, 0x00, 0x09, 0x00]);
        b[4..20].fill(0xa5);
        b[20..32].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 5, 2, 0, 0, 0]);
        b
    }

    #[test]
    fn example_a() {
        assert_eq!(detect_dialect(&EX_A), Ok(Dialect::OpenbsdV6));
        assert_eq!(
            parse(Dialect::OpenbsdV6, &EX_A),
            [Message::UpdReq(StateId::BULK)]
        );
        assert_eq!(
            emit(
                Dialect::OpenbsdV6,
                &[Message::UpdReq(StateId::BULK)],
                [0; 16]
            ),
            EX_A
        );
    }

    #[test]
    fn example_b() {
        assert_eq!(detect_dialect(&EX_B), Ok(Dialect::Freebsd1400));
        for d in [
            Dialect::Freebsd1301,
            Dialect::Freebsd1400,
            Dialect::Freebsd1500,
        ] {
            let p = Packet::new_checked(&EX_B[..], d).unwrap();
            assert_eq!(p.len(), 40);
            assert_eq!(p.checksum(), CKSUM_B);
            let m: Vec<_> = p.messages().collect();
            assert_eq!(m, [Message::UpdReq(StateId::BULK), Message::Eof]);
            assert_eq!(emit(d, &m, CKSUM_B), EX_B);
        }
    }

    #[test]
    fn example_c() {
        let mut pkt = vec![6, 0, 0, 36];
        pkt.extend_from_slice(&[0; 16]);
        pkt.extend_from_slice(&EX_C);
        let m = [Message::DelC(StateId::new(0x4d2, 0xdead_beef))];
        assert_eq!(parse(Dialect::OpenbsdV6, &pkt), m);
        assert_eq!(emit(Dialect::OpenbsdV6, &m, [0; 16]), pkt);
    }

    #[test]
    fn example_d() {
        let d = ex_d();
        assert_eq!(detect_dialect(&d), Ok(Dialect::NetbsdV3));
        let m = [Message::Bus {
            creator: 0xdead_beef,
            endtime: 5,
            status: BusStatus::End,
        }];
        let p = Packet::new_checked(&d[..], Dialect::NetbsdV3).unwrap();
        assert_eq!(p.len(), 36);
        assert_eq!(p.messages().collect::<Vec<_>>(), m);
        assert_eq!(emit(Dialect::NetbsdV3, &m, [0xa5; 16]), d);
        // BUS stands alone in a NetBSD packet.
        let mut buf = [0u8; 1460];
        let mut w = PacketWriter::new(Dialect::NetbsdV3, &mut buf);
        assert_eq!(w.push(&m[0]), Ok(true));
        assert_eq!(w.push(&m[0]), Ok(false));
    }

    #[test]
    fn example_e_openbsd() {
        let mut pkt = vec![6, 0, 0, 108];
        pkt.extend_from_slice(&[0; 16]);
        pkt.extend_from_slice(&[0x04, 0x15, 0x00, 0x01]);
        pkt.extend_from_slice(&upd_c_e_bytes());
        assert_eq!(pkt.len(), 108);
        assert_eq!(parse(Dialect::OpenbsdV6, &pkt), [upd_c_e()]);
        assert_eq!(emit(Dialect::OpenbsdV6, &[upd_c_e()], [0; 16]), pkt);
    }

    #[test]
    fn example_e_freebsd() {
        let mut pkt = vec![5, 0, 0, 112];
        pkt.extend_from_slice(&[0; 16]);
        pkt.extend_from_slice(&[0x04, 0x00, 0x00, 0x01]);
        pkt.extend_from_slice(&upd_c_e_bytes());
        pkt.extend_from_slice(&FREEBSD_EOF);
        assert_eq!(parse(Dialect::Freebsd1400, &pkt), [upd_c_e(), Message::Eof]);
        assert_eq!(emit(Dialect::Freebsd1400, &[upd_c_e()], [0; 16]), pkt);
    }

    #[test]
    fn openbsd_skips_obsolete_and_honours_stride() {
        // OUPD (3) with len 2 dwords, count 2: skipped; then UPD_REQ with a 16-byte stride.
        let mut pkt = vec![6, 0, 0, 0];
        pkt.extend_from_slice(&[0; 16]);
        pkt.extend_from_slice(&[3, 2, 0, 2]);
        pkt.extend_from_slice(&[0xee; 16]);
        pkt.extend_from_slice(&[5, 4, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 7, 0xff, 0xff]);
        pkt.extend_from_slice(&[0xff, 0xff]);
        pkt.extend_from_slice(&[0x3f; 3]); // remnant shorter than a subheader: ignored
        let n = pkt.len() as u16;
        pkt[2..4].copy_from_slice(&n.to_be_bytes());
        pkt.extend_from_slice(&[1, 2, 3]); // beyond header.len: trimmed
        assert_eq!(
            parse(Dialect::OpenbsdV6, &pkt),
            [Message::UpdReq(StateId::new(9, 7))]
        );
        // Unknown future action 40 with size and count: skipped too.
        let mut pkt = vec![6, 0, 0, 28];
        pkt.extend_from_slice(&[0; 16]);
        pkt.extend_from_slice(&[40, 1, 0, 1, 1, 2, 3, 4]);
        assert_eq!(parse(Dialect::OpenbsdV6, &pkt), []);
        pkt[21] = 0;
        pkt[2..4].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&pkt[..24], Dialect::OpenbsdV6).unwrap_err(),
            WireError::BadAction {
                offset: 20,
                action: 40
            }
        );
    }

    #[test]
    fn negative_header() {
        assert_eq!(
            Packet::new_checked(&EX_A[..19], Dialect::OpenbsdV6).unwrap_err(),
            WireError::Truncated {
                offset: 0,
                needed: 20,
                have: 19
            }
        );
        assert_eq!(
            Packet::new_checked(&EX_A[..], Dialect::Freebsd1400).unwrap_err(),
            WireError::BadVersion { found: 6 }
        );
        assert_eq!(
            detect_dialect(&[4; 20]),
            Err(WireError::BadVersion { found: 4 })
        );
        let mut long = EX_A;
        long[3] = 37;
        assert_eq!(
            Packet::new_checked(&long[..], Dialect::OpenbsdV6).unwrap_err(),
            WireError::BadLength {
                field: "header.len",
                offset: 2,
                value: 37
            }
        );
        let mut short = EX_A;
        short[3] = 19;
        assert!(matches!(
            Packet::new_checked(&short[..], Dialect::OpenbsdV6),
            Err(WireError::BadLength { offset: 2, .. })
        ));
    }

    #[test]
    fn negative_framing() {
        // Message bytes cut short: header.len says 35.
        let mut t = EX_A;
        t[3] = 35;
        assert_eq!(
            Packet::new_checked(&t[..35], Dialect::OpenbsdV6).unwrap_err(),
            WireError::Truncated {
                offset: 24,
                needed: 12,
                have: 11
            }
        );
        // OpenBSD known action with a too-short stride.
        let mut t = EX_A;
        t[21] = 2;
        assert_eq!(
            Packet::new_checked(&t[..], Dialect::OpenbsdV6).unwrap_err(),
            WireError::BadLength {
                field: "subheader.len",
                offset: 21,
                value: 8
            }
        );
        // FreeBSD: DEL (6) and unknown codes are bad actions.
        for code in [6u8, 8, 9, 13, 17, 200] {
            let mut t = EX_B;
            t[20] = code;
            assert_eq!(
                Packet::new_checked(&t[..], Dialect::Freebsd1301).unwrap_err(),
                WireError::BadAction {
                    offset: 20,
                    action: code
                },
                "{code}"
            );
        }
        // FreeBSD: EOF missing, EOF not last, bytes beyond header.len.
        let mut t = EX_B;
        t[3] = 36;
        assert_eq!(
            Packet::new_checked(&t[..36], Dialect::Freebsd1400).unwrap_err(),
            WireError::MissingEof { offset: 36 }
        );
        let mut t = EX_B.to_vec();
        t.extend_from_slice(&[0; 4]);
        assert_eq!(
            Packet::new_checked(&t[..], Dialect::Freebsd1400).unwrap_err(),
            WireError::TrailingBytes {
                offset: 40,
                count: 4
            }
        );
        t[3] = 44;
        assert_eq!(
            Packet::new_checked(&t[..], Dialect::Freebsd1400).unwrap_err(),
            WireError::TrailingBytes {
                offset: 40,
                count: 4
            }
        );
        // NetBSD: action out of range, count beyond the data.
        let mut n = ex_d();
        n[2] = 11;
        assert_eq!(
            Packet::new_checked(&n[..], Dialect::NetbsdV3).unwrap_err(),
            WireError::BadAction {
                offset: 2,
                action: 11
            }
        );
        n[2] = 8; // UREQ, count 2 x 16 needs 32 bytes, 16 present
        n[3] = 2;
        assert_eq!(
            Packet::new_checked(&n[..], Dialect::NetbsdV3).unwrap_err(),
            WireError::Truncated {
                offset: 20,
                needed: 32,
                have: 16
            }
        );
    }

    #[test]
    fn negative_per_message() {
        let mut pkt = vec![6, 0, 0, 108];
        pkt.extend_from_slice(&[0; 16]);
        pkt.extend_from_slice(&[0x04, 0x15, 0x00, 0x01]);
        pkt.extend_from_slice(&upd_c_e_bytes());
        pkt[24 + 80] = 20;
        assert_eq!(
            Packet::new_checked(&pkt[..], Dialect::OpenbsdV6).unwrap_err(),
            WireError::BadValue {
                offset: 104,
                field: "timeout",
                value: 20
            }
        );
    }

    #[test]
    fn writer_splits_and_refuses() {
        let mut buf = [0u8; 20 + 4 + 2 * 84];
        let mut w = PacketWriter::new(Dialect::OpenbsdV6, &mut buf);
        assert_eq!(w.push(&upd_c_e()), Ok(true));
        assert_eq!(w.push(&upd_c_e()), Ok(true));
        assert_eq!(w.push(&upd_c_e()), Ok(false));
        assert_eq!(w.push(&Message::DelC(StateId::new(1, 1))), Ok(false));
        assert_eq!(w.finish(), 20 + 4 + 2 * 84);
        let p = Packet::new_checked(&buf[..], Dialect::OpenbsdV6).unwrap();
        assert_eq!(p.messages().count(), 2);

        let mut buf = [0u8; 30];
        let mut w = PacketWriter::new(Dialect::Freebsd1400, &mut buf);
        assert!(matches!(
            w.push(&upd_c_e()),
            Err(WireError::BufferTooSmall { .. })
        ));
        assert_eq!(w.push(&Message::Eof), Ok(true));
        assert!(w.is_empty());
        assert!(matches!(
            w.push(&Message::Del(Default::default())),
            Err(WireError::NotExpressible { .. })
        ));
        assert_eq!(w.finish(), 24);
        assert_eq!(
            Packet::new_checked(&buf[..24], Dialect::Freebsd1400)
                .unwrap()
                .messages()
                .collect::<Vec<_>>(),
            [Message::Eof]
        );

        let mut buf = [0u8; 1460];
        let mut w = PacketWriter::new(Dialect::NetbsdV3, &mut buf);
        assert!(matches!(
            w.push(&Message::InsAck(StateId::new(1, 1))),
            Err(WireError::NotExpressible { .. })
        ));
        assert_eq!(w.push(&Message::DelC(StateId::new(1, 1))), Ok(true));
        assert_eq!(w.push(&Message::UpdReq(StateId::new(1, 1))), Ok(false));
        assert_eq!(w.finish(), 36);
        assert_eq!(&buf[..4], &[3, 0, 5, 1]);
    }

    #[test]
    fn detect_freebsd_versions() {
        let mut buf = [0u8; 1480];
        for d in [
            Dialect::Freebsd1301,
            Dialect::Freebsd1400,
            Dialect::Freebsd1500,
        ] {
            let mut w = PacketWriter::new(d, &mut buf);
            w.push(&Message::DelC(StateId::new(1, 1))).unwrap();
            let mut s = crate::wire::StateRepr {
                af: crate::wire::AddrFamily::Inet,
                id: StateId::new(2, 2),
                ..Default::default()
            };
            s.af_1500 = [s.af; 3];
            w.push(&Message::Upd(s)).unwrap();
            let n = w.finish();
            assert_eq!(detect_dialect(&buf[..n]), Ok(d));
            assert_eq!(
                Packet::new_checked(&buf[..n], d)
                    .unwrap()
                    .messages()
                    .count(),
                3
            );
        }
    }

    /// The fixed-size `UPD_C` view covers every dialect's body, and messages decoded through
    /// it (and the other kinds around them) come back as written, for every dialect.
    #[test]
    fn upd_c_view_decodes_every_dialect() {
        for d in Dialect::ALL {
            assert!(msg::body_len(d, Kind::UpdC) >= UPD_C_MIN, "{d:?}");
            let mut msgs = Vec::new();
            for i in 0..5u64 {
                let Message::UpdC(mut u) = upd_c_e() else {
                    unreachable!()
                };
                u.id = StateId::new(i + 1, 7 + i as u32);
                u.src.seqlo = 1000 + i as u32;
                msgs.push(Message::UpdC(u));
            }
            msgs.push(Message::DelC(StateId::new(99, 3)));
            msgs.push(Message::UpdReq(StateId::new(98, 4)));
            let pkts: Vec<Vec<u8>> = if d == Dialect::NetbsdV3 {
                // One action per packet.
                vec![emit(d, &msgs[..5], [0; 16]), emit(d, &msgs[5..6], [0; 16])]
            } else {
                vec![emit(d, &msgs, [0; 16])]
            };
            let mut got = Vec::new();
            for b in &pkts {
                let p = Packet::new_checked(&b[..], d).unwrap();
                got.extend(p.messages().filter(|m| *m != Message::Eof));
            }
            let want: Vec<Message> = if d == Dialect::NetbsdV3 {
                msgs[..6].to_vec()
            } else {
                msgs.clone()
            };
            assert_eq!(got, want, "{d:?}");
        }
    }
}
