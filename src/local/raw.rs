//! The firewall side over a real network: raw IPv4 protocol-240 sockets bound to the sync
//! interface, as a pf kernel's `pfsync0 syncdev` would use it.
//!
//! Capture: everything with protocol 240 that arrives on the interface (unicast to us
//! when the firewall's `syncpeer` points at the gateway, and the 224.0.0.240 group when
//! joined). Inject: TTL 255, TOS 0x10 (lowdelay), DF, to the group or to the firewall's
//! unicast address, out of the sync interface only — exactly what pfsync_input() accepts.
//! To the group on an Ethernet interface the packets leave as link-layer frames with a
//! header written here, which spares the kernel's IP output path ([`SyncPath`]).

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

use crate::wire::ipv4::{emit_ipv4_header, Ipv4Packet, IPV4_HEADER_LEN};
use crate::wire::{IPPROTO_PFSYNC, PFSYNC_DFLTTL, PFSYNC_GROUP};

/// The firewall side's sockets on one interface: a raw proto-240 socket, and the
/// link-layer sockets of the [`SyncPath::Link`] paths where they are in use.
pub struct RawSyncSocket {
    /// Injects by the IP path (and unicast always); captures unless `capture` is open.
    sock: Socket,
    /// The link-layer capture socket, when capture takes the link path.
    capture: Option<Socket>,
    ifname: String,
    ifindex: u32,
    /// The raw socket joined 224.0.0.240 (capture by the IP path of multicast pfsync).
    joined: bool,
    /// Our own addresses on the interface: packets from them are our own injections
    /// looped back, never captured (loop prevention).
    own_addrs: Vec<Ipv4Addr>,
    inject_to: SocketAddrV4,
    /// `inject_to` as the injection socket's destination: a `sockaddr_in` for the raw
    /// socket, a `sockaddr_ll` for the link path.
    inject_addr: libc::sockaddr_storage,
    inject_addr_len: libc::socklen_t,
    /// The link-layer injection path, when in use (see [`SyncPath`]).
    link: Option<LinkInject>,
    /// Why a link path was asked for but could not be opened (the raw socket serves).
    link_refused: Option<io::Error>,
    capture_refused: Option<io::Error>,
    /// The firewall(s) on the sync link (`[local] firewalls`): the only trusted sources.
    firewalls: Vec<Ipv4Addr>,
}

/// The link path's socket and the source address its IPv4 headers carry (the interface's
/// first address when it was opened, as the kernel would pick).
struct LinkInject {
    sock: Socket,
    src: Ipv4Addr,
}

/// How pfsync crosses the sync interface (`[local] inject_path`, `[local] capture_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPath {
    /// Link-layer (`AF_PACKET`) sockets on an Ethernet sync interface.
    ///
    /// Injection: multicast goes out as frames that carry an IPv4 header we build; unicast
    /// uses the raw socket. The raw socket's multicast send costs a route lookup and a
    /// route entry allocated and freed per packet (the kernel does not cache the output
    /// route to a group the host itself joined), then the IP output path and its netfilter
    /// hooks: most of the receiving gateway's CPU under load (docs/PERFORMANCE-HISTORY.md).
    ///
    /// Capture (with `capture_multicast`): the firewall's frames are read where they
    /// arrive, before the IP layer, and the host does not join 224.0.0.240, so the kernel
    /// drops its own copy of each multicast packet at the first route lookup instead of
    /// allocating an input route and cloning it to each raw socket. What the kernel
    /// checked for the raw socket (header checksum, destination, no fragment) is checked
    /// on the read, and the kernel filter sees the frames first: overload shed there costs
    /// a few instructions per packet and no copy.
    #[default]
    Link,
    /// Always the raw IPv4 socket: pfsync passes the host's netfilter hooks and is routed
    /// by the kernel.
    Ip,
}

/// Why a captured packet's source is not taken as the firewall's (a drop-counter name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untrusted {
    /// One of our own addresses: our injection looped back.
    Own,
    /// Any other host on the sync link: pfsync trusts it, the gateway does not.
    Foreign,
}

impl Untrusted {
    pub fn counter(self) -> &'static str {
        match self {
            Untrusted::Own => "local_own_ignored",
            Untrusted::Foreign => "local_foreign_source",
        }
    }
}

impl RawSyncSocket {
    /// Open the socket on `ifname`; join 224.0.0.240 there if `join_group`; inject and
    /// capture by the raw socket.
    pub fn open(ifname: &str, join_group: bool, inject_to: Ipv4Addr) -> io::Result<RawSyncSocket> {
        Self::open_with(ifname, join_group, inject_to, SyncPath::Ip, SyncPath::Ip)
    }

