//! Capture files: read pcap/pcapng frames, strip link and IP layers down to pfsync, and write
//! captures (used by tests and by the daemon's packet dumps).

use std::borrow::Cow;
use std::io::{self, Cursor, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgBlock, PcapNgReader, PcapNgWriter};
use pcap_file::{DataLink, PcapError, TsResolution};

use crate::wire::IPPROTO_PFSYNC;

/// Link types (pcap `LINKTYPE_*`, plus the raw BSD `DLT_PFSYNC` values some captures carry).
pub mod linktype {
    /// BSD loopback: 4-byte address family in host byte order.
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    /// `DLT_PFSYNC` on OpenBSD/NetBSD/DragonFly/macOS, written unmapped by their libpcap.
    pub const DLT_PFSYNC_OPENBSD: u32 = 18;
    pub const RAW: u32 = 101;
    /// OpenBSD loopback: 4-byte address family in network byte order.
    pub const LOOP: u32 = 108;
    pub const LINUX_SLL: u32 = 113;
    /// `DLT_PFSYNC` on FreeBSD, written unmapped by its libpcap.
    pub const DLT_PFSYNC_FREEBSD: u32 = 121;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    /// `LINKTYPE_PFSYNC`: frames start at `pfsync_header`, no IP.
    pub const PFSYNC: u32 = 246;
    pub const LINUX_SLL2: u32 = 276;
}

/// Why a capture could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("not a pcap or pcapng file (magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("empty input: not a capture file")]
    Empty,
    #[error("invalid capture file: {0}")]
    Format(String),
}

impl From<PcapError> for CaptureError {
    fn from(e: PcapError) -> Self {
        match e {
            PcapError::IoError(e) => CaptureError::Io(e),
            PcapError::IncompleteBuffer => {
                CaptureError::Format("truncated capture file (incomplete record)".into())
            }
            e => CaptureError::Format(e.to_string()),
        }
    }
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Time since the Unix epoch.
    pub timestamp: Duration,
    /// Link type of the interface the frame was captured on.
    pub linktype: u32,
    pub data: Vec<u8>,
}

enum Inner<R: Read> {
    Pcap(PcapReader<R>),
    PcapNg {
        reader: PcapNgReader<R>,
        /// Per interface: link type and timestamp units per second.
        ifaces: Vec<(u32, u64)>,
    },
}

/// Frame-by-frame reader over a pcap or pcapng stream (format chosen by the magic number).
pub struct CaptureReader<R: Read> {
    inner: Inner<Chained<R>>,
}

/// The sniffed magic bytes are fed back in front of the rest of the input.
type Chained<R> = io::Chain<Cursor<[u8; 4]>, R>;

impl<R: Read> CaptureReader<R> {
    /// Sniff the magic number and open the matching reader.
    pub fn new(mut input: R) -> Result<Self, CaptureError> {
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match input.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if got == 0 {
            return Err(CaptureError::Empty);
        }
        if got < 4 {
            return Err(CaptureError::Format(
                "file shorter than a capture header".into(),
            ));
        }
        let stream = Cursor::new(magic).chain(input);
        let inner = match magic {
            [0xa1, 0xb2, 0xc3, 0xd4]
            | [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d]
            | [0x4d, 0x3c, 0xb2, 0xa1] => Inner::Pcap(PcapReader::new(stream)?),
            [0x0a, 0x0d, 0x0d, 0x0a] => Inner::PcapNg {
                reader: PcapNgReader::new(stream)?,
                ifaces: Vec::new(),
            },
            m => return Err(CaptureError::BadMagic(m)),
        };
        Ok(CaptureReader { inner })
    }

