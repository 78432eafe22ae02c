//! Batched datagram I/O: `recvmmsg`/`sendmmsg` over preallocated buffers.
//!
//! pfsync packets are small and come in bursts; one syscall and one wakeup per packet would
//! dominate the cost of the gateway (see docs/ARCHITECTURE.md). These helpers move up to
//! `BATCH` datagrams per syscall with no allocation after construction. They work on any
//! datagram socket (UDP, raw IP).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per syscall.
pub const BATCH: usize = 64;

/// Room for the control messages we ask for: `SCM_TIMESTAMPNS` (a timespec), `SO_RXQ_OVFL`
/// (a u32) and `UDP_GRO` (an int), each behind a cmsghdr (32 + 24 + 24 bytes).
const CTRL_LEN: usize = 96;

/// Preallocated receive slots.
pub struct RecvBatch {
    bufs: Vec<Box<[u8]>>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: [usize; BATCH],
    count: usize,
    /// Per-slot control buffers (u64 for cmsg alignment), present once timestamps are on.
    ctrl: Vec<[u64; CTRL_LEN / 8]>,
    /// Kernel receive time of each datagram of the last batch (CLOCK_REALTIME, ns).
    stamps: [u64; BATCH],
    /// Last `SO_RXQ_OVFL` value seen (datagrams the kernel dropped: buffer full) and the
    /// growth not yet taken by the caller.
    ovfl_seen: Option<u32>,
    ovfl_new: u64,
    /// Segment size of each slot of the last batch when the kernel coalesced several
    /// datagrams of one flow into it (`UDP_GRO`); 0 = one datagram.
    segs: [usize; BATCH],
}

impl RecvBatch {
    pub fn new(buf_size: usize) -> RecvBatch {
        RecvBatch {
            bufs: (0..BATCH)
                .map(|_| vec![0u8; buf_size].into_boxed_slice())
                .collect(),
            addrs: vec![unsafe { zeroed() }; BATCH],
            lens: [0; BATCH],
            count: 0,
            ctrl: Vec::new(),
            stamps: [0; BATCH],
            ovfl_seen: None,
            ovfl_new: 0,
            segs: [0; BATCH],
        }
    }