    /// As [`RawSyncSocket::open`], injecting by `inject` and capturing multicast (when
    /// `join_group`) by `capture` where the interface allows it.
    pub fn open_with(
        ifname: &str,
        join_group: bool,
        inject_to: Ipv4Addr,
        inject: SyncPath,
        capture: SyncPath,
    ) -> io::Result<RawSyncSocket> {
        let ifindex = if_index(ifname)?;
        let ethernet = is_ethernet(ifname);
        // Refused (a sandbox without AF_PACKET, say): the raw socket still works.
        let (capture, capture_refused) = match capture {
            SyncPath::Link if join_group && ethernet => match link_capture_socket(ifindex) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e)),
            },
            _ => (None, None),
        };
        // With the link capture reading everything, the raw socket keeps nothing; bound
        // here it still stops the kernel answering unicast protocol 240 with ICMP
        // protocol-unreachable, as a listener would.
        let keep_nothing = capture.as_ref().map(|_| super::filter::drop_all());
        let sock = pfsync_socket(ifname, keep_nothing.as_ref().map(|f| &f[..]))?;
        sock.set_ttl(PFSYNC_DFLTTL as u32)?;
        sock.set_multicast_ttl_v4(PFSYNC_DFLTTL as u32)?;
        // Our own multicast must not come back to us as if the firewall had sent it.
        sock.set_multicast_loop_v4(false)?;
        sock.set_tos(0x10)?;
        set_multicast_if_index(sock.as_raw_fd(), ifindex)?;
        set_dont_fragment(sock.as_raw_fd())?;
        let joined = join_group && capture.is_none();
        if joined {
            sock.join_multicast_v4_n(&PFSYNC_GROUP, &InterfaceIndexOrAddress::Index(ifindex))?;
        }
        // Bursts (bulk updates) must not overflow the default ~200 KB buffer.
        if capture.is_some() {
            super::mmsg::set_send_buffer(sock.as_raw_fd(), 32 << 20);
        } else {
            super::mmsg::set_socket_buffers(sock.as_raw_fd(), 32 << 20);
        }
        let own_addrs = interface_ipv4_addrs(ifname);
        let inject_to = SocketAddrV4::new(inject_to, 0);
        let (link, link_refused) = match (inject, own_addrs.first()) {
            (SyncPath::Link, Some(&src)) if inject_to.ip().is_multicast() && ethernet => {
                match link_socket(ifindex) {
                    Ok(sock) => (Some(LinkInject { sock, src }), None),
                    Err(e) => (None, Some(e)),
                }
            }
            _ => (None, None),
        };
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut inject_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let inject_addr_len = if link.is_some() {
            multicast_sockaddr_ll(ifindex, *inject_to.ip(), &mut inject_addr)
        } else {
            super::mmsg::std_to_sockaddr(SocketAddr::V4(inject_to), &mut inject_addr)
        };
        Ok(RawSyncSocket {
            sock,
            capture,
            ifname: ifname.to_string(),
            ifindex,
            joined,
            own_addrs,
            inject_to,
            inject_addr,
            inject_addr_len,
            link,
            link_refused,
            capture_refused,
            firewalls: Vec::new(),
        })
    }

    /// The path capture takes (the link path only where it could be opened).
    pub fn capture_path(&self) -> SyncPath {
        if self.capture.is_some() {
            SyncPath::Link
        } else {
            SyncPath::Ip
        }
    }

    /// Why the link capture was wanted but the raw socket captures (for the start-up log).
    pub fn capture_refused(&self) -> Option<&io::Error> {
        self.capture_refused.as_ref()
    }

    /// Attach `program`, written for the raw socket's view (the IPv4 header at offset 0),
    /// as the capture filter. On the link path it runs behind the tests the raw socket's
    /// binding and the kernel's IP layer made (the interface's own frames, protocol 240,
    /// for us or to the group).
    pub fn attach_capture_filter(&self, program: &[libc::sock_filter]) -> io::Result<()> {
        match &self.capture {
            Some(c) => c.attach_filter(&super::filter::behind_link_checks(self.ifindex, program)),
            None => self.sock.attach_filter(program),
        }
    }

    /// Remove the capture filter: the read path sees all the pfsync the interface gets.
    pub fn detach_capture_filter(&self) -> io::Result<()> {
        match &self.capture {
            Some(c) => c.attach_filter(&super::filter::behind_link_checks(
                self.ifindex,
                &super::filter::keep_all(),
            )),
            None => self.sock.detach_filter(),
        }
    }

    /// What the kernel's IP layer checks before a raw socket gets a packet, on a packet the
    /// link capture read: the header checksum, and a destination this host takes (the
    /// group, or one of its addresses on the interface). Fragments are refused by
    /// [`Ipv4Packet::new_checked`] on both paths (pf never fragments pfsync: it sizes its
    /// packets to the interface MTU and sets DF). Always true on the raw socket's packets.
    pub fn admits(&self, ip: &Ipv4Packet<&[u8]>) -> bool {
        self.capture.is_none()
            || (ip.verify_checksum() && (ip.dst() == PFSYNC_GROUP || self.is_own(ip.dst())))
    }

    /// The path injection takes (the link path only where it could be opened).
    pub fn inject_path(&self) -> SyncPath {
        if self.link.is_some() {
            SyncPath::Link
        } else {
            SyncPath::Ip
        }
    }

    /// Why the link path was wanted but the raw socket injects (for the start-up log).
    pub fn link_refused(&self) -> Option<&io::Error> {
        self.link_refused.as_ref()
    }

    /// Bytes an injected packet's buffer holds before the pfsync packet: room for the IPv4
    /// header on the link path, none on the raw socket (the kernel adds it).
    pub fn inject_headroom(&self) -> usize {
        if self.link.is_some() {
            IPV4_HEADER_LEN
        } else {
            0
        }
    }

    /// Finish an injected packet whose pfsync bytes (`pfsync_len` of them) follow
    /// [`RawSyncSocket::inject_headroom`] bytes of `buf`; returns the bytes to send. On the
    /// link path this writes the IPv4 header pfsync(4) expects: TTL 255, TOS lowdelay, DF,
    /// protocol 240, from our address on the interface.
    pub fn finish_inject(&self, buf: &mut [u8], pfsync_len: usize) -> usize {
        let Some(link) = &self.link else {
            return pfsync_len;
        };
        // The buffer has the headroom and the packet fits an IP packet: cannot fail.
        let _ = emit_ipv4_header(
            buf,
            link.src,
            *self.inject_to.ip(),
            pfsync_len,
            PFSYNC_DFLTTL,
        );
        IPV4_HEADER_LEN + pfsync_len
    }

    /// The socket injected packets are sent on, and their destination address in its
    /// family (for `sendmmsg`).
    pub fn inject_target(&self) -> (RawFd, &libc::sockaddr_storage, libc::socklen_t) {
        let fd = self
            .link
            .as_ref()
            .map_or(&self.sock, |l| &l.sock)
            .as_raw_fd();
        (fd, &self.inject_addr, self.inject_addr_len)
    }

    /// Accept pfsync only from these addresses (empty: from anyone, for tests only).
    pub fn set_firewalls(&mut self, firewalls: &[Ipv4Addr]) {
        self.firewalls = firewalls.to_vec();
    }

    /// `None` if a packet from `src` is the firewall speaking; else why it is dropped.
    pub fn check_source(&self, src: Ipv4Addr) -> Option<Untrusted> {
        if self.is_own(src) {
            Some(Untrusted::Own)
        } else if !self.firewalls.is_empty() && !self.firewalls.contains(&src) {
            Some(Untrusted::Foreign)
        } else {
            None
        }
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
    pub fn inject_to(&self) -> SocketAddr {
        SocketAddr::V4(self.inject_to)
    }

    /// True if `src` is one of our own addresses on the sync interface.
    pub fn is_own(&self, src: Ipv4Addr) -> bool {
        self.own_addrs.contains(&src)
    }

    /// Refresh our own addresses (after an address change on the interface); the link
    /// path's source follows the interface's first address, as the kernel's choice would.
    /// An interface left without an address keeps the last one. An error if the interface
    /// is gone or another has its name: every socket here is bound to the old one's index
    /// and would capture and inject nothing from now on.
    pub fn refresh_addrs(&mut self) -> io::Result<()> {
        match if_index(&self.ifname) {
            Ok(i) if i == self.ifindex => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "sync interface `{}` (index {}) is gone: its sockets see nothing any more",
                        self.ifname, self.ifindex
                    ),
                ))
            }
        }
        self.own_addrs = interface_ipv4_addrs(&self.ifname);
        if let (Some(link), Some(&first)) = (&mut self.link, self.own_addrs.first()) {
            link.src = first;
        }
        Ok(())
    }

    pub fn firewalls(&self) -> &[Ipv4Addr] {
        &self.firewalls
    }
}