    /// Next frame; `None` at a clean end of file.
    pub fn next_frame(&mut self) -> Option<Result<Frame, CaptureError>> {
        match &mut self.inner {
            Inner::Pcap(r) => {
                let linktype = u32::from(r.header().datalink);
                r.next_packet().map(|p| {
                    let p = p?;
                    Ok(Frame {
                        timestamp: p.timestamp,
                        linktype,
                        data: p.data.into_owned(),
                    })
                })
            }
            Inner::PcapNg { reader, ifaces } => loop {
                let block = match reader.next_block()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(e.into())),
                };
                match block {
                    Block::SectionHeader(_) => ifaces.clear(),
                    Block::InterfaceDescription(idb) => {
                        ifaces.push((u32::from(idb.linktype), ts_units(&idb.options)))
                    }
                    Block::EnhancedPacket(epb) => {
                        let Some(&(linktype, units)) = ifaces.get(epb.interface_id as usize) else {
                            return Some(Err(CaptureError::Format(format!(
                                "packet for undeclared interface {}",
                                epb.interface_id
                            ))));
                        };
                        // pcap-file hands back the raw 64-bit count as nanoseconds.
                        let raw = epb.timestamp.as_nanos() as u64;
                        return Some(Ok(Frame {
                            timestamp: units_to_duration(raw, units),
                            linktype,
                            data: epb.data.into_owned(),
                        }));
                    }
                    Block::SimplePacket(spb) => {
                        let Some(&(linktype, _)) = ifaces.first() else {
                            return Some(Err(CaptureError::Format(
                                "simple packet block before any interface".into(),
                            )));
                        };
                        return Some(Ok(Frame {
                            timestamp: Duration::ZERO,
                            linktype,
                            data: spb.data.into_owned(),
                        }));
                    }
                    Block::Packet(pb) => {
                        let Some(&(linktype, units)) = ifaces.get(pb.interface_id as usize) else {
                            return Some(Err(CaptureError::Format(format!(
                                "packet for undeclared interface {}",
                                pb.interface_id
                            ))));
                        };
                        return Some(Ok(Frame {
                            timestamp: units_to_duration(pb.timestamp, units),
                            linktype,
                            data: pb.data.into_owned(),
                        }));
                    }
                    _ => {}
                }
            },
        }
    }
}

impl<R: Read> Iterator for CaptureReader<R> {
    type Item = Result<Frame, CaptureError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame()
    }
}

/// Timestamp units per second from `if_tsresol` (default microseconds).
fn ts_units(opts: &[InterfaceDescriptionOption<'_>]) -> u64 {
    for o in opts {
        if let InterfaceDescriptionOption::IfTsResol(r) = o {
            let exp = u32::from(r & 0x7f);
            let units = if r & 0x80 == 0 {
                10u64.checked_pow(exp)
            } else {
                2u64.checked_pow(exp)
            };
            return units.unwrap_or(1_000_000_000).max(1);
        }
    }
    1_000_000
}

fn units_to_duration(raw: u64, units_per_sec: u64) -> Duration {
    let secs = raw / units_per_sec;
    let frac = raw % units_per_sec;
    let nanos = (u128::from(frac) * 1_000_000_000 / u128::from(units_per_sec)) as u32;
    Duration::new(secs, nanos)
}

/// Write a classic pcap (microsecond timestamps, little endian) with one link type.
pub fn write_pcap<'a, W: Write>(
    w: W,
    linktype: u32,
    frames: impl IntoIterator<Item = (Duration, &'a [u8])>,
) -> io::Result<W> {
    let header = PcapHeader {
        datalink: DataLink::from(linktype),
        snaplen: 65535,
        ts_resolution: TsResolution::MicroSecond,
        endianness: pcap_file::Endianness::Little,
        ..Default::default()
    };
    let mut pw = PcapWriter::with_header(w, header).map_err(pcap_io)?;
    for (ts, data) in frames {
        pw.write_packet(&PcapPacket::new(ts, data.len() as u32, data))
            .map_err(pcap_io)?;
    }
    Ok(pw.into_writer())
}

/// Write a pcapng with one interface of `linktype` (nanosecond `if_tsresol`).
pub fn write_pcapng<'a, W: Write>(
    w: W,
    linktype: u32,
    frames: impl IntoIterator<Item = (Duration, &'a [u8])>,
) -> io::Result<W> {
    let mut pw = PcapNgWriter::new(w).map_err(pcap_io)?;
    let idb = InterfaceDescriptionBlock {
        linktype: DataLink::from(linktype),
        snaplen: 0,
        options: vec![InterfaceDescriptionOption::IfTsResol(9)],
    };
    pw.write_block(&idb.into_block()).map_err(pcap_io)?;
    for (ts, data) in frames {
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: ts,
            original_len: data.len() as u32,
            data: Cow::Borrowed(data),
            options: vec![],
        };
        pw.write_block(&epb.into_block()).map_err(pcap_io)?;
    }
    Ok(pw.into_inner())
}

