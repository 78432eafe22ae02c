//! Sockets inside a namespace, opened from the test process: a thread joins the
//! namespace (`setns`), opens the socket and hands it back; the socket stays in that
//! namespace for its whole life, whichever thread uses it.
//!
//! - [`RawPf`]: a firewall's pfsync socket (IP protocol 240, TTL 255, bound to the sync
//!   interface, optionally in 224.0.0.240), receiving with the IP header.
//! - [`LinkCapture`]: AF_PACKET on one interface: sees every IPv4 frame on the link, even
//!   what no socket would accept (the proof that nothing at all arrived).
//! - [`udp_socket`]: a plain UDP socket (attacker traffic, replays).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use pfsync_gw::local::mmsg::set_recv_buffer;
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

pub const IPPROTO_PFSYNC: u8 = 240;
pub const PFSYNC_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 240);

/// Run `f` on a thread inside namespace `ns` and return its result.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: fd is a valid netns file; CLONE_NEWNET only moves this thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {ns}: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Interface index of `ifname` in the calling thread's namespace.
pub fn if_index(ifname: &str) -> u32 {
    let c = CString::new(ifname).unwrap();
    // SAFETY: c is NUL-terminated.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(
        i,
        0,
        "no interface {ifname}: {}",
        io::Error::last_os_error()
    );
    i
}

/// An IPv4 packet as pf sends pfsync (TOS 0x10, protocol 240, a valid header checksum)
/// with TTL `ttl` and flags/fragment-offset word `frag`, around `payload`.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0x10];
    p.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[ttl, IPPROTO_PFSYNC, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = !ones_complement(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// The folded ones'-complement sum (0xffff over a header whose checksum is right).
fn ones_complement(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The fields of an IPv4 packet the tests check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpPkt {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    pub tos: u8,
    pub ident: u16,
    /// Don't-fragment set, and neither more-fragments nor an offset.
    pub df_only: bool,
    /// The header checksum verifies.
    pub checksum_ok: bool,
    /// Bytes after the IP header (up to the IP total length).
    pub payload: Vec<u8>,
}

impl IpPkt {
    pub fn parse(b: &[u8]) -> Option<IpPkt> {
        if b.len() < 20 || b[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(b[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
        if ihl < 20 || total < ihl || total > b.len() {
            return None;
        }
        Some(IpPkt {
            src: Ipv4Addr::new(b[12], b[13], b[14], b[15]),
            dst: Ipv4Addr::new(b[16], b[17], b[18], b[19]),
            ttl: b[8],
            proto: b[9],
            tos: b[1],
            ident: u16::from_be_bytes([b[4], b[5]]),
            df_only: u16::from_be_bytes([b[6], b[7]]) == 0x4000,
            checksum_ok: ones_complement(&b[..ihl]) == 0xffff,
            payload: b[ihl..total].to_vec(),
        })
    }

    /// `(src port, dst port, payload)` if this is UDP.
    pub fn udp(&self) -> Option<(u16, u16, &[u8])> {
        if self.proto != libc::IPPROTO_UDP as u8 || self.payload.len() < 8 {
            return None;
        }
        let p = &self.payload;
        Some((
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
            &p[8..],
        ))
    }
}

fn set_rcvtimeo(fd: i32, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros().max(1) as libc::suseconds_t,
    };
    // SAFETY: passing a timeval of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

/// A firewall's pfsync socket on one interface.
pub struct RawPf {
    sock: Socket,
    pub ifname: String,
}

impl RawPf {
    /// Open in `ns` on `ifname`; `join` the 224.0.0.240 group there (needed to receive
    /// the gateways' multicast injections).
    pub fn open(ns: &str, ifname: &str, join: bool) -> RawPf {
        let ifname = ifname.to_string();
        in_netns(ns, || {
            let idx = if_index(&ifname);
            let sock = Socket::new(
                Domain::IPV4,
                Type::RAW,
                Some(Protocol::from(i32::from(IPPROTO_PFSYNC))),
            )
            .expect("raw socket (needs CAP_NET_RAW)");
            sock.bind_device(Some(ifname.as_bytes())).unwrap();
            sock.set_ttl(255).unwrap();
            sock.set_multicast_ttl_v4(255).unwrap();
            // Never read back our own multicast as if someone else had sent it.
            sock.set_multicast_loop_v4(false).unwrap();
            sock.set_multicast_if_v4(&if_addr(&ifname).unwrap_or(Ipv4Addr::UNSPECIFIED))
                .unwrap();
            if join {
                sock.join_multicast_v4_n(&PFSYNC_GROUP, &InterfaceIndexOrAddress::Index(idx))
                    .unwrap();
            }
            set_recv_buffer(sock.as_raw_fd(), 8 << 20);
            RawPf { sock, ifname }
        })
    }

    /// Send one pfsync payload (the kernel adds the IP header) with TTL `ttl`.
    pub fn send_ttl(&self, payload: &[u8], dst: Ipv4Addr, ttl: u8) {
        self.sock.set_ttl(u32::from(ttl)).unwrap();
        self.sock.set_multicast_ttl_v4(u32::from(ttl)).unwrap();
        let to = SocketAddr::V4(SocketAddrV4::new(dst, 0));
        let n = self
            .sock
            .send_to(payload, &to.into())
            .unwrap_or_else(|e| panic!("send proto 240 to {dst} on {}: {e}", self.ifname));
        assert_eq!(n, payload.len());
    }

    /// Send from `src` (an address of the namespace) instead of the interface's primary one.
    pub fn bind_source(&self, src: Ipv4Addr) {
        let a = SocketAddr::V4(SocketAddrV4::new(src, 0));
        self.sock
            .bind(&a.into())
            .unwrap_or_else(|e| panic!("bind raw socket to {src}: {e}"));
        self.sock.set_multicast_if_v4(&src).unwrap();
    }

    /// Send with TTL 255, as pf does.
    pub fn send(&self, payload: &[u8], dst: Ipv4Addr) {
        self.send_ttl(payload, dst, 255);
    }

    /// Next proto-240 packet (with its IP header parsed), or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<IpPkt> {
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            set_rcvtimeo(self.sock.as_raw_fd(), left);
            // SAFETY: buf is writable for its length.
            let n =
                unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                if retry_after(io::Error::last_os_error(), "recv on raw socket") {
                    continue;
                }
                return None;
            }
            if let Some(p) = IpPkt::parse(&buf[..n as usize]) {
                return Some(p);
            }
        }
    }

    /// Everything that arrives within `window`.
    pub fn collect(&self, window: Duration) -> Vec<IpPkt> {
        let end = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.recv(left) {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }
}

/// First IPv4 address of `ifname` in the calling thread's namespace.
pub fn if_addr(ifname: &str) -> Option<Ipv4Addr> {
    pfsync_gw::local::raw::interface_ipv4_addrs(ifname)
        .first()
        .copied()
}

/// Direction of a captured frame relative to the capturing interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
}

/// AF_PACKET capture of IPv4 on one interface (and a sender of hand-made frames).
pub struct LinkCapture {
    fd: OwnedFd,
    ifindex: u32,
    pub ifname: String,
}

impl LinkCapture {
    pub fn open(ns: &str, ifname: &str) -> LinkCapture {
        let ifname = ifname.to_string();
        in_netns(ns, || {
            let idx = if_index(&ifname);
            // ETH_P_ALL: only "all protocol" taps see outgoing frames; IPv4 is picked below.
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2) call.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
            assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
            // SAFETY: fd is a fresh socket we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: zeroed sockaddr_ll is valid; we fill family, protocol, ifindex.
            let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = idx as i32;
            // SAFETY: binding with a properly sized sockaddr_ll.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(
                r,
                0,
                "bind AF_PACKET to {ifname}: {}",
                io::Error::last_os_error()
            );
            set_recv_buffer(fd.as_raw_fd(), 8 << 20);
            LinkCapture {
                fd,
                ifindex: idx,
                ifname,
            }
        })
    }

    /// Send `packet` (an IPv4 packet, header included, sent as is) in a frame to `mac`.
    pub fn send_ip(&self, packet: &[u8], mac: [u8; 6]) {
        // SAFETY: zeroed sockaddr_ll is valid; we fill family, protocol, ifindex, address.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&mac);
        // SAFETY: packet and sll are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(
            n,
            packet.len() as isize,
            "send frame on {}: {}",
            self.ifname,
            io::Error::last_os_error()
        );
    }

    /// Next IPv4 frame and its direction, or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<(Dir, IpPkt)> {
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            set_rcvtimeo(self.fd.as_raw_fd(), left);
            // SAFETY: zeroed sockaddr_ll is a valid out-parameter.
            let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and sll are writable for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                if retry_after(io::Error::last_os_error(), "recv AF_PACKET") {
                    continue;
                }
                return None;
            }
            if sll.sll_protocol != (libc::ETH_P_IP as u16).to_be() {
                continue;
            }
            let dir = if sll.sll_pkttype == libc::PACKET_OUTGOING {
                Dir::Out
            } else {
                Dir::In
            };
            if let Some(p) = IpPkt::parse(&buf[..n as usize]) {
                return Some((dir, p));
            }
        }
    }

    /// Every frame seen within `window` that satisfies `keep`.
    pub fn collect(
        &self,
        window: Duration,
        keep: impl Fn(Dir, &IpPkt) -> bool,
    ) -> Vec<(Dir, IpPkt)> {
        let end = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.recv(left) {
                Some((d, p)) if keep(d, &p) => out.push((d, p)),
                Some(_) => {}
                None => break,
            }
        }
        out
    }

    /// Discard whatever is queued now.
    pub fn drain(&self) {
        while self.recv(Duration::from_millis(1)).is_some() {}
    }
}