/// What the capture socket's filter drops, counted: a second raw socket on the interface
/// whose filter keeps only pfsync from hosts that are not the firewalls, cut to the IP
/// header, in a small buffer.
///
/// A rogue host's flood then costs the gateway a fixed amount however fast it comes: the
/// kernel queues at most a buffer's worth, [`ForeignWatch::drain`] reads that (a few
/// dozen headers) and the kernel's overflow count gives the rest, so the count is exact
/// and a sample of the sources is there to log, while nothing of it is read, queued or
/// timed on the capture socket.
pub struct ForeignWatch {
    sock: Socket,
    /// The interface's index when a link-layer socket (beside a link capture): its filter
    /// runs behind the link checks.
    link: Option<u32>,
    rx: super::mmsg::RecvBatch,
    /// The kernel's drop count at the last [`ForeignWatch::drain`].
    drops_seen: u32,
}

/// The watch socket's buffer: a few dozen packets (each costs its full size against it).
const WATCH_BUFFER: usize = 64 << 10;

impl ForeignWatch {
    /// Open beside `sync`'s capture, on the same path (a link-layer socket if it captures
    /// by one, else a raw socket, joined to 224.0.0.240 if its raw socket is).
    pub fn open(sync: &RawSyncSocket, firewalls: &[Ipv4Addr]) -> io::Result<ForeignWatch> {
        let link = sync.capture.as_ref().map(|_| sync.ifindex);
        // The filter goes on before the socket is bound and joined, so the firewall's own
        // packets are never queued or counted here.
        let filter = watch_filter(firewalls, link)?;
        let sock = if link.is_some() {
            packet_socket(sync.ifindex, libc::ETH_P_IP as u16, Some(&filter))?
        } else {
            pfsync_socket(&sync.ifname, Some(&filter))?
        };
        if sync.joined {
            sock.join_multicast_v4_n(&PFSYNC_GROUP, &InterfaceIndexOrAddress::Index(sync.ifindex))?;
        }
        sock.set_recv_buffer_size(WATCH_BUFFER)?;
        // The drop count is what makes the count exact: refuse a kernel without it.
        let drops_seen = super::mmsg::socket_drops(sock.as_raw_fd())?;
        Ok(ForeignWatch {
            sock,
            link,
            rx: super::mmsg::RecvBatch::new(super::filter::WATCH_SNAP as usize),
            drops_seen,
        })
    }

