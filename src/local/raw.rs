//! The firewall side over a real network: raw IPv4 protocol-240 sockets bound to the sync
//! interface, as a pf kernel's `pfsync0 syncdev` would use it.
//!
//! Capture: everything with protocol 240 that arrives on the interface (unicast to us
//! when the firewall's `syncpeer` points at the gateway, and the 224.0.0.240 group when
//! joined). Inject: TTL 255, TOS 0x10 (lowdelay), DF, to the group or to the firewall's
//! unicast address, out of the sync interface only — exactly what pfsync_input() accepts.

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

use crate::wire::{IPPROTO_PFSYNC, PFSYNC_DFLTTL, PFSYNC_GROUP};

/// A raw proto-240 socket on one interface.
pub struct RawSyncSocket {
    sock: Socket,
    ifname: String,
    ifindex: u32,
    /// Our own addresses on the interface: packets from them are our own injections
    /// looped back, never captured (loop prevention).
    own_addrs: Vec<Ipv4Addr>,
    inject_to: SocketAddr,
    /// The firewall(s) on the sync link (`[local] firewalls`): the only trusted sources.
    firewalls: Vec<Ipv4Addr>,
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
    /// Open the socket on `ifname`; join 224.0.0.240 there if `join_group`.
    pub fn open(ifname: &str, join_group: bool, inject_to: Ipv4Addr) -> io::Result<RawSyncSocket> {
        let ifindex = if_index(ifname)?;
        let sock = pfsync_socket(ifname, None)?;
        sock.set_ttl(PFSYNC_DFLTTL as u32)?;
        sock.set_multicast_ttl_v4(PFSYNC_DFLTTL as u32)?;
        // Our own multicast must not come back to us as if the firewall had sent it.
        sock.set_multicast_loop_v4(false)?;
        sock.set_tos(0x10)?;
        set_multicast_if_index(sock.as_raw_fd(), ifindex)?;
        set_dont_fragment(sock.as_raw_fd())?;
        if join_group {
            sock.join_multicast_v4_n(&PFSYNC_GROUP, &InterfaceIndexOrAddress::Index(ifindex))?;
        }
        // Bursts (bulk updates) must not overflow the default ~200 KB buffer.
        super::mmsg::set_socket_buffers(sock.as_raw_fd(), 32 << 20);
        Ok(RawSyncSocket {
            sock,
            ifname: ifname.to_string(),
            ifindex,
            own_addrs: interface_ipv4_addrs(ifname),
            inject_to: SocketAddr::V4(SocketAddrV4::new(inject_to, 0)),
            firewalls: Vec::new(),
        })
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
        self.inject_to
    }

    /// True if `src` is one of our own addresses on the sync interface.
    pub fn is_own(&self, src: Ipv4Addr) -> bool {
        self.own_addrs.contains(&src)
    }

    /// Refresh our own addresses (after an address change on the interface).
    pub fn refresh_addrs(&mut self) {
        self.own_addrs = interface_ipv4_addrs(&self.ifname);
    }

    pub fn socket(&self) -> &Socket {
        &self.sock
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
    rx: super::mmsg::RecvBatch,
    /// The kernel's drop count at the last [`ForeignWatch::drain`].
    drops_seen: u32,
}

/// The watch socket's buffer: a few dozen packets (each costs its full size against it).
const WATCH_BUFFER: usize = 64 << 10;

impl ForeignWatch {
    /// Open on `ifname` (joining 224.0.0.240 if `join_group`, as the capture socket does).
    pub fn open(
        ifname: &str,
        join_group: bool,
        firewalls: &[Ipv4Addr],
    ) -> io::Result<ForeignWatch> {
        // The filter goes on before the socket is bound and joined, so the firewall's own
        // packets are never queued or counted here.
        let sock = pfsync_socket(ifname, Some(&watch_filter(firewalls)?))?;
        if join_group {
            let ifindex = if_index(ifname)?;
            sock.join_multicast_v4_n(&PFSYNC_GROUP, &InterfaceIndexOrAddress::Index(ifindex))?;
        }
        sock.set_recv_buffer_size(WATCH_BUFFER)?;
        // The drop count is what makes the count exact: refuse a kernel without it.
        let drops_seen = super::mmsg::socket_drops(sock.as_raw_fd())?;
        Ok(ForeignWatch {
            sock,
            rx: super::mmsg::RecvBatch::new(super::filter::WATCH_SNAP as usize),
            drops_seen,
        })
    }

    /// Watch for everything but these addresses (at least one).
    pub fn set_firewalls(&mut self, firewalls: &[Ipv4Addr]) -> io::Result<()> {
        self.sock.attach_filter(&watch_filter(firewalls)?)
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

impl AsRawFd for RawSyncSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// The watch socket's filter around `firewalls`; none to watch around is an error (the
/// filter would keep everything).
fn watch_filter(firewalls: &[Ipv4Addr]) -> io::Result<Vec<libc::sock_filter>> {
    if firewalls.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no firewall addresses to watch around",
        ));
    }
    Ok(super::filter::watch_program(firewalls))
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
    // SAFETY: passing a properly sized ip_mreqn.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            (&mreqn as *const libc::ip_mreqn).cast(),
            std::mem::size_of::<libc::ip_mreqn>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
    fn loopback_has_127_0_0_1() {
        assert!(interface_ipv4_addrs("lo").contains(&Ipv4Addr::LOCALHOST));
    }
}