/// A UDP socket bound to `bind` inside `ns`.
pub fn udp_socket(ns: &str, bind: SocketAddr) -> UdpSocket {
    in_netns(ns, || {
        let s = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind udp {bind}: {e}"));
        // Forced past `net.core.rmem_max` (as root), like every test socket here: a reader
        // a busy or stalled CPU keeps waiting for tens of milliseconds must not lose what
        // the code under test delivered (`SO_RCVBUF` alone is capped near 208 KB).
        set_recv_buffer(s.as_raw_fd(), 4 << 20);
        s
    })
}

/// Receive one datagram within `timeout` (`None` if nothing came).
pub fn udp_recv(sock: &UdpSocket, timeout: Duration) -> Option<(SocketAddr, Vec<u8>)> {
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .unwrap();
    let mut buf = vec![0u8; 65_536];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => Some((from, buf[..n].to_vec())),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        // An ICMP port unreachable for an earlier send is not a reply from the daemon.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => None,
        Err(e) => panic!("udp recv: {e}"),
    }
}

/// What a failed `recv` means in a capture loop with a receive timeout: `false` when the
/// time ran out (stop), `true` when interrupted (retry). Anything else is a broken setup.
fn retry_after(e: io::Error, what: &str) -> bool {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => false,
        io::ErrorKind::Interrupted => true,
        _ => panic!("{what}: {e}"),
    }
}