    /// Watch for everything but these addresses (at least one).
    pub fn set_firewalls(&mut self, firewalls: &[Ipv4Addr]) -> io::Result<()> {
        self.sock
            .attach_filter(&watch_filter(firewalls, self.link)?)
    }

    /// Read what is queued, at most `max_batches` batches, calling `f` with each packet's
    /// source; returns how many more the kernel dropped since the last call because the
    /// buffer was full (their sources unknown).
    pub fn drain(&mut self, max_batches: usize, mut f: impl FnMut(Ipv4Addr)) -> u64 {
        for _ in 0..max_batches {
            if self.rx.recv(self.sock.as_raw_fd()).is_err() {
                break;
            }
            for i in 0..self.rx.len() {
                if let Some(h) = self.rx.data(i).filter(|h| h.len() >= 20) {
                    f(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
                }
            }
        }
        let drops = super::mmsg::socket_drops(self.sock.as_raw_fd()).unwrap_or(self.drops_seen);
        let new = drops.wrapping_sub(self.drops_seen);
        self.drops_seen = drops;
        u64::from(new)
    }
}

/// The capture socket (what the driver reads and polls).
impl AsRawFd for RawSyncSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.capture.as_ref().unwrap_or(&self.sock).as_raw_fd()
    }
}

/// The watch socket's filter around `firewalls` (behind the link checks on a link-layer
/// socket on interface `link`); none to watch around is an error (the filter would keep
/// everything).
fn watch_filter(firewalls: &[Ipv4Addr], link: Option<u32>) -> io::Result<Vec<libc::sock_filter>> {
    if firewalls.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no firewall addresses to watch around",
        ));
    }
    let program = super::filter::watch_program(firewalls);
    Ok(match link {
        Some(ifindex) => super::filter::behind_link_checks(ifindex, &program),
        None => program,
    })
}