    /// Let the kernel hand over runs of datagrams of one flow as one buffer (`UDP_GRO`: one
    /// skb and one slot for many datagrams; [`RecvBatch::iter`] cuts them apart again).
    /// For a UDP socket whose slots hold 64 KiB. Returns whether it is on.
    pub fn enable_gro(&mut self, fd: RawFd) -> bool {
        let on = set_int_option(fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        if on && self.ctrl.is_empty() {
            self.ctrl = vec![[0u64; CTRL_LEN / 8]; BATCH];
        }
        on
    }

    /// Ask the kernel for each datagram's receive time and for the count of datagrams it
    /// dropped because the socket buffer was full (see [`RecvBatch::received_at`],
    /// [`RecvBatch::take_overflow`]). Best effort: without them both report nothing.
    pub fn enable_timestamps(&mut self, fd: RawFd) {
        for opt in [libc::SO_TIMESTAMPNS, libc::SO_RXQ_OVFL] {
            let _ = set_int_option(fd, libc::SOL_SOCKET, opt, 1);
        }
        self.ctrl = vec![[0u64; CTRL_LEN / 8]; BATCH];
    }

    /// Datagrams in the last batch.
    pub fn len(&self) -> usize {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Did the last batch use every slot? If not, it emptied the socket.
    pub fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// Bytes of datagram `i` of the last batch; `None` = truncated (too big for the slot).
    pub fn data(&self, i: usize) -> Option<&[u8]> {
        (i < self.count && self.lens[i] != usize::MAX).then(|| &self.bufs[i][..self.lens[i]])
    }

    /// When the kernel received datagram `i` (if timestamps are on).
    pub fn received_at(&self, i: usize) -> Option<std::time::SystemTime> {
        let ns = *self.stamps.get(i).filter(|_| i < self.count)?;
        (ns != 0).then(|| std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns))
    }

    /// How long datagram `i` waited in the socket until `read` (a wall-clock time taken
    /// after the read: every datagram of the batch arrived before it).
    pub fn waited(&self, i: usize, read: std::time::SystemTime) -> Option<std::time::Duration> {
        read.duration_since(self.received_at(i)?).ok()
    }

    /// Datagrams the kernel dropped (socket buffer full) since the last call.
    pub fn take_overflow(&mut self) -> u64 {
        std::mem::take(&mut self.ovfl_new)
    }

    /// Receive up to `BATCH` datagrams without blocking. `Ok(0)` never happens: an empty
    /// queue is `Err(WouldBlock)`.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
            };
            hdrs[i].msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            if let Some(c) = self.ctrl.get_mut(i) {
                hdrs[i].msg_hdr.msg_control = c.as_mut_ptr().cast();
                hdrs[i].msg_hdr.msg_controllen = CTRL_LEN as _;
            }
        }
        // SAFETY: every header points into buffers owned by self that outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs.iter().enumerate().take(n) {
            // A datagram larger than the slot is truncated by the kernel: mark it so the
            // caller can count it as malformed instead of parsing half a packet.
            self.lens[i] = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                usize::MAX
            } else {
                h.msg_len as usize
            };
            self.stamps[i] = 0;
            self.segs[i] = 0;
            if !self.ctrl.is_empty() {
                self.read_cmsgs(i, &h.msg_hdr);
            }
        }
        self.count = n;
        Ok(n)
    }

    fn read_cmsgs(&mut self, i: usize, mh: &libc::msghdr) {
        // SAFETY: the kernel filled msg_control/msg_controllen of this header; CMSG_* walk
        // within that buffer, and each payload is read unaligned at the size its type has.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(mh);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
                        let ts: libc::timespec = std::ptr::read_unaligned(data.cast());
                        self.stamps[i] = (ts.tv_sec as u64)
                            .saturating_mul(1_000_000_000)
                            .saturating_add(ts.tv_nsec as u64);
                    }
                    (libc::SOL_UDP, libc::UDP_GRO) => {
                        let v: libc::c_int = std::ptr::read_unaligned(data.cast());
                        self.segs[i] = v.max(0) as usize;
                    }
                    (libc::SOL_SOCKET, libc::SO_RXQ_OVFL) => {
                        let v: u32 = std::ptr::read_unaligned(data.cast());
                        // Cumulative since the socket opened; only sent once non-zero.
                        let prev = self.ovfl_seen.unwrap_or(0);
                        self.ovfl_new += v.wrapping_sub(prev) as u64;
                        self.ovfl_seen = Some(v);
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(mh, c);
            }
        }
    }

    /// The datagrams of the last `recv`: `(source, bytes)`; `None` bytes = truncated. A slot
    /// the kernel filled with coalesced datagrams (`UDP_GRO`) yields each of them.
    pub fn iter(&self) -> impl Iterator<Item = (Option<SocketAddr>, Option<&[u8]>)> + '_ {
        (0..self.count).flat_map(move |i| {
            let src = sockaddr_to_std(&self.addrs[i]);
            let data = (self.lens[i] != usize::MAX).then(|| &self.bufs[i][..self.lens[i]]);
            let seg = self.segs[i];
            let n = match data {
                Some(d) if seg > 0 && seg < d.len() => d.len().div_ceil(seg),
                _ => 1,
            };
            (0..n).map(move |k| {
                let part = data.map(|d| match n {
                    1 => d,
                    _ => &d[k * seg..((k + 1) * seg).min(d.len())],
                });
                (src, part)
            })
        })
    }

    /// As [`RecvBatch::iter`], with each datagram's bytes writable (to decrypt them where
    /// they lie).
    pub fn for_each_mut(&mut self, mut f: impl FnMut(Option<SocketAddr>, Option<&mut [u8]>)) {
        for i in 0..self.count {
            let src = sockaddr_to_std(&self.addrs[i]);
            if self.lens[i] == usize::MAX {
                f(src, None);
                continue;
            }
            let d = &mut self.bufs[i][..self.lens[i]];
            let seg = self.segs[i];
            if seg > 0 && seg < d.len() {
                for part in d.chunks_mut(seg) {
                    f(src, Some(part));
                }
            } else {
                f(src, Some(d));
            }
        }
    }
}