fn pcap_io(e: PcapError) -> io::Error {
    match e {
        PcapError::IoError(e) => e,
        e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    }
}

/// What a frame contains, as far as pfsync is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted<'a> {
    /// A pfsync packet (from `pfsync_header` on). Addresses are absent for `LINKTYPE_PFSYNC`.
    Pfsync {
        src: Option<IpAddr>,
        dst: Option<IpAddr>,
        /// IP TTL / hop limit, if there was an IP header.
        ttl: Option<u8>,
        payload: &'a [u8],
    },
    /// Not pfsync (other protocol, other ethertype, unsupported link type...).
    Other,
    /// Recognisably pfsync but the envelope is broken (e.g. an IP fragment).
    Malformed(String),
}

/// Strip the link layer and IP header of `frame` down to the pfsync payload.
pub fn extract_pfsync(link: u32, frame: &[u8]) -> Extracted<'_> {
    use self::linktype as lt;
    match link {
        lt::PFSYNC | lt::DLT_PFSYNC_OPENBSD | lt::DLT_PFSYNC_FREEBSD => Extracted::Pfsync {
            src: None,
            dst: None,
            ttl: None,
            payload: frame,
        },
        lt::RAW => match frame.first().map(|b| b >> 4) {
            Some(4) => ipv4(frame),
            Some(6) => ipv6(frame),
            _ => Extracted::Other,
        },
        lt::IPV4 => ipv4(frame),
        lt::IPV6 => ipv6(frame),
        lt::ETHERNET => {
            let mut off = 12;
            loop {
                let Some(et) = be16(frame, off) else {
                    return Extracted::Other;
                };
                match et {
                    // 802.1Q, 802.1ad, legacy QinQ: skip the tag control field.
                    0x8100 | 0x88a8 | 0x9100 => off += 4,
                    _ => return ethertype(et, &frame[off + 2..]),
                }
            }
        }
        lt::LINUX_SLL => match be16(frame, 14) {
            Some(et) => ethertype(et, &frame[16..]),
            None => Extracted::Other,
        },
        lt::LINUX_SLL2 => match (be16(frame, 0), frame.get(20..)) {
            (Some(et), Some(rest)) => ethertype(et, rest),
            _ => Extracted::Other,
        },
        lt::NULL | lt::LOOP => {
            let Some(hdr) = frame.get(..4) else {
                return Extracted::Other;
            };
            let hdr: [u8; 4] = hdr.try_into().unwrap_or_default();
            let af = if link == lt::LOOP {
                u32::from_be_bytes(hdr)
            } else if u32::from_le_bytes(hdr) < 256 {
                // The writer's byte order is unknown; small values decide it.
                u32::from_le_bytes(hdr)
            } else {
                u32::from_be_bytes(hdr)
            };
            match af {
                2 => ipv4(&frame[4..]),
                24 | 28 | 30 => ipv6(&frame[4..]),
                _ => Extracted::Other,
            }
        }
        _ => Extracted::Other,
    }
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn ethertype(et: u16, rest: &[u8]) -> Extracted<'_> {
    match et {
        0x0800 => ipv4(rest),
        0x86dd => ipv6(rest),
        _ => Extracted::Other,
    }
}