/// A non-blocking raw proto-240 socket bound to `ifname`, with `filter` attached first.
fn pfsync_socket(ifname: &str, filter: Option<&[libc::sock_filter]>) -> io::Result<Socket> {
    let sock = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(IPPROTO_PFSYNC as i32)),
    )?;
    if let Some(f) = filter {
        sock.attach_filter(f)?;
    }
    sock.bind_device(Some(ifname.as_bytes()))?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// An `AF_PACKET` datagram socket on `ifindex` that only sends: bound with protocol 0, so
/// the kernel hands it no received frames to queue.
fn link_socket(ifindex: u32) -> io::Result<Socket> {
    let sock = packet_socket(ifindex, 0, None)?;
    // The raw socket's TOS 0x10 sets its priority to TC_PRIO_INTERACTIVE (the kernel's
    // rt_tos2priority): the same here, so qdisc bands and VLAN egress maps treat the
    // frames as before. Values up to 6 need no capability.
    super::mmsg::set_int_option(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PRIORITY, 6)?;
    // Bursts (bulk updates) must not overflow the default send buffer; it never receives.
    super::mmsg::set_send_buffer(sock.as_raw_fd(), 32 << 20);
    Ok(sock)
}

/// A [`RxRing`](super::ring::RxRing) reading the pfsync packets (IPv4, protocol 240) that
/// arrive on `ifname` to the pfsync group or to us, with a raw protocol-240 socket that
/// keeps nothing beside it: bound, it stops the kernel answering unicast pfsync with ICMP
/// protocol-unreachable, as a listener would. For a reader that goes by receive timestamps
/// (the benchmark's fw-b).
pub fn link_capture_ring(
    ifname: &str,
    block_size: usize,
    blocks: usize,
    retire_ms: u32,
) -> io::Result<(super::ring::RxRing, Socket)> {
    if !is_ethernet(ifname) {
        return Err(io::Error::other(format!(
            "`{ifname}` is not an Ethernet interface"
        )));
    }
    let sock = link_capture_socket(if_index(ifname)?)?;
    let ring = super::ring::RxRing::attach(sock, block_size, blocks, retire_ms)?;
    let listener = pfsync_socket(ifname, Some(&super::filter::drop_all()))?;
    Ok((ring, listener))
}

/// An `AF_PACKET` datagram socket that reads the IPv4 packets arriving on `ifindex` (to
/// the group's MAC address, which it asks the interface to accept, or to ours), behind
/// the link checks until the driver attaches the capture filter.
fn link_capture_socket(ifindex: u32) -> io::Result<Socket> {
    let keep = super::filter::behind_link_checks(ifindex, &super::filter::keep_all());
    let sock = packet_socket(ifindex, libc::ETH_P_IP as u16, Some(&keep))?;
    let mut mreq = libc::packet_mreq {
        mr_ifindex: ifindex as libc::c_int,
        mr_type: libc::PACKET_MR_MULTICAST as u16,
        mr_alen: 6,
        mr_address: [0; 8],
    };
    mreq.mr_address[..6].copy_from_slice(&group_mac(PFSYNC_GROUP));
    super::mmsg::set_option(
        sock.as_raw_fd(),
        libc::SOL_PACKET,
        libc::PACKET_ADD_MEMBERSHIP,
        &mreq,
    )?;
    // Bursts (bulk updates) must not overflow the default ~200 KB buffer.
    super::mmsg::set_socket_buffers(sock.as_raw_fd(), 32 << 20);
    Ok(sock)
}

/// A non-blocking `AF_PACKET` datagram socket bound to `ifindex` for frames of `protocol`
/// (an EtherType; 0 for none: it only sends), with `filter` attached before the bind so
/// that nothing it would drop is ever queued.
fn packet_socket(
    ifindex: u32,
    protocol: u16,
    filter: Option<&[libc::sock_filter]>,
) -> io::Result<Socket> {
    // Protocol 0 at creation: no frame is queued before the bind names the interface.
    let sock = Socket::new(Domain::PACKET, Type::DGRAM, None)?;
    if let Some(f) = filter {
        sock.attach_filter(f)?;
    }
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_ll.
    let sll = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_ll) };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex as i32;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: ss holds a sockaddr_ll of `len` bytes.
    let addr = unsafe { socket2::SockAddr::new(ss, len) };
    sock.bind(&addr)?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// The link-layer destination of an IPv4 multicast group on `ifindex` ([`group_mac`]), for
/// an `AF_PACKET` datagram socket; returns its length.
fn multicast_sockaddr_ll(
    ifindex: u32,
    group: Ipv4Addr,
    ss: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_ll.
    let sll = unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_ll) };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&group_mac(group));
    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t
}