/// Datagrams queued for one `sendmmsg`, copied into preallocated slots.
pub struct SendBatch {
    bufs: Vec<Box<[u8]>>,
    lens: [usize; BATCH],
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: [libc::socklen_t; BATCH],
    count: usize,
    /// UDP segmentation offload (`UDP_SEGMENT`): consecutive datagrams of one size to one
    /// destination go down the stack as one buffer, cut into datagrams at the end (by the
    /// NIC, or the kernel just before the driver). Off for raw sockets and after the kernel
    /// refused it once.
    gso: bool,
    /// Per-message control buffers for `UDP_SEGMENT` (u64 for cmsg alignment).
    gso_ctrl: Vec<[u64; 4]>,
}

/// Most datagrams in one segmented send (the kernel's `UDP_MAX_SEGMENTS` is 64 before 6.1).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one segmented send (one IP packet's worth, headers left aside).
const GSO_MAX_BYTES: usize = 65_000;

impl SendBatch {
    pub fn new(buf_size: usize) -> SendBatch {
        SendBatch {
            bufs: (0..BATCH)
                .map(|_| vec![0u8; buf_size].into_boxed_slice())
                .collect(),
            lens: [0; BATCH],
            addrs: vec![unsafe { zeroed() }; BATCH],
            addr_lens: [0; BATCH],
            count: 0,
            gso: false,
            gso_ctrl: vec![[0; 4]; BATCH],
        }
    }

    /// Use UDP segmentation offload on `fd` (a UDP socket) if the kernel has it; returns
    /// whether it is on.
    pub fn enable_gso(&mut self, fd: RawFd) -> bool {
        // Probe: setting a 0 segment size is a no-op on kernels that know the option.
        self.gso = set_int_option(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok();
        self.gso
    }

    pub fn gso(&self) -> bool {
        self.gso
    }

    /// How many datagrams from `i` on can go as one segmented send: same destination, all
    /// of `lens[i]` bytes but the last, which may be shorter.
    fn gso_run(&self, i: usize) -> usize {
        if !self.gso {
            return 1;
        }
        let size = self.lens[i];
        let (mut n, mut bytes) = (1, size);
        while i + n < self.count && n < GSO_MAX_SEGMENTS {
            let j = i + n;
            if self.lens[j] > size || bytes + self.lens[j] > GSO_MAX_BYTES || !self.same_dest(i, j)
            {
                break;
            }
            n += 1;
            bytes += self.lens[j];
            if self.lens[j] < size {
                break; // a shorter datagram ends a run
            }
        }
        n
    }

    fn same_dest(&self, i: usize, j: usize) -> bool {
        let l = self.addr_lens[i] as usize;
        if self.addr_lens[j] as usize != l {
            return false;
        }
        // SAFETY: both storages are initialised for at least `l` bytes (std_to_sockaddr).
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(
                    (&self.addrs[i] as *const libc::sockaddr_storage).cast::<u8>(),
                    l,
                ),
                std::slice::from_raw_parts(
                    (&self.addrs[j] as *const libc::sockaddr_storage).cast::<u8>(),
                    l,
                ),
            )
        };
        a == b
    }

    pub fn is_full(&self) -> bool {
        self.count == BATCH
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn len(&self) -> usize {
        self.count
    }

    /// The next free slot to write a datagram into; commit it with [`SendBatch::commit`].
    pub fn slot(&mut self) -> &mut [u8] {
        &mut self.bufs[self.count]
    }

    pub fn commit(&mut self, len: usize, to: SocketAddr) {
        let i = self.count;
        self.lens[i] = len;
        self.addr_lens[i] = std_to_sockaddr(to, &mut self.addrs[i]);
        self.count += 1;
    }

    /// As [`SendBatch::commit`], to an address already in the socket's own family (a
    /// link-layer `sockaddr_ll`, say).
    pub fn commit_to(&mut self, len: usize, to: &libc::sockaddr_storage, to_len: libc::socklen_t) {
        let i = self.count;
        self.lens[i] = len;
        self.addrs[i] = *to;
        self.addr_lens[i] = to_len;
        self.count += 1;
    }

    /// Send everything queued. Datagrams the kernel refuses (buffer full after retries,
    /// unreachable) are dropped and counted in the return value's second field; UDP and
    /// pfsync are both lossy, the reliability layer above repairs it.
    pub fn flush(&mut self, fd: RawFd) -> (usize, usize) {
        let mut sent = 0;
        let mut failed = 0;
        let mut start = 0;
        let mut spins = 0;
        while start < self.count {
            let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
            // Datagrams per message (1, or a segmented run).
            let mut runs = [0usize; BATCH];
            let (mut i, mut m) = (start, 0);
            while i < self.count {
                let n = self.gso_run(i);
                for k in 0..n {
                    iovs[i - start + k] = libc::iovec {
                        iov_base: self.bufs[i + k].as_mut_ptr().cast(),
                        iov_len: self.lens[i + k],
                    };
                }
                let h = &mut hdrs[m].msg_hdr;
                h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = self.addr_lens[i];
                h.msg_iov = &mut iovs[i - start];
                h.msg_iovlen = n as _;
                if n > 1 {
                    let ctrl = &mut self.gso_ctrl[m];
                    // SAFETY: the buffer is 32 aligned bytes, room for one cmsghdr + u16.
                    unsafe {
                        h.msg_control = ctrl.as_mut_ptr().cast();
                        h.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                        let c = libc::CMSG_FIRSTHDR(h);
                        (*c).cmsg_level = libc::SOL_UDP;
                        (*c).cmsg_type = libc::UDP_SEGMENT;
                        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                        std::ptr::write_unaligned(
                            libc::CMSG_DATA(c).cast::<u16>(),
                            self.lens[i] as u16,
                        );
                    }
                }
                runs[m] = n;
                m += 1;
                i += n;
            }
            // SAFETY: headers point into self's buffers, valid for the call.
            let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), m as libc::c_uint, 0) };
            if r > 0 {
                let done: usize = runs[..r as usize].iter().sum();
                sent += done;
                start += done;
                spins = 0;
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock && spins < 100 {
                spins += 1;
                std::thread::yield_now();
                continue;
            }
            if runs[0] > 1 && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) {
                // The route's device cannot take segmented sends (no checksum offload,
                // IPsec): send datagram by datagram from now on.
                self.gso = false;
                continue;
            }
            // Skip the datagram(s) that failed and go on with the rest.
            failed += runs[0];
            start += runs[0];
        }
        self.count = 0;
        (sent, failed)
    }
}