/// Lenient IPv4 parse: a decoder must show what it can even with bad checksums or snaplen cuts.
fn ipv4(b: &[u8]) -> Extracted<'_> {
    if b.len() < 20 || b[0] >> 4 != 4 {
        return Extracted::Other;
    }
    if b[9] != IPPROTO_PFSYNC {
        return Extracted::Other;
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    if ihl < 20 || ihl > b.len() {
        return Extracted::Malformed(format!("bad IPv4 header length {ihl}"));
    }
    let frag = u16::from_be_bytes([b[6], b[7]]);
    if frag & 0x3fff != 0 {
        return Extracted::Malformed(format!(
            "IPv4 fragment (offset {}, MF {}) not reassembled",
            (frag & 0x1fff) * 8,
            (frag >> 13) & 1
        ));
    }
    let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
    // Ethernet pads short frames; a snaplen cut leaves fewer bytes than `total`.
    let end = if total >= ihl {
        total.min(b.len())
    } else {
        b.len()
    };
    let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
    let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
    Extracted::Pfsync {
        src: Some(src.into()),
        dst: Some(dst.into()),
        ttl: Some(b[8]),
        payload: &b[ihl..end],
    }
}

/// IPv6 with best-effort skipping of hop-by-hop, routing, fragment and destination options.
fn ipv6(b: &[u8]) -> Extracted<'_> {
    if b.len() < 40 || b[0] >> 4 != 6 {
        return Extracted::Other;
    }
    let plen = usize::from(u16::from_be_bytes([b[4], b[5]]));
    let end = if plen == 0 {
        b.len()
    } else {
        (40 + plen).min(b.len())
    };
    let mut next = b[6];
    let mut off = 40;
    loop {
        match next {
            IPPROTO_PFSYNC => break,
            0 | 43 | 60 => {
                let (Some(&nh), Some(&len)) = (b.get(off), b.get(off + 1)) else {
                    return Extracted::Other;
                };
                next = nh;
                off += (usize::from(len) + 1) * 8;
            }
            44 => {
                let Some(fh) = b.get(off..off + 8) else {
                    return Extracted::Other;
                };
                if fh[0] == IPPROTO_PFSYNC {
                    let fo = u16::from_be_bytes([fh[2], fh[3]]);
                    return Extracted::Malformed(format!(
                        "IPv6 fragment (offset {}) not reassembled",
                        fo & 0xfff8
                    ));
                }
                next = fh[0];
                off += 8;
            }
            _ => return Extracted::Other,
        }
    }
    if off > end {
        return Extracted::Malformed("IPv6 extension headers run past the packet".into());
    }
    let src: [u8; 16] = b[8..24].try_into().unwrap_or_default();
    let dst: [u8; 16] = b[24..40].try_into().unwrap_or_default();
    Extracted::Pfsync {
        src: Some(Ipv6Addr::from(src).into()),
        dst: Some(Ipv6Addr::from(dst).into()),
        ttl: Some(b[7]),
        payload: &b[off..end],
    }
}

/// Frame builders for captures written by tests and tools.
pub mod frame {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use crate::wire::{IPPROTO_PFSYNC, PFSYNC_DFLTTL};

    /// IPv4 header as the kernels send it (TOS 0x10, DF, TTL 255, proto 240) + payload.
    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut h = vec![
            0x45,
            0x10,
            0,
            0,
            0x12,
            0x34,
            0x40,
            0,
            PFSYNC_DFLTTL,
            IPPROTO_PFSYNC,
            0,
            0,
        ];
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    /// IPv6 header (hop limit 255, next header 240) + payload.
    pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(&[IPPROTO_PFSYNC, PFSYNC_DFLTTL]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(payload);
        h
    }

    /// Ethernet II frame; `vlan` adds one 802.1Q tag.
    pub fn ethernet(ethertype: u16, vlan: Option<u16>, payload: &[u8]) -> Vec<u8> {
        // Destination: the IPv4 multicast MAC of 224.0.0.240.
        let mut f = vec![0x01, 0x00, 0x5e, 0x00, 0x00, 0xf0, 0x02, 0, 0, 0, 0, 1];
        if let Some(tci) = vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Linux cooked capture v1 (`LINUX_SLL`), outgoing packet.
    pub fn sll(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Linux cooked capture v2 (`LINUX_SLL2`).
    pub fn sll2(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = ethertype.to_be_bytes().to_vec();
        f.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 4, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn checksum(b: &[u8]) -> u16 {
        let mut s: u32 = b
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
}