/// The Ethernet address of an IPv4 multicast group (RFC 1112: 01:00:5e and the group's low
/// 23 bits).
fn group_mac(group: Ipv4Addr) -> [u8; 6] {
    let g = group.octets();
    [0x01, 0x00, 0x5e, g[1] & 0x7f, g[2], g[3]]
}

/// Does `ifname` carry Ethernet frames (the only link header the link paths know)?
fn is_ethernet(ifname: &str) -> bool {
    let Ok(sock) = Socket::new(Domain::IPV4, Type::DGRAM, None) else {
        return false;
    };
    // struct ifreq: the name, then a sockaddr whose family is the hardware type.
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        hwaddr: libc::sockaddr,
        _pad: [u8; 8],
    }
    // SAFETY: all-zero is a valid IfReq (bytes and a sockaddr).
    let mut req: IfReq = unsafe { std::mem::zeroed() };
    let n = ifname.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&ifname.as_bytes()[..n]);
    // SAFETY: SIOCGIFHWADDR reads the name and writes the sockaddr of a full ifreq.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut req) };
    r == 0 && req.hwaddr.sa_family == libc::ARPHRD_ETHER
}

fn if_index(ifname: &str) -> io::Result<u32> {
    let c = CString::new(ifname).map_err(|_| io::Error::other("interface name contains NUL"))?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no such interface `{ifname}`"),
        ));
    }
    Ok(idx)
}

fn set_multicast_if_index(fd: RawFd, ifindex: u32) -> io::Result<()> {
    let mreqn = libc::ip_mreqn {
        imr_multiaddr: libc::in_addr { s_addr: 0 },
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: ifindex as libc::c_int,
    };
    super::mmsg::set_option(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mreqn)
}

fn set_dont_fragment(fd: RawFd) -> io::Result<()> {
    super::mmsg::set_int_option(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DO,
    )
}

/// The IPv4 addresses configured on `ifname` (empty if none or on error).
pub fn interface_ipv4_addrs(ifname: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk read-only and free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated C string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if name.to_bytes() != ifname.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr is non-null; we read the family, then the sockaddr_in it says.
        unsafe {
            if (*ifa.ifa_addr).sa_family as libc::c_int == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
        }
    }
    // SAFETY: ifap came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_interface_is_a_clear_error() {
        let e = RawSyncSocket::open("nosuchif0", true, PFSYNC_GROUP)
            .err()
            .expect("must fail");
        assert!(e.to_string().contains("nosuchif0"), "{e}");
    }

    #[test]
    fn group_maps_to_its_multicast_mac() {
        let mac = |g: Ipv4Addr| {
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let len = multicast_sockaddr_ll(7, g, &mut ss);
            assert_eq!(len as usize, std::mem::size_of::<libc::sockaddr_ll>());
            // SAFETY: filled as a sockaddr_ll above.
            let sll = unsafe { &*(&ss as *const _ as *const libc::sockaddr_ll) };
            assert_eq!(sll.sll_ifindex, 7);
            assert_eq!(u16::from_be(sll.sll_protocol), libc::ETH_P_IP as u16);
            sll.sll_addr[..usize::from(sll.sll_halen)].to_vec()
        };
        assert_eq!(mac(PFSYNC_GROUP), [0x01, 0x00, 0x5e, 0x00, 0x00, 0xf0]);
        // Only the low 23 bits of the group reach the MAC.
        assert_eq!(
            mac(Ipv4Addr::new(239, 129, 2, 3)),
            [0x01, 0x00, 0x5e, 0x01, 0x02, 0x03]
        );
    }

    #[test]
    fn loopback_is_not_ethernet_so_both_paths_stay_on_the_raw_socket() {
        // Needs CAP_NET_RAW; the netns suites cover Ethernet (veth) interfaces.
        let Ok(s) =
            RawSyncSocket::open_with("lo", true, PFSYNC_GROUP, SyncPath::Link, SyncPath::Link)
        else {
            return;
        };
        assert_eq!(s.inject_path(), SyncPath::Ip);
        assert_eq!(s.capture_path(), SyncPath::Ip);
        assert_eq!(s.inject_headroom(), 0);
        let mut buf = [0u8; 8];
        assert_eq!(s.finish_inject(&mut buf, 8), 8);
    }

    #[test]
    fn loopback_has_127_0_0_1() {
        assert!(interface_ipv4_addrs("lo").contains(&Ipv4Addr::LOCALHOST));
    }
}