pub fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: family says this storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(sin.sin_addr.s_addr).into(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: family says this storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

pub(crate) fn std_to_sockaddr(a: SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin: &mut libc::sockaddr_in =
                unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: &mut libc::sockaddr_in6 =
                unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// `setsockopt` of a C int option.
pub(crate) fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    set_option(fd, level, opt, &v)
}

/// `setsockopt` with a value of type `T`, which must be the C struct (or integer) the
/// option takes.
pub(crate) fn set_option<T>(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: &T,
) -> io::Result<()> {
    // SAFETY: the kernel reads size_of::<T>() bytes of `v`, which outlives the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Packets the kernel has dropped at this socket so far because its receive buffer was
/// full (`SO_MEMINFO`'s drop count: current at the call, where `SO_RXQ_OVFL` reports the
/// count only with the next packet queued).
pub fn socket_drops(fd: RawFd) -> io::Result<u32> {
    let mut info = [0u32; 16];
    let mut len = size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `info` and updates `len`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let at = libc::SK_MEMINFO_DROPS as usize;
    if (len as usize) < (at + 1) * 4 {
        return Err(io::Error::other("SO_MEMINFO without a drop count"));
    }
    Ok(info[at])
}

/// Socket buffers for bursts (a bulk update is thousands of packets back to back): try the
/// privileged `SO_*BUFFORCE` first, which may exceed `net.core.rmem_max`, then the plain
/// options (clamped by the kernel). Best effort: a small buffer still works, just drops more
/// under bursts, which the reliability layer repairs.
pub fn set_socket_buffers(fd: RawFd, bytes: usize) {
    set_recv_buffer(fd, bytes);
    set_send_buffer(fd, bytes);
}

/// As [`set_socket_buffers`], the receive buffer only.
pub fn set_recv_buffer(fd: RawFd, bytes: usize) {
    set_buffer(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, bytes);
}

/// As [`set_socket_buffers`], the send buffer only (a socket that never receives).
pub fn set_send_buffer(fd: RawFd, bytes: usize) {
    set_buffer(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, bytes);
}

fn set_buffer(fd: RawFd, force: libc::c_int, plain: libc::c_int, bytes: usize) {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    for opt in [force, plain] {
        if set_int_option(fd, libc::SOL_SOCKET, opt, v).is_ok() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// Segmented sends (UDP GSO) arrive as the same datagrams, in order: runs of equal
    /// size, a shorter one ending a run, and a change of destination splitting it.
    #[test]
    fn segmented_sends_arrive_as_datagrams() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut tx = SendBatch::new(1500);
        if !tx.enable_gso(a.as_raw_fd()) {
            eprintln!("kernel without UDP_SEGMENT: skipped");
            return;
        }
        let sizes = [1200, 1200, 1200, 700, 1200, 1200, 1200, 1200, 90, 1200];
        let dest = |i: usize| if i == 6 { &c } else { &b };
        for (i, &n) in sizes.iter().enumerate() {
            tx.slot()[..n].fill(i as u8);
            tx.commit(n, dest(i).local_addr().unwrap());
        }
        assert_eq!(tx.gso_run(0), 4, "three of 1200 and one shorter");
        assert_eq!(tx.gso_run(4), 2, "the destination changes at 6");
        // The receiving socket may take the runs whole (UDP_GRO) and cut them up again.
        let mut rx = RecvBatch::new(65_536);
        let gro = rx.enable_gro(b.as_raw_fd());
        assert_eq!(tx.flush(a.as_raw_fd()), (10, 0));
        assert!(tx.gso(), "loopback takes segmented sends");
        if gro {
            b.set_nonblocking(true).unwrap();
            let mut got = Vec::new();
            for _ in 0..200 {
                if rx.recv(b.as_raw_fd()).is_ok() {
                    got.extend(rx.iter().map(|(_, d)| d.unwrap().to_vec()));
                }
                if got.len() >= 9 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let expect: Vec<Vec<u8>> = (0..10)
                .filter(|&i| i != 6)
                .map(|i| vec![i as u8; sizes[i]])
                .collect();
            assert_eq!(got, expect);
            assert!(rx.segs.contains(&1200), "a run arrived coalesced");
            c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 2000];
            let n = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &vec![6u8; 1200][..]);
            return;
        }
        for (sock, want) in [(&b, 9), (&c, 1)] {
            sock.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 2000];
            while got.len() < want {
                let n = sock.recv(&mut buf).unwrap();
                got.push(buf[..n].to_vec());
            }
            let expect: Vec<Vec<u8>> = (0..10)
                .filter(|&i| std::ptr::eq(dest(i), sock))
                .map(|i| vec![i as u8; sizes[i]])
                .collect();
            assert_eq!(got, expect);
        }
    }

    #[test]
    fn batch_roundtrip_over_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        let mut tx = SendBatch::new(64);
        for i in 0..10u8 {
            tx.slot()[..3].copy_from_slice(&[i, i, i]);
            tx.commit(3, b.local_addr().unwrap());
        }
        assert_eq!(tx.flush(a.as_raw_fd()), (10, 0));
        let mut rx = RecvBatch::new(64);
        let mut got = Vec::new();
        for _ in 0..100 {
            match rx.recv(b.as_raw_fd()) {
                Ok(_) => {
                    for (src, d) in rx.iter() {
                        assert_eq!(src, Some(a.local_addr().unwrap()));
                        got.push(d.unwrap().to_vec());
                    }
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
            if got.len() == 10 {
                break;
            }
        }
        assert_eq!(got, (0..10u8).map(|i| vec![i, i, i]).collect::<Vec<_>>());
    }

    #[test]
    fn oversized_datagram_is_flagged_truncated() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.send_to(&[7u8; 100], b.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut rx = RecvBatch::new(16);
        assert_eq!(rx.recv(b.as_raw_fd()).unwrap(), 1);
        assert_eq!(rx.iter().next().unwrap().1, None);
    }
}
